"""Word language models: the ARPA reader (pure), n-gram beam search over characters, and a checkpoint's
`language_model/` folder picked up by `load_engine` (real tiny model)."""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from streamer.ctc import greedy_words
from streamer.decoding import BeamDecoder, BeamOptions, Keyterm, keyterm_compiler
from streamer.decoding.char_lexicon import char_lexicon
from streamer.decoding.lm import LN10, ArpaError, ArpaLM, UnigramLM
from streamer.engine import EngineOptions, load_engine
from streamer.engine.lm_folder import LMAttrs, find_language_model, read_attrs
from streamer.errors import ConfigError
from streamer.transcript import render_words
from tests.tiny_models import build_tiny_model, vocabulary

# A hand-written trigram model. Probabilities worked out from it by hand, as the format defines them:
# p(w | h) = listed n-gram, else backoff(h) + p(w | h minus its first word) (log10; a missing backoff is 0).
ARPA = """\
\\data\\
ngram 1=7
ngram 2=5
ngram 3=2

\\1-grams:
-1.0\t<unk>\t0
-99\t<s>\t-0.5
-1.0\t</s>
-0.7\tthe\t-0.3
-1.2\tcat\t-0.2
-1.2\tcap\t-0.25
-1.5\tsat

\\2-grams:
-0.2\t<s> the\t-0.1
-0.3\tthe cat\t-0.4
-1.5\tthe cap
-0.4\tcat sat
-0.5\tsat </s>

\\3-grams:
-0.05\t<s> the cat
-0.1\tthe cat sat

\\end\\
"""

VOCAB = vocabulary("english")  # the tiny model's: <pad> <s> </s> <unk> | a-z '
TOKENS = list(VOCAB)
BLANK, WB = VOCAB["<pad>"], VOCAB["|"]
SPECIALS = frozenset(range(5))


def spell(words: Sequence[Sequence[int]]) -> list[str]:
    """As the transformers engine spells: specials are silent, text lower-cased."""
    return ["".join("" if i in SPECIALS else TOKENS[i] for i in w).lower() for w in words]


def arpa(**kwargs: bool) -> ArpaLM:
    return ArpaLM.from_lines(ARPA.splitlines(), **kwargs)


# ---- the ARPA reader -------------------------------------------------------------------------------------


def test_arpa_probabilities_and_backoff_are_the_formats() -> None:
    lm = arpa()
    assert lm.order == 3
    the, cat, cap, sat, eos = (lm.word_id(w) for w in ("the", "cat", "cap", "sat", "</s>"))
    bos = lm.words.index("<s>")
    assert eos == -1 and lm.word_id("<s>") == -1  # sentence markers are never words
    eos = lm.words.index("</s>")
    cases = [
        ((bos,), the, -0.2),  # listed bigram
        ((bos, the), cat, -0.05),  # listed trigram
        ((bos, the), cap, -0.1 + -1.5),  # bo(<s> the) + p(cap | the)
        ((bos, the), sat, -0.1 + -0.3 + -1.5),  # bo(<s> the) + bo(the) + p(sat)
        ((the, cat), sat, -0.1),
        ((cat, sat), eos, 0.0 + -0.5),  # "cat sat" has no backoff: 0
        ((the, cap), eos, 0.0 + -0.25 + -1.0),
        ((bos, the), -1, -0.1 + -0.3 + -1.0),  # an unknown word is <unk>
        ((), the, -0.7),
    ]
    for context, word, expected in cases:
        assert lm.log10(context, word) == pytest.approx(expected, abs=1e-12), (context, word)


def test_arpa_states_scores_and_boundaries_in_natural_log() -> None:
    lm = arpa()
    state = lm.start()
    total = 0.0
    for word in ("the", "cat", "sat"):
        logp, state = lm.score(state, lm.word_id(word))
        total += logp
    total += lm.end(state)
    assert total == pytest.approx((-0.2 - 0.05 - 0.1 - 0.5) * LN10)
    # The state keeps only the context that still matters: "cap sat" is not a bigram, so after it only
    # "sat" is left, and scores from the full and the trimmed context agree.
    _, after_cap = lm.score(lm.start(), lm.word_id("cap"))
    _, after_sat = lm.score(after_cap, lm.word_id("sat"))
    assert after_sat == (lm.word_id("sat"),)
    # Without boundaries: no <s> context and no </s> at the end.
    free = arpa(score_boundary=False)
    assert free.start() == ()
    assert free.score(free.start(), free.word_id("the"))[0] == pytest.approx(-0.7 * LN10)
    assert free.end(free.start()) == 0.0
    assert lm.unigram(lm.word_id("cat")) == pytest.approx(-1.2 * LN10)
    assert lm.unigram(-1) == pytest.approx(-1.0 * LN10)


