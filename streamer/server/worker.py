"""One worker process of `--workers N`: today's server, fed connections by the supervisor.

The supervisor starts `run_worker(spec)` with multiprocessing's spawn method (a fresh interpreter: torch
and threads do not survive a fork). The worker logs under its name (`w1`), loads its own copy of every
model, joins the shared stream table, serves the connections the supervisor hands it
(`streamer.server.handoff`) and follows the supervisor's messages (`streamer.server.control`):

- "drain" (the supervisor got SIGTERM) and "hurry" (a second SIGTERM, or SIGINT): as those signals do
  to a single server. SIGTERM sent to the worker itself drains it too (never hurries: a service manager
  may signal every process of the group), SIGINT is ignored (Ctrl-C reaches the whole group, and the
  supervisor decides), and a vanished supervisor counts as "drain";
- "collect": answer with this worker's metrics text; its own /metrics asks the supervisor ("scrape")
  for every worker's, merged.

Exit status: 0 after a shutdown, 2 for invalid settings, 1 when it cannot start, or when it fails
while serving: its live streams are then closed with 1011 and a reason naming the worker first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import sys
from dataclasses import dataclass

from aiohttp import web

from streamer.config import ServerConfig
from streamer.engine import Engine
from streamer.errors import ConfigError, ModelLoadError, StreamerError
from streamer.logs import log_format
from streamer.server.app import StopRequest, create_app, ssl_context, stop_when_asked
from streamer.server.capacity import SharedCapacity
from streamer.server.control import Channel, ChannelClosed, Message
from streamer.server.handoff import AUDIOSOCKET, HTTP, receive_connections
from streamer.server.ingress import audiosocket
from streamer.server.live import CLOSE_TIMEOUT_S
from streamer.server.state import STATE, ServerState, load_engines

log = logging.getLogger(__name__)

SCRAPE_TIMEOUT_S = 5.0
"""How long /metrics waits for the supervisor's merged text before it answers with this worker's own."""


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process is started with (pickled to the spawned interpreter)."""

    index: int
    """Its row in the stream table (0-based); its name is `w{index + 1}`."""
    config: ServerConfig
    table: str
    """The shared stream table's file (`SharedCapacity`)."""
    handoff: socket.socket
    control: socket.socket
    log_level: int

    @property
    def name(self) -> str:
        return worker_name(self.index)


def worker_name(index: int) -> str:
    """The name a worker's log lines and metrics carry: `w1` for row 0."""
    return f"w{index + 1}"


def run_worker(spec: WorkerSpec) -> None:
    """The worker process's body (see the module docstring); exits with its status."""
    logging.basicConfig(level=spec.log_level, format=log_format(spec.name))
    # Ctrl-C at a terminal reaches the whole process group: the supervisor decides for every worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    config = spec.config
    try:
        tls = ssl_context(config)
        engines = load_engines(config)
    except ConfigError as exc:
        log.error("invalid configuration: %s", exc)
        sys.exit(2)
    except (ModelLoadError, StreamerError) as exc:
        log.error("cannot start: %s", exc)
        sys.exit(1)
    try:
        code = asyncio.run(_serve(spec, engines, tls))
    finally:
        for engine in engines.values():
            engine.close()
    sys.exit(code)


