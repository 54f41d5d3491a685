"""SRT/WebVTT building from word lists: timestamps, cue splitting, text wrapping."""

from __future__ import annotations

import itertools
from pathlib import Path

from client.captions import (
    Cue,
    build_cues,
    timestamp,
    to_srt,
    to_vtt,
    words_of,
    wrap,
    write_captions,
)
from client.messages import Result, Word


def steady_words(count: int, *, step: float = 0.4, start: float = 0.0, text: str = "word") -> list[Word]:
    return [Word(f"{text}{i}", start + i * step, start + i * step + step * 0.8) for i in range(count)]


def test_timestamps() -> None:
    assert timestamp(0) == "00:00:00,000"
    assert timestamp(1.2345) == "00:00:01,234" or timestamp(1.2345) == "00:00:01,235"
    assert timestamp(61.5) == "00:01:01,500"
    assert timestamp(3600 + 2 * 60 + 3.004, ".") == "01:02:03.004"
    assert timestamp(59.9996) == "00:01:00,000"  # rounding carries into the next unit
    assert timestamp(-0.2) == "00:00:00,000"


def test_wrap_fills_lines_greedily_and_never_cuts_a_word() -> None:
    assert wrap(["a", "b", "c"], 3) == ["a b", "c"]
    assert wrap(["supercalifragilistic"], 5) == ["supercalifragilistic"]
    assert wrap([], 10) == []


def test_cues_stay_within_two_lines_of_42_chars_and_7_seconds() -> None:
    words = steady_words(60, step=0.3)
    cues = build_cues(words)
    assert len(cues) > 3
    for cue in cues:
        assert 1 <= len(cue.lines) <= 2
        assert all(len(line) <= 42 for line in cue.lines)
        assert cue.end - cue.start <= 7.0
    assert " ".join(c.text for c in cues) == " ".join(w.text for w in words)
    for a, b in itertools.pairwise(cues):
        assert a.start < a.end <= b.start


def test_slow_speech_is_split_by_duration() -> None:
    words = [Word("hi", i * 2.0, i * 2.0 + 1.0) for i in range(6)]  # 2 chars a word: only time limits
    cues = build_cues(words)
    assert [c.text for c in cues] == ["hi hi hi hi", "hi hi"]
    assert cues[0].start == 0.0 and cues[0].end == 7.0


def test_a_long_pause_starts_a_new_cue() -> None:
    words = [Word("one", 0.0, 0.5), Word("two", 0.6, 1.0), Word("three", 4.0, 4.5)]
    cues = build_cues(words)
    assert [c.text for c in cues] == ["one two", "three"]


def test_short_cues_get_a_minimum_duration_but_never_overlap() -> None:
    cues = build_cues([Word("a", 1.0, 1.1), Word("b", 3.0, 3.1)], max_gap=0.5)
    assert cues[0] == Cue(1.0, 1.5, ("a",))
    assert cues[1] == Cue(3.0, 3.5, ("b",))
    tight = build_cues([Word("a", 1.0, 1.1), Word("b", 1.2, 1.3)], max_gap=0.05)
    assert tight[0].end == 1.2 and tight[1].start == 1.2


def test_out_of_order_word_times_do_not_go_backwards() -> None:
    words = [Word("x" * 40, 5.0, 6.0), Word("y" * 40, 5.5, 6.5), Word("z" * 40, 2.0, 3.0)]
    cues = build_cues(words)
    for a, b in itertools.pairwise(cues):
        assert a.start < a.end <= b.start < b.end


def test_srt_and_vtt_format() -> None:
    cues = [Cue(0.5, 2.25, ("hello there",)), Cue(3.0, 4.0, ("general", "kenobi"))]
    assert to_srt(cues) == (
        "1\n00:00:00,500 --> 00:00:02,250\nhello there\n\n2\n00:00:03,000 --> 00:00:04,000\ngeneral\nkenobi\n"
    )
    assert to_vtt(cues) == (
        "WEBVTT\n\n"
        "00:00:00.500 --> 00:00:02.250\nhello there\n\n00:00:03.000 --> 00:00:04.000\ngeneral\nkenobi\n"
    )
    assert to_srt([]) == ""
    assert to_vtt([]) == "WEBVTT\n\n"


def test_results_without_word_times_are_spread_over_their_span(tmp_path: Path) -> None:
    with_words = Result(
        True, True, False, 0.0, 1.0, "hi there", (Word("hi", 0.1, 0.3), Word("there", 0.4, 0.8))
    )
    bare = Result(True, True, False, 2.0, 1.0, "good day", ())
    empty = Result(True, False, False, 3.0, 1.0, "", ())
    words = words_of([with_words, bare, empty])
    assert [(w.text, w.start, w.end) for w in words] == [
        ("hi", 0.1, 0.3),
        ("there", 0.4, 0.8),
        ("good", 2.0, 2.5),
        ("day", 2.5, 3.0),
    ]
    srt, vtt = tmp_path / "a.srt", tmp_path / "a.vtt"
    write_captions([with_words, bare], srt=srt, vtt=vtt)
    assert srt.read_text(encoding="utf-8").startswith("1\n00:00:00,100 --> ")
    assert vtt.read_text(encoding="utf-8").startswith("WEBVTT\n\n00:00:00.100 --> ")
