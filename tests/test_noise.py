"""Tier 1 (pure): the benchmarks' noise: SNR of a mix, spectral slopes, babble, seeds, parsing."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.bench.noise import NoiseSpec, make_noise, mix_at_snr, scaled, speech_power
from streamer.errors import ConfigError

SR = 16000


def _speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Syllable-rate bursts of a harmonic tone with silent gaps: active frames and pauses."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    voice = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((140, 280, 420, 560), start=1))
    gate = (np.sin(2 * np.pi * 3 * t) > 0.2).astype(float)
    gate[: SR // 2] = 0  # leading silence must not lower the speech level
    return (0.1 * voice * gate + 1e-4 * rng.standard_normal(len(t))).astype(np.float32)


def _octave_slope_db(noise: np.ndarray) -> float:
    """Least-squares slope of the power spectrum, dB per octave, over 100 Hz - 6.4 kHz."""
    segments = noise[: len(noise) // 4096 * 4096].reshape(-1, 4096) * np.hanning(4096)
    power = np.mean(np.abs(np.fft.rfft(segments, axis=1)) ** 2, axis=0)
    freqs = np.fft.rfftfreq(4096, 1 / SR)
    band = (freqs >= 100) & (freqs <= 6400)
    slope, _ = np.polyfit(np.log2(freqs[band]), 10 * np.log10(power[band]), 1)
    return float(slope)


@pytest.mark.parametrize("kind", ["white", "pink", "brown", "babble"])
@pytest.mark.parametrize("snr_db", [20.0, 10.0, 5.0, 0.0])
def test_the_mix_has_the_asked_snr(kind: str, snr_db: float) -> None:
    speech = _speech_like(4.0)
    sources = [_speech_like(3.0, seed) for seed in range(1, 6)]
    spec = NoiseSpec.parse(f"{kind}:{snr_db:g}")
    noise = make_noise(spec.kind, len(speech), seed=3, sources=sources, rate=SR)
    mixed, power = mix_at_snr(speech, noise, snr_db, SR)
    assert np.max(np.abs(mixed)) < 0.99  # no clipping at these levels: the speech is unchanged in the mix
    added = mixed.astype(np.float64) - speech
    measured = 10 * np.log10(speech_power(speech, SR) / np.mean(added**2))
    assert abs(measured - snr_db) < 0.1
    assert abs(power - np.mean(added**2)) / power < 1e-3


def test_a_mix_that_would_clip_is_scaled_as_a_whole() -> None:
    speech = _speech_like(2.0) * np.float32(9.0)  # peaks near 0.9 before any noise
    noise = make_noise("white", len(speech), seed=1)
    mixed, power = mix_at_snr(speech, noise, 0.0, SR)
    assert np.max(np.abs(mixed)) <= 0.99 + 1e-6
    shrink = float(np.dot(mixed, speech) / np.dot(speech, speech))  # noise is uncorrelated with speech
    added = mixed - shrink * speech
    measured = 10 * np.log10(speech_power(shrink * speech, SR) / np.mean(added.astype(np.float64) ** 2))
    assert abs(measured) < 0.2 and shrink < 1.0
    assert power == pytest.approx(float(np.mean(added.astype(np.float64) ** 2)), rel=0.05)


@pytest.mark.parametrize(("kind", "slope"), [("white", 0.0), ("pink", -3.0), ("brown", -6.0)])
def test_spectral_slopes(kind: str, slope: float) -> None:
    noise = make_noise(kind, 20 * SR, seed=5)  # type: ignore[arg-type]
    assert abs(_octave_slope_db(noise) - slope) < 0.5
    assert np.mean(noise.astype(np.float64) ** 2) == pytest.approx(1.0, rel=1e-3)


def test_deterministic_by_seed() -> None:
    sources = [_speech_like(2.0, seed) for seed in range(4)]
    for kind in ("white", "pink", "brown", "babble"):
        a = make_noise(kind, SR, seed=11, sources=sources)  # type: ignore[arg-type]
        b = make_noise(kind, SR, seed=11, sources=sources)  # type: ignore[arg-type]
        c = make_noise(kind, SR, seed=12, sources=sources)  # type: ignore[arg-type]
        assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_babble_is_several_voices_of_the_sources() -> None:
    sources = [_speech_like(1.5, seed) for seed in range(6)]
    noise = make_noise("babble", 5 * SR, seed=2, sources=sources)
    assert len(noise) == 5 * SR and np.mean(noise.astype(np.float64) ** 2) == pytest.approx(1.0, rel=1e-3)
    # Four talkers overlap, so babble has far fewer quiet frames than one voice with its pauses.
    frames = noise[: len(noise) // 320 * 320].reshape(-1, 320)
    quiet = np.mean(np.mean(frames.astype(np.float64) ** 2, axis=1) < 0.01)
    one = sources[0][: len(sources[0]) // 320 * 320].reshape(-1, 320)
    one_quiet = np.mean(np.mean(one.astype(np.float64) ** 2, axis=1) < 0.01 * np.mean(one**2))
    assert quiet < one_quiet
    with pytest.raises(ConfigError, match="babble"):
        make_noise("babble", SR, seed=0, sources=[])


def test_speech_power_ignores_pauses() -> None:
    speech = _speech_like(3.0)
    padded = np.concatenate([np.zeros(5 * SR, np.float32), speech, np.zeros(5 * SR, np.float32)])
    assert speech_power(padded, SR) == pytest.approx(speech_power(speech, SR), rel=0.02)
    assert speech_power(padded, SR) > 3 * float(np.mean(padded.astype(np.float64) ** 2))


def test_scaled_sets_the_absolute_level() -> None:
    noise = make_noise("pink", 2 * SR, seed=0)
    assert np.mean(scaled(noise, 1e-4).astype(np.float64) ** 2) == pytest.approx(1e-4, rel=1e-3)


@pytest.mark.parametrize("text", ["pink", "pink:", "pink:loud", "purple:10", ":10", "babble10"])
def test_bad_specs_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="KIND:SNR_DB"):
        NoiseSpec.parse(text)


def test_spec_round_trip() -> None:
    assert NoiseSpec.parse(" Pink:-2.5 ") == NoiseSpec("pink", -2.5)
    assert str(NoiseSpec.parse("babble:10")) == "babble:10"
