"""Tier 1 (pure): VAD segmentation with pre-roll, endpointing, length splits, and webrtcvad on speech."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.engine.fake import EnergyDetector
from streamer.errors import ConfigError
from streamer.transcribe import read_audio
from streamer.vad import (
    SegmentAudio,
    SegmentEnd,
    Segmenter,
    SegmentEvent,
    SegmentMayEnd,
    SegmentStart,
    VadConfig,
)

SR = 16000


def _burst(seconds: float, amp: float = 0.2) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * 300 * t)).astype(np.float32)


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.float32)


def _run(audio: np.ndarray, config: VadConfig, chunk: int = 480, real: bool = False) -> list[SegmentEvent]:
    seg = Segmenter(config, None if real else EnergyDetector())
    events: list[SegmentEvent] = []
    for i in range(0, len(audio), chunk):
        events += seg.push(audio[i : i + chunk])
    return events + seg.flush()


def _segments(events: list[SegmentEvent]) -> list[tuple[int, int, np.ndarray, str]]:
    out, start, parts = [], 0, []
    for ev in events:
        if isinstance(ev, SegmentStart):
            start, parts = ev.sample, []
        elif isinstance(ev, SegmentAudio):
            parts.append(ev.samples)
        elif isinstance(ev, SegmentEnd):
            out.append((start, ev.sample, np.concatenate(parts), ev.reason))
    return out


def test_silence_never_reaches_a_segment() -> None:
    assert _run(_silence(3.0), VadConfig()) == []


def test_preroll_endpoint_and_tail() -> None:
    cfg = VadConfig(preroll_ms=300, endpoint_ms=400, tail_ms=210)
    audio = np.concatenate([_silence(1.0), _burst(1.0), _silence(1.0)])
    events = _run(audio, cfg)
    start = next(e for e in events if isinstance(e, SegmentStart))
    assert start.trigger_sample == SR // 480 * 480  # the first (partly) voiced frame
    assert start.trigger_sample - start.sample >= 0.2 * SR  # at least 200 ms of pre-roll kept
    ((s, e, samples, reason),) = _segments(events)
    assert reason == "silence"
    assert e == (2 * SR // 480 + 1) * 480 + 210 * SR // 1000 // 480 * 480  # speech end + whole tail frames
    assert len(samples) == e - s
    np.testing.assert_array_equal(samples, audio[s:e])  # contiguous: nothing lost or invented


def test_short_pause_does_not_end_a_segment() -> None:
    audio = np.concatenate([_silence(0.5), _burst(0.6), _silence(0.25), _burst(0.6), _silence(1.0)])
    segs = _segments(_run(audio, VadConfig(endpoint_ms=400)))
    assert len(segs) == 1


def test_endpointing_disabled_waits_for_flush() -> None:
    audio = np.concatenate([_silence(0.3), _burst(0.5), _silence(2.0)])
    segs = _segments(_run(audio, VadConfig(endpoint_ms=None)))
    assert [r for *_, r in segs] == ["flush"]


@pytest.mark.parametrize("pause_s", [0.03, 0.15])
def test_long_speech_is_split_without_loss(pause_s: float) -> None:
    # 30 ms pauses are too short to split at (hard split at the maximum); 150 ms pauses split softly.
    cfg = VadConfig(max_segment_s=4.0, split_after_s=2.5)
    speech = np.concatenate([np.concatenate([_burst(0.7), _silence(pause_s)]) for _ in range(14)])
    audio = np.concatenate([_silence(0.5), speech, _silence(1.0)])
    segs = _segments(_run(audio, cfg))
    assert len(segs) >= 3
    frame = cfg.frame_samples
    for _, _, x, _ in segs[:-1]:
        if pause_s < 0.09:
            assert 4.0 * SR <= len(x) <= 4.0 * SR + frame
        else:
            assert 2.5 * SR <= len(x) < 4.0 * SR
            assert np.abs(x[-frame:]).max() == 0  # cut inside a pause, not inside a word
    for (_, end, _, reason), (start, _, _, _) in itertools.pairwise(segs):
        assert reason == "max_length"
        assert start == end  # the next segment continues exactly where the split was
    joined = np.concatenate([x for _, _, x, _ in segs])
    np.testing.assert_array_equal(joined, audio[segs[0][0] : segs[-1][1]])


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=4000), min_size=1, max_size=30))
def test_segmentation_does_not_depend_on_chunking(sizes: list[int]) -> None:
    audio = np.concatenate([_silence(0.4), _burst(0.8), _silence(0.7), _burst(0.5), _silence(0.2)])
    ref = [(s, e, r) for s, e, _, r in _segments(_run(audio, VadConfig(), chunk=len(audio)))]
    seg = Segmenter(VadConfig(), EnergyDetector())
    events: list[SegmentEvent] = []
    pos, i = 0, 0
    while pos < len(audio):
        events += seg.push(audio[pos : pos + sizes[i % len(sizes)]])
        pos += sizes[i % len(sizes)]
        i += 1
    events += seg.flush()
    assert [(s, e, r) for s, e, _, r in _segments(events)] == ref


@pytest.mark.parametrize(
    "kwargs",
    [{"aggressiveness": 4}, {"frame_ms": 25}, {"endpoint_ms": 5}, {"max_segment_s": 1.0}, {"preroll_ms": -1}],
)
def test_invalid_vad_config(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        VadConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_webrtcvad_finds_speech_in_a_real_recording(eval_data, frame_ms: int) -> None:  # type: ignore[no-untyped-def]
    audio = read_audio(eval_data / "en" / "LDC93S1.wav")
    padded = np.concatenate([_silence(1.0), audio, _silence(1.5)])
    segs = _segments(_run(padded, VadConfig(frame_ms=frame_ms), chunk=1000, real=True))
    assert segs, "no speech found"
    first_start, last_end = segs[0][0], segs[-1][1]
    assert first_start >= 0.6 * SR  # the leading second of silence is mostly not speech
    assert last_end <= len(padded) - 0.8 * SR
    covered = sum(e - s for s, e, _, _ in segs)
    assert covered >= 0.7 * len(audio)


class _HangoverDetector:
    """Calls every frame with any sound speech, like webrtcvad on background noise and in its hangover."""

    def is_speech(self, frame: np.ndarray) -> bool:
        return bool(np.abs(frame).max() > 0)


def _noise(seconds: float, amp: float, seed: int = 0) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def _run_with(audio: np.ndarray, config: VadConfig) -> list[tuple[int, int, np.ndarray, str]]:
    seg = Segmenter(config, _HangoverDetector())
    events: list[SegmentEvent] = []
    for i in range(0, len(audio), 480):
        events += seg.push(audio[i : i + 480])
    return _segments(events + seg.flush())


def test_noise_far_below_the_speaker_ends_a_segment() -> None:
    # Speech at about -17 dBFS, then background noise at about -54 dBFS that the detector calls speech.
    audio = np.concatenate([_silence(0.3), _burst(1.0), _noise(2.0, 0.002), _burst(1.0), _noise(1.0, 0.002)])
    gated = _run_with(audio, VadConfig())
    assert [r for *_, r in gated] == ["silence", "silence"]
    (_, e1, _, _), (s2, _, _, _) = gated
    speech_end = int(1.3 * SR)
    # Ends one endpoint (420 ms of 30 ms frames) after the speech, with the 200 ms tail kept.
    assert speech_end + 0.2 * SR - 480 <= e1 <= speech_end + 0.2 * SR + 480
    assert s2 >= int(3.3 * SR) - 0.3 * SR - 480  # the noise did not start a segment: speech did
    # Without the level gate the noise is speech: one segment to the end.
    assert [r for *_, r in _run_with(audio, VadConfig(quiet_db=None))] == ["flush"]


def test_a_softer_speaker_is_heard_again_after_the_level_memory() -> None:
    cfg = VadConfig(level_memory_s=2.0)
    soft = _burst(1.0, amp=0.002)  # 40 dB below the loud speech before it
    audio = np.concatenate([_burst(1.0), _silence(0.5), soft, _silence(3.0), soft, _silence(1.0)])
    segs = _run_with(audio, cfg)
    # The first soft burst comes within the memory of the loud speech: not speech. The second, after
    # more than 2 s without speech, is.
    assert len(segs) == 2
    assert segs[1][0] >= int(5.5 * SR) - 0.3 * SR - 480
    assert len(_run_with(audio, VadConfig(level_memory_s=10.0))) == 1  # still within a longer memory


def test_webrtcvad_ends_at_a_real_pause_in_noisy_speech(eval_data) -> None:  # type: ignore[no-untyped-def]
    # jfk.wav: "... my fellow Americans" then a 1.1 s pause (about 2.2-3.3 s) over crowd noise that
    # webrtcvad calls speech, then "ask not what ...".
    audio = read_audio(eval_data / "en" / "jfk.wav")
    ends = [e / SR for _, e, _, r in _segments(_run(audio, VadConfig(), chunk=480, real=True))]
    assert any(2.2 <= e <= 2.9 for e in ends)
    plain = [e / SR for _, e, _, _ in _segments(_run(audio, VadConfig(quiet_db=None), chunk=480, real=True))]
    assert not any(2.2 <= e <= 2.9 for e in plain)


@pytest.mark.parametrize("speech_s", [1.0, 2.0, 5.0])
def test_the_early_final_lead_grows_with_the_segment(speech_s: float) -> None:
    cfg = VadConfig(endpoint_ms=420, early_final_ms=180, early_final_full_s=4.0)
    seg = Segmenter(cfg, EnergyDetector())
    audio = np.concatenate([_silence(0.3), _burst(speech_s), _silence(1.0)])
    may_end_at = None
    for i in range(0, len(audio), 480):
        if any(isinstance(e, SegmentMayEnd) for e in seg.push(audio[i : i + 480])):
            may_end_at = (i + 480) / SR
    assert may_end_at is not None
    segment_s = 0.3 + speech_s  # pre-roll (the whole leading silence here) and speech
    lead = round(180 * min(1.0, segment_s / 4.0) / 30) * 0.03
    speech_end = 0.3 + speech_s
    # The pause frames are whole 30 ms frames from the one after the speech ends.
    first_pause = math.ceil(speech_end / 0.03) * 0.03
    assert may_end_at == pytest.approx(first_pause + 0.42 - lead, abs=0.031)


def test_the_speech_level_reads_the_same_percentile_numpy_computes() -> None:
    from collections import deque

    from streamer.vad import SpeechLevel, percentile_90

    rng = np.random.default_rng(7)
    for n in (1, 2, 3, 9, 10, 11, 57, 100):
        values = list(rng.normal(-30, 8, n)) + [-25.0] * (n // 3)  # ties too
        assert percentile_90(sorted(values)) == float(np.percentile(values, 90))
    # Through adds and forgetting (by count and by age), against the percentile of what is remembered.
    level = SpeechLevel(frames=20, quiet_db=10.0, memory_frames=50)
    kept: deque[tuple[int, float]] = deque(maxlen=20)
    for frame_no in range(1, 600):
        db = float(rng.normal(-30, 8))
        if rng.random() < 0.3 or 200 < frame_no < 300:  # a silence longer than the memory
            continue
        while kept and kept[0][0] < frame_no - 50:
            kept.popleft()
        expected = bool(kept) and db < float(np.percentile([d for _, d in kept], 90)) - 10.0
        assert level.quiet(frame_no, db) == expected, frame_no
        level.add(frame_no, db)
        kept.append((frame_no, db))
