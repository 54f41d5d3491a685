"""Short endpointing (LiveKit sends 25 ms, Deepgram's default is 10 ms): the utterance ends at a pause
inside the segment, the passes keep their context, and finals still equal the offline pass.

Tiers 1-2 with the tone engine; tier 4 with the real server, the built-in model and a real recording.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect

from streamer.config import ModelSpec
from streamer.engine.fake import EnergyDetector, ToneEngine
from streamer.session import Session, StreamingConfig
from streamer.transcribe import read_audio, speech_segments, transcribe_samples
from streamer.transcript import SpeechStarted
from streamer.vad import SegmentEnd, Segmenter, SegmentPause, SegmentStart, VadConfig
from tests.sessions import WORDS, answer, final_words, finals, run_session
from tests.test_server import config, drain, pcm16, serve

ENGINE = ToneEngine()
SHORT = VadConfig().with_endpointing(25)


def _talk(*groups: list[str], pause_s: float) -> np.ndarray:
    """Phrases separated by `pause_s` of silence (shorter than the segment endpoint), silence around."""
    from streamer.engine.fake import tone_phrase

    silence = np.zeros(int(0.6 * 16000), np.float32)
    gap = np.zeros(int(pause_s * 16000), np.float32)
    parts: list[np.ndarray] = [silence]
    for i, g in enumerate(groups):
        parts += [gap] if i else []
        parts.append(tone_phrase(g, seed=i))
    return np.concatenate([*parts, silence, silence])


def test_short_endpointing_is_a_pause_not_a_segment_end() -> None:
    assert SHORT.endpoint_ms == VadConfig().endpoint_ms and SHORT.pause_ms == VadConfig().min_pause_ms
    audio = _talk(WORDS[:3], WORDS[3:6], pause_s=0.3)  # 300 ms: over the pause, under the endpoint
    events = Segmenter(SHORT, EnergyDetector()).push(audio)
    kinds = [type(e).__name__ for e in events if type(e).__name__ != "SegmentAudio"]
    assert kinds == ["SegmentStart", "SegmentPause", "SpeechResumed", "SegmentPause", "SegmentEnd"]
    pause = next(e for e in events if isinstance(e, SegmentPause))
    assert len(pause.tail) == -(-SHORT.min_pause_ms // 30) * 480  # the silence so far: 7 frames
    # The same audio at the default endpointing: one segment, no pause.
    default = Segmenter(VadConfig(), EnergyDetector()).push(audio)
    assert [type(e) for e in default if isinstance(e, SegmentStart | SegmentEnd | SegmentPause)] == [
        SegmentStart,
        SegmentEnd,
    ]


@pytest.mark.parametrize("final_pass", [True, False])
def test_utterances_end_at_pauses_and_equal_the_offline_pieces(final_pass: bool) -> None:
    # Without a final pass the finals are stitched windows: the tone engine's frames do not depend on
    # the window, so they too equal the offline pieces.
    audio = _talk(WORDS[:3], WORDS[3:6], WORDS[6:8], pause_s=0.3)
    config = StreamingConfig(vad=SHORT, final_pass=final_pass)
    session = Session(ENGINE, config, detector=EnergyDetector())
    events = run_session(session, ENGINE, audio, sizes=(800, 1700, 320))
    fs = finals(events)
    assert [f.text.split() for f in fs] == [WORDS[:3], WORDS[3:6], WORDS[6:8]]
    assert all(f.speech_final for f in fs)
    # One SpeechStarted per utterance: the client hears that speech resumed after its speech_final.
    starts = [e.timestamp for e in events if isinstance(e, SpeechStarted)]
    assert len(starts) == 3
    for a, b in itertools.pairwise(fs):
        assert a.start + a.duration <= b.start + 1e-9  # finals tile forward
    # The offline reference cuts at the same pauses with the same context, in one piece each.
    offline = transcribe_samples(ENGINE, audio, SHORT, detector=EnergyDetector())
    assert [tuple(r.words) for r in offline if r.words] == [f.words for f in fs]


def test_no_empty_speech_final() -> None:
    # A burst of noise (speech to the detector, no word to the model) at the start of the stream, then
    # speech: neither at short nor at default endpointing may an empty final claim an utterance end.
    rng = np.random.default_rng(0)
    burst = (0.012 * rng.standard_normal(int(0.3 * 16000))).astype(np.float32)  # faint: no letter
    audio = np.concatenate([burst, _talk(WORDS[:3], WORDS[3:5], pause_s=0.5)])
    for vad in (SHORT, VadConfig()):
        events = run_session(
            Session(ENGINE, StreamingConfig(vad=vad), detector=EnergyDetector()), ENGINE, audio
        )
        fs = finals(events)
        assert final_words(events) == WORDS[:5]
        assert all(f.words for f in fs if f.speech_final), vad


def test_a_long_segment_split_after_a_pause_does_not_overlap_the_utterance() -> None:
    # Over 7 s the VAD splits a segment at the next pause; after an utterance end there, the next segment
    # starts where that utterance's final ended.
    vad = replace(SHORT, split_after_s=2.0)
    audio = _talk(WORDS[:6], WORDS[6:], WORDS[:4], pause_s=0.3)
    events = run_session(Session(ENGINE, StreamingConfig(vad=vad), detector=EnergyDetector()), ENGINE, audio)
    fs = finals(events)
    assert final_words(events) == [*WORDS[:6], *WORDS[6:], *WORDS[:4]]
    for a, b in itertools.pairwise(fs):
        assert a.start + a.duration <= b.start + 1e-9


# ---- tier 4: the real server, the built-in model, a real recording ------------------------------------


async def _stream_finals(url: str, data: bytes) -> list[dict[str, Any]]:
    async with connect(url, max_size=None) as ws:
        for i in range(0, len(data), 3200):  # 100 ms frames, faster than real time: the VAD reads audio
            await ws.send(data[i : i + 3200])
        await ws.send(json.dumps({"type": "CloseStream"}))
        messages = await drain(ws)
    return [m for m in messages if m["type"] == "Results" and m["is_final"]]


def test_endpointing_25_splits_no_word_across_finals(eval_data: Path) -> None:
    from streamer.engine.hama_engine import HamaEngine

    # 10 s of read speech whose stop closures a 30 ms endpoint took for pauses: 4 words split before.
    path = eval_data / "en" / "ls_1089-134686-0000.wav"
    if not path.exists():
        pytest.skip(f"{path.name} is not in {eval_data}")
    audio = read_audio(path)
    engine = HamaEngine(replicas=1)
    try:
        reference = [w for r in transcribe_samples(engine, audio, VadConfig()) for w in r.words]
        exact = [w.word for r in transcribe_samples(engine, audio, SHORT) for w in r.words]
        pauses = sum(len(s.pauses) for s in speech_segments(audio, SHORT))

        async def run() -> list[dict[str, Any]]:
            cfg = config(models=(ModelSpec("en", "builtin:en"),))
            async with serve(cfg, {"en": engine}) as server:
                return await _stream_finals(
                    server.ws_url("endpointing=25&interim_results=true"), pcm16(audio)
                )

        got = asyncio.run(run())
    finally:
        engine.close()
    words = [list(m["channel"]["alternatives"][0]["words"]) for m in got]
    # No word of the default transcript (whole segments, 400 ms endpointing) is heard in two finals.
    for word in reference:
        inside = [
            i
            for i, ws in enumerate(words)
            for w in ws
            if w["start"] < word.end - 0.03 and w["end"] > word.start + 0.03
        ]
        assert len(set(inside)) <= 1, (word, inside)
    assert [w["word"] for ws in words for w in ws] == exact  # the offline pass with the same cuts
    speech_finals = [m for m in got if m["speech_final"]]
    assert len(speech_finals) >= 1 and all(
        m["channel"]["alternatives"][0]["transcript"] for m in speech_finals
    )
    assert pauses >= 1  # the recording has pauses over min_pause_ms: utterance ends inside segments
    # And the text stays as good: within 2 words of the default transcript's length of agreement.
    assert abs(len(exact) - len(reference)) <= 2


def test_finalize_while_an_utterance_pass_is_in_flight_keeps_the_order() -> None:
    audio = _talk(WORDS[:3], WORDS[3:5], pause_s=0.3)[: -int(1.0 * 16000)]  # 0.2 s after: no pause yet
    session = Session(ENGINE, StreamingConfig(vad=SHORT, interim_results=False), detector=EnergyDetector())
    session.receive_audio(audio)
    pending = session.take_requests()
    assert [r.kind for r in pending] == ["pause"]  # the first utterance's pass, not answered yet
    session.finalize()  # the client flushes: the rest must come after the utterance, from_finalize
    assert not session.take_requests()  # its pass waits for the utterance's cut
    for r in pending:
        session.receive_logprobs(r.id, ENGINE.forward([r.audio])[0])
    while answer(session, ENGINE):
        pass
    fs = finals(session.take_events())
    assert [f.text.split() for f in fs] == [WORDS[:3], WORDS[3:5]]
    assert [(f.speech_final, f.from_finalize) for f in fs] == [(True, False), (False, True)]
