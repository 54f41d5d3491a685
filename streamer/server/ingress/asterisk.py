"""Asterisk chan_websocket (`/asterisk`, WebSocket): Asterisk 20.16, 21.11, 22.6, 23 and later dial it.

Asterisk connects (websocket_client.conf names this URL, with options as query parameters:
`language`, `model`, `tag`, `callback`, ...), sends the text event `MEDIA_START` naming the format
(`ulaw`, `alaw`, `slin`, `slin16`, ... ), then binary media in that codec, one channel. Control events
come as text, in the plain-text form (`MEDIA_START connection_id:X channel:Y format:ulaw ...`) or as
JSON (`{"event": "MEDIA_START", ...}`, `control_message_format = json`); the server answers in the same
form: `ANSWER` once media starts (a dialled channel waits for it). Nothing else is sent back; the
connection closes when Asterisk hangs up. Authentication: an API key in `Authorization` (Basic with the
key as password, which websocket_client.conf's username/password send, or Token).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from aiohttp import web

from streamer.audio import Encoding
from streamer.errors import RequestError
from streamer.protocol import STREAM_OPTIONS, parse_listen_params
from streamer.server.auth import authorize, offered_protocols
from streamer.server.ingress.base import (
    Accepted,
    Audio,
    Dialect,
    Inbound,
    ProtocolError,
    Reply,
    Start,
    stream_params,
)
from streamer.server.state import ServerState

log = logging.getLogger(__name__)

FORMATS: dict[str, tuple[Encoding, int]] = {
    "ulaw": ("mulaw", 8000),
    "alaw": ("alaw", 8000),
    "slin": ("linear16", 8000),
    "slin12": ("linear16", 12000),
    "slin16": ("linear16", 16000),
    "slin24": ("linear16", 24000),
    "slin32": ("linear16", 32000),
    "slin44": ("linear16", 44100),
    "slin48": ("linear16", 48000),
}
EVENTS = frozenset(
    {
        "MEDIA_START",
        "MEDIA_XOFF",
        "MEDIA_XON",
        "MEDIA_BUFFERING_COMPLETED",
        "MEDIA_MARK_PROCESSED",
        "QUEUE_DRAINED",
        "DTMF_END",
        "STATUS",
    }
)


def parse_event(text: str) -> tuple[str, dict[str, str], bool]:
    """(event name, fields, whether it was JSON) of a control message in either form."""
    stripped = text.strip()
    if stripped.startswith("{"):
        message = json.loads(stripped)
        if not isinstance(message, dict) or not isinstance(message.get("event"), str):
            raise RequestError("a JSON control message needs an 'event'")
        fields = {k: str(v) for k, v in message.items() if k != "event" and not isinstance(v, dict | list)}
        return message["event"], fields, True
    name, *pairs = stripped.split()
    fields = {}
    for pair in pairs:
        key, sep, value = pair.partition(":")
        if not sep:
            raise RequestError(f"malformed field {pair[:40]!r} in {name[:30]}")
        fields[key] = value
    return name, fields, False


class AsteriskDialect(Dialect):
    """Codec of one chan_websocket connection (see the module docstring)."""

    name = "asterisk"

    def __init__(self, served_models: list[str], options: Mapping[str, str]) -> None:
        self.served_models = served_models
        self.options = dict(options)
        self.started = False

    def receive_binary(self, data: bytes) -> list[Inbound]:
        if not self.started:
            return [ProtocolError("media before MEDIA_START")]
        return [Audio(data)]

    def receive_text(self, text: str) -> list[Inbound]:
        try:
            event, fields, as_json = parse_event(text)
        except ValueError as exc:
            return [ProtocolError(f"malformed control message: {exc}")]
        except RequestError as exc:
            return [ProtocolError(str(exc))]
        if event not in EVENTS:
            return [ProtocolError(f"unknown event {event[:40]!r}")]
        if event != "MEDIA_START":
            log.debug("asterisk %s %s", event, fields)
            return []
        if self.started:
            return [ProtocolError("a second MEDIA_START")]
        codec = fields.get("format", "")
        if codec not in FORMATS:
            return [ProtocolError(f"unsupported format {codec[:20]!r}; use one of {', '.join(FORMATS)}")]
        encoding, rate = FORMATS[codec]
        try:
            params = stream_params(
                self.options, self.served_models, encoding=encoding, sample_rate=rate, source="URL options"
            )
        except RequestError as exc:
            return [ProtocolError(str(exc))]
        self.started = True
        call = fields.get("channel_id") or fields.get("connection_id") or fields.get("channel")
        answer = json.dumps({"command": "ANSWER"}) if as_json else "ANSWER"
        return [Start(params, call_id=call), Reply(answer)]


def accept(state: ServerState, request: web.Request, request_id: str) -> Accepted:
    """API key (when the server has keys), URL options checked now so a bad one fails the dial."""
    key = authorize(state.config.api_keys, request)
    options = {k: v for k, v in request.query.items() if k in STREAM_OPTIONS}
    model = parse_listen_params(options, state.model_names).model  # a bad option: 400 at the handshake
    protocols = ("media",) if "media" in offered_protocols(request) else ()
    return Accepted(AsteriskDialect(state.model_names, options), model, None, key, protocols)
