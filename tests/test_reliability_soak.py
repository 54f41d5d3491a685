"""The soak benchmark, in miniature: a real server process, two client slots coming and going for 9 s."""

from __future__ import annotations

import re

import pytest

from streamer.bench import __main__ as bench
from streamer.bench.soak import Sample, rss_growth


def test_tiny_soak_runs_and_reports_no_leaks(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["soak", "--minutes", "0.15", "--streams", "2", "--model", "fake:tone", "--synthetic"]
    status = bench.main([*argv, "--sample-every", "1", "--seed", "3"])
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert status == 0, out
    match = re.fullmatch(
        r"soak: minutes=0\.15 streams=2 rss_growth=(-?[\d.]+)% leaked_sessions=0 errors=0", lines[-1]
    )
    assert match, out
    timeline = [line for line in lines if line.startswith("t=")]
    assert len(timeline) >= 6 and all("rss=" in line and "live=" in line for line in timeline)
    assert re.search(r"client sessions: .*close_stream=[1-9]", out), out


def test_rss_growth_uses_medians_after_the_warm_up() -> None:
    flat = [Sample(float(t), 100_000 + (30_000 if t % 7 == 0 else 0), 1, 1) for t in range(100)]
    assert rss_growth(flat, warmup_s=10) == pytest.approx(0.0)  # spikes do not count
    leaking = [Sample(float(t), 100_000 + 500 * t, 1, 1) for t in range(100)]
    assert rss_growth(leaking, warmup_s=10) > 30
    assert rss_growth(leaking[:1], warmup_s=0) == 0.0
