"""The built-in English model: hama's phoneme CTC acoustic model plus its phoneme-to-text model.

Ships inside the `hama` package (numpy and a bundled CPU runtime, no hub), so the server transcribes
English offline out of the box. Demo grade: phonemes are spelled word by word, with no language model.
`HamaEngine()` loads it; it behaves like any `Engine`, one window per forward call (no batch axis).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from streamer.engine.base import FloatArray

# hama's own decoder lowers the blank score by 0.1 before the argmax; keeping it keeps its accuracy.
BLANK_BIAS = -0.1
SPELL_CACHE = 50_000


class HamaEngine:
    """hama.ASRModel as an `Engine`; `spell` runs hama.P2GModel per word, cached."""

    frame_samples = 320
    receptive_field = 400
    max_batch = 1

    def __init__(self, name: str = "hama-en") -> None:
        import hama  # deferred: importing it loads the runtime library

        self.name = name
        self._asr = hama.ASRModel()
        self._p2g = hama.P2GModel()
        tokens = list(self._asr.decoder_tokens)
        self.vocabulary: list[str] = tokens
        self.blank_id: int = self._asr.blank_id
        self.word_delimiter_id: int | None = tokens.index("<wb>")
        self._specials = {i for i, t in enumerate(tokens) if t.startswith("<") and t.endswith(">")}
        self._inputs = (self._asr._waveform_input_name, self._asr._waveform_lengths_input_name)
        self._outputs = [self._asr._log_probs_output_name, self._asr._out_lengths_output_name]
        self._cache: OrderedDict[tuple[str, ...], str] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.spell_calls = 0
        """Words actually converted by P2G (cache misses), for the benchmarks."""

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.frame_samples + 1

    def forward(self, windows: Sequence[FloatArray]) -> list[FloatArray]:
        return [self._one(w) for w in windows]

    def _one(self, window: FloatArray) -> FloatArray:
        wav = np.clip(np.asarray(window, dtype=np.float32), -1.0, 1.0).reshape(1, -1)
        feeds = {self._inputs[0]: wav, self._inputs[1]: np.array([wav.shape[1]], dtype=np.int64)}
        log_probs, lengths = self._asr.session.run(self._outputs, feeds)
        out = np.array(log_probs[0][: int(np.asarray(lengths).reshape(-1)[0])], dtype=np.float32)
        out[:, self.blank_id] += BLANK_BIAS
        out -= np.logaddexp.reduce(out, axis=1, keepdims=True)
        return out

    def spell(self, words: Sequence[Sequence[int]]) -> list[str]:
        return [
            self._spell_one(tuple(self.vocabulary[t] for t in w if t not in self._specials)) for w in words
        ]

    def _spell_one(self, phonemes: tuple[str, ...]) -> str:
        if not phonemes:
            return ""
        with self._cache_lock:
            hit = self._cache.get(phonemes)
            if hit is not None:
                self._cache.move_to_end(phonemes)
                return hit
        text = str(self._p2g.predict(list(phonemes)).text).strip()
        with self._cache_lock:
            self.spell_calls += 1
            self._cache[phonemes] = text
            if len(self._cache) > SPELL_CACHE:
                self._cache.popitem(last=False)
        return text

    def close(self) -> None:
        pass
