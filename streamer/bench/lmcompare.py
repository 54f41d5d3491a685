"""Our n-gram beam search against pyctcdecode on the same log-probs: text agreement and CPU per audio second.

    python -m streamer.bench lmcompare                         # synthetic: 20 utterances of 10 s, 300 words
    python -m streamer.bench lmcompare --beams 8,16,32 --pyctc-beams 16,100
    python -m streamer.bench lmcompare --model /models/w2v2    # a checkpoint with language_model/, on noise

Synthetic: a bigram ARPA model over the most frequent English words (wordfreq), utterances sampled from
it and turned into the log-probs of a 32-token wav2vec2-style character model (upper-case letters, `|`
between words, 20 ms frames) with noise and confusable letters, so that greedy decoding makes mistakes.
Each decoder prints one line: `wer_truth` (against the sampled words: a property of the synthetic data,
not of any real model), `same_text` and `wer_ref` (against the reference, pyctcdecode at its largest
beam), and `cpu` (process CPU seconds per audio second). pyctcdecode and kenlm are optional: rows for
what is not installed are skipped.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streamer.ctc import FloatArray, greedy_words
from streamer.decoding import BeamOptions, WordDecoder
from streamer.decoding.char_lexicon import Speller
from streamer.engine.lm_folder import LMAttrs, build_lm_decoder, kenlm_available, lm_file, read_unigrams

FRAME_S = 0.02
LETTERS = "ETAONIHSRDLUMWCFGYPBVK'XJQZ"
VOCAB = ("<pad>", "<s>", "</s>", "<unk>", "|", *LETTERS)  # wav2vec2-base-960h's 32 tokens
BLANK, DELIM = 0, 4
SILENT = frozenset(range(5))


def spell(words: Sequence[Sequence[int]]) -> list[str]:
    """As the transformers engine spells the synthetic vocabulary: specials silent, lower case."""
    return ["".join("" if i in SILENT else VOCAB[i] for i in w).lower() for w in words]


# ---- synthetic language model and log-probs ----------------------------------------------------------------


def bigram_arpa(
    words: list[tuple[str, float]], rng: np.random.Generator, successors: int = 4
) -> tuple[str, dict[str, tuple[list[str], np.ndarray]], np.ndarray]:
    """ARPA text of a normalised bigram model over `words` ((WORD, log10 frequency)): unigrams by
    frequency, `successors` listed bigrams per word holding half its mass, backoff weights that make
    every distribution sum to one. Returns (text, listed successors per word, unigram probabilities)."""
    names = [w for w, _ in words]
    freq = np.array([10.0**f for _, f in words])
    p_uni = 0.94 * freq / freq.sum()
    vocab = [*names, "</s>", "<unk>"]
    p_all = np.concatenate([p_uni, [0.05, 0.01]])
    index = {w: i for i, w in enumerate(vocab)}
    lines = ["\\data\\", f"ngram 1={len(vocab) + 1}", f"ngram 2={(len(names) + 1) * successors}", ""]
    grams: list[str] = []
    table: dict[str, tuple[list[str], np.ndarray]] = {}
    backoff: dict[str, float] = {}
    for h in ["<s>", *names]:
        pool = names if h == "<s>" else [*names, "</s>"]
        chosen = [pool[i] for i in rng.choice(len(pool), size=successors, replace=False)]
        probs = 0.5 * rng.dirichlet(np.ones(successors))
        table[h] = (chosen, probs)
        backoff[h] = (1.0 - probs.sum()) / (1.0 - sum(p_all[index[w]] for w in chosen))
        grams += [f"{math.log10(p):.6f}\t{h} {w}" for w, p in zip(chosen, probs, strict=True)]
    lines.append("\\1-grams:")
    lines.append(f"-99\t<s>\t{math.log10(backoff['<s>']):.6f}")
    for w, p in zip(vocab, p_all, strict=True):
        bo = f"\t{math.log10(backoff[w]):.6f}" if w in backoff else ""
        lines.append(f"{math.log10(p):.6f}\t{w}{bo}")
    lines += ["", "\\2-grams:", *grams, "", "\\end\\", ""]
    return "\n".join(lines), table, p_uni


def sample_words(
    rng: np.random.Generator,
    names: list[str],
    table: dict[str, tuple[list[str], np.ndarray]],
    p_uni: np.ndarray,
) -> Callable[[], str]:
    """A sampler of the next word of the bigram model (`</s>` skipped: utterances end by length)."""
    state = ["<s>"]
    cdf = np.cumsum(p_uni / p_uni.sum())

    def draw() -> str:
        chosen, probs = table[state[0]]
        while True:
            u = rng.random()
            if u < probs.sum():
                word = chosen[int(np.searchsorted(np.cumsum(probs), u, side="right"))]
            else:
                word = names[min(int(np.searchsorted(cdf, rng.random())), len(names) - 1)]
            if word != "</s>":
                state[0] = word
                return word

    return draw


def utterance(
    rng: np.random.Generator, draw: Callable[[], str], frames: int, args: Any
) -> tuple[list[str], FloatArray]:
    """About `frames` frames of log-probs for sampled words, and the words: each letter is `args.peak`
    above noise of deviation `args.noise`; a share `args.confusion` of letters has a rival about as loud."""
    ids = {t: i for i, t in enumerate(VOCAB)}
    labels: list[int] = [BLANK] * int(rng.integers(3, 10))
    peaks: list[tuple[int, int]] = []  # (frame, confusable token or -1)
    words: list[str] = []
    while True:
        word = draw()
        chars = [ids[c] for c in word]
        need = 4 * len(chars) + 2
        if len(labels) + need > frames - 2:
            break
        words.append(word)
        prev = -1
        for c in chars:
            if c == prev or rng.random() < 0.5:
                labels.append(BLANK)
            other = int(rng.integers(5, len(VOCAB))) if rng.random() < args.confusion else -1
            for _ in range(int(rng.integers(1, 3))):
                peaks.append((len(labels), other))
                labels.append(c)
            prev = c
        labels += [DELIM] + [BLANK] * int(rng.integers(0, 3))
    # wav2vec2 models mark no word end after the last word (their training labels have none)
    last = max(i for i, x in enumerate(labels) if x == DELIM) if words else 0
    if words:
        labels[last] = BLANK
    labels += [BLANK] * (frames - len(labels))
    logits = rng.normal(0.0, args.noise, (frames, len(VOCAB)))
    logits[np.arange(frames), labels] += args.peak
    for t, other in peaks:
        if other >= 0 and other != labels[t]:
            logits[t, other] += args.peak + rng.uniform(-1.5, 1.5)  # as often louder than the letter as not
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return words, logp.astype(np.float32)


def write_folder(folder: Path, arpa: str, words: list[str], attrs: LMAttrs) -> Path:
    """A pyctcdecode-style language_model/ folder."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lm.arpa").write_text(arpa, encoding="utf-8")
    (folder / "unigrams.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    fields = {k: getattr(attrs, k) for k in ("alpha", "beta", "unk_score_offset", "score_boundary")}
    (folder / "attrs.json").write_text(json.dumps(fields), encoding="utf-8")
    return folder


# ---- decoders ------------------------------------------------------------------------------------------


def _ours(decoder: WordDecoder, speller: Speller) -> Callable[[FloatArray], str]:
    def run(lp: FloatArray) -> str:
        result = decoder.decode(lp)
        unknown = iter(speller([w.tokens for w in result.words if w.text is None]))
        return " ".join(w.text if w.text is not None else next(unknown) for w in result.words)

    return run


def _greedy(lp: FloatArray) -> str:
    return " ".join(spell([w.tokens for w in greedy_words(lp, blank_id=BLANK, delimiter_id=DELIM).words]))


def _pyctc(
    folder: Path, labels: Sequence[str], attrs: LMAttrs, beam: int, args: Any
) -> Callable[[FloatArray], str]:
    from pyctcdecode import build_ctcdecoder

    # Any: typed where pyctcdecode is installed, unknown to mypy where it is not (CI)
    decoder: Any = build_ctcdecoder(
        list(labels),
        kenlm_model_path=str(lm_file(folder)),
        unigrams=read_unigrams(folder / "unigrams.txt"),
        alpha=attrs.alpha,
        beta=attrs.beta,
        unk_score_offset=attrs.unk_score_offset,
        lm_score_boundary=attrs.score_boundary,
    )

    def run(lp: FloatArray) -> str:
        text: str = decoder.decode(lp, beam_width=beam, token_min_logp=args.pyctc_token_logp)
        return " ".join(text.lower().split())

    return run


def _wer(refs: list[str], hyps: list[str]) -> float:
    import jiwer

    pairs = [(r, h) for r, h in zip(refs, hyps, strict=True) if r]
    if not pairs:
        return 0.0
    return float(jiwer.wer([r for r, _ in pairs], [h or "<empty>" for _, h in pairs]))


def compare(
    logprobs: list[FloatArray],
    truths: list[str] | None,
    decoders: list[tuple[str, Callable[[FloatArray], str]]],
    out: Callable[[str], None],
) -> None:
    """Run every decoder over every utterance and print one line each (the reference: pyctc, largest beam)."""
    audio_s = sum(len(lp) for lp in logprobs) * FRAME_S
    texts: dict[str, list[str]] = {}
    cpu: dict[str, float] = {}
    for name, run in decoders:
        started = time.process_time()
        texts[name] = [run(lp) for lp in logprobs]
        cpu[name] = (time.process_time() - started) / audio_s
    refs = [n for n, _ in decoders if n.startswith("pyctc")]
    ref = texts[refs[-1]] if refs else None
    for name, _ in decoders:
        fields = [f"decoder={name}"]
        if truths is not None:
            fields.append(f"wer_truth={_wer(truths, texts[name]):.4f}")
        if ref is not None:
            same = sum(a == b for a, b in zip(texts[name], ref, strict=True)) / len(ref)
            fields += [f"same_text={same:.3f}", f"wer_ref={_wer(ref, texts[name]):.4f}"]
        fields.append(f"cpu={cpu[name]:.5f}")
        out(" ".join(fields))


def _decoders(
    folder: Path,
    attrs: LMAttrs,
    args: Any,
    *,
    with_greedy: bool,
    vocabulary: Sequence[str],
    blank: int,
    delim: int | None,
    speller: Speller,
) -> list[tuple[str, Callable[[FloatArray], str]]]:
    """(name, text of log-probs) of each decoder to compare: ours per beam width and LM backend (pure
    ARPA, kenlm where installed), then pyctcdecode per beam width where it and kenlm are installed."""
    out: list[tuple[str, Callable[[FloatArray], str]]] = []
    if with_greedy:
        out.append(("greedy", _greedy))
    backends = [False] + ([True] if kenlm_available() else [])
    for beam in args.beams:
        for use_kenlm in backends:
            base = BeamOptions(beam=beam, token_logp=args.token_logp, prune=args.prune)
            decoder, _ = build_lm_decoder(
                folder,
                vocabulary=vocabulary,
                blank_id=blank,
                delimiter_id=delim,
                spell=speller,
                base=base,
                use_kenlm=use_kenlm,
            )
            out.append((f"ours-{'kenlm' if use_kenlm else 'arpa'}-beam{beam}", _ours(decoder, speller)))
    try:
        import pyctcdecode  # noqa: F401
    except ImportError:
        print("pyctcdecode is not installed: no reference rows", file=sys.stderr)
        return out
    if not kenlm_available():
        print("kenlm is not installed: pyctcdecode cannot use the LM; no reference rows", file=sys.stderr)
        return out
    for beam in args.pyctc_beams:
        out.append((f"pyctc-beam{beam}", _pyctc(folder, vocabulary, attrs, beam, args)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streamer.bench lmcompare", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--utterances", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each utterance")
    parser.add_argument("--words", type=int, default=300, help="words in the synthetic LM")
    parser.add_argument("--confusion", type=float, default=0.15, help="share of letters with a rival")
    parser.add_argument("--peak", type=float, default=9.0, help="a letter's logit above the rest")
    parser.add_argument("--noise", type=float, default=1.5, help="deviation of the other logits")
    parser.add_argument("--oov", type=float, default=0.05, help="share of spoken words outside the LM")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--beta", type=float, default=1.5)
    parser.add_argument("--unk-score-offset", type=float, default=-10.0)
    parser.add_argument("--beams", default="8,16,32", help="our beam widths, comma-separated")
    parser.add_argument("--pyctc-beams", default="16,100", help="pyctcdecode's beam widths (last: reference)")
    parser.add_argument("--token-logp", type=float, default=BeamOptions().token_logp)
    parser.add_argument("--prune", type=float, default=BeamOptions().prune)
    parser.add_argument("--pyctc-token-logp", type=float, default=-5.0, help="pyctcdecode's token_min_logp")
    parser.add_argument("--model", help="a checkpoint folder with language_model/: its log-probs of noise")
    args = parser.parse_args(argv)
    args.beams = [int(b) for b in args.beams.split(",") if b]
    args.pyctc_beams = [int(b) for b in args.pyctc_beams.split(",") if b]
    rng = np.random.default_rng(args.seed)
    if args.model:
        return _model(args, rng)
    from streamer.engine.hama_lexicon import english_words

    everything = [(w.upper(), f) for w, f in english_words(2 * args.words)]
    words, unknown = everything[: args.words], [w for w, _ in everything[args.words :]]
    arpa, table, p_uni = bigram_arpa(words, rng)
    attrs = LMAttrs(args.alpha, args.beta, args.unk_score_offset, True)
    in_lm = sample_words(rng, [w for w, _ in words], table, p_uni)

    def draw() -> str:
        # now and then a word the LM does not know (a name, a rare word): spelled from its letters
        return unknown[int(rng.integers(len(unknown)))] if rng.random() < args.oov else in_lm()

    frames = int(args.seconds / FRAME_S)
    data = [utterance(rng, draw, frames, args) for _ in range(args.utterances)]
    truths = [" ".join(ws).lower() for ws, _ in data]
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_folder(Path(tmp) / "language_model", arpa, [w for w, _ in words], attrs)
        decoders = _decoders(
            folder,
            attrs,
            args,
            with_greedy=True,
            vocabulary=VOCAB,
            blank=BLANK,
            delim=DELIM,
            speller=spell,
        )
        print(
            f"# synthetic: {args.utterances} x {args.seconds:g} s, {frames} frames x {len(VOCAB)} tokens, "
            f"{len(words)} words, bigram ARPA, alpha {attrs.alpha:g} beta {attrs.beta:g}, "
            f"confusion {args.confusion:g}, oov {args.oov:g}, peak {args.peak:g}, noise {args.noise:g}"
        )
        compare([lp for _, lp in data], truths, decoders, print)
    return 0


def _model(args: Any, rng: np.random.Generator) -> int:
    from streamer.engine import EngineOptions, load_engine
    from streamer.engine.lm_folder import find_language_model, read_attrs

    folder = find_language_model(args.model)
    if folder is None:
        print(f"{args.model}: no language_model/ folder", file=sys.stderr)
        return 2
    engine = load_engine(args.model, EngineOptions(device="cpu", decoder="greedy"))
    samples = int(args.seconds * 16000)
    logprobs = [
        engine.forward([(rng.standard_normal(samples) * 0.1).astype(np.float32)])[0]
        for _ in range(args.utterances)
    ]
    attrs = read_attrs(folder / "attrs.json")
    decoders = _decoders(
        folder,
        attrs,
        args,
        with_greedy=False,
        vocabulary=list(engine.vocabulary),
        blank=engine.blank_id,
        delim=engine.word_delimiter_id,
        speller=engine.spell,
    )
    print(f"# {args.model}: {args.utterances} x {args.seconds:g} s of noise, {len(engine.vocabulary)} tokens")
    compare(logprobs, None, decoders, print)
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
