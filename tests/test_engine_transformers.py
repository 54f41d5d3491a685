"""Tier "real tiny model": TransformersCTCEngine through its real loading code on tiny random checkpoints."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from streamer.engine.base import Engine, FloatArray
from streamer.engine.transformers_ctc import TransformersCTCEngine
from streamer.errors import ConfigError, EngineError, ModelLoadError
from tests.tiny_models import ARCHS, build_tiny_model, vocabulary

# WavLM passes a bool padding mask and a float position bias to torch's attention, which warns; harmless.
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")

LENGTHS = (400, 720, 16000, 16321)
PADDED_ARCHS = {"wav2vec2", "hubert", "wavlm"}


def noise(n: int, seed: int = 0, scale: float = 0.1) -> FloatArray:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    out = {arch: build_tiny_model(root / arch, arch=arch) for arch in ARCHS}
    out["wav2vec2-group"] = build_tiny_model(root / "w2v2-group", feat_extract_norm="group", seed=1)
    out["hebrew"] = build_tiny_model(root / "hebrew", alphabet="hebrew", seed=2)
    return out


@pytest.fixture(scope="module")
def engines(folders: dict[str, Path]) -> Iterator[dict[str, TransformersCTCEngine]]:
    """Engines loaded on first use and shared by the module's tests (loading is the slow part)."""
    loaded: dict[str, TransformersCTCEngine] = {}
    yield loaded
    for engine in loaded.values():
        engine.close()


def get(
    engines: dict[str, TransformersCTCEngine], folders: dict[str, Path], key: str
) -> TransformersCTCEngine:
    if key not in engines:
        engines[key] = TransformersCTCEngine.load(str(folders[key]), device="cpu", max_batch=4)
    return engines[key]


@pytest.mark.parametrize("arch", ARCHS)
def test_loads_each_architecture(arch: str, folders: dict[str, Path], engines: dict) -> None:
    engine = get(engines, folders, arch)
    assert isinstance(engine, Engine)
    assert engine.name == str(folders[arch])
    assert engine.max_batch == 4
    assert (engine.frame_samples, engine.receptive_field) == (320, 400)
    assert list(engine.vocabulary) == list(vocabulary("english"))
    assert engine.blank_id == 0 and engine.vocabulary[0] == "<pad>"
    assert engine.word_delimiter_id == 4 and engine.vocabulary[4] == "|"
    assert engine.device == "cpu" and engine.dtype == "float32"
    assert engine.pads_batches == (arch in PADDED_ARCHS)


@pytest.mark.parametrize("arch", ARCHS)
def test_num_frames_matches_model_and_reference_pipeline(arch: str, folders: dict, engines: dict) -> None:
    engine = get(engines, folders, arch)
    # The reference: the checkpoint's own processor and model, called the documented way.
    processor = transformers.AutoProcessor.from_pretrained(str(folders[arch]))
    model = transformers.AutoModelForCTC.from_pretrained(str(folders[arch])).eval()
    for n in LENGTHS:
        audio = noise(n, seed=n)
        inputs = processor(audio, sampling_rate=16000, return_tensors="pt")
        with torch.inference_mode():
            ref = torch.log_softmax(model(inputs.input_values).logits[0], -1).numpy()
        (ours,) = engine.forward([audio])
        assert ref.shape[0] == engine.num_frames(n), n
        assert ours.shape == ref.shape and ours.dtype == np.float32
        np.testing.assert_allclose(ours, ref, atol=1e-4)
    assert engine.num_frames(399) == 0
    assert engine.forward([noise(399)])[0].shape == (0, len(engine.vocabulary))


@pytest.mark.parametrize("arch", [*ARCHS, "wav2vec2-group"])
def test_batched_forward_equals_single_windows(arch: str, folders: dict, engines: dict) -> None:
    engine = get(engines, folders, arch)
    # Mixed lengths, repeated lengths (equal-length sub-batches), more windows than max_batch, one too short.
    lengths = [8000, 4800, 8000, 4000, 8000, 8000, 8000, 100, 4800, 720]
    windows = [noise(n, seed=i) for i, n in enumerate(lengths)]
    batched = engine.forward(windows)
    assert len(batched) == len(windows)
    for w, out in zip(windows, batched, strict=True):
        (single,) = engine.forward([w])
        assert out.shape == (engine.num_frames(len(w)), len(engine.vocabulary))
        np.testing.assert_allclose(out, single, atol=1e-4)


