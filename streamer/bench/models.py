"""Random-weight CTC models with the published shapes of reference checkpoints, built once and cached.

    folder = ensure_model("xlsr-53")      # ~/.cache/streamer-bench/xlsr-53, built on first use
    python -m streamer.bench models --build xlsr-53 xls-r-1b     # build ahead (progress on stderr)

No weights can be downloaded here, and speed does not depend on weight values, so the benchmarks time
models whose architecture matches the real ones (layers, widths, heads, conv stack, layer-norm encoder),
with random weights and an English character vocabulary, saved with `save_pretrained` (model + processor)
so that `TransformersCTCEngine.load(folder)`, `python -m streamer --model en=FOLDER` and transformers'
`pipeline` load them like a hub checkpoint. Their transcripts are noise: compare them with each other
(agreement), never with a reference text.

The cache folder is `$STREAMER_BENCH_CACHE`, else `~/.cache/streamer-bench`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONV_KERNEL = (10, 3, 3, 3, 3, 2, 2)
CONV_STRIDE = (5, 2, 2, 2, 2, 2, 2)
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "|")
LETTERS = "'abcdefghijklmnopqrstuvwxyz"
HEAD_SCALE = 30.0
"""Random heads give tiny, nearly tied logits; scaling the head makes each frame's argmax a clear choice, so
that two implementations of the same forward pass agree on it rather than on rounding noise."""
BLANK_BIAS, SPACE_BIAS = 1.5, 1.0
"""Head biases (in standard deviations of the logits) for the blank and `|`: a trained CTC model mostly
emits blanks and separates words, so transcripts come out as words, and WER between two systems running
the model means something."""
FORMAT = 2
"""Bumped when the way models are built changes: older cached folders are rebuilt."""


@dataclass(frozen=True)
class Architecture:
    """A wav2vec2 encoder's shape. `reference` names the published checkpoint it copies."""

    name: str
    reference: str
    layers: int
    hidden: int
    heads: int
    intermediate: int
    conv_dim: int = 512
    pos_conv: int = 128
    pos_groups: int = 16

    def config_kwargs(self, vocab_size: int) -> dict[str, Any]:
        return {
            "vocab_size": vocab_size,
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "intermediate_size": self.intermediate,
            "conv_dim": (self.conv_dim,) * len(CONV_KERNEL),
            "conv_kernel": CONV_KERNEL,
            "conv_stride": CONV_STRIDE,
            "conv_bias": True,
            "num_conv_pos_embeddings": self.pos_conv,
            "num_conv_pos_embedding_groups": self.pos_groups,
            # The large checkpoints' encoder: layer norm in the feature encoder and pre-LN transformer
            # layers; it is also what lets windows of different lengths share a padded batch.
            "feat_extract_norm": "layer",
            "do_stable_layer_norm": True,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "ctc_loss_reduction": "mean",
            "architectures": ["Wav2Vec2ForCTC"],
        }


ARCHITECTURES = {
    a.name: a
    for a in (
        Architecture("xlsr-53", "facebook/wav2vec2-large-xlsr-53 (+ English fine-tune)", 24, 1024, 16, 4096),
        Architecture("xls-r-1b", "facebook/wav2vec2-xls-r-1b (+ Hebrew fine-tune)", 48, 1280, 16, 5120),
        # wav2vec2-base's widths with the large models' layer-norm encoder: a mid-size model that batches.
        Architecture("base", "facebook/wav2vec2-base widths, layer-norm encoder", 12, 768, 12, 3072),
        # For quick runs and CI-sized checks: same conv geometry, a fraction of the compute.
        Architecture("small", "quick-run model (not a published checkpoint)", 4, 256, 4, 1024, 256, 64, 8),
        # For `--quick` checks of a benchmark's own code in seconds on a CPU (test-sized widths).
        Architecture("tiny", "test-sized model (not a published checkpoint)", 2, 32, 2, 64, 32, 16, 2),
    )
}


def cache_dir() -> Path:
    return Path(os.environ.get("STREAMER_BENCH_CACHE") or Path.home() / ".cache" / "streamer-bench")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def vocabulary() -> dict[str, int]:
    """English characters after wav2vec2's special tokens; `<pad>` (0) is the CTC blank, `|` the space."""
    return {token: i for i, token in enumerate((*SPECIAL_TOKENS, *LETTERS))}


