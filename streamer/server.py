"""The HTTP and WebSocket server (aiohttp): Deepgram-compatible `/v1/listen`, health, readiness and metrics.

    app = create_app(config, engines={"en": ToneEngine()})  # engines injectable; None loads config.models
    run(config)  # python -m streamer: load the models, serve, stop gracefully on SIGTERM

Each live stream is one `_LiveStream`: a receive loop (audio in order, control messages, idle timeout,
backpressure) and a sender, in one task group; results flow from the sans-I/O `Stream` through a
`StreamRunner` and the model's `Batcher`. This is the only module that maps `streamer.errors` to HTTP
statuses and WebSocket close codes.

Admission (`ServerState.reserve`): origin, API key, per-key and global stream limits, then the model's
measured load (`streamer.load.LoadTracker`, fed by its batcher) decide at the handshake; `app[STATE].live`
holds the live streams (tests and /metrics count them). `ssl_context(config)` builds the TLS context.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import logging
import signal
import socket
import ssl
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import soxr
from aiohttp import WSMsgType, web

from streamer import SAMPLE_RATE, __version__
from streamer.audio import MAX_CHANNELS, MAX_RATE, MIN_RATE, AudioFormat
from streamer.batcher import Batcher
from streamer.config import ModelSpec, ServerConfig, normalise_origin
from streamer.ctc import FloatArray
from streamer.engine import Engine, load_engine
from streamer.errors import (
    AudioFormatError,
    ConfigError,
    EngineError,
    OverloadError,
    RequestError,
    StreamerError,
)
from streamer.load import LoadTracker
from streamer.metrics import Metrics
from streamer.protocol import (
    CloseStream,
    Configure,
    ControlMessageError,
    Finalize,
    ListenParams,
    ModelIdentity,
    ModelInfo,
    ParamError,
    StreamSummary,
    configure_reply,
    decode_control,
    error_message,
    http_error,
    metadata_message,
    parse_listen_params,
    prerecorded_response,
    results_message,
    speech_started_message,
    utterance_end_message,
)
from streamer.runner import StreamRunner
from streamer.session import StreamingConfig, WindowRequest
from streamer.stream import Stream
from streamer.transcript import Event, SpeechStarted, Transcript, UtteranceEnd
from streamer.vad import SpeechDetector

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0
"""How long a server-side close waits for the client's close frame."""
SHUTDOWN_READ_S = 0.5
"""On shutdown, how long a stream may still read audio that was already on its way (see _read_buffered)."""
SHUTDOWN_QUIET_S = 0.02
SEND_BUFFER_BYTES = 16 * 1024
"""Send buffers of a live stream's socket, in the kernel and in the transport (see _limit_buffers)."""
RECEIVE_BUFFER_BYTES = 256 * 1024
"""Kernel receive buffer of a live stream's socket (see _limit_buffers)."""
RETRY_AFTER_S = 1
MODEL_NAMESPACE = uuid.UUID("6f1d2a58-43a4-4d0e-9a57-8f9c3e0b7a11")


# ---- errors only the edge knows --------------------------------------------------------------------------


class AuthError(RequestError):
    """Missing or wrong API key."""


class PayloadTooLarge(RequestError):
    """A pre-recorded body over the configured limit."""


class NotWebSocket(RequestError):
    """A plain GET on the WebSocket endpoint."""


class ShuttingDown(OverloadError):
    """The server no longer accepts streams."""


class ForbiddenOrigin(RequestError):
    """A browser page from an origin that is not allowed (`--allowed-origin`)."""


class KeyLimitReached(OverloadError):
    """The API key already has as many streams as its `max_streams` allows."""


class EngineSaturated(OverloadError):
    """The model's engine has no headroom left: more streams would make every stream fall behind."""


@dataclass(frozen=True)
class _HttpMapping:
    status: int
    err_code: str
    reason: str
    """Label of the rejected-requests metric."""


# Most specific first: the first class an error is an instance of decides its status, code and metric label.
_HTTP_MAPPINGS: tuple[tuple[type[StreamerError], _HttpMapping], ...] = (
    (AuthError, _HttpMapping(401, "INVALID_AUTH", "auth")),
    (ForbiddenOrigin, _HttpMapping(403, "FORBIDDEN_ORIGIN", "origin")),
    (PayloadTooLarge, _HttpMapping(413, "PAYLOAD_TOO_LARGE", "too_large")),
    (NotWebSocket, _HttpMapping(426, "UPGRADE_REQUIRED", "not_websocket")),
    (AudioFormatError, _HttpMapping(400, "INVALID_AUDIO", "bad_audio")),
    (RequestError, _HttpMapping(400, "BAD_REQUEST", "bad_request")),
    (ShuttingDown, _HttpMapping(503, "SHUTTING_DOWN", "shutting_down")),
    # Deepgram's status and code for a key over its concurrency limit.
    (KeyLimitReached, _HttpMapping(429, "TOO_MANY_REQUESTS", "key_limit")),
    (EngineSaturated, _HttpMapping(503, "OVERLOADED", "saturated")),
    (OverloadError, _HttpMapping(503, "TOO_MANY_STREAMS", "overload")),
    (EngineError, _HttpMapping(500, "ENGINE_FAILURE", "engine")),
)


