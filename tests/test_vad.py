"""Tier 1 (pure): VAD segmentation with pre-roll, endpointing, length splits, and webrtcvad on speech."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.engine.fake import EnergyDetector
from streamer.errors import ConfigError
from streamer.transcribe import read_audio
from streamer.vad import SegmentAudio, SegmentEnd, Segmenter, SegmentEvent, SegmentStart, VadConfig

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
