"""The aiohttp application: routes, lifecycle, TLS and the serving loop.

    app = create_app(config, engines={"en": ToneEngine()})  # engines injectable; None loads config.models
    run(config)  # python -m streamer: load the models, serve, drain on SIGTERM, stop on SIGINT
    # (with config.workers > 1, run starts the supervisor of that many worker processes instead)

Routes: `/v1/listen` (WebSocket: Deepgram's live dialect; POST: pre-recorded), `/v1/watch` (follow
streams live), `/twilio` (Twilio Media Streams), `/audiohook` (Genesys AudioHook), `/asterisk`
(Asterisk chan_websocket), `/fork` (FreeSWITCH, jambonz, Vonage), `/healthz`,
`/readyz`, `/metrics`; and a TCP listener for Asterisk AudioSocket (`--audiosocket-port`). Live streams of
every dialect run through `streamer.server.live.LiveStream`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Sequence

from aiohttp import web

from streamer.config import ServerConfig
from streamer.engine import Engine
from streamer.errors import ConfigError
from streamer.server import health, pages
from streamer.server.capacity import Capacity
from streamer.server.ingress import asterisk, audiohook, audiosocket, deepgram, fork, twilio
from streamer.server.prerecorded import listen_post
from streamer.server.state import STATE, ServerState, load_engines
from streamer.server.watch_endpoint import watch_handler
from streamer.server.websocket import websocket_endpoint

log = logging.getLogger(__name__)


def create_app(
    config: ServerConfig,
    engines: dict[str, Engine] | None = None,
    *,
    capacity: Capacity | None = None,
    worker: str | None = None,
) -> web.Application:
    """The aiohttp application. `engines` maps model name -> Engine (tests inject fakes); None loads
    `config.models` now (blocking) and the app closes them on cleanup. A worker process of `--workers`
    passes the shared stream table and its name; it then opens no listener of its own (the supervisor
    hands it connections, `streamer.server.worker`)."""
    owns = engines is None
    state = ServerState(
        config,
        load_engines(config) if engines is None else engines,
        owns_engines=owns,
        capacity=capacity,
        worker=worker,
    )
    app = web.Application()
    app[STATE] = state
    app.router.add_get("/v1/listen", websocket_endpoint(deepgram.accept))
    app.router.add_post("/v1/listen", listen_post)
    app.router.add_get("/v1/watch", watch_handler)
    app.router.add_get("/twilio", websocket_endpoint(twilio.accept))
    app.router.add_get("/audiohook", websocket_endpoint(audiohook.accept))
    app.router.add_get("/asterisk", websocket_endpoint(asterisk.accept))
    app.router.add_get("/fork", websocket_endpoint(fork.accept))
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    app.router.add_get("/metrics", health.metrics)
    pages.add_routes(app)

    listeners: list[asyncio.Server] = []

    async def on_startup(app: web.Application) -> None:
        await app[STATE].start()
        telephony = config.telephony
        if telephony.audiosocket_port is not None and worker is None:
            host = telephony.audiosocket_host or config.host
            listeners.append(await audiosocket.start_listener(state, host, telephony.audiosocket_port))

    async def on_shutdown(app: web.Application) -> None:
        for listener in listeners:
            listener.close()  # no new calls; the ones in progress drain with the others
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


class StopRequest:
    """How the server is asked to stop: `requested` (drain first) and `hurry` (end the streams now).

    SIGTERM (an orchestrator) drains: running streams go on for --drain-timeout. SIGINT (a person at a
    terminal), or a second SIGTERM, ends them now: finals flushed, 1012. `install()` routes both signals
    here; a worker process also gets the supervisor's notices through `drain()` and `now()`.
    """

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.hurry = asyncio.Event()

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.on_signal, signum)

    def on_signal(self, signum: signal.Signals) -> None:
        if not self.requested.is_set():
            log.info("%s received: shutting down", signum.name)
            self.requested.set()
            if signum == signal.SIGINT:
                self.hurry.set()
        elif not self.hurry.is_set():
            log.info("%s received again: ending the running streams now", signum.name)
            self.hurry.set()
        else:
            log.warning("%s again: already shutting down", signum.name)

    def drain(self, why: str) -> None:
        """Drain (idempotent: unlike a second SIGTERM, asking again does not hurry)."""
        if not self.requested.is_set():
            log.info("%s: shutting down", why)
            self.requested.set()

    def now(self, why: str) -> None:
        """End the running streams now."""
        if not self.hurry.is_set():
            log.info("%s: ending the running streams now", why)
        self.requested.set()
        self.hurry.set()


async def stop_when_asked(state: ServerState, stop: StopRequest) -> None:
    """Wait for a stop request, drain unless hurried, then shut the streams down (flushed, 1012)."""
    await stop.requested.wait()
    # Drain while still listening, so that new handshakes get a clear 503 instead of a refused connection
    # (and a load balancer's health check sees /readyz fail).
    if not stop.hurry.is_set():
        await state.drain(state.config.limits.drain_timeout_s, stop.hurry)
    await state.shutdown()


async def _serve(config: ServerConfig, engines: dict[str, Engine], tls: ssl.SSLContext | None = None) -> None:
    app = create_app(config, engines)
    # aiohttp's own handler drain only has to catch what our drain (on_shutdown) left behind.
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port, ssl_context=tls)
        await site.start()
        log.info("listening on %s", _url(runner.addresses[0], "https" if tls is not None else "http"))
        stop = StopRequest()
        stop.install()
        await stop_when_asked(app[STATE], stop)
    finally:
        await runner.cleanup()
    log.info("stopped")


def run(config: ServerConfig, engines: dict[str, Engine] | None = None) -> None:
    """Load the models, serve until SIGINT/SIGTERM, then stop gracefully. Raises StreamerError or OSError.
    With `config.workers` > 1 a supervisor runs the worker processes instead (`engines` must be None)."""
    tls = ssl_context(config)  # before the models load: a bad certificate fails at once
    if config.workers > 1:
        if engines is not None:
            raise ConfigError("worker processes load their own engines: pass none with workers > 1")
        from streamer.server.supervisor import supervise

        supervise(config)
        return
    owned = engines is None
    engines = load_engines(config) if engines is None else engines
    try:
        asyncio.run(_serve(config, engines, tls))
    finally:
        if owned:
            for engine in engines.values():
                engine.close()
