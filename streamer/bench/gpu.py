"""GPU capacity check: what model calls cost by batch size, how many streams that predicts, and a real run.

    python -m streamer.bench gpu                          # on a CUDA machine: xlsr-53 and xls-r-1b shapes
    python -m streamer.bench gpu --device cpu --quick     # tiny shapes on a CPU, in seconds (what CI runs)
    python -m streamer.bench gpu --models large --dtypes bfloat16 --seconds 60 --json gpu.json

Needs no network: the models are random-weight copies of the published shapes of wav2vec2-large-xlsr-53
(`large`) and wav2vec2-xls-r-1b (`1b`), built on the device (`streamer.bench.models`; speed does not depend
on the weights), and the speech is the eval data in --data. Three steps, each with progress on stderr and
a table on stdout:

1. Cost table, per model and dtype (float16 and bfloat16 on CUDA, float32 on a CPU): seconds per call
   through the server's own engine (`TransformersCTCEngine.forward`: normalisation, copies, model,
   log-softmax) for batches of 1, 2, 4, ... 256 partial windows of the server's default window plan and
   of final passes of 2, 5, 10 and 15 s. A shape's batches grow until a larger one stops paying (10% less
   per window, twice in a row), memory runs out (recorded, not fatal) or a call takes over --max-call
   seconds. On CUDA also: peak memory per call, and the raw model on the partial shape eager and replayed
   from a CUDA graph (the launch overhead a graph would save). Then the recommended `--max-batch`: the
   smallest size past which larger batches make a window less than 10% cheaper
   (`streamer.engine.batching.pick_max_batch`, also what `--max-batch auto` picks when the server
   starts on a GPU).
2. Predicted capacity: `streamer.bench.sim.simulate_load` streams N clients of the load benchmark (the
   same clips, order, pauses and frame sizes as its client i) through the real `Session` on one
   simulated accelerator whose calls last what the cost table says (interpolated in batch size and
   length; batches formed as the server's batcher forms them, split into length groups as the engine
   splits them). Capacity: the largest N whose final p95 <= --bound-final (0.5 s) and, with interim
   results, whose partial p95 <= --bound-partial (1 s); doubling, then bisection to --precision; with
   interim results on and off, up to --max-streams.
3. Real run: the first model, in the dtype predicted to hold the most streams, saved to a temporary
   folder and served by `python -m streamer` on the device with the recommended batch size and
   `--workers` from --server-workers (auto: enough processes to feed that many streams, each loading its
   own copy of the model; start NVIDIA MPS first so that their kernels overlap); the load benchmark's
   clients stream at the predicted count (--streams to choose another) for --seconds, and the measured
   latencies are printed beside the simulator's for that count. The simulator batches all streams
   together, the workers each their own: a gap between the two shows what separate batches cost.

Final latency is measured from the VAD's endpoint by default (`--final-from vad`, the load benchmark's
`--bound-metric vad`): a random-weight model, and the simulator's model-free stand-in, put their last word
wherever they like, so latency from the last word's end would measure them rather than the load. The
simulator prices model calls only: the server's own CPU per stream, which caps the streams one process
can feed whatever the GPU holds, is measured in the real run (`frontend_cpu`).

The last line:
`gpu: device=.. model=.. dtype=.. partial_b1_ms=.. partial_best_ms=.. best_batch=.. graph_speedup=..
peak_mem_gib=.. predicted_streams_interim=.. predicted_streams_final_only=.. sim_max_streams=.. streams=..
predicted_final_p95=.. predicted_partial_p95=.. measured_final_p95=.. measured_partial_p95=..
measured_finals=.. frontend_cpu=.. ok=..` (README: "GPU capacity check").
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from streamer import SAMPLE_RATE
from streamer.audio import AudioDecoder, AudioFormat
from streamer.bench.models import ARCHITECTURES, make_processor, random_model
from streamer.ctc import FloatArray
from streamer.engine.batching import BATCH_SIZES, length_groups, pick_max_batch, time_batch_sizes
from streamer.errors import ConfigError, StreamerError
from streamer.session import StreamingConfig
from streamer.vad import VadConfig
from streamer.windows import partial_window_samples

ALIASES = {"large": "xlsr-53", "1b": "xls-r-1b"}
FINAL_SECONDS = (2.0, 5.0, 10.0, 15.0)
QUICK_SIZES = (1, 2, 4)
GRAPH_SIZES = (1, 4, 16, 64)
"""Batch sizes timed with and without a CUDA graph (and the recommended one)."""
GIB = 1024**3
FRONTEND_CPU_ESTIMATE = 0.003
"""Server CPU outside inference per stream-second, core-s, for choosing the real run's workers: what
one server process cost per stream at capacity on a 2-core test machine (0.0022-0.0027, README)."""
WORKER_LOAD = 0.7
"""How much of a core a worker's event loop is planned to use at the real run's stream count."""
NAN = math.nan


def log(message: str) -> None:
    print(f"gpu: {message}", file=sys.stderr, flush=True)


# ---- the cost table ---------------------------------------------------------------------------------------


@dataclass
class Row:
    """Seconds per call by batch size for one input length (samples), with each call's peak memory."""

    samples: int
    seconds: dict[int, float]
    peak_gib: dict[int, float] = field(default_factory=dict)
    stopped: str = "sizes"

    def at(self, size: int) -> float:
        """Seconds for a call of `size` windows: linear between timed sizes, proportional beyond them."""
        sizes = sorted(self.seconds)
        if size <= sizes[0]:
            return self.seconds[sizes[0]]
        if size >= sizes[-1]:
            return self.seconds[sizes[-1]] * size / sizes[-1]
        upper = next(b for b in sizes if b >= size)
        lower = max(b for b in sizes if b <= size)
        if upper == lower:
            return self.seconds[lower]
        share = (size - lower) / (upper - lower)
        return self.seconds[lower] + share * (self.seconds[upper] - self.seconds[lower])


