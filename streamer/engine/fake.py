"""A deterministic, model-free engine for tests, dry runs and benchmarks of everything but the model.

`ToneEngine()` behaves like a wav2vec2 CTC model (320-sample frames, 400-sample receptive field) whose every
frame depends only on its own 400 samples: quiet frames are blank, faint ones the word delimiter `|`, and
loud ones a letter chosen by the dominant pitch (`tone_hz(letter)` gives the pitch that yields it). So a
stitched stream equals a full pass exactly, and tone sequences "spell" known words.
"""

from __future__ import annotations

import string
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from streamer.engine.base import FloatArray, conv_num_frames

KERNELS = (10, 3, 3, 3, 3, 2, 2)
STRIDES = (5, 2, 2, 2, 2, 2, 2)
LETTERS = string.ascii_lowercase[:16]
BLANK_RMS = 0.004
LETTER_RMS = 0.03
PITCH_STEP = 200.0


def tone_hz(letter: str) -> float:
    """Pitch that the engine reads as `letter` (one of `LETTERS`)."""
    return PITCH_STEP * (LETTERS.index(letter) + 2)


class ToneEngine:
    """Fake CTC engine; see the module docstring. Thread-safe counters describe the calls it got."""

    name = "tone-fake"
    frame_samples = 320
    receptive_field = 400
    blank_id = 0
    word_delimiter_id = 1

    def __init__(
        self,
        *,
        max_batch: int = 8,
        concurrency: int = 1,
        delay_s: float = 0.0,
        per_window_s: float = 0.0,
        fail: Callable[[Sequence[FloatArray]], bool] | None = None,
    ) -> None:
        self.vocabulary: list[str] = ["<pad>", "|", *LETTERS]
        self.max_batch = max_batch
        self.concurrency = concurrency
        self._delay = delay_s
        self._per_window = per_window_s
        self._fail = fail
        self._lock = threading.Lock()
        self.batch_sizes: list[int] = []
        self.samples_processed = 0
        self.threads_seen: set[int] = set()
        self._active = 0
        self.max_active = 0
        """Most `forward` calls seen running at once."""

    def num_frames(self, num_samples: int) -> int:
        return conv_num_frames(num_samples, KERNELS, STRIDES)

    def forward(self, windows: Sequence[FloatArray]) -> list[FloatArray]:
        with self._lock:
            self.batch_sizes.append(len(windows))
            self.samples_processed += sum(len(w) for w in windows)
            self.threads_seen.add(threading.get_ident())
            self._active += 1
            self.max_active = max(self.max_active, self._active)
        try:
            if self._delay or self._per_window:
                time.sleep(self._delay + self._per_window * len(windows))
            if self._fail is not None and self._fail(windows):
                raise RuntimeError("fake engine failure")
            return [self._window(w) for w in windows]
        finally:
            with self._lock:
                self._active -= 1

    def _window(self, audio: FloatArray) -> FloatArray:
        n = self.num_frames(len(audio))
        out = np.full((n, len(self.vocabulary)), -8.0, dtype=np.float32)
        if n == 0:
            return out
        idx = np.arange(n)[:, None] * self.frame_samples + np.arange(self.receptive_field)[None, :]
        frames = audio[idx].astype(np.float64)
        rms = np.sqrt(np.mean(frames**2, axis=1))
        spectrum = np.abs(np.fft.rfft(frames * np.hanning(self.receptive_field), n=1600, axis=1))
        pitch = spectrum.argmax(axis=1) * 10.0  # 16000 / 1600 Hz per bin
        letter = np.clip(np.rint(pitch / PITCH_STEP).astype(int) - 2, 0, len(LETTERS) - 1)
        token = np.where(rms < BLANK_RMS, 0, np.where(rms < LETTER_RMS, 1, 2 + letter))
        # Confidence grows with loudness so that it is not constant.
        peak = np.clip(2.0 + 60.0 * rms, 2.0, 9.0).astype(np.float32)
        out[np.arange(n), token] = peak
        out -= np.log(np.exp(out).sum(axis=1, keepdims=True))
        return out.astype(np.float32)

    def spell(self, words: Sequence[Sequence[int]]) -> list[str]:
        return ["".join(self.vocabulary[t] for t in w if t > 1) for w in words]

    def close(self) -> None:
        pass


def tone_word(word: str, *, letter_s: float = 0.12, amplitude: float = 0.3, sr: int = 16000) -> FloatArray:
    """Audio that `ToneEngine` reads as `word`: one tone per letter."""
    parts = []
    for ch in word:
        t = np.arange(int(letter_s * sr)) / sr
        parts.append(amplitude * np.sin(2 * np.pi * tone_hz(ch) * t))
    audio = np.concatenate(parts)
    # 20 ms fades: a frame that straddles an abrupt start or end of a tone sees a click whose spectrum can
    # peak at another letter's pitch, so, depending on where the frames fall (a browser or a resampler
    # shifts them), a word would gain a stray letter ("abci").
    ramp = np.linspace(0.0, 1.0, min(int(0.02 * sr), len(audio) // 2))
    audio[: len(ramp)] *= ramp
    audio[len(audio) - len(ramp) :] *= ramp[::-1]
    return audio.astype(np.float32)


def tone_phrase(words: Sequence[str], *, gap_s: float = 0.12, seed: int = 0, sr: int = 16000) -> FloatArray:
    """Words separated by faint noise (read as the delimiter)."""
    rng = np.random.default_rng(seed)
    parts: list[FloatArray] = []
    for i, w in enumerate(words):
        if i:
            parts.append((0.012 * rng.standard_normal(int(gap_s * sr))).astype(np.float32))
        parts.append(tone_word(w, sr=sr))
    return np.concatenate(parts).astype(np.float32)


class EnergyDetector:
    """A VAD for tone audio: a frame is speech when its RMS exceeds a threshold."""

    def __init__(self, threshold: float = BLANK_RMS) -> None:
        self.threshold = threshold

    def is_speech(self, frame: FloatArray) -> bool:
        return bool(np.sqrt(np.mean(frame.astype(np.float64) ** 2)) >= self.threshold)
