"""The long-call benchmark: a short run over a real server with the fake engine, and its analysis on
made-up finals (drift, finals that stop short)."""

from __future__ import annotations

from typing import Any

import pytest

from streamer.bench.longcall import Call, Sample, analyse, main


def results(*words: tuple[str, float]) -> dict[str, Any]:
    listed = [{"word": w, "start": s, "end": s + 0.3} for w, s in words]
    return {"type": "Results", "is_final": True, "channel": {"alternatives": [{"words": listed}]}}


def test_analysis_finds_drift_changed_text_and_finals_that_stop_short() -> None:
    call = Call(messages=[results(("a", 1.0), ("b", 2.0)), results(("a", 11.0), ("b", 12.0))])
    call.messages.append(results(("a", 21.0), ("b", 22.0)))
    call.samples = [Sample(i, i * 5.0, 0.0, 1000 + i) for i in range(10)]
    report = analyse(call, cycle_s=10.0, call_s=30.0, errors=[])
    assert (report.cycles, report.same_text, report.wer_vs_first, report.drift_s) == (3, 2, 0.0, 0.0)
    assert report.errors == []
    call.messages[2] = results(("a", 21.25), ("c", 22.0))
    report = analyse(call, cycle_s=10.0, call_s=30.0, errors=[])
    assert report.same_text == 1 and report.wer_vs_first == 0.5 and report.drift_s == pytest.approx(0.25)
    report = analyse(call, cycle_s=10.0, call_s=50.0, errors=[])
    assert report.errors and "finals stop" in report.errors[0]


def test_a_short_call_through_the_real_server(capsys: pytest.CaptureFixture[str]) -> None:
    # Two cycles of the synthetic call (88 s each) at 60x: about 3 s.
    argv = ["--minutes", "3", "--speed", "60", "--model", "fake:tone", "--synthetic"]
    argv += ["--sample-every", "0.5"]
    assert main(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    fields = dict(kv.split("=") for kv in last.split()[1:])
    assert fields["errors"] == "0" and fields["time_drift_max"] == "0.000"
    done, cycles = fields["same_text"].split("/")
    assert int(cycles) >= 1 and done == cycles and fields["wer_vs_first_max"] == "0.0000"