def test_an_arpa_model_without_unk_scores_unknown_words_as_kenlm_does() -> None:
    text = ARPA.replace("-1.0\t<unk>\t0\n", "").replace("ngram 1=7", "ngram 1=6")
    lm = ArpaLM.from_lines(text.splitlines())
    assert lm.unigram(-1) == pytest.approx(-100.0 * LN10)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.replace("\\end\\", ""), "cut short"),
        (lambda t: t.replace("-0.4\tcat sat", "-0.4\tcat dog"), "not among the 1-grams"),
        (lambda t: t.replace("-0.4\tcat sat", "-0.4 cat"), "expected a log10"),
        (lambda t: "just text\n", "not an ARPA model"),
    ],
)
def test_a_malformed_arpa_model_is_refused(change: object, message: str) -> None:
    with pytest.raises(ArpaError, match=message):
        ArpaLM.from_lines(change(ARPA).splitlines())  # type: ignore[operator]


def test_kenlm_reads_the_same_probabilities(tmp_path: Path) -> None:
    pytest.importorskip("kenlm", reason="kenlm is optional (pip install 'streamer[lm]')")
    from streamer.engine.lm_folder import KenLM

    (tmp_path / "lm.arpa").write_text(ARPA, encoding="utf-8")
    ken, ours = KenLM(tmp_path / "lm.arpa"), arpa()
    for sentence in (["the", "cat", "sat"], ["the", "cap", "sat"], ["sat", "dog", "the", "cat"]):
        sk, so = ken.start(), ours.start()
        for word in sentence:
            (lk, sk), (lo, so) = ken.score(sk, ken.word_id(word)), ours.score(so, ours.word_id(word))
            assert lk == pytest.approx(lo, abs=1e-4), (sentence, word)
        assert ken.end(sk) == pytest.approx(ours.end(so), abs=1e-4)
    assert ken.unigram(ken.word_id("cap")) == pytest.approx(ours.unigram(ours.word_id("cap")), abs=1e-4)


# ---- the character lexicon and the n-gram beam search ------------------------------------------------


def test_char_lexicon_spells_words_in_the_vocabularys_case_and_counts_what_it_leaves_out() -> None:
    upper = ["<pad>", "|", "C", "A", "T", "'"]
    lex = char_lexicon(upper, [("cat", -1.0), ("ca't", -2.0), ("dog", -1.0), ("naïve", -3.0)], skip={0, 1})
    assert lex.skipped == 2  # "dog" and "naïve" need letters the model lacks
    i = lex.find([2, 3, 4])
    assert (lex.words[i], lex.keys[i]) == ("cat", "cat")
    # The text shown is the engine's spelling of the ids; the key stays the LM's word.
    lex = char_lexicon(TOKENS, [("CAT", -1.0)], skip=SPECIALS, spell=spell)
    i = lex.find([VOCAB["c"], VOCAB["a"], VOCAB["t"]])
    assert (lex.words[i], lex.keys[i], lex.logp[i]) == ("cat", "CAT", pytest.approx(-LN10))


def frames(*rows: dict[str, float]) -> np.ndarray:
    """Log-probs of frames given as {token: probability}; other tokens share a tiny rest."""
    out = []
    for row in rows:
        p = np.full(len(TOKENS), 1e-5)
        for tok, prob in row.items():
            p[VOCAB[tok]] = prob
        out.append(np.log(p / p.sum()))
    return np.array(out, dtype=np.float32)


def spelled(*text: str) -> list[dict[str, float]]:
    """Frames of clearly spoken characters with a blank after each ('|' between words)."""
    rows: list[dict[str, float]] = []
    for word in text:
        rows += [{ch: 0.95} for ch in word] + [{"|": 0.9}]
    return rows


def lm_decoder(lm: ArpaLM | None, **options: float) -> BeamDecoder:
    words = [("the", -0.7), ("cat", -1.2), ("cap", -1.2), ("sat", -1.5)]
    lex = char_lexicon(TOKENS, words, skip=SPECIALS, spell=spell)
    beam = LMAttrs(alpha=0.5, beta=1.0).beam_options(BeamOptions(**options))  # type: ignore[arg-type]
    return BeamDecoder(lex, blank_id=BLANK, delimiter_id=WB, options=beam, ignore=SPECIALS - {WB}, lm=lm)


