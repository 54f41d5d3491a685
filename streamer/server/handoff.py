"""Accepted connections from the supervisor to a worker: which worker, and how the socket travels.

    spreader = Spreader(workers=2)
    index = spreader.choose(streams=[3, 1], serving=[True, True])   # -> 1, the least loaded
    send_connection(handoff_sock, conn, HTTP)       # supervisor: SCM_RIGHTS over a Unix socket pair
    for kind, conn in receive_connections(handoff_sock): ...   # worker: adopt each socket

Why the supervisor accepts instead of SO_REUSEPORT (every worker listening on the port, the kernel
hashing each connection to one): streams are long and few per worker, and a hash spreads them only as
evenly as coin flips (`python -m streamer.bench spread` measures both), while the stream count of each
worker is known exactly (`SharedCapacity.active_per_worker`). A handed connection costs the supervisor
an accept and a sendmsg, once per connection; a worker that dies loses only its own connections, never
the listening socket's backlog.
"""

from __future__ import annotations

import socket
import time
from collections import deque
from collections.abc import Callable, Sequence

HTTP = "h"
"""A connection to the HTTP/WebSocket port."""
AUDIOSOCKET = "a"
"""A connection to the AudioSocket port."""
RECENT_S = 2.0
"""How long a handed connection counts as its worker's load before the stream table shows it."""


class Spreader:
    """Picks the worker for each new connection: the fewest streams, counting the connections handed to
    it in the last RECENT_S (a burst of handshakes would otherwise all see the same counts and go to one
    worker), the next in turn among equals."""

    def __init__(self, workers: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._recent: list[deque[float]] = [deque() for _ in range(workers)]
        self._turn = 0

    def choose(self, streams: Sequence[int], serving: Sequence[bool]) -> int | None:
        """The worker for the next connection (and count it), or None when no worker is serving."""
        now = self._clock()
        best: int | None = None
        best_load = 0
        count = len(self._recent)
        for step in range(count):
            index = (self._turn + step) % count
            recent = self._recent[index]
            while recent and recent[0] <= now - RECENT_S:
                recent.popleft()
            if not serving[index]:
                continue
            load = streams[index] + len(recent)
            if best is None or load < best_load:
                best, best_load = index, load
        if best is not None:
            self._recent[best].append(now)
            self._turn = (best + 1) % count
        return best

    def forget(self, index: int) -> None:
        """Worker `index` exited: the connections handed to it are gone."""
        self._recent[index].clear()


def handoff_pair() -> tuple[socket.socket, socket.socket]:
    """(supervisor end, worker end): a Unix seqpacket pair, one message per connection, and an end of
    file when the other side exits."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send_connection(channel: socket.socket, conn: socket.socket, kind: str) -> None:
    """Pass `conn` to the worker at the other end of `channel` (the caller then closes its copy).
    Raises OSError (BlockingIOError when the worker is not reading) and the caller picks another."""
    socket.send_fds(channel, [kind.encode()], [conn.fileno()])


def receive_connections(channel: socket.socket) -> list[tuple[str, socket.socket]]:
    """Every connection waiting on a non-blocking `channel`, as (kind, socket); [] when none. Raises
    EOFError once the supervisor has closed its end and nothing is left."""
    out: list[tuple[str, socket.socket]] = []
    while True:
        try:
            kind, fds, _flags, _addr = socket.recv_fds(channel, 16, 1)
        except BlockingIOError:
            return out
        if not kind and not fds:
            if out:
                return out
            raise EOFError("the supervisor closed the hand-off channel")
        for fd in fds:
            conn = socket.socket(fileno=fd)
            conn.setblocking(False)
            out.append((kind.decode(errors="replace"), conn))
