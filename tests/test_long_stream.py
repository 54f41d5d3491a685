"""Tier 2 (fake engine, sans-I/O): a stream's memory does not grow with its length, and word times stay
exact after many minutes. An hour-long call must hold the same state as a one-minute one: per-stream
buffers are bounded by the longest segment, never by the stream."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from streamer.audio import AudioFormat, encode_mulaw
from streamer.engine.fake import EnergyDetector, ToneEngine, tone_phrase
from streamer.session import StreamingConfig
from streamer.stream import Stream
from streamer.transcript import Transcript
from tests.sessions import WORDS, answer

RATE = 8000  # a phone call: mu-law at 8 kHz, so the resampler's state is part of what is measured


def deep_size(obj: object, shared: set[int]) -> int:
    """Bytes held by `obj` and everything it refers to, except the objects in `shared` (the engine and the
    config, which are not per stream). numpy arrays count their buffers."""
    seen = set(shared)
    total = 0
    stack: list[Any] = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, type):
            continue
        seen.add(id(item))
        if isinstance(item, np.ndarray):
            total += item.nbytes + 112
            continue
        total += sys.getsizeof(item)
        if isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple | set | frozenset) or type(item).__name__ == "deque":
            stack += list(item)
        if hasattr(item, "__dict__"):
            stack.append(vars(item))
        for slot in getattr(type(item), "__slots__", ()):
            if hasattr(item, slot):
                stack.append(getattr(item, slot))
    return total


def call_minute(minute: int) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """One minute of a caller at 8 kHz: phrases of two or three tone words with 0.6-2.5 s pauses; returns
    the audio and (start second within the minute, first word) of each phrase."""
    rng = np.random.default_rng(minute)
    parts: list[np.ndarray] = []
    phrases: list[tuple[float, str]] = []
    length = 0
    while length < 55 * 16000:
        pause = np.zeros(int(rng.uniform(0.6, 2.5) * 16000), np.float32)
        words = [WORDS[i] for i in rng.choice(len(WORDS), size=int(rng.integers(2, 4)), replace=False)]
        phrases.append(((length + len(pause)) / 16000, words[0]))
        phrase = tone_phrase(words, seed=minute)
        parts += [pause, phrase]
        length += len(pause) + len(phrase)
    parts.append(np.zeros(60 * 16000 - length, np.float32))
    audio = np.concatenate(parts)
    import soxr

    return soxr.resample(audio, 16000, RATE).astype(np.float32), phrases


def test_state_stays_flat_and_word_times_exact_over_a_long_call() -> None:
    engine = ToneEngine()
    config = StreamingConfig(utterance_end_ms=1000)
    stream = Stream(engine, config, AudioFormat("mulaw", RATE), EnergyDetector)
    shared = {id(engine), id(config)}
    minutes = 60
    sizes: dict[int, int] = {}
    finals: list[Transcript] = []
    last_phrase: tuple[float, str] = (0.0, "")
    for minute in range(minutes):
        audio, phrases = call_minute(minute)
        data = encode_mulaw(audio)
        for pos in range(0, len(data), 160):  # 20 ms frames, as phone platforms send
            stream.receive_bytes(data[pos : pos + 160])
            while answer(stream, engine):
                pass
            finals += [e for e in stream.take_events() if isinstance(e, Transcript) and e.is_final]
        last_phrase = (minute * 60 + phrases[-1][0], phrases[-1][1])
        sizes[minute] = deep_size(stream, shared)
    stream.close()
    while answer(stream, engine):
        pass
    finals += [e for e in stream.take_events() if isinstance(e, Transcript) and e.is_final]

    # Memory: what the stream holds after an hour is what it held after 2 minutes (with some slack for
    # whichever segment happens to be open at a minute's end). A stream that kept its audio would fail here.
    print(f"stream state, bytes, minutes 1, 10, 30, 60: {sizes[1]} {sizes[9]} {sizes[29]} {sizes[59]}")
    assert max(sizes[m] for m in range(2, minutes)) <= 1.3 * sizes[1] + 64_000, sizes
    # Times: the last phrase's first word is where it was put into the call, 59 minutes in.
    start, word = last_phrase
    match = [w for f in finals for w in f.words if w.word == word and abs(w.start - start) < 0.2]
    assert match, (start, word, [(w.word, w.start) for w in finals[-1].words])
    assert abs(match[-1].start - start) < 0.1
    spoken = sum(1 for f in finals for _ in f.words)
    assert spoken > minutes * 30  # every minute's phrases came out as finals