def _http_mapping(exc: StreamerError) -> _HttpMapping:
    if isinstance(exc, ParamError):  # carries its own Deepgram error code
        return _HttpMapping(400, exc.err_code, "bad_param")
    for kind, mapping in _HTTP_MAPPINGS:
        if isinstance(exc, kind):
            return mapping
    return _HttpMapping(500, "INTERNAL_ERROR", "internal")


def _error_response(state: ServerState, exc: StreamerError, request_id: str) -> web.Response:
    mapping = _http_mapping(exc)
    state.metrics.rejected.labels(mapping.reason).inc()
    param = exc.param if isinstance(exc, RequestError) else None
    allowed = exc.allowed if isinstance(exc, ParamError) else None
    headers = {"dg-request-id": request_id}
    if mapping.status in (429, 503):
        headers["Retry-After"] = str(RETRY_AFTER_S)
    if mapping.status == 401:
        headers["WWW-Authenticate"] = "Token"
    log.info("request %s refused: %d %s: %s", request_id, mapping.status, mapping.err_code, exc)
    return web.Response(
        status=mapping.status,
        text=http_error(mapping.err_code, str(exc), request_id, param=param, allowed=allowed),
        content_type="application/json",
        headers=headers,
    )


# ---- how a live stream ends, and the close code for it ---------------------------------------------------

EndKind = Literal[
    "close_stream",
    "idle",
    "max_duration",
    "shutdown",
    "bad_message",
    "engine_error",
    "slow_client",
    "client_closed",
]


@dataclass(frozen=True)
class _End:
    kind: EndKind
    detail: str = ""

    @property
    def flushes(self) -> bool:
        """Ends after which the client still gets its last finals and the Metadata message."""
        return self.kind in ("close_stream", "idle", "max_duration", "shutdown")


def _close_frame(end: _End, idle_timeout_s: float) -> tuple[int, str]:
    if end.kind == "close_stream":
        return 1000, ""
    if end.kind == "idle":
        # Deepgram's code and prefix for the same condition, so clients that match on it keep working.
        return 1011, f"NET-0001: no audio or KeepAlive received for {idle_timeout_s:g} s"
    if end.kind == "shutdown":
        return 1012, "server shutting down"
    if end.kind in ("bad_message", "max_duration"):
        return 1008, end.detail
    if end.kind == "engine_error":
        return 1011, "engine failure"
    if end.kind == "slow_client":
        return 1008, f"results not read for {idle_timeout_s:g} s"
    return 1000, ""


def _reason_bytes(reason: str) -> bytes:
    # A close frame's reason is at most 123 bytes of UTF-8.
    data = reason.encode()
    return data if len(data) <= 123 else data[:120].decode(errors="ignore").encode() + b"..."


# ---- models and shared state -----------------------------------------------------------------------------


@dataclass
class ServedModel:
    """One configured model: its engine, its batcher and how it is reported to clients."""

    spec: ModelSpec
    engine: Engine
    batcher: Batcher
    identity: ModelIdentity
    energy_vad: bool

    @property
    def name(self) -> str:
        return self.spec.name

    def detector_factory(self) -> Callable[[], SpeechDetector] | None:
        if not self.energy_vad:
            return None  # sessions build webrtcvad from the VAD config
        from streamer.engine.fake import EnergyDetector

        return EnergyDetector


def load_engines(config: ServerConfig) -> dict[str, Engine]:
    """Load every configured model (blocking). Raises ModelLoadError or ConfigError."""
    engines: dict[str, Engine] = {}
    try:
        for spec in config.models:
            log.info("loading model %s from %s", spec.name, spec.spec)
            engines[spec.name] = load_engine(spec.spec, config.engine)
    except BaseException:
        for engine in engines.values():
            engine.close()
        raise
    return engines


def _public_arch(engine_name: str) -> str:
    # An engine loaded from a folder is named by its path: clients get the folder's name, not our layout.
    return Path(engine_name).name if Path(engine_name).exists() else engine_name


@dataclass(eq=False)
class _Job:
    """A live stream or pre-recorded request in progress: its handler task and how to ask it to end."""

    task: asyncio.Task[object]
    stop: Callable[[], None] | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def current(cls, stop: Callable[[], None] | None = None) -> _Job:
        task = asyncio.current_task()
        assert task is not None, "only called from a request handler"
        return cls(task, stop)


async def _wait_all(jobs: Sequence[_Job], timeout: float) -> None:
    waiters = [asyncio.ensure_future(job.finished.wait()) for job in jobs]
    _, pending = await asyncio.wait(waiters, timeout=timeout)
    for waiter in pending:
        waiter.cancel()


