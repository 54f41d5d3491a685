"""Comparisons measured in one run, reported as ratios (absolute times on a noisy 2-core box mean little).

    python -m streamer.bench compare                           # every section, default sizes
    python -m streamer.bench compare --sections naive,pocketsphinx --clips 10
    python -m streamer.bench compare --sections pipeline --pipeline-model small --seconds 30   # quick
    python -m streamer.bench compare --rtf                     # plus `python -m streamer.bench rtf`

Sections (`--sections`, comma-separated; default all):
- `pipeline`: transformers' `pipeline("automatic-speech-recognition", chunk_length_s=, stride_length_s=)`
  against our engine on the same model and audio (a random-weight copy of wav2vec2-large-xlsr-53 by
  default, `--pipeline-model small|base|xlsr-53|xls-r-1b` or a folder): throughput in audio seconds per
  second for the pipeline, our offline pass (one per VAD segment), our streaming (Stream + Batcher, one
  stream) and 4 concurrent streams through one batcher; and agreement (WER between transcripts). With
  random weights WER against the reference is meaningless, so agreement is the figure; a check that the
  pipeline and our engine give the same text on one unchunked clip comes with it.
- `naive`: the built-in model on real speech (the eval clips joined with pauses), ours against a
  streamer that re-decodes the whole growing segment every hop, on one simulated core in virtual time
  (`streamer.bench.sim`): model compute per second of speech, CPU, and partial/final latency.
- `pocketsphinx`: CMU PocketSphinx (pip install pocketsphinx) in the same harness: WER against the
  references, CPU seconds per audio second, final latency, against the built-in model.
- `batching`: our server with `--max-batch 1` against `--max-batch 16`, capacity searched as
  `python -m streamer.bench load --find-capacity` does, with a transformers model whose windows batch
  (`--batching-model`, default the mid-size `base`); first, in-process, what a batch of 8 partial-window
  sized windows costs against the same 8 one by one (the throughput batching can buy on this device).
Ends with `compare: key=value ...`, every value a ratio or a WER (see `--help` of each figure's table).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamer import SAMPLE_RATE
from streamer.audio import float_to_linear16
from streamer.batcher import Batcher, BatcherConfig
from streamer.bench import load as load_bench
from streamer.bench.accuracy import stream_transcript
from streamer.bench.data import join_with_pauses, load_manifest, normalise, wer
from streamer.bench.models import ARCHITECTURES, ensure_model
from streamer.bench.sim import Core, NaiveSystem, OurSystem, PocketsphinxSystem, SimResult, simulate
from streamer.ctc import FloatArray
from streamer.engine.base import Engine
from streamer.session import StreamingConfig
from streamer.transcribe import transcribe_samples, vad_segments
from streamer.transcript import render_words
from streamer.vad import VadConfig

SECTIONS = ("pipeline", "naive", "pocketsphinx", "batching")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _num(value: float, digits: int = 3) -> str:
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def _pct(values: list[float], q: float) -> float:
    return load_bench.percentile(values, q)


@dataclass
class Report:
    """Tables (printed in order) and the key ratios of the closing line."""

    tables: list[str] = field(default_factory=list)
    key: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        return "compare: " + " ".join(f"{k}={_num(v)}" for k, v in self.key.items())


# ---- data ---------------------------------------------------------------------------------------------


def speech_stream(data: Path, language: str, clips: int, seconds: float, seed: int) -> tuple[FloatArray, str]:
    """Clips (the first `clips`, 0 = all, then cut to about `seconds` when > 0) joined with pauses, and the
    joined reference text."""
    chosen = load_manifest(data, language)
    if clips:
        chosen = chosen[:clips]
    audios, texts, total = [], [], 0.0
    for clip in chosen:
        audio = clip.audio()
        audios.append(audio)
        texts.append(clip.transcript)
        total += len(audio) / SAMPLE_RATE + 1.15
        if seconds and total >= seconds:
            break
    if not audios:
        raise ValueError(f"no clips of language {language!r} in {data}")
    return join_with_pauses(audios, seed=seed), " ".join(texts)


def speech_seconds(audio: FloatArray) -> float:
    return sum(len(a) for _, a in vad_segments(audio, VadConfig())) / SAMPLE_RATE


# ---- pipeline -----------------------------------------------------------------------------------------


def _model_folder(spec: str) -> Path:
    return ensure_model(spec) if spec in ARCHITECTURES else Path(spec)


def _clean(text: str) -> str:
    """The pipeline's text without the special tokens it keeps (`<s>`, `</s>`, `<unk>`), as ours has."""
    return " ".join(re.sub(r"<[^<>\s]*>", "", text).split())


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate between two normalised texts (spaces kept): agreement finer than WER."""
    import jiwer

    ref, hyp = normalise(reference), normalise(hypothesis)
    return float(jiwer.cer(ref, hyp or "<empty>")) if ref else 0.0


def _full_pass_text(engine: Engine, audio: FloatArray) -> str:
    words, _ = render_words(
        engine.forward([audio])[0],
        blank_id=engine.blank_id,
        delimiter_id=engine.word_delimiter_id,
        spell=engine.spell,
        frame_samples=engine.frame_samples,
        first_frame=0,
        origin_sample=0,
    )
    return " ".join(w.word for w in words)


async def _streams(engine: Engine, audio: FloatArray, count: int) -> tuple[list[str], float]:
    """`count` concurrent streams of `audio` through one batcher, as fast as the engine goes."""
    batcher = Batcher(engine, BatcherConfig())
    batcher.start()
    data = float_to_linear16(audio)
    try:
        started = time.perf_counter()
        results = await asyncio.gather(
            *(stream_transcript(engine, batcher, data, StreamingConfig(), seed=i) for i in range(count))
        )
        return [r.text for r in results], time.perf_counter() - started
    finally:
        await batcher.stop()


def compare_pipeline(
    model: str, audio: FloatArray, reference: str, check_clip: FloatArray, chunk_s: float, stride_s: float
) -> tuple[str, dict[str, float]]:
    """Throughput and agreement of transformers' pipeline against our engine (see the module docstring)."""
    import transformers

    from streamer.engine.transformers_ctc import TransformersCTCEngine

    folder = _model_folder(model)
    log(f"pipeline: loading {folder} ...")
    engine = TransformersCTCEngine.load(str(folder), device="cpu", dtype="float32", max_batch=16)
    pipe = transformers.pipeline("automatic-speech-recognition", model=str(folder), device="cpu")
    seconds = len(audio) / SAMPLE_RATE
    warm = audio[: 2 * SAMPLE_RATE]
    pipe(warm.copy())
    engine.forward([warm])

    log("pipeline: transformers pipeline, chunked ...")
    started = time.perf_counter()
    output: Any = pipe(audio.copy(), chunk_length_s=chunk_s, stride_length_s=stride_s)
    piped = _clean(str(output["text"]))
    t_pipe = time.perf_counter() - started
    log("pipeline: ours, offline (one pass per VAD segment) ...")
    started = time.perf_counter()
    offline = " ".join(r.text for r in transcribe_samples(engine, audio, VadConfig()) if r.text)
    t_off = time.perf_counter() - started
    log("pipeline: ours, streaming (1 stream) ...")
    (streamed,), t_one = asyncio.run(_streams(engine, audio, 1))
    log("pipeline: ours, streaming (4 concurrent streams, one batcher) ...")
    many, t_four = asyncio.run(_streams(engine, audio, 4))
    unchunked: Any = pipe(check_clip.copy())
    check = wer([_clean(str(unchunked["text"]))], [_full_pass_text(engine, check_clip)])
    engine.close()

    chunk_ratio = chunk_s / max(1e-9, chunk_s - 2 * stride_s)
    rows = [
        f"pipeline comparison: model {folder.name} (random weights), float32, torch threads as default; "
        f"audio {seconds:.1f} s; pipeline chunk_length_s={chunk_s:g} stride_length_s={stride_s:g} "
        f"(computes {chunk_ratio:.2f}x the audio)",
        f"{'system':<40}{'wall s':>8}{'audio s/s':>11}{'vs pipeline':>12}{'wer(pipe)':>10}{'cer(pipe)':>10}"
        f"{'wer(ref)*':>10}",
    ]
    tp = seconds / t_pipe
    figures = {
        "transformers pipeline (chunked)": (t_pipe, tp, piped),
        "ours offline (pass per VAD segment)": (t_off, seconds / t_off, offline),
        "ours streaming, 1 stream": (t_one, seconds / t_one, streamed),
        "ours streaming, 4 streams batched": (t_four, 4 * seconds / t_four, many[0]),
    }
    for name, (wall, rate, text) in figures.items():
        rows.append(
            f"{name:<40}{wall:>8.1f}{rate:>11.2f}{rate / tp:>12.2f}{wer([piped], [text]):>10.3f}"
            f"{cer(piped, text):>10.3f}"
            f"{wer([reference], [text]):>10.3f}"
        )
    rows.append(
        f"agreement ours streaming vs ours offline: {wer([offline], [streamed]):.3f} WER; "
        f"unchunked pipeline vs our full pass on one {len(check_clip) / SAMPLE_RATE:.1f} s clip: "
        f"{check:.3f} WER (same model, same input: should be 0)"
    )
    rows.append("* random weights: WER against the reference is meaningless; agreement is the figure.")
    key = {
        "pipeline_offline_speedup": (seconds / t_off) / tp,
        "pipeline_stream_speedup": (seconds / t_one) / tp,
        "pipeline_4streams_speedup": (4 * seconds / t_four) / tp,
        "pipeline_agreement_wer": wer([piped], [offline]),
        "pipeline_agreement_cer": cer(piped, offline),
        "stream_vs_offline_wer": wer([offline], [streamed]),
        "pipeline_same_input_wer": check,
    }
    return "\n".join(rows), key


