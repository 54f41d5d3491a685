"""Audio inputs: each yields 16 kHz mono int16 little-endian byte blocks through `blocks()`.

A source is an async context manager (`async with source:` opens and closes the device or file) with
`blocks()`, an async iterator that ends at the end of the input or soon after `stop()`. `FileSource` reads
any file soundfile can read, downmixes, resamples with soxr and paces it like a live input;
`MicrophoneSource` captures with sounddevice, imported only when it opens (its PortAudio library may be
missing, and nothing else in the client or server should need it). Tests pass a fake `sd` module or any
object with the `AudioSource` methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Self

import numpy as np
import numpy.typing as npt
import soxr

from client.errors import SourceError
from client.options import SAMPLE_RATE

BYTES_PER_SECOND = SAMPLE_RATE * 2
Warn = Callable[[str], None]

PORTAUDIO_HINT = (
    "the microphone needs the PortAudio library, which is not installed: "
    "install libportaudio2 (Debian/Ubuntu: apt-get install libportaudio2; macOS: brew install portaudio), "
    "or stream a recording with --file PATH"
)
SOUNDDEVICE_HINT = (
    "the microphone needs the sounddevice package: pip install sounddevice "
    "(it also needs PortAudio: apt-get install libportaudio2 / brew install portaudio), "
    "or stream a recording with --file PATH"
)


def to_int16(samples: npt.NDArray[np.float32]) -> bytes:
    """float32 in [-1, 1] to int16 little-endian bytes, rounded (not truncated) to keep quiet audio exact."""
    return np.rint(np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


class AudioSource(ABC):
    """See the module docstring. `duration_s` is the total length when known (files), else None."""

    duration_s: float | None = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @abstractmethod
    async def open(self) -> None:
        """Open the input; raise SourceError with a one-line reason when it cannot be used."""

    @abstractmethod
    def blocks(self) -> AsyncIterator[bytes]:
        """The audio, as non-empty int16 blocks; ends at end of input or after `stop()`."""

    @abstractmethod
    def stop(self) -> None:
        """Ask `blocks()` to end soon (Ctrl-C): a microphone still yields what it has already captured."""

    async def close(self) -> None:  # noqa: B027 - most sources have nothing to release
        """Release the input; safe to call twice."""


class Pacer:
    """Sleeps so that audio leaves at `speed` times real time; `interrupt()` cuts any sleep short."""

    def __init__(self, speed: float = 1.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.speed = speed
        self._clock = clock
        self._start: float | None = None
        self._interrupted = asyncio.Event()

    async def wait_until(self, audio_s: float) -> None:
        """Return when `audio_s` seconds of audio are due (a live input has them only once recorded)."""
        if self._start is None:
            self._start = self._clock()
        delay = self._start + audio_s / self.speed - self._clock()
        if delay > 0 and not self._interrupted.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._interrupted.wait(), delay)

    def interrupt(self) -> None:
        self._interrupted.set()


class FileSource(AudioSource):
    """A recording streamed at real-time pace (`speed` times faster, or as fast as possible with pace=False).

    The client converts to 16 kHz mono int16 itself rather than declaring the file's rate, so the server
    sees one format whatever the file, and the progress bar counts seconds the same way the server does.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        frame_ms: int = 100,
        speed: float = 1.0,
        pace: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.frame_ms = frame_ms
        self.pace = pace
        self._pacer = Pacer(speed, clock=clock)
        self._file: Any = None
        self._stopped = False

    async def open(self) -> None:
        import soundfile as sf

        try:
            self._file = sf.SoundFile(str(self.path))
        except (RuntimeError, OSError, ValueError, TypeError) as exc:
            # soundfile reports an unreadable or missing file as LibsndfileError (a RuntimeError).
            raise SourceError(f"cannot read audio file {self.path}: {exc}") from None
        rate, frames = self._file.samplerate, self._file.frames
        self.duration_s = frames / rate if frames and frames > 0 else None

    def blocks(self) -> AsyncIterator[bytes]:
        return self._blocks()

    async def _blocks(self) -> AsyncIterator[bytes]:
        f = self._file
        if f is None:
            raise RuntimeError("FileSource.blocks() before open()")
        rate, channels = f.samplerate, f.channels
        native = rate == SAMPLE_RATE and channels == 1
        resampler = (
            None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")
        )
        step = max(rate * self.frame_ms // 1000, 1)
        sent_s = 0.0
        while not self._stopped:
            if native:
                # Already the wire format: read int16 directly so the samples go out bit-exact.
                data = f.read(step, dtype="int16")
                block = np.asarray(data, dtype="<i2").tobytes()
                last = len(data) < step
            else:
                data = f.read(step, dtype="float32", always_2d=True)
                last = len(data) < step
                mono = data.mean(axis=1, dtype=np.float32) if channels > 1 else data[:, 0]
                if resampler is not None:
                    mono = resampler.resample_chunk(mono, last=last)
                block = to_int16(mono)
            if block:
                sent_s += len(block) / BYTES_PER_SECOND
                if self.pace:
                    await self._pacer.wait_until(sent_s)
                if self._stopped:
                    break
                yield block
            if last:
                break

    def stop(self) -> None:
        self._stopped = True
        self._pacer.interrupt()

    async def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class MemorySource(AudioSource):
    """Ready int16 bytes cut into `frame_ms` blocks, optionally paced: for tests and in-process callers."""

    def __init__(self, pcm: bytes, *, frame_ms: int = 100, speed: float = 1.0, pace: bool = False) -> None:
        self.pcm = pcm
        self.frame_ms = frame_ms
        self.pace = pace
        self.duration_s = len(pcm) / BYTES_PER_SECOND
        self._pacer = Pacer(speed)
        self._stopped = False

    async def open(self) -> None:
        pass

    def blocks(self) -> AsyncIterator[bytes]:
        return self._blocks()

    async def _blocks(self) -> AsyncIterator[bytes]:
        step = 2 * SAMPLE_RATE * self.frame_ms // 1000
        for offset in range(0, len(self.pcm), step):
            block = self.pcm[offset : offset + step]
            if self.pace:
                await self._pacer.wait_until((offset + len(block)) / BYTES_PER_SECOND)
            if self._stopped:
                return
            yield block

    def stop(self) -> None:
        self._stopped = True
        self._pacer.interrupt()


def import_sounddevice() -> ModuleType:
    """The sounddevice module, or SourceError saying what to install (PortAudio is loaded at import)."""
    try:
        import sounddevice
    except OSError:
        raise SourceError(PORTAUDIO_HINT) from None
    except ImportError:
        raise SourceError(SOUNDDEVICE_HINT) from None
    return sounddevice


def input_devices(sd: Any) -> list[tuple[int, dict[str, Any]]]:
    """(index, info) of every device with input channels."""
    return [
        (i, dict(info)) for i, info in enumerate(sd.query_devices()) if info.get("max_input_channels", 0) > 0
    ]


def default_input_index(sd: Any) -> int | None:
    try:
        index = sd.default.device[0]
    except (AttributeError, IndexError, TypeError):
        return None
    return int(index) if isinstance(index, int) and index >= 0 else None


def describe_input_devices(sd: Any) -> list[str]:
    """One line per input device for --list-devices; `*` marks the default."""
    default = default_input_index(sd)
    lines = []
    for index, info in input_devices(sd):
        mark = "*" if index == default else " "
        rate = int(info.get("default_samplerate", 0))
        lines.append(
            f"{mark} {index:3d}  {info.get('name', '?')}  ({info['max_input_channels']} in, {rate} Hz)"
        )
    return lines


def resolve_device(sd: Any, spec: str | int | None) -> int | None:
    """Device index for `--device`: an index, or a case-insensitive substring of one input device's name."""
    if spec is None or spec == "":
        return None
    devices = input_devices(sd)
    if isinstance(spec, int) or str(spec).strip().isdigit():
        index = int(spec)
        if any(i == index for i, _ in devices):
            return index
        raise SourceError(f"no input device with index {index} (see --list-devices)")
    needle = str(spec).strip().lower()
    matches = [(i, info) for i, info in devices if needle in str(info.get("name", "")).lower()]
    exact = [(i, info) for i, info in matches if str(info.get("name", "")).lower() == needle]
    if len(matches) == 1 or len(exact) == 1:
        return (exact or matches)[0][0]
    if not matches:
        raise SourceError(f"no input device matches {spec!r} (see --list-devices)")
    names = ", ".join(f"{i}: {info.get('name')}" for i, info in matches)
    raise SourceError(f"--device {spec!r} matches several input devices ({names}); use the index")


class MicrophoneSource(AudioSource):
    """Live capture: the audio thread hands blocks to the event loop, which keeps at most `queue_blocks`.

    When the network falls behind and the queue is full, the oldest block is dropped (live captions
    matter more than stale audio) and counted in `dropped_blocks`; the first drop is reported once.
    `sd` is the sounddevice module, or a stand-in with `InputStream` (tests); by default it is imported
    on `open()`.
    """

    def __init__(
        self,
        *,
        device: str | int | None = None,
        block_ms: int = 50,
        queue_blocks: int = 200,
        warn: Warn | None = None,
        sd: Any = None,
    ) -> None:
        self.device_spec = device
        self.block_ms = block_ms
        self.queue_blocks = queue_blocks
        self.dropped_blocks = 0
        self.overflows = 0
        self.capture_rate = SAMPLE_RATE
        self._sd = sd
        self._warn = warn or (lambda text: None)
        self._queue: asyncio.Queue[bytes | None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stream: Any = None
        self._closed = False
        self._warned_drop = False
        self._warned_overflow = False

    async def open(self) -> None:
        sd = self._sd if self._sd is not None else import_sounddevice()
        self._sd = sd
        self._loop = asyncio.get_running_loop()
        # One slot more than the audio bound, so the end-of-input marker never pushes out audio.
        self._queue = asyncio.Queue(self.queue_blocks + 1)
        device = resolve_device(sd, self.device_spec) if self.device_spec is not None else None
        self.capture_rate = self._pick_rate(sd, device)
        try:
            self._stream = sd.InputStream(
                samplerate=self.capture_rate,
                blocksize=self.capture_rate * self.block_ms // 1000,
                device=device,
                channels=1,
                dtype="int16",
                callback=self._callback,
            )
            self._stream.start()
        except Exception as exc:  # sounddevice raises PortAudioError or ValueError for device trouble
            raise SourceError(f"cannot open the microphone: {exc}") from None

    def _pick_rate(self, sd: Any, device: int | None) -> int:
        """16 kHz when the device takes it, else its default rate (resampled here, not by the server)."""
        check = getattr(sd, "check_input_settings", None)
        if check is None:
            return SAMPLE_RATE
        try:
            check(device=device, channels=1, dtype="int16", samplerate=SAMPLE_RATE)
            return SAMPLE_RATE
        except Exception:
            info = sd.query_devices(device, "input") if device is None else sd.query_devices(device)
            return int(info.get("default_samplerate", SAMPLE_RATE))

    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        """Runs on the audio thread: copy the block and hand it to the loop, never block here."""
        if self._closed or self._loop is None:
            return
        data = np.asarray(indata, dtype="<i2").tobytes()
        # RuntimeError: the loop is closing, and audio after the end is not wanted.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._push, data, bool(status))

    def _push(self, data: bytes | None, overflow: bool = False) -> None:
        """Runs on the loop: enqueue, dropping the oldest block when the queue is full."""
        queue = self._queue
        if queue is None or (self._closed and data is not None):
            return
        if overflow:
            self.overflows += 1
            if not self._warned_overflow:
                self._warned_overflow = True
                self._warn("warning: the audio device reported an input overflow; some audio was lost")
        if data is not None and queue.qsize() >= self.queue_blocks:
            queue.get_nowait()
            self.dropped_blocks += 1
            if not self._warned_drop:
                self._warned_drop = True
                self._warn("warning: the connection is too slow; dropping the oldest microphone audio")
        queue.put_nowait(data)

    def blocks(self) -> AsyncIterator[bytes]:
        return self._blocks()

    async def _blocks(self) -> AsyncIterator[bytes]:
        queue = self._queue
        if queue is None:
            raise RuntimeError("MicrophoneSource.blocks() before open()")
        resampler = (
            soxr.ResampleStream(self.capture_rate, SAMPLE_RATE, 1, dtype="int16")
            if self.capture_rate != SAMPLE_RATE
            else None
        )
        while True:
            block = await queue.get()
            if block is None:
                break
            if resampler is not None:
                block = resampler.resample_chunk(np.frombuffer(block, dtype="<i2")).astype("<i2").tobytes()
            if block:
                yield block
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros(0, dtype="<i2"), last=True).astype("<i2").tobytes()
            if tail:
                yield tail

    def stop(self) -> None:
        """Stop capturing; blocks already queued are still sent, then `blocks()` ends."""
        if self._closed:
            return
        self._closed = True
        self._stop_stream()
        self._push(None)

    def _stop_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.stop()
                stream.close()
            except Exception:
                pass  # the device may already be gone; there is nothing left to release

    async def close(self) -> None:
        self._closed = True
        self._stop_stream()

    @property
    def dropped_seconds(self) -> float:
        return self.dropped_blocks * self.block_ms / 1000
