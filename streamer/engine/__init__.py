"""Model engines. Only this package imports torch or a model runtime.

`load_engine(spec)` turns a model spec into an `Engine`: `builtin:en` (or `hama`) is the built-in English
model, `fake:tone` the model-free test engine, anything else a Hugging Face CTC checkpoint (hub id or local
folder) loaded by `TransformersCTCEngine`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from streamer.decoding import BeamOptions
from streamer.engine.base import Engine
from streamer.errors import ConfigError

log = logging.getLogger(__name__)

BUILTIN_EN = "builtin:en"


@dataclass(frozen=True)
class EngineOptions:
    """How to run a model: device auto|cpu|cuda[:N], dtype auto|float32|bfloat16|float16 (transformers);
    `threads`: torch threads for transformers models, parallel replicas for the built-in model."""

    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None
    max_batch: int | None = None
    """Windows per model call; None: the engine's choice (transformers: timed at start-up on a GPU, 1 on a
    CPU)."""
    warmup: bool = True
    decoder: str = "greedy"
    """How finals are decoded: `greedy`, or `beam` (lexicon + word LM beam search; built-in model only)."""
    beam: BeamOptions = field(default_factory=BeamOptions)
    lexicon_words: int = 20_000
    """Most frequent English words in the built-in model's lexicon (`decoder="beam"`)."""

    def __post_init__(self) -> None:
        if self.decoder not in ("greedy", "beam"):
            raise ConfigError(f"decoder must be greedy or beam, not {self.decoder!r}")
        if self.lexicon_words < 1:
            raise ConfigError("lexicon_words must be at least 1")


def load_engine(spec: str, options: EngineOptions | None = None, name: str | None = None) -> Engine:
    """Load the model named by `spec` (see the module docstring)."""
    options = options or EngineOptions()
    if spec in (BUILTIN_EN, "hama"):
        from streamer.engine.hama_engine import HamaEngine

        # `threads` is the number of model replicas run in parallel (default: the cores, at most 4).
        engine = HamaEngine(name or "hama-en", replicas=options.threads)
        if options.decoder == "beam":
            from streamer.engine.hama_lexicon import beam_decoder

            engine.final_decoder = beam_decoder(engine, options.beam, options.lexicon_words)
        return engine
    if options.decoder != "greedy":
        raise ConfigError(f"--decoder {options.decoder} needs a lexicon: only {BUILTIN_EN} has one so far")
    if spec in ("fake:tone", "fake"):
        from streamer.engine.fake import ToneEngine

        return ToneEngine(max_batch=options.max_batch or 16)
    from streamer.engine.transformers_ctc import TransformersCTCEngine

    return TransformersCTCEngine.load(
        spec,
        device=options.device,
        dtype=options.dtype,
        threads=options.threads,
        warmup=options.warmup,
        max_batch=options.max_batch,
        name=name,
    )


__all__ = ["BUILTIN_EN", "Engine", "EngineOptions", "load_engine"]
