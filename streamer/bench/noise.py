"""Background noise for the benchmarks: coloured noise, babble, and mixing at a given SNR.

    spec = NoiseSpec.parse("pink:10")      # KIND:SNR_DB, KIND in babble, white, pink, brown
    noise = make_noise(spec.kind, n, seed=3, sources=other_clips, rate=rate)  # unit power
    mixed, noise_power = mix_at_snr(speech, noise, spec.snr_db, rate)

SNR is the speech's active level against the noise's mean power: `speech_power` averages the power of
the clip's 20 ms frames that are within 30 dB of its loud frames (the 95th percentile frame), so the
silence before, between and after words does not lower the speech level (whole-clip power would make a
clip with long pauses look quieter and its SNR better than it sounds). Everything is seeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from streamer.ctc import FloatArray
from streamer.errors import ConfigError

NoiseKind = Literal["babble", "white", "pink", "brown"]
NOISE_KINDS: tuple[NoiseKind, ...] = ("babble", "white", "pink", "brown")
BABBLE_TALKERS = 4
ACTIVE_RANGE_DB = 30.0
"""Frames this far below the loud frames are pauses, not speech, for `speech_power`."""
PEAK = 0.99


@dataclass(frozen=True)
class NoiseSpec:
    kind: NoiseKind
    snr_db: float

    @classmethod
    def parse(cls, text: str) -> NoiseSpec:
        """`pink:10` -> NoiseSpec("pink", 10.0); raises ConfigError naming the expected form."""
        kind, sep, snr = text.strip().lower().partition(":")
        for known in NOISE_KINDS:
            if known == kind and sep:
                try:
                    return cls(known, float(snr))
                except ValueError:
                    break
        raise ConfigError(f"noise {text!r}: expected KIND:SNR_DB with KIND one of {', '.join(NOISE_KINDS)}")

    def __str__(self) -> str:
        return f"{self.kind}:{self.snr_db:g}"


def speech_power(audio: FloatArray, rate: int, frame_ms: int = 20) -> float:
    """Mean power of the active frames (see the module docstring); whole-clip power for clips shorter
    than a frame."""
    n = rate * frame_ms // 1000
    frames = len(audio) // n
    if frames == 0:
        return float(np.mean(np.square(audio, dtype=np.float64))) if len(audio) else 0.0
    power = np.mean(np.square(audio[: frames * n].astype(np.float64)).reshape(frames, n), axis=1)
    loud = float(np.percentile(power, 95))
    active = power[power >= loud * 10 ** (-ACTIVE_RANGE_DB / 10)]
    return float(np.mean(active)) if active.size else 0.0


def coloured_noise(kind: NoiseKind, n: int, rng: np.random.Generator) -> FloatArray:
    """White, pink (power -3 dB per octave) or brown (-6 dB per octave) noise of unit mean power.

    Shaped in the frequency domain: white Gaussian spectrum times f^-1/2 (pink) or f^-1 (brown), DC
    removed, so the slope holds over the whole band instead of drifting like a leaky integrator's."""
    if kind == "babble":
        raise ConfigError("babble is made from speech: use make_noise with sources")
    if n <= 0:
        return np.zeros(0, np.float32)
    white = rng.standard_normal(n)
    if kind == "white":
        out = white
    else:
        spectrum = np.fft.rfft(white)
        freqs = np.fft.rfftfreq(n)
        exponent = 0.5 if kind == "pink" else 1.0
        scale = np.zeros_like(freqs)
        scale[1:] = freqs[1:] ** -exponent
        out = np.fft.irfft(spectrum * scale, n)
    return _unit_power(out)


def babble(
    sources: list[FloatArray], n: int, rng: np.random.Generator, rate: int, talkers: int = BABBLE_TALKERS
) -> FloatArray:
    """`talkers` voices at once, each a random sequence of `sources` (other clips, each scaled to the same
    active level) from a random offset, looped to `n` samples; unit mean power."""
    usable = [s for s in sources if len(s) and speech_power(s, rate) > 0]
    if not usable:
        raise ConfigError("babble needs at least one other clip with speech")
    total = np.zeros(n)
    for _ in range(talkers):
        parts: list[FloatArray] = []
        length = 0
        order = rng.permutation(len(usable))
        while length < n + 1:
            for i in order:
                clip = usable[int(i)]
                parts.append(clip / np.sqrt(speech_power(clip, rate)))
                length += len(clip)
        voice = np.concatenate(parts)
        offset = int(rng.integers(0, max(1, len(voice) - n)))
        total += voice[offset : offset + n]
    return _unit_power(total)


def make_noise(
    kind: NoiseKind, n: int, *, seed: int, sources: list[FloatArray] | None = None, rate: int = 16000
) -> FloatArray:
    """`n` samples of unit-power noise of `kind`, the same for the same seed (`sources`: the clips babble
    is made of, at `rate`)."""
    rng = np.random.default_rng(seed)
    if kind == "babble":
        return babble(sources or [], n, rng, rate)
    return coloured_noise(kind, n, rng)


def mix_at_snr(speech: FloatArray, noise: FloatArray, snr_db: float, rate: int) -> tuple[FloatArray, float]:
    """`speech` plus `noise` (at least as long; cut to length) scaled to `snr_db` below the speech's active
    level; returns the mix and the noise power used. A mix that would clip is scaled down as a whole
    (speech and noise together, so the SNR stays) to a peak of 0.99."""
    if len(noise) < len(speech):
        raise ConfigError("noise must be at least as long as the speech it is mixed into")
    noise = noise[: len(speech)].astype(np.float64)
    target = speech_power(speech, rate) * 10 ** (-snr_db / 10)
    current = float(np.mean(np.square(noise))) if len(noise) else 0.0
    gain = np.sqrt(target / current) if current > 0 else 0.0
    mixed = speech.astype(np.float64) + gain * noise
    peak = float(np.max(np.abs(mixed))) if len(mixed) else 0.0
    shrink = PEAK / peak if peak > PEAK else 1.0
    return (mixed * shrink).astype(np.float32), target * shrink**2


def scaled(noise: FloatArray, power: float) -> FloatArray:
    """`noise` at mean power `power` (for noise-only stretches at the level a mix used)."""
    current = float(np.mean(np.square(noise, dtype=np.float64))) if len(noise) else 0.0
    gain = np.sqrt(power / current) if current > 0 else 0.0
    return np.clip(noise * gain, -1.0, 1.0).astype(np.float32)


def _unit_power(x: np.ndarray) -> FloatArray:
    power = float(np.mean(np.square(x))) if len(x) else 0.0
    return (x / np.sqrt(power) if power > 0 else x).astype(np.float32)
