"""One client stream (sans-I/O): wire bytes in, one `Session` per transcribed channel.

`Stream(engine, config, fmt)`: `receive_bytes(chunk)`, `finalize()`, `close()`; `take_requests()` gives
`WindowRequest`s (each names its channel), answered by `receive_logprobs(request, logprobs)`;
`take_events()` gives events of every channel in the order they happened.
"""

from __future__ import annotations

from collections.abc import Callable

from streamer.audio import AudioDecoder, AudioFormat
from streamer.ctc import FloatArray
from streamer.engine.base import Engine
from streamer.session import Session, StreamingConfig, WindowRequest
from streamer.transcript import Event
from streamer.vad import SpeechDetector


class Stream:
    """Decodes and splits (or downmixes) the audio and drives a session per channel."""

    def __init__(
        self,
        engine: Engine,
        config: StreamingConfig,
        fmt: AudioFormat,
        detector_factory: Callable[[], SpeechDetector] | None = None,
    ) -> None:
        self.format = fmt
        self.decoder = AudioDecoder(fmt)
        self.sessions = [
            Session(engine, config, channel=i, detector=detector_factory() if detector_factory else None)
            for i in range(fmt.output_channels)
        ]
        self.bytes_received = 0
        self._closed = False

    @property
    def duration(self) -> float:
        """Seconds of audio received (at the input rate), per channel."""
        return self.decoder.input_samples / self.format.sample_rate

    @property
    def closed(self) -> bool:
        return self._closed

    def receive_bytes(self, chunk: bytes) -> None:
        """Audio bytes in any chunking; odd and partial samples carry to the next chunk."""
        if self._closed:
            raise RuntimeError("stream is closed")
        self.bytes_received += len(chunk)
        for session, samples in zip(self.sessions, self.decoder.decode(chunk), strict=True):
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
        for session, samples in zip(self.sessions, self.decoder.flush(), strict=True):
            if len(samples):
                session.receive_audio(samples)
            session.close()

    def cancel(self) -> None:
        self._closed = True
        for session in self.sessions:
            session.cancel()

    def take_requests(self) -> list[WindowRequest]:
        return [r for s in self.sessions for r in s.take_requests()]

    def take_cancelled(self) -> list[tuple[int, int]]:
        """(channel, request id) of requests whose answers are no longer needed."""
        return [(s.channel, rid) for s in self.sessions for rid in s.take_cancelled()]

    def receive_logprobs(self, request: WindowRequest, logprobs: FloatArray) -> None:
        self.sessions[request.channel].receive_logprobs(request.id, logprobs)

    def fail_request(self, request: WindowRequest) -> None:
        self.sessions[request.channel].fail_request(request.id)

    def take_events(self) -> list[Event]:
        return [e for s in self.sessions for e in s.take_events()]

    @property
    def done(self) -> bool:
        return self._closed and all(s.done for s in self.sessions)

    @property
    def samples_to_model(self) -> int:
        return sum(s.samples_to_model for s in self.sessions)

    @property
    def speech_samples(self) -> int:
        return sum(s.speech_samples for s in self.sessions)
