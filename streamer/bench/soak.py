"""Soak test: many clients come and go for a long time; the server's memory, sessions and tasks stay flat.

    python -m streamer.bench soak --minutes 10 --streams 8                  # built-in model, ../shared/data
    python -m streamer.bench soak --minutes 0.2 --streams 2 --model fake:tone --synthetic

Starts `python -m streamer --port 0` as a subprocess (its RSS is then the server's alone), and runs
`--streams` client slots for `--minutes`. Each slot, again and again: connects, streams real speech (the
clips of `--data`, default ../shared/data, joined with pauses, from a random point) at real-time pace in
20-100 ms frames for a random 5-40 s, then leaves in one of three ways at random: CloseStream and wait for
Metadata (half the time), a WebSocket close without CloseStream, or an abrupt TCP abort; then pauses up to
2 s and comes back. Every `--sample-every` seconds it prints the server's RSS (/proc/PID/status VmRSS) and
what its /metrics says about live sessions and event-loop tasks. At the end the clients leave, the server
must drop to zero live sessions, and SIGTERM must stop it cleanly.

Errors: client sessions that end wrongly (a close code other than the expected one, a missing Metadata after
CloseStream, an unexpected exception), ERROR lines or tracebacks in the server log, a non-zero exit.
Handshakes refused with 503 (the server at capacity) are counted apart, not as errors. RSS growth compares
the median of the first fifth of the samples after the warm-up (the first minute, or a fifth of shorter
runs) with the median of the last fifth, both taken under load. The last line is
`soak: minutes=M streams=N rss_growth=X% leaked_sessions=L errors=E`; the exit status is 1 when sessions
leaked or errors occurred.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from streamer import SAMPLE_RATE
from streamer.audio import float_to_linear16
from streamer.errors import ConfigError

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
_LISTENING = re.compile(r"listening on (https?)://([^\s:]+|\[[^\]]+\]):(\d+)")


def log(message: str) -> None:
    print(message, flush=True)


# ---- the server process ---------------------------------------------------------------------------------


class ServerProcess:
    """`python -m streamer --port 0 ARGS...` in a subprocess, for benchmarks and process-level tests.

        async with ServerProcess(["--model", "en=fake:tone"]) as server:
            server.url, server.ws_url("interim_results=true"), server.rss_kib(), server.log_lines
            code = await server.stop()  # SIGTERM; also done on exit

    The whole log (stderr) is collected in `log_lines` by a reader task; `error_lines()` picks out
    ERROR lines and tracebacks.
    """

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.args = [sys.executable, "-m", "streamer", "--host", "127.0.0.1", "--port", "0", *args]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.log_lines: list[str] = []
        self._reader: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._terminated = False

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def ws_url(self, query: str = "") -> str:
        base = self.url.replace("http", "ws", 1)
        return f"{base}/v1/listen" + (f"?{query}" if query else "")

    async def start(self, timeout: float = 120.0) -> str:
        """Start the server and wait for its "listening on" line; returns its base URL."""
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=self.env
        )
        self._reader = asyncio.get_running_loop().create_task(self._read_log())
        try:
            async with asyncio.timeout(timeout):
                await self._listening.wait()
        except TimeoutError:
            pass
        if not self.url:
            await self.stop()
            tail = "".join(self.log_lines[-30:])
            raise RuntimeError(f"the server did not start ({' '.join(self.args[3:])}):\n{tail}")
        return self.url

    async def _read_log(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        try:
            while line := (await self.proc.stderr.readline()).decode(errors="replace"):
                self.log_lines.append(line)
                if not self.url and (match := _LISTENING.search(line)):
                    self.url = f"{match.group(1)}://{match.group(2)}:{match.group(3)}"
                    self._listening.set()
        finally:
            self._listening.set()  # exited before listening: start() reports it

    def rss_kib(self) -> int:
        """The server's resident set size (VmRSS), KiB."""
        with open(f"/proc/{self.pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS in /proc status")

    def error_lines(self) -> list[str]:
        return [line for line in self.log_lines if " ERROR " in line or "Traceback" in line]

    def terminate(self) -> None:
        """Send SIGTERM once (the server drains; a second one would cut the drain short)."""
        if self.proc is not None and self.proc.returncode is None and not self._terminated:
            self._terminated = True
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    async def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (unless sent already) and wait, SIGKILL after `timeout`; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.terminate()
            try:
                async with asyncio.timeout(timeout):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._reader
        return self.proc.returncode

    async def __aenter__(self) -> ServerProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def read_metrics(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """`/metrics` as {name{labels}: value} (the sample lines of Prometheus' text format)."""
    async with http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                values[name] = float(value)
    return values


# ---- audio ----------------------------------------------------------------------------------------------


def speech_audio(data: Path | None, seed: int) -> bytes:
    """linear16 16 kHz: every English clip of `data` joined with pauses, or, with `data` None, tone
    phrases that the `fake:tone` engine reads (for runs without recorded speech)."""
    if data is None:
        from streamer.engine.fake import tone_phrase  # model-free audio for the fake engine

        rng = random.Random(seed)
        words = ["bad", "cab", "face", "head", "jig", "fade", "dim", "gap", "hike", "pole"]
        parts = [np.zeros(SAMPLE_RATE // 2, np.float32)]
        for i in range(40):
            parts += [
                tone_phrase(rng.sample(words, rng.randint(1, 4)), seed=i),
                np.zeros(int(rng.uniform(0.5, 1.5) * SAMPLE_RATE), np.float32),
            ]
        return float_to_linear16(np.concatenate(parts))
    from streamer.bench.data import join_with_pauses, load_manifest

    clips = load_manifest(data, "en")
    if not clips:
        raise ConfigError(f"no English clips in {data}")
    order = list(clips)
    random.Random(seed).shuffle(order)
    return float_to_linear16(join_with_pauses([c.audio() for c in order], seed=seed))


# ---- clients --------------------------------------------------------------------------------------------


@dataclass
class ClientStats:
    sessions: Counter[str] = field(default_factory=Counter)
    """Sessions by how they ended: close_stream, close, abort."""
    refused: int = 0
    errors: list[str] = field(default_factory=list)
    audio_s: float = 0.0


async def _receive(ws: ClientConnection, messages: list[dict[str, object]]) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for raw in ws:
            messages.append(json.loads(raw))


async def _session(
    url: str, audio: bytes, rng: random.Random, seconds: float, stats: ClientStats, slot: int
) -> None:
    """One client session: connect, stream `seconds` of audio at real-time pace, leave at random."""
    start = rng.randrange(0, max(1, len(audio) - 2)) & ~1
    how = rng.choice(["close_stream", "close_stream", "close", "abort"])
    try:
        ws = await connect(url, open_timeout=30)
    except InvalidStatus as exc:
        if exc.response.status_code == 503:
            stats.refused += 1
            return
        stats.errors.append(f"slot {slot}: handshake refused with {exc.response.status_code}")
        return
    messages: list[dict[str, object]] = []
    receiver = asyncio.get_running_loop().create_task(_receive(ws, messages))
    try:
        began = time.monotonic()
        sent = 0
        pos = start
        while sent < seconds * SAMPLE_RATE * 2:
            n = 2 * 16 * rng.randint(20, 100)
            chunk = audio[pos : pos + n] or audio[:n]
            pos = pos + n if pos + n < len(audio) else 0
            await ws.send(chunk)
            sent += len(chunk)
            # Real-time pace against the session's own clock, so that sleeps do not drift.
            delay = began + sent / (2 * SAMPLE_RATE) - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        stats.audio_s += sent / (2 * SAMPLE_RATE)
        if how == "close_stream":
            await ws.send(json.dumps({"type": "CloseStream"}))
            async with asyncio.timeout(60):
                await receiver
            if ws.close_code != 1000 or not messages or messages[-1].get("type") != "Metadata":
                stats.errors.append(
                    f"slot {slot}: CloseStream ended with {ws.close_code} {ws.close_reason!r}"
                )
        elif how == "close":
            await ws.close()
        else:
            ws.transport.abort()
        stats.sessions[how] += 1
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd is not None else None
        if code == 1012:  # the server is shutting down: the end of the run, not an error
            return
        stats.errors.append(f"slot {slot}: connection closed by the server: {code} {exc}")
    except TimeoutError:
        stats.errors.append(f"slot {slot}: no Metadata within 60 s of CloseStream")
    finally:
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiver
        if ws.state.name != "CLOSED":
            ws.transport.abort()
    for message in messages:
        if message.get("type") == "Error":
            stats.errors.append(f"slot {slot}: Error message: {message.get('description')}")


async def _client_slot(
    url: str,
    audio: bytes,
    deadline: float,
    seed: int,
    slot: int,
    session_s: tuple[float, float],
    stats: ClientStats,
) -> None:
    rng = random.Random(seed * 1000 + slot)
    while (left := deadline - time.monotonic()) > 1.0:
        seconds = min(rng.uniform(*session_s), left)
        await _session(url, audio, rng, seconds, stats, slot)
        await asyncio.sleep(min(rng.uniform(0.0, 2.0), max(0.0, deadline - time.monotonic())))


# ---- the run --------------------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    rss_kib: int
    live: float
    tasks: float


@dataclass
class SoakResult:
    minutes: float
    streams: int
    samples: list[Sample]
    rss_growth_pct: float
    leaked_sessions: int
    tasks_before: float
    tasks_after: float
    errors: list[str]
    stats: ClientStats
    exit_code: int | None

    def line(self) -> str:
        return (
            f"soak: minutes={self.minutes:g} streams={self.streams} rss_growth={self.rss_growth_pct:.1f}% "
            f"leaked_sessions={self.leaked_sessions} errors={len(self.errors)}"
        )


def rss_growth(samples: Sequence[Sample], warmup_s: float) -> float:
    """Percent growth of the server's RSS from just after the warm-up to the end of the run.

    Medians over a span at each end (a fifth of the time after the warm-up, at least 3 samples), because
    single samples jump by 10-20% while a long final pass holds its activations; a leak moves the median.
    """
    after = [s.rss_kib for s in samples if s.t >= warmup_s]
    if len(after) < 2:
        return 0.0
    base, end = median_ends(after, min_span=3)
    return 100.0 * (end - base) / base


def median_ends(values: Sequence[int], min_span: int = 1) -> tuple[float, float]:
    """Medians of the first and the last fifth of `values` (at least `min_span` each); `values` not empty."""
    span = max(min_span, len(values) // 5)
    return statistics.median(values[:span]), statistics.median(values[-span:])


@contextlib.asynccontextmanager
async def _server(args: argparse.Namespace) -> AsyncIterator[ServerProcess]:
    server_args = ["--model", f"en={args.model}", *args.server_arg]
    server = ServerProcess(server_args)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def soak(args: argparse.Namespace) -> SoakResult:
    """Run the soak described by the parsed flags (see `main`); prints the timeline as it goes."""
    audio = speech_audio(None if args.synthetic else args.data, args.seed)
    duration = args.minutes * 60.0
    warmup = min(60.0, duration / 5)
    session_s = (5.0, 40.0) if duration >= 120 else (2.0, max(3.0, duration / 3))
    stats = ClientStats()
    samples: list[Sample] = []
    errors: list[str] = []
    async with _server(args) as server, aiohttp.ClientSession() as http:
        before = await read_metrics(http, server.url)
        tasks_before = before.get("streamer_asyncio_tasks", 0.0)
        log(
            f"server pid {server.pid} at {server.url}; {len(audio) / (2 * SAMPLE_RATE):.0f} s of audio; "
            f"{args.streams} client slots for {args.minutes:g} min, warm-up {warmup:.0f} s"
        )
        started = time.monotonic()
        deadline = started + duration
        url = server.ws_url(args.query)
        clients = [
            asyncio.create_task(_client_slot(url, audio, deadline, args.seed, i, session_s, stats))
            for i in range(args.streams)
        ]
        try:
            while time.monotonic() < deadline:
                await asyncio.sleep(min(args.sample_every, max(0.0, deadline - time.monotonic())))
                metrics = await read_metrics(http, server.url)
                sample = Sample(
                    time.monotonic() - started,
                    server.rss_kib(),
                    metrics.get("streamer_live_sessions", -1.0),
                    metrics.get("streamer_asyncio_tasks", -1.0),
                )
                samples.append(sample)
                log(
                    f"t={sample.t:6.0f}s rss={sample.rss_kib / 1024:7.1f}MB live={sample.live:3.0f} "
                    f"tasks={sample.tasks:4.0f} sessions={sum(stats.sessions.values())} "
                    f"refused={stats.refused} errors={len(stats.errors)}"
                )
            async with asyncio.timeout(90):
                await asyncio.gather(*clients)
        finally:
            for task in clients:
                task.cancel()
            await asyncio.gather(*clients, return_exceptions=True)
        # Every client is gone: the server must hold nothing for them any more.
        leaked, tasks_after = -1.0, -1.0
        for _ in range(150):
            metrics = await read_metrics(http, server.url)
            leaked = metrics.get("streamer_live_sessions", -1.0)
            tasks_after = metrics.get("streamer_asyncio_tasks", -1.0)
            if leaked == 0 and tasks_after <= tasks_before:
                break
            await asyncio.sleep(0.1)
        exit_code = await server.stop()
        errors += stats.errors
        errors += [f"server log: {line.rstrip()}" for line in server.error_lines()]
        if exit_code != 0:
            errors.append(f"server exit status {exit_code}")
    return SoakResult(
        minutes=args.minutes,
        streams=args.streams,
        samples=samples,
        rss_growth_pct=rss_growth(samples, warmup),
        leaked_sessions=int(leaked) if leaked >= 0 else -1,
        tasks_before=tasks_before,
        tasks_after=tasks_after,
        errors=errors,
        stats=stats,
        exit_code=exit_code,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m streamer.bench soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default %(default)s)")
    parser.add_argument("--streams", type=int, default=8, help="client slots (default %(default)s)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="speech folder (default %(default)s)")
    parser.add_argument(
        "--synthetic", action="store_true", help="tone phrases instead of recorded speech (for fake:tone)"
    )
    parser.add_argument(
        "--model", default="builtin:en", help="model spec the server loads (default %(default)s)"
    )
    parser.add_argument("--query", default="interim_results=true&vad_events=true", help="stream parameters")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra flag for the server (repeatable)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.minutes <= 0 or args.streams < 1 or args.sample_every <= 0:
        print("error: --minutes and --sample-every must be > 0, --streams >= 1", file=sys.stderr)
        return 2
    if not args.synthetic and not (args.data / "MANIFEST.tsv").is_file():
        print(f"error: no MANIFEST.tsv in {args.data} (use --data DIR or --synthetic)", file=sys.stderr)
        return 2
    result = asyncio.run(soak(args))
    sessions = ", ".join(f"{k}={v}" for k, v in sorted(result.stats.sessions.items()))
    log(
        f"client sessions: {sessions or 'none'}; refused (503)={result.stats.refused}; "
        f"audio streamed={result.stats.audio_s:.0f} s; event-loop tasks before={result.tasks_before:g} "
        f"after={result.tasks_after:g}; server exit status {result.exit_code}"
    )
    for error in result.errors[:20]:
        log(f"error: {error}")
    log(result.line())
    return 0 if result.leaked_sessions == 0 and not result.errors else 1


if __name__ == "__main__":
    sys.exit(main())
