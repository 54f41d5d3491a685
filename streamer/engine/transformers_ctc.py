"""Hugging Face CTC checkpoints (wav2vec2, HuBERT, WavLM, data2vec-audio, wav2vec2-conformer) as an `Engine`.

    engine = TransformersCTCEngine.load("facebook/wav2vec2-base-960h")       # hub id (uses the HF cache)
    engine = TransformersCTCEngine.load("/models/w2v2", device="cuda:0")    # a save_pretrained folder
    logprobs = engine.forward([window_a, window_b])                          # 16 kHz mono float32

This is the only module that imports torch and transformers.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamer import SAMPLE_RATE
from streamer.decoding import WordDecoder
from streamer.engine.base import FloatArray, conv_num_frames, receptive_field
from streamer.engine.batching import AUTO_BATCH_LIMIT, length_groups, pick_max_batch, time_batch_sizes
from streamer.errors import ConfigError, EngineError, ModelLoadError
from streamer.windows import WindowPlan, partial_window_samples

logger = logging.getLogger(__name__)

NORM_EPS = 1e-7
"""Wav2Vec2FeatureExtractor's zero_mean_unit_var_norm epsilon; matching it keeps us equal to the processor."""

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}  # how huggingface_hub reads its boolean environment variables

# Model types whose padded batches give the same frames as unpadded runs (checked in the tests). Padding is
# NOT exact for data2vec-audio (its positional embedding is a stack of convs with no masking between them) nor
# for wav2vec2-conformer (the conformer's depthwise time convolution is unmasked): padded frames leak into the
# last real frames and, through attention, into every frame. Those, group-norm models and any model type not
# listed run sub-batches of equal-length windows instead, which is always exact (`batching.length_groups`).
_PADDING_EXACT_TYPES = frozenset({"wav2vec2", "hubert", "wavlm"})

# WavLM hands a bool key_padding_mask and a float position bias to torch's multi-head attention, which
# warns on every padded batch; the result is right, so keep the server log clean.
warnings.filterwarnings(
    "ignore", message="Support for mismatched key_padding_mask and attn_mask", category=UserWarning
)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in _TRUE_VALUES


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) asks for no network access.

    Read at call time: huggingface_hub reads it once at import, so a later change would otherwise be missed.
    """
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def resolve_device(device: str) -> torch.device:
    """`auto|cpu|cuda|cuda:N` -> torch.device; ConfigError when CUDA is asked for but absent."""
    spec = device.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        index_text = spec.partition(":")[2]
        if index_text and not index_text.isdigit():
            raise ConfigError(f"device {device!r}: expected auto, cpu, cuda or cuda:N")
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r} needs CUDA, but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                "use device='cpu' or 'auto'"
            )
        index = int(index_text) if index_text else torch.cuda.current_device()
        count = torch.cuda.device_count()
        if index >= count:
            raise ConfigError(
                f"device {device!r}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})"
            )
        return torch.device("cuda", index)
    raise ConfigError(f"device {device!r}: expected auto, cpu, cuda or cuda:N")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto|float32|bfloat16|float16` -> torch.dtype (auto: float16 on CUDA, float32 on CPU)."""
    spec = dtype.strip().lower()
    if spec == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if spec not in _DTYPES:
        raise ConfigError(f"dtype {dtype!r}: expected one of auto, {', '.join(_DTYPES)}")
    if spec == "float16" and device.type == "cpu":
        # CPU half-precision kernels are missing or very slow for conv1d; bfloat16 is the CPU option.
        raise ConfigError("dtype 'float16' is not supported on CPU; use 'bfloat16' or 'float32' there")
    return _DTYPES[spec]


