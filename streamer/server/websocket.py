"""WebSocket endpoints: the aiohttp handshake around the live-stream bridge, for every WebSocket dialect.

    app.router.add_get("/v1/listen", websocket_endpoint(deepgram.accept))

The handler admits the request (`admission.admit`), lets the dialect's `accept` authenticate and parse
it, reserves a stream slot, upgrades and hands the connection to `LiveStream.serve`. Everything from the
first check to registering the stream runs without an await, so shutdown and capacity see a consistent
picture. Refusals are HTTP answers (`errors.error_response`); a plain GET gets the refusal the handshake
would get, or 426.
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import WSMsgType, web

from streamer.errors import StreamerError
from streamer.server.admission import admit
from streamer.server.errors import NotWebSocket, error_response
from streamer.server.ingress.base import Accepted
from streamer.server.live import CLOSE_TIMEOUT_S, LiveStream
from streamer.server.state import STATE, ServerState
from streamer.server.transport import Frame, reason_bytes

SEND_BUFFER_BYTES = 16 * 1024
"""Send buffers of a live stream's socket, in the kernel and in the transport (see limit_buffers)."""
RECEIVE_BUFFER_BYTES = 256 * 1024
"""Kernel receive buffer of a live stream's socket (see limit_buffers)."""

Accept = Callable[[ServerState, web.Request, str], Accepted]
"""A dialect's handshake: authenticate and parse the request, or raise a StreamerError."""


class WebSocketConnection:
    """An aiohttp WebSocket as a `streamer.server.transport.Connection`."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws

    @property
    def closed(self) -> bool:
        return self.ws.closed

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    async def receive(self, timeout: float | None = None) -> Frame:
        msg = await self.ws.receive(timeout=timeout)
        if msg.type is WSMsgType.BINARY:
            return Frame("binary", data=msg.data)
        if msg.type is WSMsgType.TEXT:
            return Frame("text", text=msg.data)
        if msg.type is WSMsgType.ERROR:
            return Frame("error", detail=str(self.ws.exception()))
        return Frame("closed")

    async def send_text(self, text: str) -> None:
        await self.ws.send_str(text)

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, message=reason_bytes(reason))


def websocket_endpoint(accept: Accept) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler of a WebSocket dialect whose handshake is `accept`."""

    async def handler(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        request_id = str(uuid.uuid4())
        try:
            admit(state, request)
            accepted = accept(state, request, request_id)
            ws = web.WebSocketResponse(
                protocols=accepted.protocols,
                max_msg_size=state.config.limits.max_message_bytes,
                timeout=CLOSE_TIMEOUT_S,
                autoping=True,
                writer_limit=SEND_BUFFER_BYTES // 2,  # look for transport backpressure every 8 KiB sent
                # No permessage-deflate: PCM audio barely compresses, yet every frame would be inflated on
                # the event loop, each connection would hold ~300 KB of zlib state, and in the soak benchmark
                # that state made the RSS creep as connections came and went. Clients fall back without it.
                compress=False,
            )
            if not ws.can_prepare(request).ok:
                # A plain GET learns what the handshake would get (browsers are not told why a WebSocket
                # failed, so the page asks this way): a refusal, or 426 when it would be accepted.
                state.check_capacity(accepted.model, accepted.key)
                raise NotWebSocket(
                    "this endpoint speaks WebSocket; POST audio to /v1/listen for pre-recorded"
                )
            live = LiveStream(state, WebSocketConnection(ws), accepted, request_id)
            state.reserve("live", accepted.model, accepted.key)
        except StreamerError as exc:
            return error_response(state, exc, request_id)

        async def prepare() -> None:
            ws.headers["dg-request-id"] = request_id
            await ws.prepare(request)
            limit_buffers(request)

        await live.serve(prepare)
        return ws

    return handler


def limit_buffers(request: web.Request) -> None:
    """Fix the socket buffers of a live stream, so that what a client can park in the kernel is bounded.

    Left alone, Linux grows a socket's buffers to megabytes (4-6 MB by default) when the other side
    stops reading. Send: results are a few KB/s, and 16 KiB (doubled by Linux) still carry 150 KB/s over
    a 200 ms round trip; a slow reader then shows up in the stream's outbox, where interim results are
    coalesced, instead of hundreds of stale interims queued below it. Receive: 256 KiB (doubled) carry
    the largest audio format (8 channels at 48 kHz, 768 KB/s) over a 300 ms round trip, and bound what a
    client sending faster than real time has in flight while the server is not reading it.
    """
    transport = request.transport
    if transport is None:
        return
    with contextlib.suppress(OSError, RuntimeError, NotImplementedError):
        transport.set_write_buffer_limits(high=SEND_BUFFER_BYTES)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
