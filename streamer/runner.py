"""Async glue between a sans-I/O `Stream` and its model's `Batcher`.

`runner = StreamRunner(stream, batcher, on_event)`; call `feed(bytes)`, `finalize()`, then `await
runner.finish()` (closes the stream and waits until every final has been handed to `on_event`).
`await runner.cancel()` drops everything in flight (client gone). A failed window sets `runner.error`
and calls `on_error` once; the caller decides how to close.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from streamer.batcher import Batcher
from streamer.decoding import BeamResult
from streamer.errors import StreamerError
from streamer.session import WindowRequest
from streamer.stream import Stream
from streamer.transcript import Event

log = logging.getLogger(__name__)


class StreamRunner:
    """Owns the inference tasks of one stream."""

    def __init__(
        self,
        stream: Stream,
        batcher: Batcher,
        on_event: Callable[[Event], None],
        on_error: Callable[[Exception], None] | None = None,
        stream_id: str = "-",
    ) -> None:
        self.stream = stream
        self.batcher = batcher
        self._on_event = on_event
        self._on_error = on_error
        self.stream_id = stream_id
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_request: dict[tuple[int, int], asyncio.Task[None]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self.error: Exception | None = None

    @property
    def inflight(self) -> int:
        return len(self._tasks)

    def feed(self, chunk: bytes) -> None:
        self.stream.receive_bytes(chunk)
        self._pump()

    def finalize(self) -> None:
        self.stream.finalize()
        self._pump()

    async def finish(self, hand_over: bool = False) -> None:
        """Close the stream and wait for every final (or the first error). `hand_over`: the client resumes
        elsewhere, so an utterance still open is left to it (`Stream.hand_over`) instead of made final."""
        if hand_over:
            self.stream.hand_over()
        else:
            self.stream.close()
        self._pump()
        while not self.stream.done and self.error is None:
            self._idle.clear()
            if not self._tasks:
                break  # nothing in flight yet not done: would wait forever
            await self._idle.wait()

    async def wait_idle(self) -> None:
        """Wait until no window is in flight."""
        while self._tasks:
            self._idle.clear()
            await self._idle.wait()

    async def cancel(self) -> None:
        self.stream.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._idle.set()

    def _pump(self) -> None:
        for request in self.stream.take_requests():
            task = asyncio.get_running_loop().create_task(self._infer(request))
            self._tasks.add(task)
            self._by_request[(request.channel, request.id)] = task
            task.add_done_callback(self._done)
        # Superseded windows: cancelling their tasks makes the batcher skip them if not yet run.
        for key in self.stream.take_cancelled():
            stale = self._by_request.pop(key, None)
            if stale is not None:
                stale.cancel()
        for event in self.stream.take_events():
            self._on_event(event)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()

    async def _infer(self, request: WindowRequest) -> None:
        priority = 1 if request.kind == "window" else 0
        try:
            decoded: BeamResult | None = None
            if request.decode is not None:
                # A final's beam search runs on the inference thread, right after the model.
                logprobs, result = await self.batcher.infer_then(request.audio, priority, request.decode)
                decoded = result if isinstance(result, BeamResult) else None
            else:
                logprobs = await self.batcher.infer(request.audio, priority)
        except StreamerError as exc:
            self._by_request.pop((request.channel, request.id), None)
            self.stream.fail_request(request)
            if self.error is None:
                self.error = exc
                log.warning("stream %s: window failed: %s", self.stream_id, exc)
                if self._on_error is not None:
                    self._on_error(exc)
            self._idle.set()
            return
        self._by_request.pop((request.channel, request.id), None)
        if self.stream.closed and self.stream.done:
            return
        self.stream.receive_logprobs(request, logprobs, decoded)
        self._pump()
