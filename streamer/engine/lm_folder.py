"""A checkpoint's `language_model/` folder (pyctcdecode's layout) as the beam decoder of its finals.

    folder = find_language_model("/models/w2v2-en")      # its language_model/ folder, or None
    decoder = lm_beam_decoder(engine, folder)            # character lexicon + n-gram LM beam search

The folder holds `attrs.json` (alpha, beta, unk_score_offset, score_boundary), `unigrams.txt` (the
words, one a line) and a KenLM model: the first `*.arpa`, `*.bin` or `*.binary` file. ARPA text is read
by `streamer.decoding.lm.ArpaLM` (pure Python) unless the `kenlm` module is importable, which binary
files need (`pip install 'streamer[lm]'`).

attrs.json onto `BeamOptions`, matching pyctcdecode's scoring (per word: alpha * ln p(w | context) +
beta, where an unknown word's log10 probability gets unk_score_offset added before the conversion):
`lm_weight = alpha`, `word_bonus = beta`, `oov_logp = unk_score_offset * ln 10`; `score_boundary`:
utterances start after `<s>` and end with `</s>`. `split_penalty` becomes inf (words end only at the
model's `|`, as in pyctcdecode: with one-letter words such as "a" and "i" in the lexicon, a split
without the delimiter would let them break other words apart). The search's other settings (beam width,
pruning) are the `BeamOptions` given. Differences from pyctcdecode: a word outside the lexicon is
scored as `<unk>` whatever its spelling, and a partial word is ranked by the likeliest unigram it can
still become (pyctcdecode: 0 inside its unigram trie, else unk_score_offset).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from streamer.decoding import BeamDecoder, BeamOptions
from streamer.decoding.char_lexicon import Speller, char_lexicon
from streamer.decoding.lm import BOS, EOS, LN10, UNKNOWN, ArpaError, ArpaLM, WordLM
from streamer.engine.base import Engine
from streamer.errors import ConfigError

log = logging.getLogger(__name__)

FOLDER = "language_model"
LM_SUFFIXES = (".arpa", ".bin", ".binary")


@dataclass(frozen=True)
class LMAttrs:
    """attrs.json; the defaults are pyctcdecode's."""

    alpha: float = 0.5
    beta: float = 1.5
    unk_score_offset: float = -10.0
    score_boundary: bool = True

    def beam_options(self, base: BeamOptions, *, delimited: bool = True) -> BeamOptions:
        """`base` with the LM weights of these attributes (see the module docstring); `delimited`: the
        model marks word ends (`|`), so words end only there."""
        return replace(
            base,
            lm_weight=self.alpha,
            word_bonus=self.beta,
            oov_logp=self.unk_score_offset * LN10,
            split_penalty=math.inf if delimited else base.split_penalty,
        )


