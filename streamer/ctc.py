"""Greedy CTC decoding of stitched log-probs into words with frame times and confidences (pure logic).

`greedy_words(logprobs, blank_id=..., delimiter_id=..., frame_offset=..., prev_token=...)` returns the words
and the last frame's token, which the caller passes as `prev_token` to the next call so that a token repeated
across a boundary is collapsed exactly as in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class TokenWord:
    """A word as token ids, with segment frame indices [start_frame, end_frame) and a confidence."""

    tokens: tuple[int, ...]
    start_frame: int
    end_frame: int
    confidence: float


@dataclass(frozen=True)
class Decoded:
    words: list[TokenWord]
    last_token: int
    """Argmax token of the last frame (blank for empty input), to carry into the next call."""


def greedy_words(
    logprobs: FloatArray,
    *,
    blank_id: int,
    delimiter_id: int | None,
    frame_offset: int = 0,
    prev_token: int | None = None,
) -> Decoded:
    """Collapse the best path into words.

    A word ends at a delimiter token or at the end of the input; with no delimiter in the vocabulary the
    whole input is one word. Word confidence is the mean over its tokens of each token's best frame
    probability. The token ending a previous call (`prev_token`) is not emitted again if it continues.
    """
    if len(logprobs) == 0:
        return Decoded([], blank_id if prev_token is None else prev_token)
    best = logprobs.argmax(axis=1)
    best_lp = logprobs[np.arange(len(best)), best]
    words: list[TokenWord] = []
    tokens: list[int] = []
    probs: list[float] = []
    word_start = 0
    word_end = 0
    prev = blank_id if prev_token is None else prev_token

    def close_word() -> None:
        if tokens:
            words.append(
                TokenWord(
                    tuple(tokens),
                    frame_offset + word_start,
                    frame_offset + word_end,
                    float(np.mean(probs)),
                )
            )
        tokens.clear()
        probs.clear()

    for i, (tok, lp) in enumerate(zip(best.tolist(), best_lp.tolist(), strict=True)):
        if tok == prev:
            if tok != blank_id and tok != delimiter_id and tokens:
                probs[-1] = max(probs[-1], float(np.exp(lp)))
                word_end = i + 1
            continue
        prev = tok
        if tok == blank_id:
            continue
        if tok == delimiter_id:
            close_word()
            continue
        if not tokens:
            word_start = i
        tokens.append(tok)
        probs.append(float(np.exp(lp)))
        word_end = i + 1
    close_word()
    return Decoded(words, int(best[-1]))


def transcript_confidence(confidences: list[float]) -> float:
    """Mean word confidence (0 for no words)."""
    return float(np.mean(confidences)) if confidences else 0.0