# ---- naive and pocketsphinx (virtual time, one core) --------------------------------------------------


def run_simulations(audio: FloatArray, reference: str, systems: list[str], seed: int) -> dict[str, SimResult]:
    from streamer.engine.hama_engine import HamaEngine

    engine = HamaEngine(replicas=1)  # one core each, the same for every system
    speech = speech_seconds(audio)
    out: dict[str, SimResult] = {}
    try:
        for name in systems:
            log(f"simulate: {name} over {len(audio) / SAMPLE_RATE:.0f} s of audio ...")
            core = Core()
            system: OurSystem | NaiveSystem | PocketsphinxSystem
            if name == "ours":
                system = OurSystem(engine, core)
            elif name == "naive":
                system = NaiveSystem(engine, core)
            else:
                system = PocketsphinxSystem(core)
            out[name] = simulate(system, core, audio, speech_s=speech, seed=seed)
    finally:
        engine.close()
    return out


def simulation_table(results: dict[str, SimResult], reference: str) -> str:
    ours = results["ours"]
    rows = [
        f"one stream on one simulated core, virtual time: audio {ours.audio_s:.1f} s, "
        f"speech {ours.speech_s:.1f} s (VAD), built-in model unless named; latencies in s "
        "(definitions as in the load benchmark)",
        f"{'system':<14}{'wer':>7}{'model s/s':>10}{'eng cpu/s':>10}{'cpu/s':>7}{'partial p50':>12}{'p95':>7}"
        f"{'final p50':>10}{'p95':>7}{'eos p95':>8}{'vad-final p95':>14}{'dropped':>8}",
    ]
    for name, r in results.items():
        s = r.stats
        rows.append(
            f"{name:<14}{wer([reference], [r.text]):>7.3f}{_num(r.compute_ratio, 2):>10}"
            f"{r.engine_cpu_s / r.audio_s:>10.3f}{r.total_cpu_s / r.audio_s:>7.3f}"
            f"{_num(_pct(s.partial, 50)):>12}{_num(_pct(s.partial, 95)):>7}{_num(_pct(s.final, 50)):>10}"
            f"{_num(_pct(s.final, 95)):>7}{_num(_pct(s.eos, 95)):>8}{_num(_pct(s.final_vad, 95)):>14}"
            f"{s.dropped:>8}"
        )
    rows.append(
        "model s/s: audio through the model per second of speech; eng cpu/s, cpu/s: CPU seconds (model only, "
        "everything) per audio second; vad-final: final latency counted from the VAD's endpoint, which does "
        "not depend on a model's word times"
    )
    return "\n".join(rows)


