"""The load benchmark, untimed: its latency bookkeeping on made-up messages, and short real runs through a
real server process (the fake tone engine on audio made here; the built-in model on two real clips).

Only the shape of the output and the consistency of the counts are checked, never timing values.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from streamer.bench import load
from streamer.bench.load import ClientRun, ClientStats, Hogs, analyse_client, main, summary_line
from streamer.engine.fake import tone_phrase

KEYS = {
    "streams",
    "partial_p50",
    "partial_p95",
    "final_p50",
    "final_p95",
    "eos_p95",
    "overhead",
    "end_lag_max",
    "frontend_cpu",
    "capacity",
}


def _results(
    start: float, duration: float, words: list[tuple[str, float, float]], **flags: bool
) -> dict[str, Any]:
    return {
        "type": "Results",
        "start": start,
        "duration": duration,
        "is_final": flags.get("is_final", False),
        "speech_final": flags.get("speech_final", False),
        "channel": {"alternatives": [{"words": [{"word": w, "start": s, "end": e} for w, s, e in words]}]},
    }


def test_latencies_follow_their_definitions() -> None:
    # 10 ms frames sent at exactly their real-time instants, from t=100.
    run = ClientRun(0, 3.0, frames=[(160 * (i + 1), 100.0 + 0.01 * (i + 1)) for i in range(300)])
    run.messages = [
        (100.3, {"type": "SpeechStarted", "timestamp": 0.2}),
        (101.0, _results(0.0, 0.8, [("helo", 0.3, 0.7)])),  # "hello" ends at 0.7 s: partial after 0.3 s
        (101.5, _results(0.0, 1.4, [("helo", 0.3, 0.7), ("wor", 1.0, 1.2)])),  # "world" is not complete yet
        (102.0, _results(0.0, 1.9, [("hello", 0.3, 0.7), ("world", 1.0, 1.5)])),
        # endpoint due at 1.5 + 0.4 = 1.9 s; the final comes 0.35 s after it
        (
            102.25,
            _results(0.0, 2.0, [("hello", 0.3, 0.7), ("world", 1.0, 1.5)], is_final=True, speech_final=True),
        ),
        (102.9, {"type": "Metadata"}),
    ]
    run.close_code = 1000
    stats = analyse_client(run, endpointing_s=0.4)
    assert [round(x, 3) for x in stats.partial] == [0.3, 0.5]
    assert [round(x, 3) for x in stats.final] == [0.35]
    assert [round(x, 3) for x in stats.eos] == [0.75]
    assert (stats.words, stats.finals, stats.speech_finals, stats.interims) == (2, 1, 1, 3)
    assert stats.dropped == 0 and stats.behind == 0 and stats.final_only_words == 0


def test_missing_finals_errors_and_lag_are_counted() -> None:
    run = ClientRun(0, 2.0, frames=[(16000, 101.0), (32000, 102.0)], max_lag_s=0.8)
    run.messages = [
        (100.5, {"type": "SpeechStarted", "timestamp": 0.2}),
        (101.2, _results(0.0, 0.9, [("a", 0.3, 0.5)])),  # never finalised, and no Metadata
    ]
    run.close_code = 1011
    stats = analyse_client(run, endpointing_s=0.4)
    assert stats.missing_finals == 2  # the SpeechStarted without a final, and the trailing interim
    assert stats.missing_metadata == 1 and stats.errors == 1 and stats.behind == 1
    assert stats.dropped == 4


def test_end_lag_runs_from_the_last_audio_to_the_closing_metadata() -> None:
    run = ClientRun(0, 2.0, frames=[(16000, 101.0), (32000, 102.0)])
    run.messages = [
        (100.5, {"type": "SpeechStarted", "timestamp": 0.2}),
        (103.2, _results(0.0, 1.9, [("a", 0.3, 0.5)], is_final=True, speech_final=True)),
        (103.5, {"type": "Metadata"}),
    ]
    run.close_code = 1000
    stats = analyse_client(run, endpointing_s=0.4)
    assert stats.end_lag_s == pytest.approx(1.5) and stats.dropped == 0
    other = ClientStats(end_lag_s=0.4)
    other.add(stats)
    assert other.end_lag_s == pytest.approx(1.5)  # the worst stream's


def test_summary_line_without_a_step() -> None:
    line = summary_line(None, None)
    assert line.startswith("load: streams=0 ") and line.endswith(" capacity=-")


def _parse(line: str) -> dict[str, str]:
    assert line.startswith("load: ")
    fields = dict(item.split("=", 1) for item in line.split()[1:])
    assert set(fields) == KEYS
    return fields


def _check_run(out: str, json_path: Path, streams: int) -> dict[str, str]:
    fields = _parse(out.strip().splitlines()[-1])
    assert fields["streams"] == str(streams) and fields["capacity"] == "-"
    for key in KEYS - {"streams", "capacity"}:
        float(fields[key])  # plain numbers (nan allowed only where nothing was measured)
    (step,) = json.loads(json_path.read_text())
    stats = step["stats"]
    assert step["streams"] == streams
    assert stats["dropped"] == 0 and stats["behind"] == 0
    assert stats["missing_finals"] == 0 and stats["missing_metadata"] == 0 and stats["errors"] == 0
    assert stats["stale_interims"] == 0 and stats["overlapping_finals"] == 0
    assert stats["words"] > 0 and stats["speech_finals"] >= streams
    assert stats["finals"] >= stats["speech_finals"]
    assert step["batches"] > 0 and step["audio_s"] > 0
    # Every final word has a partial latency; every speech_final with words one final latency.
    assert not math.isnan(float(fields["partial_p50"])) and not math.isnan(float(fields["final_p50"]))
    # The server saw all the audio the clients sent (to the frame).
    assert step["server_audio_s"] == pytest.approx(step["audio_s"], abs=0.01)
    assert step["server_cpu"]["total"] >= step["server_cpu"]["main"] >= 0
    return fields


def test_two_streams_of_tones_through_a_real_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    rows = ["file\tlanguage\ttranscript"]
    for i, words in enumerate((["abc", "ded"], ["face", "bad", "cab"], ["beef"])):
        sf.write(data / f"tone{i}.wav", tone_phrase(words, seed=i), 16000, subtype="PCM_16")
        rows.append(f"tone{i}.wav\ten\t{' '.join(words)}")
    (data / "MANIFEST.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    out_json = tmp_path / "steps.json"
    argv = ["--streams", "2", "--seconds", "5", "--model", "en=fake:tone", "--data", str(data)]
    assert main([*argv, "--json", str(out_json), "--quiet", "--hog", "1"]) == 0
    fields = _check_run(capsys.readouterr().out, out_json, 2)
    assert 0 <= float(fields["end_lag_max"]) < 5
    assert 0 < float(fields["frontend_cpu"]) < 0.1  # core-seconds per stream-second
    # The busy process ran through the step (a core's worth, seen as other processes' CPU), then stopped.
    (step,) = json.loads(out_json.read_text())
    other = step["machine_cpu_s"] - step["server_cpu"]["total"] - step["client_cpu_s"]
    assert other > 0.5 * step["wall_s"]


def test_two_streams_of_real_speech_with_the_builtin_model(
    eval_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two short clips, named by absolute path in a manifest of our own (the eval data is never copied).
    wanted = {"LDC93S1", "vctk_p225_003"}
    lines = (eval_data / "MANIFEST.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    rows = ["file\tlanguage\ttranscript"]
    for line in lines[1:]:
        row = dict(zip(header, line.split("\t"), strict=False))
        if Path(row["file"]).stem in wanted:
            rows.append(f"{eval_data / row['file']}\t{row['language']}\t{row['transcript']}")
    assert len(rows) == 3
    data = tmp_path / "data"
    data.mkdir()
    (data / "MANIFEST.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    out_json = tmp_path / "steps.json"
    assert (
        main(["--streams", "2", "--seconds", "5", "--data", str(data), "--json", str(out_json), "--quiet"])
        == 0
    )
    _check_run(capsys.readouterr().out, out_json, 2)


def test_batch_histogram_reads_cumulative_buckets() -> None:
    def sample(le: str, value: float) -> tuple[tuple[str, tuple[tuple[str, str], ...]], float]:
        return ("streamer_batch_size_bucket", (("le", le), ("model", "en"))), value

    before = dict([sample("1.0", 2), sample("2.0", 3), sample("4.0", 3), sample("+Inf", 3)])
    after = dict([sample("1.0", 7), sample("2.0", 10), sample("4.0", 11), sample("+Inf", 11)])
    assert load._batch_histogram(before, after) == {"1": 5, "2": 2, "3-4": 1}
    assert np.isclose(load.percentile([1.0, 2.0, 3.0], 50), 2.0)


def test_simulated_ours_and_naive_agree_and_naive_costs_more() -> None:
    """The virtual-time harness of `compare` (no pocketsphinx needed): both systems finalise each segment
    with one full pass, so their finals agree; re-decoding the growing segment costs more model audio."""
    from streamer.bench.sim import Core, NaiveSystem, OurSystem, simulate
    from streamer.engine.fake import EnergyDetector, ToneEngine

    engine = ToneEngine()
    silence = np.zeros(12000, np.float32)
    audio = np.concatenate(
        [
            silence,
            tone_phrase(["abc", "ded", "face", "bad", "cab", "bead"]),
            silence,
            tone_phrase(["dead"]),
            silence,
        ]
    )
    results = {}
    for name in ("ours", "naive"):
        core = Core()
        system = (
            OurSystem(engine, core, detector=EnergyDetector())
            if name == "ours"
            else NaiveSystem(engine, core, detector=EnergyDetector())
        )
        results[name] = simulate(system, core, audio, speech_s=len(audio) / 16000, seed=1)
    ours, naive = results["ours"], results["naive"]
    assert ours.text == naive.text == "abc ded face bad cab bead dead"
    assert naive.model_audio_s > ours.model_audio_s > 0
    for r in (ours, naive):
        assert r.stats.dropped == 0 and r.stats.speech_finals == 2 and r.stats.words == 7
        assert len(r.stats.partial) == 7 and len(r.stats.final) == 2
        assert all(x >= 0 for x in r.stats.partial + r.stats.eos)


def test_hogs_burn_a_core_each_until_stopped() -> None:
    import os
    import time

    tick = os.sysconf("SC_CLK_TCK")

    def cpu(pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    with Hogs(2) as hogs:
        procs = hogs.processes
        assert len(procs) == 2
        time.sleep(0.6)
        assert all(cpu(p.pid) > 0.2 for p in procs)  # busy, not asleep
    assert all(p.poll() is not None for p in procs)  # stopped with the block


def test_server_cpu_counts_the_processes_below_it() -> None:
    """A server with --workers is a supervisor and its workers: its CPU is theirs too."""
    import os
    import time

    before = load.read_cpu(os.getpid())
    with Hogs(1) as hogs:
        assert hogs.processes[0].pid in load.descendants(os.getpid())
        time.sleep(0.6)
        during = load.read_cpu(os.getpid())
    assert during.total - before.total > 0.3  # the child's busy loop, not this sleeping process
