"""Tiny randomly initialised CTC checkpoints for the "real tiny model" test tier.

Call `build_tiny_model(folder, arch="hubert", alphabet="hebrew")` to get a folder that
`TransformersCTCEngine.load(str(folder))` (or `AutoModelForCTC.from_pretrained`) loads like a hub checkpoint
made with `save_pretrained`: config + weights + Wav2Vec2Processor (feature extractor and CTC tokenizer).
The weights are random, so transcripts are noise, but geometry, vocabulary, batching and normalisation go
through exactly the code a real checkpoint does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Real wav2vec2-family conv stack (frame_samples 320, receptive field 400), only narrower.
CONV_KERNEL = (10, 3, 3, 3, 3, 2, 2)
CONV_STRIDE = (5, 2, 2, 2, 2, 2, 2)
CONV_DIM = (32,) * 7

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "|")
"""Ids 0-4 in every tiny vocabulary; `<pad>` (id 0) doubles as the CTC blank, as in wav2vec2 checkpoints."""

ALPHABETS = {
    "english": "abcdefghijklmnopqrstuvwxyz'",
    # U+05D0..U+05EA: the 22 letters plus the five final forms (ך ם ן ף ץ), in Unicode order.
    "hebrew": "".join(chr(c) for c in range(0x05D0, 0x05EB)),
}

ARCHS = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "wav2vec2-conformer")

LOGIT_SCALE = 30.0
"""Random-init logits are tiny (~0.05) and nearly tied; scaling lm_head spreads them so argmax comparisons
(for example bfloat16 against float32) are about the model, not about rounding between near-equal values."""


def vocabulary(alphabet: str = "english") -> dict[str, int]:
    """Token -> id for a tiny model's tokenizer (specials first, then the letters)."""
    if alphabet not in ALPHABETS:
        raise ValueError(f"unknown alphabet {alphabet!r}; choose one of {sorted(ALPHABETS)}")
    tokens = [*SPECIALS, *ALPHABETS[alphabet]]
    return {tok: i for i, tok in enumerate(tokens)}


def _config(arch: str, feat_extract_norm: str, vocab_size: int) -> Any:
    import transformers

    common: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "conv_dim": CONV_DIM,
        "conv_kernel": CONV_KERNEL,
        "conv_stride": CONV_STRIDE,
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 2,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        # No dropout or layerdrop surprises even if someone forgets eval().
        "hidden_dropout": 0.0,
        "activation_dropout": 0.0,
        "attention_dropout": 0.0,
        "final_dropout": 0.0,
        "layerdrop": 0.0,
    }
    # Real large (layer-norm) checkpoints also use the pre-LN "stable layer norm" encoder; mirror that.
    stable = feat_extract_norm == "layer"
    if arch == "wav2vec2":
        return transformers.Wav2Vec2Config(
            **common, feat_extract_norm=feat_extract_norm, do_stable_layer_norm=stable
        )
    if arch == "hubert":
        return transformers.HubertConfig(
            **common, feat_extract_norm=feat_extract_norm, do_stable_layer_norm=stable
        )
    if arch == "wavlm":
        # num_buckets/max_bucket_distance drive WavLM's gated relative position bias; defaults (320/800)
        # work but are wasteful at this size.
        return transformers.WavLMConfig(
            **common,
            feat_extract_norm=feat_extract_norm,
            do_stable_layer_norm=stable,
            num_buckets=32,
            max_bucket_distance=100,
        )
    if arch == "data2vec-audio":
        # data2vec-audio always uses layer norm in its feature encoder (its config has no
        # feat_extract_norm), and its positional embedding is a stack of `num_conv_pos_embeddings` convs
        # of width `conv_pos_kernel_size`.
        if feat_extract_norm != "layer":
            raise ValueError("data2vec-audio only has a layer-norm feature encoder")
        common["num_conv_pos_embeddings"] = 2
        return transformers.Data2VecAudioConfig(**common, conv_pos_kernel_size=5)
    if arch == "wav2vec2-conformer":
        # conv_depthwise_kernel_size default (31) is fine; a smaller one keeps the tiny model tiny.
        return transformers.Wav2Vec2ConformerConfig(
            **common,
            feat_extract_norm=feat_extract_norm,
            position_embeddings_type="relative",
            conv_depthwise_kernel_size=7,
        )
    raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS}")


def build_tiny_model(
    folder: Path,
    *,
    alphabet: str = "english",
    arch: str = "wav2vec2",
    feat_extract_norm: str = "layer",
    seed: int = 0,
) -> Path:
    """Write a tiny random CTC checkpoint (model + processor) into `folder` and return `folder`.

    `arch` is one of ARCHS, `alphabet` "english" or "hebrew", `feat_extract_norm` "layer" or "group".
    The same arguments always give the same weights.
    """
    import torch
    import transformers

    if feat_extract_norm not in ("layer", "group"):
        raise ValueError(f"feat_extract_norm must be 'layer' or 'group', not {feat_extract_norm!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = vocabulary(alphabet)

    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tokenizer = transformers.Wav2Vec2CTCTokenizer(
        str(folder / "vocab.json"),
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        word_delimiter_token="|",
        do_lower_case=False,
    )
    # As in released checkpoints: layer-norm models are fine-tuned with attention masks, group-norm ones
    # (wav2vec2-base) are not and must never see padding.
    feature_extractor = transformers.Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=16000,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=feat_extract_norm == "layer",
    )
    processor = transformers.Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer)

    config = _config(arch, feat_extract_norm, len(vocab))
    torch.manual_seed(seed)
    model = transformers.AutoModelForCTC.from_config(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(LOGIT_SCALE)
    model.eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
