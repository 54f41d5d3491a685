"""Keyterms a stream asks the decoder to favour: names, products, jargon (pure logic).

    trie = KeytermTrie.build([Keyterm("Jonatas Grosman"), Keyterm("NASA", 2.0)], pronounce)
    result = beam_decoder.decode(logprobs, keyterms=trie)

`pronounce(word)` gives a word's pronunciations as sequences of the model's unit ids (phonemes from G2P
for the built-in model, characters for a character model); a term's sequences are its words' joined, one
per combination of their pronunciations (at most `max_variants`). Word boundaries are not part of a
term's units: the beam search matches a term whether or not the model marks the boundaries inside it.
Terms no pronunciation can spell are listed in `KeytermTrie.skipped` (and never match).

`parse_keyterm("word:2.5")` reads Deepgram's `keywords` form (`WORD:INTENSIFIER`); `check_keyterms`
enforces `KeytermLimits`, raising `KeytermError` that names the limit.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from streamer.decoding.lexicon import insert_path
from streamer.errors import RequestError

Pronouncer = Callable[[str], list[tuple[int, ...]]]
"""A word's pronunciations in unit ids (empty: it cannot be spelled in the model's units)."""


@dataclass(frozen=True)
class Keyterm:
    text: str
    """As the transcript should spell it; several words for a multi-word term."""
    boost: float = 1.0
    """Multiplies the decoder's per-unit keyterm bonus; negative values suppress the term."""


@dataclass(frozen=True)
class KeytermLimits:
    """What one stream may ask for (server-wide; `--max-keyterms`, `--max-keyterm-chars`)."""

    max_terms: int = 1000
    max_chars: int = 100
    max_words: int = 6
    max_boost: float = 10.0


class KeytermError(RequestError):
    """A keyterm list breaks a limit or is malformed; the message names the parameter and the limit."""


_WORD = re.compile(r"\S+")


def parse_keyterm(text: str, *, with_boost: bool, param: str = "keywords") -> Keyterm:
    """A `keyterm` value (plain text) or, `with_boost`, a `keywords` value `WORD[:BOOST]`."""
    words = " ".join(_WORD.findall(text))
    boost = 1.0
    if with_boost:
        head, sep, tail = words.rpartition(":")
        if sep:
            try:
                boost = float(tail)
            except ValueError:
                raise KeytermError(
                    f"{param}: the boost after ':' must be a number, got {tail[:20]!r}", param
                ) from None
            words = head.strip()
    return Keyterm(words, boost)


def check_keyterms(terms: Sequence[Keyterm], limits: KeytermLimits, param: str = "keyterm") -> None:
    """Raise `KeytermError` when `terms` break `limits` (count, characters, words, boost)."""
    if len(terms) > limits.max_terms:
        raise KeytermError(
            f"{param}: at most {limits.max_terms} keyterms per stream, got {len(terms)}", param
        )
    for term in terms:
        if not term.text:
            raise KeytermError(f"{param}: an empty keyterm", param)
        if len(term.text) > limits.max_chars:
            raise KeytermError(f"{param}: a keyterm may have at most {limits.max_chars} characters", param)
        if len(term.text.split()) > limits.max_words:
            raise KeytermError(f"{param}: a keyterm may have at most {limits.max_words} words", param)
        if not abs(term.boost) <= limits.max_boost:
            raise KeytermError(
                f"{param}: a boost must be between -{limits.max_boost:g} and {limits.max_boost:g}", param
            )


class KeytermTrie:
    """Prefix tree of keyterms over unit ids. `children[node]` maps a unit to the next node; `term[node]`
    is the index (into `terms`) of the term ending there or -1; `gain[node]` the boost of the strongest
    term through the node (the beam search adds its per-unit bonus times that for each unit matched)."""

    def __init__(self) -> None:
        self.children: list[dict[int, int]] = [{}]
        self.term: list[int] = [-1]
        self.gain: list[float] = [0.0]
        self.terms: list[Keyterm] = []
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.terms)

    def add(self, term: Keyterm, units: Sequence[int]) -> None:
        """Add one pronunciation of `term` (call again with the same term for its other ones)."""
        if not units:
            return
        if not self.terms or self.terms[-1] is not term:
            self.terms.append(term)
        index = len(self.terms) - 1

        def grow() -> None:
            self.term.append(-1)
            self.gain.append(term.boost)

        path = insert_path(self.children, units, grow)
        for n in path[1:]:
            self.gain[n] = max(self.gain[n], term.boost)
        node = path[-1]
        old = self.term[node]
        if old < 0 or self.terms[old].boost < term.boost:
            self.term[node] = index

    @classmethod
    def build(cls, terms: Sequence[Keyterm], pronounce: Pronouncer, max_variants: int = 4) -> KeytermTrie:
        """A trie of `terms`, each word pronounced by `pronounce` (see the module docstring)."""
        trie = cls()
        for term in terms:
            per_word = [pronounce(w) for w in term.text.split()]
            if not per_word or any(not p for p in per_word):
                trie.skipped.append(term.text)
                continue
            for combo in itertools.islice(itertools.product(*per_word), max_variants):
                trie.add(term, [u for word in combo for u in word])
        return trie


def char_pronouncer(
    vocabulary: Sequence[str], delimiter: str | None = "|", casing: str | None = None
) -> Pronouncer:
    """Pronunciation of a word for a character model: its letters as vocabulary ids, in the vocabulary's
    case (`casing` "upper"/"lower"; None: decided from the vocabulary's letters)."""
    ids = {t: i for i, t in enumerate(vocabulary) if len(t) == 1 and t != delimiter}
    if casing is None:
        letters = [t for t in ids if t.isalpha()]
        casing = "upper" if letters and sum(t.isupper() for t in letters) > len(letters) / 2 else "lower"

    def pronounce(word: str) -> list[tuple[int, ...]]:
        text = word.upper() if casing == "upper" else word.lower()
        units = [ids.get(c) for c in text]
        if not units or any(u is None for u in units):
            return []
        return [tuple(u for u in units if u is not None)]

    return pronounce
