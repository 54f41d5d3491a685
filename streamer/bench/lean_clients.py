"""Many real-time WebSocket streams from one event loop at little CPU: the load generator's clients.

    runs = await run_lean_clients(uri, pcms, frame_ms=(20, 100), seeds=[...])

The load benchmark shares the machine with the server it measures, so every core-second its clients
spend is one the server cannot (on 2 cores, the websockets library's clients took about a fifth of
the CPU at capacity). These clients speak the same protocol at a fraction of the cost:
- one pacer task sends every stream's due frames (a heap of due times, one wake-up every few
  milliseconds for all of them) instead of one sleeping coroutine per stream;
- a frame is a header and a slice of the audio as it is (client frames must be masked: the key is
  zero, which leaves the payload unchanged, so no pass over the audio in Python masks it);
- received messages are kept as bytes with their arrival time and parsed into JSON after the run
  (the bookkeeping of `ClientRun.messages` does not need them earlier).
A client never waits to send (a phone line does not either): when the server stops reading, audio
waits in the client's buffer, and a frame's lag counts the audio waiting before it.
The frames (`load.frame_sizes`), their pacing and the messages recorded are those of `load.run_client`
(same seeds, same sizes); only plain `ws://` is spoken here (the load benchmark uses the websockets
client for `wss://`).
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import json
import os
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from streamer import SAMPLE_RATE
from streamer.bench.load import ClientRun, frame_sizes

TICK_S = 0.004
"""The pacer sends what is due, then sleeps at least this long: frames leave at most this late."""
CLOSE_STREAM = b'{"type": "CloseStream"}'
_MASK_ZERO = b"\x00\x00\x00\x00"


def client_frame_header(opcode: int, length: int) -> bytes:
    """The header of a final, masked client frame of `length` bytes with mask key zero (RFC 6455 5.2)."""
    if length < 126:
        return bytes((0x80 | opcode, 0x80 | length)) + _MASK_ZERO
    if length < 1 << 16:
        return bytes((0x80 | opcode, 0x80 | 126)) + struct.pack("!H", length) + _MASK_ZERO
    return bytes((0x80 | opcode, 0x80 | 127)) + struct.pack("!Q", length) + _MASK_ZERO


@dataclass
class LeanRun(ClientRun):
    """A `ClientRun` whose messages wait as bytes in `raw` until `parse_messages` reads them."""

    started: float = 0.0
    """When the handshake finished (perf_counter): the stream's time 0, its pace counted from here."""
    raw: list[tuple[float, bytes]] = field(default_factory=list)


