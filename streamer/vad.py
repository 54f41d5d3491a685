"""Voice-activity segmentation: 16 kHz float32 audio in, speech segments out (sans-I/O).

Call `Segmenter.push(samples)` with audio as it arrives and `Segmenter.flush()` to force the end of the
current segment; both return `SegmentStart` / `SegmentAudio` / `SegmentEnd` events in stream order. Only
segment audio (speech plus a short pre-roll and tail) ever reaches the model.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
import webrtcvad

from streamer import SAMPLE_RATE
from streamer.audio import float_to_linear16
from streamer.errors import ConfigError

FloatArray = npt.NDArray[np.float32]
EndReason = Literal["silence", "max_length", "flush"]


@dataclass(frozen=True)
class VadConfig:
    """VAD settings. Defaults, and why:

    - aggressiveness 2: 3 clips soft word onsets on telephone audio, 0-1 call line noise speech.
    - 30 ms frames: webrtcvad is most reliable on its longest frame.
    - pre-roll 300 ms (>= the 200 ms floor): the detector triggers after ~3 voiced frames and word onsets
      (unvoiced fricatives) start well before it fires.
    - endpointing 400 ms: read and conversational speech pauses 150-300 ms inside sentences, so 400 ms
      rarely cuts a sentence yet finalises a turn quickly; clients override it per stream (`endpointing`).
    - tail 200 ms of the closing silence stays in the segment so CTC sees the end of the last phoneme.
    - segments split in the middle of the first pause of 90 ms or more after 7 s, else hard at 15 s. A
      final is one model pass over its segment, so this bounds final latency (a 15 s pass takes over a
      second on a CPU) while keeping sentence-sized context for the model.
    - a frame more than `quiet_db` 30 dB below the speaker's recent level is not speech even when the
      detector says so: webrtcvad keeps saying "speech" for 0.2-1 s after the last word on background
      noise and through its own hangover, which delayed every endpoint by that much (measured: model's
      last word to the detector's pause, p50 0.21 s, p95 0.69 s on the bench streams), and it starts
      segments on noise in pauses.
    """

    aggressiveness: int = 2
    frame_ms: int = 30
    preroll_ms: int = 300
    start_frames: int = 3
    """Voiced frames among the last `start_window` that start a segment."""
    start_window: int = 5
    endpoint_ms: int | None = 400
    """Silence that ends a segment; None disables (segments end only on flush or length)."""
    pause_ms: int | None = None
    """A client's endpointing shorter than `endpoint_ms` (at least `min_pause_ms`): this much silence
    inside a segment is an utterance end (`SegmentPause`, the session's `speech_final`) but does not end
    the segment, so the passes after it keep the segment's audio before it as context (see
    `with_endpointing`). None: utterances end with segments."""
    min_pause_ms: int = 200
    """The shortest silence that ends an utterance when a client asks for less. Cutting the model's
    passes at shorter silences splits words (webrtcvad calls a stop consonant's closure silence, and the
    model cannot tell a word's end from such a closure with so little audio after it). Long stream of
    ../shared/data, offline WER with utterances cut at pauses of: 90 ms 0.2992, 150 ms 0.2668, 210 ms
    0.2628, 300 ms 0.2520; segments at the default 400 ms: 0.2588."""
    tail_ms: int = 200
    early_final_ms: int = 200
    """`SegmentMayEnd` up to this long before the endpoint is due (never before the tail is complete),
    so the final pass is mostly done when the endpoint comes; if speech resumes, the pass is wasted."""
    early_final_full_s: float = 4.0
    """Segments shorter than this get a proportionally shorter lead (their final pass is quicker).
    Simulated on the load benchmark's streams (final p95 / model seconds): a flat 100 ms lead 0.52 s /
    552, flat 150 ms 0.40 / 571, flat 200 ms 0.39 / 576, 200 ms scaled to 4 s 0.38 / 564."""
    max_segment_s: float = 15.0
    split_after_s: float = 7.0
    """After this long, a pause of `split_frames` unvoiced frames (shorter than endpointing) splits."""
    split_frames: int = 3
    quiet_db: float | None = 30.0
    """Frames this far below the speech level are not speech (pauses, no onsets); None: the detector alone."""
    level_frames: int = 100
    """Voiced frames (the latest) whose level sets the speech level (its 90th percentile)."""
    level_memory_s: float = 10.0
    """Voiced frames older than this no longer set the level (none left: no frame is quiet)."""

    def __post_init__(self) -> None:
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ConfigError(f"VAD aggressiveness must be 0-3, got {self.aggressiveness}")
        if self.frame_ms not in (10, 20, 30):
            raise ConfigError(f"VAD frame size must be 10, 20 or 30 ms, got {self.frame_ms}")
        if self.preroll_ms < 0 or self.tail_ms < 0 or self.early_final_ms < 0:
            raise ConfigError("VAD pre-roll and tail must be >= 0 ms")
        if self.endpoint_ms is not None and self.endpoint_ms < self.frame_ms:
            raise ConfigError(f"endpointing must be at least one VAD frame ({self.frame_ms} ms)")
        if self.pause_ms is not None and not (
            self.frame_ms <= self.pause_ms and (self.endpoint_ms is None or self.pause_ms < self.endpoint_ms)
        ):
            raise ConfigError("a VAD pause must be at least one frame and shorter than the endpoint")
        if self.min_pause_ms < 0:
            raise ConfigError("min_pause_ms must be >= 0")
        if not 1 <= self.start_frames <= self.start_window:
            raise ConfigError("VAD start_frames must be between 1 and start_window")
        if self.max_segment_s < 2.0:
            raise ConfigError(f"maximum segment length must be >= 2 s, got {self.max_segment_s}")
        if not 0 < self.split_after_s <= self.max_segment_s:
            raise ConfigError("split_after_s must be > 0 and at most the maximum segment length")
        if self.split_frames < 1:
            raise ConfigError("split_frames must be >= 1")
        if self.quiet_db is not None and not self.quiet_db > 0:
            raise ConfigError(f"quiet_db must be > 0 dB, got {self.quiet_db}")
        if self.level_frames < 1 or not self.level_memory_s > 0:
            raise ConfigError("level_frames must be >= 1 and level_memory_s > 0")

    @property
    def frame_samples(self) -> int:
        return SAMPLE_RATE * self.frame_ms // 1000

    def with_endpointing(self, ms: int | None) -> VadConfig:
        """This config with a client's endpointing (None: never on silence), raised to one VAD frame:
        the detector decides per frame, so a shorter pause cannot be seen (Deepgram's 10 ms is 30 ms).

        Endpointing shorter than this config's becomes a pause of at least `min_pause_ms`: segments
        still end after `endpoint_ms` of silence, and the pause only ends the utterance. A 30 ms "pause"
        is often a stop consonant's closure inside a word; ending segments there cut words across finals
        and left each pass without the audio around it (measured on 11 recordings at 25 ms: 27 finals
        instead of 11, 44 word errors instead of 36)."""
        if ms is None:
            return replace(self, endpoint_ms=None, pause_ms=None)
        ms = max(ms, self.frame_ms)
        if self.endpoint_ms is None or ms >= self.endpoint_ms:
            return replace(self, endpoint_ms=ms, pause_ms=None)
        pause = max(ms, self.min_pause_ms)
        return replace(self, pause_ms=pause if pause < self.endpoint_ms else None)


class SpeechDetector(Protocol):
    """Frame classifier behind the segmenter; a stronger detector (silero-vad) plugs in here."""

    def is_speech(self, frame: FloatArray) -> bool:
        """Whether one VAD frame (`VadConfig.frame_samples` samples at 16 kHz) holds speech."""
        ...


class WebRtcDetector:
    """webrtcvad, run at 16 kHz on 16-bit PCM."""

    def __init__(self, aggressiveness: int) -> None:
        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, frame: FloatArray) -> bool:
        return bool(self._vad.is_speech(float_to_linear16(frame), SAMPLE_RATE))


@dataclass(frozen=True)
class SegmentStart:
    sample: int
    """Stream sample where the segment's audio (pre-roll included) begins."""
    trigger_sample: int
    """Stream sample of the first voiced frame that triggered it (for SpeechStarted)."""
    continued: bool = False
    """The segment continues speech that a length split cut (no new SpeechStarted)."""


@dataclass(frozen=True)
class SegmentAudio:
    samples: FloatArray


@dataclass(frozen=True)
class SegmentEnd:
    sample: int
    """Stream sample just past the segment's last sample."""
    reason: EndReason


@dataclass(frozen=True)
class SegmentMayEnd:
    """The current pause will end the segment if it lasts until the endpoint: `tail` is the audio the
    segment would then close with. Lets a session start the final pass before the endpoint is certain."""

    tail: FloatArray


@dataclass(frozen=True)
class SegmentPause:
    """Silence of `VadConfig.pause_ms` inside a segment: the utterance so far has ended, though the
    segment goes on. `tail` is that silence (the segment gets it too once speech resumes or it ends)."""

    tail: FloatArray


@dataclass(frozen=True)
class SpeechResumed:
    """Speech again after a `SegmentPause`, in the same segment; `trigger_sample` is its first frame."""

    trigger_sample: int


SegmentEvent = SegmentStart | SegmentAudio | SegmentEnd | SegmentMayEnd | SegmentPause | SpeechResumed


class SpeechLevel:
    """The speaker's level: the 90th percentile (dB) of recent voiced frames' energy.

    `add(frame_no, db)` after each voiced frame; `quiet(frame_no, db)` tells whether a frame is `quiet_db`
    below that level. Levels older than `memory_frames` are forgotten, so after a long silence nothing is
    quiet and a speaker who came back softer is heard again (and sets a new level).

    The levels are also kept sorted, so the percentile is read, not recomputed: `np.percentile` after
    every voiced frame cost more than webrtcvad itself. `percentile_90` gives the very same float.
    """

    def __init__(self, frames: int, quiet_db: float, memory_frames: int) -> None:
        self._levels: deque[tuple[int, float]] = deque()
        self._sorted: list[float] = []
        self._frames = frames
        self._quiet_db = quiet_db
        self._memory = memory_frames

    def add(self, frame_no: int, db: float) -> None:
        if len(self._levels) == self._frames:
            self._forget_oldest()
        self._levels.append((frame_no, db))
        bisect.insort(self._sorted, db)

    def quiet(self, frame_no: int, db: float) -> bool:
        while self._levels and self._levels[0][0] < frame_no - self._memory:
            self._forget_oldest()
        if not self._levels:
            return False
        return db < percentile_90(self._sorted) - self._quiet_db

    def _forget_oldest(self) -> None:
        _, old = self._levels.popleft()
        del self._sorted[bisect.bisect_left(self._sorted, old)]


def percentile_90(ordered: list[float]) -> float:
    """`np.percentile(values, 90)` of values already sorted, computed as numpy does (its "linear" method
    and its interpolation, which counts from the upper neighbour when the weight is 0.5 or more)."""
    virtual = (len(ordered) - 1) * (90 / 100)
    below = math.floor(virtual)
    above = min(below + 1, len(ordered) - 1)
    weight = virtual - below
    a, b = ordered[below], ordered[above]
    return b - (b - a) * (1 - weight) if weight >= 0.5 else a + (b - a) * weight


def frame_db(frame: FloatArray) -> float:
    """Energy of a frame in dB relative to full scale (-100 for digital silence)."""
    power = float(np.dot(frame, frame)) / max(1, len(frame))
    return 10.0 * float(np.log10(power + 1e-10))


class Segmenter:
    """Turns a 16 kHz stream into speech segments with pre-roll, endpointing and a length cap."""

    def __init__(self, config: VadConfig, detector: SpeechDetector | None = None) -> None:
        self.config = config
        self._detector = detector or WebRtcDetector(config.aggressiveness)
        self._n = config.frame_samples
        self._pending = np.zeros(0, dtype=np.float32)  # samples not yet a whole VAD frame
        self._position = 0  # stream sample at the start of `_pending`
        preroll_frames = -(-config.preroll_ms // config.frame_ms)
        self._history: deque[tuple[int, FloatArray, bool]] = deque(
            maxlen=max(preroll_frames, config.start_window)
        )
        self._in_speech = False
        self._segment_samples = 0
        self._silence: list[FloatArray] = []  # trailing unvoiced frames held while deciding on an end
        self._silence_start = 0
        self._endpoint_frames = (
            None if config.endpoint_ms is None else -(-config.endpoint_ms // config.frame_ms)
        )
        self._tail_frames = config.tail_ms // config.frame_ms
        self._pause_frames = None if config.pause_ms is None else -(-config.pause_ms // config.frame_ms)
        self._level = (
            None
            if config.quiet_db is None
            else SpeechLevel(
                config.level_frames, config.quiet_db, round(config.level_memory_s * 1000 / config.frame_ms)
            )
        )
        self._frame_no = 0

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    @property
    def position(self) -> int:
        """Stream samples classified so far."""
        return self._position

    def push(self, samples: FloatArray) -> list[SegmentEvent]:
        """Feed audio of any length; returns the events it completes."""
        data = np.concatenate((self._pending, samples)) if self._pending.size else samples
        events: list[SegmentEvent] = []
        n = self._n
        whole = len(data) - len(data) % n
        for offset in range(0, whole, n):
            self._frame(data[offset : offset + n], events)
        self._pending = np.array(data[whole:], dtype=np.float32)
        return events

    def flush(self) -> list[SegmentEvent]:
        """Force the end of the current segment (client Finalize or end of stream)."""
        events: list[SegmentEvent] = []
        if self._in_speech:
            held = [*self._silence, self._pending] if self._pending.size else list(self._silence)
            for chunk in held:
                events.append(SegmentAudio(chunk))
                self._segment_samples += len(chunk)
            self._position += len(self._pending)
            self._pending = np.zeros(0, dtype=np.float32)
            self._silence = []
            events.append(SegmentEnd(self._position, "flush"))
            self._in_speech = False
        else:
            # Unclassified tail outside speech: shorter than one VAD frame of presumed silence.
            self._position += len(self._pending)
            self._pending = np.zeros(0, dtype=np.float32)
        self._history.clear()
        return events

    def _frame(self, frame: FloatArray, events: list[SegmentEvent]) -> None:
        start = self._position
        self._position += len(frame)
        voiced = self._detector.is_speech(frame)
        self._frame_no += 1
        if voiced and self._level is not None:
            db = frame_db(frame)
            if self._level.quiet(self._frame_no, db):
                voiced = False  # noise, or the detector's hangover after the words: not speech
            else:
                self._level.add(self._frame_no, db)
        if not self._in_speech:
            self._history.append((start, frame, voiced))
            recent = list(self._history)[-self.config.start_window :]
            if sum(v for _, _, v in recent) >= self.config.start_frames:
                self._start_segment(events)
            return
        if voiced:
            paused = self._paused
            self._maybe_split_at_pause(len(frame), events)
            self._release_silence(events)
            if paused:
                events.append(SpeechResumed(start))
            self._append(frame, events)
        else:
            if not self._silence:
                self._silence_start = start
            self._silence.append(frame)
            if len(self._silence) == self._pause_frames:
                events.append(SegmentPause(np.concatenate(self._silence)))
            may_end = self._may_end_frames()
            if may_end is not None and len(self._silence) == may_end:
                tail = self._silence[: self._tail_frames]
                events.append(SegmentMayEnd(np.concatenate(tail) if tail else np.zeros(0, np.float32)))
            if self._endpoint_frames is not None and len(self._silence) >= self._endpoint_frames:
                self._end_segment(events, "silence")
                return
        self._check_length(voiced, events)

    @property
    def _paused(self) -> bool:
        """The silence held now has reached the pause that ends an utterance."""
        return self._pause_frames is not None and len(self._silence) >= self._pause_frames

    def _may_end_frames(self) -> int | None:
        """Pause frames after which `SegmentMayEnd` goes out (None: not before the endpoint itself).

        The lead grows with the segment up to `early_final_ms`, since the final pass it buys time for
        takes time in proportion to the segment, while every pause the speaker then talks on wastes one."""
        if self._endpoint_frames is None or self._pause_frames is not None:
            return None  # with a pause the utterance's final is made there, long before the endpoint
        cfg = self.config
        scale = min(1.0, self._segment_samples / (cfg.early_final_full_s * SAMPLE_RATE))
        lead = round(cfg.early_final_ms * scale / cfg.frame_ms)
        frames = max(self._tail_frames, self._endpoint_frames - lead, 1)
        return frames if frames < self._endpoint_frames else None

    def _start_segment(self, events: list[SegmentEvent]) -> None:
        history = list(self._history)
        trigger = next(s for s, _, v in history[-self.config.start_window :] if v)
        preroll = self.config.preroll_ms * SAMPLE_RATE // 1000
        kept = [(s, f) for s, f, _ in history if s + len(f) > trigger - preroll]
        self._history.clear()
        self._in_speech = True
        self._segment_samples = 0
        events.append(SegmentStart(kept[0][0], trigger))
        for _, f in kept:
            self._append(f, events)

    def _append(self, frame: FloatArray, events: list[SegmentEvent]) -> None:
        events.append(SegmentAudio(frame))
        self._segment_samples += len(frame)

    def _release_silence(self, events: list[SegmentEvent]) -> None:
        for f in self._silence:
            self._append(f, events)
        self._silence = []

    def _end_segment(self, events: list[SegmentEvent], reason: EndReason) -> None:
        tail = self._silence[: self._tail_frames]
        for f in tail:
            self._append(f, events)
        end = self._silence_start + sum(len(f) for f in tail) if self._silence else self._position
        events.append(SegmentEnd(end, reason))
        self._in_speech = False
        # Frames of the closing silence after the tail may hold the next onset: keep them as pre-roll.
        for i, f in enumerate(self._silence[self._tail_frames :], start=self._tail_frames):
            self._history.append((self._silence_start + i * self._n, f, False))
        self._silence = []

    def _maybe_split_at_pause(self, frame_len: int, events: list[SegmentEvent]) -> None:
        """Speech resumed (a frame of `frame_len` samples, not yet appended) after a pause: split a long
        segment in the pause's middle."""
        cfg = self.config
        held = sum(len(f) for f in self._silence)
        if (
            len(self._silence) < cfg.split_frames
            or (self._segment_samples + held) < cfg.split_after_s * SAMPLE_RATE
        ):
            return
        keep = len(self._silence) // 2
        if self._paused:
            assert self._pause_frames is not None
            keep = max(keep, self._pause_frames)  # the utterance already ended there: no overlap
        self._split(keep, events, unappended=frame_len)

    def _check_length(self, voiced: bool, events: list[SegmentEvent]) -> None:
        held = sum(len(f) for f in self._silence)
        if self._segment_samples + held >= self.config.max_segment_s * SAMPLE_RATE:
            self._split(len(self._silence), events)

    def _split(self, keep: int, events: list[SegmentEvent], unappended: int = 0) -> None:
        """End the segment after `keep` held silence frames and open the next one at once, losing nothing:
        the speaker goes on, so the rest of the held silence starts the new segment."""
        closing, opening = self._silence[:keep], self._silence[keep:]
        for f in closing:
            self._append(f, events)
        split = self._position - unappended - sum(len(f) for f in opening)
        events.append(SegmentEnd(split, "max_length"))
        events.append(SegmentStart(split, split, continued=True))
        self._segment_samples = 0
        self._silence = []
        for f in opening:
            self._append(f, events)
