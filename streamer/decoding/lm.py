"""Word language models for the beam search (pure logic): a unigram table and an ARPA n-gram reader.

    lm = ArpaLM.from_lines(open("lm.arpa", encoding="utf-8"))   # or UnigramLM(words, logps)
    state = lm.start()
    logp, state = lm.score(state, lm.word_id("cat"))           # natural log; word_id -1: an unknown word
    total = logp + lm.end(state)                                 # end of the utterance

Every `WordLM` scores words by id in natural-log probability and keeps its context in a hashable state
(the last words that still matter); `BeamDecoder(lexicon, lm=...)` uses it to score each finished word.
A KenLM model (binary files) is wrapped the same way in `streamer.engine.lm_folder`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from typing import Protocol

LN10 = math.log(10.0)
UNKNOWN = "<unk>"
BOS = "<s>"
EOS = "</s>"
MISSING_UNK_LOG10 = -100.0
"""log10 probability of `<unk>` in an ARPA model that does not list it: KenLM's default, so that the same
file scores the same with or without the kenlm module."""


class WordLM(Protocol):
    """A word language model: `start()`, `score(state, word_id)`, `end(state)`; natural-log probabilities."""

    order: int
    """1 for a unigram model, n for an n-gram model."""

    def word_id(self, word: str) -> int:
        """The model's id of `word`, or -1 where the model does not know it."""
        ...

    def start(self) -> Hashable:
        """The context at the start of an utterance."""
        ...

    def score(self, state: Hashable, word_id: int) -> tuple[float, Hashable]:
        """(log p(word | state), the state after it); `word_id` -1 scores the model's unknown word."""
        ...

    def end(self, state: Hashable) -> float:
        """log p(end of utterance | state); 0 where utterance boundaries are not scored."""
        ...

    def unigram(self, word_id: int) -> float:
        """log p(word) without context (-1: the unknown word); ranks partial words in the search."""
        ...


class UnigramLM:
    """Context-free word log-probabilities: `UnigramLM(words, logps)` (natural log); unknown words 0."""

    order = 1

    def __init__(self, words: Sequence[str], logps: Sequence[float]) -> None:
        self._ids = {w: i for i, w in reversed(list(enumerate(words)))}  # the first of duplicates wins
        self._logp = logps  # kept by reference: a lexicon's table stays live as the lexicon grows

    def word_id(self, word: str) -> int:
        """Index of `word` in the table, or -1."""
        return self._ids.get(word, -1)

    def start(self) -> Hashable:
        """The only state: no context."""
        return ()

    def score(self, state: Hashable, word_id: int) -> tuple[float, Hashable]:
        """(the word's log-probability, no context); 0 for an unknown word: the decoder adds its own
        `oov_logp` to every unknown word, which then is the whole of its score."""
        return (self._logp[word_id] if word_id >= 0 else 0.0), ()

    def end(self, state: Hashable) -> float:
        """0: a unigram model does not score utterance ends."""
        return 0.0

    def unigram(self, word_id: int) -> float:
        """Same as `score` (there is no context)."""
        return self._logp[word_id] if word_id >= 0 else 0.0


class ArpaError(ValueError):
    """An ARPA file that does not follow the format."""


