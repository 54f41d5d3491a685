"""CTC prefix beam search constrained by a lexicon, scored with a unigram word LM (pure logic).

    decoder = BeamDecoder(lexicon, blank_id=0, delimiter_id=5, options=BeamOptions(beam=8))
    result = decoder.decode(logprobs, frame_offset=first_frame, prev_token=carry)

`result.words` are `BeamWord`s: the word's text where the lexicon knows it (None where the path's units
spell no lexicon word: the caller spells those units as greedy decoding does, so nothing is dropped), its
units, frames [start, end) and confidence (mean over its units of the best frame probability on the
chosen path, as `streamer.ctc.greedy_words` computes it). `result.last_token` is carried into the next
call exactly like greedy's.

How it searches: each hypothesis is a word history plus the current word, either a node of the lexicon's
prefix tree or, once the units leave the tree, an out-of-lexicon unit sequence. A word ends at the
delimiter token or, without one, where a lexicon word is complete and the next unit starts a new word
(models often miss a word boundary). Scores are acoustic log-probability plus `lm_weight` times the
word's log-probability (the best word below the current node while inside a word) plus `word_bonus` per
word; an out-of-lexicon word scores `oov_logp` instead of a word probability. Frames where blank is
nearly certain only extend blanks (no search); other frames try the few likeliest tokens.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from streamer.ctc import FloatArray
from streamer.decoding.lexicon import ROOT, Lexicon

NEG_INF = -math.inf
_Key = tuple[int, int, tuple[int, ...], int]
"""(word history hash, lexicon node, out-of-lexicon units, last label): paths with equal keys merge."""


@dataclass(frozen=True)
class BeamOptions:
    """Search settings, tuned on the built-in model over ../shared/data's English clips with a 20k-word
    lexicon (offline WER; greedy 0.2817): these defaults 0.1860; lm_weight 0.5 0.1887, 0.7 0.1941;
    oov_logp -14 0.1900; word_bonus 2.5 0.1900; beam 4/16 within 0.002 of beam 8. Without
    `split_penalty` (0) 0.2655 at 4k words: boundaries the model did not mark need a cost."""

    beam: int = 8
    """Hypotheses kept after each frame."""
    lm_weight: float = 0.6
    """Weight of the word log-probability (natural log) against the acoustic score."""
    word_bonus: float = 2.0
    """Added per word: balances the LM's cost of each word, so that short words are not merged away."""
    oov_logp: float = -16.0
    """LM score (before `lm_weight`) of a word outside the lexicon."""
    split_penalty: float = 2.0
    """Cost of a word boundary the model did not mark with the delimiter (inf: only at delimiters)."""
    prune: float = 12.0
    """Hypotheses this far below the best are dropped."""
    token_logp: float = -7.0
    """Tokens less likely than this in a frame are not tried."""
    blank_skip: float = 0.999
    """A frame whose blank probability reaches this only extends blanks."""
    max_tokens: int = 6
    """At most this many tokens are tried per frame."""


@dataclass(frozen=True)
class BeamWord:
    text: str | None
    tokens: tuple[int, ...]
    start_frame: int
    end_frame: int
    confidence: float


@dataclass(frozen=True)
class BeamResult:
    words: list[BeamWord]
    last_token: int


class _Hist:
    """A finished word, linked to the words before it."""

    __slots__ = ("key", "parent", "word")

    def __init__(self, parent: _Hist | None, word: BeamWord, key: int) -> None:
        self.parent = parent
        self.word = word
        self.key = key


class _Hyp:
    __slots__ = ("best", "end", "hist", "last", "lm", "node", "pb", "pnb", "probs", "start", "units")

    def __init__(
        self,
        pb: float,
        pnb: float,
        lm: float,
        hist: _Hist | None,
        node: int,
        units: tuple[int, ...],
        probs: tuple[float, ...],
        start: int,
        end: int,
        last: int,
    ) -> None:
        self.pb = pb
        self.pnb = pnb
        self.lm = lm  # weighted LM score of the finished words, with bonuses
        self.hist = hist
        self.node = node  # lexicon node of the current word; -1: out of the lexicon
        self.units = units
        self.probs = probs  # best frame probability of each unit of the current word
        self.start = start
        self.end = end
        self.last = last  # last label emitted (a unit, the delimiter, or -1)
        self.best = NEG_INF  # the largest single contribution merged in: whose metadata is kept


