"""Load benchmark: N real-time WebSocket clients through the real server and protocol.

    python -m streamer.bench load --streams 4                       # starts `python -m streamer` itself
    python -m streamer.bench load --streams 4 --url http://127.0.0.1:8000   # an already running server
    python -m streamer.bench load --find-capacity --seconds 40      # largest N that keeps up
    python -m streamer.bench load --streams 4 --model en=/models/w2v2 --max-batch 1 --profile prof.txt
    python -m streamer.bench load --streams 4 --hog 1               # while one busy process takes a core

Each client streams real speech from `--data` (default ../shared/data, `--language en`): clips in a
client-specific order joined with 0.3-2 s pauses (`streamer.bench.data.join_with_pauses`), at real-time
pace in random 20-100 ms linear16 frames, with `interim_results=true&vad_events=true`, then CloseStream.
The clients share the machine with the server, so they are lean (`streamer.bench.lean_clients`: one pacer
for every stream, prepared frames, JSON parsed after the step; about half the CPU of a websockets-library
client per stream); `--clients websockets` runs one websockets client per stream instead (also for wss://).
Without `--url` the server runs as a subprocess (`python -m streamer --port 0` plus the pass-through flags
`--model --max-batch --max-wait-ms --threads --dtype --window-left/hop/right --no-final-pass` and any
`--server-arg`), so its CPU time is read from /proc alone: the whole process, and its event-loop thread
(the main thread) apart from the rest (inference thread, model replicas, torch's pool: "engine" CPU).

Latencies (wall seconds, measured by the client, p50/p95/p99 over all streams):
- partial: for each word of a final (end time t), from sending the frame that holds stream sample t*16000
  to receiving the first result (interim or final) that covers audio up to t and has a word overlapping
  the word's last 100 ms (matched by time, since interim spellings differ);
- final: from sending the audio where the endpoint is due (the utterance's last word end + endpointing)
  to receiving its `speech_final` result;
- end-of-speech: from sending the last word's end to receiving the `speech_final` result.
Also the engine's real-time factor (busy seconds / audio seconds, from /metrics before and after), batch
sizes, server CPU, `overhead` = server CPU / engine CPU, and health counts that must be zero: dropped
(missing finals or Metadata, errors, refused handshakes) and behind (clients whose send loop ran late by
more than 0.5 s), and end lag: from sending a stream's last audio to receiving its closing Metadata, after
every final (how far behind real time the server ends). `--hog N` runs N busy processes during the steps.
The last line is
`load: streams=N partial_p50=.. partial_p95=.. final_p50=.. final_p95=.. eos_p95=.. overhead=.. end_lag_max=..
frontend_cpu=.. capacity=..`.

From code: `await run_step(target, n, workload, options)` runs one step against a `Target` (a running
server, or a `ServerProcess`), `await find_capacity(...)` the search; `analyse_client` is pure.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from math import nan
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import numpy as np

from streamer import SAMPLE_RATE
from streamer.audio import float_to_linear16
from streamer.bench.data import join_with_pauses, load_manifest
from streamer.ctc import FloatArray
from streamer.vad import VadConfig

DEFAULT_DATA = Path(
    os.environ.get("STREAMER_EVAL_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data"
)
LAG_LIMIT_S = 0.5
"""A client whose send loop runs later than this behind real time has fallen behind."""
VAD_TAIL_S = (VadConfig().tail_ms) / 1000
"""Closing silence a segment keeps (the server's default): its end minus this is where speech stopped."""
WORD_TAIL_S = 0.1
"""A result word must overlap this much of a final word's end (or all of a shorter word) to match it."""
JITTER_S = 0.02
"""One model frame: word times of interim and final passes may differ by this much."""
GENERIC_FRAMES = (
    "threading.py",
    "runpy>",
    "asyncio/runners.py",
    "asyncio/base_events.py",
    "asyncio/events.py",
    "concurrent/futures/thread.py",
    "__main__.py",
    "streamer/cli.py",
)
"""Frames every stack of a thread shares: left out of the profile summary's inclusive list."""
CAPACITY_STEPS = (
    1,
    2,
    4,
    6,
    8,
    10,
    12,
    16,
    20,
    24,
    32,
    48,
    64,
    96,
    128,
    160,
    192,
    256,
    320,
    384,
    512,
    640,
    768,
    1024,
)
SpanKey = tuple[str, tuple[tuple[str, str], ...]]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- the server under test ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuTimes:
    """CPU seconds of a process: all threads (dead ones included) and its main (event-loop) thread."""

    total: float
    main: float

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.total - other.total, self.main - other.main)

    @property
    def other(self) -> float:
        """Every thread but the main one: for the server, the inference thread and the engine's threads."""
        return self.total - self.main


