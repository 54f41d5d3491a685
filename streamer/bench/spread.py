"""How evenly connections spread over worker processes, by how they reach them.

    python -m streamer.bench spread                          # 2 workers, 4/8/16 connections, 200 rounds
    python -m streamer.bench spread --workers 4 --connections 8,32 --rounds 100 --gap-ms 5

`--workers N` has to put each new stream on one of N processes. Three ways are measured here, with plain
asyncio processes that hold each connection open (a stream) and tell the client which process took it:

- `reuseport`: every process listens on the port itself (SO_REUSEPORT); the kernel hashes each connection
  to one of them;
- `shared`: one listening socket, inherited by every process, each accepting from it on its event loop;
- `handoff`: a supervisor accepts and hands each connection to the process with the fewest
  (`streamer.server.handoff.Spreader`, SCM_RIGHTS), which is what `--workers` does.

Each round opens `--connections` connections (all at once, or `--gap-ms` apart), reads which process took
each, and closes them. Reported per mode: the busiest process's share over an even share (1.00: even),
mean and worst over the rounds, the rounds where the busiest and the idlest process differ by more than
one connection, and the connect time (to the process's first byte) p50 and p99. Streams are long: a
process that got 6 of 8 streams where 4 were its share is the one that falls behind first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import socket
import sys
import time
from dataclasses import dataclass

import numpy as np

from streamer.server.handoff import HTTP, Spreader, handoff_pair, receive_connections, send_connection

MODES = ("reuseport", "shared", "handoff")


# ---- the worker processes ----


def _worker(
    index: int, mode: str, port: int, listener: socket.socket | None, handoff: socket.socket | None
) -> None:
    asyncio.run(_serve(index, mode, port, listener, handoff))


async def _serve(
    index: int, mode: str, port: int, listener: socket.socket | None, handoff: socket.socket | None
) -> None:
    loop = asyncio.get_running_loop()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(bytes([index]))
        with contextlib.suppress(ConnectionError):
            await reader.read()  # until the client closes
        writer.close()

    def protocol() -> asyncio.StreamReaderProtocol:
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(), hold)

    stop = loop.create_future()
    if mode == "reuseport":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(1024)
        server = await asyncio.start_server(hold, sock=sock)
    elif mode == "shared" and listener is not None:
        server = await asyncio.start_server(hold, sock=listener)
    elif handoff is not None:
        server = None
        handoff.setblocking(False)
        adopting: set[asyncio.Task[object]] = set()

        def adopt() -> None:
            try:
                for _kind, conn in receive_connections(handoff):
                    task = loop.create_task(loop.connect_accepted_socket(protocol, conn))
                    adopting.add(task)
                    task.add_done_callback(adopting.discard)
            except EOFError:
                loop.remove_reader(handoff.fileno())
                stop.set_result(None)

        loop.add_reader(handoff.fileno(), adopt)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    with contextlib.suppress(asyncio.CancelledError):
        if server is not None:
            async with server:
                await server.serve_forever()
        else:
            await stop


# ---- the bench ----


@dataclass(frozen=True)
class SpreadResult:
    mode: str
    connections: int
    mean_share: float
    worst_share: float
    uneven_rounds: float
    connect_p50_ms: float
    connect_p99_ms: float


async def _round(port: int, connections: int, gap_s: float, workers: int) -> tuple[list[int], list[float]]:
    async def one(delay: float) -> tuple[int, float, asyncio.StreamWriter]:
        await asyncio.sleep(delay)
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        index = (await reader.readexactly(1))[0]
        return index, time.perf_counter() - started, writer

    opened = await asyncio.gather(*(one(i * gap_s) for i in range(connections)))
    counts = [0] * workers
    for index, _, writer in opened:
        counts[index] += 1
        writer.close()
    await asyncio.gather(*(writer.wait_closed() for _, _, writer in opened), return_exceptions=True)
    return counts, [t for _, t, _ in opened]


async def _supervise(listener: socket.socket, handoffs: list[socket.socket], counts: list[int]) -> None:
    """The handoff mode's supervisor: accept, hand to the process with the fewest this round."""
    loop = asyncio.get_running_loop()
    spreader = Spreader(len(handoffs))
    serving = [True] * len(handoffs)
    while True:
        conn, _ = await loop.sock_accept(listener)
        with conn:
            index = spreader.choose(counts, serving)
            if index is not None:
                counts[index] += 1
                send_connection(handoffs[index], conn, HTTP)


