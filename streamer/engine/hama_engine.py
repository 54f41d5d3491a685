"""The built-in English model: hama's phoneme CTC acoustic model plus its phoneme-to-text model.

Ships inside the `hama` package (numpy and a bundled CPU runtime, no hub), so the server transcribes
English offline out of the box. Demo grade: phonemes are spelled word by word, with no language model.
`HamaEngine(replicas=N)` loads it; it behaves like any `Engine`.

The runtime takes one window per call on one core and releases the GIL, so the engine holds `replicas`
copies of the model and declares `concurrency = replicas`: the batcher runs that many calls side by side
(one window each: batching buys nothing here), and a direct `forward` of several windows spreads them
over the replicas.
Each replica also spells the words of its window (phoneme-to-text, ~10 ms a word) while it is on the
inference thread, so that `spell`, which sessions call on the event loop, mostly hits the cache.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from streamer.ctc import greedy_words
from streamer.decoding import WordDecoder
from streamer.engine.base import FloatArray
from streamer.engine.hama_lexicon import HamaPronouncer

# hama's own decoder lowers the blank score by 0.1 before the argmax; keeping it keeps its accuracy.
BLANK_BIAS = -0.1
SPELL_CACHE = 50_000


class _Replica:
    def __init__(self) -> None:
        import hama  # deferred: importing it loads the runtime library

        self.asr = hama.ASRModel()
        self.p2g = hama.P2GModel()


class HamaEngine:
    """hama.ASRModel as an `Engine`; `spell` runs hama.P2GModel per word, cached."""

    frame_samples = 320
    receptive_field = 400

    def __init__(
        self, name: str = "hama-en", replicas: int | None = None, warm_spelling: bool = True
    ) -> None:
        self.name = name
        count = max(1, replicas if replicas is not None else min(4, os.cpu_count() or 1))
        self._replicas: queue.SimpleQueue[_Replica] = queue.SimpleQueue()
        first = _Replica()
        self._replicas.put(first)
        for _ in range(count - 1):
            self._replicas.put(_Replica())
        self.max_batch = 1  # no batch axis: parallel calls (concurrency) instead
        self.concurrency = count
        self._pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="hama") if count > 1 else None
        asr = first.asr
        tokens = list(asr.decoder_tokens)
        self.vocabulary: list[str] = tokens
        self.blank_id: int = asr.blank_id
        self.word_delimiter_id: int | None = tokens.index("<wb>")
        self._specials = {i for i, t in enumerate(tokens) if t.startswith("<") and t.endswith(">")}
        self._inputs = (asr._waveform_input_name, asr._waveform_lengths_input_name)
        self._outputs = [asr._log_probs_output_name, asr._out_lengths_output_name]
        self._warm = warm_spelling
        self._cache: OrderedDict[tuple[str, ...], str] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.final_decoder: WordDecoder | None = None
        """Decoder for finals (`streamer.decoding.final_decoder`); None: greedy. Set by `load_engine`."""
        self.pronounce = HamaPronouncer(tokens)
        """A word's pronunciations in this model's units (G2P), for keyterms."""
        self.spell_calls = 0
        """Words actually converted by P2G (cache misses), for the benchmarks."""

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.frame_samples + 1

    def forward(self, windows: Sequence[FloatArray]) -> list[FloatArray]:
        if self._pool is None or len(windows) == 1:
            return [self._run(w) for w in windows]
        return list(self._pool.map(self._run, windows))

    def _run(self, window: FloatArray) -> FloatArray:
        replica = self._replicas.get()
        try:
            out = self._acoustic(replica.asr, window)
            if self._warm:
                self._spell_window(replica, out)
            return out
        finally:
            self._replicas.put(replica)

    def _acoustic(self, asr: Any, window: FloatArray) -> FloatArray:
        wav = np.clip(np.asarray(window, dtype=np.float32), -1.0, 1.0).reshape(1, -1)
        feeds = {self._inputs[0]: wav, self._inputs[1]: np.array([wav.shape[1]], dtype=np.int64)}
        log_probs, lengths = asr.session.run(self._outputs, feeds)
        out = np.array(log_probs[0][: int(np.asarray(lengths).reshape(-1)[0])], dtype=np.float32)
        out[:, self.blank_id] += BLANK_BIAS
        out -= np.logaddexp.reduce(out, axis=1, keepdims=True)
        return out

    def _spell_window(self, replica: _Replica, logprobs: FloatArray) -> None:
        words = greedy_words(logprobs, blank_id=self.blank_id, delimiter_id=self.word_delimiter_id).words
        for w in words:
            self._spell_one(self._phonemes(w.tokens), replica)

    def _phonemes(self, tokens: Sequence[int]) -> tuple[str, ...]:
        return tuple(self.vocabulary[t] for t in tokens if t not in self._specials)

    def spell(self, words: Sequence[Sequence[int]]) -> list[str]:
        return [self._spell_one(self._phonemes(w)) for w in words]

    def _spell_one(self, phonemes: tuple[str, ...], replica: _Replica | None = None) -> str:
        if not phonemes:
            return ""
        with self._cache_lock:
            hit = self._cache.get(phonemes)
            if hit is not None:
                self._cache.move_to_end(phonemes)
                return hit
        if replica is not None:
            text = str(replica.p2g.predict(list(phonemes)).text).strip()
        else:
            borrowed = self._replicas.get()
            try:
                text = str(borrowed.p2g.predict(list(phonemes)).text).strip()
            finally:
                self._replicas.put(borrowed)
        with self._cache_lock:
            self.spell_calls += 1
            self._cache[phonemes] = text
            if len(self._cache) > SPELL_CACHE:
                self._cache.popitem(last=False)
        return text

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