def read_cpu(pid: int) -> CpuTimes:
    """utime + stime of `pid` and of every process below it (a server with `--workers` is a supervisor
    and its worker processes), and of their main (event-loop) threads, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")

    def stat(path: str) -> float:
        with open(path, encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14 and 15 of stat)

    total = main = 0.0
    for process in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):  # it exited meanwhile
            total += stat(f"/proc/{process}/stat")
            main += stat(f"/proc/{process}/task/{process}/stat")
    return CpuTimes(total, main)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...), from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat", encoding="ascii") as fh:
                parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])  # ppid, field 4
    found: list[int] = []
    frontier = [pid]
    while frontier:
        below = [child for child, parent in parents.items() if parent in frontier]
        found += below
        frontier = below
    return found


def machine_busy() -> float:
    """CPU seconds every process on this machine has used since boot (/proc/stat), to tell how much of a
    measurement's CPU went to processes that are not part of it (the machine is shared)."""
    with open("/proc/stat", encoding="ascii") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class ServerProcess:
    """`python -m streamer --port 0 ARGS...` as a subprocess; `start()` waits for its listening line.

    The server's log is drained by a thread (the last lines are kept for error messages, all of them
    written to `log_path` when given). `stop()` sends SIGTERM and waits.
    """

    def __init__(self, args: Sequence[str], log_path: Path | None = None) -> None:
        self.args = [sys.executable, "-m", "streamer", "--host", "127.0.0.1", "--port", "0", *args]
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.tail: deque[str] = deque(maxlen=40)
        self._drain: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def start(self, timeout: float = 600.0) -> str:
        """Start the server and return its base URL (`http://127.0.0.1:PORT`); RuntimeError on failure."""
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        found: list[str] = []
        ready = threading.Event()
        log_file = open(self.log_path, "w", encoding="utf-8") if self.log_path else None  # noqa: SIM115
        stdout = self.proc.stdout

        def drain() -> None:
            try:
                for line in stdout:
                    self.tail.append(line.rstrip())
                    if log_file is not None:
                        log_file.write(line)
                    if not found and (m := re.search(r"listening on (http://\S+)", line)):
                        found.append(m.group(1))
                        ready.set()
            finally:
                ready.set()
                if log_file is not None:
                    log_file.close()

        self._drain = threading.Thread(target=drain, name="server-log", daemon=True)
        self._drain.start()
        ready.wait(timeout)
        if not found:
            self.stop()
            tail = "\n".join(self.tail)
            raise RuntimeError(f"the server did not start ({' '.join(self.args[3:])}):\n{tail}")
        self.url = found[0]
        return self.url

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait (SIGKILL after `timeout`); returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._drain is not None:
            self._drain.join(5)
        return self.proc.returncode


@dataclass
class Target:
    """Where the clients go: a base URL, and the server's pid when its CPU can be read (same machine)."""

    url: str
    pid: int | None = None

    @property
    def http(self) -> str:
        parts = urlsplit(self.url)
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
        return f"{scheme}://{parts.netloc}"

    def listen_uri(self, query: dict[str, str]) -> str:
        parts = urlsplit(self.http)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return f"{scheme}://{parts.netloc}/v1/listen?{urlencode(query)}"


# ---- /metrics ---------------------------------------------------------------------------------------------


def parse_metrics(text: str) -> dict[SpanKey, float]:
    """Prometheus text -> {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[SpanKey, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return out


async def scrape(session: aiohttp.ClientSession, target: Target) -> dict[SpanKey, float]:
    async with session.get(f"{target.http}/metrics") as response:
        response.raise_for_status()
        return parse_metrics(await response.text())


def metric(values: dict[SpanKey, float], name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lab), v in values.items() if n == name and want <= set(lab))


async def wait_ready(session: aiohttp.ClientSession, target: Target, timeout: float = 60.0) -> bool:
    """Poll /readyz until it answers 200 (the server takes streams again after a heavy step)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{target.http}/readyz") as response:
                if response.status == 200:
                    return True
        await asyncio.sleep(0.5)
    return False


# ---- the workload -----------------------------------------------------------------------------------------


@dataclass
class Workload:
    """The clips of one language and how each client's stream is made from them (cached per client)."""

    clips: list[FloatArray]
    seconds: float
    seed: int = 0
    _cache: dict[int, bytes] = field(default_factory=dict)

    @classmethod
    def from_folder(cls, data: Path, language: str, seconds: float, seed: int = 0) -> Workload:
        clips = load_manifest(data, language)
        if not clips:
            raise ValueError(f"no clips of language {language!r} in {data}")
        return cls([c.audio() for c in clips], seconds, seed)

    def stream(self, index: int) -> bytes:
        """Client `index`'s linear16 audio: every clip once in a shuffled order (then again, shuffled
        anew, while shorter than `seconds`), joined with pauses, cut after the clip that reaches it."""
        if index not in self._cache:
            rng = random.Random(self.seed * 7919 + index)
            picked: list[FloatArray] = []
            total = 0.0
            while total < self.seconds:
                order = list(range(len(self.clips)))
                rng.shuffle(order)
                for i in order:
                    picked.append(self.clips[i])
                    total += len(self.clips[i]) / SAMPLE_RATE + 1.15  # the mean pause
                    if total >= self.seconds:
                        break
            audio = join_with_pauses(picked, seed=self.seed * 7919 + index)
            self._cache[index] = float_to_linear16(audio)
        return self._cache[index]


# ---- one client -------------------------------------------------------------------------------------------


@dataclass
class ClientRun:
    """What one client sent and received: frames as (end sample, wall time), messages as (wall time, JSON)."""

    index: int
    audio_s: float
    frames: list[tuple[int, float]] = field(default_factory=list)
    messages: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    max_lag_s: float = 0.0
    close_code: int | None = None
    error: str | None = None
    rejected: bool = False

    def sent_at(self, seconds: float) -> float:
        """Wall time the frame holding stream time `seconds` was sent (the last frame if past the end)."""
        sample = seconds * SAMPLE_RATE
        ends = [end for end, _ in self.frames]
        i = min(bisect.bisect_left(ends, sample - 1e-6), len(self.frames) - 1)
        return self.frames[i][1]


def client_seed(seed: int, index: int) -> int:
    """The frame-size seed of client `index` in a run seeded `seed` (the simulator uses it too)."""
    return seed * 1009 + index