@dataclass
class GraphTiming:
    """The raw model on the partial shape: eager, and replayed from a captured CUDA graph."""

    size: int
    eager_s: float
    graph_s: float = NAN
    error: str = ""

    @property
    def speedup(self) -> float:
        return self.eager_s / self.graph_s if self.graph_s > 0 else NAN


@dataclass
class CostTable:
    """What one model costs on one device in one dtype; `batch_seconds` prices a batch of any lengths."""

    model: str
    dtype: str
    device: str
    padded: bool
    """The engine pads mixed lengths into one call (else only equal lengths share one)."""
    weights_gib: float
    partial: Row
    finals: list[Row]
    graphs: list[GraphTiming] = field(default_factory=list)

    @property
    def best_batch(self) -> int:
        return pick_max_batch(self.partial.seconds)

    @property
    def peak_gib(self) -> float:
        peaks = [p for row in (self.partial, *self.finals) for p in row.peak_gib.values()]
        return max(peaks, default=NAN)

    def call_seconds(self, samples: int, size: int) -> float:
        """One call of `size` windows of `samples` samples: linear between the timed lengths, the
        shortest one's cost below them, proportional to the length beyond the longest."""
        rows = sorted((self.partial, *self.finals), key=lambda r: r.samples)
        if samples <= rows[0].samples:
            return rows[0].at(size)
        if samples >= rows[-1].samples:
            return rows[-1].at(size) * samples / rows[-1].samples
        upper = next(r for r in rows if r.samples >= samples)
        lower = max((r for r in rows if r.samples <= samples), key=lambda r: r.samples)
        if upper.samples == lower.samples:
            return lower.at(size)
        share = (samples - lower.samples) / (upper.samples - lower.samples)
        return lower.at(size) + share * (upper.at(size) - lower.at(size))

    def batch_seconds(self, lengths: Sequence[int], max_batch: int) -> float:
        """A batch as the engine runs it: split into length groups, one call per group."""
        groups = length_groups(lengths, max_batch, padded=self.padded)
        return sum(self.call_seconds(max(lengths[i] for i in g), len(g)) for g in groups)


