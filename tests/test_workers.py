"""`--workers N`: real server processes (a supervisor and its workers) on port 0 with the fake tone engine,
and the pure parts they rest on (the shared stream table, the connection spreader, the metrics merge,
the control channel)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from streamer.bench.soak import ServerProcess
from streamer.cli import available_cores, build_config
from streamer.config import Limits
from streamer.errors import ConfigError
from streamer.metrics import Metrics
from streamer.metrics_merge import merge_expositions, retire
from streamer.server import STATE
from streamer.server.capacity import SharedCapacity
from streamer.server.control import Channel, ChannelClosed, Message
from streamer.server.handoff import RECENT_S, Spreader, handoff_pair, receive_connections, send_connection
from tests.test_security import _self_signed
from tests.test_server import (
    config,
    drain,
    final_words,
    handshake_error,
    pcm16,
    send_audio,
    serve,
    utterances,
)

FAKE = ["--model", "en=fake:tone"]
Json = dict[str, object]


# ---- pure: the shared stream table ----


def test_the_stream_table_holds_limits_across_workers_and_frees_a_dead_workers_slots(tmp_path: Path) -> None:
    path = str(tmp_path / "streams")
    supervisor = SharedCapacity.create(path, 2, ["k"], ["en"])
    w1 = SharedCapacity(path, 0, ["k"], ["en"])
    w2 = SharedCapacity(path, 1, ["k"], ["en"])
    try:
        w1.join(101)
        w2.join(102)
        assert w1.take("k", max_streams=3, key_limit=1) is None
        assert w2.take("k", max_streams=3, key_limit=1) == "key"  # the key's limit is the server's
        assert w2.take(None, max_streams=3, key_limit=None) is None
        assert w2.take(None, max_streams=3, key_limit=None) is None
        assert w1.take(None, max_streams=3, key_limit=None) == "streams"
        assert (w1.total(), w1.own(), w2.own(), w2.of_key("k")) == (3, 1, 2, 1)
        assert supervisor.active_per_worker() == [1, 2]
        assert w2.key_counts() == {"k": 1}
        w1.publish_load("en", 0.2, 0.1)
        w2.publish_load("en", 0.6, 0.3)
        assert supervisor.pooled_load("en") == pytest.approx((0.4, 0.2))
        supervisor.clear(0)  # w1 died: its stream and its key's slot are free, its load no longer counts
        assert (w2.total(), w2.of_key("k"), w2.key_counts()) == (2, 0, {})
        assert supervisor.pooled_load("en") == pytest.approx((0.6, 0.3))
        assert w2.take("k", max_streams=3, key_limit=1) is None
        w2.give("k")
        w2.give(None)
        assert supervisor.active_per_worker() == [0, 1]
    finally:
        for table in (w1, w2, supervisor):
            table.close()


# ---- pure: which worker gets a connection ----


def test_the_spreader_picks_the_least_loaded_worker_and_spreads_a_burst() -> None:
    now = [0.0]
    spreader = Spreader(3, clock=lambda: now[0])
    # A burst before any stream shows in the table: one each, in turn.
    assert [spreader.choose([0, 0, 0], [True] * 3) for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    now[0] += RECENT_S + 0.1  # the burst's streams are in the table now
    assert spreader.choose([4, 1, 2], [True] * 3) == 1
    assert spreader.choose([4, 1, 2], [True, False, True]) == 2  # w2 is not serving
    assert spreader.choose([0, 0, 0], [False] * 3) is None
    spreader.forget(2)
    now[0] += RECENT_S + 0.1
    assert spreader.choose([3, 3, 3], [True] * 3) in (0, 1, 2)


def test_a_connection_travels_to_a_worker_with_its_kind() -> None:
    ours, theirs = handoff_pair()
    theirs.setblocking(False)
    left, right = socket.socketpair()
    try:
        assert receive_connections(theirs) == []
        send_connection(ours, left, "h")
        [(kind, conn)] = receive_connections(theirs)
        assert kind == "h"
        with conn:
            conn.setblocking(True)
            right.sendall(b"hello")
            assert conn.recv(5) == b"hello"
        ours.close()
        with pytest.raises(EOFError):
            receive_connections(theirs)
    finally:
        for sock in (theirs, left, right):
            sock.close()


# ---- pure: the metrics merge ----


def test_merged_metrics_read_as_one_server_and_never_go_backwards() -> None:
    w1, w2 = Metrics(), Metrics()
    w1.streams.labels("en", "live").inc()
    w2.streams.labels("en", "live").inc(2)
    w1.active_streams.labels("live").set(1)
    w2.active_streams.labels("live").set(2)
    for m in (w1, w2):
        m.max_streams.set(8)
        m.stream_load.set(3 / 8)
    w1.engine_busy.labels("en").set(0.2)
    w2.engine_busy.labels("en").set(0.6)
    w1.observe_batch("en", 3, 0.01)
    w2.observe_batch("en", 5, 0.02)
    t1, t2 = (m.render()[0].decode() for m in (w1, w2))
    merged = merge_expositions([t1, t2]).decode()
    assert 'streamer_streams_total{kind="live",model="en"} 3.0' in merged
    assert 'streamer_active_streams{kind="live"} 3.0' in merged
    assert "streamer_max_streams 8.0" in merged  # the whole server's, not a sum
    assert "streamer_stream_load_ratio 0.375" in merged
    assert 'streamer_engine_busy_ratio{model="en"} 0.4' in merged  # the mean load of the copies
    assert 'streamer_batch_size_bucket{le="4.0",model="en"} 1.0' in merged
    assert 'streamer_batch_size_count{model="en"} 2.0' in merged
    assert "_created" not in merged
    # w1 dies: its counters stay in the sums, its gauges go.
    retired = retire("", t1)
    w2.streams.labels("en", "live").inc()
    after = merge_expositions([w2.render()[0].decode()], retired).decode()
    assert 'streamer_streams_total{kind="live",model="en"} 4.0' in after
    assert 'streamer_active_streams{kind="live"} 2.0' in after


# ---- pure: the control channel ----


async def test_the_control_channel_answers_requests_even_from_inside_a_handler() -> None:
    a_sock, b_sock = socket.socketpair()
    a: Channel | None = None

    async def handle_b(message: Message) -> Message | None:
        assert a is not None
        if message["op"] == "outer":  # answering needs a request back to the asking side
            inner = await b.request({"op": "inner"}, timeout=2)
            return {"value": inner["value"] + 1}
        return None

    async def handle_a(message: Message) -> Message | None:
        return {"value": 41} if message["op"] == "inner" else None

    a = await Channel.open(a_sock, handle_a)
    b = await Channel.open(b_sock, handle_b)
    readers = [asyncio.create_task(a.run()), asyncio.create_task(b.run())]
    async with asyncio.timeout(5):
        assert (await a.request({"op": "outer"}, timeout=2))["value"] == 42
        await b.close()
        with pytest.raises(ChannelClosed):
            await a.request({"op": "outer"}, timeout=2)
    await a.close()
    await asyncio.gather(*readers, return_exceptions=True)


# ---- the flag ----


def test_workers_flag_and_variable() -> None:
    assert build_config([]).workers == 1
    assert build_config(["--workers", "3"]).workers == 3
    assert build_config([], {"STREAMER_WORKERS": "auto"}).workers == available_cores()
    with pytest.raises(ConfigError, match="--workers"):
        build_config(["--workers", "0"])
    with pytest.raises(ConfigError, match="STREAMER_WORKERS"):
        build_config([], {"STREAMER_WORKERS": "many"})


# ---- a failing worker closes its streams with 1011 and a reason (in one process) ----


async def test_a_failing_worker_closes_its_streams_with_1011_naming_it() -> None:
    async with serve(config(limits=Limits(idle_timeout_s=5.0))) as server, asyncio.timeout(10):
        async with connect(server.ws_url()) as ws:
            await send_audio(ws, pcm16(utterances(["abc"])))
            state = server.app[STATE]
            while not state.live:
                await asyncio.sleep(0.01)
            state.fail("server worker w1 failed (RuntimeError); reconnect")
            await drain(ws)
            assert ws.close_code == 1011
            assert ws.close_reason == "server worker w1 failed (RuntimeError); reconnect"
        assert not state.accepting


# ---- real processes ----


@asynccontextmanager
async def workers_server(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[ServerProcess]:
    server = ServerProcess(["--workers", "2", *FAKE, *args], env=env)
    await server.start(timeout=60)
    try:
        yield server
    finally:
        await server.stop(timeout=30)


async def metrics_text(http: aiohttp.ClientSession, server: ServerProcess) -> str:
    async with http.get(f"{server.url}/metrics") as response:
        assert response.status == 200
        return await response.text()


async def open_stream(server: ServerProcess, key: str | None = None) -> ClientConnection:
    headers = {"Authorization": f"Token {key}"} if key else None
    ws = await connect(server.ws_url("interim_results=true"), additional_headers=headers)
    await send_audio(ws, pcm16(utterances(["abc"])))
    return ws


async def finish(ws: ClientConnection) -> list[Json]:
    await send_audio(ws, pcm16(utterances(["bad"])))
    await ws.send(json.dumps({"type": "CloseStream"}))
    return await drain(ws)


def sample(text: str, name: str) -> float | None:
    """The value of the sample line `name` (with its labels as written) in Prometheus text."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