def frame_sizes(total_bytes: int, frame_ms: tuple[int, int], seed: int) -> list[int]:
    """The byte size of each linear16 frame a client sends: random whole `frame_ms` durations from
    `random.Random(seed)`, the last one cut short."""
    rng = random.Random(seed)
    sizes: list[int] = []
    pos = 0
    while pos < total_bytes:
        size = min(2 * SAMPLE_RATE // 1000 * rng.randint(*frame_ms), total_bytes - pos)
        sizes.append(size)
        pos += size
    return sizes


async def run_client(
    uri: str, index: int, pcm: bytes, *, frame_ms: tuple[int, int], seed: int, close_timeout: float = 120.0
) -> ClientRun:
    """Stream `pcm` (16 kHz linear16) at real-time pace, then CloseStream; record everything."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    run = ClientRun(index, len(pcm) / (2 * SAMPLE_RATE))
    try:
        async with connect(uri, max_size=None, open_timeout=60, close_timeout=10) as ws:

            async def receive() -> None:
                with contextlib.suppress(ConnectionClosed):
                    async for message in ws:
                        run.messages.append((time.perf_counter(), json.loads(message)))

            receiver = asyncio.create_task(receive())
            started = time.perf_counter()
            pos = 0
            try:
                for size in frame_sizes(len(pcm), frame_ms, seed):
                    chunk = pcm[pos : pos + size]
                    pos += size
                    due = started + pos / (2 * SAMPLE_RATE)  # a frame exists once its last sample does
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    now = time.perf_counter()
                    run.max_lag_s = max(run.max_lag_s, now - due)
                    run.frames.append((pos // 2, now))
                    await ws.send(chunk)
                await ws.send(json.dumps({"type": "CloseStream"}))
            except ConnectionClosed as exc:
                run.error = f"closed while sending: {exc}"
            try:
                await asyncio.wait_for(receiver, close_timeout)
            except TimeoutError:
                run.error = run.error or f"no close within {close_timeout:g} s of CloseStream"
            run.close_code = ws.close_code
    except InvalidStatus as exc:
        run.rejected = True
        run.error = f"handshake refused: HTTP {exc.response.status_code}"
    except (OSError, TimeoutError, ConnectionClosed) as exc:
        run.error = f"{type(exc).__name__}: {exc}"
    return run


# ---- analysis (pure) --------------------------------------------------------------------------------------


@dataclass
class ClientStats:
    """Latencies (seconds) and health counts of one client, from `analyse_client`."""

    partial: list[float] = field(default_factory=list)
    final: list[float] = field(default_factory=list)
    eos: list[float] = field(default_factory=list)
    final_vad: list[float] = field(default_factory=list)
    """Final latency from the VAD's endpoint instead (segment end - tail + endpointing): a diagnostic."""
    words: int = 0
    finals: int = 0
    speech_finals: int = 0
    interims: int = 0
    final_only_words: int = 0
    """Final words no interim result had (at that time): their partial latency is the final's."""
    missing_finals: int = 0
    """SpeechStarted events with no final after them, plus a stream whose last result is interim."""
    missing_metadata: int = 0
    errors: int = 0
    """Error messages, failed connections, refused handshakes and close codes other than 1000."""
    stale_interims: int = 0
    """Interim results for audio that a final already covered (breaks the protocol's invariant)."""
    overlapping_finals: int = 0
    behind: int = 0
    max_lag_s: float = 0.0
    end_lag_s: float = 0.0
    """From sending the last audio (then CloseStream) to receiving the closing Metadata, which follows
    every final: how far behind real time the server ended."""

    @property
    def dropped(self) -> int:
        return self.missing_finals + self.missing_metadata + self.errors

    def add(self, other: ClientStats) -> None:
        for name, value in vars(other).items():
            if isinstance(value, list):
                getattr(self, name).extend(value)
            elif name in ("max_lag_s", "end_lag_s"):
                setattr(self, name, max(getattr(self, name), value))
            else:
                setattr(self, name, getattr(self, name) + value)


def _words(message: dict[str, Any]) -> list[dict[str, Any]]:
    alternatives = message.get("channel", {}).get("alternatives") or [{}]
    words: list[dict[str, Any]] = alternatives[0].get("words") or []
    return words


def analyse_client(run: ClientRun, endpointing_s: float, lag_limit_s: float = LAG_LIMIT_S) -> ClientStats:
    """Latencies and health counts of one client run (see the module docstring for the definitions)."""
    stats = ClientStats(max_lag_s=run.max_lag_s, behind=int(run.max_lag_s > lag_limit_s))
    if run.error is not None or run.rejected or (run.close_code is not None and run.close_code != 1000):
        stats.errors += 1
    if not run.frames:
        return stats
    results = [(t, m) for t, m in run.messages if m.get("type") == "Results"]
    stats.errors += sum(1 for _, m in run.messages if m.get("type") == "Error")
    stats.missing_metadata = int(not any(m.get("type") == "Metadata" for _, m in run.messages))
    # Partial latency: scan results from the previous final on (interims only cover audio after it).
    scan_from = 0
    last_final_end = 0.0
    utterance_end: float | None = None
    for k, (t_final, final) in enumerate(results):
        end = float(final["start"]) + float(final["duration"])
        if not final["is_final"]:
            stats.interims += 1
            if float(final["start"]) < last_final_end - 1e-3:
                stats.stale_interims += 1
            continue
        stats.finals += 1
        if float(final["start"]) < last_final_end - 1e-3:
            stats.overlapping_finals += 1
        last_final_end = max(last_final_end, end)
        for word in _words(final):
            w_start, w_end = float(word["start"]), float(word["end"])
            stats.words += 1
            low = max(w_start, w_end - WORD_TAIL_S) - JITTER_S
            for j in range(scan_from, k + 1):
                t, result = results[j]
                if float(result["start"]) + float(result["duration"]) < w_end - 1e-3:
                    continue
                if any(
                    float(x["start"]) < w_end + JITTER_S and float(x["end"]) > low for x in _words(result)
                ):
                    stats.partial.append(t - run.sent_at(w_end))
                    stats.final_only_words += j == k
                    break
            utterance_end = w_end if utterance_end is None else max(utterance_end, w_end)
        scan_from = k + 1
        if final.get("speech_final"):
            stats.speech_finals += 1
            if utterance_end is not None:
                stats.final.append(t_final - run.sent_at(utterance_end + endpointing_s))
                stats.eos.append(t_final - run.sent_at(utterance_end))
                stats.final_vad.append(t_final - run.sent_at(end - VAD_TAIL_S + endpointing_s))
            utterance_end = None
    # Every SpeechStarted must be followed by a final covering audio after it.
    finals_after: list[tuple[int, float]] = []
    for position, (_, m) in enumerate(run.messages):
        if m.get("type") == "Results" and m.get("is_final"):
            finals_after.append((position, float(m["start"]) + float(m["duration"])))
    for position, (_, m) in enumerate(run.messages):
        if m.get("type") == "SpeechStarted":
            ts = float(m.get("timestamp", 0.0))
            if not any(p > position and end >= ts for p, end in finals_after):
                stats.missing_finals += 1
    if results and not results[-1][1]["is_final"]:
        stats.missing_finals += 1
    closing = [t for t, m in run.messages if m.get("type") == "Metadata"]
    if closing:
        stats.end_lag_s = max(0.0, closing[-1] - run.frames[-1][1])
    return stats


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


# ---- one step ---------------------------------------------------------------------------------------------


@dataclass
class StepResult:
    """One run of N streams: client statistics, server counters and CPU, and the derived figures."""

    streams: int
    wall_s: float
    audio_s: float
    stats: ClientStats
    busy_s: float
    inference_cpu_s: float
    model_audio_s: float
    batches: int
    batch_sum: float
    batch_hist: dict[str, int]
    server_cpu: CpuTimes | None
    client_cpu_s: float
    server_audio_s: float = 0.0
    machine_cpu_s: float = math.nan
    """CPU used by every process on the machine during the step (server, clients and strangers)."""
    errors: list[str] = field(default_factory=list)

    @property
    def other_cpu_s(self) -> float:
        """CPU of processes that are neither the server nor the clients: noise from a shared machine."""
        server = self.server_cpu.total if self.server_cpu is not None else 0.0
        return self.machine_cpu_s - server - self.client_cpu_s

    @property
    def rtf(self) -> float:
        """Engine wall time per second of audio streamed (all streams)."""
        return self.busy_s / self.audio_s if self.audio_s else math.nan

    @property
    def compute_ratio(self) -> float:
        return self.model_audio_s / self.audio_s if self.audio_s else math.nan

    @property
    def overhead(self) -> float:
        """Server CPU / engine CPU (every thread but the event loop's); nan when CPU was not read."""
        if self.server_cpu is None or self.server_cpu.other <= 0:
            return math.nan
        return self.server_cpu.total / self.server_cpu.other

    @property
    def frontend_cpu(self) -> float:
        """Server CPU outside inference (sockets, protocol, decoding, VAD, sessions, results) per second of
        stream audio: what caps the streams one process can feed, whatever the accelerator."""
        if self.server_cpu is None or not self.audio_s:
            return math.nan
        return max(0.0, self.server_cpu.total - self.inference_cpu_s) / self.audio_s

    def held(self, bound_s: float, metric: str = "final") -> bool:
        """Kept up: p95 final latency within `bound_s`, nobody behind, nothing dropped, at least one final.

        `metric` "final" bounds the final latency as defined (from the last word's end + endpointing);
        "vad" bounds it from the VAD's endpoint instead, which leaves out how much later than the model's
        last word the VAD hears speech end (a property of the VAD and the model, not of the load);
        "partial" bounds the partial latency (words seen live) and the final latency both.
        """
        if metric == "partial":
            partial = percentile(self.stats.partial, 95)
            if math.isnan(partial) or partial > bound_s:
                return False
        p95 = percentile(self.stats.final_vad if metric == "vad" else self.stats.final, 95)
        return not math.isnan(p95) and p95 <= bound_s and self.stats.behind == 0 and self.stats.dropped == 0

    def figures(self) -> dict[str, float]:
        s = self.stats
        return {
            "partial_p50": percentile(s.partial, 50),
            "partial_p95": percentile(s.partial, 95),
            "final_p50": percentile(s.final, 50),
            "final_p95": percentile(s.final, 95),
            "eos_p95": percentile(s.eos, 95),
            "overhead": self.overhead,
            "end_lag_max": s.end_lag_s if s.missing_metadata == 0 else math.nan,
            "frontend_cpu": self.frontend_cpu,
        }


def _batch_histogram(before: dict[SpanKey, float], after: dict[SpanKey, float]) -> dict[str, int]:
    """Batches per size range ("1", "2", "3-4", ...) from the streamer_batch_size histogram's buckets."""
    bounds: dict[float, float] = {}
    for (name, labels), value in after.items():
        if name == "streamer_batch_size_bucket":
            le = dict(labels)["le"]
            bound = math.inf if le == "+Inf" else float(le)
            bounds[bound] = bounds.get(bound, 0.0) + value - before.get((name, labels), 0.0)
    out: dict[str, int] = {}
    previous_bound, previous_count = 0.0, 0.0
    for bound in sorted(bounds):
        count = bounds[bound] - previous_count
        low = int(previous_bound) + 1
        label = (
            f">{int(previous_bound)}"
            if math.isinf(bound)
            else (str(low) if low == int(bound) else f"{low}-{int(bound)}")
        )
        if count > 0:
            out[label] = round(count)
        previous_bound, previous_count = bound, bounds[bound]
    return out


@dataclass(frozen=True)
class LoadOptions:
    """How the clients behave (the server's own flags go to `ServerProcess`)."""

    endpointing_ms: int = VadConfig().endpoint_ms or 400
    frame_ms: tuple[int, int] = (20, 100)
    seed: int = 0
    language: str = "en"
    lag_limit_s: float = LAG_LIMIT_S
    clients: str = "lean"
    """`lean` (`lean_clients`: one pacer, prepared frames, JSON parsed after the run; ws:// only) or
    `websockets` (a websockets-library client per stream, as before): the same frames either way."""


async def run_step(target: Target, streams: int, workload: Workload, options: LoadOptions) -> StepResult:
    """Run `streams` clients at once against `target` and measure (see the module docstring)."""
    query = {
        "language": options.language,
        "encoding": "linear16",
        "sample_rate": str(SAMPLE_RATE),
        "channels": "1",
        "interim_results": "true",
        "vad_events": "true",
        "endpointing": str(options.endpointing_ms),
    }
    uri = target.listen_uri(query)
    pcms = [workload.stream(i) for i in range(streams)]
    async with aiohttp.ClientSession() as session:
        if not await wait_ready(session, target):
            raise RuntimeError(f"{target.http}/readyz did not answer 200 within 60 s")
        before = await scrape(session, target)
        cpu_before = read_cpu(target.pid) if target.pid else None
        client_before = time.process_time()
        machine_before = machine_busy()
        started = time.perf_counter()
        seeds = [client_seed(options.seed, i) for i in range(streams)]
        lean = options.clients == "lean" and uri.startswith("ws://")
        if lean:
            # Imported here: lean_clients builds on this module (ClientRun, frame_sizes).
            from streamer.bench.lean_clients import parse_messages, run_lean_clients

            lean_runs = await run_lean_clients(uri, pcms, frame_ms=options.frame_ms, seeds=seeds)
            runs: list[ClientRun] = list(lean_runs)
        else:
            runs = await asyncio.gather(
                *(
                    run_client(uri, i, pcm, frame_ms=options.frame_ms, seed=seed)
                    for i, (pcm, seed) in enumerate(zip(pcms, seeds, strict=True))
                )
            )
        wall = time.perf_counter() - started
        client_cpu = time.process_time() - client_before
        machine_cpu = machine_busy() - machine_before
        cpu = read_cpu(target.pid) - cpu_before if target.pid and cpu_before else None
        after = await scrape(session, target)
    if lean:  # parsed now, after the CPU was read: the run itself did not need the JSON
        for lean_run in lean_runs:
            lean_run.messages = parse_messages(lean_run)

    def delta(name: str) -> float:
        return metric(after, name) - metric(before, name)

    stats = ClientStats()
    for run in runs:
        stats.add(analyse_client(run, options.endpointing_ms / 1000, options.lag_limit_s))
    return StepResult(
        streams=streams,
        wall_s=wall,
        audio_s=sum(r.audio_s for r in runs),
        stats=stats,
        busy_s=delta("streamer_inference_busy_seconds_total") or delta("streamer_inference_seconds_sum"),
        inference_cpu_s=delta("streamer_inference_cpu_seconds_total"),
        model_audio_s=delta("streamer_model_audio_seconds_total"),
        batches=round(delta("streamer_batch_size_count")),
        batch_sum=delta("streamer_batch_size_sum"),
        batch_hist=_batch_histogram(before, after),
        server_cpu=cpu,
        client_cpu_s=client_cpu,
        server_audio_s=delta("streamer_audio_seconds_total"),
        machine_cpu_s=machine_cpu,
        errors=[f"client {r.index}: {r.error}" for r in runs if r.error],
    )


class Hogs:
    """`with Hogs(n):` runs n busy processes (a Python loop each, one core's worth) meanwhile: a machine
    whose CPU another tenant takes, started and stopped by the benchmark itself."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def processes(self) -> list[subprocess.Popen[bytes]]:
        return list(self._procs)

    def start(self) -> None:
        for _ in range(self.count):
            self._procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))

    def stop(self) -> None:
        """Kill them (idempotent)."""
        for proc in self._procs:
            proc.kill()
        for proc in self._procs:
            proc.wait()
        self._procs.clear()

    def __enter__(self) -> Hogs:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- capacity search --------------------------------------------------------------------------------------


@dataclass
class CapacityResult:
    capacity: int
    steps: list[StepResult]

    @property
    def at_capacity(self) -> StepResult | None:
        held = [s for s in self.steps if s.streams == self.capacity]
        return held[-1] if held else None


async def find_capacity(
    target: Target,
    workload: Workload,
    options: LoadOptions,
    *,
    bound_s: float = 1.0,
    max_streams: int = 64,
    quiet: bool = False,
    bound_metric: str = "final",
    min_streams: int = 1,
) -> CapacityResult:
    """Raise N through CAPACITY_STEPS (from `min_streams` on) until a step fails (`StepResult.held`), then
    bisect the gap (down to 0 when the first step fails).

    Returns the largest N that held (0 when none did) and every step run.
    """
    steps: list[StepResult] = []

    async def attempt(n: int) -> bool:
        if not quiet:
            log(f"capacity: {n} stream(s), {workload.seconds:g} s of audio each ...")
        step = await run_step(target, n, workload, options)
        steps.append(step)
        ok = step.held(bound_s, bound_metric)
        if not quiet:
            f = step.figures()
            log(
                f"capacity: {n} stream(s): final_p95={f['final_p95']:.3f} "
                f"vad_final_p95={percentile(step.stats.final_vad, 95):.3f} "
                f"partial_p95={f['partial_p95']:.3f} "
                f"max_lag={step.stats.max_lag_s:.3f} dropped={step.stats.dropped} -> "
                f"{'held' if ok else 'failed'}"
            )
        return ok

    held, failed = 0, None
    for n in (s for s in CAPACITY_STEPS if min_streams <= s <= max_streams):
        if await attempt(n):
            held = n
        else:
            failed = n
            break
    while failed is not None and failed - held > 1:
        middle = (held + failed) // 2
        if await attempt(middle):
            held = middle
        else:
            failed = middle
    return CapacityResult(held, steps)


# ---- profiling --------------------------------------------------------------------------------------------


def py_spy() -> str | None:
    """The py-spy executable (beside this Python, or on PATH), or None."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def summarise_collapsed(path: Path, top: int = 12) -> str:
    """Top functions by own (self) and inclusive samples in a py-spy `--format raw` file, per thread."""
    own: dict[tuple[str, str], int] = {}
    inclusive: dict[tuple[str, str], int] = {}
    per_thread: dict[str, int] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith(("thread", "process")) else "-"
        if len(frames) > 1 and frames[1].startswith("thread"):
            thread = frames[1]
        body = [f for f in frames if not f.startswith(("thread", "process"))]
        if not body:
            continue
        per_thread[thread] = per_thread.get(thread, 0) + count
        key = (thread, body[-1])
        own[key] = own.get(key, 0) + count
        for name in set(body):
            inclusive[(thread, name)] = inclusive.get((thread, name), 0) + count
    lines: list[str] = []
    for thread, total in sorted(per_thread.items(), key=lambda kv: -kv[1]):
        lines.append(f"{thread}: {total} samples")
        mine = sorted(((n, k[1]) for k, n in own.items() if k[0] == thread), reverse=True)[:top]
        lines += [f"  self {n / total:6.1%}  {name}" for n, name in mine]
        incl = sorted(
            (
                (n, k[1])
                for k, n in inclusive.items()
                if k[0] == thread and not any(g in k[1] for g in GENERIC_FRAMES)
            ),
            reverse=True,
        )[:top]
        lines += [f"  incl {n / total:6.1%}  {name}" for n, name in incl]
    return "\n".join(lines)


# ---- output -----------------------------------------------------------------------------------------------


def _num(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.3f}"


def summary_line(step: StepResult | None, capacity: int | None) -> str:
    """The closing `load: ...` line (times in seconds; `capacity=-` when not searched)."""
    f = (
        step.figures()
        if step is not None
        else dict.fromkeys(
            (
                "partial_p50",
                "partial_p95",
                "final_p50",
                "final_p95",
                "eos_p95",
                "overhead",
                "end_lag_max",
                "frontend_cpu",
            ),
            math.nan,
        )
    )
    return (
        f"load: streams={step.streams if step else 0} "
        + " ".join(f"{k}={v:.5f}" if k == "frontend_cpu" else f"{k}={_num(v)}" for k, v in f.items())
        + f" capacity={'-' if capacity is None else capacity}"
    )


def step_table(step: StepResult) -> str:
    """A human-readable table of one step."""
    s = step.stats
    rows = [
        f"streams={step.streams} audio={step.audio_s:.1f} s "
        f"({step.audio_s / max(1, step.streams):.1f} s each) wall={step.wall_s:.1f} s",
        f"{'latency (s)':<22}{'n':>6}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}",
    ]
    for name, values in (
        ("partial (word)", s.partial),
        ("final (endpoint)", s.final),
        ("end of speech", s.eos),
        ("final (VAD endpoint)", s.final_vad),
    ):
        rows.append(
            f"{name:<22}{len(values):>6}{_num(percentile(values, 50)):>9}{_num(percentile(values, 95)):>9}"
            f"{_num(percentile(values, 99)):>9}{_num(max(values, default=math.nan)):>9}"
        )
    mean_batch = step.batch_sum / step.batches if step.batches else math.nan
    rows.append(
        f"engine: rtf={_num(step.rtf)} (busy {step.busy_s:.1f} s / audio {step.audio_s:.1f} s) "
        f"compute_ratio={_num(step.compute_ratio)} inference_thread_cpu={step.inference_cpu_s:.1f} s"
    )
    hist = " ".join(f"{k}:{v}" for k, v in step.batch_hist.items())
    rows.append(f"batches: {step.batches} mean_size={_num(mean_batch)} sizes {hist or '-'}")
    if step.server_cpu is not None:
        c = step.server_cpu
        rows.append(
            f"server cpu: total={c.total:.1f} s ({c.total / step.wall_s:.0%} of one core) "
            f"event_loop_thread={c.main:.1f} s engine_threads={c.other:.1f} s "
            f"overhead(total/engine)={_num(step.overhead)} "
            f"total/inference_thread={_num(c.total / step.inference_cpu_s if step.inference_cpu_s else nan)}"
        )
        rows.append(
            f"frontend cpu: {step.frontend_cpu:.5f} core-s per stream-second (server outside inference); "
            f"load generator: {step.client_cpu_s / step.audio_s if step.audio_s else nan:.5f}"
        )
    else:
        rows.append("server cpu: not measured (remote server)")
    rows.append(
        f"results: words={s.words} (first seen in their final: {s.final_only_words}) finals={s.finals} "
        f"speech_finals={s.speech_finals} interims={s.interims} client_cpu={step.client_cpu_s:.1f} s "
        f"other_processes_cpu={step.other_cpu_s:.1f} s ({step.other_cpu_s / step.wall_s:.0%} of a core)"
    )
    rows.append(
        f"health: dropped={s.dropped} (missing_finals={s.missing_finals} "
        f"missing_metadata={s.missing_metadata} "
        f"errors={s.errors}) behind={s.behind} max_send_lag={s.max_lag_s:.3f} s "
        f"end_lag_max={s.end_lag_s:.3f} s "
        f"stale_interims={s.stale_interims} overlapping_finals={s.overlapping_finals}"
    )
    rows += [f"  {e}" for e in step.errors[:5]]
    return "\n".join(rows)


def capacity_table(result: CapacityResult, bound_s: float, bound_metric: str = "final") -> str:
    rows = [
        f"{'streams':>7}{'partial_p95':>12}{'final_p50':>10}{'final_p95':>10}{'vad_final_p95':>14}{'eos_p95':>9}"
        f"{'rtf':>7}{'batch':>7}{'cpu':>6}{'overhead':>9}{'max_lag':>8}{'dropped':>8}{'noise':>7}  held"
    ]
    for step in sorted(result.steps, key=lambda s: s.streams):
        f = step.figures()
        cpu = step.server_cpu.total / step.wall_s if step.server_cpu else math.nan
        mean_batch = step.batch_sum / step.batches if step.batches else math.nan
        held = "yes" if step.held(bound_s, bound_metric) else "no"
        rows.append(
            f"{step.streams:>7}{_num(f['partial_p95']):>12}{_num(f['final_p50']):>10}{_num(f['final_p95']):>10}"
            f"{_num(percentile(step.stats.final_vad, 95)):>14}{_num(f['eos_p95']):>9}{step.rtf:>7.3f}"
            f"{mean_batch:>7.2f}{cpu:>6.0%}{_num(f['overhead']):>9}{step.stats.max_lag_s:>8.3f}"
            f"{step.stats.dropped:>8}{step.other_cpu_s / step.wall_s:>7.0%}  {held}"
        )
    which = {"vad": "final p95 from the VAD endpoint", "partial": "partial and final p95"}.get(
        bound_metric, "final p95"
    )
    rows.append(f"capacity: {result.capacity} stream(s) ({which} <= {bound_s:g} s, none behind or dropped)")
    rows.append("cpu: the server's, in cores; noise: CPU of other processes on the machine, in cores")
    return "\n".join(rows)


def step_json(step: StepResult) -> dict[str, Any]:
    out = asdict(step)
    out["stats"] = {k: v for k, v in out["stats"].items() if not isinstance(v, list)}
    out["stats"]["dropped"] = step.stats.dropped
    out.update(step.figures(), rtf=step.rtf, compute_ratio=step.compute_ratio)
    return out


# ---- command line -----------------------------------------------------------------------------------------


def server_args(args: argparse.Namespace) -> list[str]:
    """The pass-through flags given on our command line, for `python -m streamer`."""
    out: list[str] = []
    for model in args.model or []:
        out += ["--model", model if "=" in model else f"{args.language}={model}"]
    for flag in ("max_batch", "max_wait_ms", "threads", "dtype", "window_left", "window_hop", "window_right"):
        value = getattr(args, flag)
        if value is not None:
            out += ["--" + flag.replace("_", "-"), str(value)]
    if args.no_final_pass:
        out.append("--no-final-pass")
    for extra in args.server_arg or []:
        out += extra.split()
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m streamer.bench load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--streams", type=int, default=4, help="concurrent streams (default %(default)s)")
    parser.add_argument("--url", help="a running server (http://HOST:PORT); default: start one")
    parser.add_argument(
        "--pid", type=int, help="with --url: the server's pid on this machine, to read its CPU"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with MANIFEST.tsv")
    parser.add_argument("--language", default="en", help="clips of this language (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per stream (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--endpointing-ms",
        type=int,
        default=VadConfig().endpoint_ms,
        help="sent as the endpointing query parameter (default %(default)s, the server's default)",
    )
    parser.add_argument("--find-capacity", action="store_true", help="search the largest N that keeps up")
    parser.add_argument("--bound", type=float, default=1.0, help="capacity: p95 final latency bound, s")
    parser.add_argument(
        "--bound-metric",
        choices=("final", "vad", "partial"),
        default="final",
        help="capacity: bound the final latency as defined (final, default), from the VAD endpoint (vad), "
        "or the partial latency too (partial)",
    )
    parser.add_argument("--max-streams", type=int, default=64, help="capacity: largest N tried")
    parser.add_argument(
        "--min-streams",
        type=int,
        default=1,
        help="capacity: skip the steps below this N (the server's own --max-streams, 64 by default, "
        "caps it too: pass a larger one with --server-arg)",
    )
    parser.add_argument(
        "--sweep",
        help="run these stream counts (e.g. 1,2,4,8) one after another, all of them, and report the largest "
        "that held (same criterion as --find-capacity)",
    )
    parser.add_argument("--json", type=Path, help="write every step's figures to this file")
    parser.add_argument("--server-log", type=Path, help="write the started server's log here")
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy the started server during the (first) step: raw stacks to this file, summary printed",
    )
    parser.add_argument(
        "--hog",
        type=int,
        default=0,
        metavar="N",
        help="run N busy processes (one core each) during the steps, as another tenant would (default 0)",
    )
    parser.add_argument(
        "--clients",
        choices=("lean", "websockets"),
        default="lean",
        help="the load generator's clients: lean (one pacer for all streams, JSON parsed after the run; "
        "ws:// only) or websockets (one websockets-library client per stream, as before 2026-12); the same "
        "frames either way (default %(default)s)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    group = parser.add_argument_group("passed to the started server (its defaults when not given)")
    group.add_argument("--model", action="append", metavar="[LANG=]SPEC", help="e.g. en=fake:tone")
    group.add_argument("--max-batch", type=int)
    group.add_argument("--max-wait-ms", type=float)
    group.add_argument("--threads", type=int)
    group.add_argument("--dtype")
    group.add_argument("--window-left", type=float)
    group.add_argument("--window-hop", type=float)
    group.add_argument("--window-right", type=float)
    group.add_argument("--no-final-pass", action="store_true")
    group.add_argument(
        "--server-arg", action="append", metavar="ARGS", help="more flags, e.g. '--max-busy 1'"
    )
    return parser


async def _main(args: argparse.Namespace) -> int:
    workload = Workload.from_folder(args.data, args.language, args.seconds, args.seed)
    options = LoadOptions(
        endpointing_ms=args.endpointing_ms, seed=args.seed, language=args.language, clients=args.clients
    )
    server: ServerProcess | None = None
    if args.url:
        target = Target(args.url, args.pid)
    else:
        server = ServerProcess(server_args(args), args.server_log)
        if not args.quiet:
            log(f"starting: {' '.join(server.args[1:])}")
        target = Target(await asyncio.to_thread(server.start), None)
        target.pid = server.pid
    profiler: subprocess.Popen[bytes] | None = None
    hogs = Hogs(args.hog)
    try:
        if args.profile is not None:
            exe = py_spy()
            if exe is None or target.pid is None:
                log("--profile: py-spy not found (pip install py-spy) or no server pid; not profiling")
            else:
                duration = int(args.seconds + 5)
                profiler = subprocess.Popen(
                    [
                        exe,
                        "record",
                        "--pid",
                        str(target.pid),
                        "--rate",
                        "100",
                        "--format",
                        "raw",
                        "--threads",
                        "--nonblocking",
                        "--duration",
                        str(duration),
                        "--output",
                        str(args.profile),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
        capacity: int | None = None
        if args.hog and not args.quiet:
            log(f"hog: {args.hog} busy process(es) run during the steps")
        hogs.start()
        if args.sweep:
            counts = [int(n) for n in args.sweep.split(",") if n.strip()]
            steps = []
            for n in counts:
                if not args.quiet:
                    log(f"sweep: {n} stream(s), about {args.seconds:g} s of audio each ...")
                steps.append(await run_step(target, n, workload, options))
            held = [s for s in steps if s.held(args.bound, args.bound_metric)]
            capacity = max((s.streams for s in held), default=0)
            print(capacity_table(CapacityResult(capacity, steps), args.bound, args.bound_metric))
            shown = max(held, key=lambda step: step.streams, default=steps[0] if steps else None)
            if shown is not None:
                print(step_table(shown))
        elif args.find_capacity:
            result = await find_capacity(
                target,
                workload,
                options,
                bound_s=args.bound,
                max_streams=args.max_streams,
                min_streams=args.min_streams,
                quiet=args.quiet,
                bound_metric=args.bound_metric,
            )
            steps = result.steps
            capacity = result.capacity
            print(capacity_table(result, args.bound, args.bound_metric))
            # The step at capacity; when not even one stream held, the one-stream step, to show why.
            shown = result.at_capacity or min(steps, key=lambda step: step.streams, default=None)
            if shown is not None:
                print(step_table(shown))
        else:
            if not args.quiet:
                log(f"load: {args.streams} stream(s), about {args.seconds:g} s of audio each, real time")
            steps = [await run_step(target, args.streams, workload, options)]
            shown = steps[0]
            print(step_table(shown))
        hogs.stop()
        if profiler is not None and args.profile is not None:
            profiler.wait(timeout=120)
            if args.profile.exists():
                print(f"profile of the server (py-spy, {args.profile}):")
                print(summarise_collapsed(args.profile))
        if args.json is not None:
            args.json.write_text(json.dumps([step_json(s) for s in steps], indent=1, default=str))
        print(summary_line(shown, capacity))
        return 0
    finally:
        hogs.stop()
        if profiler is not None and profiler.poll() is None:
            profiler.terminate()
        if server is not None:
            status = server.stop()
            if status not in (0, None) and not args.quiet:
                log(f"server exited with {status}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """`python -m streamer.bench load [flags]`; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.streams < 1:
        log("error: --streams must be >= 1")
        return 2
    previous = signal.signal(signal.SIGTERM, _interrupt)  # so that `finally` stops the server we started
    try:
        return asyncio.run(_main(args))
    except (RuntimeError, ValueError, OSError) as exc:
        log(f"error: {exc}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
