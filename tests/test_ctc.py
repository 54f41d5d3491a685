"""Tier 1 (pure): greedy CTC decoding, collapse across boundaries, word times and confidences."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.ctc import greedy_words

BLANK, DELIM = 0, 1


def _frames(path: list[int], vocab: int = 8, peak: float = 0.9) -> np.ndarray:
    probs = np.full((len(path), vocab), (1 - peak) / (vocab - 1), dtype=np.float64)
    probs[np.arange(len(path)), path] = peak
    return np.log(probs).astype(np.float32)


def test_collapse_words_and_times() -> None:
    #        0  1  2  3  4  5  6  7  8  9
    path = [0, 2, 2, 0, 2, 3, 1, 0, 4, 4]
    d = greedy_words(_frames(path), blank_id=BLANK, delimiter_id=DELIM, frame_offset=100)
    assert [w.tokens for w in d.words] == [(2, 2, 3), (4,)]
    assert (d.words[0].start_frame, d.words[0].end_frame) == (101, 106)
    assert (d.words[1].start_frame, d.words[1].end_frame) == (108, 110)
    assert d.last_token == 4
    assert all(abs(w.confidence - 0.9) < 1e-5 for w in d.words)


def test_no_delimiter_means_one_word() -> None:
    d = greedy_words(_frames([2, 0, 3, 3, 0, 5]), blank_id=BLANK, delimiter_id=None)
    assert [w.tokens for w in d.words] == [(2, 3, 5)]


def test_confidence_reflects_probabilities() -> None:
    sure = greedy_words(_frames([2, 3], peak=0.99), blank_id=BLANK, delimiter_id=DELIM).words[0]
    unsure = greedy_words(_frames([2, 3], peak=0.4), blank_id=BLANK, delimiter_id=DELIM).words[0]
    assert sure.confidence > 0.98 > 0.5 > unsure.confidence


def test_empty_input_keeps_carry() -> None:
    d = greedy_words(np.zeros((0, 8), np.float32), blank_id=BLANK, delimiter_id=DELIM, prev_token=5)
    assert d.words == [] and d.last_token == 5


@settings(max_examples=200, deadline=None)
@given(
    path=st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=60),
    cut=st.integers(min_value=0, max_value=60),
)
def test_split_decoding_with_carry_equals_one_pass(path: list[int], cut: int) -> None:
    # Tokens only: a word spanning the cut appears as two pieces, but no token is doubled or lost.
    cut = min(cut, len(path))
    frames = _frames(path)
    whole = greedy_words(frames, blank_id=BLANK, delimiter_id=DELIM)
    a = greedy_words(frames[:cut], blank_id=BLANK, delimiter_id=DELIM)
    b = greedy_words(
        frames[cut:],
        blank_id=BLANK,
        delimiter_id=DELIM,
        frame_offset=cut,
        prev_token=a.last_token if cut else None,
    )
    flat = [t for w in whole.words for t in w.tokens]
    assert [t for w in a.words + b.words for t in w.tokens] == flat
    if all(w.end_frame <= cut or w.start_frame >= cut for w in whole.words):
        assert a.words + b.words == whole.words  # a cut between words changes nothing at all