def test_the_bigram_context_picks_the_word_that_greedy_and_the_unigram_model_miss() -> None:
    # "the ca? sat": the last letter of the middle word sounds a little more like p than t.
    rows = [*spelled("the"), {"c": 0.95}, {"a": 0.95}, {"p": 0.5, "t": 0.46}, {"|": 0.9}, *spelled("sat")]
    lp = frames(*rows, {"<pad>": 0.999})
    greedy = greedy_words(lp, blank_id=BLANK, delimiter_id=WB)
    assert spell([w.tokens for w in greedy.words]) == ["the", "cap", "sat"]
    # cat and cap are equally likely alone: the unigram model follows the acoustics...
    assert [w.text for w in lm_decoder(None).decode(lp).words] == ["the", "cap", "sat"]
    # ...the trigram model knows "the cat sat" far better than "the cap sat".
    result = lm_decoder(arpa()).decode(lp)
    assert [w.text for w in result.words] == ["the", "cat", "sat"]
    assert [w.tokens for w in result.words][1] == (VOCAB["c"], VOCAB["a"], VOCAB["t"])


def test_a_word_outside_the_lexicon_is_still_spelled_from_its_characters() -> None:
    lp = frames(*spelled("the", "dog"), {"<pad>": 0.999})
    dec = lm_decoder(arpa())
    result = dec.decode(lp)
    assert [w.text for w in result.words] == ["the", None]
    words, _ = render_words(
        lp,
        blank_id=BLANK,
        delimiter_id=WB,
        spell=spell,
        frame_samples=320,
        first_frame=0,
        origin_sample=0,
        decoder=dec,
    )
    assert [w.word for w in words] == ["the", "dog"]


def test_the_unigram_model_is_the_lexicons_own_table() -> None:
    lm = UnigramLM(["a", "b", "a"], [-1.0, -2.0, -3.0])
    assert lm.word_id("a") == 0 and lm.word_id("z") == -1
    assert lm.score(lm.start(), 1) == (-2.0, ()) and lm.score((), -1) == (0.0, ())
    assert lm.end(()) == 0.0 and lm.order == 1


# ---- attrs.json and the checkpoint's language_model/ -----------------------------------------------------


def test_attrs_map_onto_the_beam_options_as_pyctcdecode_scores(tmp_path: Path) -> None:
    path = tmp_path / "attrs.json"
    path.write_text(json.dumps({"alpha": 0.7, "beta": 2, "unk_score_offset": -9.0, "score_boundary": False}))
    attrs = read_attrs(path)
    assert attrs == LMAttrs(0.7, 2.0, -9.0, False)
    options = attrs.beam_options(BeamOptions(beam=16))
    assert (options.beam, options.lm_weight, options.word_bonus) == (16, 0.7, 2.0)
    assert options.oov_logp == pytest.approx(-9.0 * LN10) and options.split_penalty == math.inf
    path.write_text('{"alpha": "high"}')
    with pytest.raises(ConfigError, match="alpha must be a number"):
        read_attrs(path)


