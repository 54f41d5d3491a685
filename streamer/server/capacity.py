"""Stream slots (streams running now, in all and per API key with its own limit) and, across worker
processes, each worker's engine load.

`LocalCapacity()` counts in this process: one server process, the default. With `--workers N` every
process maps one table in a file instead (`SharedCapacity.create(path, workers, keys, models)` in the
supervisor, `SharedCapacity(path, row, keys, models)` in worker `row`), so `--max-streams` and per-key
limits hold for the whole server:

    refused = capacity.take(key, max_streams, key_limit)   # None, or "streams" / "key": nothing taken
    capacity.give(key)                                      # at the stream's end

A worker checks and takes a slot under an exclusive `flock` of the table and writes only its own row;
the kernel drops the lock of a process that dies holding it, and the supervisor clears the row of a
worker that died (`clear(row)`), which frees every slot it held. Taking a slot is a few microseconds and
never awaits, so a handshake still checks and registers a stream with no await in between.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
from collections.abc import Iterator, Sequence
from typing import Literal, Protocol

import numpy as np

Refusal = Literal["streams", "key"]
"""Why `take` refused: the server's stream limit, or the API key's own."""

_PID, _ACTIVE, _KEYS = 0, 1, 2
"""Columns of a worker's row in the counts table: its pid (0: no worker), its streams, then per key."""


class Capacity(Protocol):
    """What `ServerState` counts streams with (see the module docstring)."""

    shared: bool

    def total(self) -> int:
        """Streams running on the whole server."""
        ...

    def own(self) -> int:
        """Streams running in this process."""
        ...

    def of_key(self, key: str) -> int:
        """Streams running under `key` (a key with its own limit) on the whole server."""
        ...

    def key_counts(self) -> dict[str, int]:
        """Streams per limited key, only the keys that have some."""
        ...

    def take(self, key: str | None, max_streams: int, key_limit: int | None) -> Refusal | None:
        """Take a slot (and one of `key`'s when it is not None), or say which limit is reached."""
        ...

    def give(self, key: str | None) -> None:
        """Free a slot that `take` gave (with the same `key`)."""
        ...

    def publish_load(self, model: str, busy_fraction: float, queue_wait_s: float) -> None:
        """Tell the other workers this worker's engine load (nothing to do in one process)."""
        ...

    def pooled_load(self, model: str) -> tuple[float, float] | None:
        """Mean (busy fraction, queue wait) of `model` over the running workers; None in one process."""
        ...


class LocalCapacity:
    """Slots of a server that is one process (see `Capacity`)."""

    shared = False

    def __init__(self) -> None:
        self._active = 0
        self._keys: dict[str, int] = {}

    def total(self) -> int:
        return self._active

    def own(self) -> int:
        return self._active

    def of_key(self, key: str) -> int:
        return self._keys.get(key, 0)

    def key_counts(self) -> dict[str, int]:
        return dict(self._keys)

    def take(self, key: str | None, max_streams: int, key_limit: int | None) -> Refusal | None:
        if self._active >= max_streams:
            return "streams"
        if key is not None and key_limit is not None and self._keys.get(key, 0) >= key_limit:
            return "key"
        self._active += 1
        if key is not None:
            self._keys[key] = self._keys.get(key, 0) + 1
        return None

    def give(self, key: str | None) -> None:
        self._active -= 1
        if key is not None and key in self._keys:
            self._keys[key] -= 1
            if not self._keys[key]:
                del self._keys[key]

    def publish_load(self, model: str, busy_fraction: float, queue_wait_s: float) -> None:
        return None

    def pooled_load(self, model: str) -> tuple[float, float] | None:
        return None