class ArpaLM:
    """A back-off n-gram model read from ARPA text (log10 in the file, natural log out).

    `ArpaLM.from_lines(lines, score_boundary=True)`: with `score_boundary` utterances start after `<s>`
    and `end` scores `</s>`; without, they start with no context and `end` is 0 (pyctcdecode's
    `score_boundary`). p(w | h) is the n-gram's probability where (h, w) is listed, else
    backoff(h) * p(w | h without its first word), as the format defines. A word the model does not know
    scores as `<unk>` (-100 in log10 where the file has no `<unk>`, as KenLM does). Everything is held in
    Python dictionaries: fine for small models (a few million n-grams take seconds and hundreds of MB);
    use KenLM's binary format for large ones.
    """

    def __init__(
        self,
        order: int,
        words: list[str],
        grams: dict[tuple[int, ...], tuple[float, float]],
        *,
        score_boundary: bool = True,
    ) -> None:
        """Use `from_lines`; `grams` maps word-id tuples to (log10 p, log10 backoff)."""
        self.order = order
        self.words = words
        self._ids = {w: i for i, w in enumerate(words)}
        self._grams = grams
        self.score_boundary = score_boundary
        unk = self._ids.get(UNKNOWN)
        self._unk = unk if unk is not None else -1
        self._unk_log10 = grams[(unk,)][0] if unk is not None else MISSING_UNK_LOG10
        self._bos = self._ids.get(BOS, -1)
        self._eos = self._ids.get(EOS, -1)
        self._cache: dict[tuple[Hashable, int], tuple[float, Hashable]] = {}

    @classmethod
    def from_lines(cls, lines: Iterable[str], *, score_boundary: bool = True) -> ArpaLM:
        """Parse ARPA text (an open file or a list of lines); raises ArpaError on a malformed model."""
        counts: dict[int, int] = {}
        words: list[str] = []
        ids: dict[str, int] = {}
        grams: dict[tuple[int, ...], tuple[float, float]] = {}
        section = ""  # "", "data", or the order being read
        n = 0
        seen_end = False
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line:
                continue
            if line == "\\data\\":
                section = "data"
                continue
            if line == "\\end\\":
                seen_end = True
                break
            if line.startswith("\\") and line.endswith("-grams:"):
                try:
                    n = int(line[1 : -len("-grams:")])
                except ValueError as exc:
                    raise ArpaError(f"line {number}: bad section header {line!r}") from exc
                if n not in counts:
                    raise ArpaError(f"line {number}: {n}-grams not announced in \\data\\")
                section = "grams"
                continue
            if section == "data":
                if line.startswith("ngram "):
                    order_text, _, count_text = line[len("ngram ") :].partition("=")
                    try:
                        counts[int(order_text)] = int(count_text)
                    except ValueError as exc:
                        raise ArpaError(f"line {number}: bad count line {line!r}") from exc
                continue
            if section != "grams":
                continue  # text before \data\ is a comment
            fields = line.split()
            if len(fields) not in (n + 1, n + 2):
                raise ArpaError(f"line {number}: expected a log10 probability, {n} words, optional backoff")
            try:
                logp = float(fields[0])
                backoff = float(fields[n + 1]) if len(fields) == n + 2 else 0.0
            except ValueError as exc:
                raise ArpaError(f"line {number}: not a number in {line!r}") from exc
            key = []
            for w in fields[1 : n + 1]:
                i = ids.get(w)
                if i is None:
                    if n > 1:
                        raise ArpaError(f"line {number}: word {w!r} is not among the 1-grams")
                    i = ids[w] = len(words)
                    words.append(w)
                key.append(i)
            grams[tuple(key)] = (logp, backoff)
        if not counts or not words:
            raise ArpaError("no \\data\\ section or no 1-grams: not an ARPA model")
        if not seen_end:
            raise ArpaError("no \\end\\ line: the file is cut short")
        return cls(max(counts), words, grams, score_boundary=score_boundary)

    def word_id(self, word: str) -> int:
        """The word's id, or -1 (`<s>`, `</s>` and `<unk>` too: they are never words)."""
        i = self._ids.get(word, -1)
        return -1 if i in (self._bos, self._eos, self._unk) else i

    def start(self) -> Hashable:
        """`(<s>,)` with `score_boundary` (where the model has `<s>`), else no context."""
        return (self._bos,) if self.score_boundary and self._bos >= 0 else ()

    def log10(self, context: tuple[int, ...], word: int) -> float:
        """log10 p(word | context) with back-off; `word` -1: `<unk>`."""
        if word < 0:
            word = self._unk
            if word < 0:
                return self._unk_log10
        grams = self._grams
        total = 0.0
        for k in range(len(context) + 1):
            h = context[k:]
            hit = grams.get((*h, word))
            if hit is not None:
                return total + hit[0]
            bo = grams.get(h)
            if bo is not None:
                total += bo[1]
        return total + self._unk_log10  # not even a 1-gram: an id from another model

    def score(self, state: Hashable, word_id: int) -> tuple[float, Hashable]:
        """(ln p(word | state), the state after it); memoised, the same pairs recur across hypotheses."""
        key = (state, word_id)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        context: tuple[int, ...] = state  # type: ignore[assignment]
        logp = self.log10(context, word_id) * LN10
        word = word_id if word_id >= 0 else self._unk
        nxt = self._trim((*context, word)) if word >= 0 else ()
        if len(self._cache) > 1 << 20:
            self._cache.clear()  # bound memory on long runs
        self._cache[key] = result = (logp, nxt)
        return result

    def _trim(self, words: tuple[int, ...]) -> tuple[int, ...]:
        """The longest suffix (at most order - 1 words) that is itself an n-gram: no longer context can
        change a probability (an n-gram's prefixes are all listed, and unlisted contexts back off at no
        cost), so equal trimmed states score every continuation equally."""
        words = words[len(words) - (self.order - 1) :] if self.order > 1 else ()
        while words and words not in self._grams:
            words = words[1:]
        return words

    def end(self, state: Hashable) -> float:
        """ln p(</s> | state) with `score_boundary`, else 0."""
        if not self.score_boundary or self._eos < 0:
            return 0.0
        context: tuple[int, ...] = state  # type: ignore[assignment]
        return self.log10(context, self._eos) * LN10

    def unigram(self, word_id: int) -> float:
        """ln p(word) without context."""
        return self.log10((), word_id) * LN10
