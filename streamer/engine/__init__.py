"""Model engines. Only this package imports torch or a model runtime.

`load_engine(spec)` turns a model spec into an `Engine`: `builtin:en` (or `hama`) is the built-in English
model, `fake:tone` the model-free test engine, anything else a Hugging Face CTC checkpoint (hub id or local
folder) loaded by `TransformersCTCEngine`. Finals are decoded as `EngineOptions.decoder` says: `auto` picks
the beam search where the checkpoint has a `language_model/` folder (`streamer.engine.lm_folder`) and
greedy decoding otherwise (the built-in model: greedy for now); `beam` insists on the beam search.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from streamer.decoding import BeamOptions
from streamer.engine.base import Engine
from streamer.errors import ConfigError

log = logging.getLogger(__name__)

BUILTIN_EN = "builtin:en"
DECODERS = ("auto", "greedy", "beam")


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
    decoder: str = "auto"
    """How finals are decoded: `greedy`; `beam` (lexicon + word LM beam search: the built-in model's
    word-frequency lexicon, or a transformers checkpoint's `language_model/`); `auto`: beam for the
    built-in model and where a checkpoint has a `language_model/`, greedy otherwise."""
    decoders: tuple[tuple[str, str], ...] = ()
    """Per-model `decoder` overrides, (model name, decoder) pairs; see `for_model`."""
    beam: BeamOptions = field(default_factory=BeamOptions)
    """Search settings; a `language_model/`'s attrs.json sets the LM weights (`streamer.engine.lm_folder`)."""
    lexicon_words: int = 20_000
    """Most frequent English words in the built-in model's lexicon (`decoder="beam"`)."""

    def __post_init__(self) -> None:
        for name, decoder in (("", self.decoder), *self.decoders):
            if decoder not in DECODERS:
                where = f" for model {name!r}" if name else ""
                raise ConfigError(f"decoder{where} must be one of {', '.join(DECODERS)}, not {decoder!r}")
        if self.lexicon_words < 1:
            raise ConfigError("lexicon_words must be at least 1")

    def for_model(self, name: str) -> EngineOptions:
        """These options with `decoder` set to the override for model `name`, where there is one."""
        for model, decoder in self.decoders:
            if model == name:
                return replace(self, decoder=decoder, decoders=())
        return self


def load_engine(spec: str, options: EngineOptions | None = None, name: str | None = None) -> Engine:
    """Load the model named by `spec` (see the module docstring)."""
    options = options or EngineOptions()
    if spec in (BUILTIN_EN, "hama"):
        from streamer.engine.hama_engine import HamaEngine

        # `threads` is the number of model replicas run in parallel (default: the cores, at most 4).
        engine = HamaEngine(name or "hama-en", replicas=options.threads)
        if options.decoder in ("beam", "auto"):
            from streamer.engine.hama_lexicon import beam_decoder

            engine.final_decoder = beam_decoder(engine, options.beam, options.lexicon_words)
            log.info("%s: finals decoded by beam search over %d words", engine.name, options.lexicon_words)
        else:
            log.info("%s: finals decoded greedily", engine.name)
        return engine
    if spec in ("fake:tone", "fake"):
        if options.decoder == "beam":
            raise ConfigError("--decoder beam needs a lexicon; the fake:tone test engine has none")
        from streamer.engine.fake import ToneEngine

        return ToneEngine(max_batch=options.max_batch or 16)
    from streamer.engine.lm_folder import FOLDER, find_language_model, lm_beam_decoder
    from streamer.engine.transformers_ctc import TransformersCTCEngine

    # Found before the model loads, so that a missing one fails fast.
    folder = None if options.decoder == "greedy" else find_language_model(spec)
    if options.decoder == "beam" and folder is None:
        raise ConfigError(
            f"--decoder beam for {spec}: the checkpoint has no {FOLDER}/ folder (pyctcdecode's layout: "
            "attrs.json, unigrams.txt and a KenLM .arpa/.bin file) to build a lexicon from; "
            "use --decoder greedy or auto"
        )
    ctc = TransformersCTCEngine.load(
        spec,
        device=options.device,
        dtype=options.dtype,
        threads=options.threads,
        warmup=options.warmup,
        max_batch=options.max_batch,
        name=name,
    )
    if folder is None:
        log.info(
            "%s: finals decoded greedily%s",
            ctc.name,
            "" if options.decoder == "greedy" else f" (no {FOLDER}/ in the checkpoint)",
        )
        return ctc
    try:
        ctc.final_decoder, info = lm_beam_decoder(ctc, folder, options.beam)
    except BaseException:
        ctc.close()
        raise
    log.info("%s: finals decoded by %s", ctc.name, info)
    return ctc


__all__ = ["BUILTIN_EN", "DECODERS", "Engine", "EngineOptions", "load_engine"]
