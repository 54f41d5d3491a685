"""`--workers N`: the supervisor process that runs N worker processes as one server.

    supervise(config)   # from streamer.server.run when config.workers > 1; returns after SIGTERM/SIGINT

The supervisor binds the listening sockets (port 0 works: it logs the real URL, as one process does,
once every worker is ready), starts the workers (`streamer.server.worker`, spawned: each loads its own
copy of the models), accepts every connection and hands it to the worker with the fewest streams
(`streamer.server.handoff`). What one process keeps for itself is shared or merged:

- stream slots and per-key limits: one table in a file every worker maps (`SharedCapacity`); the
  supervisor clears the row of a worker that exits, which frees its slots;
- readiness: the stream count above and the workers' mean engine load (`ServerState.ready`);
- /metrics: a worker's scrape asks the supervisor, which collects every worker's text over the control
  channel and merges them (`streamer.metrics_merge`), adding `streamer_worker_up` and
  `streamer_worker_restarts_total`; counters of workers that died are kept, so no sum goes backwards;
- SIGTERM: every worker drains (as a single server does) and the supervisor waits for them all, then
  returns; a second SIGTERM, or SIGINT, ends the streams now;
- a worker that exits on its own is restarted, after a pause that doubles while it keeps failing soon
  after starting; its streams are gone (it closed them with 1011 when it could; after SIGKILL the
  clients only see the TCP connection close).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from multiprocessing.process import BaseProcess

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from streamer.config import ServerConfig
from streamer.errors import ConfigError, StreamerError
from streamer.metrics_merge import merge_expositions, retire
from streamer.server.capacity import SharedCapacity
from streamer.server.control import Channel, ChannelClosed, Message
from streamer.server.handoff import AUDIOSOCKET, HTTP, Spreader, handoff_pair, send_connection
from streamer.server.worker import WorkerSpec, run_worker, worker_name

log = logging.getLogger(__name__)

BACKLOG = 1024
COLLECT_TIMEOUT_S = 3.0
"""How long a scrape waits for each worker's metrics text."""
HANDOFF_WAIT_S = 30.0
"""How long a connection may wait for a worker whose hand-off queue is full before it is closed."""
HANDOFF_RETRY_S = 0.005
"""While every worker's hand-off queue is full: how often the supervisor tries again."""
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
STABLE_S = 30.0
"""A worker that ran this long before exiting is restarted after the first pause again."""
STOP_MARGIN_S = 15.0
"""Beyond the drain timeout and the grace period, how long a stopping worker may take before SIGKILL."""


def supervise(config: ServerConfig) -> None:
    """Serve with `config.workers` worker processes until SIGTERM/SIGINT (see the module docstring).
    Raises OSError when a port cannot be bound, ConfigError or StreamerError when a worker cannot start."""
    asyncio.run(Supervisor(config).run())


@dataclass(eq=False)
class _Worker:
    """The supervisor's record of one worker row and the process that serves it now."""

    index: int
    process: BaseProcess | None = None
    channel: Channel | None = None
    handoff: socket.socket | None = None
    reading: asyncio.Task[None] | None = None
    ready: bool = False
    started_at: float = 0.0
    quick_failures: int = 0
    exit_code: int | None = None
    """How its last process ended (a negative number: killed by that signal)."""
    last_metrics: str = ""
    """Its metrics text at the last scrape: its counters are kept from there when it dies."""
    exited: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return worker_name(self.index)

    @property
    def serving(self) -> bool:
        return self.ready and self.process is not None and not self.exited.is_set()


