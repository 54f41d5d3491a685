"""The engine boundary: everything outside `streamer.engine` sees models only through `Engine`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


@runtime_checkable
class Engine(Protocol):
    """A CTC acoustic model.

    Call `forward([w1, w2, ...])` with 16 kHz mono float32 windows (any lengths) from any thread, at most
    `concurrency` calls at a time (the batcher owns those threads); it returns one
    `(num_frames(len(w)), len(vocabulary))` float32 array of log-probabilities per window. Frame `j` of a
    window starting at sample `s` (a multiple of `frame_samples`) is frame `s // frame_samples + j` of the
    whole signal.
    """

    # Read-only properties, so that plain class or instance attributes of any compatible type satisfy them.
    @property
    def name(self) -> str:
        """Human-readable model name, reported in `model_info`."""
        ...

    @property
    def frame_samples(self) -> int:
        """Samples per output frame (stride), 320 for wav2vec2."""
        ...

    @property
    def receptive_field(self) -> int:
        """Samples one output frame looks at (400 for wav2vec2's conv stack); windows extend by the excess."""
        ...

    @property
    def vocabulary(self) -> Sequence[str]: ...

    @property
    def blank_id(self) -> int: ...

    @property
    def word_delimiter_id(self) -> int | None:
        """Token that separates words (`|` for wav2vec2 character vocabularies), or None."""
        ...

    @property
    def max_batch(self) -> int:
        """Largest batch the engine takes in one call (1 for engines without a batch axis)."""
        ...

    @property
    def concurrency(self) -> int:
        """`forward` calls that may run at once from different threads (1: strictly one at a time).

        More than 1 only for engines whose calls each use one core (model replicas): the batcher then
        runs that many batches side by side, so a long final pass does not hold up other streams."""
        ...

    def num_frames(self, num_samples: int) -> int:
        """Number of output frames for a window of `num_samples` samples."""
        ...

    def forward(self, windows: Sequence[FloatArray]) -> list[FloatArray]:
        """Log-probs for each window (see the class docstring)."""
        ...

    def spell(self, words: Sequence[Sequence[int]]) -> list[str]:
        """Text of each word, given its collapsed non-blank token ids (no delimiters)."""
        ...

    def close(self) -> None:
        """Release the model (idempotent)."""
        ...


def conv_num_frames(num_samples: int, kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Output length of a stack of unpadded 1-D convolutions (wav2vec2's feature encoder)."""
    n = num_samples
    for k, s in zip(kernels, strides, strict=True):
        if n < k:
            return 0
        n = (n - k) // s + 1
    return n


def receptive_field(kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Input samples seen by one output frame of a conv stack."""
    field, jump = 1, 1
    for k, s in zip(kernels, strides, strict=True):
        field += (k - 1) * jump
        jump *= s
    return field
