"""Caption files (SRT and WebVTT) from the words of final results. Pure functions, no I/O but `write_*`.

`build_cues(words)` groups words into cues of at most `max_duration` seconds and `max_lines` lines of
`max_chars` characters, starting a new cue at a long pause; `to_srt(cues)` and `to_vtt(cues)` format them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from client.messages import Result, Word

MAX_DURATION_S = 7.0
MAX_CHARS = 42
MAX_LINES = 2
MAX_GAP_S = 1.5
MIN_DURATION_S = 0.5


@dataclass(frozen=True)
class Cue:
    """One caption: shown from `start` to `end` seconds, one string per line."""

    start: float
    end: float
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.lines)


def words_of(results: Iterable[Result]) -> list[Word]:
    """All words of the final results, in order.

    A result without word times (a server may omit them) has its transcript spread evenly over its span,
    so its text still reaches the caption file.
    """
    words: list[Word] = []
    for result in results:
        if result.words:
            words.extend(result.words)
            continue
        tokens = result.transcript.split()
        if not tokens:
            continue
        step = max(result.duration, 0.0) / len(tokens)
        for i, token in enumerate(tokens):
            words.append(Word(token, result.start + i * step, result.start + (i + 1) * step))
    return words


def wrap(words: Sequence[str], width: int = MAX_CHARS) -> list[str]:
    """Greedy line filling; a word longer than `width` gets a line of its own rather than being cut."""
    lines: list[str] = []
    current = ""
    for word in words:
        if not current:
            current = word
        elif len(current) + 1 + len(word) <= width:
            current += " " + word
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    return lines


def build_cues(
    words: Sequence[Word],
    *,
    max_duration: float = MAX_DURATION_S,
    max_chars: int = MAX_CHARS,
    max_lines: int = MAX_LINES,
    max_gap: float = MAX_GAP_S,
    min_duration: float = MIN_DURATION_S,
) -> list[Cue]:
    """Group words into cues; times never go backwards and a cue never overlaps the next one."""
    groups: list[list[Word]] = []
    current: list[Word] = []
    for word in words:
        if current:
            too_long = word.end - current[0].start > max_duration
            paused = word.start - current[-1].end > max_gap
            no_room = len(wrap([w.text for w in [*current, word]], max_chars)) > max_lines
            if too_long or paused or no_room:
                groups.append(current)
                current = []
        current.append(word)
    if current:
        groups.append(current)

    cues: list[Cue] = []
    for i, group in enumerate(groups):
        start = group[0].start
        if cues:
            # Out-of-order word times from a server must not make the file go backwards.
            start = max(start, cues[-1].end)
        end = max(group[-1].end, start + min_duration)
        if i + 1 < len(groups):
            # Short words get min_duration on screen, but never into the next cue.
            end = min(end, max(group[-1].end, groups[i + 1][0].start))
        end = max(end, start + 0.001)
        cues.append(Cue(start, end, tuple(wrap([w.text for w in group], max_chars))))
    return cues


def timestamp(seconds: float, separator: str = ",") -> str:
    """`HH:MM:SS,mmm` (SRT) or, with separator ".", `HH:MM:SS.mmm` (WebVTT)."""
    total_ms = max(0, round(seconds * 1000))
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def to_srt(cues: Sequence[Cue]) -> str:
    blocks = [
        f"{n}\n{timestamp(c.start)} --> {timestamp(c.end)}\n" + "\n".join(c.lines) + "\n"
        for n, c in enumerate(cues, 1)
    ]
    return "\n".join(blocks)


def to_vtt(cues: Sequence[Cue]) -> str:
    blocks = [
        f"{timestamp(c.start, '.')} --> {timestamp(c.end, '.')}\n" + "\n".join(c.lines) + "\n" for c in cues
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


def write_captions(results: Sequence[Result], *, srt: Path | None = None, vtt: Path | None = None) -> None:
    """Write the requested caption files (an empty transcript gives a valid empty file)."""
    cues = build_cues(words_of(results))
    if srt is not None:
        srt.write_text(to_srt(cues), encoding="utf-8")
    if vtt is not None:
        vtt.write_text(to_vtt(cues), encoding="utf-8")
