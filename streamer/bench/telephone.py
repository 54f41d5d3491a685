"""Real 8 kHz telephone speech: Debian's Asterisk prompts as an evaluation set.

`python -m streamer.bench telephone --out DIR [--limit N]` writes `DIR/MANIFEST.tsv` listing the prompts
of `asterisk-core-sounds-en-wav` (8 kHz 16-bit, CC-BY-SA-3.0) with their transcripts from
`asterisk-core-sounds-en` (`core-sounds-en.txt.gz`), normalised like the shared set (lower case, numbers
spelled out; punctuation is removed when scoring). The audio stays where the package put it: the
manifest names it by absolute path, so nothing is copied. Then:

    python -m streamer.bench accuracy --data DIR --telephone

Install the packages with `apt-get install asterisk-core-sounds-en-wav asterisk-core-sounds-en`.
`telephone_prompts()` gives the same list to tests (None when the packages are missing).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
INSTALL_HINT = "apt-get install asterisk-core-sounds-en-wav asterisk-core-sounds-en"

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
]
_ONES += ["sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_NUMBER = re.compile(r"\d+")


@dataclass(frozen=True)
class Prompt:
    name: str
    path: Path
    transcript: str
    seconds: float


def spell_number(n: int) -> str:
    """An integer below a million in words ("one hundred twenty three")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + spell_number(rest))
    if n < 1_000_000:
        rest = n % 1000
        return spell_number(n // 1000) + " thousand" + ("" if rest == 0 else " " + spell_number(rest))
    raise ValueError(f"{n} is too large")


def normalise_prompt(text: str) -> str:
    """The prompt text as the shared set writes references: lower case, numbers spelled out."""
    text = _NUMBER.sub(lambda m: f" {spell_number(int(m.group()))} " if len(m.group()) < 7 else " ", text)
    return re.sub(r"\s+", " ", text).strip().lower()


def telephone_prompts(
    sounds: Path = SOUNDS, transcripts: Path = TRANSCRIPTS, min_words: int = 1
) -> list[Prompt] | None:
    """Every prompt with speech, a transcript and a WAV file, sorted by name; None without the packages."""
    if not sounds.is_dir() or not transcripts.is_file():
        return None
    prompts: list[Prompt] = []
    with gzip.open(transcripts, "rt", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            name, sep, text = line.partition(":")
            if not sep or line.startswith(";") or "[" in text or not text.strip():
                continue  # comments, tones and other non-speech, empty lines
            path = sounds / f"{name.strip()}.wav"
            transcript = normalise_prompt(text)
            if not path.is_file() or len(transcript.split()) < min_words:
                continue
            prompts.append(Prompt(name.strip(), path, transcript, sf.info(str(path)).duration))
    return sorted(prompts, key=lambda p: p.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamer.bench telephone", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder for MANIFEST.tsv (created)")
    parser.add_argument("--sounds", type=Path, default=SOUNDS, help="folder of the prompt WAV files")
    parser.add_argument("--transcripts", type=Path, default=TRANSCRIPTS, help="core-sounds-en.txt.gz")
    parser.add_argument("--limit", type=int, default=0, help="only the first N prompts (0: all)")
    parser.add_argument("--min-words", type=int, default=1, help="skip prompts with fewer words")
    args = parser.parse_args(argv)
    prompts = telephone_prompts(args.sounds, args.transcripts, args.min_words)
    if prompts is None:
        print(f"error: Asterisk prompts not found; install them: {INSTALL_HINT}", file=sys.stderr)
        return 2
    if args.limit:
        prompts = prompts[: args.limit]
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "MANIFEST.tsv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(["file", "duration_s", "language", "transcript", "source", "license", "note"])
        for p in prompts:
            writer.writerow(
                [
                    p.path,
                    f"{p.seconds:.2f}",
                    "en",
                    p.transcript,
                    "Debian asterisk-core-sounds-en-wav",
                    "CC-BY-SA-3.0",
                    p.name,
                ]
            )
    total = sum(p.seconds for p in prompts)
    print(f"telephone: prompts={len(prompts)} seconds={total:.1f} manifest={args.out / 'MANIFEST.tsv'}")
    return 0
