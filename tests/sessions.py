"""Helpers that drive sans-I/O sessions and streams with an engine, synchronously, for tests."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from streamer.engine.base import Engine
from streamer.engine.fake import tone_phrase
from streamer.session import Session
from streamer.stream import Stream
from streamer.transcript import Event, Transcript

WORDS = ["bad", "cab", "face", "head", "jig", "pole", "kid", "fade", "lamp", "dim", "gap", "hike"]


def speech(groups: Sequence[Sequence[str]], pause_s: float = 1.0, seed: int = 0) -> np.ndarray:
    """Phrases of tone words separated by `pause_s` of silence (with silence around)."""
    sil = np.zeros(int(pause_s * 16000), np.float32)
    parts = [sil]
    for i, g in enumerate(groups):
        parts += [tone_phrase(list(g), seed=seed + i), sil]
    return np.concatenate(parts)


def answer(target: Session | Stream, engine: Engine, rng: random.Random | None = None) -> int:
    """Answer every request the target has (shuffled when `rng` is given); returns how many."""
    requests = target.take_requests()
    if rng is not None:
        rng.shuffle(requests)
    for r in requests:
        out = engine.forward([r.audio])[0]
        if isinstance(target, Stream):
            target.receive_logprobs(r, out)
        else:
            target.receive_logprobs(r.id, out)
    return len(requests)


def run_session(
    session: Session,
    engine: Engine,
    audio: np.ndarray,
    sizes: Sequence[int] = (1600,),
    shuffle_seed: int | None = None,
) -> list[Event]:
    """Feed `audio` in chunks of the given sizes (cycled), answering requests as they come, then close."""
    rng = random.Random(shuffle_seed) if shuffle_seed is not None else None
    events: list[Event] = []
    pos, i = 0, 0
    while pos < len(audio):
        n = sizes[i % len(sizes)]
        session.receive_audio(audio[pos : pos + n])
        pos += n
        i += 1
        while answer(session, engine, rng):
            pass
        events += session.take_events()
    session.close()
    while answer(session, engine, rng):
        pass
    events += session.take_events()
    assert session.done
    return events


def finals(events: Sequence[Event]) -> list[Transcript]:
    return [e for e in events if isinstance(e, Transcript) and e.is_final]


def final_words(events: Sequence[Event]) -> list[str]:
    return [w.word for f in finals(events) for w in f.words]
