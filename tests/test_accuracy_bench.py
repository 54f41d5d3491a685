"""Tier 3 (real model, real speech): streaming through Session + Batcher matches the full pass.

Runs the accuracy benchmark's own code on a few clips, so a regression in stitching or finalisation fails
CI. Not timed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streamer.bench.accuracy import Wire, evaluate, main, offline_transcript
from streamer.bench.data import join_with_pauses, load_manifest, normalise, wer
from streamer.engine.hama_engine import HamaEngine
from streamer.session import StreamingConfig
from streamer.vad import VadConfig

CLIPS = ["jfk", "LDC93S1", "ls_1089-134691-0001", "vctk_p225_003"]


@pytest.fixture(scope="module")
def engine() -> HamaEngine:
    return HamaEngine()


@pytest.mark.parametrize("wire", [Wire(), Wire("mulaw", 8000)], ids=str)
def test_streaming_equals_offline_on_real_clips(eval_data: Path, engine: HamaEngine, wire: Wire) -> None:
    clips = [c for c in load_manifest(eval_data, "en") if c.name in CLIPS]
    assert len(clips) == len(CLIPS)
    rows, joined = asyncio.run(
        evaluate(engine, clips, StreamingConfig(), long_stream=True, seed=1, verbose=False, wire=wire)
    )
    for row in rows:
        assert row.streaming == row.offline, row.name  # short segments: the final pass is the offline pass
        # A speaker who pauses often mid-sentence (vctk_p225_003, a list read out) costs an early final
        # pass at each such pause: about 3.5x on that clip.
        assert 1.0 < row.result.samples_to_model / row.result.speech_samples < 4.0
    to_model = sum(r.result.samples_to_model for r in rows)
    assert 1.0 < to_model / sum(r.result.speech_samples for r in rows) < 3.0
    assert joined is not None
    assert wer([joined.offline], [joined.streaming]) <= 0.02
    # The built-in model is weaker on telephone audio (0.47 here; 0.45 on the Asterisk prompts).
    assert wer([joined.reference], [joined.streaming]) < (0.4 if wire.rate == 16000 else 0.6)


@pytest.mark.parametrize(
    "wire",
    [
        *(Wire("linear16", rate) for rate in (8000, 11025, 22050, 44100, 48000)),
        Wire("alaw", 8000),
        Wire("mulaw", 16000),
    ],
    ids=str,
)
def test_every_rate_and_encoding_streams_exactly_what_the_offline_pass_reads(
    eval_data: Path, engine: HamaEngine, wire: Wire
) -> None:
    # One resampling path: the offline pass decodes the bytes the stream sends with the server's decoder in
    # one piece, the stream in 20-100 ms frames; the finals must not tell the two apart.
    clips = [c for c in load_manifest(eval_data, "en") if c.name in ("LDC93S1", "jfk")]
    rows, _ = asyncio.run(
        evaluate(engine, clips, StreamingConfig(), long_stream=False, seed=3, verbose=False, wire=wire)
    )
    for row in rows:
        assert row.offline and row.streaming == row.offline, (row.name, row.offline, row.streaming)


def test_short_endpointing_streams_exactly_and_loses_no_accuracy(eval_data: Path, engine: HamaEngine) -> None:
    # LiveKit's 25 ms: utterances end at pauses inside segments; the offline reference cuts there too.
    clips = [c for c in load_manifest(eval_data, "en") if c.name in CLIPS]
    short = StreamingConfig(vad=VadConfig().with_endpointing(25))
    rows, joined = asyncio.run(evaluate(engine, clips, short, long_stream=True, seed=1, verbose=False))
    for row in rows:
        assert row.streaming == row.offline, row.name
    assert joined is not None and joined.streaming == joined.offline
    # The same long stream in whole segments (the default 400 ms) is about as good: within 3 of its 70
    # words here (whole set: 0.2601 against 0.2588, `python -m streamer.bench accuracy --endpointing-ms 25`).
    wire = Wire()
    audio = wire.to_model(wire.encode(join_with_pauses([wire.clip_audio(c) for c in clips], seed=1)))
    whole = offline_transcript(engine, audio, StreamingConfig())
    assert wer([joined.reference], [joined.streaming]) <= wer([joined.reference], [whole]) + 0.045


def test_normaliser() -> None:
    assert normalise("Hello, World!  It's  DONE.") == "hello world it's done"
    assert normalise("זוֹ הָיְיתָה אֲוִוירָה.") == "זו הייתה אווירה"
    assert wer(["a b c"], ["a b c"]) == 0.0
    assert wer(["a b c d"], ["a x c"]) == 0.5


def test_cli_prints_the_summary_line(eval_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["--data", str(eval_data), "--clips", "2", "--no-long-stream", "--quiet", "--rate", "8000"]) == 0
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert "wire=linear16/8000" in out[0]
    last = out[-1]
    assert last.startswith("accuracy: clips=2 offline_wer=")
    fields = dict(kv.split("=") for kv in last.split()[1:])
    # The original five fields come first, in order; the noise and latency fields follow them.
    assert list(fields)[:5] == ["clips", "offline_wer", "streaming_wer", "stream_vs_offline", "compute_ratio"]
    extra = ["false_starts_per_min", "noise_in_speech", "vad_cpu", "final_p50", "final_p95", "endpoints"]
    assert list(fields)[5:11] == extra
    assert all(float(fields[k]) >= 0 for k in [*list(fields)[:5], *extra] if not k.startswith("final_"))
    assert fields["false_starts_per_min"] == "0.00"  # no noise: the noise-only stretch is silence
    assert fields["final_p95"] == "nan"  # --no-long-stream: nothing to simulate


def test_noise_and_vad_options_on_two_clips(eval_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--data", str(eval_data), "--clips", "2", "--quiet", "--noise-only-s", "20"]
    assert main([*argv, "--noise", "pink:10", "--vad", "silero"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "vad=silero noise=pink:10" in out[0]
    fields = dict(kv.split("=") for kv in out[-1].split()[1:])
    assert fields["clips"] == "2" and float(fields["streaming_wer"]) < 0.8
    assert float(fields["stream_vs_offline"]) <= 0.05
    assert 0 < float(fields["final_p50"]) <= float(fields["final_p95"]) < 3.0
    assert int(fields["endpoints"]) >= 2 and 0 <= float(fields["noise_in_speech"]) <= 1
    assert 0 < float(fields["vad_cpu"]) < 0.05
    assert float(fields["false_starts_per_min"]) >= 0


def test_unknown_noise_and_vad_are_refused(eval_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for bad in (["--noise", "purple:10"], ["--noise", "pink"], ["--vad", "psychic"]):
        with pytest.raises(SystemExit) as info:
            main(["--data", str(eval_data), *bad])
        assert info.value.code == 2
    err = capsys.readouterr().err
    assert "KIND:SNR_DB" in err and "invalid choice: 'psychic'" in err
