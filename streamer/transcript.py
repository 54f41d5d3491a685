"""What sessions emit: words and transcript events in stream time, independent of any wire format."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from streamer import SAMPLE_RATE
from streamer.ctc import FloatArray, TokenWord, greedy_words, transcript_confidence
from streamer.decoding import BeamResult, BeamWord, KeytermTrie, WordDecoder

Speller = Callable[[Sequence[Sequence[int]]], list[str]]


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float
    confidence: float


@dataclass(frozen=True)
class Transcript:
    """A partial (`is_final=False`) or final transcript of stream audio [start, start + duration)."""

    channel: int
    start: float
    duration: float
    words: tuple[Word, ...]
    is_final: bool
    speech_final: bool = False
    from_finalize: bool = False
    final_through: int | None = None
    """Finals only: the channel's 16 kHz stream sample up to which all its audio is final after this one
    (where a resumed stream would start over)."""

    @property
    def text(self) -> str:
        return " ".join(w.word for w in self.words)

    @property
    def confidence(self) -> float:
        return transcript_confidence([w.confidence for w in self.words])


@dataclass(frozen=True)
class SpeechStarted:
    channel: int
    timestamp: float


@dataclass(frozen=True)
class UtteranceEnd:
    channel: int
    last_word_end: float


Event = Transcript | SpeechStarted | UtteranceEnd


def shifted(event: Event, samples: int) -> Event:
    """`event` moved `samples` (16 kHz) later in stream time: a session that started mid-stream (a
    resumed stream) reports times of the whole stream."""
    if samples == 0:
        return event
    s = samples / SAMPLE_RATE
    if isinstance(event, Transcript):
        words = tuple(
            Word(w.word, round(w.start + s, 4), round(w.end + s, 4), w.confidence) for w in event.words
        )
        through = None if event.final_through is None else event.final_through + samples
        return replace(event, start=round(event.start + s, 4), words=words, final_through=through)
    if isinstance(event, SpeechStarted):
        return replace(event, timestamp=round(event.timestamp + s, 4))
    return replace(event, last_word_end=round(event.last_word_end + s, 4))


def render_words(
    logprobs: FloatArray,
    *,
    blank_id: int,
    delimiter_id: int | None,
    spell: Speller,
    frame_samples: int,
    first_frame: int,
    origin_sample: int,
    prev_token: int | None = None,
    decoder: WordDecoder | None = None,
    decoded: BeamResult | None = None,
    keyterms: KeytermTrie | None = None,
) -> tuple[list[Word], int]:
    """Decode frames `first_frame...` of a segment starting at stream sample `origin_sample` into words.

    Returns the words (times in stream seconds) and the last frame's token for the next call. With a
    `decoder` (a beam search) its words are used; those it cannot name are spelled from their tokens.
    `decoded`: that decoder's result for these frames, already computed (off the event loop).
    `keyterms`: terms the decoder favours (see `streamer.decoding.keyterms`).
    """
    if decoder is not None:
        result = (
            decoded
            if decoded is not None
            else decoder.decode(logprobs, frame_offset=first_frame, prev_token=prev_token, keyterms=keyterms)
        )
        unknown = [w.tokens for w in result.words if w.text is None]
        spelled = iter(spell(unknown) if unknown else [])
        texts = [w.text if w.text is not None else next(spelled) for w in result.words]
        decoded_words: Sequence[TokenWord | BeamWord] = result.words
        last_token = result.last_token
    else:
        greedy = greedy_words(
            logprobs,
            blank_id=blank_id,
            delimiter_id=delimiter_id,
            frame_offset=first_frame,
            prev_token=prev_token,
        )
        texts = spell([w.tokens for w in greedy.words]) if greedy.words else []
        decoded_words = greedy.words
        last_token = greedy.last_token
    words = [
        Word(
            text,
            (origin_sample + w.start_frame * frame_samples) / SAMPLE_RATE,
            (origin_sample + w.end_frame * frame_samples) / SAMPLE_RATE,
            round(w.confidence, 4),
        )
        for w, text in zip(decoded_words, texts, strict=True)
        if text
    ]
    return words, last_token