class SharedCapacity:
    """The table that worker processes share (see the module docstring).

    `row` is this process's worker row (0-based), or None in the supervisor, which only reads the table
    and clears rows. `keys` are the API keys with their own limit and `models` the served model names,
    in the same order in every process (they come from the same config); neither is written to the file.
    """

    shared = True

    def __init__(self, path: str, row: int | None, keys: Sequence[str], models: Sequence[str]) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR)
        size = os.fstat(self._fd).st_size
        self._map = mmap.mmap(self._fd, size)
        self.workers = size // _row_bytes(len(keys), len(models))
        self._keys = {key: i for i, key in enumerate(keys)}
        self._models = {name: i for i, name in enumerate(models)}
        columns = _KEYS + len(keys)
        self._counts = np.ndarray((self.workers, columns), np.int64, self._map)
        self._loads = np.ndarray(
            (self.workers, len(models), 2), np.float64, self._map, offset=self._counts.nbytes
        )
        self.row = row

    @classmethod
    def create(cls, path: str, workers: int, keys: Sequence[str], models: Sequence[str]) -> SharedCapacity:
        """Make the table file (zeros: no worker, no stream) and open it as the supervisor."""
        with open(path, "wb") as fh:
            fh.truncate(workers * _row_bytes(len(keys), len(models)))
        return cls(path, None, keys, models)

    def close(self) -> None:
        # The arrays are views of the map: drop them first, or closing the map raises BufferError.
        del self._counts, self._loads
        self._map.close()
        os.close(self._fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # flock, not a multiprocessing lock: the kernel releases it when its holder dies (SIGKILL mid-take).
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _own_row(self) -> int:
        if self.row is None:
            raise RuntimeError("the supervisor's view of the table has no row of its own")
        return self.row

    # ---- a worker ----

    def join(self, pid: int) -> None:
        """Start this worker's row afresh (no streams) and mark it running."""
        row = self._own_row()
        with self._locked():
            self._counts[row] = 0
            self._loads[row] = 0.0
            self._counts[row, _PID] = pid

    def total(self) -> int:
        return int(self._counts[:, _ACTIVE].sum())

    def own(self) -> int:
        return int(self._counts[self._own_row(), _ACTIVE])

    def of_key(self, key: str) -> int:
        index = self._keys.get(key)
        return 0 if index is None else int(self._counts[:, _KEYS + index].sum())

    def key_counts(self) -> dict[str, int]:
        counts = {key: int(self._counts[:, _KEYS + i].sum()) for key, i in self._keys.items()}
        return {key: n for key, n in counts.items() if n}

    def take(self, key: str | None, max_streams: int, key_limit: int | None) -> Refusal | None:
        row = self._own_row()
        column = None if key is None else self._keys.get(key)
        with self._locked():
            if self._counts[:, _ACTIVE].sum() >= max_streams:
                return "streams"
            if column is not None:
                if key_limit is not None and self._counts[:, _KEYS + column].sum() >= key_limit:
                    return "key"
                self._counts[row, _KEYS + column] += 1
            self._counts[row, _ACTIVE] += 1
        return None

    def give(self, key: str | None) -> None:
        row = self._own_row()
        column = None if key is None else self._keys.get(key)
        with self._locked():
            if self._counts[row, _ACTIVE] > 0:
                self._counts[row, _ACTIVE] -= 1
            if column is not None and self._counts[row, _KEYS + column] > 0:
                self._counts[row, _KEYS + column] -= 1

    def publish_load(self, model: str, busy_fraction: float, queue_wait_s: float) -> None:
        # Only this worker writes its row's loads, and an aligned float64 is read whole: no lock needed.
        self._loads[self._own_row(), self._models[model]] = (busy_fraction, queue_wait_s)

    def pooled_load(self, model: str) -> tuple[float, float] | None:
        running = self._counts[:, _PID] != 0
        if not running.any():
            return None
        loads = self._loads[running, self._models[model]]
        return float(loads[:, 0].mean()), float(loads[:, 1].mean())

    # ---- the supervisor ----

    def active_per_worker(self) -> list[int]:
        """Streams of each worker row now."""
        return [int(n) for n in self._counts[:, _ACTIVE]]

    def clear(self, row: int) -> None:
        """Forget worker `row` (it exited): its slots are free, its load no longer counts."""
        with self._locked():
            self._counts[row] = 0
            self._loads[row] = 0.0


def _row_bytes(keys: int, models: int) -> int:
    return 8 * (_KEYS + keys) + 8 * 2 * models
