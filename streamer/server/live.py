"""The one transport-neutral live stream: every dialect's connection runs through `LiveStream`.

    live = LiveStream(state, connection, accepted, request_id)  # after state.reserve(...) succeeded
    await live.serve(prepare)  # registers, prepares the transport, runs, always releases the slot

A receive loop (frames through the dialect, audio in order, idle timeout, stream duration, backpressure)
and a sender (the bounded `Outbox`) run in one task group; results flow from the sans-I/O `Stream`
through a `StreamRunner` and the model's `Batcher`. One `End` says why the stream ended; the dialect turns
it into a close. Shutdown (`stop(End("shutdown"))`) reads the audio already on its way, flushes the finals
and closes; nothing a client sent before the end is dropped without the close saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from streamer import SAMPLE_RATE
from streamer.decoding.keyterms import Keyterm, KeytermError, check_keyterms, parse_keyterm
from streamer.errors import ENGINE_FAILURE_TEXT, StreamerError
from streamer.protocol import (
    ListenParams,
    StreamSummary,
    event_message,
    metadata_message,
    stream_label,
    with_stream,
)
from streamer.runner import StreamRunner
from streamer.server.ingress.base import (
    Accepted,
    Audio,
    EndKind,
    EndOfAudio,
    Flush,
    Inbound,
    ProtocolError,
    Reconfigure,
    Reply,
    Start,
    StreamInfo,
)
from streamer.server.outbox import Outbox, Outgoing
from streamer.server.state import Job, ServedModel, ServerState
from streamer.server.timed_stream import TimedStream
from streamer.server.transport import Connection, Frame
from streamer.server.watch import owner_of, watch_keys
from streamer.server.webhooks import WebhookQueue
from streamer.transcript import Event, Transcript

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0
"""How long a server-side close waits for the client's close frame."""
SHUTDOWN_READ_S = 0.5
"""On shutdown, how long a stream may still read audio that was already on its way (see _read_buffered)."""
SHUTDOWN_QUIET_S = 0.02


@dataclass(frozen=True)
class End:
    """Why a live stream ended, with a detail for the close reason and the log."""

    kind: EndKind
    detail: str = ""

    @property
    def flushes(self) -> bool:
        """Ends after which the client still gets its last finals and the closing summary."""
        return self.kind in ("close_stream", "idle", "max_duration", "shutdown")


