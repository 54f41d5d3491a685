"""Errors only the edge knows, and the one table that maps every error to an HTTP status.

`error_response(state, exc, request_id)` answers a refused handshake or request: status, Deepgram-style
JSON body naming the problem, `Retry-After` for 429/503, and the rejected-requests metric.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from streamer.errors import AudioFormatError, EngineError, OverloadError, RequestError, StreamerError
from streamer.protocol import ParamError, http_error

if TYPE_CHECKING:
    from streamer.server.state import ServerState

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1


class AuthError(RequestError):
    """Missing or wrong API key (or platform signature)."""


class PayloadTooLarge(RequestError):
    """A pre-recorded body over the configured limit."""


class NotWebSocket(RequestError):
    """A plain GET on a WebSocket endpoint."""


class ShuttingDown(OverloadError):
    """The server no longer accepts streams."""


class ForbiddenOrigin(RequestError):
    """A browser page from an origin that is not allowed (`--allowed-origin`)."""


class KeyLimitReached(OverloadError):
    """The API key already has as many streams as its `max_streams` allows."""


class EngineSaturated(OverloadError):
    """The model's engine has no headroom left: more streams would make every stream fall behind."""


@dataclass(frozen=True)
class HttpMapping:
    status: int
    err_code: str
    reason: str
    """Label of the rejected-requests metric."""


# Most specific first: the first class an error is an instance of decides its status, code and metric label.
_HTTP_MAPPINGS: tuple[tuple[type[StreamerError], HttpMapping], ...] = (
    (AuthError, HttpMapping(401, "INVALID_AUTH", "auth")),
    (ForbiddenOrigin, HttpMapping(403, "FORBIDDEN_ORIGIN", "origin")),
    (PayloadTooLarge, HttpMapping(413, "PAYLOAD_TOO_LARGE", "too_large")),
    (NotWebSocket, HttpMapping(426, "UPGRADE_REQUIRED", "not_websocket")),
    (AudioFormatError, HttpMapping(400, "INVALID_AUDIO", "bad_audio")),
    (RequestError, HttpMapping(400, "BAD_REQUEST", "bad_request")),
    (ShuttingDown, HttpMapping(503, "SHUTTING_DOWN", "shutting_down")),
    # Deepgram's status and code for a key over its concurrency limit.
    (KeyLimitReached, HttpMapping(429, "TOO_MANY_REQUESTS", "key_limit")),
    (EngineSaturated, HttpMapping(503, "OVERLOADED", "saturated")),
    (OverloadError, HttpMapping(503, "TOO_MANY_STREAMS", "overload")),
    (EngineError, HttpMapping(500, "ENGINE_FAILURE", "engine")),
)


def http_mapping(exc: StreamerError) -> HttpMapping:
    """Status, error code and metric label for `exc`."""
    if isinstance(exc, ParamError):  # carries its own Deepgram error code
        return HttpMapping(400, exc.err_code, "bad_param")
    for kind, mapping in _HTTP_MAPPINGS:
        if isinstance(exc, kind):
            return mapping
    return HttpMapping(500, "INTERNAL_ERROR", "internal")


def error_response(state: ServerState, exc: StreamerError, request_id: str) -> web.Response:
    """The HTTP answer to a refused request, counted in the rejected-requests metric."""
    mapping = http_mapping(exc)
    state.metrics.rejected.labels(mapping.reason).inc()
    param = exc.param if isinstance(exc, RequestError) else None
    allowed = exc.allowed if isinstance(exc, ParamError) else None
    headers = {"dg-request-id": request_id}
    if mapping.status in (429, 503):
        headers["Retry-After"] = str(RETRY_AFTER_S)
    if mapping.status == 401:
        headers["WWW-Authenticate"] = "Token"
    log.info("request %s refused: %d %s: %s", request_id, mapping.status, mapping.err_code, exc)
    return web.Response(
        status=mapping.status,
        text=http_error(mapping.err_code, str(exc), request_id, param=param, allowed=allowed),
        content_type="application/json",
        headers=headers,
    )
