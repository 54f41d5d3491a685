"""A word lexicon as a prefix tree over a CTC model's units (pure logic, no model).

`lex = Lexicon(); lex.add("cat", [unit ids], log10_frequency)`; the beam search walks `children[node]`
from `ROOT`; `word[node]` is the word ending there (the most frequent of homophones) or -1, and
`lookahead[node]` the best natural-log probability of any word below the node, so that partial words are
ranked by what they can still become. `keys[i]` is how a word language model spells word `i` (its text
unless `add` was given another key, e.g. an upper-case LM word shown in lower case).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

ROOT = 0
LN10 = math.log(10.0)


def insert_path(children: list[dict[int, int]], units: Sequence[int], grow: Callable[[], None]) -> list[int]:
    """Walk `units` down a prefix tree stored as `children[node]` maps, adding the nodes it lacks (calling
    `grow()` once per new node, so that the caller's per-node lists grow alongside); the nodes passed,
    root first."""
    node = ROOT
    path = [ROOT]
    for u in units:
        nxt = children[node].get(u)
        if nxt is None:
            nxt = len(children)
            children[node][u] = nxt
            children.append({})
            grow()
        node = nxt
        path.append(node)
    return path


class Lexicon:
    """Prefix tree of words over unit ids, with unigram log-probabilities (natural log)."""

    def __init__(self) -> None:
        self.children: list[dict[int, int]] = [{}]
        self.word: list[int] = [-1]
        self.lookahead: list[float] = [-math.inf]
        self.words: list[str] = []
        self.logp: list[float] = []
        self.keys: list[str] = []
        self.skipped = 0
        """Words a builder left out (e.g. units the model lacks); for reports."""

    def __len__(self) -> int:
        return len(self.words)

    def add(self, word: str, units: Sequence[int], log10_prob: float, key: str | None = None) -> None:
        """Add `word` spelled as `units` (`key`: the language model's spelling, default `word`); of two
        words with the same units the likelier one is kept."""
        if not units:
            return
        logp = log10_prob * LN10

        def grow() -> None:
            self.word.append(-1)
            self.lookahead.append(-math.inf)

        path = insert_path(self.children, units, grow)
        node = path[-1]
        old = self.word[node]
        if old >= 0:
            if self.logp[old] >= logp:
                return
            self.words[old], self.logp[old], self.keys[old] = word, logp, key or word
        else:
            self.word[node] = len(self.words)
            self.words.append(word)
            self.logp.append(logp)
            self.keys.append(key or word)
        for n in path:
            if logp > self.lookahead[n]:
                self.lookahead[n] = logp

    def find(self, units: Sequence[int]) -> int:
        """Index of the word spelled exactly by `units`, or -1."""
        node = ROOT
        for u in units:
            nxt = self.children[node].get(u)
            if nxt is None:
                return -1
            node = nxt
        return self.word[node]