def _looks_like_path(model: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else with a separator or a path prefix is meant as a folder.
    return model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1 or os.path.isabs(model)


def _hub_error(model: str, offline: bool, cause: BaseException) -> ModelLoadError:
    first_line = (str(cause).strip().splitlines() or [""])[0]  # transformers appends a long generic hint
    why = (
        "HF_HUB_OFFLINE is set, so only the local Hugging Face cache was searched and it is not there"
        if offline
        else "it could not be fetched from the Hugging Face Hub (no network, unknown id, or a gated/private "
        "repository) and is not in the local cache"
    )
    return ModelLoadError(
        f"cannot load model {model!r}: {why}. Either download it once where the network is reachable "
        "(unset HF_HUB_OFFLINE), or pass the path of a local folder written with "
        "`save_pretrained` (model and processor) instead of the id, e.g. /models/my-wav2vec2. "
        f"Cause: {type(cause).__name__}: {first_line}"
    )


GPU_MAX_BATCH = 16
"""On a GPU when the timing of `--max-batch auto` fails."""
AUTO_MAX_CALL_S = 0.5
"""`--max-batch auto` stops timing larger batches after a call this slow: such batches would hold a final
back for longer than its latency target allows anyway."""
CPU_MAX_BATCH = 1
"""On a CPU a batch costs about the sum of its windows (measured here, 2 cores: 8 windows of 1.1 s in one
call 1.15x faster than one by one for a 94M wav2vec2, no faster for a small one), while a final that
arrives behind a batch waits for all of it: capacity was 9 streams one window at a time against 5 with
batches of up to 16 (`python -m streamer.bench compare --sections batching`). A GPU runs a batch in about
the time of one window, so there batching is what multiplies capacity."""


class TransformersCTCEngine:
    """`Engine` over any `AutoModelForCTC` checkpoint; build it with `TransformersCTCEngine.load(...)`.

    `forward` may be called from any one thread at a time (the batcher's inference thread); `close` from any.
    """

    name: str
    frame_samples: int
    receptive_field: int
    vocabulary: Sequence[str]
    blank_id: int
    word_delimiter_id: int | None
    max_batch: int
    concurrency = 1  # torch already spreads one call over every core (or the GPU)
    final_decoder: WordDecoder | None = None
    """Decoder for finals (`streamer.decoding.final_decoder`); None: greedy. Set by `load_engine`."""

    def __init__(
        self,
        *,
        model: Any,
        tokenizer: Any,
        feature_extractor: Any,
        device: torch.device,
        dtype: torch.dtype,
        name: str,
        max_batch: int,
    ) -> None:
        """Wrap already-loaded objects (`load` is the usual way in); the model must be on `device`/`dtype`."""
        if max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, not {max_batch}")
        config = model.config
        kernels = list(getattr(config, "conv_kernel", None) or [])
        strides = list(getattr(config, "conv_stride", None) or [])
        if not kernels or len(kernels) != len(strides):
            raise ModelLoadError(
                f"{name}: config has no usable conv_kernel/conv_stride; not a wav2vec2-style model"
            )
        if getattr(config, "add_adapter", False):
            # The adapter adds padded strided convs after the encoder: frames are no longer conv_num_frames.
            raise ModelLoadError(f"{name}: checkpoints with add_adapter=True are not supported")
        self._model: Any = model
        self._config = config
        self._device = device
        self._dtype = dtype
        self._lock = threading.Lock()
        self._kernels = kernels
        self._strides = strides

        self.name = name
        self.max_batch = max_batch
        self.frame_samples = math.prod(strides)
        self.receptive_field = receptive_field(kernels, strides)

        self._normalize = bool(getattr(feature_extractor, "do_normalize", True))
        # Padding to the longest window plus an attention mask is only exact for layer-norm feature
        # encoders (group norm's statistics run over time, padding included) of the model types in
        # _PADDING_EXACT_TYPES, and only for checkpoints fine-tuned with attention masks (the feature
        # extractor says so).
        self._pad_batches = (
            config.model_type in _PADDING_EXACT_TYPES
            and getattr(config, "feat_extract_norm", None) == "layer"
            and bool(getattr(feature_extractor, "return_attention_mask", False))
        )

        # Every logit column needs a token string, so size the vocabulary by the head, not by the tokenizer
        # (tokenizers may carry added tokens the head never emits, or miss ids the head has).
        lm_head = getattr(model, "lm_head", None)
        num_tokens = int(getattr(lm_head, "out_features", 0) or config.vocab_size)
        tokens = tokenizer.convert_ids_to_tokens(list(range(num_tokens)))
        self.vocabulary = tuple("" if t is None else str(t) for t in tokens)
        if len(tokenizer) != num_tokens:
            logger.warning(
                "%s: tokenizer has %d tokens but the CTC head has %d outputs",
                name,
                len(tokenizer),
                num_tokens,
            )

        blank = tokenizer.pad_token_id
        if blank is None:
            blank = getattr(config, "pad_token_id", None)
        if blank is None or not 0 <= int(blank) < num_tokens:
            raise ModelLoadError(
                f"{name}: cannot tell the CTC blank (no pad token id in tokenizer or config)"
            )
        self.blank_id = int(blank)

        delimiter = getattr(tokenizer, "word_delimiter_token", None)
        has_delimiter = bool(delimiter) and delimiter in self.vocabulary
        self.word_delimiter_id = self.vocabulary.index(delimiter) if has_delimiter else None

        specials = {str(t) for t in tokenizer.all_special_tokens}
        if delimiter:
            specials.add(str(delimiter))
        # Text per id for `spell`, computed once: specials spell as nothing.
        self._spelling = tuple("" if t in specials else t for t in self.vocabulary)

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        threads: int | None = None,
        warmup: bool = True,
        max_batch: int | None = None,
        name: str | None = None,
    ) -> TransformersCTCEngine:
        """Load a hub id or a `save_pretrained` folder.

        `max_batch` None: on a GPU, chosen after the warm-up by timing batches of partial windows
        (`auto_max_batch`; 16 if that fails), 1 on a CPU (`CPU_MAX_BATCH`, see there).

        Raises ConfigError for a bad device/dtype/threads/max_batch, ModelLoadError when the checkpoint
        cannot be found or is not a usable CTC model. With HF_HUB_OFFLINE=1 the network is never touched.
        """
        import transformers

        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be >= 1, not {threads}")
        auto_batch = max_batch is None and torch_device.type == "cuda"
        if max_batch is None:
            max_batch = GPU_MAX_BATCH if torch_device.type == "cuda" else CPU_MAX_BATCH
        if max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, not {max_batch}")
        path = Path(model).expanduser()
        if path.exists():
            if not path.is_dir() or not (path / "config.json").is_file():
                raise ModelLoadError(
                    f"{model!r} is not a model folder (expected config.json from `save_pretrained` inside it)"
                )
            source, local_only, is_local = str(path), True, True
        elif _looks_like_path(model):
            raise ModelLoadError(f"model folder {model!r} does not exist")
        else:
            # A hub id. HF_HUB_OFFLINE=1 means cache only: no HEAD requests and no retry loop (which takes
            # ~25 s per file without a network before it gives up).
            source, local_only, is_local = model, hub_offline(), False
        common: dict[str, Any] = {"local_files_only": local_only}

        try:
            config = transformers.AutoConfig.from_pretrained(source, **common)
        except OSError as exc:
            if is_local:
                raise ModelLoadError(f"cannot read the config in {model!r}: {exc}") from exc
            raise _hub_error(model, local_only, exc) from exc
        except ValueError as exc:  # unknown model_type and the like
            raise ModelLoadError(f"{model!r}: unsupported model config: {exc}") from exc

        architectures = getattr(config, "architectures", None) or []
        if architectures and not any(a.endswith("ForCTC") for a in architectures):
            # e.g. a pre-trained-only wav2vec2: AutoModelForCTC would add a random head and "work".
            raise ModelLoadError(
                f"{model!r} is not a CTC checkpoint (architectures: {', '.join(architectures)})"
            )

        feature_extractor, tokenizer = _load_processor(transformers, source, model, common)

        if torch_device.type == "cpu":
            # Denormals in near-silent audio make x86 CPU kernels crawl; flushing them costs no accuracy here.
            torch.set_flush_denormal(True)
            if threads is not None:
                torch.set_num_threads(threads)

        try:
            loaded = _load_model(transformers, source, config, torch_dtype, common)
        except OSError as exc:
            if is_local:
                raise ModelLoadError(f"cannot load the weights in {model!r}: {exc}") from exc
            raise _hub_error(model, local_only, exc) from exc
        except Exception as exc:  # whatever transformers raises for a broken or unsupported checkpoint
            raise ModelLoadError(f"{model!r}: cannot build the CTC model: {exc}") from exc
        hf_model, info = loaded
        missing = [k for k in info.get("missing_keys", ()) if "lm_head" in k]
        if missing:
            raise ModelLoadError(f"{model!r} has no trained CTC head (missing {', '.join(sorted(missing))})")

        try:
            hf_model.to(torch_device)
        except RuntimeError as exc:  # CUDA out of memory and friends
            raise ModelLoadError(f"{model!r}: cannot move the model to {torch_device}: {exc}") from exc
        hf_model.eval()

        engine = cls(
            model=hf_model,
            tokenizer=tokenizer,
            feature_extractor=feature_extractor,
            device=torch_device,
            dtype=torch_dtype,
            name=name or model,
            max_batch=max_batch,
        )
        if warmup:
            engine._warm_up()
            if auto_batch:
                engine.max_batch = engine.auto_max_batch()
        logger.info(
            "loaded %s: %s on %s as %s, attention %s, %d tokens, frame %d samples, %s batches",
            engine.name,
            type(hf_model).__name__,
            torch_device,
            str(torch_dtype).removeprefix("torch."),
            getattr(hf_model.config, "_attn_implementation", "?"),
            len(engine.vocabulary),
            engine.frame_samples,
            "padded" if engine._pad_batches else "equal-length",
        )
        return engine

    def _warm_up(self) -> None:
        # The first call pays for kernel selection and allocator growth; do it before real traffic, and check
        # on the way that the model's frame count is the one `num_frames` promises.
        window = np.zeros(SAMPLE_RATE, dtype=np.float32)
        try:
            (out,) = self.forward([window])
        except EngineError as exc:
            raise ModelLoadError(f"{self.name}: warm-up forward failed: {exc}") from exc
        if out.shape != (self.num_frames(SAMPLE_RATE), len(self.vocabulary)):
            raise ModelLoadError(f"{self.name}: unexpected output shape {out.shape} for a 1 s window")

    def auto_max_batch(self, plan: WindowPlan | None = None) -> int:
        """The batch size to serve with: calls of 1, 2, 4, ... partial windows of `plan` (the default one)
        timed, and the smallest size past which larger batches make a window less than 10% cheaper
        (`pick_max_batch`).

        Meant for GPUs, where a batch costs little more than one window up to a size that depends on the
        model, precision and device; takes a few seconds. Falls back to `GPU_MAX_BATCH` when timing fails.
        """
        samples = partial_window_samples(plan or WindowPlan(), self.frame_samples, self.receptive_field)
        window = (0.05 * np.random.default_rng(0).standard_normal(samples)).astype(np.float32)
        chosen = self.max_batch
        self.max_batch = max(self.max_batch, AUTO_BATCH_LIMIT)  # one model call per timed batch

        def run(size: int) -> float | None:
            windows = [window] * size
            try:
                self.forward(windows)  # the first call of a shape pays for kernel selection
                took = math.inf
                for _ in range(2):
                    started = time.perf_counter()
                    self.forward(windows)
                    took = min(took, time.perf_counter() - started)
                return took
            except EngineError as exc:
                if not out_of_memory(exc):
                    raise
                if self._device.type == "cuda":
                    torch.cuda.empty_cache()
                return None

        try:
            times = time_batch_sizes(run, max_call_s=AUTO_MAX_CALL_S)
            chosen = pick_max_batch(times.seconds) if times.seconds else GPU_MAX_BATCH
        except (EngineError, ValueError) as exc:
            logger.warning("%s: cannot time batches (%s); serving batches of %d", self.name, exc, chosen)
            chosen = GPU_MAX_BATCH
        else:
            logger.info(
                "%s: batches of up to %d windows (ms per partial window by batch size: %s; stopped: %s)",
                self.name,
                chosen,
                " ".join(f"{b}:{1000 * t / b:.2f}" for b, t in times.seconds.items()),
                times.stopped,
            )
        self.max_batch = chosen
        return chosen

    # ------------------------------------------------------------------ Engine

    @property
    def device(self) -> str:
        """Where the model runs, e.g. "cpu" or "cuda:0"."""
        return str(self._device)

    @property
    def dtype(self) -> str:
        """Weights' precision: "float32", "bfloat16" or "float16"."""
        return str(self._dtype).removeprefix("torch.")

    @property
    def pads_batches(self) -> bool:
        """True when mixed-length windows share one padded batch; False when only equal lengths batch."""
        return self._pad_batches

    def num_frames(self, num_samples: int) -> int:
        """Output frames for a window of `num_samples` samples (0 below the receptive field)."""
        return conv_num_frames(num_samples, self._kernels, self._strides)

    def forward(self, windows: Sequence[FloatArray]) -> list[FloatArray]:
        """Log-probs `(num_frames(len(w)), len(vocabulary))` float32 for each window, in input order."""
        num_tokens = len(self.vocabulary)
        results: list[FloatArray | None] = [None] * len(windows)
        try:
            arrays = [np.asarray(w, dtype=np.float32) for w in windows]
            for i, w in enumerate(arrays):
                if w.ndim != 1:
                    raise ValueError(f"window {i} has shape {w.shape}; expected a 1-D array")
                if self.num_frames(len(w)) == 0:
                    # Shorter than the receptive field: no frames, and nothing worth a model call.
                    results[i] = np.zeros((0, num_tokens), dtype=np.float32)
            todo = [i for i, r in enumerate(results) if r is None]
            with self._lock:
                if self._model is None:
                    raise EngineError(f"{self.name}: engine is closed")
                # Every call is queued before the first result is read back: on a GPU the host prepares
                # and launches the next group while the device still runs the previous one (reading a
                # result is the one wait). On a CPU each call simply runs in turn.
                calls = [
                    (group, self._launch([arrays[i] for i in group])) for group in self._plan(todo, arrays)
                ]
                for group, (logprobs, lengths) in calls:
                    for i, out in zip(group, self._collect(logprobs, lengths), strict=True):
                        results[i] = out
        except EngineError:
            raise
        except Exception as exc:  # the model, torch or CUDA failed; the batcher hands this to each request
            raise EngineError(f"{self.name}: forward failed on {len(windows)} window(s): {exc}") from exc
        return [r for r in results if r is not None]

    def spell(self, words: Sequence[Sequence[int]]) -> list[str]:
        """Lower-cased text of each word from its token ids; special tokens spell as nothing."""
        spelling = self._spelling
        return ["".join(spelling[i] for i in word).lower() for word in words]

    def close(self) -> None:
        """Drop the model and free its memory; safe to call twice. `forward` afterwards raises EngineError."""
        with self._lock:
            if self._model is None:
                return
            self._model = None
        if self._device.type == "cuda":
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ internals

    def _plan(self, indices: list[int], arrays: list[FloatArray]) -> list[list[int]]:
        """Split window indices into sub-batches of at most max_batch the model may see together."""
        groups = length_groups([len(arrays[i]) for i in indices], self.max_batch, padded=self._pad_batches)
        return [[indices[k] for k in group] for group in groups]

    def _launch(self, windows: list[FloatArray]) -> tuple[torch.Tensor, list[int]]:
        """One model call over windows that may share a batch (see `_plan`): its log-probs, still on the
        device (on a GPU perhaps not computed yet), and the windows' lengths."""
        lengths = [len(w) for w in windows]
        longest = max(lengths)
        # One contiguous buffer, normalised in place per window over its own samples only, so padding
        # (zeros after the normalisation, as the feature extractor pads) never enters the statistics.
        # On a GPU the buffer is page-locked host memory: the copy to the device is then one DMA transfer
        # that does not make this thread wait (the only wait is for the results, below).
        cuda = self._device.type == "cuda"
        if cuda:
            host = torch.zeros((len(windows), longest), dtype=torch.float32, pin_memory=True)
            batch = host.numpy()
        else:
            batch = np.zeros((len(windows), longest), dtype=np.float32)
            host = torch.from_numpy(batch)
        for row, w in zip(batch, windows, strict=True):
            _normalise_into(row[: len(w)], w, self._normalize)
        # float32 over the bus, converted on the device: a conversion on the host would go through an
        # ordinary (pageable) buffer again.
        inputs = host.to(device=self._device, non_blocking=cuda).to(dtype=self._dtype)
        kwargs: dict[str, torch.Tensor] = {}
        if min(lengths) != longest:
            # Through page-locked memory too: an ordinary copy to the GPU would first wait for every call
            # still running there.
            lengths_t = torch.tensor(lengths, pin_memory=cuda).to(device=self._device, non_blocking=cuda)
            positions = torch.arange(longest, device=self._device)
            kwargs["attention_mask"] = (positions[None, :] < lengths_t[:, None]).long()
        with torch.inference_mode():
            logits = self._model(inputs, **kwargs).logits
            # log_softmax in float32 even for half-precision models: bf16/fp16 log-probs lose the small
            # differences the decoder's confidences are made of.
            return torch.log_softmax(logits.float(), dim=-1), lengths

    def _collect(self, device_logprobs: torch.Tensor, lengths: list[int]) -> list[FloatArray]:
        """Each window's frames of a launched call, as float32 arrays on the host."""
        logprobs = device_logprobs.cpu().numpy()
        longest = max(lengths)
        frames = [self.num_frames(n) for n in lengths]
        if logprobs.shape[1] < max(frames):
            raise EngineError(
                f"{self.name}: model gave {logprobs.shape[1]} frames for {longest} samples, "
                f"expected {max(frames)}"
            )
        # Row slices of a C-contiguous array are contiguous views; no copy needed.
        return [logprobs[i, :n] for i, n in enumerate(frames)]


