"""Live terminal output: a status line redrawn in place (partial caption, progress bar) above which
committed lines (finals, JSON, warnings) scroll.

When stdout and stderr are both terminals they are taken to be the same screen, and partial text and
progress share one status line; otherwise each stream keeps its own and nothing clobbers anything.
"""

from __future__ import annotations

import shutil
import sys
import time
import unicodedata
from collections.abc import Callable
from typing import TextIO

CLEAR_LINE = "\r\x1b[K"
ELLIPSIS = "…"


def cell_width(text: str) -> int:
    """Terminal columns `text` takes: wide (CJK, Hangul) characters take two, combining marks none."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def fit_tail(text: str, width: int, ellipsis: str = ELLIPSIS) -> str:
    """The end of `text` that fits in `width` columns, with a leading ellipsis when cut.

    Captions keep the tail because the newest words are the ones being read.
    """
    if width <= 0:
        return ""
    if cell_width(text) <= width:
        return text
    kept: list[str] = []
    used = cell_width(ellipsis)
    for ch in reversed(text):
        w = cell_width(ch)
        if used + w > width:
            break
        kept.append(ch)
        used += w
    return ellipsis + "".join(reversed(kept))


def fit_head(text: str, width: int) -> str:
    """The start of `text` that fits in `width` columns (for the progress bar, whose start matters)."""
    out: list[str] = []
    used = 0
    for ch in text:
        w = cell_width(ch)
        if used + w > width:
            break
        out.append(ch)
        used += w
    return "".join(out)


def progress_text(sent_s: float, total_s: float | None, bar_width: int = 20) -> str:
    """`[#########-----------]  45%   3.1/6.9 s`, or `3.1 s sent` when the total is unknown."""
    if not total_s or total_s <= 0:
        return f"{sent_s:.1f} s sent"
    fraction = min(max(sent_s / total_s, 0.0), 1.0)
    filled = round(fraction * bar_width)
    bar = "#" * filled + "-" * (bar_width - filled)
    return f"[{bar}] {fraction * 100:3.0f}% {min(sent_s, total_s):5.1f}/{total_s:.1f} s"


def can_encode(stream: TextIO, text: str) -> bool:
    """Whether `stream` can print `text` (a legacy console code page may lack "…")."""
    try:
        text.encode(getattr(stream, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def terminal_columns() -> int:
    return shutil.get_terminal_size((80, 24)).columns


class StatusLine:
    """One line of `stream` that is redrawn in place; `commit` prints a line above it and redraws it."""

    def __init__(self, stream: TextIO, *, live: bool, width: Callable[[], int] = terminal_columns) -> None:
        self.stream = stream
        self.live = live
        self._width = width
        self._shown = False

    def draw(self, text: str) -> None:
        """Replace the line with `text`; the caller has already fitted it to `columns()`."""
        if not self.live:
            return
        if not text and not self._shown:
            return
        self.stream.write(CLEAR_LINE + text)
        self.stream.flush()
        self._shown = bool(text)

    def columns(self) -> int:
        # One column short of the width: writing the last column makes some terminals wrap.
        return max(self._width() - 1, 1)

    def clear(self) -> None:
        if self._shown:
            self.stream.write(CLEAR_LINE)
            self.stream.flush()
            self._shown = False

    def commit(self, line: str, target: TextIO | None = None, redraw: str = "") -> None:
        """Write `line` and a newline to `target` (default this stream) above the status, then redraw."""
        target = target or self.stream
        self.clear()
        target.write(line + "\n")
        target.flush()
        if redraw:
            self.draw(redraw)


class Console:
    """Everything the client prints: captions and JSON on `out`, progress and warnings on `err`.

    `partials`: redraw interim text in place (needs a terminal on `out`). `progress`: show the progress bar
    on `err`. The tty flags default to the streams' `isatty()`; tests pass them explicitly.
    """

    def __init__(
        self,
        out: TextIO | None = None,
        err: TextIO | None = None,
        *,
        partials: bool = True,
        progress: bool | None = None,
        out_tty: bool | None = None,
        err_tty: bool | None = None,
        width: Callable[[], int] = terminal_columns,
        clock: Callable[[], float] = time.monotonic,
        progress_interval: float = 0.1,
    ) -> None:
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.out_tty = self.out.isatty() if out_tty is None else out_tty
        self.err_tty = self.err.isatty() if err_tty is None else err_tty
        self.show_partials = partials and self.out_tty
        self.show_progress = self.err_tty if progress is None else progress
        self._out_line = StatusLine(self.out, live=self.out_tty, width=width)
        if self.out_tty and self.err_tty:
            self._err_line = self._out_line
        else:
            self._err_line = StatusLine(self.err, live=self.show_progress, width=width)
        self._partial = ""
        self._progress = ""
        self._ellipsis = ELLIPSIS if can_encode(self.out, ELLIPSIS) else "..."
        self._clock = clock
        self._interval = progress_interval
        self._last_progress = -float("inf")

    @property
    def shared(self) -> bool:
        return self._err_line is self._out_line

    def _status(self, line: StatusLine) -> str:
        """Composed text for one status line, fitted to its width."""
        columns = line.columns()
        progress = self._progress if line is self._err_line else ""
        partial = self._partial if line is self._out_line else ""
        if progress and partial:
            head = fit_head(progress, columns)
            return head + "  " + fit_tail(partial, columns - cell_width(head) - 2, self._ellipsis)
        if progress:
            return fit_head(progress, columns)
        return fit_tail(partial, columns, self._ellipsis)

    def _redraw(self) -> None:
        self._out_line.draw(self._status(self._out_line))
        if not self.shared:
            self._err_line.draw(self._status(self._err_line))

    def partial(self, text: str) -> None:
        """Show interim text in place of the previous one (nothing when partials are off)."""
        if not self.show_partials or text == self._partial:
            return
        self._partial = text
        self._out_line.draw(self._status(self._out_line))

    def final(self, text: str) -> None:
        """Commit a final caption: the partial line is replaced by `text` and a newline."""
        self._partial = ""
        self._out_line.commit(text, redraw=self._status(self._out_line))

    def line(self, text: str) -> None:
        """A plain line on stdout (JSON messages, the transcript) that keeps the status line intact."""
        self._out_line.commit(text, redraw=self._status(self._out_line))

    def warn(self, text: str) -> None:
        """A line on stderr, written above whatever status line shares the screen."""
        self._err_line.commit(text, target=self.err, redraw=self._status(self._err_line))

    def progress(self, sent_s: float, total_s: float | None, *, force: bool = False) -> None:
        """Update the progress bar, at most every `progress_interval` seconds unless `force`."""
        if not self.show_progress:
            return
        now = self._clock()
        if not force and now - self._last_progress < self._interval:
            return
        self._last_progress = now
        self._progress = progress_text(sent_s, total_s)
        self._err_line.draw(self._status(self._err_line))

    def finish(self) -> None:
        """Remove the status lines (before the final transcript or an error message)."""
        self._partial = ""
        self._progress = ""
        self._out_line.clear()
        self._err_line.clear()
