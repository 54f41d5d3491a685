"""Model engines. Only this package imports torch or a model runtime.

`load_engine(spec)` turns a model spec into an `Engine`: `builtin:en` (or `hama`) is the built-in English
model, `fake:tone` the model-free test engine, anything else a Hugging Face CTC checkpoint (hub id or local
folder) loaded by `TransformersCTCEngine`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from streamer.engine.base import Engine

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
    """Windows per model call; None: the engine's choice (transformers: 16 on a GPU, 1 on a CPU)."""
    warmup: bool = True


def load_engine(spec: str, options: EngineOptions | None = None, name: str | None = None) -> Engine:
    """Load the model named by `spec` (see the module docstring)."""
    options = options or EngineOptions()
    if spec in (BUILTIN_EN, "hama"):
        from streamer.engine.hama_engine import HamaEngine

        # `threads` is the number of model replicas run in parallel (default: the cores, at most 4).
        return HamaEngine(name or "hama-en", replicas=options.threads)
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