class ServerState:
    """Per-app state: models, metrics, live streams and the capacity counter."""

    def __init__(self, config: ServerConfig, engines: dict[str, Engine], owns_engines: bool) -> None:
        missing = [m.name for m in config.models if m.name not in engines]
        if missing:
            raise ConfigError(f"no engine given for model(s): {', '.join(missing)}")
        self.config = config
        self.metrics = Metrics()
        self.models: dict[str, ServedModel] = {}
        for spec in config.models:
            engine = engines[spec.name]
            self.models[spec.name] = ServedModel(
                spec=spec,
                engine=engine,
                batcher=Batcher(
                    engine,
                    config.batcher,
                    on_batch=self._batch_observer(spec.name),
                    load=LoadTracker(config.limits.load_window_s, lanes=max(1, engine.concurrency)),
                ),
                identity=ModelIdentity(
                    str(uuid.uuid5(MODEL_NAMESPACE, f"{spec.name}={spec.spec}")),
                    ModelInfo(spec.name, __version__, _public_arch(engine.name)),
                ),
                energy_vad=config.uses_energy_vad(spec),
            )
            self.metrics.track_batcher(spec.name, self.models[spec.name].batcher.stats)
        self.model_names = [m.name for m in config.models]
        self._owns_engines = owns_engines
        self.jobs: set[_Job] = set()
        """Live streams and pre-recorded requests in progress, which shutdown lets finish."""
        self.active = 0
        self.live: dict[str, _LiveStream] = {}
        """Live streams by request id, from the handshake until their handler has released everything
        (tests and /metrics count them to show that nothing outlives its connection)."""
        self._key_limits = dict(config.api_key_limits)
        self.key_streams: dict[str, int] = {}
        """Streams and requests in progress per API key that has its own limit."""
        self.accepting = True
        self.started = False
        self._shutdown: asyncio.Task[None] | None = None

    def _batch_observer(self, name: str) -> Callable[[int, float], None]:
        def observe(size: int, seconds: float) -> None:
            self.metrics.observe_batch(name, size, seconds)

        return observe

    # capacity: check and take a slot with no await in between, so concurrent handshakes cannot overshoot
    def reserve(self, kind: str, model: str, key: str | None = None) -> None:
        """Take a slot for a stream or request of `model` by API key `key` (None: auth off), or raise
        ShuttingDown, OverloadError (max streams), KeyLimitReached or EngineSaturated."""
        if not self.accepting:
            raise ShuttingDown("the server is shutting down")
        if self.active >= self.config.limits.max_streams:
            raise OverloadError(f"all {self.config.limits.max_streams} streams are busy; retry later")
        limit = self._key_limits.get(key) if key is not None else None
        if key is not None and limit is not None and self.key_streams.get(key, 0) >= limit:
            raise KeyLimitReached(f"this API key already has its limit of {limit} concurrent streams")
        saturated = self.saturation(model)
        if saturated is not None:
            raise EngineSaturated(saturated)
        self.active += 1
        if key is not None and limit is not None:
            self.key_streams[key] = self.key_streams.get(key, 0) + 1
        self.metrics.active_streams.labels(kind).inc()

    def release(self, kind: str, key: str | None = None) -> None:
        self.active -= 1
        if key is not None and key in self.key_streams:
            self.key_streams[key] -= 1
            if not self.key_streams[key]:
                del self.key_streams[key]
        self.metrics.active_streams.labels(kind).dec()

    def saturation(self, model: str) -> str | None:
        """Why `model` takes no more streams now (its engine's measured load is over a limit), or None."""
        limits = self.config.limits
        load = self.models[model].batcher.load.snapshot()
        if load.busy_fraction >= limits.max_busy_fraction:
            return (
                f"model {model} is at capacity (engine busy {load.busy_fraction:.0%} of the last "
                f"{load.window_s:g} s); retry later"
            )
        if load.queue_wait_s > limits.max_queue_wait_s:
            return (
                f"model {model} is at capacity (windows waited {load.queue_wait_s:.2f} s on average in "
                "its queue); retry later"
            )
        return None

    @property
    def ready(self) -> bool:
        return (
            self.started
            and self.accepting
            and self.active < self.config.limits.max_streams
            and not any(self.saturation(name) for name in self.models)
        )

    def refresh_gauges(self) -> None:
        """Bring the gauges that are read, not pushed (load, live sessions, tasks) up to date."""
        metrics = self.metrics
        metrics.live_sessions.set(len(self.live))
        metrics.tasks.set(len(asyncio.all_tasks()))
        for name, model in self.models.items():
            snapshot = model.batcher.load.snapshot()
            metrics.engine_busy.labels(name).set(snapshot.busy_fraction)
            metrics.queue_wait.labels(name).set(snapshot.queue_wait_s)
            metrics.queued_windows.labels(name).set(model.batcher.queued)
            metrics.failed_batches.labels(name).set(model.batcher.stats.failed_batches)

    async def start(self) -> None:
        for model in self.models.values():
            model.batcher.start()
        self.started = True
        for model in self.models.values():
            log.info(
                "model %s serves language %s: %s (%s, %s VAD)",
                model.name,
                model.spec.language,
                model.spec.spec,
                model.engine.name,
                "energy" if model.energy_vad else "webrtc",
            )
        if self.config.auth_enabled:
            log.info("authentication on: %d API key(s)", len(self.config.api_keys))
        else:
            log.warning("authentication off: the server is open to anyone who can reach it (see --api-key)")

    async def shutdown(self) -> None:
        """Stop accepting, flush every live stream (1012) within the grace period (idempotent)."""
        if self._shutdown is None:
            self._shutdown = asyncio.get_running_loop().create_task(self._drain())
        await self._shutdown

    async def _drain(self) -> None:
        self.accepting = False
        jobs = list(self.jobs)
        grace = self.config.limits.shutdown_grace_s
        if not jobs:
            return
        log.info("shutting down: finishing %d stream(s) and request(s), grace %.1f s", len(jobs), grace)
        for job in jobs:
            if job.stop is not None:
                job.stop()
        await _wait_all(jobs, grace)
        late = [job for job in jobs if not job.finished.is_set()]
        if late:
            log.warning("shutdown grace over: cancelling %d stream(s) and request(s)", len(late))
            for job in late:
                job.task.cancel()
            await _wait_all(late, 1.0)

    async def close(self) -> None:
        for model in self.models.values():
            await model.batcher.stop()
            if self._owns_engines:
                model.engine.close()