def write_language_model(folder: Path) -> Path:
    lm = folder / "language_model"
    lm.mkdir()
    (lm / "lm.arpa").write_text(ARPA, encoding="utf-8")
    # "dog" and "naïve" are not in the LM: left out.
    (lm / "unigrams.txt").write_text("the\ncat\ncap\nsat\ndog\nnaïve\n", encoding="utf-8")
    attrs = {"alpha": 0.7, "beta": 2.5, "unk_score_offset": -9.0, "score_boundary": True}
    (lm / "attrs.json").write_text(json.dumps(attrs), encoding="utf-8")
    return lm


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a tiny model with a language_model/, the same model without)."""
    root = tmp_path_factory.mktemp("lm")
    plain = build_tiny_model(root / "plain")
    with_lm = root / "with-lm"
    shutil.copytree(plain, with_lm)
    write_language_model(with_lm)
    return with_lm, plain


def test_a_checkpoint_with_a_language_model_decodes_finals_with_it(
    checkpoints: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from streamer.engine import lm_folder

    caplog.set_level(logging.INFO, logger="streamer.engine")

    with_lm, plain = checkpoints
    assert find_language_model(str(with_lm)) == with_lm / "language_model"
    assert find_language_model(str(plain)) is None
    # Without the kenlm module the ARPA file is read in pure Python (with it, by kenlm: tested above).
    monkeypatch.setattr(lm_folder, "kenlm_available", lambda: False)
    engine = load_engine(str(with_lm), EngineOptions(device="cpu", warmup=False))
    try:
        decoder = engine.final_decoder  # type: ignore[attr-defined]
        assert isinstance(decoder, BeamDecoder) and isinstance(decoder.lm, ArpaLM)
        assert sorted(decoder.lexicon.words) == ["cap", "cat", "sat", "the"]
        assert "3-gram LM" in caplog.text and "2 unknown to the LM left out" in caplog.text  # dog, naïve
        o = decoder.options
        assert (o.lm_weight, o.word_bonus, o.oov_logp) == (0.7, 2.5, pytest.approx(-9.0 * LN10))
        # Its words are decoded from the model's own log-probs (random weights: any text will do).
        (lp,) = engine.forward([np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1])
        words, _ = render_words(
            lp,
            blank_id=engine.blank_id,
            delimiter_id=engine.word_delimiter_id,
            spell=engine.spell,
            frame_samples=engine.frame_samples,
            first_frame=0,
            origin_sample=0,
            decoder=decoder,
        )
        assert all(w.word for w in words)
    finally:
        engine.close()
    greedy = load_engine(str(with_lm), EngineOptions(device="cpu", warmup=False, decoder="greedy"))
    assert getattr(greedy, "final_decoder", None) is None
    greedy.close()


def test_without_a_language_model_finals_stay_greedy_and_beam_is_refused(
    checkpoints: tuple[Path, Path],
) -> None:
    _, plain = checkpoints
    engine = load_engine(str(plain), EngineOptions(device="cpu", warmup=False))
    assert getattr(engine, "final_decoder", None) is None
    engine.close()
    with pytest.raises(ConfigError, match="no language_model/ folder"):
        load_engine(str(plain), EngineOptions(device="cpu", warmup=False, decoder="beam"))


def test_a_hub_checkpoints_language_model_comes_with_its_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    calls: list[tuple[str, dict[str, object]]] = []

    def snapshot_download(repo_id: str, **kwargs: object) -> str:
        calls.append((repo_id, kwargs))
        if repo_id == "org/missing":
            raise OSError("not cached")
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert find_language_model("org/w2v2") is None  # a snapshot without language_model/
    lm = write_language_model(tmp_path)
    assert find_language_model("org/w2v2") == lm
    assert find_language_model("org/missing") is None
    assert calls[0] == ("org/w2v2", {"allow_patterns": ["language_model/*"], "local_files_only": True})


def test_the_decoder_can_be_chosen_per_model() -> None:
    from streamer.cli import build_config

    config = build_config(
        ["--model", "en=builtin:en", "--model", "he=/m/he", "--decoder", "greedy,he=beam"], {}
    )
    assert config.engine.for_model("he").decoder == "beam"
    assert config.engine.for_model("en").decoder == "greedy"
    assert build_config([], {}).engine.decoder == "auto"
    with pytest.raises(ConfigError, match="no model 'fr' is served"):
        build_config(["--decoder", "fr=beam"], {})


def test_the_comparison_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from streamer.bench.lmcompare import main

    argv = ["--utterances", "2", "--seconds", "3", "--words", "60", "--beams", "4", "--pyctc-beams", ""]
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("decoder=")]
    assert lines[0].startswith("decoder=greedy wer_truth=") and lines[1].startswith("decoder=ours-arpa-beam4")


def test_keyterms_with_a_character_vocabulary_with_and_without_a_language_model(
    checkpoints: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamer.engine import lm_folder

    monkeypatch.setattr(lm_folder, "kenlm_available", lambda: False)
    # "the d?g": the vowel sounds a little more like u than o; "dog" is no word of the LM's.
    rows = [*spelled("the"), {"d": 0.95}, {"u": 0.5, "o": 0.46}, {"g": 0.95}]
    lp = frames(*rows, {"<pad>": 0.999})
    for folder in checkpoints:  # with language_model/ (its n-gram beam search), then without (plain beam)
        engine = load_engine(str(folder), EngineOptions(device="cpu", warmup=False))
        try:
            compiler = keyterm_compiler(engine)
            assert compiler.pronounce("Dog") == [(VOCAB["d"], VOCAB["o"], VOCAB["g"])]
            plain = compiler.decoder.decode(lp)
            assert spell([w.tokens for w in plain.words]) == ["the", "dug"]
            trie = compiler.compile([Keyterm("Dog")])
            boosted = compiler.decoder.decode(lp, keyterms=trie)
            assert [w.text for w in boosted.words][-1] == "Dog", folder.name
            assert boosted.words[-1].tokens == (VOCAB["d"], VOCAB["o"], VOCAB["g"])
        finally:
            engine.close()