class _Stream(asyncio.Protocol):
    """One client connection: the handshake, a frame parser for what the server sends, and the sender
    the pacer calls (`send_due`)."""

    def __init__(self, run: LeanRun, pcm: bytes, sizes: list[int], request: bytes) -> None:
        self.run = run
        self.pcm = memoryview(pcm)
        self.sizes = sizes
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.upgraded = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.buffer = bytearray()
        self.fragments: list[bytes] = []
        self.handshaken = False
        self.pos = 0
        self.next_frame = 0
        self.sent_close_frame = False

    # ---- receiving ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.buffer += data
        if not self.handshaken:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            del self.buffer[: end + 4]
            status = head.split("\r\n", 1)[0].split(" ")
            if len(status) < 2 or status[1] != "101":
                self.run.rejected = True
                self.run.error = f"handshake refused: HTTP {status[1] if len(status) > 1 else '?'}"
                self._finish()
                return
            self.handshaken = True
            self.run.started = time.perf_counter()
            if not self.upgraded.done():
                self.upgraded.set_result(None)
        self._parse_frames(now)

    def _parse_frames(self, now: float) -> None:
        buf = self.buffer
        offset = 0
        while len(buf) - offset >= 2:
            first, second = buf[offset], buf[offset + 1]
            length = second & 0x7F
            head = 2
            if length == 126:
                if len(buf) - offset < 4:
                    break
                length = struct.unpack_from("!H", buf, offset + 2)[0]
                head = 4
            elif length == 127:
                if len(buf) - offset < 10:
                    break
                length = struct.unpack_from("!Q", buf, offset + 2)[0]
                head = 10
            if second & 0x80:  # a server must not mask (RFC 6455 5.1)
                self.run.error = "the server sent a masked frame"
                self._finish()
                return
            if len(buf) - offset < head + length:
                break
            payload = bytes(buf[offset + head : offset + head + length])
            offset += head + length
            self._on_frame(first & 0x0F, bool(first & 0x80), payload, now)
        del buf[:offset]

    def _on_frame(self, opcode: int, fin: bool, payload: bytes, now: float) -> None:
        if opcode in (0x0, 0x1, 0x2):
            self.fragments.append(payload)
            if fin:
                self.run.raw.append((now, b"".join(self.fragments)))
                self.fragments = []
        elif opcode == 0x8:  # close: answer it; the server then closes the connection
            self.run.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            self._send(0x8, payload[:2])
            self.sent_close_frame = True
        elif opcode == 0x9:  # ping
            self._send(0xA, payload)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshaken and self.run.error is None:
            self.run.error = f"connection lost during the handshake: {exc}"
        elif self.run.close_code is None and self.run.error is None:
            self.run.close_code = 1006
        if not self.upgraded.done():
            self.upgraded.set_result(None)
        self._finish()

    def _finish(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        if not self.closed.done():
            self.closed.set_result(None)

    # ---- sending ----

    def _send(self, opcode: int, payload: bytes | memoryview) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame_header(opcode, len(payload)) + payload)

    def due(self) -> float:
        """When the next frame exists (its last sample), on the perf_counter clock."""
        return self.run.started + (self.pos + self.sizes[self.next_frame]) / (2 * SAMPLE_RATE)

    def send_due(self, now: float) -> float | None:
        """Send the next frame (it is due); CloseStream after the last. Returns the next due time."""
        if self.closed.done() or self.sent_close_frame:
            return None
        size = self.sizes[self.next_frame]
        due = self.due()
        assert self.transport is not None
        # Audio still in this side's buffer (the server is not reading: the kernel's buffers are full)
        # has not left either: counted as lag, as a client that waits to send would be late by it.
        waiting_s = self.transport.get_write_buffer_size() / (2 * SAMPLE_RATE)
        self._send(0x2, self.pcm[self.pos : self.pos + size])
        self.pos += size
        self.next_frame += 1
        self.run.max_lag_s = max(self.run.max_lag_s, now - due + waiting_s)
        self.run.frames.append((self.pos // 2, now))
        if self.next_frame == len(self.sizes):
            self._send(0x1, CLOSE_STREAM)
            return None
        return self.due()


def _address(uri: str) -> tuple[str, int, str, str]:
    """(host, port, path with query, Host header) of a ws:// URI."""
    parts = urlsplit(uri)
    if parts.scheme != "ws":
        raise ValueError(f"lean clients speak ws:// only, not {parts.scheme}://")
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return parts.hostname or "127.0.0.1", parts.port or 80, path, parts.netloc


def _handshake(path: str, netloc: str) -> bytes:
    """An opening handshake request (RFC 6455 4.1) with a key of its own."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def _pace(ready: asyncio.Queue[_Stream | None]) -> None:
    """Send every stream's frames when due; streams join through `ready` as their handshakes finish
    (None: no more will join)."""
    heap: list[tuple[float, int, _Stream]] = []
    joining = True
    while joining or heap:
        while not ready.empty() or (joining and not heap):
            stream = await ready.get()
            if stream is None:
                joining = False
                break
            heapq.heappush(heap, (stream.due(), stream.run.index, stream))
        if not heap:
            continue
        delay = heap[0][0] - time.perf_counter()
        await asyncio.sleep(max(delay, TICK_S) if delay > 0 else 0)
        now = time.perf_counter()
        while heap and heap[0][0] <= now:
            _, index, stream = heapq.heappop(heap)
            following = stream.send_due(now)
            if following is not None:
                heapq.heappush(heap, (following, index, stream))


async def run_lean_clients(
    uri: str,
    pcms: Sequence[bytes],
    *,
    frame_ms: tuple[int, int],
    seeds: Sequence[int],
    open_timeout: float = 60.0,
    close_timeout: float = 120.0,
) -> list[LeanRun]:
    """Stream each of `pcms` (16 kHz linear16) at real-time pace from its own connection to `uri`,
    then CloseStream, all at once; returns what each sent and received (messages unparsed)."""
    host, port, path, netloc = _address(uri)
    loop = asyncio.get_running_loop()
    runs = [LeanRun(i, len(pcm) / (2 * SAMPLE_RATE)) for i, pcm in enumerate(pcms)]
    streams = [
        _Stream(run, pcm, frame_sizes(len(pcm), frame_ms, seed), _handshake(path, netloc))
        for run, pcm, seed in zip(runs, pcms, seeds, strict=True)
    ]
    ready: asyncio.Queue[_Stream | None] = asyncio.Queue()

    async def open_one(stream: _Stream) -> None:
        try:
            await asyncio.wait_for(loop.create_connection(lambda: stream, host, port), open_timeout)
            await asyncio.wait_for(asyncio.shield(stream.upgraded), open_timeout)
        except (OSError, TimeoutError) as exc:
            stream.run.error = stream.run.error or f"{type(exc).__name__}: {exc}"
            stream._finish()
            return
        if stream.handshaken and not stream.closed.done() and stream.sizes:
            await ready.put(stream)

    pacer = asyncio.create_task(_pace(ready))
    await asyncio.gather(*(open_one(s) for s in streams))
    await ready.put(None)
    await pacer
    deadline = time.monotonic() + close_timeout
    for stream in streams:
        if not stream.handshaken:
            continue
        try:
            await asyncio.wait_for(asyncio.shield(stream.closed), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            stream.run.error = stream.run.error or f"no close within {close_timeout:g} s of the last audio"
            stream._finish()
    return runs


def parse_messages(run: LeanRun) -> list[tuple[float, dict[str, Any]]]:
    """The run's messages as (arrival time, JSON object): what its `messages` hold once read."""
    return [(t, json.loads(raw)) for t, raw in run.raw]