class LiveStream:
    """One live stream over any `Connection`, spoken in any dialect, ended by one `End`."""

    def __init__(
        self, state: ServerState, connection: Connection, accepted: Accepted, request_id: str
    ) -> None:
        self.state = state
        self.conn = connection
        self.dialect = accepted.dialect
        self.key = accepted.key
        self.id = request_id
        """This connection's id (logs, the live-stream registry)."""
        self.resume = accepted.resume
        self.request_id = accepted.resume.request_id if accepted.resume is not None else request_id
        """The id results carry: a resumed stream keeps the one its first connection had."""
        self.call_id: str | None = None
        self.created = datetime.now(UTC)
        self.model: ServedModel = state.models[accepted.model]
        self.params: ListenParams | None = None
        self.stream: TimedStream | None = None
        self.runner: StreamRunner | None = None
        self.info: StreamInfo | None = None
        self._sha = hashlib.sha256()
        self._coalesced = 0  # the stream's coalesced hops already exported
        self._out = Outbox(state.config.limits.max_outbox)
        self._recv_task: asyncio.Task[End] | None = None
        self._stop: End | None = None
        self._client_gone = False
        self._opened = time.monotonic()
        self._late_bytes = 0
        """Audio received after the end of audio (not transcribed; the close code says so)."""
        self._label = ""
        self._watch_keys: list[str] = []
        self._callback: str | None = None
        self._webhook: WebhookQueue | None = None
        self._keyterms: tuple[Keyterm, ...] = ()
        """The stream's own keyterms in effect (the server's come on top)."""
        if accepted.params is not None:
            self._start(accepted.params)

    @property
    def duration(self) -> float:
        """Seconds of audio received so far."""
        return self.stream.duration if self.stream is not None else 0.0

    def _start(self, params: ListenParams) -> None:
        """Build the stream for `params` (at the handshake, or on the dialect's Start); raises
        CallbackRefused when the stream names a callback this server may not post to."""
        state = self.state
        if params.callback is not None:
            state.webhooks.check_url(params.callback)
        # A platform's start message was parsed without the server's keyterm limits at hand.
        check_keyterms(params.keyterms, state.config.keyterm_limits)
        self.model = state.models[params.model]
        self.params = params
        self.stream = TimedStream(
            self.model.engine,
            params.streaming_config(state.config.streaming),
            params.audio_format,
            self.model.detector_factory(),
            self.resume.start if self.resume is not None else None,
        )
        self.runner = StreamRunner(self.stream, self.model.batcher, self._on_event, self._on_error, self.id)
        self.info = StreamInfo(self.request_id, params, self.model.identity)
        self._callback = params.callback or state.config.delivery.callback_url
        self._label = stream_label(self.request_id, self.dialect.name, params.tag, self.call_id)
        ids = [self.request_id] if self.call_id is None else [self.request_id, self.call_id]
        self._watch_keys = watch_keys(owner_of(self.key), params.tag, ids)
        self._bytes_per_second = params.audio_format.bytes_per_second()
        self._out.on_drop = state.metrics.interims_dropped.labels(self.model.name).inc

    def stop(self, end: End) -> None:
        """Interrupt the receive loop (shutdown, engine failure); the first reason wins."""
        if self._stop is None:
            self._stop = end
        if self._recv_task is not None and not self._recv_task.done():
            self._recv_task.cancel()

    # ---- lifetime ----

    async def serve(self, prepare: Callable[[], Awaitable[None]]) -> None:
        """Run the stream whose slot the caller has just reserved, and release it, whatever happens.

        Registration (jobs that shutdown drains, `state.live`) happens before the first await, so a
        shutdown never misses a stream that admission let in. `prepare` completes the handshake.
        """
        state = self.state
        job = Job.current(stop=lambda: self.stop(End("shutdown")))
        state.jobs.add(job)
        state.live[self.id] = self
        state.metrics.dialect_streams.labels(self.dialect.name).inc()
        if self.params is not None:
            state.metrics.streams.labels(self.model.name, "live").inc()
        try:
            await prepare()
            await self.run()
        finally:
            # Also reached on a bug, or when shutdown cancels a stream that overran the grace period: never
            # leave windows in flight or the connection open.
            if self.runner is not None:
                await self.runner.cancel()
            self._count_coalesced()
            if not self.conn.closed:
                code, reason = self._abort_frame()
                log.warning("stream %s: aborted, closing with %d (%s)", self.id, code, reason)
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(CLOSE_TIMEOUT_S):
                        await self.conn.close(code, reason)
            if self._webhook is not None:
                self._webhook.close()  # it delivers what is queued on its own
            state.jobs.discard(job)
            state.live.pop(self.id, None)
            state.release("live", self.key)
            job.finished.set()

    def _abort_frame(self) -> tuple[int, str]:
        """Close code and reason when the stream could not end normally."""
        if self._stop is not None and self._stop.kind == "shutdown":
            return 1012, "server shutting down"
        if self.state.failure is not None:
            return 1011, self.state.failure  # this worker process is failing; a retry lands on another
        return 1011, "internal error"

    async def run(self) -> None:
        self._log_opened()
        async with asyncio.TaskGroup() as group:
            sender = group.create_task(self._send_loop(), name=f"send-{self.id}")
            self._recv_task = group.create_task(self._receive_loop(), name=f"receive-{self.id}")
            if self._stop is not None:  # stopped before the loop existed (shutdown during the handshake)
                self._recv_task.cancel()
            end = await self._receive_outcome()
            await self._end(end, sender)

    def _log_opened(self) -> None:
        p = self.params
        if p is None:
            log.info(
                "stream %s: %s connection open, waiting for its start message", self.id, self.dialect.name
            )
            return
        log.info(
            "stream %s: opened (%s%s) model=%s encoding=%s rate=%d channels=%d%s interim=%s endpointing=%s",
            self.id,
            self.dialect.name,
            f" call {self.call_id}" if self.call_id else "",
            self.model.name,
            p.encoding,
            p.sample_rate,
            p.channels,
            " multichannel" if p.multichannel else "",
            p.interim_results,
            "off" if p.endpointing_off else (p.endpointing_ms if p.endpointing_ms is not None else "default"),
        )
        if self.resume is not None:
            start = self.resume.start
            log.info(
                "stream %s: resumes stream %s at %.3f s (sample %d) (finals sent up to %s s)%s",
                self.id,
                self.request_id,
                start.at / SAMPLE_RATE,
                start.at,
                ", ".join(f"{end / SAMPLE_RATE:.3f}" for end in start.final_through),
                f"; {self.resume.lost_seconds:.3f} s of audio the client no longer had are lost"
                if self.resume.lost_seconds
                else "",
            )
        if p.ignored or p.unknown:
            log.debug(
                "stream %s: ignoring parameters: unimplemented %s, unknown %s",
                self.id,
                list(p.ignored),
                list(p.unknown),
            )

    async def _receive_outcome(self) -> End:
        assert self._recv_task is not None
        try:
            return await self._recv_task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._stop is None or (current is not None and current.cancelling()):
                raise  # we are being cancelled ourselves, not just our receive loop
            return self._stop

    # ---- input ----

    def _decode(self, frame: Frame) -> list[Inbound]:
        if frame.kind == "binary":
            return self.dialect.receive_binary(frame.data)
        return self.dialect.receive_text(frame.text)

    async def _receive_loop(self) -> End:
        limits = self.state.config.limits
        deadline = self._opened + limits.max_stream_duration_s
        too_long = End(
            "max_duration", f"maximum stream duration of {limits.max_stream_duration_s:g} s reached"
        )
        if self.params is not None:
            await self._use_keyterms(self.params.keyterms)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return too_long
            try:
                frame = await self.conn.receive(timeout=min(limits.idle_timeout_s, remaining))
            except TimeoutError:
                return too_long if remaining < limits.idle_timeout_s else End("idle")
            if frame.kind == "error":
                # The transport has already closed with the matching code (1009 for an oversized frame).
                log.info("stream %s: connection error: %s", self.id, frame.detail)
                return End("client_closed", frame.detail)
            if frame.kind == "closed":
                return End("client_closed")
            fed = False
            for item in self._decode(frame):
                if isinstance(item, Reconfigure):
                    await self._reconfigure(item)
                    continue
                end = self._apply(item)
                if end is not None:
                    return end
                if isinstance(item, Start) and self.params is not None:
                    await self._use_keyterms(self.params.keyterms)
                fed = fed or isinstance(item, Audio)
            if fed:
                end = await self._backpressure()
                if end is not None:
                    return end

    async def _use_keyterms(self, terms: Sequence[Keyterm]) -> None:
        """Finals from now on favour `terms` and the server's own for the model. Compiling them may run
        G2P (milliseconds per new word), so it runs on a thread; audio waits in the socket meanwhile."""
        compiler = self.model.keyterms
        if self.stream is None or (not terms and not compiler.defaults and not self._keyterms):
            return
        trie = await asyncio.to_thread(compiler.compile, terms)
        self.stream.set_keyterms(compiler.decoder, trie)
        self._keyterms = tuple(terms)
        if trie is not None:
            log.info(
                "stream %s: %d keyterms%s",
                self.id,
                len(trie),
                f"; cannot be spelled in the model's units: {', '.join(trie.skipped)}"
                if trie.skipped
                else "",
            )

    async def _reconfigure(self, item: Reconfigure) -> None:
        """Replace the stream's keyterms (the server's stay) and answer; over the limits, keep the old."""
        try:
            terms = [parse_keyterm(t, with_boost=False) for t in item.keyterms]
            check_keyterms(terms, self.model.keyterms.limits, "keyterms")
        except KeytermError as exc:
            self._send_optional(self.dialect.configured([t.text for t in self._keyterms], str(exc)))
            return
        await self._use_keyterms(terms)
        self._send_optional(self.dialect.configured([t.text for t in terms], None))

    def _apply(self, item: Inbound) -> End | None:
        """Act on one inbound item; an End when it ends the stream."""
        if isinstance(item, Audio):
            if self.runner is None:
                return End("bad_message", "audio before the stream's start message")
            self._feed(item.data)
        elif isinstance(item, Start):
            if self.runner is not None:
                return End("bad_message", "a second start message")
            return self._late_start(item)
        elif isinstance(item, Flush):
            if self.runner is not None:
                self.runner.finalize()
        elif isinstance(item, Reply):
            self._send(item.text)
        elif isinstance(item, EndOfAudio):
            return End("close_stream")
        elif isinstance(item, ProtocolError):
            return End("bad_message", item.detail)
        return None

    def _late_start(self, start: Start) -> End | None:
        self.call_id = start.call_id
        if start.params.model != self.model.name:
            # The slot was reserved for the dialect's default model: the chosen one must have room too.
            saturated = self.state.saturation(start.params.model)
            if saturated is not None:
                return End("bad_message", saturated)
        try:
            self._start(start.params)
        except StreamerError as exc:
            return End("bad_message", str(exc))
        self.state.metrics.streams.labels(self.model.name, "live").inc()
        self._log_opened()
        return None

    async def _backpressure(self) -> End | None:
        """Stop reading (so the transport pushes back on the client) while this stream has many windows in
        flight or its client is slow to take results."""
        limits = self.state.config.limits
        assert self.runner is not None
        if self.runner.inflight > limits.max_inflight_windows:
            await self.runner.wait_idle()
        if self._out.qsize() > limits.max_outbox:
            try:
                async with asyncio.timeout(limits.idle_timeout_s):
                    await self._out.join()
            except TimeoutError:
                return End("slow_client")
        return None

    def _feed(self, data: bytes) -> None:
        assert self.runner is not None
        self._sha.update(data)
        self.runner.feed(data)
        self.state.metrics.audio_seconds.labels(self.model.name).inc(len(data) / self._bytes_per_second)
        self._count_coalesced()

    def _count_coalesced(self) -> None:
        """Export the hops the stream's partial windows merged since the last call (degraded interims)."""
        if self.stream is None:
            return
        hops = self.stream.coalesced_hops
        if hops > self._coalesced:
            self.state.metrics.coalesced_hops.labels(self.model.name).inc(hops - self._coalesced)
            self._coalesced = hops

    async def _read_buffered(self) -> None:
        """Shutdown: take in the audio that had already reached us when the stream was stopped, so that
        every word sent before the signal gets its final. Reads until the connection has been quiet for
        SHUTDOWN_QUIET_S, for SHUTDOWN_READ_S (or a quarter of the grace period) at most."""
        grace = self.state.config.limits.shutdown_grace_s
        deadline = time.monotonic() + min(SHUTDOWN_READ_S, grace / 4)
        while not self.conn.closed and (left := deadline - time.monotonic()) > 0:
            try:
                frame = await self.conn.receive(timeout=min(SHUTDOWN_QUIET_S, left))
            except TimeoutError:
                return
            if frame.kind in ("closed", "error"):
                return
            for item in self._decode(frame):
                # Audio, a late start message, replies: as usual. The end of audio or a protocol error
                # ends the reading; the flush follows anyway.
                if self._apply(item) is not None:
                    return

    async def _read_after_end(self) -> None:
        """After the end of audio, until cancelled: count audio that arrives anyway, answer nothing."""
        while not self.conn.closed:
            frame = await self.conn.receive()
            if frame.kind in ("closed", "error"):
                return
            for item in self._decode(frame):
                if isinstance(item, Audio):
                    self._late_bytes += len(item.data)

    # ---- the end ----

    async def _end(self, end: End, sender: asyncio.Task[None]) -> None:
        late: asyncio.Task[None] | None = None
        if end.kind == "shutdown":
            await self._read_buffered()
        elif end.kind == "close_stream":
            # Keep reading while the finals are made: audio sent after the end is not transcribed, and the
            # close code then says so instead of dropping it silently.
            late = asyncio.get_running_loop().create_task(self._read_after_end(), name=f"late-{self.id}")
        # A client that hangs up without ending the stream gets nothing more, but a webhook or watchers of
        # the stream still get the finals of what it sent (a phone call that just hangs up).
        flush = end.flushes or (end.kind == "client_closed" and self._delivers_elsewhere())
        try:
            if flush and self.runner is not None:
                resumes = end.kind == "shutdown" and self.params is not None and self.params.resumable
                await self.runner.finish(hand_over=resumes)
                if self.runner.error is not None:
                    log.error("stream %s: engine failure while finishing: %s", self.id, self.runner.error)
                    end = End("engine_error", str(self.runner.error))
                    flush = False
            if not flush and self.runner is not None:
                await self.runner.cancel()
            if end.kind == "slow_client":
                self._client_gone = True  # drop what is queued; the connection is not draining anyway
            elif end.kind == "engine_error":
                self._send_optional(self.dialect.failed(ENGINE_FAILURE_TEXT))
            elif end.kind == "bad_message":
                self._send_optional(self.dialect.rejected(end.detail))
            elif flush and self.stream is not None:
                summary = self.summary()
                self._send_optional(self.dialect.finished(summary))
                self._deliver(metadata_message(summary), "other", must_deliver=True)
            self._out.put_nowait(None)
            # A client that stopped reading must not hold the stream (or the shutdown) forever.
            _, pending = await asyncio.wait({sender}, timeout=CLOSE_TIMEOUT_S)
            if pending:
                sender.cancel()
        finally:
            if late is not None:
                late.cancel()
                await asyncio.gather(late, return_exceptions=True)
        if end.kind == "close_stream" and self._late_bytes:
            log.info("stream %s: %d bytes of audio after the end not transcribed", self.id, self._late_bytes)
            end = End(
                "bad_message", f"{self._late_bytes} bytes of audio after CloseStream were not transcribed"
            )
        self.state.metrics.closed.labels(end.kind).inc()
        if end.kind == "client_closed":
            log.info(
                "stream %s: client closed (code %s%s) after %.2f s of audio",
                self.id,
                self.conn.close_code,
                f": {end.detail}" if end.detail else "",
                self.duration,
            )
            return
        code, reason = self.dialect.close_frame(end.kind, end.detail, self.state.config.limits.idle_timeout_s)
        if not self.conn.closed:
            with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self.conn.close(code, reason)
        log.info(
            "stream %s: closed with %d (%s%s) after %.2f s of audio",
            self.id,
            code,
            end.kind,
            f": {end.detail}" if end.detail else "",
            self.duration,
        )

    def summary(self) -> StreamSummary:
        return StreamSummary(
            request_id=self.request_id,
            created=self.created,
            duration=self.duration,
            channels=self.params.output_channels if self.params is not None else 1,
            sha256=self._sha.hexdigest(),
            models=(self.model.identity,),
        )

    # ---- output ----

    def _send(self, text: str) -> None:
        self._out.put_nowait(Outgoing(text, "other"))

    def _send_optional(self, text: str | None) -> None:
        if text is not None:
            self._send(text)

    def _on_event(self, event: Event) -> None:
        assert self.info is not None and self.stream is not None
        kind: Literal["partial", "final", "other"] = "other"
        channel = 0
        if isinstance(event, Transcript):
            kind = "final" if event.is_final else "partial"
            channel = event.channel
        text = self.dialect.outbound(event, self.info)
        if text is not None:
            self._out.put_nowait(
                Outgoing(text, kind, self.stream.events_origin if kind != "other" else None, channel)
            )
        self._deliver_event(event, kind, channel)

    # ---- deliveries: watchers and the webhook, in Deepgram's format whatever the dialect ----

    def _delivers_elsewhere(self) -> bool:
        """Whether the stream's results have consumers besides its own connection."""
        tagged = self.params is not None and self.params.tag is not None
        return self._callback is not None or tagged or self.state.watch.watched(self._watch_keys)

    def _deliver_event(self, event: Event, kind: Literal["partial", "final", "other"], channel: int) -> None:
        assert self.info is not None
        params = self.info.params
        to_webhook = self._callback is not None and (
            kind == "final" or (kind == "partial" and params.callback_interims)
        )
        # Finals are always encoded: a watcher who joins later gets the last few.
        if kind != "final" and not to_webhook and not self.state.watch.watched(self._watch_keys):
            return
        text = event_message(event, self.info.channels, self.info.model, self.request_id, params.vad_events)
        if text is not None:
            self._deliver(text, kind, must_deliver=kind == "final", channel=channel, to_webhook=to_webhook)

    def _deliver(
        self,
        text: str,
        kind: Literal["partial", "final", "other"],
        must_deliver: bool,
        channel: int = 0,
        to_webhook: bool = True,
    ) -> None:
        if not self._watch_keys:
            return  # never started
        text = with_stream(text, self._label)
        self.state.watch.publish(self._watch_keys, text, kind, channel)
        if to_webhook and self._callback is not None:
            if self._webhook is None:
                method = self.params.callback_method if self.params is not None else "POST"
                self._webhook = self.state.webhooks.open(self.request_id, self._callback, method)
            self._webhook.put(text, must_deliver)

    def _on_error(self, exc: Exception) -> None:
        self.state.metrics.engine_failures.labels(self.model.name).inc()
        log.error("stream %s: engine failure: %s", self.id, exc)
        self.stop(End("engine_error", str(exc)))

    async def _send_loop(self) -> None:
        metrics = self.state.metrics
        while True:
            item = await self._out.get()
            try:
                if item is None:
                    return
                if self._client_gone:
                    continue  # keep draining so that join() in the receive loop returns
                try:
                    await self.conn.send_text(item.text)
                except (ConnectionError, RuntimeError) as exc:
                    self._client_gone = True
                    log.info("stream %s: client gone while sending: %s", self.id, exc)
                    continue
                if item.origin is not None:
                    elapsed = time.perf_counter() - item.origin
                    histogram = metrics.final_latency if item.kind == "final" else metrics.partial_latency
                    histogram.labels(self.model.name).observe(elapsed)
            finally:
                self._out.task_done()
