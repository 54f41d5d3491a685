"""A live stream's queue of outgoing messages: never blocks the producer, bounded for interim results."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Outgoing:
    text: str
    kind: Literal["partial", "final", "other"]
    origin: float | None = None
    channel: int = 0


class Outbox:
    """Messages waiting for one stream's sender: never blocks the producer, bounded for interim results.

    `put_nowait(item)`: when `limit` messages already wait, the oldest waiting interim result is dropped
    first (one that a later message of its channel supersedes, else the oldest), so a client that reads
    slowly gets fewer interims, never fewer finals: finals, Metadata and other messages are always kept,
    and if they alone pile up beyond the limit the receive loop stops reading audio (see `qsize`, `join`).
    Otherwise like `asyncio.Queue`: `await get()`, `task_done()`, `await join()`; None ends the sender.
    """

    def __init__(self, limit: int, on_drop: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self._items: deque[Outgoing | None] = deque()
        self._ready = asyncio.Event()
        self._unfinished = 0
        self._all_done = asyncio.Event()
        self._all_done.set()
        self.on_drop = on_drop
        self.dropped = 0
        """Interim results dropped for this stream."""

    def qsize(self) -> int:
        return len(self._items)

    def put_nowait(self, item: Outgoing | None) -> None:
        if len(self._items) >= self.limit:
            self._drop_one_interim()
        self._items.append(item)
        self._unfinished += 1
        self._all_done.clear()
        self._ready.set()

    def _drop_one_interim(self) -> None:
        victim: int | None = None
        later_channels: set[int] = set()
        # Newest to oldest: an interim with a newer result of its channel behind it is stale already;
        # `victim` ends on the oldest of them.
        for index in range(len(self._items) - 1, -1, -1):
            item = self._items[index]
            if item is None or item.kind == "other":
                continue
            if item.kind == "partial" and item.channel in later_channels:
                victim = index
            later_channels.add(item.channel)
        if victim is None:
            victim = next(
                (i for i, item in enumerate(self._items) if item is not None and item.kind == "partial"), None
            )
        if victim is None:
            return  # only finals and other messages: keep them all
        del self._items[victim]
        self._unfinished -= 1
        self.dropped += 1
        if self.on_drop is not None:
            self.on_drop()

    async def get(self) -> Outgoing | None:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def task_done(self) -> None:
        self._unfinished -= 1
        if self._unfinished <= 0:
            self._all_done.set()

    async def join(self) -> None:
        """Wait until every message put so far has been sent (or dropped)."""
        await self._all_done.wait()