def make_processor(folder: Path) -> Any:
    """A `Wav2Vec2Processor` (feature extractor + CTC tokenizer) for `vocabulary()`; writes the tokenizer's
    vocab.json into `folder`, which must exist."""
    import transformers

    (folder / "vocab.json").write_text(json.dumps(vocabulary()), encoding="utf-8")
    tokenizer = transformers.Wav2Vec2CTCTokenizer(
        str(folder / "vocab.json"),
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        word_delimiter_token="|",
        do_lower_case=False,
    )
    extractor = transformers.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    )
    return transformers.Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)


def random_model(arch: Architecture, *, seed: int = 0, device: str = "cpu") -> Any:
    """A random-weight `Wav2Vec2ForCTC` of `arch` in float32, initialised directly on `device` (on a GPU
    that takes a second where a CPU takes a minute for the 1B model), in eval mode, its head made to emit
    words (HEAD_SCALE, BLANK_BIAS, SPACE_BIAS)."""
    import torch
    import transformers

    vocab = vocabulary()
    config = transformers.Wav2Vec2Config(**arch.config_kwargs(len(vocab)))
    torch.manual_seed(seed)
    with torch.device(device):
        model = transformers.Wav2Vec2ForCTC(config)
    model.eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(HEAD_SCALE)
        spread = float(model(torch.randn(1, 16000, device=device)).logits.std())
        model.lm_head.bias[vocab["<pad>"]] += BLANK_BIAS * spread
        model.lm_head.bias[vocab["|"]] += SPACE_BIAS * spread
    return model


def build_model(arch: Architecture, folder: Path, *, seed: int = 0, quiet: bool = False) -> Path:
    """Write a random-weight checkpoint of `arch` (model + processor) into `folder` (replaced if there)."""
    started = time.perf_counter()
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    make_processor(partial).save_pretrained(partial)
    if not quiet:
        _log(f"building {arch.name} ({arch.layers} layers, hidden {arch.hidden}): initialising weights ...")
    model = random_model(arch, seed=seed)
    params = sum(p.numel() for p in model.parameters())
    if not quiet:
        _log(f"building {arch.name}: {params / 1e6:.0f}M parameters; saving to {folder} ...")
    model.save_pretrained(partial)
    (partial / "BENCH_MODEL.json").write_text(
        json.dumps(
            {
                "arch": arch.name,
                "reference": arch.reference,
                "parameters": params,
                "seed": seed,
                "format": FORMAT,
            }
        ),
        encoding="utf-8",
    )
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    if not quiet:
        _log(f"building {arch.name}: done in {time.perf_counter() - started:.0f} s")
    return folder


def ensure_model(name: str, *, quiet: bool = False) -> Path:
    """The cached folder of architecture `name` (see ARCHITECTURES), built first if missing."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    folder = cache_dir() / name
    info = folder / "BENCH_MODEL.json"
    if not info.is_file() or json.loads(info.read_text(encoding="utf-8")).get("format") != FORMAT:
        build_model(ARCHITECTURES[name], folder, quiet=quiet)
    return folder


def parameters(folder: Path) -> int:
    """Parameter count recorded when the model was built."""
    info = json.loads((folder / "BENCH_MODEL.json").read_text(encoding="utf-8"))
    return int(info["parameters"])


def main(argv: list[str] | None = None) -> int:
    """`python -m streamer.bench models [--build NAME ...]`: list the architectures, build into the cache."""
    parser = argparse.ArgumentParser(prog="python -m streamer.bench models", description=__doc__)
    parser.add_argument("--build", nargs="*", default=[], metavar="NAME", help="build these (or all: 'all')")
    args = parser.parse_args(argv)
    names = list(ARCHITECTURES) if "all" in args.build else args.build
    for name in names:
        ensure_model(name)
    for arch in ARCHITECTURES.values():
        folder = cache_dir() / arch.name
        built = (folder / "BENCH_MODEL.json").is_file()
        size = f"{parameters(folder) / 1e6:.0f}M params at {folder}" if built else "not built"
        print(
            f"{arch.name:<9} layers={arch.layers:<3} hidden={arch.hidden:<5} heads={arch.heads:<3} "
            f"ffn={arch.intermediate:<5} conv={arch.conv_dim}x7  {size}  ({arch.reference})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
