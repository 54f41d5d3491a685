"""What a separate inference process would cost: one window's audio out and its log-probs back, per window.

    python -m streamer.bench ipc                      # 1.5 s windows, 75 frames x 40 log-probs, all modes
    python -m streamer.bench ipc --seconds 2 --windows 5000 --modes pipe,shm

`--workers` keeps one copy of the model per worker (design (a) in docs/ARCHITECTURE.md). The other design,
(b), sends every window to one inference process per accelerator, which batches across workers. This
measures the price of (b)'s transport alone, between this process and a spawned "inference" process that
answers each window with ready-made log-probs (no model), one window at a time:

- `pipe`: raw float32 bytes over a multiprocessing Pipe (a Unix socket pair), `send_bytes`/`recv_bytes`;
- `pickle`: numpy arrays over the same Pipe with `send`/`recv` (what the obvious code does);
- `shm`: audio and log-probs in shared memory (`multiprocessing.shared_memory`), an 8-byte notice over
  the Pipe each way;
- `asyncio`: length-prefixed bytes over a Unix socket, the client side on an event loop awaiting each
  reply (how a worker's event loop would really wait), the server side blocking.

Reported per window: round-trip latency (p50, p99, microseconds) and CPU (client side, server side, both),
from `time.process_time` in each process. The last line is
`ipc: mode=.. p50_us=.. p99_us=.. cpu_us=..` for the cheapest mode.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from streamer import SAMPLE_RATE

MODES = ("pipe", "pickle", "shm", "asyncio")
_HEADER = struct.Struct("!I")


@dataclass(frozen=True)
class Shape:
    """One window's sizes: audio samples out, (frames, vocabulary) log-probs back."""

    samples: int
    frames: int
    vocab: int

    @property
    def audio_bytes(self) -> int:
        return 4 * self.samples

    @property
    def logprob_bytes(self) -> int:
        return 4 * self.frames * self.vocab


@dataclass(frozen=True)
class IpcResult:
    mode: str
    windows: int
    p50_us: float
    p99_us: float
    client_cpu_us: float
    server_cpu_us: float

    @property
    def cpu_us(self) -> float:
        return self.client_cpu_us + self.server_cpu_us


# ---- the "inference" process: answers every window with log-probs, no model ----


def _inference(
    mode: str, conn: Connection, sock: socket.socket | None, shape: Shape, names: list[str]
) -> None:
    logprobs = np.full((shape.frames, shape.vocab), -3.0, np.float32)
    started = time.process_time()
    if mode == "pipe":
        while (data := conn.recv_bytes()) != b"":
            np.frombuffer(data, np.float32).sum()  # touch the audio, as a model would
            conn.send_bytes(logprobs.tobytes())
    elif mode == "pickle":
        while (window := conn.recv()) is not None:
            window.sum()
            conn.send(logprobs)
    elif mode == "shm":
        audio_shm, out_shm = SharedMemory(names[0]), SharedMemory(names[1])
        audio = np.ndarray((shape.samples,), np.float32, audio_shm.buf)
        out = np.ndarray((shape.frames, shape.vocab), np.float32, out_shm.buf)
        while conn.recv_bytes() != b"":
            audio.sum()
            out[:] = logprobs
            conn.send_bytes(b"done")
        del audio, out
        audio_shm.close()
        out_shm.close()
    elif mode == "asyncio" and sock is not None:
        with sock:
            reply = _HEADER.pack(shape.logprob_bytes) + logprobs.tobytes()
            while (size := _read_header(sock)) is not None:
                np.frombuffer(_read_exact(sock, size), np.float32).sum()
                sock.sendall(reply)
    conn.send(time.process_time() - started)


def _read_exact(sock: socket.socket, size: int) -> bytes:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise EOFError
        got += n
    return bytes(buf)


def _read_header(sock: socket.socket) -> int | None:
    try:
        (size,) = _HEADER.unpack(_read_exact(sock, _HEADER.size))
    except EOFError:
        return None
    return int(size)


# ---- the worker side ----


