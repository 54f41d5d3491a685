"""Tier 1 (pure logic): keyterm lists, their trie, and boosting in the beam search on hand-made log-probs."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.cli import build_config
from streamer.decoding import BeamDecoder, BeamOptions
from streamer.decoding.keyterms import (
    Keyterm,
    KeytermError,
    KeytermLimits,
    KeytermTrie,
    char_pronouncer,
    check_keyterms,
    parse_keyterm,
)
from streamer.errors import ConfigError
from tests.test_decoding import BLANK, WB, A, B, C, D, frames, lexicon

# Units by letter, for terms written in the test's alphabet.
UNITS = {"a": A, "b": B, "c": C, "d": D}


def pronounce(word: str) -> list[tuple[int, ...]]:
    units = [UNITS.get(ch) for ch in word.lower()]
    return [] if any(u is None for u in units) else [tuple(u for u in units if u is not None)]


def trie(*terms: str | Keyterm) -> KeytermTrie:
    return KeytermTrie.build([t if isinstance(t, Keyterm) else Keyterm(t) for t in terms], pronounce)


def decoder(**options: float) -> BeamDecoder:
    lex = lexicon(("cab", [C, A, B], -3.0), ("a", [A], -2.0), ("ab", [A, B], -3.0))
    return BeamDecoder(lex, blank_id=BLANK, delimiter_id=WB, options=BeamOptions(**options))  # type: ignore[arg-type]


# "?ab": the first frame leans to c (a lexicon word, "cab") over d ("dab" is no word).
DAB = frames({C: 0.55, D: 0.42}, {BLANK: 0.9}, {A: 0.9}, {B: 0.9}, {BLANK: 0.999})


def test_parse_and_limits() -> None:
    assert parse_keyterm("  Jonatas   Grosman ", with_boost=False) == Keyterm("Jonatas Grosman", 1.0)
    assert parse_keyterm("grosman:2.5", with_boost=True) == Keyterm("grosman", 2.5)
    assert parse_keyterm("grosman", with_boost=True) == Keyterm("grosman", 1.0)
    assert parse_keyterm("10:30", with_boost=False) == Keyterm("10:30", 1.0)
    with pytest.raises(KeytermError, match="must be a number") as bad:
        parse_keyterm("grosman:lots", with_boost=True)
    assert bad.value.param == "keywords"
    limits = KeytermLimits(max_terms=2, max_chars=10, max_words=2, max_boost=5.0)
    check_keyterms([Keyterm("ab"), Keyterm("cd ef", -5.0)], limits)
    for terms, limit in [
        ([Keyterm("a")] * 3, "at most 2 keyterms"),
        ([Keyterm("abcdefghijk")], "at most 10 characters"),
        ([Keyterm("a b c")], "at most 2 words"),
        ([Keyterm("ab", 6.0)], "between -5 and 5"),
        ([Keyterm("")], "empty"),
    ]:
        with pytest.raises(KeytermError, match=limit):
            check_keyterms(terms, limits)


def test_trie_holds_every_pronunciation_and_skips_what_cannot_be_spelled() -> None:
    def two_ways(word: str) -> list[tuple[int, ...]]:
        return [(A, B), (A, C)] if word == "ab" else pronounce(word)

    t = KeytermTrie.build([Keyterm("ab", 2.0), Keyterm("ab d"), Keyterm("xyz")], two_ways)
    assert [k.text for k in t.terms] == ["ab", "ab d"] and t.skipped == ["xyz"]
    node_b = t.children[t.children[0][A]][B]
    node_c = t.children[t.children[0][A]][C]
    assert t.terms[t.term[node_b]].text == "ab" and t.terms[t.term[node_c]].text == "ab"
    # "ab d" is "ab" followed by "d" (word boundaries are not units), both ways
    assert t.terms[t.term[t.children[node_b][D]]].text == "ab d"
    assert t.terms[t.term[t.children[node_c][D]]].text == "ab d"
    # the gain on a shared prefix is the strongest term's
    assert t.gain[t.children[0][A]] == 2.0


def test_a_keyterm_wins_where_greedy_and_the_lexicon_hear_something_else() -> None:
    dec = decoder()
    assert [w.text for w in dec.decode(DAB).words] == ["cab"]
    result = dec.decode(DAB, keyterms=trie("Dab"))
    assert [w.text for w in result.words] == ["Dab"]  # the keyterm's own spelling
    word = result.words[0]
    assert word.tokens == (D, A, B) and (word.start_frame, word.end_frame) == (0, 4)
    # a negative boost keeps it out even where the audio favours it
    favoured = frames({D: 0.55, C: 0.42}, {BLANK: 0.9}, {A: 0.9}, {B: 0.9}, {BLANK: 0.999})
    assert [w.text for w in dec.decode(favoured, keyterms=trie("dab")).words] == ["dab"]
    assert [w.text for w in dec.decode(favoured, keyterms=trie(Keyterm("dab", -3.0))).words] == ["cab"]


def test_a_partial_match_gives_nothing() -> None:
    # "dabc" starts like the audio ("dab") but is not in it: its bonus is taken back, the result is as
    # without keyterms; so is a term that breaks off inside the word ("dac").
    dec = decoder()
    plain = [(w.text, w.tokens) for w in dec.decode(DAB).words]
    for term in ("dabc", "dac", "dabd"):
        assert [(w.text, w.tokens) for w in dec.decode(DAB, keyterms=trie(term)).words] == plain, term


def test_a_keyterm_only_matches_whole_words() -> None:
    # "ab" inside "cab" is not the keyterm "ab" (matches start at a word's start).
    lp = frames({C: 0.9}, {BLANK: 0.9}, {A: 0.9}, {B: 0.9}, {BLANK: 0.999})
    result = decoder().decode(lp, keyterms=trie("AB"))
    assert [w.text for w in result.words] == ["cab"]


def test_a_multi_word_keyterm_is_spelled_word_by_word_with_or_without_a_boundary() -> None:
    with_boundary = frames(
        {C: 0.55, D: 0.42}, {A: 0.9}, {B: 0.9}, {WB: 0.9}, {C: 0.55, D: 0.42}, {A: 0.9}, {BLANK: 0.999}
    )
    dec = decoder()
    assert [w.text for w in dec.decode(with_boundary).words] == ["cab", None]
    words = dec.decode(with_boundary, keyterms=trie("Dab Da")).words
    assert [(w.text, w.tokens, w.start_frame, w.end_frame) for w in words] == [
        ("Dab", (D, A, B), 0, 3),
        ("Da", (D, A), 4, 6),
    ]
    # no delimiter from the model: the units still match; the two words share the span by their letters
    run_on = frames({C: 0.55, D: 0.42}, {A: 0.9}, {B: 0.9}, {D: 0.9}, {A: 0.9}, {BLANK: 0.999})
    words = decoder(split_penalty=float("inf")).decode(run_on, keyterms=trie("Dab Da")).words
    assert [(w.text, w.start_frame, w.end_frame) for w in words] == [("Dab", 0, 3), ("Da", 3, 5)]


def test_keyterms_with_a_character_vocabulary() -> None:
    vocab = ["<pad>", "|", "A", "B", "C", "D", "'"]
    spell = char_pronouncer(vocab)
    assert spell("Dab") == [(5, 2, 3)] and spell("x-ray") == []
    assert char_pronouncer(["<pad>", "|", "a", "b"])("AB") == [(2, 3)]
    t = KeytermTrie.build([Keyterm("Dab")], spell)
    assert t.terms[t.term[t.children[t.children[t.children[0][5]][2]][3]]].text == "Dab"


def test_server_keyterms_from_flags_files_and_the_environment(tmp_path: Path) -> None:
    terms = tmp_path / "terms.txt"
    terms.write_text("# products\nKubernetes:2\n\nJonatas Grosman  # a name\n", encoding="utf-8")
    models = ["--model", "en=fake:tone", "--model", "he=fake:tone"]
    cfg = build_config(
        [*models, "--keyterm", "en=Whittemore", "--keyterm", "Acme", "--keyterms-file", f"he={terms}"], {}
    )
    assert cfg.keyterms == (
        ("en", Keyterm("Whittemore")),
        ("*", Keyterm("Acme")),
        ("he", Keyterm("Kubernetes", 2.0)),
        ("he", Keyterm("Jonatas Grosman")),
    )
    assert build_config(models, {"STREAMER_KEYTERMS": "Acme,en=Whittemore"}).keyterms == (
        ("*", Keyterm("Acme")),
        ("en", Keyterm("Whittemore")),
    )
    assert build_config(["--max-keyterms", "5"], {}).keyterm_limits.max_terms == 5
    bad = tmp_path / "bad.txt"
    bad.write_text("fine\nword:lots\n", encoding="utf-8")
    for argv, message in [
        (["--keyterms-file", str(bad)], "bad.txt:2: the boost"),
        (["--keyterms-file", str(tmp_path / "missing.txt")], "cannot read"),
        (["--max-keyterms", "1", "--keyterm", "a", "--keyterm", "b"], "at most 1 keyterms"),
    ]:
        with pytest.raises(ConfigError, match=message):
            build_config(argv, {})