def out_of_memory(exc: BaseException) -> bool:
    """True when `exc` (or what caused it, e.g. inside an EngineError) is torch running out of memory."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, torch.OutOfMemoryError) or "out of memory" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _normalise_into(dst: FloatArray, window: FloatArray, normalize: bool) -> None:
    """Write `window` into `dst`, zero-mean unit-variance like Wav2Vec2FeatureExtractor when `normalize`."""
    if not normalize:
        dst[:] = window
        return
    # Statistics in float64: cheap at window sizes, and float32 sums drift on long windows.
    mean = window.mean(dtype=np.float64)
    var = window.var(dtype=np.float64)
    np.subtract(window, np.float32(mean), out=dst)
    dst *= np.float32(1.0 / math.sqrt(var + NORM_EPS))


def _load_processor(transformers: Any, source: str, model: str, common: dict[str, Any]) -> tuple[Any, Any]:
    """(feature_extractor, tokenizer) from AutoProcessor, else AutoFeatureExtractor + AutoTokenizer."""
    feature_extractor: Any = None
    tokenizer: Any = None
    # A checkpoint with a language_model/ has Wav2Vec2ProcessorWithLM, which would load the n-gram model
    # through pyctcdecode a second time (gigabytes for a real one): its two parts are loaded on their own.
    with_lm = (Path(source) / "language_model").is_dir()
    try:
        if not with_lm:
            processor = transformers.AutoProcessor.from_pretrained(source, **common)
            feature_extractor = getattr(processor, "feature_extractor", None)
            tokenizer = getattr(processor, "tokenizer", None)
    except Exception as exc:  # no processor config, or an unusual one: the two parts may still load
        logger.debug("%s: AutoProcessor failed (%s); trying feature extractor and tokenizer", model, exc)
    try:
        if feature_extractor is None:
            feature_extractor = transformers.AutoFeatureExtractor.from_pretrained(source, **common)
        if tokenizer is None:
            tokenizer = transformers.AutoTokenizer.from_pretrained(source, **common)
    except Exception as exc:
        raise ModelLoadError(
            f"{model!r}: no usable processor (feature extractor + CTC tokenizer) next to the model: {exc}"
        ) from exc
    if getattr(feature_extractor, "sampling_rate", SAMPLE_RATE) != SAMPLE_RATE:
        raise ModelLoadError(
            f"{model!r}: expects {feature_extractor.sampling_rate} Hz audio; only 16 kHz is served"
        )
    input_names = list(getattr(feature_extractor, "model_input_names", None) or ["input_values"])
    if input_names[0] != "input_values":
        # e.g. wav2vec2-bert, which takes filter-bank features rather than the waveform.
        raise ModelLoadError(f"{model!r}: model takes {input_names[0]!r}, not raw waveform input_values")
    return feature_extractor, tokenizer


def _load_model(
    transformers: Any, source: str, config: Any, dtype: torch.dtype, common: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """AutoModelForCTC with SDPA attention where the class supports it, its default (eager) otherwise."""
    kwargs: dict[str, Any] = {"config": config, "dtype": dtype, "output_loading_info": True, **common}
    try:
        model, info = transformers.AutoModelForCTC.from_pretrained(
            source, attn_implementation="sdpa", **kwargs
        )
    except ValueError as exc:
        # transformers raises ValueError for classes without SDPA (WavLM); anything else is a real error.
        if "scaled_dot_product_attention" not in str(exc) and "sdpa" not in str(exc):
            raise
        logger.info("%s: no SDPA attention for this model class; using its default", source)
        model, info = transformers.AutoModelForCTC.from_pretrained(source, **kwargs)
    return model, dict(info)
