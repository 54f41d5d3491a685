"""Watching streams live: the hub that fans delivered messages out to watchers (`watch_endpoint.py`).

A watcher gets what the stream's own client gets in Deepgram's format (`Results`, `SpeechStarted`,
`UtteranceEnd`, the closing `Metadata`), each with a `"stream"` field (id, dialect, tag, call id) so
several streams under one tag can be told apart, starting with the last few finals of what it watches.
Authentication is that of `/v1/listen`. Each watcher has a bounded queue: a slow one loses interims
first and is disconnected (1008) when finals alone pile up, so it never holds a stream up. A watcher
never sends audio (a binary frame closes it with 1008); shutdown closes watchers with 1012 after the
streams' last finals.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Literal

from streamer.errors import OverloadError
from streamer.metrics import Metrics
from streamer.server.outbox import Outbox, Outgoing

MAX_HISTORY_KEYS = 1024
"""Tags and streams whose last finals are remembered (least recently used forgotten first)."""


ANY_OWNER = "*"
"""The namespace every stream also publishes into, which only keys with `watch=all` may watch."""


def owner_of(key: str | None) -> str:
    """A stream's or watcher's namespace: a digest of its API key ("-" without one: auth off, or a phone
    platform that signs instead). Tags are names within a namespace, so one key's holder cannot follow
    another key's streams by guessing their tags."""
    return "-" if key is None else hashlib.sha256(key.encode()).hexdigest()[:16]


def tag_key(tag: str, owner: str) -> str:
    return f"tag:{owner}:{tag}"


def stream_key(stream_id: str, owner: str) -> str:
    return f"stream:{owner}:{stream_id}"


def watch_keys(owner: str, tag: str | None, stream_ids: Sequence[str]) -> list[str]:
    """Where a stream publishes: its owner's namespace and the watch-all one, by id and by tag."""
    keys = []
    for namespace in (owner, ANY_OWNER):
        keys += [stream_key(i, namespace) for i in stream_ids]
        if tag:
            keys.append(tag_key(tag, namespace))
    return keys


class Watcher:
    """One watch connection's queue; `closing` says why the hub gave up on it (None: still fine)."""

    def __init__(self, key: str, limit: int) -> None:
        self.key = key
        self.outbox = Outbox(limit)
        self.closing: tuple[int, str] | None = None


class WatchHub:
    """Watchers by tag or stream key, and the last finals of each key (see the module docstring)."""

    def __init__(self, history: int, queue: int, max_watchers: int, metrics: Metrics) -> None:
        self.history_size = history
        self.queue = queue
        self.max_watchers = max_watchers
        self.metrics = metrics
        self._watchers: dict[str, set[Watcher]] = {}
        self._history: OrderedDict[str, deque[tuple[str, int]]] = OrderedDict()
        self.count = 0
        self.closed = False

    def watched(self, keys: Sequence[str]) -> bool:
        """Whether anyone watches one of `keys` now (interims are encoded only then)."""
        return any(key in self._watchers for key in keys)

    def subscribe(self, key: str) -> Watcher:
        """A new watcher of `key`, its queue primed with the key's last finals; OverloadError when full."""
        if self.closed:
            raise OverloadError("the server is shutting down")
        if self.count >= self.max_watchers:
            raise OverloadError(f"all {self.max_watchers} watch connections are in use; retry later")
        watcher = Watcher(key, self.queue)
        for text, channel in self._history.get(key, ()):
            watcher.outbox.put_nowait(Outgoing(text, "final", channel=channel))
        self._watchers.setdefault(key, set()).add(watcher)
        self.count += 1
        self.metrics.watchers.inc()
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        group = self._watchers.get(watcher.key)
        if group is None or watcher not in group:
            return
        group.discard(watcher)
        if not group:
            del self._watchers[watcher.key]
        self.count -= 1
        self.metrics.watchers.dec()

    def publish(
        self, keys: Sequence[str], text: str, kind: Literal["partial", "final", "other"], channel: int = 0
    ) -> None:
        """Hand one delivered message to every watcher of `keys`; finals also go into their history."""
        for key in keys:
            if kind == "final" and self.history_size:
                self._remember(key, text, channel)
            for watcher in list(self._watchers.get(key, ())):
                self._put(watcher, Outgoing(text, kind, channel=channel))

    def _remember(self, key: str, text: str, channel: int) -> None:
        history = self._history.get(key)
        if history is None:
            history = self._history[key] = deque(maxlen=self.history_size)
            while len(self._history) > MAX_HISTORY_KEYS:
                self._history.popitem(last=False)
        else:
            self._history.move_to_end(key)
        history.append((text, channel))

    def _put(self, watcher: Watcher, item: Outgoing) -> None:
        if watcher.closing is not None:
            return
        watcher.outbox.put_nowait(item)
        if watcher.outbox.qsize() > 2 * self.queue:
            # Finals alone have piled up: this watcher does not read. Let it go rather than hold memory.
            watcher.closing = (1008, "watcher too slow: results not read")
            watcher.outbox.put_nowait(None)

    def close_all(self) -> None:
        """Shutdown: every watcher gets what is queued, then a 1012 close; no new watchers."""
        self.closed = True
        for group in list(self._watchers.values()):
            for watcher in group:
                if watcher.closing is None:
                    watcher.closing = (1012, "server shutting down")
                    watcher.outbox.put_nowait(None)
