"""silero-vad as the segmenter's detector: the numpy network against the package's own TorchScript model,
speech and non-speech on real audio, and `--vad silero` end to end through a real server."""

from __future__ import annotations

import asyncio
import io
import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect

from streamer.bench.data import wer
from streamer.cli import build_config
from streamer.config import ModelSpec, ServerConfig
from streamer.errors import ConfigError
from streamer.transcribe import read_audio, transcribe_samples, vad_segments
from streamer.vad import Segmenter, SegmentStart, VadConfig
from streamer.vad_silero import (
    CHUNK,
    SileroDetector,
    load_silero_model,
    read_torchscript_params,
    silero_model_path,
)
from tests.test_server import config, drain, final_words, pcm16, send_audio, serve

SR = 16000
JFK = (
    "and so my fellow americans ask not what your country can do for you ask what you can do for your country"
)


@pytest.fixture(scope="module")
def jfk(eval_data: Path) -> np.ndarray:
    return read_audio(eval_data / "en" / "jfk.wav")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_numpy_network_equals_the_packaged_torchscript_model(jfk: np.ndarray) -> None:
    torch = pytest.importorskip("torch")
    reference = torch.jit.load(str(silero_model_path()))
    detector = SileroDetector()
    ours, theirs = [], []
    # The first 6 s (speech and a pause); the profiling executor's first runs are slow, so it is off.
    with torch.no_grad(), torch.jit.optimized_execution(False):
        for i in range(0, 6 * SR - CHUNK + 1, CHUNK):
            chunk = jfk[i : i + CHUNK]
            detector.is_speech(chunk)
            ours.append(detector.probability)
            theirs.append(float(reference(torch.from_numpy(chunk.copy()), SR)))
    assert np.max(np.abs(np.array(ours) - np.array(theirs))) < 1e-4
    assert 0.3 < np.mean(np.array(theirs) >= 0.5) < 0.95  # a real mix of speech and pauses


def test_loading_touches_neither_torch_threads_nor_the_package() -> None:
    # Importing the silero_vad package sets torch's process-wide thread count; we only read its file.
    code = (
        "import sys, torch; torch.set_num_threads(2); "
        "from streamer.vad_silero import SileroDetector; import numpy as np; "
        "SileroDetector().is_speech(np.zeros(1024, np.float32)); "
        "print(torch.get_num_threads(), 'silero_vad' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == ["2", "False"]


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_speech_starts_segments_at_every_frame_size(jfk: np.ndarray, frame_ms: int) -> None:
    vad = VadConfig(frame_ms=frame_ms)
    segments = vad_segments(jfk, vad, SileroDetector())
    assert 2 <= len(segments) <= 6  # jfk.wav: three phrases with two long pauses
    covered = sum(len(audio) for _, audio in segments)
    assert 0.5 * len(jfk) < covered < len(jfk)
    assert segments[0][0] < 1.0 * SR  # the first words start within the first second


@pytest.mark.parametrize("level_db", [-100.0, -60.0, -45.0])
def test_silence_and_quiet_white_noise_are_not_speech(level_db: float) -> None:
    rng = np.random.default_rng(7)
    noise = (10 ** (level_db / 20) * rng.standard_normal(20 * SR)).astype(np.float32)
    detector = SileroDetector()
    frames = [detector.is_speech(noise[i : i + 480]) for i in range(0, len(noise), 480)]
    assert sum(frames) == 0
    seg = Segmenter(VadConfig(), SileroDetector())
    assert not [e for e in seg.push(noise) if isinstance(e, SegmentStart)]


def test_the_offline_reference_uses_the_given_detector(jfk: np.ndarray) -> None:
    from streamer.engine.fake import ToneEngine

    # The tone engine hears nothing in speech, but the segments it is run on are the detector's.
    engine = ToneEngine()
    silero = transcribe_samples(engine, jfk, VadConfig(), detector=SileroDetector())
    starts = [s for s, _ in vad_segments(jfk, VadConfig(), SileroDetector())]
    assert [round(r.start * SR) for r in silero] == starts


def test_a_crafted_model_file_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    path = tmp_path / "evil.jit"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("m/data.pkl", pickle.dumps(Evil()))
    with pytest.raises(ConfigError, match="unexpected global"):
        read_torchscript_params(path)
    (tmp_path / "junk.jit").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="cannot read"):
        read_torchscript_params(tmp_path / "junk.jit")
    empty = tmp_path / "empty.jit"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("m/other", io.BytesIO(b"x").getvalue())
    with pytest.raises(ConfigError, match="not a TorchScript archive"):
        read_torchscript_params(empty)


def test_threshold_is_checked() -> None:
    with pytest.raises(ConfigError, match="between 0 and 1"):
        SileroDetector(threshold=1.5, model=load_silero_model())


def test_vad_choice_from_flags_and_config() -> None:
    assert build_config(["--vad", "silero"], {}).vad == "silero"
    assert build_config([], {"STREAMER_VAD": "Silero"}).vad == "silero"
    with pytest.raises(ConfigError, match="silero") as info:
        build_config(["--vad", "cobra"], {})
    assert "auto, webrtc, energy, silero" in str(info.value) and "'cobra'" in str(info.value)
    with pytest.raises(ConfigError, match="vad must be one of"):
        ServerConfig(vad="cobra")  # type: ignore[arg-type]
    cfg = ServerConfig(models=(ModelSpec("en", "builtin:en"), ModelSpec("xx", "fake:tone")), vad="silero")
    assert [cfg.detector_kind(m) for m in cfg.models] == ["silero", "silero"]
    auto = ServerConfig(models=cfg.models)
    assert [auto.detector_kind(m) for m in auto.models] == ["webrtc", "energy"]


async def test_server_with_silero_transcribes_real_speech(jfk: np.ndarray) -> None:
    from streamer.engine.hama_engine import HamaEngine

    engine = HamaEngine(replicas=1)
    cfg = config(models=(ModelSpec("en", "builtin:en"),), vad="silero")
    try:
        offline = transcribe_samples(engine, jfk, VadConfig(), detector=SileroDetector())
        async with (
            serve(cfg, {"en": engine}) as server,
            asyncio.timeout(60),
            connect(server.ws_url("vad_events=true")) as ws,
        ):
            await send_audio(ws, pcm16(np.concatenate([jfk, np.zeros(SR, np.float32)])))
            await ws.send(json.dumps({"type": "CloseStream"}))
            messages = await drain(ws)
    finally:
        engine.close()
    words = final_words(messages)
    # The stream's finals are the offline pass over the same silero segments, word for word.
    assert words == " ".join(r.text for r in offline if r.text).split()
    assert wer([JFK], [" ".join(words)]) < 0.4  # the built-in model's own accuracy, as with webrtcvad
    assert any(m["type"] == "SpeechStarted" for m in messages)


def test_cost_benchmark_prints_both_detectors(capsys: pytest.CaptureFixture[str]) -> None:
    from streamer.bench.vadcost import main

    assert main(["--seconds", "3", "--batch", "1,4"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    fields = dict(kv.split("=") for kv in last.split()[1:])
    assert list(fields) == ["webrtc", "silero", "silero_batched_1", "silero_batched_4"]
    assert all(float(v) > 0 for v in fields.values())
