"""How busy one model's inference lanes have been recently: the measure behind admission control.

The batcher reports each batch: `token = tracker.begin(waited_s)` when it starts on an inference thread
(with how long its oldest window waited in the queue) and `tracker.end(token)` when it is done (or failed).
An engine with `concurrency` N runs up to N batches at once, so the tracker has N lanes. The server asks
`tracker.busy_fraction()` (share of the last `window_s` seconds the lanes were busy, running batches
included) and `tracker.queue_wait()` (mean queue wait of the batches started in that window) and refuses new
streams when either is over its limit (`Limits.max_busy_fraction`, `Limits.max_queue_wait_s`).

Why these two: a busy fraction near 1 means the engine has no spare time, so one more stream can only make
every stream fall behind real time; queue wait catches the same thing sooner when batches are long, and
also catches an engine that is slow on every call. All times are `time.perf_counter()` seconds; `now` is a
parameter so tests can drive the clock.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass

from streamer.errors import ConfigError


@dataclass(frozen=True)
class LoadSnapshot:
    """One reading: busy fraction in [0, 1], mean queue wait in seconds, over `window_s`."""

    busy_fraction: float
    queue_wait_s: float
    window_s: float


class LoadTracker:
    """Sliding-window record of the busy intervals and queue waits of one model's `lanes` inference
    threads (event-loop only)."""

    def __init__(self, window_s: float = 10.0, lanes: int = 1) -> None:
        if not window_s > 0:
            raise ConfigError(f"load window must be > 0 s, got {window_s}")
        if lanes < 1:
            raise ConfigError(f"load lanes must be >= 1, got {lanes}")
        self.window_s = window_s
        self.lanes = lanes
        self._busy: deque[tuple[float, float]] = deque()  # finished (start, end) intervals
        self._waits: deque[tuple[float, float]] = deque()  # (batch start, its oldest window's wait)
        self._running: dict[int, float] = {}  # token -> start of a batch still running
        self._tokens = itertools.count()

    def begin(self, waited_s: float, now: float | None = None) -> int:
        """A batch starts now; its oldest window waited `waited_s` in the queue. Returns the token for
        `end`."""
        now = time.perf_counter() if now is None else now
        token = next(self._tokens)
        self._running[token] = now
        self._waits.append((now, max(0.0, waited_s)))
        self._prune(now)
        return token

    def end(self, token: int, now: float | None = None) -> None:
        """The batch `begin` returned `token` for finished (successfully or not)."""
        now = time.perf_counter() if now is None else now
        started = self._running.pop(token, None)
        if started is not None:
            self._busy.append((started, now))
        self._prune(now)

    def busy_fraction(self, now: float | None = None) -> float:
        """Share of the lanes' time in the last `window_s` seconds spent inside batches, the running
        ones included."""
        now = time.perf_counter() if now is None else now
        self._prune(now)
        start = now - self.window_s
        busy = sum(min(end, now) - max(begin, start) for begin, end in self._busy if end > start)
        busy += sum(now - max(begin, start) for begin in self._running.values())
        return min(1.0, max(0.0, busy / (self.window_s * self.lanes)))

    def queue_wait(self, now: float | None = None) -> float:
        """Mean queue wait of the batches that started in the last `window_s` seconds (0 when none)."""
        now = time.perf_counter() if now is None else now
        self._prune(now)
        if not self._waits:
            return 0.0
        return sum(wait for _, wait in self._waits) / len(self._waits)

    def snapshot(self, now: float | None = None) -> LoadSnapshot:
        now = time.perf_counter() if now is None else now
        return LoadSnapshot(self.busy_fraction(now), self.queue_wait(now), self.window_s)

    def _prune(self, now: float) -> None:
        start = now - self.window_s
        while self._busy and self._busy[0][1] <= start:
            self._busy.popleft()
        while self._waits and self._waits[0][0] < start:
            self._waits.popleft()
