"""Real-time factor of reference-size CTC models on this CPU, and how many streams that leaves.

    python -m streamer.bench rtf                                  # xlsr-53 and xls-r-1b, float32 and bfloat16
    python -m streamer.bench rtf --models base,small --dtypes float32 --repeats 2

Each model is a random-weight copy of a published architecture (`streamer.bench.models`, built once into
the cache); speed does not depend on the weights. Through our own engine (`TransformersCTCEngine`, the
code the server runs), it times: one pass over an 8 s window (what a final pass costs per second of
speech: `rtf_offline`), and the default partial window (0.3 + 0.7 + 0.1 s) alone and in a batch of 4
(`rtf_window`, per second of window audio). Streams held = floor(1 / (rtf_offline x compute ratio)), with
the compute ratio our streaming measured (default 2.3 model seconds per second of speech, see
`python -m streamer.bench accuracy`); `streams_mix` prices each part at its own cost instead (partial
windows (L+H+R)/H = 1.57 s per second at the batched window rate, plus one final pass per second).
Ends with `rtf: MODEL/DTYPE=RTF:STREAMS ...`.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamer import SAMPLE_RATE
from streamer.bench.models import ARCHITECTURES, ensure_model, parameters
from streamer.ctc import FloatArray
from streamer.windows import WindowPlan

DEFAULT_COMPUTE_RATIO = 2.3


@dataclass(frozen=True)
class RtfResult:
    model: str
    dtype: str
    parameters: int
    threads: int
    rtf_offline: float
    rtf_window: float
    rtf_window_batched: float
    compute_ratio: float
    noise: float = math.nan
    """CPU of other processes on the machine while this was measured, in cores (should be ~0)."""

    @property
    def streams(self) -> int:
        """Streams one engine keeps up with: all its time spent, at the measured compute ratio."""
        return math.floor(1.0 / (self.rtf_offline * self.compute_ratio)) if self.rtf_offline > 0 else 0

    @property
    def streams_mix(self) -> int:
        plan = WindowPlan()
        partial_ratio = (plan.left_s + plan.hop_s + plan.right_s) / plan.hop_s
        cost = self.rtf_window_batched * partial_ratio + self.rtf_offline
        return math.floor(1.0 / cost) if cost > 0 else 0


def _speech(seconds: float, data: Path | None) -> FloatArray:
    """Real speech when the eval data is there (not that it matters for speed), else noise."""
    if data is not None and (data / "MANIFEST.tsv").is_file():
        from streamer.bench.data import load_manifest

        clips = load_manifest(data, "en")
        audio = np.concatenate([c.audio() for c in clips[:8]]) if clips else np.zeros(0, np.float32)
        if len(audio) >= seconds * SAMPLE_RATE:
            return audio[: int(seconds * SAMPLE_RATE)].astype(np.float32)
    rng = np.random.default_rng(0)
    return (0.05 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)


def _time(fn: object, repeats: int) -> float:
    assert callable(fn)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(
    name: str,
    dtype: str,
    *,
    repeats: int = 3,
    window_s: float = 8.0,
    compute_ratio: float = DEFAULT_COMPUTE_RATIO,
    threads: int | None = None,
    data: Path | None = None,
    quiet: bool = False,
) -> RtfResult:
    """Load the cached model `name` in `dtype` through our engine and time it (see the module docstring)."""
    import torch

    from streamer.bench.load import machine_busy
    from streamer.engine.transformers_ctc import TransformersCTCEngine

    folder = ensure_model(name, quiet=quiet)
    if not quiet:
        print(f"rtf: loading {name} as {dtype} ...", file=sys.stderr, flush=True)
    engine = TransformersCTCEngine.load(str(folder), device="cpu", dtype=dtype, threads=threads, max_batch=16)
    try:
        plan = WindowPlan()
        window_len = round((plan.left_s + plan.hop_s + plan.right_s) * SAMPLE_RATE)
        audio = _speech(max(window_s, 8 * window_len / SAMPLE_RATE), data)
        offline = audio[: int(window_s * SAMPLE_RATE)]
        windows = [audio[i * window_len : (i + 1) * window_len] for i in range(4)]
        engine.forward([offline])  # warm the long shape too
        own, machine, wall = time.process_time(), machine_busy(), time.perf_counter()
        rtf_offline = _time(lambda: engine.forward([offline]), repeats) / window_s
        engine.forward(windows[:1])
        rtf_window = _time(lambda: engine.forward(windows[:1]), repeats * 3) / (window_len / SAMPLE_RATE)
        engine.forward(windows)
        batched = _time(lambda: engine.forward(windows), repeats * 2) / (4 * window_len / SAMPLE_RATE)
        result = RtfResult(
            name,
            dtype,
            parameters(folder),
            torch.get_num_threads(),
            rtf_offline,
            rtf_window,
            batched,
            compute_ratio,
            ((machine_busy() - machine) - (time.process_time() - own)) / (time.perf_counter() - wall),
        )
    finally:
        engine.close()

        gc.collect()
    if not quiet:
        print(
            f"rtf: {name}/{dtype}: offline {result.rtf_offline:.3f}, window {result.rtf_window:.3f}, "
            f"batched window {result.rtf_window_batched:.3f}",
            file=sys.stderr,
            flush=True,
        )
    return result


def table(results: list[RtfResult]) -> str:
    rows = [
        f"{'model':<10}{'dtype':<10}{'params':>8}{'threads':>8}{'rtf_offline':>12}{'rtf_window':>11}"
        f"{'rtf_win_b4':>11}{'streams':>8}{'streams_mix':>12}{'noise':>7}"
    ]
    for r in results:
        rows.append(
            f"{r.model:<10}{r.dtype:<10}{r.parameters / 1e6:>7.0f}M{r.threads:>8}{r.rtf_offline:>12.3f}"
            f"{r.rtf_window:>11.3f}{r.rtf_window_batched:>11.3f}{r.streams:>8}{r.streams_mix:>12}{r.noise:>7.2f}"
        )
    if results:
        rows.append(
            f"streams = floor(1 / (rtf_offline x {results[0].compute_ratio:g})); streams_mix = floor(1 / "
            "(1.57 x rtf_win_b4 + rtf_offline)); rtf = seconds of compute per second of audio; noise = cores "
            "used by other processes meanwhile (the machine is shared: rerun when it is not ~0)"
        )
    return "\n".join(rows)


def summary_line(results: list[RtfResult]) -> str:
    return "rtf: " + " ".join(f"{r.model}/{r.dtype}={r.rtf_offline:.3f}:{r.streams}" for r in results)


def main(argv: list[str] | None = None) -> int:
    """`python -m streamer.bench rtf [flags]`; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m streamer.bench rtf",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--models", default="xlsr-53,xls-r-1b", help=f"any of {','.join(ARCHITECTURES)}")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="float32 and/or bfloat16")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median)")
    parser.add_argument("--window", type=float, default=8.0, help="offline window, s (default %(default)s)")
    parser.add_argument("--compute-ratio", type=float, default=DEFAULT_COMPUTE_RATIO)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--data", type=Path, default=None, help="eval data folder (speech to time on)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    results = [
        measure(
            name.strip(),
            dtype.strip(),
            repeats=args.repeats,
            window_s=args.window,
            compute_ratio=args.compute_ratio,
            threads=args.threads,
            data=args.data,
            quiet=args.quiet,
        )
        for name in args.models.split(",")
        for dtype in args.dtypes.split(",")
    ]
    print(table(results))
    print(summary_line(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
