"""`GET /v1/watch?tag=NAME` (or `?stream=ID`): a WebSocket that follows streams live (see `watch.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from aiohttp import WSMsgType, web

from streamer.errors import RequestError, StreamerError
from streamer.server.admission import admit
from streamer.server.auth import authorize, offered_protocols
from streamer.server.errors import NotWebSocket, error_response
from streamer.server.state import STATE
from streamer.server.transport import reason_bytes
from streamer.server.watch import ANY_OWNER, Watcher, owner_of, stream_key, tag_key

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0


async def watch_handler(request: web.Request) -> web.StreamResponse:
    """`GET /v1/watch?tag=NAME` (or `?stream=ID`, a stream's request id or call id)."""
    state = request.app[STATE]
    hub = state.watch
    request_id = str(uuid.uuid4())
    try:
        admit(state, request)
        api_key = authorize(state.config.api_keys, request)
        tag, stream = request.query.get("tag"), request.query.get("stream")
        if bool(tag) == bool(stream):
            raise RequestError("name one tag or one stream to watch: /v1/watch?tag=NAME or ?stream=ID", "tag")
        # Auth off: one namespace for all. With keys: the key's own streams, or all with watch=all.
        sees_all = api_key is not None and api_key in state.config.api_keys_watch_all
        owner = ANY_OWNER if sees_all else owner_of(api_key)
        key = tag_key(tag, owner) if tag else stream_key(stream or "", owner)
        ws = web.WebSocketResponse(
            protocols=("token",) if "token" in offered_protocols(request) else (),
            max_msg_size=64 * 1024,
            timeout=CLOSE_TIMEOUT_S,
            compress=False,
        )
        if not ws.can_prepare(request).ok:
            raise NotWebSocket("this endpoint speaks WebSocket")
        watcher = hub.subscribe(key)
    except StreamerError as exc:
        return error_response(state, exc, request_id)
    try:
        ws.headers["dg-request-id"] = request_id
        await ws.prepare(request)
        log.info("watcher %s: watching %s", request_id, key)
        code, reason = await _serve_watcher(ws, watcher)
        if not ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await ws.close(code=code, message=reason_bytes(reason))
        log.info("watcher %s: closed with %d%s", request_id, code, f" ({reason})" if reason else "")
    finally:
        hub.unsubscribe(watcher)
        if not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close(code=1011, message=b"internal error")
    return ws


async def _serve_watcher(ws: web.WebSocketResponse, watcher: Watcher) -> tuple[int, str]:
    """Send the watcher's queue until the hub closes it, the client leaves or sends audio."""
    sender = asyncio.ensure_future(_send(ws, watcher))
    receiver = asyncio.ensure_future(_receive(ws))
    try:
        done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, receiver):
            task.cancel()
        await asyncio.gather(sender, receiver, return_exceptions=True)
    if receiver in done and not receiver.cancelled() and receiver.exception() is None:
        return receiver.result()
    return watcher.closing or (1000, "")


async def _send(ws: web.WebSocketResponse, watcher: Watcher) -> None:
    while True:
        item = await watcher.outbox.get()
        watcher.outbox.task_done()
        if item is None:
            return
        try:
            await ws.send_str(item.text)
        except (ConnectionError, RuntimeError):
            return


async def _receive(ws: web.WebSocketResponse) -> tuple[int, str]:
    while True:
        msg = await ws.receive()
        if msg.type is WSMsgType.BINARY:
            return 1008, "a watcher cannot send audio"
        if msg.type is not WSMsgType.TEXT:
            return 1000, ""
        # Text (KeepAlive or anything else) changes nothing: a watcher only listens.
