"""Benchmarks: `python -m streamer.bench accuracy|...` (each prints its figures and one summary line)."""
