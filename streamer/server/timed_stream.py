"""A `Stream` that remembers when the input behind each window arrived, for the latency histograms."""

from __future__ import annotations

import time
from collections.abc import Callable

from streamer.audio import AudioFormat
from streamer.ctc import FloatArray
from streamer.decoding import BeamResult
from streamer.engine import Engine
from streamer.session import StreamingConfig, WindowRequest
from streamer.stream import Stream, StreamStart
from streamer.transcript import Event
from streamer.vad import SpeechDetector


class TimedStream(Stream):
    """A `Stream` that remembers when the input behind each window arrived, for the latency histograms.

    The runner calls one input method (`receive_bytes`, `finalize`, `close`, or `receive_logprobs` when a
    window lands) and then at once `take_requests` and `take_events`; so new requests inherit the arrival
    time of the input that caused them, and `events_origin` is that time for the events just taken.
    """

    def __init__(
        self,
        engine: Engine,
        config: StreamingConfig,
        fmt: AudioFormat,
        detector_factory: Callable[[], SpeechDetector] | None = None,
        start: StreamStart | None = None,
    ) -> None:
        super().__init__(engine, config, fmt, detector_factory, start)
        self._cause = time.perf_counter()
        self._origins: dict[tuple[int, int], float] = {}
        self.events_origin = self._cause

    def receive_bytes(self, chunk: bytes) -> None:
        self._cause = time.perf_counter()
        super().receive_bytes(chunk)

    def finalize(self) -> None:
        self._cause = time.perf_counter()
        super().finalize()

    def close(self) -> None:
        self._cause = time.perf_counter()
        super().close()

    def take_requests(self) -> list[WindowRequest]:
        requests = super().take_requests()
        for request in requests:
            self._origins[(request.channel, request.id)] = self._cause
        return requests

    def receive_logprobs(
        self, request: WindowRequest, logprobs: FloatArray, decoded: BeamResult | None = None
    ) -> None:
        self._cause = self._origins.pop((request.channel, request.id), time.perf_counter())
        super().receive_logprobs(request, logprobs, decoded)

    def fail_request(self, request: WindowRequest) -> None:
        self._origins.pop((request.channel, request.id), None)
        super().fail_request(request)

    def take_cancelled(self) -> list[tuple[int, int]]:
        # Superseded windows never land: forget their arrival times, or a long stream leaks one per window.
        cancelled = super().take_cancelled()
        for key in cancelled:
            self._origins.pop(key, None)
        return cancelled

    def take_events(self) -> list[Event]:
        self.events_origin = self._cause
        return super().take_events()
