"""CTC prefix beam search constrained by a lexicon, scored with a word LM (unigram or n-gram; pure logic).

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
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from streamer.ctc import FloatArray
from streamer.decoding.keyterms import KeytermTrie
from streamer.decoding.lexicon import ROOT, Lexicon
from streamer.decoding.lm import UnigramLM, WordLM

NEG_INF = -math.inf
_Key = tuple[int, int, tuple[int, ...], int, int]
"""(word history hash, lexicon node, out-of-lexicon units, last label, keyterm node): paths with equal keys
merge."""


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
    """LM score (before `lm_weight`) of a word outside the lexicon, added to the LM's own score of an
    unknown word (0 for the lexicon's unigram model; an n-gram model's `<unk>` probability)."""
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
    keyterm_bonus: float = 1.5
    """Added per unit of a keyterm matched so far (times the term's boost), taken back if the match
    breaks off, kept when the whole term is matched."""
    keyterm_logp: float = -9.0
    """LM score (before `lm_weight`) of each word of a matched keyterm, in place of its words' own."""


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
    """A finished word, linked to the words before it, and the LM state after it."""

    __slots__ = ("key", "parent", "state", "word")

    def __init__(self, parent: _Hist | None, word: BeamWord, key: int, state: Hashable) -> None:
        self.parent = parent
        self.word = word
        self.key = key
        self.state = state


@dataclass(frozen=True)
class _Match:
    """A keyterm being matched: its trie node, the bonus so far, and the history and LM score before it."""

    node: int
    bonus: float
    hist: _Hist | None
    lm: float


class _Hyp:
    __slots__ = (
        "best",
        "end",
        "hist",
        "last",
        "lm",
        "match",
        "node",
        "pb",
        "pnb",
        "probs",
        "start",
        "units",
    )

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
        match: _Match | None = None,
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
        self.match = match  # the keyterm being matched, if any
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
    """Lexicon + word LM prefix beam search; `decode(logprobs, frame_offset=0, prev_token=None)`.

    `lm`: a `streamer.decoding.lm.WordLM` that knows the lexicon's words by `lexicon.keys` (e.g. an
    n-gram `ArpaLM`); None: the lexicon's own unigram log-probabilities. Paths merge only where their
    word histories are equal (the history's hash is in the key), so the LM state, a function of the
    history, never needs to be part of the key: merging on the LM state alone (n-1 words) would add up
    the probabilities of different transcripts, and for the unigram model merge every history."""

    def __init__(
        self,
        lexicon: Lexicon,
        *,
        blank_id: int,
        delimiter_id: int | None,
        options: BeamOptions | None = None,
        ignore: frozenset[int] = frozenset(),
        lm: WordLM | None = None,
    ) -> None:
        self.lexicon = lexicon
        self.blank_id = blank_id
        self.delimiter_id = delimiter_id
        self.options = options or BeamOptions()
        self._ignore = ignore  # tokens never tried (special symbols)
        self._skip = math.log(self.options.blank_skip)
        # Lexicon word i is LM word _lm_ids[i]; None: the unigram model over the lexicon, ids are indices.
        self.lm: WordLM = lm if lm is not None else UnigramLM(lexicon.keys, lexicon.logp)
        self._lm_ids: list[int] | None = None if lm is None else []
        self._lm_start = self.lm.start()
        self._unk_unigram = self.lm.unigram(-1)

    # ---- scoring ---------------------------------------------------------------------------------------

    def _partial(self, node: int) -> float:
        o = self.options
        if node == ROOT:
            return 0.0
        if node < 0:
            return o.lm_weight * (self._unk_unigram + o.oov_logp) + o.word_bonus
        return o.lm_weight * self.lexicon.lookahead[node] + o.word_bonus

    def _finish(self, h: _Hyp) -> tuple[_Hist | None, float]:
        """The current word of `h` closed: the new history and LM score."""
        if not h.units:
            return h.hist, h.lm
        o = self.options
        index = self.lexicon.word[h.node] if h.node > 0 else -1
        state = h.hist.state if h.hist else self._lm_start
        if index >= 0:
            text: str | None = self.lexicon.words[index]
            logp, state = self.lm.score(state, self._lm_id(index))
            lm = h.lm + o.lm_weight * logp + o.word_bonus
            key = hash((h.hist.key if h.hist else 0, index))
        else:
            text = None
            logp, state = self.lm.score(state, -1)
            lm = h.lm + o.lm_weight * (logp + o.oov_logp) + o.word_bonus
            key = hash((h.hist.key if h.hist else 0, h.units))
        conf = sum(h.probs) / len(h.probs)
        return _Hist(h.hist, BeamWord(text, h.units, h.start, h.end, conf), key, state), lm

    def _lm_id(self, index: int) -> int:
        """The LM's id of lexicon word `index` (looked up once; the lexicon may grow after construction)."""
        ids = self._lm_ids
        if ids is None:
            return index
        while len(ids) <= index:
            ids.append(self.lm.word_id(self.lexicon.keys[len(ids)]))
        return ids[index]

    # ---- keyterms --------------------------------------------------------------------------------------

    def _step(
        self,
        trie: KeytermTrie | None,
        match: _Match | None,
        tok: int,
        word_start: bool,
        hist: _Hist | None,
        lm: float,
    ) -> _Match | None:
        """The keyterm match after unit `tok`: the current one extended, else (at a word start) a new one
        from `hist`/`lm` (the history before the word), else none (a broken match's bonus is gone)."""
        if trie is None:
            return None
        gain = self.options.keyterm_bonus
        if match is not None:
            nxt = trie.children[match.node].get(tok)
            if nxt is not None:
                return _Match(nxt, match.bonus + gain * trie.gain[nxt], match.hist, match.lm)
        if word_start:
            nxt = trie.children[0].get(tok)
            if nxt is not None:
                return _Match(nxt, gain * trie.gain[nxt], hist, lm)
        return None

    def _complete(
        self, trie: KeytermTrie, match: _Match, hist: _Hist | None
    ) -> tuple[_Hist | None, float] | None:
        """A word closed with `hist` while `match` stood on a term's end: the history with the term's
        spelling in place of the words it covers, and the LM score with the term's (None: no term ends)."""
        index = trie.term[match.node]
        if index < 0:
            return None
        term = trie.terms[index]
        covered: list[BeamWord] = []
        h = hist
        while h is not None and h is not match.hist:
            covered.append(h.word)
            h = h.parent
        covered.reverse()
        texts = term.text.split()
        if not covered:
            return None
        if len(covered) == len(texts):
            words = [
                BeamWord(t, w.tokens, w.start_frame, w.end_frame, w.confidence)
                for t, w in zip(texts, covered, strict=True)
            ]
        else:
            words = _spread(texts, covered)
        o = self.options
        out = match.hist
        for i, word in enumerate(words):
            # The LM hears the term's words (its context for what follows) but does not score them.
            _, state = self.lm.score(out.state if out else self._lm_start, self.lm.word_id(word.text or ""))
            out = _Hist(out, word, hash((out.key if out else 0, "keyterm", index, i)), state)
        lm = match.lm + match.bonus + len(words) * (o.lm_weight * o.keyterm_logp + o.word_bonus)
        return out, lm

    def _close(self, h: _Hyp, trie: KeytermTrie | None) -> list[tuple[_Hist | None, float, _Match | None]]:
        """Ways the current word of `h` closes: (history, LM score, keyterm match going on). A match on a
        term's end completes; one that can go on into the next word also carries on (both are kept)."""
        hist, lm = self._finish(h)
        match = h.match
        if match is None or trie is None:
            return [(hist, lm, None)]
        out: list[tuple[_Hist | None, float, _Match | None]] = []
        done = self._complete(trie, match, hist)
        if done is not None:
            out.append((done[0], done[1], None))
        if trie.children[match.node]:
            out.append((hist, lm, match))
        return out or [(hist, lm, None)]

    # ---- search ----------------------------------------------------------------------------------------

    def decode(
        self,
        logprobs: FloatArray,
        *,
        frame_offset: int = 0,
        prev_token: int | None = None,
        keyterms: KeytermTrie | None = None,
    ) -> BeamResult:
        """Words of `logprobs` (frames x vocabulary, natural-log probabilities); see the module docstring.
        `keyterms`: terms to favour (`streamer.decoding.keyterms`)."""
        blank = self.blank_id
        split = self.options.split_penalty < math.inf
        if len(logprobs) == 0:
            return BeamResult([], blank if prev_token is None else prev_token)
        trie = keyterms if keyterms else None
        o = self.options
        delim = self.delimiter_id
        children = self.lexicon.children
        lex_word = self.lexicon.word
        # A token continuing from the previous call is not emitted again (as in greedy decoding).
        carry = -1 if prev_token is None or prev_token == blank else prev_token
        start_pnb = 0.0 if carry >= 0 else NEG_INF
        hyps: dict[_Key, _Hyp] = {
            (0, ROOT, (), carry, 0): _Hyp(
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
                        for hist, lm, match in self._close(h, trie):
                            add(
                                (hist.key if hist else 0, ROOT, (), tok, match.node if match else 0),
                                NEG_INF,
                                base,
                                _Hyp(0, 0, lm, hist, ROOT, (), (), f, f, tok, match),
                            )
                        continue
                    node = h.node
                    child = children[node].get(tok) if node >= 0 else None
                    word_start = not h.units
                    match = self._step(trie, h.match, tok, word_start, h.hist, h.lm)
                    mnode = match.node if match else 0
                    if child is not None:
                        units = (*h.units, tok)
                        start = h.start if h.units else f
                        add(
                            (hist_key, child, (), tok, mnode),
                            NEG_INF,
                            base,
                            _Hyp(0, 0, h.lm, h.hist, child, units, (*h.probs, p), start, f + 1, tok, match),
                        )
                    if node > 0 and lex_word[node] >= 0 and split:
                        # a complete word, then a new one without a delimiter between them
                        n2 = children[ROOT].get(tok, -1)
                        for hist, lm, going in self._close(h, trie):
                            lm -= o.split_penalty
                            m2 = self._step(trie, going, tok, True, hist, lm)
                            k: _Key = (
                                hist.key if hist else 0,
                                n2,
                                () if n2 >= 0 else (tok,),
                                tok,
                                m2.node if m2 else 0,
                            )
                            add(k, NEG_INF, base, _Hyp(0, 0, lm, hist, n2, (tok,), (p,), f, f + 1, tok, m2))
                    if child is None:
                        # leaves the lexicon: an out-of-lexicon word, spelled by the caller
                        units = (*h.units, tok)
                        start = h.start if h.units else f
                        add(
                            (hist_key, -1, units, tok, mnode),
                            NEG_INF,
                            base,
                            _Hyp(0, 0, h.lm, h.hist, -1, units, (*h.probs, p), start, f + 1, tok, match),
                        )
            scored = sorted(
                (
                    (
                        _lae(x.pb, x.pnb)
                        + x.lm
                        + self._partial(x.node)
                        + (x.match.bonus if x.match else 0.0),
                        i,
                        x,
                    )
                    for i, x in enumerate(nxt.values())
                ),
                reverse=True,
            )
            floor = scored[0][0] - o.prune
            kept = [x for score, _, x in scored[: o.beam] if score >= floor]
            hyps = {_key(x): x for x in kept}
        # End of input: close every hypothesis's word and take the best; a keyterm matched only in part
        # adds nothing.
        best_score, best_hist, best_hyp = NEG_INF, None, None
        for h in hyps.values():
            for hist, lm, _ in self._close(h, trie):
                end = self.lm.end(hist.state if hist else self._lm_start)
                score = _lae(h.pb, h.pnb) + lm + o.lm_weight * end
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


def _spread(texts: list[str], covered: list[BeamWord]) -> list[BeamWord]:
    """A term's words over the frames of the words it matched, split in proportion to their letters."""
    start, end = covered[0].start_frame, covered[-1].end_frame
    tokens = tuple(u for w in covered for u in w.tokens)
    conf = sum(w.confidence for w in covered) / len(covered)
    total = sum(len(t) for t in texts)
    out: list[BeamWord] = []
    at, done = start, 0
    for i, text in enumerate(texts):
        done += len(text)
        stop = end if i == len(texts) - 1 else start + round((end - start) * done / total)
        out.append(BeamWord(text, tokens if len(texts) == 1 else (), at, max(stop, at), conf))
        at = max(stop, at)
    return out


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
        cur.match = make.match


def _copy(h: _Hyp) -> _Hyp:
    return _Hyp(h.pb, h.pnb, h.lm, h.hist, h.node, h.units, h.probs, h.start, h.end, h.last, h.match)


def _key(h: _Hyp) -> _Key:
    return (
        h.hist.key if h.hist else 0,
        h.node,
        h.units if h.node < 0 else (),
        h.last,
        h.match.node if h.match else 0,
    )