def read_attrs(path: Path) -> LMAttrs:
    """attrs.json -> LMAttrs (missing keys keep the defaults); ConfigError when it is not usable."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the language model's attributes: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    values: dict[str, Any] = {}
    for name in ("alpha", "beta", "unk_score_offset"):
        if raw.get(name) is not None:
            value = raw[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigError(f"{path}: {name} must be a number, not {value!r}")
            values[name] = float(value)
    if raw.get("score_boundary") is not None:
        if not isinstance(raw["score_boundary"], bool):
            raise ConfigError(f"{path}: score_boundary must be true or false")
        values["score_boundary"] = raw["score_boundary"]
    return LMAttrs(**values)


def lm_file(folder: Path) -> Path:
    """The first (by name) `*.arpa`, `*.bin` or `*.binary` file in `folder`; ConfigError if none."""
    found = sorted(p for p in folder.iterdir() if p.suffix in LM_SUFFIXES and p.is_file())
    if not found:
        raise ConfigError(f"{folder}: no language model file (*.arpa, *.bin or *.binary)")
    return found[0]


def read_unigrams(path: Path) -> list[str]:
    """Words of unigrams.txt, one a line (blank lines skipped); [] where the file is absent."""
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as f:
        return [w for w in (line.strip() for line in f) if w]


class KenLM:
    """A `WordLM` over a KenLM model file (binary or ARPA); needs the kenlm module."""

    def __init__(self, path: Path, *, score_boundary: bool = True) -> None:
        import kenlm

        self._kenlm: Any = kenlm
        self._model: Any = kenlm.Model(str(path))
        self.order: int = int(self._model.order)
        self.score_boundary = score_boundary
        self._words: list[str] = []
        self._ids: dict[str, int] = {}
        self._cache: dict[tuple[Hashable, int], tuple[float, Hashable]] = {}

    def word_id(self, word: str) -> int:
        """An id for `word` where the model knows it (KenLM does not list its vocabulary), else -1."""
        i = self._ids.get(word)
        if i is None:
            if word in (BOS, EOS, UNKNOWN) or word not in self._model:
                return -1
            i = self._ids[word] = len(self._words)
            self._words.append(word)
        return i

    def start(self) -> Hashable:
        """KenLM's begin-of-sentence state with `score_boundary`, else its null context."""
        state = self._kenlm.State()
        if self.score_boundary:
            self._model.BeginSentenceWrite(state)
        else:
            self._model.NullContextWrite(state)
        return state

    def score(self, state: Hashable, word_id: int) -> tuple[float, Hashable]:
        """(ln p(word | state), next state); memoised (states hash by their words)."""
        key = (state, word_id)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        out = self._kenlm.State()
        log10 = self._model.BaseScore(state, self._words[word_id] if word_id >= 0 else UNKNOWN, out)
        if len(self._cache) > 1 << 20:
            self._cache.clear()
        self._cache[key] = result = (float(log10) * LN10, out)
        return result

    def end(self, state: Hashable) -> float:
        """ln p(</s> | state) with `score_boundary`, else 0."""
        if not self.score_boundary:
            return 0.0
        return float(self._model.BaseScore(state, EOS, self._kenlm.State())) * LN10

    def unigram(self, word_id: int) -> float:
        """ln p(word) in the null context."""
        null = self._kenlm.State()
        self._model.NullContextWrite(null)
        word = self._words[word_id] if word_id >= 0 else UNKNOWN
        return float(self._model.BaseScore(null, word, self._kenlm.State())) * LN10


def kenlm_available() -> bool:
    """True when the kenlm module imports."""
    try:
        import kenlm  # noqa: F401
    except ImportError:
        return False
    return True


def load_word_lm(path: Path, *, score_boundary: bool = True, use_kenlm: bool | None = None) -> WordLM:
    """The n-gram model in `path`: through kenlm where it imports (`use_kenlm` None) or when asked, else
    ARPA text in pure Python."""
    if use_kenlm or (use_kenlm is None and kenlm_available()):
        try:
            return KenLM(path, score_boundary=score_boundary)
        except (OSError, RuntimeError) as exc:
            raise ConfigError(f"{path}: kenlm cannot load it: {exc}") from exc
    if path.suffix != ".arpa":
        raise ConfigError(
            f"{path} is a KenLM binary, which needs the kenlm module: pip install 'streamer[lm]' "
            "(builds kenlm from source: needs a C++ compiler), or convert the model to ARPA text"
        )
    try:
        with path.open(encoding="utf-8") as f:
            return ArpaLM.from_lines(f, score_boundary=score_boundary)
    except (OSError, UnicodeDecodeError, ArpaError) as exc:
        raise ConfigError(f"{path}: not a readable ARPA model: {exc}") from exc


