"""The supervisor-worker control channel: JSON messages, one per line, over a Unix socket pair.

    channel = await Channel.open(sock, handle)   # handle(message) -> reply dict, or None for none
    reader = asyncio.create_task(channel.run())  # until the other side closes
    await channel.send({"op": "drain"})          # a notice
    reply = await channel.request({"op": "collect"}, timeout=2.0)   # waits for the answer

Each request the other side sends is handled in a task of its own, so a handler may itself wait for a
request on this channel or another (the supervisor answers a worker's "scrape" by collecting from every
worker, the asking one included). Messages are small and rare (start-up, signals, scrapes): never
per stream or per frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

Message = dict[str, Any]
Handler = Callable[[Message], Awaitable[Message | None]]

LINE_LIMIT = 16 * 1024 * 1024
"""Longest message: a worker's metrics text is tens of kilobytes."""


class ChannelClosed(ConnectionError):
    """The other end went away (its process exited)."""


class Channel:
    """One end of a control channel (see the module docstring)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handle: Handler) -> None:
        self._reader = reader
        self._writer = writer
        self._handle = handle
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Message]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    @classmethod
    async def open(cls, sock: socket.socket, handle: Handler) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)
        return cls(reader, writer, handle)

    async def send(self, message: Message) -> None:
        """Send one message; raises ChannelClosed when the other end is gone."""
        if self.closed:
            raise ChannelClosed("control channel closed")
        try:
            self._writer.write(json.dumps(message).encode() + b"\n")
            await self._writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise ChannelClosed(str(exc)) from None

    async def request(self, message: Message, timeout: float) -> Message:
        """Send `message` and wait for its reply; raises TimeoutError or ChannelClosed."""
        number = next(self._ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[number] = future
        try:
            await self.send({**message, "id": number})
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._waiting.pop(number, None)

    async def run(self) -> None:
        """Read and dispatch messages until the other end closes; then fail what waits for a reply."""
        try:
            while line := await self._reader.readline():
                message = json.loads(line)
                if "reply" in message:
                    future = self._waiting.get(message["reply"])
                    if future is not None and not future.done():
                        future.set_result(message)
                    continue
                task = asyncio.get_running_loop().create_task(self._answer(message))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed = True
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(ChannelClosed("control channel closed"))

    async def _answer(self, message: Message) -> None:
        try:
            reply = await self._handle(message)
        except Exception as exc:  # a bug in a handler: say so, answer, keep the channel
            log.exception("control message %r failed", message.get("op"))
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        if reply is not None and "id" in message:
            with contextlib.suppress(ChannelClosed):
                await self.send({**reply, "reply": message["id"]})

    async def close(self) -> None:
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._writer.close()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._writer.wait_closed()
