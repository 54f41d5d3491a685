"""A lexicon over a character vocabulary (wav2vec2-style CTC models), from a word list (pure logic).

    lexicon = char_lexicon(vocabulary, [("HELLO", -3.2), ...], skip={blank, delimiter}, spell=engine.spell)

Each word is spelled with the vocabulary's one-character tokens, in the vocabulary's case: a vocabulary
with only upper-case letters gets upper-cased words, one with only lower-case letters lower-cased ones,
a mixed one the words as given. Words with a character the vocabulary lacks are left out and counted in
`Lexicon.skipped`. The word as given stays the lexicon's key (what the language model knows); the text
shown is `spell`'s for its tokens, the same text greedy decoding gives those tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence

from streamer.decoding.lexicon import Lexicon

Speller = Callable[[Sequence[Sequence[int]]], list[str]]


def char_lexicon(
    vocabulary: Sequence[str],
    words: Iterable[tuple[str, float]],
    *,
    skip: Collection[int] = (),
    spell: Speller | None = None,
) -> Lexicon:
    """Lexicon of `words` ((word, log10 probability) pairs) in ids of `vocabulary`; `skip`: ids that
    are never part of a word (blank, word delimiter, special tokens); `spell`: the text shown for a
    word's ids (default: the word as given)."""
    ids = {t: i for i, t in enumerate(vocabulary) if len(t) == 1 and i not in skip}
    letters = [t for t in ids if t.isalpha()]
    has_lower = any(t.islower() for t in letters)
    has_upper = any(t.isupper() for t in letters)
    case: Callable[[str], str] = (
        str.upper if has_upper and not has_lower else str.lower if has_lower and not has_upper else str
    )
    lexicon = Lexicon()
    entries: list[tuple[str, list[int], float]] = []
    for word, log10_prob in words:
        units = [ids.get(ch, -1) for ch in case(word)]
        if not units or min(units) < 0:
            lexicon.skipped += 1
            continue
        entries.append((word, units, log10_prob))
    shown = spell([units for _, units, _ in entries]) if spell is not None else [w for w, _, _ in entries]
    for (word, units, log10_prob), text in zip(entries, shown, strict=True):
        lexicon.add(text, units, log10_prob, key=word)
    return lexicon