def measure(mode: str, shape: Shape, windows: int, warmup: int = 200) -> IpcResult:
    """Round-trip `windows` windows through a spawned process in `mode` (one of MODES)."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    sock_ours: socket.socket | None = None
    sock_theirs: socket.socket | None = None
    shms: list[SharedMemory] = []
    if mode == "asyncio":
        sock_ours, sock_theirs = socket.socketpair()
    if mode == "shm":
        shms = [
            SharedMemory(create=True, size=shape.audio_bytes),
            SharedMemory(create=True, size=shape.logprob_bytes),
        ]
    process = context.Process(
        target=_inference, args=(mode, theirs, sock_theirs, shape, [s.name for s in shms]), daemon=True
    )
    process.start()
    if sock_theirs is not None:
        sock_theirs.close()
    window = np.random.default_rng(0).standard_normal(shape.samples).astype(np.float32)
    try:
        if mode == "asyncio":
            assert sock_ours is not None
            latencies, cpu = asyncio.run(_asyncio_client(sock_ours, window, shape, warmup, windows))
        else:
            step = _step(mode, ours, window, shape, shms)
            for _ in range(warmup):
                step()
            latencies = []
            cpu_before = time.process_time()
            for _ in range(windows):
                started = time.perf_counter()
                step()
                latencies.append(time.perf_counter() - started)
            cpu = time.process_time() - cpu_before
            if mode == "pickle":
                ours.send(None)
            else:
                ours.send_bytes(b"")
        server_cpu = float(ours.recv())
    finally:
        process.join(10)
        for shm in shms:
            shm.close()
            shm.unlink()
    total = windows + warmup
    lat = np.array(latencies) * 1e6
    return IpcResult(
        mode,
        windows,
        float(np.percentile(lat, 50)),
        float(np.percentile(lat, 99)),
        cpu / windows * 1e6,
        server_cpu / total * 1e6,  # the server cannot tell warm-up windows apart: all of them, averaged
    )


def _step(
    mode: str, conn: Connection, window: np.ndarray, shape: Shape, shms: list[SharedMemory]
) -> Callable[[], None]:
    """One window's round trip in `mode` (not asyncio), as a function of no arguments."""

    def pipe() -> None:
        conn.send_bytes(window.tobytes())
        np.frombuffer(conn.recv_bytes(), np.float32).reshape(shape.frames, shape.vocab).copy()

    def pickled() -> None:
        conn.send(window)
        conn.recv()

    if mode == "pipe":
        return pipe
    if mode == "pickle":
        return pickled
    audio = np.ndarray((shape.samples,), np.float32, shms[0].buf)
    out = np.ndarray((shape.frames, shape.vocab), np.float32, shms[1].buf)

    def shared() -> None:
        audio[:] = window
        conn.send_bytes(b"go")
        conn.recv_bytes()
        out.copy()  # the log-probs must leave the shared block before the next window reuses it

    return shared


async def _asyncio_client(
    sock: socket.socket, window: np.ndarray, shape: Shape, warmup: int, windows: int
) -> tuple[list[float], float]:
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    message = _HEADER.pack(shape.audio_bytes) + window.tobytes()

    async def step() -> None:
        writer.write(message)
        (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
        np.frombuffer(await reader.readexactly(size), np.float32).reshape(shape.frames, shape.vocab)

    for _ in range(warmup):
        await step()
    latencies: list[float] = []
    cpu_before = time.process_time()
    for _ in range(windows):
        started = time.perf_counter()
        await step()
        latencies.append(time.perf_counter() - started)
    cpu = time.process_time() - cpu_before
    writer.close()
    await writer.wait_closed()
    return latencies, cpu


# ---- command line ----


def main(argv: list[str] | None = None) -> int:
    """`python -m streamer.bench ipc [flags]`; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m streamer.bench ipc", description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.5, help="audio per window (default %(default)s)")
    parser.add_argument("--frames", type=int, help="log-prob frames per window (default: one per 20 ms)")
    parser.add_argument("--vocab", type=int, default=40, help="log-probs per frame (default %(default)s)")
    parser.add_argument("--windows", type=int, default=3000, help="windows per mode (default %(default)s)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated (default: all)")
    args = parser.parse_args(argv)
    samples = int(args.seconds * SAMPLE_RATE)
    shape = Shape(samples, args.frames or samples // 320, args.vocab)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        print(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}", file=sys.stderr)
        return 2
    print(
        f"window: {shape.samples} samples ({shape.audio_bytes / 1024:.0f} KiB) out, "
        f"{shape.frames}x{shape.vocab} log-probs ({shape.logprob_bytes / 1024:.1f} KiB) back; "
        f"{args.windows} windows per mode, one at a time"
    )
    print(f"{'mode':<9}{'p50_us':>9}{'p99_us':>9}{'client_cpu_us':>15}{'server_cpu_us':>15}{'cpu_us':>9}")
    results = []
    for mode in modes:
        result = measure(mode, shape, args.windows)
        results.append(result)
        print(
            f"{mode:<9}{result.p50_us:>9.0f}{result.p99_us:>9.0f}{result.client_cpu_us:>15.0f}"
            f"{result.server_cpu_us:>15.0f}{result.cpu_us:>9.0f}"
        )
    best = min(results, key=lambda r: r.p50_us)
    print(f"ipc: mode={best.mode} p50_us={best.p50_us:.0f} p99_us={best.p99_us:.0f} cpu_us={best.cpu_us:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