def _best_time(
    call: Callable[[], object],
    repeats: int,
    sync: Callable[[], None],
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """The fastest of `repeats` timed calls: what a call costs when nothing else gets in its way (the
    slower ones measure whoever else used the machine meanwhile)."""
    best = math.inf
    for _ in range(repeats):
        sync()
        started = clock()
        call()
        sync()
        best = min(best, clock() - started)
    return best


def measure_table(
    name: str,
    dtype: str,
    device: str,
    *,
    sizes: Sequence[int],
    final_seconds: Sequence[float],
    repeats: int,
    max_call_s: float,
    graphs: bool,
) -> CostTable:
    """Build model `name` on `device` in `dtype` and time it through the engine (see the module docstring)."""
    import torch

    from streamer.engine.batching import AUTO_BATCH_LIMIT
    from streamer.engine.transformers_ctc import (
        TransformersCTCEngine,
        out_of_memory,
        resolve_device,
        resolve_dtype,
    )

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    cuda = torch_device.type == "cuda"
    if not cuda:
        torch.set_flush_denormal(True)  # as the engine does on a CPU: the server's speed, not denormals'

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(torch_device)

    # On a CPU with one torch thread all of a call's work is this thread's: its CPU time is what the call
    # costs, however busy the machine (wall time otherwise: other threads, or a GPU, do the work).
    clock = time.thread_time if not cuda and torch.get_num_threads() == 1 else time.perf_counter
    arch = ARCHITECTURES[name]
    log(f"{name}/{dtype}: building random weights ({arch.layers} layers, hidden {arch.hidden}) on {device}")
    model = random_model(arch, device=str(torch_device)).to(torch_dtype)
    sync()
    weights_gib = torch.cuda.memory_allocated(torch_device) / GIB if cuda else NAN
    with tempfile.TemporaryDirectory(prefix="streamer-gpu-vocab-") as tmp:
        processor = make_processor(Path(tmp))
    engine = TransformersCTCEngine(
        model=model,
        tokenizer=processor.tokenizer,
        feature_extractor=processor.feature_extractor,
        device=torch_device,
        dtype=torch_dtype,
        name=f"{name}/{dtype}",
        max_batch=AUTO_BATCH_LIMIT,
    )
    rng = np.random.default_rng(0)

    def row(samples: int, what: str) -> Row:
        audio = (0.05 * rng.standard_normal(samples)).astype(np.float32)
        peaks: dict[int, float] = {}

        def run(size: int) -> float | None:
            windows = [audio] * size
            try:
                if cuda:
                    torch.cuda.reset_peak_memory_stats(torch_device)
                engine.forward(windows)  # the first call of a shape pays for kernel selection
                took = _best_time(lambda: engine.forward(windows), repeats, sync, clock)
            except Exception as exc:  # EngineError around torch's own
                if not out_of_memory(exc):
                    raise
                if cuda:
                    torch.cuda.empty_cache()
                log(f"{name}/{dtype}: {what}: a batch of {size} does not fit in memory")
                return None
            if cuda:
                peaks[size] = torch.cuda.max_memory_allocated(torch_device) / GIB
            return took

        times = time_batch_sizes(run, sizes, max_call_s=max_call_s)
        if not times.seconds:
            raise RuntimeError(f"{name}/{dtype}: not even one {what} fits on {device}")
        log(
            f"{name}/{dtype}: {what}: "
            + ", ".join(f"b{b} {1000 * t:.2f} ms" for b, t in times.seconds.items())
            + f" (stopped: {times.stopped})"
        )
        return Row(samples, times.seconds, peaks, times.stopped)

    try:
        window = partial_window_samples(
            StreamingConfig().partial_plan, engine.frame_samples, engine.receptive_field
        )
        partial = row(window, f"partial window {window / SAMPLE_RATE:.3f} s")
        finals = [row(round(s * SAMPLE_RATE), f"final pass {s:g} s") for s in final_seconds]
        table = CostTable(name, dtype, str(torch_device), engine.pads_batches, weights_gib, partial, finals)
        if graphs and cuda:
            wanted = sorted({*(b for b in GRAPH_SIZES if b in partial.seconds), table.best_batch})
            table.graphs = [
                _graph_timing(model, window, b, torch_dtype, torch_device, repeats) for b in wanted
            ]
            log(
                f"{name}/{dtype}: CUDA graph, partial shape: "
                + ", ".join(
                    f"b{g.size} {1000 * g.eager_s:.2f} -> {1000 * g.graph_s:.2f} ms"
                    if not g.error
                    else g.error
                    for g in table.graphs
                )
            )
        return table
    finally:
        engine.close()
        model = None  # the last reference: its memory goes back before the next model is built
        if cuda:
            torch.cuda.empty_cache()


def _graph_timing(model: Any, samples: int, size: int, dtype: Any, device: Any, repeats: int) -> GraphTiming:
    """The raw model on `size` windows of `samples`: eager, then captured once and replayed."""
    import torch

    x = (0.05 * torch.randn(size, samples, device=device)).to(dtype)

    def sync() -> None:
        torch.cuda.synchronize(device)

    graph: Any = None
    with torch.no_grad():
        model(x)
        timing = GraphTiming(size, _best_time(lambda: model(x), max(repeats, 5), sync))
        try:
            # Capture on a side stream after a few warm-up calls there, as torch.cuda.graph requires.
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(3):
                    model(x)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                model(x)
            graph.replay()
            timing.graph_s = _best_time(graph.replay, max(repeats, 5), sync)
        except Exception as exc:  # some builds or ops cannot be captured: report, go on
            timing.error = f"b{size}: no graph ({type(exc).__name__}: {str(exc)[:80]})"
        finally:
            del graph
            torch.cuda.empty_cache()
    return timing


# ---- predicted capacity -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimSpec:
    """What every simulation shares: the streams and the bounds."""

    data: Path
    language: str
    seconds: float
    seed: int
    max_streams: int
    precision: float
    bound_final: float
    bound_partial: float
    final_from: str


@dataclass
class SimStep:
    """One simulated count: p95 latencies (s), mean batch, accelerator busy time per stream second."""

    streams: int
    final_p95: float
    partial_p95: float
    mean_batch: float
    busy: float
    speech_finals: int
    dropped: int
    held: bool


@dataclass
class Prediction:
    """A capacity search of one model, dtype and interim setting, with every step it simulated."""

    model: str
    dtype: str
    interim: bool
    max_batch: int
    capacity: int
    capped: bool
    """Held at --max-streams: the capacity is at least that."""
    steps: list[SimStep]

    def step(self, streams: int) -> SimStep | None:
        return next((s for s in self.steps if s.streams == streams), None)


def search_capacity(held: Callable[[int], bool], max_n: int, precision: float) -> tuple[int, bool]:
    """The largest n in 1..max_n for which `held(n)` (assumed to fail from some n on): n doubles from 1
    until it fails, then the gap is bisected until it is within `precision` of the answer (or 1).
    Returns (n, capped): capped when `max_n` itself held; n is 0 when 1 failed."""
    good, bad = 0, None
    n = 1
    while bad is None:
        if held(n):
            good = n
            if n >= max_n:
                return good, True
            n = min(2 * n, max_n)
        else:
            bad = n
    while bad - good > max(1.0, precision * good):
        middle = (good + bad) // 2
        if held(middle):
            good = middle
        else:
            bad = middle
    return good, False


def _streams(spec: SimSpec, count: int) -> list[FloatArray]:
    """The audio of the load benchmark's clients 0..count-1, decoded as the server decodes it."""
    from streamer.bench.load import Workload

    workload = Workload.from_folder(spec.data, spec.language, spec.seconds, spec.seed)
    return [AudioDecoder(AudioFormat()).decode(workload.stream(i))[0] for i in range(count)]


def simulate_step(
    table: CostTable, max_batch: int, interim: bool, spec: SimSpec, audios: list[FloatArray]
) -> SimStep:
    """`len(audios)` streams on one accelerator priced by `table` (see the module docstring)."""
    from streamer.bench.load import percentile
    from streamer.bench.sim import Core, OurSystem, simulate_load
    from streamer.engine.fake import ToneEngine

    core = Core(lambda _priority, lengths: table.batch_seconds(lengths, max_batch), max_batch)
    stand_in = ToneEngine()
    config = StreamingConfig(interim_results=interim)
    result = simulate_load(
        [OurSystem(stand_in, core, config) for _ in audios],
        core,
        audios,
        seed=spec.seed,
        endpointing_s=(VadConfig().endpoint_ms or 0) / 1000,
    )
    stats = result.stats
    final = percentile(stats.final_vad if spec.final_from == "vad" else stats.final, 95)
    partial = percentile(stats.partial, 95)
    held = (
        final <= spec.bound_final
        and (not interim or partial <= spec.bound_partial)
        and stats.dropped == 0
        and stats.speech_finals > 0
    )
    return SimStep(
        len(audios),
        final,
        partial,
        result.mean_batch,
        result.busy_fraction,
        stats.speech_finals,
        stats.dropped,
        held,
    )


def predict(table: CostTable, max_batch: int, interim: bool, spec: SimSpec) -> Prediction:
    """Capacity by `search_capacity` over simulated steps (see the module docstring)."""
    audios: list[FloatArray] = []
    steps: list[SimStep] = []

    def held(n: int) -> bool:
        if n > len(audios):  # made as needed: 512 streams of 20 s take most of a gigabyte
            audios[:] = _streams(spec, n)
        step = simulate_step(table, max_batch, interim, spec, audios[:n])
        steps.append(step)
        return step.held

    capacity, capped = search_capacity(held, spec.max_streams, spec.precision)
    steps.sort(key=lambda s: s.streams)
    return Prediction(table.model, table.dtype, interim, max_batch, capacity, capped, steps)


def _predict_task(args: tuple[CostTable, int, bool, SimSpec]) -> Prediction:
    return predict(*args)


def predict_all(tasks: list[tuple[CostTable, int, bool, SimSpec]], workers: int) -> list[Prediction]:
    """`predict` for every task, in parallel processes when there are cores for it (the simulator is
    single-threaded Python; a GPU machine has cores to spare while it waits)."""
    if workers <= 1 or len(tasks) <= 1:
        return [_predict_task(t) for t in tasks]
    import multiprocessing

    # spawn: the parent holds a CUDA context and torch's threads, which a forked child must not inherit.
    with ProcessPoolExecutor(
        min(workers, len(tasks)), mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        return list(pool.map(_predict_task, tasks))


# ---- the real run -----------------------------------------------------------------------------------------


def save_model(name: str, dtype: str, device: str, folder: Path) -> None:
    """A random-weight checkpoint of `name` in `dtype` (model + processor) in `folder`, for the server."""
    import torch
    import transformers

    from streamer.engine.transformers_ctc import resolve_device, resolve_dtype

    torch_device = resolve_device(device)
    model = random_model(ARCHITECTURES[name], device=str(torch_device)).to(resolve_dtype(dtype, torch_device))
    transformers.utils.logging.disable_progress_bar()  # a bar per shard on stderr says nothing here
    model.to("cpu").save_pretrained(folder)
    make_processor(folder).save_pretrained(folder)
    del model
    if torch_device.type == "cuda":
        torch.cuda.empty_cache()


async def real_run(
    folder: Path,
    *,
    device: str,
    dtype: str,
    max_batch: int,
    streams: int,
    seconds: float,
    data: Path,
    language: str,
    seed: int,
    threads: int | None = None,
    log_path: Path | None = None,
    workers: int = 1,
) -> Any:
    """Serve the model in `folder` with `python -m streamer --workers workers` and run one load step of
    `streams` clients; returns the load benchmark's `StepResult`."""
    from streamer.bench.load import LoadOptions, ServerProcess, Target, Workload, run_step

    workload = Workload.from_folder(data, language, seconds, seed)
    args = [
        "--model",
        f"{language}={folder}",
        "--device",
        device,
        "--dtype",
        dtype,
        "--max-batch",
        str(max_batch),
        "--max-streams",
        str(streams + 8),
        "--workers",
        str(workers),
        *(["--threads", str(threads)] if threads is not None else []),
    ]
    server = ServerProcess(args, log_path)
    log(f"real run: starting python -m streamer {' '.join(args)}")
    url = await asyncio.to_thread(server.start)
    try:
        log(f"real run: {streams} stream(s), about {seconds:g} s of audio each, real time")
        return await run_step(
            Target(url, server.pid), streams, workload, LoadOptions(seed=seed, language=language)
        )
    finally:
        server.stop()


# ---- output -----------------------------------------------------------------------------------------------


def _num(value: float, digits: int = 3) -> str:
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"


def cost_report(table: CostTable) -> str:
    """The cost table of one model and dtype, in milliseconds."""
    sizes = sorted({b for row in (table.partial, *table.finals) for b in row.seconds})
    memory = "" if math.isnan(table.weights_gib) else f", weights {table.weights_gib:.2f} GiB"
    lines = [
        f"{table.model}/{table.dtype} on {table.device} ({'padded' if table.padded else 'equal-length'} "
        f"batches{memory}): ms per call by batch size",
        f"{'shape':<22}" + "".join(f"{'b' + str(b):>9}" for b in sizes) + "  stopped",
    ]
    for label, row in [("partial", table.partial)] + [("final", r) for r in table.finals]:
        name = f"{label} {row.samples / SAMPLE_RATE:.2f} s"
        lines.append(
            f"{name:<22}"
            + "".join(f"{1000 * row.seconds[b]:>9.2f}" if b in row.seconds else f"{'-':>9}" for b in sizes)
            + f"  {row.stopped}"
        )
        lines.append(
            f"{'  per window':<22}"
            + "".join(
                f"{1000 * row.seconds[b] / b:>9.3f}" if b in row.seconds else f"{'-':>9}" for b in sizes
            )
        )
        if row.peak_gib:
            lines.append(
                f"{'  peak GiB':<22}"
                + "".join(f"{row.peak_gib[b]:>9.2f}" if b in row.peak_gib else f"{'-':>9}" for b in sizes)
            )
    if table.graphs:
        lines.append(
            "CUDA graph, raw model on the partial shape (eager -> replay): "
            + ", ".join(
                g.error or f"b{g.size} {1000 * g.eager_s:.2f} -> {1000 * g.graph_s:.2f} ms ({g.speedup:.2f}x)"
                for g in table.graphs
            )
        )
    else:
        lines.append("CUDA graph: n/a (not on CUDA)")
    best = table.best_batch
    lines.append(
        f"recommended: --max-batch {best} ({1000 * table.partial.seconds[best] / best:.3f} ms per partial "
        f"window, against {1000 * table.partial.seconds[min(table.partial.seconds)]:.3f} ms alone)"
    )
    return "\n".join(lines)


def prediction_report(predictions: list[Prediction], spec: SimSpec) -> str:
    lines = [
        f"{'model':<10}{'dtype':<10}{'max_batch':>10}{'interim':>8}{'capacity':>10}"
        f"{'final_p95':>11}{'partial_p95':>12}{'mean_batch':>11}{'busy':>7}  steps (streams:held)"
    ]
    for p in predictions:
        at = p.step(p.capacity)
        lines.append(
            f"{p.model:<10}{p.dtype:<10}{p.max_batch:>10}{'on' if p.interim else 'off':>8}"
            f"{str(p.capacity) + ('+' if p.capped else ''):>10}"
            f"{_num(at.final_p95 if at else NAN):>11}{_num(at.partial_p95 if at and p.interim else NAN):>12}"
            f"{_num(at.mean_batch if at else NAN, 2):>11}{_num(at.busy if at else NAN, 2):>7}  "
            + " ".join(f"{s.streams}:{'y' if s.held else 'n'}" for s in p.steps)
        )
    origin = "the VAD endpoint" if spec.final_from == "vad" else "the last word"
    lines.append(
        f"capacity: largest N with final p95 (from {origin}) <= {spec.bound_final:g} s and, interim on, "
        f"partial p95 <= {spec.bound_partial:g} s; "
        f"{spec.seconds:g} s streams, + = held at --max-streams {spec.max_streams}; "
        "busy = accelerator busy time per second"
    )
    return "\n".join(lines)


@dataclass
class RealRun:
    """The real server's step (the load benchmark's figures) beside the simulator's on the same streams."""

    streams: int
    max_batch: int
    final_p95: float
    partial_p95: float
    speech_finals: int
    dropped: int
    behind: int
    mean_batch: float
    frontend_cpu: float
    held: bool
    predicted: SimStep
    """The simulator on the same streams (count and length)."""
    step: dict[str, Any]
    workers: int = 1
    """The server's worker processes (`--workers`)."""


def summary_line(fields: dict[str, object]) -> str:
    """`gpu: key=value ...` (floats with 3 decimals, nan where not measured)."""

    def text(value: object) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float):
            return _num(value)
        return str(value)

    return "gpu: " + " ".join(f"{k}={text(v)}" for k, v in fields.items())


# ---- command line -----------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from streamer.bench.load import DEFAULT_DATA

    parser = argparse.ArgumentParser(
        prog="python -m streamer.bench gpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="tiny model, few sizes, short streams (CI)")
    parser.add_argument(
        "--models",
        help=f"comma-separated: large (xlsr-53), 1b (xls-r-1b) or any of {','.join(ARCHITECTURES)} "
        "(default large,1b; --quick: tiny)",
    )
    parser.add_argument(
        "--dtypes", help="comma-separated (default float16,bfloat16 on CUDA, float32 on a CPU)"
    )
    parser.add_argument(
        "--max-batch",
        default="auto",
        help="batch size for the simulator and the real run: auto (the cost table's recommendation) or N",
    )
    parser.add_argument(
        "--repeats", type=int, help="timed calls per batch size, fastest kept (default 3; --quick 2)"
    )
    parser.add_argument(
        "--max-call", type=float, default=2.0, help="stop growing a shape's batch after a call this slow, s"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with MANIFEST.tsv")
    parser.add_argument("--language", default="en")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sim-seconds", type=float, help="audio per simulated stream, s (default 15; --quick 8)"
    )
    parser.add_argument("--max-streams", type=int, help="largest N simulated (default 512; --quick 16)")
    parser.add_argument("--precision", type=float, default=0.05, help="capacity search: relative gap")
    parser.add_argument("--bound-final", type=float, default=0.5, help="final p95 bound, s")
    parser.add_argument("--bound-partial", type=float, default=1.0, help="partial p95 bound, s (interim on)")
    parser.add_argument(
        "--final-from",
        choices=("vad", "word"),
        default="vad",
        help="final latency from the VAD's endpoint (default) or the last word's end + endpointing",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads, here and in the real run's server (--quick on a CPU: 1)",
    )
    parser.add_argument("--workers", type=int, help="processes for the simulations (default: cores - 1)")
    parser.add_argument("--skip-server", action="store_true", help="no real run")
    parser.add_argument(
        "--streams", type=int, help="real run: streams (default: the prediction; --quick <= 2)"
    )
    parser.add_argument("--seconds", type=float, help="real run: audio per stream, s (default 30; --quick 6)")
    parser.add_argument(
        "--server-workers",
        default="auto",
        help="real run: the server's --workers, or auto: enough processes to feed the streams at "
        f"{FRONTEND_CPU_ESTIMATE:g} core-s of CPU per stream-second, {WORKER_LOAD:g} core each, leaving "
        "two cores to the load generator (default %(default)s)",
    )
    parser.add_argument("--server-log", type=Path, help="real run: write the server's log here")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    return parser


def _models(text: str) -> list[str]:
    names = [ALIASES.get(n.strip(), n.strip()) for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ARCHITECTURES]
    if unknown:
        raise ConfigError(
            f"--models: unknown {', '.join(unknown)}; use large, 1b or {', '.join(ARCHITECTURES)}"
        )
    return names


def _device_line(device: str, threads: int | None) -> tuple[str, str]:
    """(resolved device, a line describing it); sets torch's CPU threads (None: torch's choice)."""
    import torch

    from streamer.engine.transformers_ctc import resolve_device

    resolved = resolve_device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    if resolved.type == "cuda":
        props = torch.cuda.get_device_properties(resolved)
        what = f"{props.name}, {props.total_memory / GIB:.0f} GiB, CUDA {torch.version.cuda}"
    else:
        what = f"{os.cpu_count()} cores, torch threads: {torch.get_num_threads()}"
    return str(resolved), f"device: {resolved} ({what}); torch {torch.__version__}"


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    quick = args.quick
    # --quick on a CPU: one torch thread. The tiny model gains nothing from more, and on a busy machine
    # (CI) every call would wait for whichever of torch's threads the scheduler left out.
    from streamer.engine.transformers_ctc import resolve_device

    on_cpu = resolve_device(args.device).type == "cpu"
    threads = args.threads or (1 if quick and on_cpu else None)
    device, device_text = _device_line(args.device, threads)
    cuda = device.startswith("cuda")
    models = _models(args.models or ("tiny" if quick else "large,1b"))
    dtypes = [
        d.strip()
        for d in (args.dtypes or ("float16,bfloat16" if cuda else "float32")).split(",")
        if d.strip()
    ]
    repeats = args.repeats or (2 if quick else 3)
    spec = SimSpec(
        args.data,
        args.language,
        args.sim_seconds or (8.0 if quick else 15.0),
        args.seed,
        args.max_streams or (16 if quick else 512),
        args.precision,
        args.bound_final,
        args.bound_partial,
        args.final_from,
    )
    if not (spec.data / "MANIFEST.tsv").is_file():
        raise ConfigError(f"no speech: {spec.data}/MANIFEST.tsv not found (--data or STREAMER_EVAL_DATA)")
    print(device_text)
    if not cuda and not quick:
        log("no CUDA device: timing the CPU (slow for these models); --quick checks the command in seconds")

    # 1. cost tables
    tables = [
        measure_table(
            name,
            dtype,
            device,
            sizes=QUICK_SIZES if quick else BATCH_SIZES,
            final_seconds=FINAL_SECONDS[:1] if quick else FINAL_SECONDS,
            repeats=repeats,
            max_call_s=args.max_call,
            graphs=True,
        )
        for name in models
        for dtype in dtypes
    ]
    for table in tables:
        print(cost_report(table))
    log(f"cost tables done after {time.perf_counter() - started:.0f} s")

    # 2. predictions
    def batch_for(table: CostTable) -> int:
        return table.best_batch if args.max_batch == "auto" else int(args.max_batch)

    tasks = [(t, batch_for(t), interim, spec) for t in tables for interim in (True, False)]
    workers = args.workers or max(1, (os.cpu_count() or 1) - 1)
    log(f"simulating {len(tasks)} capacity searches on {min(workers, len(tasks))} process(es)")
    predictions = predict_all(tasks, workers)
    print(prediction_report(predictions, spec))
    log(f"predictions done after {time.perf_counter() - started:.0f} s")

    # 3. the real run: the first model, in its dtype predicted to hold the most streams with interim results
    head_model = models[0]
    interim = {(p.model, p.dtype): p for p in predictions if p.interim}
    final_only = {(p.model, p.dtype): p for p in predictions if not p.interim}
    head_dtype = max(dtypes, key=lambda d: interim[(head_model, d)].capacity)
    head = next(t for t in tables if t.model == head_model and t.dtype == head_dtype)
    head_prediction = interim[(head_model, head_dtype)]
    max_batch = batch_for(head)
    streams = args.streams or max(1, min(head_prediction.capacity, 2) if quick else head_prediction.capacity)
    real: RealRun | None = None
    if not args.skip_server:
        seconds = args.seconds or (6.0 if quick else 30.0)
        # The simulator once more, on exactly the real run's streams, for a like-for-like comparison.
        log(f"simulating the real run: {streams} stream(s) of {seconds:g} s")
        same = replace(spec, seconds=seconds)
        expected = simulate_step(head, max_batch, True, same, _streams(same, streams))
        server_workers = (
            auto_server_workers(streams, os.cpu_count() or 1)
            if args.server_workers == "auto"
            else int(args.server_workers)
        )
        real = _real(args, head, max_batch, streams, seconds, device, threads, expected, server_workers)
        print(_real_report(real))
    log(f"done after {time.perf_counter() - started:.0f} s")

    at = real.predicted if real else head_prediction.step(head_prediction.capacity)
    graph = next((g for g in head.graphs if g.size == 1 and not g.error), None)
    best = head.best_batch
    ok = head_prediction.capacity >= 1 and (real is None or real.held)
    fields: dict[str, object] = {
        "device": device,
        "model": head_model,
        "dtype": head_dtype,
        "partial_b1_ms": 1000 * head.partial.seconds[min(head.partial.seconds)],
        "partial_best_ms": 1000 * head.partial.seconds[best] / best,
        "best_batch": best,
        "graph_speedup": graph.speedup if graph else NAN,
        "peak_mem_gib": head.peak_gib,
        "predicted_streams_interim": head_prediction.capacity,
        "predicted_streams_final_only": final_only[(head_model, head_dtype)].capacity,
        "sim_max_streams": spec.max_streams,
        "streams": real.streams if real else 0,
        "predicted_final_p95": at.final_p95 if at else NAN,
        "predicted_partial_p95": at.partial_p95 if at else NAN,
        "measured_final_p95": real.final_p95 if real else NAN,
        "measured_partial_p95": real.partial_p95 if real else NAN,
        "measured_finals": real.speech_finals if real else 0,
        "frontend_cpu": real.frontend_cpu if real else NAN,
        "ok": ok,
    }
    if args.json is not None:
        args.json.write_text(
            _json_dump(
                {
                    "device": device_text,
                    "seconds": time.perf_counter() - started,
                    "tables": [asdict(t) | {"best_batch": t.best_batch} for t in tables],
                    "predictions": [asdict(p) for p in predictions],
                    "sim": asdict(spec) | {"data": str(spec.data)},
                    "real_run": asdict(real) if real else None,
                    "summary": fields,
                }
            ),
            encoding="utf-8",
        )
    print(summary_line(fields))
    return 0


def auto_server_workers(streams: int, cores: int) -> int:
    """Worker processes for `streams` live streams: each at most WORKER_LOAD of a core at
    FRONTEND_CPU_ESTIMATE per stream, and at most the cores less two (the load generator's)."""
    wanted = math.ceil(streams * FRONTEND_CPU_ESTIMATE / WORKER_LOAD)
    return max(1, min(wanted, cores - 2))


def _json_dump(value: object) -> str:
    import json

    def clean(v: object) -> object:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), indent=1, default=str)


