"""One client stream (sans-I/O): wire bytes in, one `Session` per transcribed channel.

`Stream(engine, config, fmt)`: `receive_bytes(chunk)`, `finalize()`, `close()`; `take_requests()` gives
`WindowRequest`s (each names its channel), answered by `receive_logprobs(request, logprobs)`;
`take_events()` gives events of every channel in the order they happened.

A resumed stream (`start=StreamStart(...)`) begins mid-stream: its audio starts at `start.at` of the
whole stream, each channel drops what it had already made final and reports whole-stream times.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from streamer import SAMPLE_RATE
from streamer.audio import AudioDecoder, AudioFormat
from streamer.ctc import FloatArray
from streamer.decoding import BeamResult, KeytermTrie, WordDecoder
from streamer.engine.base import Engine
from streamer.session import Session, StreamingConfig, WindowRequest
from streamer.transcript import Event, shifted
from streamer.vad import SpeechDetector


@dataclass(frozen=True)
class StreamStart:
    """Where a resumed stream's audio begins (`at`, 16 kHz samples of the whole stream) and up to where
    each channel is already final (`final_through`); a channel skips the replayed audio before that."""

    at: int
    final_through: Sequence[int]

    def origin(self, channel: int) -> int:
        """The stream sample where `channel`'s new session starts (audio between its last final and a
        later `at` was lost)."""
        return max(self.at, self.final_through[channel])


class Stream:
    """Decodes and splits (or downmixes) the audio and drives a session per channel."""

    def __init__(
        self,
        engine: Engine,
        config: StreamingConfig,
        fmt: AudioFormat,
        detector_factory: Callable[[], SpeechDetector] | None = None,
        start: StreamStart | None = None,
    ) -> None:
        self.format = fmt
        self.decoder = AudioDecoder(fmt)
        channels = fmt.output_channels
        if start is not None and len(start.final_through) != channels:
            raise ValueError(f"resume point has {len(start.final_through)} channels, the stream {channels}")
        self.sessions = [
            Session(engine, config, channel=i, detector=detector_factory() if detector_factory else None)
            for i in range(channels)
        ]
        self.start_sample = start.at if start is not None else 0
        self._channel_origins = [start.origin(i) if start is not None else 0 for i in range(channels)]
        self._skip = [origin - self.start_sample for origin in self._channel_origins]
        self.bytes_received = 0
        self._closed = False

    @property
    def duration(self) -> float:
        """Seconds of the whole stream (a resumed one counts from the stream's beginning), per channel."""
        return self.start_sample / SAMPLE_RATE + self.decoder.input_samples / self.format.sample_rate

    @property
    def closed(self) -> bool:
        return self._closed

    def set_keyterms(self, decoder: WordDecoder | None, keyterms: KeytermTrie | None) -> None:
        """Every channel's finals from now on favour `keyterms` (see `Session.set_keyterms`)."""
        for session in self.sessions:
            session.set_keyterms(decoder, keyterms)

    def receive_bytes(self, chunk: bytes) -> None:
        """Audio bytes in any chunking; odd and partial samples carry to the next chunk."""
        if self._closed:
            raise RuntimeError("stream is closed")
        self.bytes_received += len(chunk)
        self._feed(self.decoder.decode(chunk))

    def _feed(self, per_channel: Sequence[FloatArray]) -> None:
        for i, (session, samples) in enumerate(zip(self.sessions, per_channel, strict=True)):
            if self._skip[i]:  # replayed audio this channel had already made final
                dropped = min(self._skip[i], len(samples))
                self._skip[i] -= dropped
                samples = samples[dropped:]
            if len(samples):
                session.receive_audio(samples)

    def finalize(self) -> None:
        for session in self.sessions:
            session.finalize()

    def close(self) -> None:
        """End of audio: drain the resampler, then flush every session (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._feed(self.decoder.flush())
        for session in self.sessions:
            session.close()

    def hand_over(self) -> None:
        """End of audio at a server restart for a client that resumes elsewhere (`Session.hand_over`)."""
        if self._closed:
            return
        self._closed = True
        for session in self.sessions:
            session.hand_over()

    def cancel(self) -> None:
        self._closed = True
        for session in self.sessions:
            session.cancel()

    def take_requests(self) -> list[WindowRequest]:
        return [r for s in self.sessions for r in s.take_requests()]

    def take_cancelled(self) -> list[tuple[int, int]]:
        """(channel, request id) of requests whose answers are no longer needed."""
        return [(s.channel, rid) for s in self.sessions for rid in s.take_cancelled()]

    def receive_logprobs(
        self, request: WindowRequest, logprobs: FloatArray, decoded: BeamResult | None = None
    ) -> None:
        self.sessions[request.channel].receive_logprobs(request.id, logprobs, decoded)

    def fail_request(self, request: WindowRequest) -> None:
        self.sessions[request.channel].fail_request(request.id)

    def take_events(self) -> list[Event]:
        return [shifted(e, self._channel_origins[s.channel]) for s in self.sessions for e in s.take_events()]

    @property
    def done(self) -> bool:
        return self._closed and all(s.done for s in self.sessions)

    @property
    def samples_to_model(self) -> int:
        return sum(s.samples_to_model for s in self.sessions)

    @property
    def speech_samples(self) -> int:
        return sum(s.speech_samples for s in self.sessions)

    @property
    def coalesced_hops(self) -> int:
        return sum(s.coalesced_hops for s in self.sessions)
