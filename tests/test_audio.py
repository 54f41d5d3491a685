"""Tier 1 (pure): wire audio decoding, channel handling and streaming resampling."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.audio import (
    ALAW_TABLE,
    MULAW_TABLE,
    AudioDecoder,
    AudioFormat,
    encode_alaw,
    encode_mulaw,
    float_to_linear16,
)
from streamer.errors import AudioFormatError


def _signal(n: int, rate: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)
    return x.astype(np.float32)


def test_g711_tables_match_reference_values() -> None:
    # Standard G.711 anchor points: mu-law 0xFF/0x7F are +-0, 0x80/0x00 are +-32124; A-law 0xD5/0x55 are
    # +-8 and 0xAA/0x2A are +-32256.
    assert MULAW_TABLE[0xFF] == 0 and MULAW_TABLE[0x7F] == 0
    assert MULAW_TABLE[0x80] * 32768 == pytest.approx(32124)
    assert MULAW_TABLE[0x00] * 32768 == pytest.approx(-32124)
    assert ALAW_TABLE[0xD5] * 32768 == pytest.approx(8)
    assert ALAW_TABLE[0x55] * 32768 == pytest.approx(-8)
    assert ALAW_TABLE[0xAA] * 32768 == pytest.approx(32256)
    assert ALAW_TABLE[0x2A] * 32768 == pytest.approx(-32256)


def test_g711_tables_match_audioop_when_available() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    codes = bytes(range(256))
    mu = np.frombuffer(audioop.ulaw2lin(codes, 2), dtype="<i2") / 32768
    al = np.frombuffer(audioop.alaw2lin(codes, 2), dtype="<i2") / 32768
    np.testing.assert_array_equal(MULAW_TABLE, mu.astype(np.float32))
    np.testing.assert_array_equal(ALAW_TABLE, al.astype(np.float32))


@pytest.mark.parametrize("encoding", ["mulaw", "alaw"])
def test_g711_round_trip_is_close(encoding: str) -> None:
    x = _signal(8000, 8000)
    data = encode_mulaw(x) if encoding == "mulaw" else encode_alaw(x)
    dec = AudioDecoder(AudioFormat(encoding, 16000, 1))  # type: ignore[arg-type]
    (y,) = dec.decode(data)
    assert len(y) == len(x)
    assert np.max(np.abs(y - x)) < 0.02  # G.711 quantisation at 0.3 amplitude


def test_linear16_odd_bytes_are_carried_not_dropped() -> None:
    x = _signal(1001, 16000)
    data = float_to_linear16(x)
    dec = AudioDecoder(AudioFormat())
    out = [dec.decode(data[i : i + 7])[0] for i in range(0, len(data), 7)]
    y = np.concatenate(out)
    assert len(y) == len(x)
    np.testing.assert_allclose(y, np.frombuffer(data, "<i2") / 32768, atol=1e-7)


def test_multichannel_split_and_downmix() -> None:
    left, right = _signal(1600, 16000, 1), _signal(1600, 16000, 2)
    inter = np.stack([left, right], axis=1).reshape(-1)
    data = float_to_linear16(inter)
    split = AudioDecoder(AudioFormat("linear16", 16000, 2, multichannel=True)).decode(data[:-3])
    assert len(split) == 2 and len(split[0]) == len(split[1]) == 1599  # the partial frame waits
    np.testing.assert_allclose(split[0], np.frombuffer(float_to_linear16(left), "<i2")[:1599] / 32768)
    (mixed,) = AudioDecoder(AudioFormat("linear16", 16000, 2)).decode(data)
    np.testing.assert_allclose(mixed, (left + right) / 2, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"encoding": "opus"},
        {"sample_rate": 7999},
        {"sample_rate": 48001},
        {"channels": 0},
        {"channels": 9},
    ],
)
def test_invalid_formats_raise(kwargs: dict[str, object]) -> None:
    with pytest.raises(AudioFormatError):
        AudioFormat(**kwargs)  # type: ignore[arg-type]


@settings(max_examples=25, deadline=None)
@given(
    rate=st.sampled_from([8000, 11025, 22050, 24000, 32000, 44100, 48000]),
    cuts=st.lists(st.integers(min_value=1, max_value=3001), min_size=1, max_size=40),
)
def test_streaming_resampler_matches_one_shot(rate: int, cuts: list[int]) -> None:
    x = _signal(rate, rate)  # one second
    data = float_to_linear16(x)
    whole = AudioDecoder(AudioFormat("linear16", rate))
    ref = np.concatenate([whole.decode(data)[0], whole.flush()[0]])
    dec = AudioDecoder(AudioFormat("linear16", rate))
    parts, pos, i = [], 0, 0
    while pos < len(data):
        size = cuts[i % len(cuts)]
        parts.append(dec.decode(data[pos : pos + size])[0])
        pos += size
        i += 1
    parts.append(dec.flush()[0])
    got = np.concatenate(parts)
    assert len(got) == len(ref)
    assert abs(len(got) - 16000) <= 1
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_flush_pads_a_trailing_partial_sample() -> None:
    dec = AudioDecoder(AudioFormat("linear16", 16000, 1))
    (out,) = dec.decode(b"\x00\x10\x00")
    assert len(out) == 1
    (tail,) = dec.flush()
    assert len(tail) == 1  # the lone byte becomes a sample instead of vanishing