def _real(
    args: argparse.Namespace,
    head: CostTable,
    max_batch: int,
    streams: int,
    seconds: float,
    device: str,
    threads: int | None,
    predicted: SimStep,
    server_workers: int = 1,
) -> RealRun:
    from streamer.bench.load import percentile, step_json

    with tempfile.TemporaryDirectory(prefix="streamer-gpu-model-") as tmp:
        folder = Path(tmp)
        log(f"real run: saving a random {head.model} in {head.dtype} to {folder}")
        save_model(head.model, head.dtype, device, folder)
        step = asyncio.run(
            real_run(
                folder,
                device=device,
                dtype=head.dtype,
                max_batch=max_batch,
                streams=streams,
                seconds=seconds,
                data=args.data,
                language=args.language,
                seed=args.seed,
                threads=threads,
                log_path=args.server_log,
                workers=server_workers,
            )
        )
    stats = step.stats
    final = percentile(stats.final_vad if args.final_from == "vad" else stats.final, 95)
    partial = percentile(stats.partial, 95)
    held = (
        final <= args.bound_final
        and partial <= args.bound_partial
        and stats.dropped == 0
        and stats.behind == 0
        and stats.speech_finals > 0
    )
    return RealRun(
        streams,
        max_batch,
        final,
        partial,
        stats.speech_finals,
        stats.dropped,
        stats.behind,
        step.batch_sum / step.batches if step.batches else NAN,
        step.frontend_cpu,
        held,
        predicted,
        step_json(step),
        server_workers,
    )


