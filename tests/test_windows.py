"""Tier 1 (pure): window planning and stitching equal a single full pass."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.engine.fake import ToneEngine, tone_phrase
from streamer.engine.hama_engine import HamaEngine
from streamer.errors import ConfigError
from streamer.windows import FramePlan, Geometry, Stitcher, WindowPlan

ENGINE = ToneEngine()
GEOMETRY = Geometry(ENGINE.frame_samples, ENGINE.receptive_field, ENGINE.num_frames)


def _stitch(
    audio: np.ndarray, plan: FramePlan, geometry: Geometry, step: int, max_hops: int = 1
) -> tuple[np.ndarray, int]:
    """Feed the segment `step` samples at a time, as a live stream would; returns frames and model samples."""
    st_ = Stitcher(plan, geometry)
    processed = 0
    for available in [*range(step, len(audio), step), len(audio)]:
        while (w := st_.next_window(available, max_hops=max_hops)) is not None:
            kept = w.keep_to - w.keep_from
            assert kept % plan.hop == 0 and kept <= max_hops * plan.hop
            st_.add(w, ENGINE.forward([audio[w.start : w.end]])[0])
            processed += w.end - w.start
    w = st_.next_window(len(audio), final=True)
    if w is not None:
        assert w.end == len(audio)
        st_.add(w, ENGINE.forward([audio[w.start : w.end]])[0])
        processed += w.end - w.start
    return st_.frames(), processed


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(min_value=0, max_value=40000),
    left=st.integers(min_value=0, max_value=40),
    hop=st.integers(min_value=1, max_value=60),
    right=st.integers(min_value=0, max_value=20),
    step=st.integers(min_value=160, max_value=9000),
    max_hops=st.integers(min_value=1, max_value=5),
)
def test_stitched_equals_full_pass(
    length: int, left: int, hop: int, right: int, step: int, max_hops: int
) -> None:
    # max_hops > 1: coalesced windows (several hops in one, as when a stream falls behind) stitch the same.
    rng = np.random.default_rng(length)
    audio = (0.1 * rng.standard_normal(length)).astype(np.float32)
    frames, _ = _stitch(audio, FramePlan(left, hop, right), GEOMETRY, step, max_hops)
    full = ENGINE.forward([audio])[0]
    assert len(frames) == len(full) == ENGINE.num_frames(length)
    if len(full):
        np.testing.assert_array_equal(frames, full)


@settings(max_examples=40, deadline=None)
@given(length=st.integers(min_value=0, max_value=30000), hop=st.integers(1, 30), right=st.integers(0, 10))
def test_frame_count_matches_for_padded_frame_models(length: int, hop: int, right: int) -> None:
    # hama-like geometry: n // 320 + 1 frames (the last one padded), no model needed for the count.
    geometry = Geometry(320, 400, lambda n: n // 320 + 1)
    st_ = Stitcher(FramePlan(3, hop, right), geometry)
    total = 0
    available = 0
    while available < length:
        available = min(length, available + 1234)
        while (w := st_.next_window(available)) is not None:
            total += w.keep_to - w.keep_from
    w = st_.next_window(length, final=True)
    total += 0 if w is None else w.keep_to - w.keep_from
    assert total == length // 320 + 1


def test_compute_ratio_of_a_plan() -> None:
    audio = tone_phrase(["abc", "def"] * 20)
    plan = WindowPlan(left_s=0.4, hop_s=0.8, right_s=0.2)
    _, processed = _stitch(audio, FramePlan.from_seconds(plan, 320), GEOMETRY, 1600)
    assert plan.compute_ratio == pytest.approx(1.75)
    assert 1.5 < processed / len(audio) <= 1.75


def test_plan_rounds_to_model_frames() -> None:
    plan = FramePlan.from_seconds(WindowPlan(0.41, 0.79, 0.0), 320)
    assert (plan.left, plan.hop, plan.right) == (20, 40, 0)


def test_windows_must_be_added_in_order() -> None:
    st_ = Stitcher(FramePlan(2, 5, 2), GEOMETRY)
    w1 = st_.next_window(20000)
    w2 = st_.next_window(20000)
    assert w1 is not None and w2 is not None
    with pytest.raises(ValueError):
        st_.add(w2, ENGINE.forward([np.zeros(w2.end - w2.start, np.float32)])[0])


def test_invalid_plan() -> None:
    with pytest.raises(ConfigError):
        WindowPlan(hop_s=0)
    with pytest.raises(ConfigError):
        WindowPlan(left_s=-1)


def test_hama_frame_count_formula_matches_the_model() -> None:
    engine = HamaEngine()
    for n in (320, 1000, 16000, 16319, 16320):
        assert len(engine.forward([np.zeros(n, np.float32)])[0]) == engine.num_frames(n)


def test_a_coalesced_window_keeps_every_whole_hop_the_audio_allows() -> None:
    plan = FramePlan(3, 5, 2)
    fs = GEOMETRY.frame_samples
    enough = (4 * 5 + 2) * fs + GEOMETRY.lookahead  # four hops and the right context, not five
    one = Stitcher(plan, GEOMETRY).next_window(enough)
    many = Stitcher(plan, GEOMETRY).next_window(enough, max_hops=10)
    capped = Stitcher(plan, GEOMETRY).next_window(enough, max_hops=3)
    assert one is not None and (one.keep_from, one.keep_to) == (0, 5)
    assert many is not None and (many.keep_from, many.keep_to, many.end) == (0, 20, enough)
    assert capped is not None and capped.keep_to == 15
    assert Stitcher(plan, GEOMETRY).next_window(enough - 1, max_hops=10).keep_to == 15  # type: ignore[union-attr]
