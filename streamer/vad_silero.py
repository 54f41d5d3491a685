"""silero-vad (v6, 16 kHz) as a `SpeechDetector`, run with numpy.

    detector = SileroDetector()          # one per channel; the weights are loaded once per process
    detector.is_speech(frame)            # one VAD frame (10, 20 or 30 ms) of 16 kHz float32
    detector.probability                 # the latest speech probability, 0-1

    model = load_silero_model()          # the shared network, for callers that batch streams themselves
    probs, state = model.step(chunks, state)   # chunks: (B, 576) = 64 samples of context + 512 new ones

The weights come from the TorchScript file that the `silero-vad` package ships; the network is small
(an STFT, four 1-D convolutions on 4 frames, one LSTM cell, a sigmoid) and is evaluated here with numpy.
Why not the package's own loader: importing `silero_vad` calls `torch.set_num_threads(1)` for the whole
process, which would starve a torch ASR engine, and torch's thread pool is process-global, so a torch
VAD beside the engine either fights it for cores or slows it. With numpy, one stream per `step` keeps
every matmul below OpenBLAS's multithreading thresholds, so the detector runs on the calling thread only
(process CPU equals thread CPU, checked in `streamer.bench.vadcost`), and the server needs no torch for
it (importing torch costs ~1 s and ~180 MB). Batches of several streams per `step` cross those
thresholds and numpy's BLAS then starts threads of its own. The file is read with a restricted unpickler
that builds nothing but numpy arrays; the result equals the TorchScript model to 1e-5.
"""

from __future__ import annotations

import functools
import importlib.util
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from streamer.errors import ConfigError

FloatArray = npt.NDArray[np.float32]

CHUNK = 512
"""Samples per model step at 16 kHz (32 ms): the only chunk size the 16 kHz model takes."""
CONTEXT = 64
"""Samples of the previous chunk the model sees again in front of each chunk."""
HIDDEN = 128
DEFAULT_THRESHOLD = 0.5
"""silero's own default: a chunk is speech at probability >= 0.5."""

_MODEL_FILE = "silero_vad.jit"
_FRAMES = 4  # STFT frames per step: (64 + 512 + 64 reflected - 256) / 128 + 1
_BINS = 129  # 256-point STFT: 129 real and 129 imaginary outputs