# ---- batching capacity --------------------------------------------------------------------------------


async def _capacity(
    server_args: list[str], workload: load_bench.Workload, bound_s: float, max_streams: int
) -> load_bench.CapacityResult:
    server = load_bench.ServerProcess(server_args)
    log(f"batching: starting python -m streamer {' '.join(server_args)} ...")
    url = await asyncio.to_thread(server.start)
    try:
        target = load_bench.Target(url, server.pid)
        return await load_bench.find_capacity(
            target, workload, load_bench.LoadOptions(), bound_s=bound_s, max_streams=max_streams
        )
    finally:
        server.stop()


def compare_batching(
    model: str, data: Path, seconds: float, bound_s: float, max_streams: int, extra: list[str]
) -> tuple[str, dict[str, float]]:
    folder = _model_folder(model)
    gain = batch_gain(folder)
    workload = load_bench.Workload.from_folder(data, "en", seconds)
    base = ["--model", f"en={folder}", *extra]
    off = asyncio.run(_capacity([*base, "--max-batch", "1"], workload, bound_s, max_streams))
    on = asyncio.run(_capacity([*base, "--max-batch", "16"], workload, bound_s, max_streams))
    rows = [
        f"batch gain: 8 windows of {GAIN_WINDOW_S:g} s in one call run {_num(gain, 2)}x faster than one by "
        "one (the most throughput batching can add here)",
        f"batching: model {folder.name} (random weights, {' '.join(extra) or 'float32'}), {seconds:g} s of "
        "speech per stream, "
        f"held = final p95 <= {bound_s:g} s, nobody behind, nothing dropped",
        "--max-batch 1:",
        load_bench.capacity_table(off, bound_s),
        "--max-batch 16:",
        load_bench.capacity_table(on, bound_s),
        f"capacity with batching {on.capacity} vs without {off.capacity}: "
        f"{_num(_ratio(on.capacity, off.capacity), 2)}x",
    ]
    return "\n".join(rows), {
        "batching_capacity_on": float(on.capacity),
        "batching_capacity_off": float(off.capacity),
        "batching_capacity_ratio": _ratio(on.capacity, off.capacity),
        "batch_gain_8": gain,
    }


