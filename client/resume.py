"""Surviving a server restart: keep the audio since the last final, reconnect, replay, go on.

    feed = ResumableFeed(source, buffer_seconds=120)
    feed.start()                     # pulls the source in the background, across connections
    session = StreamSession(ws, feed, on_text)  # feed.blocks(): the replay, then fresh audio
    feed.observe(text)               # every server message: final `resume` fields move the replay point
    url = feed.resume_url(listen_url)  # after a 1012/1001/1006: where to reconnect

The server puts a `resume` field (`{"token", "from"}`) on every final and on the closing Metadata: `from`
is the stream second up to which all audio is final. The feed keeps the audio sent since then (at most
`buffer_seconds`; older audio is dropped and the server is told where the replay really starts), and a
reconnect with `resume=TOKEN&resume_from=S` continues the same stream: times go on and no word is
made final twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator
from urllib.parse import urlencode, urlsplit, urlunsplit

from client.sources import BYTES_PER_SECOND, AudioSource

RESUME_CLOSE_CODES = frozenset({1001, 1006, 1012, 1013})
"""Closes after which the stream is resumed: going away, connection lost, service restart, try later."""
SAMPLE_BYTES = 2


class ReplayBuffer:
    """The audio bytes sent from stream byte `start` on, at most `max_bytes` (the oldest go first)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.start = 0
        self.end = 0
        self._blocks: deque[bytes] = deque()
        self.dropped = 0
        """Bytes dropped for room before they were final (lost if the stream must resume)."""

    def add(self, block: bytes) -> None:
        self._blocks.append(block)
        self.end += len(block)
        while self.end - self.start > self.max_bytes and self._blocks:
            oldest = self._blocks.popleft()
            self.start += len(oldest)
            self.dropped += len(oldest)

    def trim(self, position: int) -> None:
        """Forget the audio before stream byte `position` (it is final)."""
        while self._blocks and self.start + len(self._blocks[0]) <= position:
            self.start += len(self._blocks.popleft())
        if self._blocks and self.start < position:
            cut = position - self.start
            self._blocks[0] = self._blocks[0][cut:]
            self.start = position

    def replay(self, position: int) -> tuple[int, list[bytes]]:
        """The audio from stream byte `position` (or the oldest kept, if later) and where it starts."""
        self.trim(position)
        return self.start, list(self._blocks)


class ResumableFeed:
    """The source's audio for one stream that may span several connections (see the module docstring)."""

    def __init__(self, source: AudioSource, buffer_seconds: float) -> None:
        self.source = source
        self.buffer = ReplayBuffer(max(0, round(buffer_seconds * BYTES_PER_SECOND)) // 2 * 2)
        self.enabled = buffer_seconds > 0
        self.token: str | None = None
        self.final_position = 0
        """Stream byte up to which the server said all audio is final."""
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1)
        self._ended = False
        self._pump: asyncio.Task[None] | None = None
        self._error: Exception | None = None
        self._replay_from = 0
        self.sent_bytes = 0
        """Stream bytes taken from the source so far (the stream position of the live edge)."""

    def start(self) -> None:
        self._pump = asyncio.get_running_loop().create_task(self._pull(), name="client-source")

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump

    async def _pull(self) -> None:
        # A task of its own, so that a connection's sender can be cancelled at any await without
        # cancelling (and so finishing) the source's generator.
        blocks = self.source.blocks()
        try:
            async for block in blocks:
                if block:  # an empty binary frame means "end of stream" to Deepgram servers
                    await self._queue.put(block)
        except Exception as exc:  # an unreadable file: the connection's sender raises it
            self._error = exc
        finally:
            # Close a generator source now (it may hold a file), not whenever it is garbage-collected.
            aclose = getattr(blocks, "aclose", None)
            if aclose is not None:
                await aclose()
        await self._queue.put(None)

    async def blocks(self) -> AsyncIterator[bytes]:
        """For one connection: the replay (if resuming), then the source's blocks as they come."""
        if self._replay_from < self.buffer.end:
            _, replay = self.buffer.replay(self._replay_from)
            for kept in replay:
                yield kept
        while not self._ended:
            block = await self._queue.get()
            if block is None:
                self._ended = True
                break

            # Kept before it is sent: if the connection fails while sending it, the replay has it.
            if self.enabled:
                self.buffer.add(block)
            self.sent_bytes += len(block)
            yield block
        if self._error is not None:
            raise self._error

    def observe(self, text: str) -> None:
        """Track the `resume` field of the server's final results and Metadata."""
        if '"resume"' not in text:
            return
        try:
            field = json.loads(text).get("resume")
            token, seconds = str(field["token"]), float(field["from"])
        except (ValueError, TypeError, KeyError, AttributeError):
            return
        self.token = token
        position = round(seconds * BYTES_PER_SECOND / SAMPLE_BYTES) * SAMPLE_BYTES
        self.final_position = max(self.final_position, position)
        self.buffer.trim(self.final_position)

    def can_resume(self) -> bool:
        """Whether a new connection can carry on without losing what the server had made final."""
        return self.enabled and (self.token is not None or self.buffer.start == 0)

    def resume_url(self, listen_url: str) -> tuple[str, float]:
        """The URL of the next connection and the seconds of audio lost (kept too short a buffer)."""
        start = max(self.final_position, self.buffer.start)
        lost = (start - self.final_position) / BYTES_PER_SECOND
        self._replay_from = start
        if self.token is None:  # nothing final yet: the stream starts over from its first byte
            return listen_url, 0.0
        parts = urlsplit(listen_url)
        query = urlencode({"resume": self.token, "resume_from": f"{start / BYTES_PER_SECOND:.6f}"})
        return urlunsplit((parts.scheme, parts.netloc, parts.path, query, "")), lost
