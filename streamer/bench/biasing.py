"""Keyterm boosting measured as contextual-biasing papers do: WER, B-WER and U-WER.

`python -m streamer.bench accuracy --data DIR --decoder beam --biasing 0,100,1000`: for every clip the
biasing list is the clip's rare words (wordfreq Zipf frequency below `--rare-zipf`) plus N distractors:
rare words of the other clips, topped up when the clips have fewer from a seeded sample (twice the list
size) of wordfreq's English words ranked 30,000 to 80,000. Each clip is decoded offline (one pass per VAD
segment, as `streamer.transcribe`; streams decode their finals the same way) without boosting and with
each list. B-WER counts errors on the
reference's biased words (substitutions and deletions of them, and insertions of list words), U-WER on the
other words, both over their own word counts; WER is the usual one.

Ends with one line `biasing: clips=N biased_words=B` then per setting `wer@L= bwer@L= uwer@L=` (L is
`none` for no boosting, else the list size) and `decoder_cpu@L` (core-seconds per audio second of the
final decoder).
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jiwer

from streamer.bench.data import Clip, normalise
from streamer.ctc import FloatArray
from streamer.decoding import Keyterm, keyterm_compiler
from streamer.engine.base import Engine
from streamer.transcribe import transcribe_samples
from streamer.vad import VadConfig

DISTRACTOR_RANKS = (30_000, 80_000)
"""wordfreq ranks the top-up distractors come from: rare English words, not in a 20k lexicon."""


class _MemoEngine:
    """An engine whose `forward` remembers its outputs: every setting decodes the same log-probs."""

    def __init__(self, inner: Engine) -> None:
        self._inner = inner
        self._memo: dict[bytes, FloatArray] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def forward(self, windows: Sequence[FloatArray]) -> list[FloatArray]:
        out = []
        for w in windows:
            key = hashlib.sha1(w.tobytes()).digest()
            if key not in self._memo:
                self._memo[key] = self._inner.forward([w])[0]
            out.append(self._memo[key])
        return out


def rare_words(text: str, zipf: float) -> list[str]:
    """Distinct words of `text` (normalised) with wordfreq Zipf frequency below `zipf`, in order."""
    import wordfreq

    out: list[str] = []
    for w in normalise(text).split():
        if w not in out and wordfreq.zipf_frequency(w, "en") < zipf:
            out.append(w)
    return out


def distractor_pool(clips: Sequence[Clip], zipf: float, size: int, seed: int) -> dict[str, list[str]]:
    """Per clip, `size` distractors: other clips' rare words first, then wordfreq's rare words."""
    import wordfreq

    per_clip = {c.name: rare_words(c.transcript, zipf) for c in clips}
    every = sorted({w for ws in per_clip.values() for w in ws})
    filler = [
        w
        for w in wordfreq.top_n_list("en", DISTRACTOR_RANKS[1])[DISTRACTOR_RANKS[0] :]
        if w.isalpha() and w not in every
    ]
    rng = random.Random(seed)
    # One seeded pool of fillers, twice the list size, shared by the clips' lists: each list still has
    # `size` distinct distractors, and G2P pronounces a bounded number of words.
    filler = rng.sample(filler, min(len(filler), 2 * size))
    out: dict[str, list[str]] = {}
    for c in clips:
        own = set(per_clip[c.name])
        others = [w for w in every if w not in own]
        rng.shuffle(others)
        picked = others[:size]
        if len(picked) < size:
            picked += rng.sample(filler, size - len(picked))
        out[c.name] = picked
    return out


@dataclass
class Counts:
    """Error counts of biased and unbiased reference words."""

    words: int = 0
    errors: int = 0
    biased: int = 0
    biased_errors: int = 0

    def add(self, reference: str, hypothesis: str, biased: set[str]) -> None:
        ref, hyp = normalise(reference).split(), normalise(hypothesis).split()
        if not ref:
            return
        out = jiwer.process_words(" ".join(ref), " ".join(hyp) if hyp else "<empty>")
        self.words += len(ref)
        self.biased += sum(w in biased for w in ref)
        for chunk in out.alignments[0]:
            if chunk.type == "equal":
                continue
            if chunk.type in ("substitute", "delete"):
                for w in ref[chunk.ref_start_idx : chunk.ref_end_idx]:
                    self.errors += 1
                    self.biased_errors += w in biased
            if chunk.type == "insert":
                for w in (hyp or ["<empty>"])[chunk.hyp_start_idx : chunk.hyp_end_idx]:
                    self.errors += 1
                    self.biased_errors += w in biased

    @property
    def wer(self) -> float:
        return self.errors / self.words if self.words else 0.0

    @property
    def bwer(self) -> float:
        return self.biased_errors / self.biased if self.biased else 0.0

    @property
    def uwer(self) -> float:
        unbiased = self.words - self.biased
        return (self.errors - self.biased_errors) / unbiased if unbiased else 0.0


def evaluate(
    engine: Engine,
    clips: Sequence[Clip],
    sizes: Sequence[int],
    vad: VadConfig,
    *,
    zipf: float = 3.5,
    seed: int = 0,
    context_s: float = 2.0,
    verbose: bool = True,
) -> int:
    """Run the biasing benchmark (see the module docstring) and print its table and summary line."""
    memo = _MemoEngine(engine)
    compiler = keyterm_compiler(memo)
    audio = {c.name: c.audio() for c in clips}
    seconds = sum(len(a) for a in audio.values()) / 16000
    pools = {n: distractor_pool(clips, zipf, n, seed) for n in sizes}
    own = {c.name: rare_words(c.transcript, zipf) for c in clips}
    settings: list[tuple[str, int | None]] = [("none", None), *((str(n), n) for n in sizes)]
    if verbose:
        print(f"biasing: running the model over {len(clips)} clips once", file=sys.stderr, flush=True)
    for clip in clips:  # fills the memo: the timings below are the decoding's alone
        transcribe_samples(memo, audio[clip.name], vad, context_s=context_s)
    results: dict[str, Counts] = {}
    cpu: dict[str, float] = {}
    compile_s: dict[str, float] = {}
    for label, size in settings:
        counts = Counts()
        spent = 0.0
        built = 0.0
        for clip in clips:
            trie = None
            if size is not None:
                t0 = time.perf_counter()
                trie = compiler.compile([Keyterm(w) for w in own[clip.name] + pools[size][clip.name]])
                built += time.perf_counter() - t0
            t0 = time.thread_time()
            # The model's time is the memo's after the first setting; what remains is decoding.
            pieces = transcribe_samples(
                memo, audio[clip.name], vad, context_s=context_s, keyterms=trie, decoder=compiler.decoder
            )
            spent += time.thread_time() - t0
            hypothesis = " ".join(p.text for p in pieces if p.text)
            counts.add(clip.transcript, hypothesis, set(own[clip.name]))
            if verbose:
                print(f"[{label}] {clip.name}: {hypothesis}", file=sys.stderr, flush=True)
        results[label] = counts
        cpu[label] = spent / seconds
        compile_s[label] = built
    print(f"{'list':>6} {'wer':>7} {'b_wer':>7} {'u_wer':>7} {'cpu/s':>8} {'compile_s':>9}")
    for label, _ in settings:
        c = results[label]
        print(
            f"{label:>6} {c.wer:7.4f} {c.bwer:7.4f} {c.uwer:7.4f} {cpu[label]:8.4f} {compile_s[label]:9.1f}"
        )
    first = results["none"]
    parts = [f"biasing: clips={len(clips)} words={first.words} biased_words={first.biased}"]
    for label, _ in settings:
        c = results[label]
        parts.append(f"wer@{label}={c.wer:.4f} bwer@{label}={c.bwer:.4f} uwer@{label}={c.uwer:.4f}")
    print(" ".join(parts))
    return 0