def _real_report(real: RealRun) -> str:
    predicted = real.predicted
    lines = [
        f"real run: {real.streams} stream(s), --max-batch {real.max_batch}, --workers {real.workers}",
        f"{'':<12}{'final_p95':>10}{'partial_p95':>12}{'mean_batch':>11}{'speech_finals':>14}{'dropped':>8}",
        f"{'predicted':<12}{_num(predicted.final_p95):>10}{_num(predicted.partial_p95):>12}"
        f"{_num(predicted.mean_batch, 2):>11}{predicted.speech_finals:>14}{predicted.dropped:>8}",
        f"{'measured':<12}{_num(real.final_p95):>10}{_num(real.partial_p95):>12}"
        f"{_num(real.mean_batch, 2):>11}{real.speech_finals:>14}{real.dropped:>8}",
        f"held: {'yes' if real.held else 'no'} (clients behind: {real.behind}); server CPU outside "
        f"inference: {_num(real.frontend_cpu, 5)} core-s per stream-second (every process), so one process "
        f"feeds about {math.floor(1 / real.frontend_cpu) if real.frontend_cpu > 0 else '-'} streams",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m streamer.bench gpu [flags]`; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.server_workers != "auto" and not (args.server_workers.isdigit() and int(args.server_workers) > 0):
        log("error: --server-workers must be auto or a positive number")
        return 2
    if args.max_batch != "auto" and not args.max_batch.isdigit():
        log("error: --max-batch must be auto or a number")
        return 2
    import torch

    threads = torch.get_num_threads()
    try:
        return run(args)
    except (StreamerError, RuntimeError, ValueError, OSError) as exc:
        log(f"error: {exc}")
        return 1
    finally:
        torch.set_num_threads(threads)  # main() may run inside another program (the tests)


if __name__ == "__main__":
    sys.exit(main())