async def measure(mode: str, workers: int, connections: int, rounds: int, gap_s: float) -> SpreadResult:
    """Spread `connections` connections over `workers` processes `rounds` times in `mode` (see MODES)."""
    context = multiprocessing.get_context("spawn")
    placeholder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # holds the port for reuseport
    placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    placeholder.bind(("127.0.0.1", 0))
    port = placeholder.getsockname()[1]
    listener: socket.socket | None = None
    ours: list[socket.socket] = []
    theirs: list[socket.socket | None] = [None] * workers
    if mode != "reuseport":
        placeholder.close()
        listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        listener.setblocking(False)
        port = listener.getsockname()[1]
    if mode == "handoff":
        pairs = [handoff_pair() for _ in range(workers)]
        ours = [a for a, _ in pairs]
        theirs = [b for _, b in pairs]
    processes = [
        context.Process(
            target=_worker,
            args=(i, mode, port, listener if mode == "shared" else None, theirs[i]),
            daemon=True,
        )
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    for sock in theirs:
        if sock is not None:
            sock.close()
    counts_this_round = [0] * workers
    supervisor = (
        asyncio.get_running_loop().create_task(_supervise(listener, ours, counts_this_round))
        if mode == "handoff" and listener is not None
        else None
    )
    shares: list[float] = []
    uneven = 0
    times: list[float] = []
    try:
        await _wait_listening(port)
        even = connections / workers
        for _ in range(rounds):
            counts_this_round[:] = [0] * workers
            counts, latencies = await _round(port, connections, gap_s, workers)
            shares.append(max(counts) / even)
            uneven += max(counts) - min(counts) > 1
            times += latencies
            await asyncio.sleep(0.01)  # let the processes see the closes
    finally:
        if supervisor is not None:
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        for sock in ours:
            sock.close()
        for process in processes:
            process.terminate()
            process.join(5)
        if listener is not None:
            listener.close()
        with contextlib.suppress(OSError):
            placeholder.close()
    ms = np.array(times) * 1000
    return SpreadResult(
        mode,
        connections,
        float(np.mean(shares)),
        float(np.max(shares)),
        uneven / rounds,
        float(np.percentile(ms, 50)),
        float(np.percentile(ms, 99)),
    )


async def _wait_listening(port: int, timeout: float = 30.0) -> None:
    """Until a connection gets its first byte (every process has started far enough to take one)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.wait_for(reader.readexactly(1), 2.0)
            writer.close()
            await asyncio.sleep(1.0)  # the others start about as fast
            return
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    """`python -m streamer.bench spread [flags]`; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m streamer.bench spread", description=__doc__)
    parser.add_argument("--workers", type=int, default=2, help="processes (default %(default)s)")
    parser.add_argument(
        "--connections", default="4,8,16", help="per round, comma-separated (default %(default)s)"
    )
    parser.add_argument("--rounds", type=int, default=200, help="rounds per setting (default %(default)s)")
    parser.add_argument(
        "--gap-ms", type=float, default=0.0, help="between connections (default: all at once)"
    )
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated (default: all)")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in MODES for m in modes) or args.workers < 2:
        print(f"choose modes from {', '.join(MODES)} and at least 2 workers", file=sys.stderr)
        return 2
    print(
        f"{args.workers} worker processes, {args.rounds} rounds, connections "
        f"{'all at once' if not args.gap_ms else f'{args.gap_ms:g} ms apart'}"
    )
    print(f"{'mode':<11}{'conns':>6}{'mean_share':>11}{'worst':>7}{'uneven':>8}{'p50_ms':>8}{'p99_ms':>8}")
    for connections in (int(n) for n in args.connections.split(",") if n.strip()):
        for mode in modes:
            r = asyncio.run(measure(mode, args.workers, connections, args.rounds, args.gap_ms / 1000))
            print(
                f"{r.mode:<11}{r.connections:>6}{r.mean_share:>11.2f}{r.worst_share:>7.2f}"
                f"{r.uneven_rounds:>8.0%}{r.connect_p50_ms:>8.2f}{r.connect_p99_ms:>8.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