GAIN_WINDOW_S = 1.125
"""A partial window of the default plan: 0.3 + 0.7 + 0.1 s plus the conv stack's look-ahead."""


def batch_gain(folder: Path, size: int = 8, repeats: int = 3) -> float:
    """Time of `size` windows run one by one over their time in one batched call (same engine)."""
    from streamer.engine.transformers_ctc import TransformersCTCEngine

    engine = TransformersCTCEngine.load(str(folder), device="cpu", dtype="float32", max_batch=size)
    try:
        rng = np.random.default_rng(0)
        windows = [(0.1 * rng.standard_normal(int(GAIN_WINDOW_S * SAMPLE_RATE))).astype(np.float32)]
        windows *= size
        engine.forward(windows)  # warm both paths
        started = time.perf_counter()
        for _ in range(repeats):
            engine.forward(windows)
        batched = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(repeats):
            for w in windows:
                engine.forward([w])
        single = time.perf_counter() - started
    finally:
        engine.close()
    return single / batched


# ---- command line -------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m streamer.bench compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, default all")
    parser.add_argument("--data", type=Path, default=load_bench.DEFAULT_DATA, help="folder with MANIFEST.tsv")
    parser.add_argument("--clips", type=int, default=0, help="naive/pocketsphinx: first N clips (0: all)")
    parser.add_argument("--sim-seconds", type=float, default=0.0, help="naive/pocketsphinx: cap audio, s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pipeline-model", default="xlsr-53", help=f"{'|'.join(ARCHITECTURES)} or a folder")
    parser.add_argument("--seconds", type=float, default=60.0, help="pipeline: audio length, s")
    parser.add_argument("--chunk-length", type=float, default=10.0, help="pipeline chunk_length_s")
    parser.add_argument("--stride-length", type=float, default=2.0, help="pipeline stride_length_s")
    parser.add_argument("--batching-model", default="base", help=f"{'|'.join(ARCHITECTURES)} or a folder")
    parser.add_argument("--batching-seconds", type=float, default=30.0, help="audio per stream per step")
    parser.add_argument("--batching-bound", type=float, default=1.0, help="final p95 bound, s")
    parser.add_argument("--batching-max", type=int, default=16, help="largest N tried")
    parser.add_argument(
        "--server-arg", action="append", default=[], help="more flags for the batching servers"
    )
    parser.add_argument("--rtf", action="store_true", help="also run `python -m streamer.bench rtf`")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m streamer.bench compare [flags]`; returns the exit status."""
    args = _parser().parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        log(f"error: unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
        return 2
    report = Report()
    if "pipeline" in sections:
        audio, reference = speech_stream(args.data, "en", 0, args.seconds, args.seed)
        clips = load_manifest(args.data, "en")
        check = next(
            (c.audio() for c in clips if 3 <= len(c.audio()) / SAMPLE_RATE <= 6), audio[: 4 * SAMPLE_RATE]
        )
        table, key = compare_pipeline(
            args.pipeline_model, audio, reference, check, args.chunk_length, args.stride_length
        )
        report.tables.append(table)
        report.key.update(key)
    simulated = [s for s in ("naive", "pocketsphinx") if s in sections]
    if simulated:
        audio, reference = speech_stream(args.data, "en", args.clips, args.sim_seconds, args.seed)
        systems = ["ours", *simulated]
        if "pocketsphinx" in simulated:
            try:
                __import__("pocketsphinx")
            except ImportError:
                log("pocketsphinx not installed (pip install pocketsphinx): skipping that comparison")
                systems.remove("pocketsphinx")
        results = run_simulations(audio, reference, systems, args.seed)
        report.tables.append(simulation_table(results, reference))
        ours = results["ours"]
        if "naive" in results:
            naive = results["naive"]
            report.key.update(
                naive_compute_ratio=_ratio(naive.model_audio_s, ours.model_audio_s),
                naive_cpu_ratio=_ratio(naive.engine_cpu_s, ours.engine_cpu_s),
                naive_partial_p95_ratio=_ratio(_pct(naive.stats.partial, 95), _pct(ours.stats.partial, 95)),
                naive_final_p95_ratio=_ratio(_pct(naive.stats.final, 95), _pct(ours.stats.final, 95)),
            )
        if "pocketsphinx" in results:
            ps = results["pocketsphinx"]
            report.key.update(
                builtin_wer=wer([reference], [ours.text]),
                pocketsphinx_wer=wer([reference], [ps.text]),
                pocketsphinx_cpu_ratio=_ratio(ps.total_cpu_s, ours.total_cpu_s),
                pocketsphinx_final_p95_ratio=_ratio(_pct(ps.stats.final, 95), _pct(ours.stats.final, 95)),
                pocketsphinx_vad_final_p95_ratio=_ratio(
                    _pct(ps.stats.final_vad, 95), _pct(ours.stats.final_vad, 95)
                ),
            )
    if "batching" in sections:
        table, key = compare_batching(
            args.batching_model,
            args.data,
            args.batching_seconds,
            args.batching_bound,
            args.batching_max,
            [a for extra in args.server_arg for a in extra.split()],
        )
        report.tables.append(table)
        report.key.update(key)
    if args.rtf:
        from streamer.bench import rtf

        results_rtf = [
            rtf.measure(name, dtype, data=args.data)
            for name in ("xlsr-53", "xls-r-1b")
            for dtype in ("float32", "bfloat16")
        ]
        report.tables.append(rtf.table(results_rtf))
        for r in results_rtf:
            report.key[f"rtf_{r.model}_{r.dtype}"] = r.rtf_offline
    for table in report.tables:
        print(table)
        print()
    print(report.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