async def _serve(spec: WorkerSpec, engines: dict[str, Engine], tls: ssl.SSLContext | None) -> int:
    config = spec.config
    capacity = SharedCapacity(
        spec.table, spec.index, [key for key, _ in config.api_key_limits], [m.name for m in config.models]
    )
    capacity.join(os.getpid())
    app = create_app(config, engines, capacity=capacity, worker=spec.name)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    state = app[STATE]
    stop = StopRequest()
    # SIGTERM straight to a worker (kill, or a service manager signalling the whole group) drains it;
    # only the supervisor hurries it, so that a signal that reaches both never counts twice.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.drain, "SIGTERM received")
    link = _SupervisorLink(state, stop)
    channel = await Channel.open(spec.control, link.handle)
    link.channel = channel
    state.cluster_metrics = link.scrape
    adopter = _Adopter(state, runner, tls)
    loop = asyncio.get_running_loop()
    spec.handoff.setblocking(False)
    loop.add_reader(spec.handoff.fileno(), adopter.receive, spec.handoff, stop)
    reading = loop.create_task(channel.run(), name="control")
    try:
        await channel.send({"op": "ready", "pid": os.getpid()})
        log.info("worker %s ready (pid %d)", spec.name, os.getpid())
        stopping = loop.create_task(stop_when_asked(state, stop), name="stop")
        await asyncio.wait({stopping, reading}, return_when=asyncio.FIRST_COMPLETED)
        if reading.done() and not stopping.done():
            reading.result()  # a broken channel (not just closed) is this worker's failure
            stop.drain("the supervisor is gone")
        await stopping
        # Every stream has ended: no more connections for this worker, or they would find it gone.
        with contextlib.suppress(ChannelClosed):
            await channel.send({"op": "leaving"})
        return 0
    except Exception as exc:
        log.exception("worker %s failed", spec.name)
        state.fail(f"server worker {spec.name} failed ({type(exc).__name__}); reconnect")
        await _wait_released(state, CLOSE_TIMEOUT_S + 1.0)
        return 1
    finally:
        loop.remove_reader(spec.handoff.fileno())
        await adopter.close()
        await runner.cleanup()
        reading.cancel()
        await channel.close()
        capacity.close()
        log.info("stopped")


async def _wait_released(state: ServerState, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while state.jobs:
                await asyncio.sleep(0.05)


class _SupervisorLink:
    """This worker's side of the control channel."""

    def __init__(self, state: ServerState, stop: StopRequest) -> None:
        self.state = state
        self.stop = stop
        self.channel: Channel | None = None

    async def handle(self, message: Message) -> Message | None:
        op = message.get("op")
        if op == "drain":
            self.stop.drain("the supervisor asks to drain")
        elif op == "hurry":
            self.stop.now("the supervisor asks to stop")
        elif op == "collect":
            self.state.refresh_gauges()
            body, _ = self.state.metrics.render()
            return {"text": body.decode()}
        else:
            log.warning("unknown control message %r", op)
        return None

    async def scrape(self) -> bytes:
        """The whole server's metrics text; this worker's own when the supervisor does not answer."""
        if self.channel is not None:
            try:
                reply = await self.channel.request({"op": "scrape"}, SCRAPE_TIMEOUT_S)
            except (TimeoutError, ChannelClosed) as exc:
                reply = {"error": str(exc) or type(exc).__name__}
            text = reply.get("text")
            if isinstance(text, str):
                return text.encode()
            log.warning(
                "/metrics: no merged text from the supervisor (%s): this worker's own", reply.get("error")
            )
        self.state.refresh_gauges()
        body, _ = self.state.metrics.render()
        return body


class _Adopter:
    """Serves the connections the supervisor hands over: HTTP (aiohttp) and AudioSocket."""

    def __init__(self, state: ServerState, runner: web.AppRunner, tls: ssl.SSLContext | None) -> None:
        self.state = state
        self.runner = runner
        self.tls = tls
        self._tasks: set[asyncio.Task[None]] = set()

    def receive(self, channel: socket.socket, stop: StopRequest) -> None:
        """The hand-off channel is readable: adopt every connection waiting on it."""
        try:
            connections = receive_connections(channel)
        except EOFError:
            asyncio.get_running_loop().remove_reader(channel.fileno())
            stop.drain("the supervisor is gone")
            return
        for kind, conn in connections:
            task = asyncio.get_running_loop().create_task(self._adopt(kind, conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _adopt(self, kind: str, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            if kind == HTTP and self.runner.server is not None:
                await loop.connect_accepted_socket(self.runner.server, conn, ssl=self.tls)
            elif kind == AUDIOSOCKET:
                await audiosocket.adopt(self.state, conn)
            else:
                conn.close()
        except (OSError, ssl.SSLError, TimeoutError) as exc:  # the client left during the TLS handshake
            log.debug("handed connection dropped: %s", exc)
            conn.close()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
