"""Per-app state: the served models (engine, batcher, identity), metrics, capacity and lifecycle.

`ServerState(config, engines, owns_engines)`; `await start()`, `reserve()`/`release()` around every stream
or request, `await drain(timeout)` (SIGTERM: not ready, running streams go on), `await shutdown()` (stop
accepting, end and flush every stream within the grace period; idempotent), `await close()`.
`app[STATE]` holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

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
    compiler = keyterm_compiler(engine, config.keyterm_limits)
    compiler.defaults = tuple(t for m, t in config.keyterms if m in (model, "*"))
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
                vad=config.detector_kind(spec),
                keyterms=_keyterm_compiler(engine, config, spec.name),
            )
            self.metrics.track_batcher(spec.name, self.models[spec.name].batcher.stats)
        self.model_names = [m.name for m in config.models]
        self._owns_engines = owns_engines
        self.jobs: set[Job] = set()
        """Live streams and pre-recorded requests in progress, which shutdown lets finish."""
        self.active = 0
        self.live: dict[str, LiveStream] = {}
        """Live streams by request id, from the handshake until their handler has released everything
        (tests and /metrics count them to show that nothing outlives its connection)."""
        self._key_limits = dict(config.api_key_limits)
        self.key_streams: dict[str, int] = {}
        """Streams and requests in progress per API key that has its own limit."""
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

    def _batch_observer(self, name: str) -> Callable[[int, float], None]:
        def observe(size: int, seconds: float) -> None:
            self.metrics.observe_batch(name, size, seconds)

        return observe

    # capacity: check and take a slot with no await in between, so concurrent handshakes cannot overshoot
    def reserve(self, kind: str, model: str, key: str | None = None) -> None:
        """Take a slot for a stream or request of `model` by API key `key` (None: auth off), or raise
        ShuttingDown, OverloadError (max streams), KeyLimitReached or EngineSaturated."""
        self.check_capacity(model, key)
        self.active += 1
        if key is not None and self._key_limits.get(key) is not None:
            self.key_streams[key] = self.key_streams.get(key, 0) + 1
        self.metrics.active_streams.labels(kind).inc()

    def check_capacity(self, model: str, key: str | None = None) -> None:
        """Raise what `reserve` would raise now, without taking a slot (a page asks before it retries)."""
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
        self.watch.close_all()
        await self.webhooks.close()
        for model in self.models.values():
            await model.batcher.stop()
            if self._owns_engines:
                model.engine.close()


STATE: web.AppKey[ServerState] = web.AppKey("streamer_state", ServerState)