@pytest.mark.parametrize("key", ["wav2vec2-group", "data2vec-audio", "wav2vec2-conformer"])
def test_models_padding_would_change_run_equal_length_batches(key: str, folders: dict, engines: dict) -> None:
    engine = get(engines, folders, key)
    assert not engine.pads_batches
    # Why: group norm normalises over time, padding included; data2vec-audio's stacked positional convs and
    # the conformer's depthwise conv are unmasked. Each lets zero padding change a padded window's frames.
    # If this starts failing, transformers made padding exact: the model type may join the padded ones.
    model = transformers.AutoModelForCTC.from_pretrained(str(folders[key])).eval()
    short = noise(8000, seed=3)
    normed = (short - short.mean()) / np.sqrt(short.var() + 1e-7)
    padded = np.concatenate([normed, np.zeros(8000, np.float32)])
    mask = torch.from_numpy((np.arange(16000) < 8000)[None].astype(np.int64))
    with torch.inference_mode():
        alone = model(torch.from_numpy(normed[None])).logits[0]
        in_pad = model(torch.from_numpy(padded[None]), attention_mask=mask).logits[0, : alone.shape[0]]
    assert float((alone - in_pad).abs().max()) > 1e-3


def test_normalisation_is_per_window(folders: dict, engines: dict) -> None:
    engine = get(engines, folders, "wav2vec2")
    w = noise(16000, seed=7)
    louder, quieter, shifted = w * np.float32(8), w * np.float32(0.05), w + np.float32(0.3)
    base, louder, quieter, shifted = engine.forward([w, louder, quieter, shifted])
    np.testing.assert_allclose(louder, base, atol=1e-3)
    np.testing.assert_allclose(quieter, base, atol=1e-3)
    np.testing.assert_allclose(shifted, base, atol=1e-3)
    # Silence must not blow up (variance 0 -> eps).
    (silent,) = engine.forward([np.zeros(16000, np.float32)])
    assert np.isfinite(silent).all()


def test_hebrew_vocabulary_and_spell(folders: dict, engines: dict) -> None:
    engine = get(engines, folders, "hebrew")
    vocab = {tok: i for i, tok in enumerate(engine.vocabulary)}
    assert {"א", "ת", "ך", "ם", "ן", "ף", "ץ"} <= vocab.keys()
    assert engine.blank_id == 0 and engine.word_delimiter_id == vocab["|"]
    words = [[vocab[c] for c in "שלום"], [vocab["<s>"], *(vocab[c] for c in "עולם"), vocab["</s>"]]]
    assert engine.spell(words) == ["שלום", "עולם"]
    (out,) = engine.forward([noise(16000)])
    assert out.shape == (49, len(engine.vocabulary))


def test_spell_drops_specials_and_lowercases(folders: dict, engines: dict) -> None:
    engine = get(engines, folders, "wav2vec2")
    vocab = {tok: i for i, tok in enumerate(engine.vocabulary)}
    ids = [vocab["<unk>"], vocab["d"], vocab["o"], vocab["<pad>"], vocab["n"], vocab["'"], vocab["t"]]
    assert engine.spell([ids, []]) == ["don't", ""]
    # Upper-case vocabularies (e.g. facebook/wav2vec2-base-960h) come out lower-cased.
    upper = folders["wav2vec2"].parent / "upper"
    if not upper.exists():
        shutil.copytree(folders["wav2vec2"], upper)
        upper_vocab = {tok.upper() if len(tok) == 1 else tok: i for tok, i in vocabulary("english").items()}
        (upper / "vocab.json").write_text(json.dumps(upper_vocab), encoding="utf-8")
    shouting = TransformersCTCEngine.load(str(upper), warmup=False)
    try:
        ids = [shouting.vocabulary.index(c) for c in "HELLO"]
        assert shouting.spell([ids]) == ["hello"]
    finally:
        shouting.close()


