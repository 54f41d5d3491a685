"""A real webhook receiver for tests: aiohttp on a port of its own, recording posts, checking signatures.

The signature is checked here from first principles (HMAC-SHA256 over "<t>." + body, as documented in
README's Telephony section), not with the server's own helper, so a wrong signer cannot pass its own test.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def signature_valid(secret: str, header: str, body: bytes, tolerance_s: float = 300.0) -> bool:
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode(), fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(fields["t"])) <= tolerance_s
    return fresh and hmac.compare_digest(expected, fields["v1"])


@dataclass
class Receiver:
    """Records every post; `fail_first` posts are answered 503 (a receiver having trouble)."""

    secret: str | None = None
    port: int = field(default_factory=free_port)
    fail_first: int = 0
    status: int = 200
    posts: list[dict[str, Any]] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    attempts: int = 0
    bad_signatures: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.read()
        if self.secret is not None:
            header = request.headers.get("X-Streamer-Signature", "")
            if not header or not signature_valid(self.secret, header, body):
                self.bad_signatures += 1
                return web.Response(status=401)
        if self.attempts <= self.fail_first:
            return web.Response(status=503)
        if self.status != 200:
            return web.Response(status=self.status)
        self.posts.append(json.loads(body))
        self.methods.append(request.method)
        self.arrived.set()
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def finals(self, channel: int | None = None, stream: str | None = None) -> list[dict[str, Any]]:
        return [
            p
            for p in self.posts
            if p.get("type") == "Results"
            and p["is_final"]
            and (channel is None or p["channel_index"][0] == channel)
            and (stream is None or p["stream"]["id"] == stream or p["stream"]["call_id"] == stream)
        ]

    async def wait_for(self, predicate: Any, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.arrived.clear()
                await self.arrived.wait()


def words(messages: list[dict[str, Any]]) -> list[str]:
    return [w["word"] for m in messages for w in m["channel"]["alternatives"][0]["words"]]
