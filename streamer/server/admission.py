"""The checks every request passes before a dialect looks at it: accepting, browser origin.

Capacity (stream slots, per-key limits, the model's measured load) is taken with `ServerState.reserve`
once the dialect knows the key and the model; `admit` runs first, with no await in between.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web

from streamer.config import normalise_origin
from streamer.server.errors import ForbiddenOrigin, ShuttingDown

if TYPE_CHECKING:
    from streamer.server.state import ServerState


def check_origin(allowed: frozenset[str], request: web.Request) -> None:
    """Raise ForbiddenOrigin when origins are restricted and a browser page from another one asks.

    Browsers always send Origin on a WebSocket handshake (and on cross-origin POSTs); other clients
    usually send none, and a missing Origin is allowed: the check protects users' browsers from foreign
    pages (which could otherwise use a browser's network position), not the server from clients. The
    server's own page (an Origin naming the Host it was served from) is always allowed.
    """
    origin = request.headers.get("Origin")
    if not allowed or origin is None or normalise_origin(origin) in allowed:
        return
    if urlsplit(normalise_origin(origin)).netloc == request.host.lower():
        return  # the server's own page (same origin): never a foreign site
    raise ForbiddenOrigin(f"origin {origin[:100]!r} is not allowed", "Origin")


def admit(state: ServerState, request: web.Request) -> None:
    """Raise ShuttingDown or ForbiddenOrigin; the dialect then authenticates and parses the request."""
    if not state.accepting:
        raise ShuttingDown("the server is shutting down")
    check_origin(state.config.allowed_origins, request)