def test_bfloat16_on_cpu_tracks_float32(folders: dict, engines: dict) -> None:
    engine32 = get(engines, folders, "wav2vec2")
    threads = torch.get_num_threads()  # `threads=` is process-wide; put it back for the other tests
    engine16 = TransformersCTCEngine.load(str(folders["wav2vec2"]), dtype="bfloat16", threads=1)
    try:
        assert torch.get_num_threads() == 1
        assert engine16.dtype == "bfloat16"
        windows = [noise(32000, seed=11), noise(16000, seed=12)]
        for a, b in zip(engine32.forward(windows), engine16.forward(windows), strict=True):
            assert b.dtype == np.float32 and b.shape == a.shape
            agree = float(np.mean(a.argmax(-1) == b.argmax(-1)))
            assert agree >= 0.8, agree
    finally:
        engine16.close()
        torch.set_num_threads(threads)


def test_hub_id_offline_fails_fast_with_advice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        TransformersCTCEngine.load("nonexistent-org/nonexistent-model", device="cpu")
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "nonexistent-org/nonexistent-model" in message
    assert "HF_HUB_OFFLINE" in message
    assert "save_pretrained" in message and "folder" in message


@pytest.mark.parametrize("path", ["/nonexistent/model/folder", "./no-such-model-folder", "a/b/c"])
def test_missing_local_folder(path: str) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        TransformersCTCEngine.load(path, device="cpu")


def test_folder_without_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        TransformersCTCEngine.load(str(tmp_path), device="cpu")


def test_checkpoint_without_ctc_head_is_refused(folders: dict, tmp_path: Path) -> None:
    folder = tmp_path / "pretrain-only"
    shutil.copytree(folders["wav2vec2"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["Wav2Vec2ForPreTraining"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="not a CTC checkpoint"):
        TransformersCTCEngine.load(str(folder), device="cpu")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"device": "tpu"}, "device"),
        ({"device": "cuda:x"}, "device"),
        ({"dtype": "float64"}, "dtype"),
        ({"device": "cpu", "dtype": "float16"}, "float16"),
        ({"threads": 0}, "threads"),
        ({"max_batch": 0}, "max_batch"),
    ],
)
def test_bad_settings(kwargs: dict, match: str, folders: dict) -> None:
    with pytest.raises(ConfigError, match=match):
        TransformersCTCEngine.load(str(folders["wav2vec2"]), **kwargs)


def test_batch_size_defaults_to_one_window_on_a_cpu(folders: dict) -> None:
    # On a CPU a batch costs the sum of its windows and finals wait behind it (see CPU_MAX_BATCH).
    engine = TransformersCTCEngine.load(str(folders["wav2vec2"]), device="cpu", warmup=False)
    try:
        assert engine.max_batch == 1 and engine.concurrency == 1
    finally:
        engine.close()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_cuda(folders: dict) -> None:
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match="CUDA"):
            TransformersCTCEngine.load(str(folders["wav2vec2"]), device=device)


def test_forward_errors_and_close(folders: dict) -> None:
    engine = TransformersCTCEngine.load(str(folders["hubert"]), warmup=False)
    assert engine.forward([]) == []
    with pytest.raises(EngineError, match="1-D"):
        engine.forward([np.zeros((2, 16000), np.float32)])
    engine.close()
    engine.close()
    with pytest.raises(EngineError, match="closed"):
        engine.forward([noise(16000)])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_float16_on_cuda(folders: dict, engines: dict) -> None:
    engine32 = get(engines, folders, "wav2vec2")
    engine = TransformersCTCEngine.load(str(folders["wav2vec2"]), device="cuda")
    try:
        assert engine.device.startswith("cuda") and engine.dtype == "float16"
        windows = [noise(32000, seed=5), noise(16000, seed=6), noise(16000, seed=7)]
        for a, b in zip(engine32.forward(windows), engine.forward(windows), strict=True):
            assert b.dtype == np.float32 and b.shape == a.shape
            assert float(np.mean(a.argmax(-1) == b.argmax(-1))) >= 0.8
    finally:
        engine.close()


def test_padded_batches_group_similar_lengths(folders: dict, engines: dict) -> None:
    engine = get(engines, folders, "wav2vec2")
    assert engine.pads_batches
    lengths = [16000, 15000, 4000, 3900, 20000]
    arrays = [noise(n, seed=n) for n in lengths]
    groups = engine._plan(list(range(len(arrays))), arrays)
    # Never pad a window by more than a quarter: a short partial window never rides with a long pass.
    assert [[lengths[i] for i in g] for g in groups] == [[20000, 16000], [15000], [4000, 3900]]
    together = engine.forward(arrays)
    for w, out in zip(arrays, together, strict=True):
        np.testing.assert_allclose(out, engine.forward([w])[0], atol=1e-4)
