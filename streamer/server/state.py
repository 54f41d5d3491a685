"""Per-app state: the served models (engine, batcher, identity), metrics, capacity and lifecycle.

`ServerState(config, engines, owns_engines)`; `await start()`, `reserve()`/`release()` around every stream
or request, `await drain(timeout)` (SIGTERM: not ready, running streams go on), `await shutdown()` (stop
accepting, end and flush every stream within the grace period; idempotent), `await close()`.
`app[STATE]` holds it. In a worker process (`--workers`), `capacity` is the table the workers share and
`worker` names this one; `fail(reason)` ends every stream with 1011 before the worker exits on an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from aiohttp import web

from streamer import __version__
from streamer.batcher import Batcher
from streamer.config import DetectorKind, ModelSpec, ServerConfig
from streamer.decoding import KeytermCompiler, keyterm_compiler
from streamer.engine import Engine, load_engine
from streamer.errors import ConfigError, OverloadError
from streamer.load import LoadTracker
from streamer.metrics import Metrics
from streamer.protocol import ModelIdentity, ModelInfo
from streamer.server.capacity import Capacity, LocalCapacity
from streamer.server.errors import EngineSaturated, KeyLimitReached, ShuttingDown
from streamer.server.http_signatures import NonceCache
from streamer.server.resume import ResumeCodec
from streamer.server.watch import WatchHub
from streamer.server.webhooks import Webhooks
from streamer.vad import SpeechDetector

if TYPE_CHECKING:
    from streamer.server.live import LiveStream

log = logging.getLogger(__name__)

MODEL_NAMESPACE = uuid.UUID("6f1d2a58-43a4-4d0e-9a57-8f9c3e0b7a11")


@dataclass
class ServedModel:
    """One configured model: its engine, its batcher and how it is reported to clients."""

    spec: ModelSpec
    engine: Engine
    batcher: Batcher
    identity: ModelIdentity
    vad: DetectorKind
    keyterms: KeytermCompiler
    """Compiles a stream's keyterms (plus the server's for this model) for its final decoder."""
    _detectors: Callable[[], SpeechDetector] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.vad == "energy":
            from streamer.engine.fake import EnergyDetector

            self._detectors = EnergyDetector
        elif self.vad == "silero":
            from streamer.vad_silero import silero_factory

            self._detectors = silero_factory()  # loads the weights now: a missing package fails at start
        # webrtc: None, sessions build webrtcvad from the VAD config

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def energy_vad(self) -> bool:
        return self.vad == "energy"

    def detector_factory(self) -> Callable[[], SpeechDetector] | None:
        """Makes one detector per channel; None: the segmenter's default (webrtcvad)."""
        return self._detectors


def load_engines(config: ServerConfig) -> dict[str, Engine]:
    """Load every configured model (blocking). Raises ModelLoadError or ConfigError."""
    engines: dict[str, Engine] = {}
    try:
        for spec in config.models:
            log.info("loading model %s from %s", spec.name, spec.spec)
            engines[spec.name] = load_engine(spec.spec, config.engine.for_model(spec.name))
    except BaseException:
        for engine in engines.values():
            engine.close()
        raise
    return engines


def _public_arch(engine_name: str) -> str:
    # An engine loaded from a folder is named by its path: clients get the folder's name, not our layout.
    return Path(engine_name).name if Path(engine_name).exists() else engine_name


DRAIN_POLL_S = 0.25
LOAD_PUBLISH_S = 0.5
"""How often a worker tells the others its engines' load (for the server-wide /readyz)."""


@dataclass(eq=False)
class Job:
    """A live stream or pre-recorded request in progress: its handler task and how to ask it to end."""

    task: asyncio.Task[object]
    stop: Callable[[], None] | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def current(cls, stop: Callable[[], None] | None = None) -> Job:
        task = asyncio.current_task()
        assert task is not None, "only called from a request handler"
        return cls(task, stop)


async def _wait_all(jobs: Sequence[Job], timeout: float) -> None:
    waiters = [asyncio.ensure_future(job.finished.wait()) for job in jobs]
    _, pending = await asyncio.wait(waiters, timeout=timeout)
    for waiter in pending:
        waiter.cancel()


def _keyterm_compiler(engine: Engine, config: ServerConfig, model: str) -> KeytermCompiler:
    defaults = [t for m, t in config.keyterms if m in (model, "*")]
    compiler = keyterm_compiler(engine, config.keyterm_limits, defaults)
    if compiler.defaults:
        trie = compiler.compile(())  # pronounces them now, once
        skipped = trie.skipped if trie is not None else []
        log.info(
            "model %s: %d server keyterms%s",
            model,
            len(compiler.defaults),
            f" ({len(skipped)} cannot be spelled in its units: {', '.join(skipped)})" if skipped else "",
        )
    return compiler


