"""Tier 2 (fake engine): the sans-I/O session's events, finals invariant, partials and flushes."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.audio import AudioFormat, float_to_linear16
from streamer.engine.fake import EnergyDetector, ToneEngine
from streamer.session import Session, StreamingConfig, WindowRequest
from streamer.stream import Stream
from streamer.transcribe import transcribe_samples
from streamer.transcript import SpeechStarted, Transcript, UtteranceEnd
from streamer.vad import VadConfig
from streamer.windows import WindowPlan
from tests.sessions import WORDS, answer, final_words, finals, run_session, speech

ENGINE = ToneEngine()
GROUPS = [WORDS[:3], WORDS[3:7], WORDS[7:9]]


def _session(**kwargs: object) -> Session:
    return Session(ENGINE, StreamingConfig(**kwargs), detector=EnergyDetector())  # type: ignore[arg-type]


@pytest.mark.parametrize("final_pass", [True, False])
def test_finals_are_the_whole_transcript(final_pass: bool) -> None:
    audio = speech(GROUPS)
    events = run_session(_session(final_pass=final_pass), ENGINE, audio, sizes=(800, 1700, 320))
    assert final_words(events) == [w for g in GROUPS for w in g]
    fs = finals(events)
    assert [f.speech_final for f in fs] == [True, True, True]
    assert all(f.confidence > 0 for f in fs)
    # Finals tile forward in time and each word lies inside its final's span.
    for a, b in itertools.pairwise(fs):
        assert a.start + a.duration <= b.start + 1e-9
    for f in fs:
        assert all(f.start - 1e-9 <= w.start < w.end <= f.start + f.duration + 1e-9 for w in f.words)


def test_finals_equal_offline_transcription_of_each_segment() -> None:
    audio = speech(GROUPS, seed=3)
    events = run_session(_session(), ENGINE, audio)
    vad = VadConfig()
    offline = transcribe_samples(ENGINE, audio, vad, detector=EnergyDetector())
    assert [f.words for f in finals(events)] == [tuple(r.words) for r in offline]


def test_partials_arrive_and_only_cover_audio_after_the_last_final() -> None:
    audio = speech([WORDS * 2], seed=1)  # one long phrase (~11 s of speech)
    events = run_session(_session(), ENGINE, audio, sizes=(1600,))
    partials = [e for e in events if isinstance(e, Transcript) and not e.is_final]
    assert len(partials) >= 8
    last_final_end = 0.0
    for e in events:
        if isinstance(e, Transcript):
            if e.is_final:
                last_final_end = e.start + e.duration
            else:
                assert e.start >= last_final_end - 1e-9
    # Partials grow along the speech, the first ones within about a second of its start.
    speech_start = next(e.timestamp for e in events if isinstance(e, SpeechStarted))
    first_partial_end = partials[0].start + partials[0].duration
    assert first_partial_end - speech_start < 1.5


def test_long_segment_is_finalised_in_pieces_without_loss() -> None:
    cfg = {"commit_after_s": 3.0, "commit_right_s": 0.5}
    audio = speech([WORDS * 2], seed=2)
    events = run_session(_session(**cfg), ENGINE, audio)
    fs = finals(events)
    assert len(fs) >= 3
    assert [f.speech_final for f in fs][-1] is True
    assert not any(f.speech_final for f in fs[:-1])
    assert final_words(events) == WORDS * 2


def test_interim_results_off_sends_no_partials_and_costs_one_pass() -> None:
    session = _session(interim_results=False)
    events = run_session(session, ENGINE, speech(GROUPS))
    assert not [e for e in events if isinstance(e, Transcript) and not e.is_final]
    assert final_words(events) == [w for g in GROUPS for w in g]
    assert session.samples_to_model == session.speech_samples


def test_compute_ratio_with_partials_is_bounded() -> None:
    session = _session(partial_plan=WindowPlan(0.4, 0.8, 0.2))
    run_session(session, ENGINE, speech([WORDS[:6], WORDS[6:]]))
    ratio = session.samples_to_model / session.speech_samples
    assert 1.0 < ratio <= 2.75


def test_finalize_flushes_with_from_finalize_and_stream_stays_open() -> None:
    session = _session(vad=VadConfig(endpoint_ms=None))
    audio = speech([WORDS[:2]], pause_s=0.5)
    session.receive_audio(audio)
    while answer(session, ENGINE):
        pass
    assert not finals(session.take_events())  # no endpointing: nothing final yet
    session.finalize()
    while answer(session, ENGINE):
        pass
    events = session.take_events()
    (f,) = finals(events)
    assert f.from_finalize and not f.speech_final
    assert [w.word for w in f.words] == WORDS[:2]
    # Still open: more audio is transcribed.
    more = run_session(session, ENGINE, speech([WORDS[5:6]], pause_s=0.5))
    assert final_words(more) == WORDS[5:6]


def test_finalize_with_nothing_pending_sends_an_empty_final() -> None:
    session = _session()
    session.receive_audio(np.zeros(8000, np.float32))
    session.finalize()
    (f,) = finals(session.take_events())
    assert f.from_finalize and f.words == ()


def test_speech_started_and_utterance_end() -> None:
    events = run_session(_session(utterance_end_ms=1000), ENGINE, speech(GROUPS[:2], pause_s=1.5))
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    ends = [e for e in events if isinstance(e, UtteranceEnd)]
    assert len(starts) == 2 and len(ends) == 2
    assert starts[0].timestamp == pytest.approx(1.5, abs=0.1)
    fs = finals(events)
    assert ends[0].last_word_end == pytest.approx(fs[0].words[-1].end)
    # Each UtteranceEnd follows the final holding its last word.
    assert events.index(ends[0]) > events.index(fs[0])


def test_out_of_order_answers_give_the_same_finals() -> None:
    audio = speech([WORDS * 2], seed=4)
    cfg = {"commit_after_s": 3.0, "commit_right_s": 0.5}
    in_order = run_session(_session(**cfg), ENGINE, audio)
    shuffled = run_session(_session(**cfg), ENGINE, audio, shuffle_seed=7)
    assert [f.words for f in finals(shuffled)] == [f.words for f in finals(in_order)]


@settings(max_examples=15, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=20),
    final_pass=st.booleans(),
)
def test_finals_do_not_depend_on_how_bytes_were_split(sizes: list[int], final_pass: bool) -> None:
    audio = speech(GROUPS[:2], pause_s=0.7, seed=5)
    data = float_to_linear16(audio)
    results = []
    for chunking in ([len(data)], sizes):
        stream = Stream(
            ENGINE, StreamingConfig(final_pass=final_pass), AudioFormat(), detector_factory=EnergyDetector
        )
        events = []
        pos, i = 0, 0
        while pos < len(data):
            n = chunking[i % len(chunking)]
            stream.receive_bytes(data[pos : pos + n])
            pos, i = pos + n, i + 1
            while answer(stream, ENGINE):
                pass
            events += stream.take_events()
        stream.close()
        while answer(stream, ENGINE, random.Random(0)):
            pass
        events += stream.take_events()
        assert stream.done
        results.append([(f.start, f.duration, f.words) for f in finals(events)])
    assert results[0] == results[1]
    assert [w.word for *_, ws in results[0] for w in ws] == WORDS[:7]


def test_multichannel_stream_transcribes_each_channel() -> None:
    a, b = speech([WORDS[:3]]), speech([WORDS[5:8]])
    n = max(len(a), len(b))
    a, b = np.pad(a, (0, n - len(a))), np.pad(b, (0, n - len(b)))
    data = float_to_linear16(np.stack([a, b], axis=1).reshape(-1))
    stream = Stream(
        ENGINE, StreamingConfig(), AudioFormat("linear16", 16000, 2, True), detector_factory=EnergyDetector
    )
    for i in range(0, len(data), 3333):
        stream.receive_bytes(data[i : i + 3333])
        while answer(stream, ENGINE):
            pass
    stream.close()
    while answer(stream, ENGINE):
        pass
    events = stream.take_events()
    by_channel = {c: [w.word for f in finals(events) if f.channel == c for w in f.words] for c in (0, 1)}
    assert by_channel == {0: WORDS[:3], 1: WORDS[5:8]}


def test_cancel_drops_everything() -> None:
    session = _session()
    session.receive_audio(speech([WORDS[:4]]))
    assert session.take_requests()
    session.cancel()
    assert session.done and session.pending_requests == 0


def test_partial_windows_superseded_by_the_final_pass_are_cancelled() -> None:
    session = _session()
    audio = speech([WORDS[:4]])
    # The whole utterance arrives before any window has run (a client sending faster than real time).
    session.receive_audio(audio[: len(audio) // 2])
    session.receive_audio(audio[len(audio) // 2 :])
    requests = session.take_requests()
    windows = [r for r in requests if r.kind == "window"]
    finals_ = [r for r in requests if r.kind == "final"]
    assert windows and len(finals_) == 1
    assert sorted(session.take_cancelled()) == sorted(r.id for r in windows)
    for r in requests:  # answers to cancelled requests are ignored
        session.receive_logprobs(r.id, ENGINE.forward([r.audio])[0])
    events = session.take_events()
    assert final_words(events) == WORDS[:4]
    assert not [e for e in events if isinstance(e, Transcript) and not e.is_final]


def test_final_pass_starts_before_the_endpoint_and_waits_for_it() -> None:
    vad = VadConfig(early_final_full_s=0.5)  # the whole lead for this short phrase
    session = _session(interim_results=False, vad=vad)
    phrase = speech([WORDS[:3]], pause_s=0.5)
    assert vad.endpoint_ms is not None
    early_ms = vad.endpoint_ms - vad.early_final_ms + 2 * vad.frame_ms  # past the early trigger
    lead = np.zeros(early_ms * 16, np.float32)
    speech_part = phrase[: len(phrase) - int(0.5 * 16000)]
    session.receive_audio(speech_part)
    assert not session.take_requests()
    session.receive_audio(lead)  # the pause passes the early trigger, not yet the endpoint
    (early,) = session.take_requests()
    assert early.kind == "final"
    session.receive_logprobs(early.id, ENGINE.forward([early.audio])[0])
    assert not finals(session.take_events())  # not before the endpoint is certain
    session.receive_audio(np.zeros(int(0.2 * 16000), np.float32))  # the endpoint passes
    assert not session.take_requests()  # no second pass: the early one covered exactly this audio
    (f,) = finals(session.take_events())
    assert f.speech_final and [w.word for w in f.words] == WORDS[:3]
    assert session.samples_to_model == session.speech_samples


def test_an_early_final_is_discarded_when_speech_resumes() -> None:
    session = _session(interim_results=False, vad=VadConfig(early_final_full_s=0.5))
    pause = np.zeros(int(0.35 * 16000), np.float32)  # longer than the early trigger, shorter than endpointing
    audio = np.concatenate(
        [speech([WORDS[:2]], pause_s=0.5)[:-8000], pause, speech([WORDS[2:4]], pause_s=0.6)[9600:]]
    )
    session.receive_audio(audio[: len(audio) // 2])
    early = session.take_requests()
    assert [r.kind for r in early] == ["final"]
    session.receive_logprobs(early[0].id, ENGINE.forward([early[0].audio])[0])
    events = run_session(session, ENGINE, audio[len(audio) // 2 :])
    (f,) = finals(session.take_events() + events)  # one utterance: the pause did not end it
    plain = run_session(_session(interim_results=False, early_final=False), ENGINE, audio)
    assert [f.words] == [p.words for p in finals(plain)]
    assert session.samples_to_model > session.speech_samples  # the discarded pass cost something


def _feed_slowly(session: Session, audio: np.ndarray, answer_every: int) -> tuple[list[object], int]:
    """Feed 0.1 s chunks but run the model only every `answer_every` chunks (a machine that falls behind);
    returns the events and the most partial windows that were in flight at once."""
    events: list[object] = []
    most = 0
    queued: list[WindowRequest] = []
    for i, pos in enumerate(range(0, len(audio), 1600)):
        session.receive_audio(audio[pos : pos + 1600])
        queued += session.take_requests()
        most = max(most, sum(1 for r in queued if r.kind == "window"))
        if i % answer_every == answer_every - 1:
            while queued:
                batch, queued = queued, []
                for r in batch:
                    session.receive_logprobs(r.id, ENGINE.forward([r.audio])[0])
                queued += session.take_requests()
        events += session.take_events()
    session.close()
    for r in queued:
        session.receive_logprobs(r.id, ENGINE.forward([r.audio])[0])
    while answer(session, ENGINE):
        pass
    events += session.take_events()
    return events, most


def test_a_stream_that_falls_behind_coalesces_its_partial_windows() -> None:
    audio = speech([WORDS * 2], seed=4)  # one long phrase, a window due every 0.7 s
    behind = _session()
    events, most = _feed_slowly(behind, audio, answer_every=25)  # the model runs every 2.5 s
    assert most == 1  # never a queue of partial windows: one in flight, the hops behind it wait
    assert behind.coalesced_hops >= 5
    assert final_words(events) == WORDS * 2  # finals do not change
    partials = [e for e in events if isinstance(e, Transcript) and not e.is_final]
    assert len(partials) >= 3 and max(len(p.words) for p in partials) >= 4  # fewer, longer updates
    # Without coalescing the windows pile up behind the model.
    queued = _session(coalesce=False)
    events, most = _feed_slowly(queued, audio, answer_every=25)
    assert most >= 3 and queued.coalesced_hops == 0
    assert final_words(events) == WORDS * 2


def test_a_stream_that_keeps_up_coalesces_nothing() -> None:
    session = _session()
    events = run_session(session, ENGINE, speech([WORDS * 2], seed=4), sizes=(1600,))
    assert session.coalesced_hops == 0
    assert final_words(events) == WORDS * 2