class SileroModel:
    """The 16 kHz silero-vad network, batched over streams: `step(chunks, state)`.

    `chunks` is (B, 576) float32: each stream's last 64 samples of its previous chunk, then 512 new
    samples; `state` is (2, B, 128) (the LSTM's h and c; zeros for a new stream, see `initial_state`).
    Returns the speech probability of each chunk (B,) and the new state.
    """

    def __init__(self, params: dict[str, FloatArray]) -> None:
        length = CONTEXT + CHUNK
        basis = params["stft.forward_basis_buffer"][:, 0, :]  # (258 outputs, 256 taps)
        taps = basis.shape[1]
        hop = taps // 2
        # The STFT is a strided convolution over the chunk reflect-padded by 64 samples: gather its 4
        # frames straight from the unpadded chunk (reflection folded into the indices), one matmul.
        source = np.array([j if j < length else 2 * (length - 1) - j for j in range(length + CONTEXT)])
        self._frames = np.stack([source[f * hop : f * hop + taps] for f in range(_FRAMES)])
        self._basis = np.ascontiguousarray(basis.T)
        # Convolutions (kernel 3, padding 1) as im2col matmuls: weights laid out (tap, in channel) x out.
        self._convs: list[tuple[FloatArray, FloatArray, int]] = []
        for i, stride in enumerate((1, 2, 2, 1)):
            weight = params[f"encoder.{i}.reparam_conv.weight"]
            matrix = np.ascontiguousarray(weight.transpose(2, 1, 0).reshape(-1, weight.shape[0]))
            self._convs.append((matrix, params[f"encoder.{i}.reparam_conv.bias"], stride))
        # The LSTM cell's two matmuls as one, on [input, h].
        self._w_gates = np.ascontiguousarray(
            np.concatenate((params["decoder.rnn.weight_ih"].T, params["decoder.rnn.weight_hh"].T))
        )
        self._b_gates = (params["decoder.rnn.bias_ih"] + params["decoder.rnn.bias_hh"]).astype(np.float32)
        self._w_out = np.ascontiguousarray(params["decoder.decoder.2.weight"][0, :, 0])
        self._b_out = np.float32(params["decoder.decoder.2.bias"][0])

    @staticmethod
    def initial_state(batch: int = 1) -> FloatArray:
        return np.zeros((2, batch, HIDDEN), np.float32)

    def step(self, chunks: FloatArray, state: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Speech probabilities of a batch of chunks (see the class docstring) and the next state."""
        batch = chunks.shape[0]
        # One 2-D matmul for all frames of all streams (a stacked matmul would call BLAS per stream).
        spectrum = (chunks[:, self._frames].reshape(batch * _FRAMES, -1) @ self._basis).reshape(
            batch, _FRAMES, 2, _BINS
        )
        x = np.sqrt(spectrum[:, :, 0] ** 2 + spectrum[:, :, 1] ** 2)  # (batch, frames, 129)
        for matrix, bias, stride in self._convs:
            frames = x.shape[1]
            edge = np.zeros((batch, 1, x.shape[2]), np.float32)
            padded = np.concatenate((edge, x, edge), axis=1)
            last = stride * ((frames - 1) // stride) + 1
            cols = np.concatenate([padded[:, k : k + last : stride] for k in range(3)], axis=2)
            out = cols.reshape(-1, cols.shape[2]) @ matrix + bias
            x = np.maximum(out, 0.0).reshape(batch, -1, matrix.shape[1])
        gates = np.concatenate((x[:, 0], state[0]), axis=1) @ self._w_gates + self._b_gates
        i, f, g, o = np.split(gates, 4, axis=1)  # torch's LSTMCell order: input, forget, cell, output
        c = _sigmoid(f) * state[1] + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        probs = _sigmoid(np.maximum(h, 0.0) @ self._w_out + self._b_out)
        return probs.astype(np.float32), np.stack((h, c)).astype(np.float32)


class SileroDetector:
    """silero-vad behind the segmenter's `SpeechDetector` protocol, one per channel.

    The model steps on 512-sample chunks (32 ms) and our VAD frames are 10-30 ms, so frames are buffered
    and each frame is judged by the latest complete chunk: `is_speech` is True when the probability of
    the newest chunk that ended within or before this frame is >= `threshold`. With 30 ms frames, 15 of
    every 16 frames complete a chunk; the rest repeat the previous answer. The decision thus lags the
    frame by at most one chunk (32 ms), which the segmenter's pre-roll (300 ms) covers. No hysteresis here:
    the segmenter's start window and endpointing already smooth single-frame flips.
    """

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, model: SileroModel | None = None) -> None:
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"silero threshold must be between 0 and 1, got {threshold}")
        self.threshold = threshold
        self._model = model or load_silero_model()
        self._window = np.zeros(CONTEXT + CHUNK, np.float32)  # context, then the chunk being filled
        self._filled = 0
        self._state = SileroModel.initial_state()
        self.probability = 0.0
        self.chunks = 0
        """Model steps taken so far (for cost accounting)."""

    def is_speech(self, frame: FloatArray) -> bool:
        pos = 0
        while pos < len(frame):
            take = min(CHUNK - self._filled, len(frame) - pos)
            start = CONTEXT + self._filled
            self._window[start : start + take] = frame[pos : pos + take]
            self._filled += take
            pos += take
            if self._filled == CHUNK:
                probs, self._state = self._model.step(self._window[None, :], self._state)
                self.probability = float(probs[0])
                self.chunks += 1
                self._window[:CONTEXT] = self._window[-CONTEXT:]
                self._filled = 0
        return self.probability >= self.threshold


def silero_factory(threshold: float = DEFAULT_THRESHOLD) -> Callable[[], SileroDetector]:
    """A detector factory for `Stream`/`Session` (one detector per channel), loading the model now so a
    missing package fails at start-up rather than on the first stream."""
    model = load_silero_model()
    return functools.partial(SileroDetector, threshold, model)


@functools.cache
def load_silero_model() -> SileroModel:
    """The shared model (loaded once per process; `step` keeps no state of its own). Raises ConfigError
    when the `silero-vad` package is not installed or its model file cannot be read."""
    return SileroModel(read_torchscript_params(silero_model_path(), "_model."))


def silero_model_path() -> Path:
    """The TorchScript model inside the installed `silero-vad` package, found without importing it
    (importing it would set torch's process-wide thread count)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("--vad silero needs the silero-vad package (pip install silero-vad)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / _MODEL_FILE
    if not path.is_file():
        raise ConfigError(f"the silero-vad package has no {_MODEL_FILE} (expected at {path})")
    return path


def read_torchscript_params(path: Path, prefix: str = "") -> dict[str, FloatArray]:
    """The float32 tensors of a TorchScript archive whose dotted names start with `prefix` (stripped),
    as numpy arrays, without torch. Raises ConfigError on anything but plain modules and tensors."""
    try:
        with zipfile.ZipFile(path) as archive:
            pkl = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
            if pkl is None:
                raise ConfigError(f"{path}: not a TorchScript archive (no data.pkl)")
            root = pkl[: -len("data.pkl")]
            with archive.open(pkl) as fh:
                tree = _TensorUnpickler(fh, lambda key: archive.read(f"{root}data/{key}")).load()
    except (OSError, zipfile.BadZipFile, pickle.UnpicklingError, KeyError, ValueError) as exc:
        raise ConfigError(f"cannot read the silero model {path}: {exc}") from None
    params: dict[str, FloatArray] = {}
    _collect(tree, "", params)
    return {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}


class _Module:
    """Stands in for any scripted module class while unpickling: keeps its attributes, runs nothing."""

    def __init__(self, *args: object) -> None:
        self.attrs: dict[str, object] = {}

    def __setstate__(self, state: object) -> None:
        if isinstance(state, dict):
            self.attrs = state


class _Tensor:
    def __init__(self, array: FloatArray) -> None:
        self.array = array


_DTYPES = {"FloatStorage": np.dtype("<f4")}


class _TensorUnpickler(pickle.Unpickler):
    """Resolves only the names a TorchScript data.pkl uses for modules and float tensors; any other
    global is refused, so a crafted file cannot run code."""

    def __init__(self, fh: IO[bytes], read: Callable[[str], bytes]) -> None:
        super().__init__(fh)
        self._read = read

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__."):
            return type(name, (_Module,), {})
        if module == "torch" and name in _DTYPES:
            return name
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch.jit._pickle" and name.startswith("build_"):
            return lambda value: value  # typed lists (intlist, ...) are plain lists here
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        kind, storage_type, key, _location, numel = pid
        if kind != "storage" or storage_type not in _DTYPES:
            raise pickle.UnpicklingError(f"unexpected storage {kind} {storage_type}")
        data = np.frombuffer(self._read(str(key)), dtype=_DTYPES[storage_type])
        return data[:numel]


def _rebuild_tensor(
    storage: npt.NDArray[Any], offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_rest: object
) -> _Tensor:
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * item for s in stride), writeable=False
    )
    return _Tensor(np.array(view, dtype=np.float32))


def _collect(node: object, name: str, out: dict[str, FloatArray]) -> None:
    if isinstance(node, _Tensor):
        out[name] = node.array
    elif isinstance(node, _Module):
        for key, value in node.attrs.items():
            _collect(value, f"{name}.{key}" if name else key, out)


def _sigmoid(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return np.asarray(1.0 / (1.0 + np.exp(-x)), dtype=np.float32)