def _lae(a: float, b: float) -> float:
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    if a > b:
        return a + math.log1p(math.exp(b - a))
    return b + math.log1p(math.exp(a - b))


class BeamDecoder:
    """Lexicon + unigram LM prefix beam search; `decode(logprobs, frame_offset=0, prev_token=None)`."""

    def __init__(
        self,
        lexicon: Lexicon,
        *,
        blank_id: int,
        delimiter_id: int | None,
        options: BeamOptions | None = None,
        ignore: frozenset[int] = frozenset(),
    ) -> None:
        self.lexicon = lexicon
        self.blank_id = blank_id
        self.delimiter_id = delimiter_id
        self.options = options or BeamOptions()
        self._ignore = ignore  # tokens never tried (special symbols)
        self._skip = math.log(self.options.blank_skip)

    # ---- scoring ---------------------------------------------------------------------------------------

    def _partial(self, node: int) -> float:
        o = self.options
        if node == ROOT:
            return 0.0
        if node < 0:
            return o.lm_weight * o.oov_logp + o.word_bonus
        return o.lm_weight * self.lexicon.lookahead[node] + o.word_bonus

    def _finish(self, h: _Hyp) -> tuple[_Hist | None, float]:
        """The current word of `h` closed: the new history and LM score."""
        if not h.units:
            return h.hist, h.lm
        o = self.options
        index = self.lexicon.word[h.node] if h.node > 0 else -1
        if index >= 0:
            text: str | None = self.lexicon.words[index]
            lm = h.lm + o.lm_weight * self.lexicon.logp[index] + o.word_bonus
            key = hash((h.hist.key if h.hist else 0, index))
        else:
            text = None
            lm = h.lm + o.lm_weight * o.oov_logp + o.word_bonus
            key = hash((h.hist.key if h.hist else 0, h.units))
        conf = sum(h.probs) / len(h.probs)
        return _Hist(h.hist, BeamWord(text, h.units, h.start, h.end, conf), key), lm

    # ---- search ----------------------------------------------------------------------------------------

    def decode(
        self, logprobs: FloatArray, *, frame_offset: int = 0, prev_token: int | None = None
    ) -> BeamResult:
        """Words of `logprobs` (frames x vocabulary, natural-log probabilities); see the module docstring."""
        blank = self.blank_id
        split = self.options.split_penalty < math.inf
        if len(logprobs) == 0:
            return BeamResult([], blank if prev_token is None else prev_token)
        o = self.options
        delim = self.delimiter_id
        children = self.lexicon.children
        lex_word = self.lexicon.word
        # A token continuing from the previous call is not emitted again (as in greedy decoding).
        carry = -1 if prev_token is None or prev_token == blank else prev_token
        start_pnb = 0.0 if carry >= 0 else NEG_INF
        hyps: dict[_Key, _Hyp] = {
            (0, ROOT, (), carry): _Hyp(
                0.0 if carry < 0 else NEG_INF, start_pnb, 0.0, None, ROOT, (), (), 0, 0, carry
            )
        }
        probs_all = np.exp(logprobs)
        rows = logprobs.tolist()
        blank_col = logprobs[:, blank].tolist()
        allowed = np.ones(logprobs.shape[1], dtype=bool)
        allowed[blank] = False
        for t in self._ignore:
            allowed[t] = False
        for t in range(len(rows)):
            lb = blank_col[t]
            if lb >= self._skip:
                for h in hyps.values():
                    h.pb = _lae(h.pb, h.pnb) + lb
                    h.pnb = NEG_INF
                continue
            row = rows[t]
            frame = logprobs[t]
            cand = np.nonzero(allowed & (frame >= o.token_logp))[0]
            if len(cand) > o.max_tokens:
                cand = cand[np.argsort(-frame[cand])[: o.max_tokens]]
            tokens = cand.tolist()
            nxt: dict[_Key, _Hyp] = {}

            add = functools.partial(_merge, nxt)
            for key, h in hyps.items():
                total = _lae(h.pb, h.pnb)
                # blank: same prefix
                add(key, total + lb, NEG_INF, _copy(h))
                last = h.last
                if last >= 0 and h.pnb > NEG_INF:
                    # the last label repeated: same prefix; a unit's best probability and end grow
                    lp = row[last]
                    if lp >= o.token_logp:
                        c = _copy(h)
                        if last != delim and h.units and last == h.units[-1]:
                            p = probs_all[t, last]
                            c.probs = (*h.probs[:-1], max(h.probs[-1], float(p)))
                            c.end = frame_offset + t + 1
                        add(key, NEG_INF, h.pnb + lp, c)
                hist_key = h.hist.key if h.hist else 0
                for tok in tokens:
                    lp = row[tok]
                    base = (h.pb if tok == last else total) + lp
                    p = float(probs_all[t, tok])
                    f = frame_offset + t
                    if tok == delim:
                        hist, lm = self._finish(h)
                        add(
                            (hist.key if hist else 0, ROOT, (), tok),
                            NEG_INF,
                            base,
                            _Hyp(0, 0, lm, hist, ROOT, (), (), f, f, tok),
                        )
                        continue
                    node = h.node
                    child = children[node].get(tok) if node >= 0 else None
                    if child is not None:
                        units = (*h.units, tok)
                        start = h.start if h.units else f
                        add(
                            (hist_key, child, (), tok),
                            NEG_INF,
                            base,
                            _Hyp(0, 0, h.lm, h.hist, child, units, (*h.probs, p), start, f + 1, tok),
                        )
                    if node > 0 and lex_word[node] >= 0 and split:
                        # a complete word, then a new one without a delimiter between them
                        hist, lm = self._finish(h)
                        lm -= o.split_penalty
                        n2 = children[ROOT].get(tok, -1)
                        k: _Key = (hist.key if hist else 0, n2, () if n2 >= 0 else (tok,), tok)
                        add(k, NEG_INF, base, _Hyp(0, 0, lm, hist, n2, (tok,), (p,), f, f + 1, tok))
                    if child is None:
                        # leaves the lexicon: an out-of-lexicon word, spelled by the caller
                        units = (*h.units, tok)
                        start = h.start if h.units else f
                        add(
                            (hist_key, -1, units, tok),
                            NEG_INF,
                            base,
                            _Hyp(0, 0, h.lm, h.hist, -1, units, (*h.probs, p), start, f + 1, tok),
                        )
            scored = sorted(
                (
                    (_lae(x.pb, x.pnb) + x.lm + self._partial(x.node), i, x)
                    for i, x in enumerate(nxt.values())
                ),
                reverse=True,
            )
            floor = scored[0][0] - o.prune
            kept = [x for score, _, x in scored[: o.beam] if score >= floor]
            hyps = {_key(x): x for x in kept}
        # End of input: close every hypothesis's word and take the best.
        best_score, best_hist, best_hyp = NEG_INF, None, None
        for h in hyps.values():
            hist, lm = self._finish(h)
            score = _lae(h.pb, h.pnb) + lm
            if score > best_score:
                best_score, best_hist, best_hyp = score, hist, h
        words: list[BeamWord] = []
        while best_hist is not None:
            words.append(best_hist.word)
            best_hist = best_hist.parent
        words.reverse()
        assert best_hyp is not None
        last_token = best_hyp.last if best_hyp.pnb > best_hyp.pb and best_hyp.last >= 0 else blank
        return BeamResult(words, last_token)


def _merge(nxt: dict[_Key, _Hyp], key: _Key, pb: float, pnb: float, make: _Hyp) -> None:
    """Add a path into `nxt[key]`: probabilities add up, the likelier path's times and words are kept."""
    score = pb if pb > pnb else pnb
    cur = nxt.get(key)
    if cur is None:
        make.pb, make.pnb, make.best = pb, pnb, score
        nxt[key] = make
        return
    cur.pb = _lae(cur.pb, pb)
    cur.pnb = _lae(cur.pnb, pnb)
    if score > cur.best:
        cur.best = score
        cur.hist, cur.lm, cur.units, cur.probs = make.hist, make.lm, make.units, make.probs
        cur.start, cur.end, cur.node, cur.last = make.start, make.end, make.node, make.last


def _copy(h: _Hyp) -> _Hyp:
    return _Hyp(h.pb, h.pnb, h.lm, h.hist, h.node, h.units, h.probs, h.start, h.end, h.last)


def _key(h: _Hyp) -> _Key:
    return (h.hist.key if h.hist else 0, h.node, h.units if h.node < 0 else (), h.last)