class Supervisor:
    """See the module docstring; `await Supervisor(config).run()`."""

    def __init__(self, config: ServerConfig) -> None:
        if config.resume_secret is None:
            # One key for every worker: a resume token made by one must verify on the others.
            config = replace(config, resume_secret=secrets.token_bytes(32))
        self.config = config
        self.workers = [_Worker(i) for i in range(config.workers)]
        self.spreader = Spreader(config.workers)
        self.context = multiprocessing.get_context("spawn")  # torch and threads do not survive a fork
        self.log_level = logging.getLogger().getEffectiveLevel()
        self.retired = ""
        """Counters of the workers that died (`metrics_merge.retire`)."""
        self.stopping = False
        self.hurrying = False
        self.started = False
        self._serving = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        """Restarts waiting out their pause, notices on their way, the stop watchdog."""
        self._failed_start: _Worker | None = None
        self._registry = CollectorRegistry(auto_describe=False)
        self._up = Gauge(
            "streamer_worker_up",
            "1 while the worker process serves, 0 while it is down or restarting.",
            ["worker"],
            registry=self._registry,
        )
        self._restart_count = Counter(
            "streamer_worker_restarts",
            "Worker processes restarted after they exited on their own.",
            ["worker"],
            registry=self._registry,
        )
        for worker in self.workers:
            self._up.labels(worker.name).set(0)
            self._restart_count.labels(worker.name)
        self.table_dir = ""
        self.table: SharedCapacity | None = None

    # ---- the whole run ----

    async def run(self) -> None:
        config = self.config
        listeners = [(sock, HTTP) for sock in _bind(config.host, config.port)]
        audiosocket = config.telephony.audiosocket_port
        if audiosocket is not None:
            host = config.telephony.audiosocket_host or config.host
            listeners += [(sock, AUDIOSOCKET) for sock in _bind(host, audiosocket)]
        accepting: list[asyncio.Task[None]] = []
        self.table_dir = tempfile.mkdtemp(prefix="streamer-workers-", dir=_shared_memory_dir())
        keys = [key for key, _ in config.api_key_limits]
        models = [m.name for m in config.models]
        self.table = SharedCapacity.create(
            os.path.join(self.table_dir, "streams"), config.workers, keys, models
        )
        loop = asyncio.get_running_loop()
        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, self._on_signal, signum)
            for worker in self.workers:
                self._start(worker)
            await self._wait_started()
            if not self.stopping:
                self.started = True
                scheme = "https" if config.tls_enabled else "http"
                http = [sock for sock, kind in listeners if kind == HTTP]
                log.info("listening on %s (%d workers)", _url(http[0].getsockname(), scheme), config.workers)
                for sock, kind in listeners:
                    if kind == AUDIOSOCKET:
                        log.info(
                            "AudioSocket listening on %s:%d (no authentication: keep it on a private "
                            "network)",
                            *sock.getsockname()[:2],
                        )
                accepting = [loop.create_task(self._accept(sock, kind)) for sock, kind in listeners]
            await self._wait_stopped()
        finally:
            for task in [*accepting, *self._tasks]:
                task.cancel()
            await asyncio.gather(*accepting, *self._tasks, return_exceptions=True)
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            for sock, _ in listeners:
                sock.close()
            await self._kill_all()
            self.table.close()
            shutil.rmtree(self.table_dir, ignore_errors=True)
        log.info("stopped")

    async def _wait_started(self) -> None:
        """Until every worker is ready; raises when one exits first (a model that cannot load)."""
        while not self.stopping and not all(w.ready for w in self.workers):
            waiters = [asyncio.ensure_future(w.exited.wait()) for w in self.workers]
            ticker = asyncio.ensure_future(asyncio.sleep(0.1))
            await asyncio.wait([*waiters, ticker], return_when=asyncio.FIRST_COMPLETED)
            for waiter in [*waiters, ticker]:
                waiter.cancel()
            failed = self._failed_start
            if failed is not None and not self.stopping:
                code = failed.exit_code
                if code == 2:
                    raise ConfigError(f"worker {failed.name}: invalid configuration (see its log)")
                raise StreamerError(f"worker {failed.name} exited with status {code} while starting")

    async def _wait_stopped(self) -> None:
        """Until a stop was asked for and every worker has exited (SIGKILL for one that overstays)."""
        while not (self.stopping and all(w.process is None for w in self.workers)):
            await asyncio.sleep(0.1)

    # ---- worker processes ----

    def _start(self, worker: _Worker) -> None:
        assert self.table is not None
        handoff, handoff_child = handoff_pair()
        control, control_child = socket.socketpair()
        spec = WorkerSpec(
            worker.index,
            self.config,
            self.table.path,
            handoff_child,
            control_child,
            self.log_level,
        )
        process = self.context.Process(target=run_worker, args=(spec,), name=f"streamer-{worker.name}")
        process.start()
        handoff_child.close()
        control_child.close()
        handoff.setblocking(False)
        worker.process = process
        worker.handoff = handoff
        worker.ready = False
        worker.started_at = time.monotonic()
        worker.exited = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(process.sentinel, self._on_exit, worker)
        self._background(self._open_channel(worker, process, control))
        log.info("worker %s starting (pid %s)", worker.name, process.pid)

    async def _open_channel(self, worker: _Worker, process: BaseProcess, sock: socket.socket) -> None:
        async def handle(message: Message) -> Message | None:
            return await self._handle(worker, message)

        channel = await Channel.open(sock, handle)
        if worker.process is not process:  # it exited before its channel was open
            await channel.close()
            return
        worker.channel = channel
        worker.reading = asyncio.get_running_loop().create_task(channel.run())
        if self.stopping:
            await self._tell(worker, "hurry" if self.hurrying else "drain")

    async def _handle(self, worker: _Worker, message: Message) -> Message | None:
        op = message.get("op")
        if op == "ready":
            worker.ready = True
            self._up.labels(worker.name).set(1)
            self._serving.set()
            if self.started:
                log.info("worker %s serving again (pid %s)", worker.name, message.get("pid"))
            return None
        if op == "leaving":
            worker.ready = False  # it has shut down and exits next: hand it nothing more
            self._up.labels(worker.name).set(0)
            if not any(w.serving for w in self.workers):
                self._serving.clear()
            return None
        if op == "scrape":
            return {"text": await self.scrape()}
        log.warning("worker %s sent an unknown message %r", worker.name, op)
        return None

    def _on_exit(self, worker: _Worker) -> None:
        process = worker.process
        assert process is not None and self.table is not None
        asyncio.get_running_loop().remove_reader(process.sentinel)
        process.join(5.0)
        code = worker.exit_code = process.exitcode
        lived = time.monotonic() - worker.started_at
        was_ready = worker.ready
        worker.process = None
        worker.ready = False
        worker.exited.set()
        self._up.labels(worker.name).set(0)
        self.table.clear(worker.index)  # frees every slot it held
        self.spreader.forget(worker.index)
        if worker.last_metrics:
            self.retired = retire(self.retired, worker.last_metrics)
            worker.last_metrics = ""
        if worker.handoff is not None:
            worker.handoff.close()
        worker.handoff = None
        if worker.reading is not None:
            worker.reading.cancel()
        if worker.channel is not None:
            self._background(worker.channel.close())
            worker.channel = None
        if not any(w.serving for w in self.workers):
            self._serving.clear()
        if self.stopping:
            level = logging.INFO if code == 0 else logging.WARNING
            log.log(level, "worker %s exited (%s)", worker.name, _status(code))
            return
        if not self.started and not was_ready:
            self._failed_start = worker
            log.error("worker %s exited while starting (%s)", worker.name, _status(code))
            return
        worker.quick_failures = worker.quick_failures + 1 if lived < STABLE_S else 1
        delay = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (worker.quick_failures - 1))
        log.error(
            "worker %s exited unexpectedly (%s) after %.1f s; its streams are gone; restarting in %.1f s",
            worker.name,
            _status(code),
            lived,
            delay,
        )
        self._background(self._restart(worker, delay))

    async def _restart(self, worker: _Worker, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.stopping:
            return
        self._restart_count.labels(worker.name).inc()
        self._start(worker)

    def _background(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tell(self, worker: _Worker, op: str) -> None:
        if worker.channel is not None:
            with contextlib.suppress(ChannelClosed):
                await worker.channel.send({"op": op})

    # ---- signals and stopping ----

    def _on_signal(self, signum: signal.Signals) -> None:
        # As one server: SIGTERM drains, SIGINT or a second SIGTERM ends the streams now. Told over the
        # control channel, not re-signalled: a worker may get the same signal from its process group.
        if not self.stopping:
            self.stopping = True
            self.hurrying = signum == signal.SIGINT
            log.info(
                "%s received: %s %d worker(s)",
                signum.name,
                "stopping" if self.hurrying else "draining",
                sum(w.process is not None for w in self.workers),
            )
            deadline = self.config.limits.shutdown_grace_s + STOP_MARGIN_S
            if not self.hurrying:
                deadline += self.config.limits.drain_timeout_s
            self._background(self._kill_after(deadline))
        elif not self.hurrying:
            self.hurrying = True
            log.info("%s received again: the workers end their streams now", signum.name)
        else:
            log.warning("%s again: already stopping", signum.name)
            return
        for worker in self.workers:
            if worker.process is not None and not worker.ready:
                worker.process.terminate()  # still loading its models: nothing to drain
            else:
                self._background(self._tell(worker, "hurry" if self.hurrying else "drain"))

    async def _kill_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        for worker in self.workers:
            if worker.process is not None:
                log.error("worker %s still running %.0f s after the stop: killing it", worker.name, seconds)
                worker.process.kill()

    async def _kill_all(self) -> None:
        """Leave no worker behind (start-up failed, or the supervisor itself is failing)."""
        running = [w for w in self.workers if w.process is not None]
        for worker in running:
            assert worker.process is not None
            worker.process.terminate()
        deadline = time.monotonic() + 5.0
        for worker in running:
            process = worker.process
            if process is None:
                continue
            await asyncio.to_thread(process.join, max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                process.kill()
                await asyncio.to_thread(process.join, 5.0)

    # ---- connections ----

    async def _accept(self, listener: socket.socket, kind: str) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # With no worker serving (all restarting), connections wait in the backlog, not refused.
            await self._serving.wait()
            conn, _ = await loop.sock_accept(listener)
            # Awaited: while every worker is behind on its hand-off queue, later connections wait in
            # the listening backlog rather than being accepted and closed.
            await self._hand(conn, kind)

    async def _hand(self, conn: socket.socket, kind: str) -> None:
        assert self.table is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HANDOFF_WAIT_S
        try:
            while True:
                streams = self.table.active_per_worker()
                serving = [w.serving for w in self.workers]
                behind = False
                while (index := self.spreader.choose(streams, serving)) is not None:
                    worker = self.workers[index]
                    assert worker.handoff is not None
                    try:
                        send_connection(worker.handoff, conn, kind)
                        return
                    except BlockingIOError:
                        # Its queue is full (as many connections as the channel's send buffer holds)
                        # because its event loop is busy; a burst of connections gets here.
                        behind = True
                    except OSError as exc:  # it just exited
                        log.warning("worker %s takes no connection (%s); trying another", worker.name, exc)
                    serving[index] = False
                if not behind:
                    log.warning("no worker is serving: a connection was closed")
                    return
                if loop.time() >= deadline:
                    log.warning(
                        "no worker took a connection within %g s (all busy): it was closed", HANDOFF_WAIT_S
                    )
                    return
                # Polled, not waited on with add_writer: a worker may exit meanwhile and its channel's
                # descriptor be closed (and reused) under the registration.
                await asyncio.sleep(HANDOFF_RETRY_S)
        finally:
            conn.close()  # the worker has its own copy now

    # ---- metrics ----

    async def scrape(self) -> str:
        """Every serving worker's metrics and the supervisor's own, merged (`metrics_merge`)."""
        serving = [w for w in self.workers if w.serving and w.channel is not None]
        replies = await asyncio.gather(
            *(_collect(w.channel, COLLECT_TIMEOUT_S) for w in serving if w.channel is not None),
            return_exceptions=True,
        )
        texts: list[str] = []
        for worker, reply in zip(serving, replies, strict=True):
            if isinstance(reply, str):
                worker.last_metrics = reply
                texts.append(reply)
            else:
                log.warning("worker %s did not answer the scrape: %s", worker.name, reply)
        texts.append(generate_latest(self._registry).decode())
        return merge_expositions(texts, self.retired).decode()


async def _collect(channel: Channel, timeout: float) -> str:
    reply = await channel.request({"op": "collect"}, timeout)
    text = reply.get("text")
    if not isinstance(text, str):
        raise ChannelClosed(f"no metrics text in the reply: {reply.get('error', reply)}")
    return text


def _bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address of `host` (port 0: the first one's free port for all)."""
    sockets: list[socket.socket] = []
    seen: set[tuple[int, str]] = set()
    # getaddrinfo may list an address once per protocol; bind each once.
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            if (family, str(address[0])) in seen:
                continue
            seen.add((family, str(address[0])))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _url(address: tuple[object, ...], scheme: str) -> str:
    host, port = str(address[0]), int(str(address[1]))
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _shared_memory_dir() -> str | None:
    """/dev/shm where there is one (the table then never touches a disk), else the default temp dir."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _status(code: int | None) -> str:
    if code is None:
        return "status unknown"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit status {code}"
