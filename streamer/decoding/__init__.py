"""Decoding CTC log-probs into words beyond greedy: a lexicon and word-LM prefix beam search with keyterm
boosting (pure logic).

`BeamDecoder(lexicon, blank_id=..., delimiter_id=..., options=BeamOptions())` decodes like
`streamer.ctc.greedy_words` (see `streamer.decoding.beam`); anything with the same `decode` method is a
`WordDecoder`, which `streamer.transcript.render_words` takes. An engine that offers one for its finals
sets `final_decoder` (see `final_decoder`). Keyterms (`streamer.decoding.keyterms`) are compiled per model
by a `KeytermCompiler` (`keyterm_compiler(engine)`) and passed to `decode` per call.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Protocol

from streamer.ctc import FloatArray
from streamer.decoding.beam import BeamDecoder, BeamOptions, BeamResult, BeamWord
from streamer.decoding.keyterms import (
    Keyterm,
    KeytermError,
    KeytermLimits,
    KeytermTrie,
    Pronouncer,
    char_pronouncer,
)
from streamer.decoding.lexicon import Lexicon


class WordDecoder(Protocol):
    def decode(
        self,
        logprobs: FloatArray,
        *,
        frame_offset: int = 0,
        prev_token: int | None = None,
        keyterms: KeytermTrie | None = None,
    ) -> BeamResult: ...


class _CtcEngine(Protocol):
    @property
    def vocabulary(self) -> object: ...
    @property
    def blank_id(self) -> int: ...
    @property
    def word_delimiter_id(self) -> int | None: ...


def final_decoder(engine: object) -> WordDecoder | None:
    """The decoder an engine's finals use (its optional `final_decoder` attribute); None: greedy."""
    decoder: WordDecoder | None = getattr(engine, "final_decoder", None)
    return decoder


class KeytermCompiler:
    """One model's keyterm support: `compile(terms)` (thread-safe; pronunciations are cached) gives the
    trie a stream passes to `decoder` for its finals; `defaults` are the server's own terms for the model,
    which every stream of it gets besides its own."""

    def __init__(
        self,
        decoder: WordDecoder,
        pronounce: Pronouncer,
        limits: KeytermLimits,
        defaults: Sequence[Keyterm] = (),
    ) -> None:
        self.decoder = decoder
        self.limits = limits
        self.defaults = tuple(defaults)
        self._pronounce = pronounce
        self._known: dict[str, list[tuple[int, ...]]] = {}
        self._defaults_trie: KeytermTrie | None = None
        self._lock = threading.Lock()

    def pronounce(self, word: str) -> list[tuple[int, ...]]:
        key = word.lower()
        with self._lock:
            hit = self._known.get(key)
        if hit is None:
            hit = self._pronounce(word)
            with self._lock:
                self._known[key] = hit
        return hit

    def compile(self, terms: Sequence[Keyterm]) -> KeytermTrie | None:
        """The trie of the defaults plus `terms` (None when both are empty)."""
        every = [*self.defaults, *terms]
        if not every:
            return None
        if not terms:
            # Every stream without its own keyterms shares one trie of the server's (never modified).
            if self._defaults_trie is None:
                self._defaults_trie = KeytermTrie.build(every, self.pronounce)  # a race builds it twice
            return self._defaults_trie
        return KeytermTrie.build(every, self.pronounce)


# Without a lexicon every word is out of the lexicon at the same cost: a plain CTC prefix beam search,
# which keyterms then steer.
PLAIN_BEAM = BeamOptions(lm_weight=0.0, word_bonus=0.0, oov_logp=0.0, split_penalty=math.inf)


def keyterm_compiler(
    engine: _CtcEngine, limits: KeytermLimits | None = None, defaults: Sequence[Keyterm] = ()
) -> KeytermCompiler:
    """How `engine`'s streams get keyterms: its final decoder (else a plain beam search over its
    vocabulary) and its `pronounce(word)` (else its vocabulary's characters); `defaults`: the server's."""
    vocabulary = list(engine.vocabulary)  # type: ignore[call-overload]
    delimiter = engine.word_delimiter_id
    decoder = final_decoder(engine)
    if decoder is None:
        specials = frozenset(i for i, t in enumerate(vocabulary) if t.startswith("<") and t.endswith(">"))
        decoder = BeamDecoder(
            Lexicon(),
            blank_id=engine.blank_id,
            delimiter_id=delimiter,
            options=PLAIN_BEAM,
            ignore=specials - {delimiter},
        )
    pronounce: Pronouncer | None = getattr(engine, "pronounce", None)
    if pronounce is None:
        pronounce = char_pronouncer(vocabulary, vocabulary[delimiter] if delimiter is not None else None)
    return KeytermCompiler(decoder, pronounce, limits or KeytermLimits(), defaults)


__all__ = [
    "BeamDecoder",
    "BeamOptions",
    "BeamResult",
    "BeamWord",
    "Keyterm",
    "KeytermCompiler",
    "KeytermError",
    "KeytermLimits",
    "KeytermTrie",
    "Lexicon",
    "WordDecoder",
    "final_decoder",
    "keyterm_compiler",
]