class ServerState:
    """Per-app state: models, metrics, live streams and the capacity counter."""

    def __init__(
        self,
        config: ServerConfig,
        engines: dict[str, Engine],
        owns_engines: bool,
        capacity: Capacity | None = None,
        worker: str | None = None,
    ) -> None:
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
                vad=config.detector_kind(spec),
                keyterms=_keyterm_compiler(engine, config, spec.name),
            )
            self.metrics.track_batcher(spec.name, self.models[spec.name].batcher.stats)
        self.model_names = [m.name for m in config.models]
        self._owns_engines = owns_engines
        self.jobs: set[Job] = set()
        """Live streams and pre-recorded requests in progress, which shutdown lets finish."""
        self.capacity: Capacity = capacity if capacity is not None else LocalCapacity()
        """Stream slots: this process's, or the table every worker process shares."""
        self.worker = worker
        """This worker's name (`w1`, ...) when the server runs several processes; None in one process."""
        self.accepted = 0
        """Streams and requests this process took a slot for, since it started."""
        self.failure: str | None = None
        """Why this worker is failing (`fail`): the close reason its streams get."""
        self.cluster_metrics: Callable[[], Awaitable[bytes]] | None = None
        """In a worker: the whole server's /metrics text, merged by the supervisor (set by the worker)."""
        self.live: dict[str, LiveStream] = {}
        """Live streams by request id, from the handshake until their handler has released everything
        (tests and /metrics count them to show that nothing outlives its connection)."""
        self._key_limits = dict(config.api_key_limits)
        if worker is not None:
            self.metrics.track_worker(worker, self.capacity.own, lambda: self.accepted, self._engine_busy)
        delivery = config.delivery
        self.watch = WatchHub(
            delivery.watch_history, delivery.watch_queue, delivery.max_watchers, self.metrics
        )
        self.webhooks = Webhooks(delivery, self.metrics)
        self.audiohook_nonces = NonceCache()
        self.audiosocket_port: int | None = None
        """The AudioSocket listener's port once it listens (the configured one, or the one port 0 got)."""
        """Nonces of signed AudioHook handshakes, kept while their signatures could be replayed."""
        self.resume = ResumeCodec(config.resume_secret, config.resume_ttl_s)
        self.accepting = True
        self.draining = False
        self.started = False
        self._shutdown: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None

    def _engine_busy(self) -> dict[str, float]:
        return {name: model.batcher.load.snapshot().busy_fraction for name, model in self.models.items()}

    def _batch_observer(self, name: str) -> Callable[[int, float], None]:
        def observe(size: int, seconds: float) -> None:
            self.metrics.observe_batch(name, size, seconds)

        return observe

    @property
    def active(self) -> int:
        """Streams and requests in progress on the whole server (every worker)."""
        return self.capacity.total()

    @property
    def key_streams(self) -> dict[str, int]:
        """Streams and requests in progress per API key that has its own limit (those with some)."""
        return self.capacity.key_counts()

    def _limited(self, key: str | None) -> str | None:
        return key if key is not None and self._key_limits.get(key) is not None else None

    # capacity: check and take a slot with no await in between, so concurrent handshakes cannot overshoot
    def reserve(self, kind: str, model: str, key: str | None = None) -> None:
        """Take a slot for a stream or request of `model` by API key `key` (None: auth off), or raise
        ShuttingDown, OverloadError (max streams), KeyLimitReached or EngineSaturated."""
        self.check_capacity(model, key)
        limited = self._limited(key)
        # Checked again as the slot is taken: another worker may have taken the last one meanwhile.
        refused = self.capacity.take(
            limited, self.config.limits.max_streams, self._key_limits.get(limited) if limited else None
        )
        if refused is not None:
            self._refuse(refused, key)
        self.accepted += 1
        self.metrics.active_streams.labels(kind).inc()

    def check_capacity(self, model: str, key: str | None = None) -> None:
        """Raise what `reserve` would raise now, without taking a slot (a page asks before it retries)."""
        if not self.accepting:
            raise ShuttingDown("the server is shutting down")
        if self.capacity.total() >= self.config.limits.max_streams:
            self._refuse("streams", key)
        limited = self._limited(key)
        if limited is not None and self.capacity.of_key(limited) >= self._key_limits[limited]:
            self._refuse("key", key)
        saturated = self.saturation(model)
        if saturated is not None:
            raise EngineSaturated(saturated)

    def _refuse(self, refusal: str, key: str | None) -> NoReturn:
        if refusal == "key" and key is not None:
            limit = self._key_limits[key]
            raise KeyLimitReached(f"this API key already has its limit of {limit} concurrent streams")
        raise OverloadError(f"all {self.config.limits.max_streams} streams are busy; retry later")

    def release(self, kind: str, key: str | None = None) -> None:
        self.capacity.give(self._limited(key))
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

    def server_saturation(self, model: str) -> str | None:
        """Like `saturation`, for the whole server: with workers, over the mean load of their engines
        (on one GPU, every worker's busy fraction is the accelerator's load seen through its copy)."""
        pooled = self.capacity.pooled_load(model)
        if pooled is None:
            return self.saturation(model)
        busy, wait = pooled
        limits = self.config.limits
        if busy >= limits.max_busy_fraction:
            return f"model {model} is at capacity on every worker (engines busy {busy:.0%} on average)"
        if wait > limits.max_queue_wait_s:
            return f"model {model} is at capacity on every worker (windows waited {wait:.2f} s on average)"
        return None

    @property
    def ready(self) -> bool:
        return (
            self.started
            and self.accepting
            and self.active < self.config.limits.max_streams
            and not any(self.server_saturation(name) for name in self.models)
        )

    def publish_load(self) -> None:
        """Write this worker's engine load into the shared table (for the server-wide readiness)."""
        for name, model in self.models.items():
            snapshot = model.batcher.load.snapshot()
            self.capacity.publish_load(name, snapshot.busy_fraction, snapshot.queue_wait_s)

    async def _publish_load(self) -> None:
        while True:
            self.publish_load()
            await asyncio.sleep(LOAD_PUBLISH_S)

    def fail(self, reason: str) -> None:
        """This worker cannot go on (an unhandled error): end every stream and request now; live streams
        close with 1011 and `reason` (`LiveStream` reads `failure`), and nothing new is accepted."""
        self.failure = reason
        self.accepting = False
        for job in list(self.jobs):
            job.task.cancel()

    def refresh_gauges(self) -> None:
        """Bring the gauges that are read, not pushed (load, live sessions, tasks) up to date."""
        metrics = self.metrics
        metrics.live_sessions.set(len(self.live))
        metrics.tasks.set(len(asyncio.all_tasks()))
        limit = self.config.limits.max_streams
        metrics.max_streams.set(limit)
        metrics.stream_load.set(self.active / limit if limit else 0.0)
        metrics.draining.set(1.0 if self.draining or not self.accepting else 0.0)
        for name, model in self.models.items():
            snapshot = model.batcher.load.snapshot()
            metrics.engine_busy.labels(name).set(snapshot.busy_fraction)
            metrics.queue_wait.labels(name).set(snapshot.queue_wait_s)
            metrics.queued_windows.labels(name).set(model.batcher.queued)
            metrics.failed_batches.labels(name).set(model.batcher.stats.failed_batches)

    async def start(self) -> None:
        for model in self.models.values():
            model.batcher.start()
        if self.capacity.shared:
            self._publisher = asyncio.get_running_loop().create_task(self._publish_load(), name="load")
        await self.webhooks.start()
        self.started = True
        for model in self.models.values():
            log.info(
                "model %s serves language %s: %s (%s, %s VAD)",
                model.name,
                model.spec.language,
                model.spec.spec,
                model.engine.name,
                model.vad,
            )
        if self.config.auth_enabled:
            log.info("authentication on: %d API key(s)", len(self.config.api_keys))
            if self.config.telephony.twilio_auth_token is None:
                log.warning(
                    "/twilio takes only requests with an API key, which Twilio cannot send: set "
                    "--twilio-auth-token to accept Twilio's signed requests"
                )
        else:
            log.warning("authentication off: the server is open to anyone who can reach it (see --api-key)")

    async def drain(self, timeout: float, hurry: asyncio.Event | None = None) -> None:
        """Soft drain (SIGTERM): not ready, new streams refused (503), running streams and requests go on
        until they end, `timeout` seconds pass or `hurry` is set. `shutdown()` then ends the rest."""
        self.accepting = False
        self.draining = True
        if not self.jobs:
            return
        log.info(
            "draining: not ready, refusing new streams; %d stream(s) and request(s) may go on for up to "
            "%g s (SIGTERM again or SIGINT ends them now)",
            len(self.jobs),
            timeout,
        )
        deadline = time.monotonic() + timeout
        hurry = hurry or asyncio.Event()
        while self.jobs and (left := deadline - time.monotonic()) > 0:
            # Polled: jobs come and go (pre-recorded requests finish); a quarter second is precise enough.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(hurry.wait(), min(left, DRAIN_POLL_S))
            if hurry.is_set():
                log.info("drain cut short: ending %d stream(s) and request(s) now", len(self.jobs))
                return
        if self.jobs:
            log.info(
                "drain timeout of %g s over: ending %d stream(s) and request(s)", timeout, len(self.jobs)
            )
        else:
            log.info("drained: every stream and request ended on its own")

    async def shutdown(self) -> None:
        """Stop accepting, flush every live stream (1012) within the grace period (idempotent)."""
        if self._shutdown is None:
            self._shutdown = asyncio.get_running_loop().create_task(self._drain())
        await self._shutdown

    async def _drain(self) -> None:
        self.accepting = False
        self.draining = True
        started = time.monotonic()
        await self._drain_jobs()
        self.watch.close_all()  # after the streams' last finals
        left = self.config.limits.shutdown_grace_s - (time.monotonic() - started)
        await self.webhooks.drain(max(left, 0.5))

    async def _drain_jobs(self) -> None:
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
        if self._publisher is not None:
            self._publisher.cancel()
            await asyncio.gather(self._publisher, return_exceptions=True)
        self.watch.close_all()
        await self.webhooks.close()
        for model in self.models.values():
            await model.batcher.stop()
            if self._owns_engines:
                model.engine.close()


STATE: web.AppKey[ServerState] = web.AppKey("streamer_state", ServerState)
