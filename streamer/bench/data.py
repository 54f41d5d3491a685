"""Evaluation data: a folder with MANIFEST.tsv (file, language, transcript, ...) and the audio beside it."""

from __future__ import annotations

import csv
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import jiwer
import numpy as np

from streamer.ctc import FloatArray
from streamer.errors import ConfigError
from streamer.transcribe import read_audio


@dataclass(frozen=True)
class Clip:
    name: str
    path: Path
    language: str
    transcript: str

    def audio(self) -> FloatArray:
        return read_audio(self.path)


def load_manifest(folder: Path, language: str | None = None) -> list[Clip]:
    """Clips of `language` (all when None) listed in `folder/MANIFEST.tsv`."""
    manifest = folder / "MANIFEST.tsv"
    if not manifest.is_file():
        raise ConfigError(f"{manifest} not found: --data must name a folder with a MANIFEST.tsv")
    with open(manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    missing = {"file", "language", "transcript"} - set(rows[0] if rows else {})
    if missing:
        raise ConfigError(f"{manifest} lacks the columns {sorted(missing)}")
    return [
        Clip(Path(r["file"]).stem, folder / r["file"], r["language"], r["transcript"])
        for r in rows
        if language is None or r["language"] == language
    ]


_PUNCT = re.compile(r"[^\w\s']|_")
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """The one text normaliser for WER: NFKC, lower case, Hebrew vowel marks and punctuation removed
    (apostrophes inside words kept: "don't"), whitespace collapsed."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).lower())
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = _PUNCT.sub(" ", text).replace(" '", " ").replace("' ", " ")
    return _SPACE.sub(" ", text).strip(" '")


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus word error rate over normalised texts (0 when there are no reference words)."""
    refs = [normalise(r) for r in references]
    hyps = [normalise(h) for h in hypotheses]
    pairs = [(r, h) for r, h in zip(refs, hyps, strict=True) if r]
    if not pairs:
        return 0.0
    return float(jiwer.wer([r for r, _ in pairs], [h if h else "<empty>" for _, h in pairs]))


def join_with_pauses(
    clips: list[FloatArray],
    *,
    seed: int = 0,
    min_s: float = 0.3,
    max_s: float = 2.0,
    noise: float = 0.002,
    rate: int = 16000,
) -> FloatArray:
    """One long stream: the clips with 0.3-2 s pauses of silence or low noise between them (and around)."""
    rng = np.random.default_rng(seed)
    parts: list[FloatArray] = []
    for clip in clips:
        n = int(rng.uniform(min_s, max_s) * rate)
        pause = (noise * rng.standard_normal(n)) if rng.random() < 0.5 else np.zeros(n)
        parts += [pause.astype(np.float32), clip]
    parts.append(np.zeros(rate, np.float32))
    return np.concatenate(parts).astype(np.float32)