def find_language_model(spec: str) -> Path | None:
    """The `language_model/` folder of checkpoint `spec` (a folder, or a hub id: fetched with the model's
    files where the hub is reachable, from the local cache with HF_HUB_OFFLINE=1), or None."""
    path = Path(spec).expanduser()
    if path.exists():
        folder = path / FOLDER
        return folder if folder.is_dir() else None
    from streamer.engine.transformers_ctc import _looks_like_path, hub_offline

    if _looks_like_path(spec):
        return None
    try:
        from huggingface_hub import snapshot_download

        root = snapshot_download(spec, allow_patterns=[f"{FOLDER}/*"], local_files_only=hub_offline())
    except Exception as exc:  # no network, unknown id, nothing cached: the model load reports those
        log.debug("%s: no language model fetched (%s)", spec, exc)
        return None
    folder = Path(root) / FOLDER
    return folder if folder.is_dir() else None


@dataclass(frozen=True)
class LMDecoderInfo:
    """What `lm_beam_decoder` built, for the start-up log."""

    lm_file: Path
    backend: str
    order: int
    words: int
    skipped: int
    not_in_lm: int
    options: BeamOptions

    def __str__(self) -> str:
        o = self.options
        return (
            f"beam search with {self.order}-gram LM {self.lm_file} ({self.backend}), {self.words} words "
            f"({self.skipped} with characters outside the vocabulary and {self.not_in_lm} unknown to the LM "
            f"left out), alpha {o.lm_weight:g} beta {o.word_bonus:g} beam {o.beam}"
        )


def lm_beam_decoder(
    engine: Engine, folder: Path, base: BeamOptions | None = None
) -> tuple[BeamDecoder, LMDecoderInfo]:
    """The beam decoder of `folder` (a `language_model/`) for a character-vocabulary `engine`."""
    return build_lm_decoder(
        folder,
        vocabulary=list(engine.vocabulary),
        blank_id=engine.blank_id,
        delimiter_id=engine.word_delimiter_id,
        spell=engine.spell,
        base=base,
    )


def build_lm_decoder(
    folder: Path,
    *,
    vocabulary: Sequence[str],
    blank_id: int,
    delimiter_id: int | None,
    spell: Speller,
    base: BeamOptions | None = None,
    use_kenlm: bool | None = None,
) -> tuple[BeamDecoder, LMDecoderInfo]:
    """`lm_beam_decoder` for a vocabulary without an engine (benchmarks); `spell` as `Engine.spell`."""
    attrs = read_attrs(folder / "attrs.json") if (folder / "attrs.json").is_file() else LMAttrs()
    path = lm_file(folder)
    lm = load_word_lm(path, score_boundary=attrs.score_boundary, use_kenlm=use_kenlm)
    words = read_unigrams(folder / "unigrams.txt")
    if not words:
        if not isinstance(lm, ArpaLM):
            raise ConfigError(f"{folder}: unigrams.txt is missing or empty, and {path.name} lists no words")
        words = [w for w in lm.words if w not in (BOS, EOS, UNKNOWN)]
    delimiter = delimiter_id
    # Tokens that spell as nothing (blank, delimiter, <s>, <unk>...) are never part of a word.
    silent = {i for i, text in enumerate(spell([[i] for i in range(len(vocabulary))])) if not text}
    skip = silent | {blank_id} | ({delimiter} if delimiter is not None else set())
    known: list[tuple[str, float]] = []
    for w in words:
        wid = lm.word_id(w)
        if wid >= 0:
            known.append((w, lm.unigram(wid) / LN10))
    lexicon = char_lexicon(vocabulary, known, skip=skip, spell=spell)
    options = attrs.beam_options(base or BeamOptions(), delimited=delimiter is not None)
    decoder = BeamDecoder(
        lexicon,
        blank_id=blank_id,
        delimiter_id=delimiter,
        options=options,
        ignore=frozenset(skip - {blank_id} - ({delimiter} if delimiter is not None else set())),
        lm=lm,
    )
    info = LMDecoderInfo(
        path,
        "kenlm" if isinstance(lm, KenLM) else "ARPA, pure Python",
        lm.order,
        len(lexicon),
        lexicon.skipped,
        len(words) - len(known),
        options,
    )
    if not len(lexicon):
        raise ConfigError(
            f"{folder}: none of the {len(words)} words can be spelled in the model's vocabulary"
        )
    return decoder, info
