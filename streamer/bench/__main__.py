"""`python -m streamer.bench <benchmark> [flags]`; `--help` after a benchmark name lists its flags."""

from __future__ import annotations

import sys

BENCHMARKS = {
    "accuracy": "streamer.bench.accuracy",
    "load": "streamer.bench.load",
    "compare": "streamer.bench.compare",
    "rtf": "streamer.bench.rtf",
    "models": "streamer.bench.models",
    "soak": "streamer.bench.soak",
    "longcall": "streamer.bench.longcall",
    "telephone": "streamer.bench.telephone",
    "vadcost": "streamer.bench.vadcost",
    "lmcompare": "streamer.bench.lmcompare",
    "ipc": "streamer.bench.ipc",
    "spread": "streamer.bench.spread",
    "gpu": "streamer.bench.gpu",
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in BENCHMARKS:
        print(f"usage: python -m streamer.bench {{{','.join(BENCHMARKS)}}} [flags]", file=sys.stderr)
        return 2
    import importlib

    module = importlib.import_module(BENCHMARKS[args[0]])
    result: int = module.main(args[1:])
    return result


if __name__ == "__main__":
    sys.exit(main())