async def wait_for_line(server: ServerProcess, pattern: str, timeout: float = 20.0) -> re.Match[str]:
    async with asyncio.timeout(timeout):
        while True:
            for line in server.log_lines:
                if match := re.search(pattern, line):
                    return match
            await asyncio.sleep(0.05)


async def test_two_workers_share_streams_limits_readiness_and_metrics(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("limited max_streams=1\nopen\n")
    async with (
        workers_server("--max-streams", "2", "--api-keys-file", str(keys)) as server,
        aiohttp.ClientSession() as http,
        asyncio.timeout(60),
    ):
        first = await open_stream(server, "limited")
        # The next connection goes to the other worker (fewer streams): the key's limit still holds.
        status, body, _ = await handshake_error(
            server.ws_url(), additional_headers={"Authorization": "Token limited"}
        )
        assert (status, body["err_code"]) == (429, "TOO_MANY_REQUESTS")
        second = await open_stream(server, "open")
        status, body, _ = await handshake_error(
            server.ws_url(), additional_headers={"Authorization": "Token open"}
        )
        assert (status, body["err_code"]) == (503, "TOO_MANY_STREAMS")  # --max-streams is the server's
        ready = await http.get(f"{server.url}/readyz")
        state = await ready.json()
        assert ready.status == 503 and state["active_streams"] == 2 and state["max_streams"] == 2
        text = await metrics_text(http, server)
        assert sample(text, 'streamer_worker_active_streams{worker="w1"}') == 1.0
        assert sample(text, 'streamer_worker_active_streams{worker="w2"}') == 1.0
        assert sample(text, 'streamer_active_streams{kind="live"}') == 2.0
        assert sample(text, "streamer_max_streams") == 2.0
        assert sample(text, 'streamer_worker_up{worker="w1"}') == 1.0
        finals = [final_words(await finish(ws)) for ws in (first, second)]
        assert finals == [["abc", "bad"]] * 2
        for _ in range(100):  # slots are released just after the close
            if (await http.get(f"{server.url}/readyz")).status == 200:
                break
            await asyncio.sleep(0.05)
        text = await metrics_text(http, server)
        assert sample(text, 'streamer_streams_total{kind="live",model="en"}') == 2.0
        assert sample(text, 'streamer_rejected_requests_total{reason="key_limit"}') == 1.0
        assert sample(text, 'streamer_rejected_requests_total{reason="overload"}') == 1.0
        assert sample(text, 'streamer_worker_streams_total{worker="w1"}') == 1.0
        assert sample(text, 'streamer_worker_streams_total{worker="w2"}') == 1.0
    opened = [line for line in server.log_lines if ": opened (deepgram" in line]
    assert {m.group(1) for line in opened if (m := re.search(r" INFO (w\d) ", line))} == {"w1", "w2"}
    assert all(re.search(r" (main|w\d) ", line) for line in server.log_lines if line.strip())
    assert not server.error_lines()


async def test_sigterm_drains_every_worker_and_the_supervisor_exits_0() -> None:
    async with workers_server("--drain-timeout", "20") as server, asyncio.timeout(60):
        streams = [await open_stream(server), await open_stream(server)]
        await wait_for_line(server, r" w1 .*: opened")
        await wait_for_line(server, r" w2 .*: opened")
        assert server.proc is not None
        server.terminate()
        await wait_for_line(server, r" w1 .*draining: not ready")
        await wait_for_line(server, r" w2 .*draining: not ready")
        status, body, _ = await handshake_error(server.ws_url())
        assert (status, body["err_code"]) == (503, "SHUTTING_DOWN")
        # Running streams go on during the drain and end as the client ends them.
        for ws in streams:
            assert final_words(await finish(ws)) == ["abc", "bad"]
            assert ws.close_code == 1000
        assert await server.stop(timeout=30) == 0
    assert any(re.search(r" main .*worker w1 exited \(exit status 0\)", line) for line in server.log_lines)
    assert any(re.search(r" main .*worker w2 exited \(exit status 0\)", line) for line in server.log_lines)
    assert not server.error_lines()


async def test_a_killed_worker_is_restarted_and_serves_again() -> None:
    async with workers_server() as server, aiohttp.ClientSession() as http, asyncio.timeout(60):
        first, second = await open_stream(server), await open_stream(server)
        await metrics_text(http, server)  # the supervisor keeps these counts when a worker dies
        pid = int((await wait_for_line(server, r"worker w1 starting \(pid (\d+)\)")).group(1))
        os.kill(pid, signal.SIGKILL)
        await wait_for_line(server, r" main .*worker w1 exited unexpectedly \(killed by SIGKILL\)")
        # The first stream went to w1 (equal loads: the first worker in turn). It is gone without a close
        # frame (no process is left to send one); w2's stream does not notice.
        with pytest.raises(ConnectionClosed):
            while True:
                await first.recv()
        assert first.close_code == 1006
        assert final_words(await finish(second)) == ["abc", "bad"]
        await wait_for_line(server, r" main .*worker w1 serving again")
        ws = await open_stream(server)  # w1 has no stream now: it gets this one
        text = await metrics_text(http, server)
        assert sample(text, 'streamer_worker_active_streams{worker="w1"}') == 1.0
        assert sample(text, 'streamer_worker_restarts_total{worker="w1"}') == 1.0
        assert sample(text, 'streamer_streams_total{kind="live",model="en"}') == 3.0
        assert final_words(await finish(ws)) == ["abc", "bad"]
        for _ in range(100):  # every slot is free again, the dead worker's too
            if (await (await http.get(f"{server.url}/readyz")).json())["active_streams"] == 0:
                break
            await asyncio.sleep(0.05)
        assert (await (await http.get(f"{server.url}/readyz")).json())["active_streams"] == 0
    assert server.proc is not None and server.proc.returncode == 0


def _handoff_queue_length() -> int:
    """How many connections a hand-off channel holds before its sender would block, on this machine."""
    ours, theirs = handoff_pair()
    ours.setblocking(False)
    with ours, theirs, socket.socket() as conn:
        count = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                send_connection(ours, conn, "http")
                count += 1
        return count  # the descriptors in flight are closed with the pair


async def test_a_burst_of_connections_waits_for_busy_workers_instead_of_being_closed() -> None:
    """A worker's hand-off queue holds as many connections as the socket's send buffer has room for (278
    here); a burst larger than every worker's queue together waits in the backlog until the workers
    read again, and every connection is answered (before, the rest were accepted and closed)."""
    queue = _handoff_queue_length()
    burst = 2 * queue + 40
    async with workers_server() as server, asyncio.timeout(90):
        pids = [
            int((await wait_for_line(server, rf"worker {name} starting \(pid (\d+)\)")).group(1))
            for name in ("w1", "w2")
        ]
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def healthz() -> int:
                async with http.get(f"{server.url}/healthz") as response:
                    return response.status

            for pid in pids:  # both event loops stop reading, as a saturated one would
                os.kill(pid, signal.SIGSTOP)
            try:
                requests = [asyncio.create_task(healthz()) for _ in range(burst)]
                await asyncio.sleep(2.0)
                assert not any(r.done() for r in requests)
            finally:
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
            assert await asyncio.gather(*requests) == [200] * burst
    assert not any("a connection was closed" in line for line in server.log_lines)


async def test_workers_speak_tls_on_the_connections_they_are_handed(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    async with workers_server("--tls-cert", str(cert), "--tls-key", str(key)) as server, asyncio.timeout(30):
        assert server.url.startswith("https://127.0.0.1:")
        async with aiohttp.ClientSession() as http:
            for _ in range(2):  # one connection to each worker
                async with http.get(f"{server.url}/healthz", ssl=trust) as response:
                    assert response.status == 200
            with pytest.raises(aiohttp.ClientError):  # plain HTTP: the worker's TLS handshake fails
                await http.get(server.url.replace("https://", "http://") + "/healthz")
        async with connect(server.ws_url("interim_results=true"), ssl=trust) as ws:
            await send_audio(ws, pcm16(utterances(["abc"])))
            assert final_words(await finish(ws)) == ["abc", "bad"]
    assert server.proc is not None and server.proc.returncode == 0
    assert not server.error_lines()


# ---- the measurements behind the design ----


def test_the_ipc_and_spread_benchmarks_run(capsys: pytest.CaptureFixture[str]) -> None:
    from streamer.bench import ipc, spread

    assert ipc.main(["--windows", "50", "--modes", "shm,asyncio"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"ipc: mode=(shm|asyncio) p50_us=\d+ p99_us=\d+ cpu_us=\d+", last)
    assert spread.main(["--rounds", "3", "--connections", "4", "--modes", "handoff,reuseport"]) == 0
    rows = capsys.readouterr().out.splitlines()
    handoff = next(row.split() for row in rows if row.startswith("handoff"))
    assert handoff[2:5] == ["1.00", "1.00", "0%"]  # even, every round