STATE: web.AppKey[ServerState] = web.AppKey("streamer_state", ServerState)


# ---- live streams ---------------------------------------------------------------------------------------


class _TimedStream(Stream):
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
    ) -> None:
        super().__init__(engine, config, fmt, detector_factory)
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

    def receive_logprobs(self, request: WindowRequest, logprobs: FloatArray) -> None:
        self._cause = self._origins.pop((request.channel, request.id), time.perf_counter())
        super().receive_logprobs(request, logprobs)

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


@dataclass(frozen=True)
class _Outgoing:
    text: str
    kind: Literal["partial", "final", "other"]
    origin: float | None = None
    channel: int = 0


class _Outbox:
    """Messages waiting for one stream's sender: never blocks the producer, bounded for interim results.

    `put_nowait(item)`: when `limit` messages already wait, the oldest waiting interim result is dropped
    first (one that a later message of its channel supersedes, else the oldest), so a client that reads
    slowly gets fewer interims, never fewer finals: finals, Metadata and other messages are always kept,
    and if they alone pile up beyond the limit the receive loop stops reading audio (see `qsize`, `join`).
    Otherwise like `asyncio.Queue`: `await get()`, `task_done()`, `await join()`; None ends the sender.
    """

    def __init__(self, limit: int, on_drop: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self._items: deque[_Outgoing | None] = deque()
        self._ready = asyncio.Event()
        self._unfinished = 0
        self._all_done = asyncio.Event()
        self._all_done.set()
        self._on_drop = on_drop
        self.dropped = 0
        """Interim results dropped for this stream."""

    def qsize(self) -> int:
        return len(self._items)

    def put_nowait(self, item: _Outgoing | None) -> None:
        if len(self._items) >= self.limit:
            self._drop_one_interim()
        self._items.append(item)
        self._unfinished += 1
        self._all_done.clear()
        self._ready.set()

    def _drop_one_interim(self) -> None:
        victim: int | None = None
        later_channels: set[int] = set()
        # Newest to oldest: an interim with a newer result of its channel behind it is stale already;
        # `victim` ends on the oldest of them.
        for index in range(len(self._items) - 1, -1, -1):
            item = self._items[index]
            if item is None or item.kind == "other":
                continue
            if item.kind == "partial" and item.channel in later_channels:
                victim = index
            later_channels.add(item.channel)
        if victim is None:
            victim = next(
                (i for i, item in enumerate(self._items) if item is not None and item.kind == "partial"), None
            )
        if victim is None:
            return  # only finals and other messages: keep them all
        del self._items[victim]
        self._unfinished -= 1
        self.dropped += 1
        if self._on_drop is not None:
            self._on_drop()

    async def get(self) -> _Outgoing | None:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def task_done(self) -> None:
        self._unfinished -= 1
        if self._unfinished <= 0:
            self._all_done.set()

    async def join(self) -> None:
        """Wait until every message put so far has been sent (or dropped)."""
        await self._all_done.wait()


class _LiveStream:
    """One WebSocket stream: receive loop and sender in a task group, ended by one `_End`."""

    def __init__(
        self,
        state: ServerState,
        model: ServedModel,
        params: ListenParams,
        request_id: str,
        ws: web.WebSocketResponse,
    ) -> None:
        self.state = state
        self.model = model
        self.params = params
        self.id = request_id
        self.ws = ws
        self.created = datetime.now(UTC)
        self.stream = _TimedStream(
            model.engine,
            params.streaming_config(state.config.streaming),
            params.audio_format,
            model.detector_factory(),
        )
        self.runner = StreamRunner(self.stream, model.batcher, self._on_event, self._on_error, request_id)
        self._channels = params.output_channels
        self._bytes_per_second = params.audio_format.bytes_per_second()
        self._sha = hashlib.sha256()
        dropped = state.metrics.interims_dropped.labels(model.name)
        self._out = _Outbox(state.config.limits.max_outbox, on_drop=dropped.inc)
        self._recv_task: asyncio.Task[_End] | None = None
        self._stop: _End | None = None
        self._client_gone = False
        self._opened = time.monotonic()
        self._late_bytes = 0
        """Audio received after CloseStream (not transcribed; the close code says so)."""

    def stop(self, end: _End) -> None:
        """Interrupt the receive loop (shutdown, engine failure); the first reason wins."""
        if self._stop is None:
            self._stop = end
        if self._recv_task is not None and not self._recv_task.done():
            self._recv_task.cancel()

    def abort_frame(self) -> tuple[int, str]:
        """Close code and reason when the stream could not end normally."""
        if self._stop is not None and self._stop.kind == "shutdown":
            return 1012, "server shutting down"
        return 1011, "internal error"

    async def run(self) -> None:
        p = self.params
        log.info(
            "stream %s: opened model=%s encoding=%s rate=%d channels=%d%s interim=%s endpointing=%s",
            self.id,
            self.model.name,
            p.encoding,
            p.sample_rate,
            p.channels,
            " multichannel" if p.multichannel else "",
            p.interim_results,
            "off" if p.endpointing_off else (p.endpointing_ms if p.endpointing_ms is not None else "default"),
        )
        if p.ignored or p.unknown:
            log.debug(
                "stream %s: ignoring parameters: unimplemented %s, unknown %s",
                self.id,
                list(p.ignored),
                list(p.unknown),
            )
        async with asyncio.TaskGroup() as group:
            sender = group.create_task(self._send_loop(), name=f"send-{self.id}")
            self._recv_task = group.create_task(self._receive_loop(), name=f"receive-{self.id}")
            if self._stop is not None:  # stopped before the loop existed (shutdown during the handshake)
                self._recv_task.cancel()
            end = await self._receive_outcome()
            await self._end(end, sender)

    async def _receive_outcome(self) -> _End:
        assert self._recv_task is not None
        try:
            return await self._recv_task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._stop is None or (current is not None and current.cancelling()):
                raise  # we are being cancelled ourselves, not just our receive loop
            return self._stop

    async def _receive_loop(self) -> _End:
        ws = self.ws
        limits = self.state.config.limits
        deadline = self._opened + limits.max_stream_duration_s
        too_long = _End(
            "max_duration", f"maximum stream duration of {limits.max_stream_duration_s:g} s reached"
        )
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return too_long
            try:
                msg = await ws.receive(timeout=min(limits.idle_timeout_s, remaining))
            except TimeoutError:
                return too_long if remaining < limits.idle_timeout_s else _End("idle")
            if msg.type is WSMsgType.BINARY:
                data: bytes = msg.data
                if not data:
                    return _End("close_stream")  # the old Deepgram convention: an empty frame ends the stream
                self._feed(data)
                # Backpressure: stop reading (so TCP pushes back on the client) while this stream has
                # many windows in flight or its client is slow to take results.
                if self.runner.inflight > limits.max_inflight_windows:
                    await self.runner.wait_idle()
                if self._out.qsize() > limits.max_outbox:
                    try:
                        async with asyncio.timeout(limits.idle_timeout_s):
                            await self._out.join()
                    except TimeoutError:
                        return _End("slow_client")
            elif msg.type is WSMsgType.TEXT:
                try:
                    control = decode_control(msg.data)
                except ControlMessageError as exc:
                    return _End("bad_message", str(exc))
                if isinstance(control, CloseStream):
                    return _End("close_stream")
                if isinstance(control, Finalize):
                    self.runner.finalize()
                if isinstance(control, Configure):
                    self._send(configure_reply(control, self.id))
                # KeepAlive: receiving it already reset the idle timer.
            elif msg.type is WSMsgType.ERROR:
                # aiohttp has already closed with the matching code (1009 for an oversized frame).
                log.info("stream %s: connection error: %s", self.id, ws.exception())
                return _End("client_closed", str(ws.exception()))
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return _End("client_closed")

    async def _end(self, end: _End, sender: asyncio.Task[None]) -> None:
        late: asyncio.Task[None] | None = None
        if end.kind == "shutdown":
            await self._read_buffered()
        elif end.kind == "close_stream":
            # Keep reading while the finals are made: audio sent after CloseStream is not transcribed,
            # and the close code then says so instead of dropping it silently.
            late = asyncio.get_running_loop().create_task(self._read_after_close(), name=f"late-{self.id}")
        try:
            if end.flushes:
                await self.runner.finish()
                if self.runner.error is not None:
                    end = _End("engine_error", str(self.runner.error))
            if not end.flushes:
                await self.runner.cancel()
            if end.kind == "slow_client":
                self._client_gone = True  # drop what is queued; the socket is not draining anyway
            elif end.kind == "engine_error":
                self._send(error_message(f"transcription failed: {end.detail}", "ENGINE_FAILURE"))
            elif end.flushes:
                self._send(metadata_message(self.summary()))
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
            log.info(
                "stream %s: %d bytes of audio after CloseStream not transcribed", self.id, self._late_bytes
            )
            end = _End(
                "bad_message", f"{self._late_bytes} bytes of audio after CloseStream were not transcribed"
            )
        metrics = self.state.metrics
        metrics.closed.labels(end.kind).inc()
        if end.kind == "client_closed":
            log.info(
                "stream %s: client closed (code %s%s) after %.2f s of audio",
                self.id,
                self.ws.close_code,
                f": {end.detail}" if end.detail else "",
                self.stream.duration,
            )
            return
        code, reason = _close_frame(end, self.state.config.limits.idle_timeout_s)
        if not self.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self.ws.close(code=code, message=_reason_bytes(reason))
        log.info(
            "stream %s: closed with %d (%s%s) after %.2f s of audio",
            self.id,
            code,
            end.kind,
            f": {end.detail}" if end.detail else "",
            self.stream.duration,
        )

    def _feed(self, data: bytes) -> None:
        self._sha.update(data)
        self.runner.feed(data)
        self.state.metrics.audio_seconds.labels(self.model.name).inc(len(data) / self._bytes_per_second)

    async def _read_buffered(self) -> None:
        """Shutdown: take in the audio that had already reached us when the stream was stopped, so that
        every word sent before the signal gets its final. Reads until the socket has been quiet for
        SHUTDOWN_QUIET_S, for SHUTDOWN_READ_S (or a quarter of the grace period) at most."""
        grace = self.state.config.limits.shutdown_grace_s
        deadline = time.monotonic() + min(SHUTDOWN_READ_S, grace / 4)
        while not self.ws.closed and (left := deadline - time.monotonic()) > 0:
            try:
                msg = await self.ws.receive(timeout=min(SHUTDOWN_QUIET_S, left))
            except TimeoutError:
                return
            if msg.type is WSMsgType.BINARY and msg.data:
                self._feed(msg.data)
            elif msg.type is not WSMsgType.TEXT:
                return  # closed, broken, or the empty frame that ends a stream
            # Text: KeepAlive and Finalize change nothing now (the flush follows), CloseStream is implied.

    async def _read_after_close(self) -> None:
        """After CloseStream, until cancelled: count audio that arrives anyway, ignore control messages."""
        while not self.ws.closed:
            msg = await self.ws.receive()
            if msg.type is WSMsgType.BINARY:
                self._late_bytes += len(msg.data)
            elif msg.type is not WSMsgType.TEXT:
                return

    def summary(self) -> StreamSummary:
        return StreamSummary(
            request_id=self.id,
            created=self.created,
            duration=self.stream.duration,
            channels=self._channels,
            sha256=self._sha.hexdigest(),
            models=(self.model.identity,),
        )

    # ---- output ----

    def _send(self, text: str) -> None:
        self._out.put_nowait(_Outgoing(text, "other"))

    def _on_event(self, event: Event) -> None:
        origin = self.stream.events_origin
        if isinstance(event, Transcript):
            text = results_message(event, self._channels, self.model.identity, self.id)
            kind: Literal["partial", "final"] = "final" if event.is_final else "partial"
            self._out.put_nowait(_Outgoing(text, kind, origin, event.channel))
        elif isinstance(event, SpeechStarted):
            if self.params.vad_events:
                self._send(speech_started_message(event, self._channels))
        elif isinstance(event, UtteranceEnd):
            self._send(utterance_end_message(event, self._channels))

    def _on_error(self, exc: Exception) -> None:
        self.state.metrics.engine_failures.labels(self.model.name).inc()
        log.error("stream %s: engine failure: %s", self.id, exc)
        self.stop(_End("engine_error", str(exc)))

    async def _send_loop(self) -> None:
        metrics = self.state.metrics
        partial = metrics.partial_latency.labels(self.model.name)
        final = metrics.final_latency.labels(self.model.name)
        while True:
            item = await self._out.get()
            try:
                if item is None:
                    return
                if self._client_gone:
                    continue  # keep draining so that join() in the receive loop returns
                try:
                    await self.ws.send_str(item.text)
                except (ConnectionError, RuntimeError) as exc:
                    self._client_gone = True
                    log.info("stream %s: client gone while sending: %s", self.id, exc)
                    continue
                if item.origin is not None:
                    elapsed = time.perf_counter() - item.origin
                    (final if item.kind == "final" else partial).observe(elapsed)
            finally:
                self._out.task_done()


# ---- handlers ------------------------------------------------------------------------------------------


def _offered_protocols(request: web.Request) -> list[str]:
    header = request.headers.get("Sec-WebSocket-Protocol", "")
    return [p.strip() for p in header.split(",") if p.strip()]


def _check_origin(state: ServerState, request: web.Request) -> None:
    """Raise ForbiddenOrigin when origins are restricted and a browser page from another one asks.

    Browsers always send Origin on a WebSocket handshake (and on cross-origin POSTs); other clients
    usually send none, and a missing Origin is allowed: the check protects users' browsers from foreign
    pages (which could otherwise use a browser's network position), not the server from clients.
    """
    allowed = state.config.allowed_origins
    origin = request.headers.get("Origin")
    if allowed and origin is not None and normalise_origin(origin) not in allowed:
        raise ForbiddenOrigin(f"origin {origin[:100]!r} is not allowed", "Origin")


def _authorize(state: ServerState, request: web.Request) -> str | None:
    """The configured key the request carries (None when auth is off); raises AuthError otherwise.

    Keys come as `Authorization: Token <key>` / `Bearer <key>`, or as the browser form
    `Sec-WebSocket-Protocol: token, <key>`. Never log a candidate or the key.
    """
    keys = state.config.api_keys
    if not keys:
        return None
    candidates: list[str] = []
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        candidates.append(value.strip())
    offered = _offered_protocols(request)
    if "token" in offered:
        candidates.extend(p for p in offered if p != "token")
    if not candidates:
        raise AuthError("missing credentials: send 'Authorization: Token <key>'")
    matched: str | None = None
    for candidate in candidates:  # every candidate against every key: no early exit
        found = _match_key(keys, candidate)
        matched = found if found is not None else matched
    if matched is None:
        raise AuthError("invalid credentials")
    return matched


def _match_key(keys: frozenset[str], candidate: str) -> str | None:
    """The key equal to `candidate`, compared in constant time with every key.

    Digests are compared rather than the keys themselves, so that the time taken depends neither on how
    long a key is nor on how much of it the candidate got right, and the loop never stops early, so it
    does not tell which key matched either.
    """
    given = hashlib.sha256(candidate.encode()).digest()
    matched: str | None = None
    for key in sorted(keys):
        equal = hmac.compare_digest(hashlib.sha256(key.encode()).digest(), given)
        matched = key if equal else matched
    return matched


def _admit(state: ServerState, request: web.Request) -> tuple[str | None, ListenParams]:
    """The checks every /v1/listen request passes, in order: accepting, origin, key, parameters."""
    if not state.accepting:
        raise ShuttingDown("the server is shutting down")
    _check_origin(state, request)
    key = _authorize(state, request)
    return key, parse_listen_params(request.query, state.model_names)


async def _listen_ws(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    request_id = str(uuid.uuid4())
    # Everything from the first check to registering the stream runs without an await, so shutdown and
    # capacity see a consistent picture.
    try:
        key, params = _admit(state, request)
        subprotocols = ("token",) if "token" in _offered_protocols(request) else ()
        ws = web.WebSocketResponse(
            protocols=subprotocols,
            max_msg_size=state.config.limits.max_message_bytes,
            timeout=CLOSE_TIMEOUT_S,
            autoping=True,
            writer_limit=SEND_BUFFER_BYTES // 2,  # look for transport backpressure every 8 KiB sent
            # No permessage-deflate: PCM audio barely compresses, yet every frame would be inflated on the
            # event loop, each connection would hold ~300 KB of zlib state, and in the soak benchmark that
            # state made the RSS creep as connections came and went. Clients fall back without it.
            compress=False,
        )
        if not ws.can_prepare(request).ok:
            raise NotWebSocket(
                "this endpoint speaks WebSocket; POST audio here for pre-recorded transcription"
            )
        live = _LiveStream(state, state.models[params.model], params, request_id, ws)
        state.reserve("live", params.model, key)
    except StreamerError as exc:
        return _error_response(state, exc, request_id)
    job = _Job.current(stop=lambda: live.stop(_End("shutdown")))
    state.jobs.add(job)
    state.live[request_id] = live
    state.metrics.streams.labels(params.model, "live").inc()
    try:
        ws.headers["dg-request-id"] = request_id
        await ws.prepare(request)
        _limit_buffers(request)
        await live.run()
    finally:
        # Also reached on a bug, or when shutdown cancels a stream that overran the grace period: never
        # leave windows in flight or the socket open.
        await live.runner.cancel()
        if ws.prepared and not ws.closed:
            code, reason = live.abort_frame()
            log.warning("stream %s: aborted, closing with %d (%s)", request_id, code, reason)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await ws.close(code=code, message=_reason_bytes(reason))
        state.jobs.discard(job)
        state.live.pop(request_id, None)
        state.release("live", key)
        job.finished.set()
    return ws


def _limit_buffers(request: web.Request) -> None:
    """Fix the socket buffers of a live stream, so that what a client can park in the kernel is bounded.

    Left alone, Linux grows a socket's buffers to megabytes (4-6 MB by default) when the other side
    stops reading. Send: results are a few KB/s, and 16 KiB (doubled by Linux) still carry 150 KB/s over
    a 200 ms round trip; a slow reader then shows up in the stream's outbox, where interim results are
    coalesced, instead of hundreds of stale interims queued below it. Receive: 256 KiB (doubled) carry
    the largest audio format (8 channels at 48 kHz, 768 KB/s) over a 300 ms round trip, and bound what a
    client sending faster than real time has in flight while the server is not reading it.
    """
    transport = request.transport
    if transport is None:
        return
    with contextlib.suppress(OSError, RuntimeError, NotImplementedError):
        transport.set_write_buffer_limits(high=SEND_BUFFER_BYTES)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body of {request.content_length} bytes is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode_body(body: bytes, params: ListenParams, raw: bool) -> tuple[bytes, AudioFormat]:
    """The body as wire bytes and their format: raw when `encoding` was given, else a file (WAV, FLAC)."""
    if not body:
        raise AudioFormatError("empty body: send WAV or FLAC, or raw audio with encoding and sample_rate")
    if raw:
        return body, params.audio_format
    try:
        data, rate = sf.read(io.BytesIO(body), dtype="int16", always_2d=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise AudioFormatError(
            f"cannot decode the body as an audio file ({exc}); for raw audio set encoding and sample_rate"
        ) from None
    channels = int(data.shape[1])
    if channels > MAX_CHANNELS:
        raise AudioFormatError(f"{channels} channels; at most {MAX_CHANNELS} are supported")
    if not MIN_RATE <= rate <= MAX_RATE:
        floats = soxr.resample(data.astype(np.float32) / 32768.0, rate, SAMPLE_RATE, quality="HQ")
        data = (np.clip(floats, -1.0, 1.0) * 32767.0).astype(np.int16).reshape(-1, channels)
        rate = SAMPLE_RATE
    fmt = AudioFormat("linear16", int(rate), channels, params.multichannel and channels > 1)
    return data.astype("<i2").tobytes(), fmt


async def _transcribe(
    state: ServerState,
    model: ServedModel,
    params: ListenParams,
    pcm: bytes,
    fmt: AudioFormat,
    request_id: str,
) -> tuple[list[list[Transcript]], float]:
    """Feed a whole recording through a Stream and the shared batcher; returns finals per channel."""
    config = replace(
        params.streaming_config(state.config.streaming), interim_results=False, utterance_end_ms=None
    )
    stream = Stream(model.engine, config, fmt, model.detector_factory())
    finals: list[list[Transcript]] = [[] for _ in range(fmt.output_channels)]

    def collect(event: Event) -> None:
        if isinstance(event, Transcript) and event.is_final:
            finals[event.channel].append(event)

    runner = StreamRunner(stream, model.batcher, collect, stream_id=request_id)
    limit = state.config.limits.max_inflight_windows
    step = fmt.bytes_per_second()
    try:
        for offset in range(0, len(pcm), step):
            runner.feed(pcm[offset : offset + step])
            if runner.error is not None:
                break
            if runner.inflight > limit:
                await runner.wait_idle()
            else:
                await asyncio.sleep(0)  # let live streams run between seconds of a long file
        if runner.error is None:
            await runner.finish()
    except BaseException:
        await runner.cancel()
        raise
    if runner.error is not None:
        await runner.cancel()
        state.metrics.engine_failures.labels(model.name).inc()
        raise EngineError(f"transcription failed: {runner.error}")
    return finals, stream.duration


async def _listen_post(request: web.Request) -> web.Response:
    state = request.app[STATE]
    request_id = str(uuid.uuid4())
    try:
        key, params = _admit(state, request)
        state.reserve("prerecorded", params.model, key)
    except StreamerError as exc:
        return _error_response(state, exc, request_id)
    created = datetime.now(UTC)
    model = state.models[params.model]
    state.metrics.streams.labels(model.name, "prerecorded").inc()
    job = _Job.current()
    state.jobs.add(job)
    try:
        body = await _read_body(request, state.config.limits.max_body_bytes)
        pcm, fmt = _decode_body(body, params, raw="encoding" in request.query)
        state.metrics.audio_seconds.labels(model.name).inc(len(pcm) / fmt.bytes_per_second())
        started = time.perf_counter()
        finals, duration = await _transcribe(state, model, params, pcm, fmt, request_id)
        log.info(
            "request %s: transcribed %.2f s of audio (%d channel(s)) in %.2f s with %s",
            request_id,
            duration,
            fmt.output_channels,
            time.perf_counter() - started,
            model.name,
        )
        summary = StreamSummary(
            request_id=request_id,
            created=created,
            duration=duration,
            channels=fmt.output_channels,
            sha256=hashlib.sha256(body).hexdigest(),
            models=(model.identity,),
        )
        return web.Response(
            text=prerecorded_response(summary, finals),
            content_type="application/json",
            headers={"dg-request-id": request_id},
        )
    except StreamerError as exc:
        return _error_response(state, exc, request_id)
    finally:
        state.jobs.discard(job)
        state.release("prerecorded", key)
        job.finished.set()


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    limits = state.config.limits
    load = {}
    for name, model in state.models.items():
        snapshot = model.batcher.load.snapshot()
        load[name] = {
            "busy_fraction": round(snapshot.busy_fraction, 3),
            "queue_wait_s": round(snapshot.queue_wait_s, 3),
            "saturated": state.saturation(name) is not None,
        }
    body = {
        "ready": state.ready,
        "accepting": state.accepting,
        "active_streams": state.active,
        "max_streams": limits.max_streams,
        "models": state.model_names,
        "load": load,
    }
    return web.json_response(body, status=200 if state.ready else 503)


async def _metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.refresh_gauges()
    body, content_type = state.metrics.render()
    return web.Response(body=body, headers={"Content-Type": content_type})


def create_app(config: ServerConfig, engines: dict[str, Engine] | None = None) -> web.Application:
    """The aiohttp application. `engines` maps model name -> Engine (tests inject fakes); None loads
    `config.models` now (blocking) and the app closes them on cleanup."""
    owns = engines is None
    state = ServerState(config, load_engines(config) if engines is None else engines, owns_engines=owns)
    app = web.Application()
    app[STATE] = state
    app.router.add_get("/v1/listen", _listen_ws)
    app.router.add_post("/v1/listen", _listen_post)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)

    async def on_startup(app: web.Application) -> None:
        await app[STATE].start()

    async def on_shutdown(app: web.Application) -> None:
        await app[STATE].shutdown()

    async def on_cleanup(app: web.Application) -> None:
        await app[STATE].close()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


def _url(address: Sequence[object], scheme: str = "http") -> str:
    host, port = str(address[0]), int(str(address[1]))
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def ssl_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The server's TLS context from `config.tls_cert`/`tls_key` (None without TLS); raises ConfigError
    when the files cannot be read or do not match. Pass it to `web.TCPSite(..., ssl_context=...)`."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {config.tls_cert} and its key: {exc}") from None
    return context


async def _serve(config: ServerConfig, engines: dict[str, Engine], tls: ssl.SSLContext | None = None) -> None:
    app = create_app(config, engines)
    # aiohttp's own handler drain only has to catch what our drain (on_shutdown) left behind.
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port, ssl_context=tls)
        await site.start()
        log.info("listening on %s", _url(runner.addresses[0], "https" if tls is not None else "http"))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(signum: signal.Signals) -> None:
            if stop.is_set():
                log.warning("%s again: already shutting down", signum.name)
                return
            log.info("%s received: shutting down", signum.name)
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        await stop.wait()
        # Drain while still listening, so that new handshakes get a clear 503 instead of a refused connection.
        await app[STATE].shutdown()
    finally:
        await runner.cleanup()
    log.info("stopped")


def run(config: ServerConfig, engines: dict[str, Engine] | None = None) -> None:
    """Load the models, serve until SIGINT/SIGTERM, then stop gracefully. Raises StreamerError or OSError."""
    tls = ssl_context(config)  # before the models load: a bad certificate fails at once
    owned = engines is None
    engines = load_engines(config) if engines is None else engines
    try:
        asyncio.run(_serve(config, engines, tls))
    finally:
        if owned:
            for engine in engines.values():
                engine.close()
