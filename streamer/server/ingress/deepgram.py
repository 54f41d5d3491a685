"""Deepgram's live transcription protocol (`GET /v1/listen`): the server's native dialect.

Handshake: API key (`Authorization: Token`/`Bearer`, or the browser's `Sec-WebSocket-Protocol: token,
KEY`) and query parameters (`streamer.protocol.parse_listen_params`). Binary frames are audio (an empty
one ends the stream, Deepgram's old convention); text frames are KeepAlive, Finalize, CloseStream and
Configure. Out: `Results`, `SpeechStarted` (with `vad_events`), `UtteranceEnd`, the closing `Metadata`,
and `Error` before an engine-failure close. Wire messages live in `streamer.protocol`.
"""

from __future__ import annotations

from aiohttp import web

from streamer.protocol import (
    CloseStream,
    Configure,
    ControlMessageError,
    Finalize,
    StreamSummary,
    configure_reply,
    decode_control,
    error_message,
    event_message,
    metadata_message,
    parse_listen_params,
)
from streamer.server.auth import authorize, offered_protocols
from streamer.server.ingress.base import (
    Accepted,
    Audio,
    Dialect,
    EndOfAudio,
    Flush,
    Inbound,
    ProtocolError,
    Reply,
    StreamInfo,
)
from streamer.server.state import ServerState
from streamer.transcript import Event


class DeepgramDialect(Dialect):
    """Codec of one `/v1/listen` connection; `request_id` answers Configure messages."""

    name = "deepgram"

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id

    def receive_binary(self, data: bytes) -> list[Inbound]:
        if not data:
            return [EndOfAudio()]
        return [Audio(data)]

    def receive_text(self, text: str) -> list[Inbound]:
        try:
            control = decode_control(text)
        except ControlMessageError as exc:
            return [ProtocolError(str(exc))]
        if isinstance(control, CloseStream):
            return [EndOfAudio()]
        if isinstance(control, Finalize):
            return [Flush()]
        if isinstance(control, Configure):
            return [Reply(configure_reply(control, self.request_id))]
        return []  # KeepAlive: receiving it already reset the idle timer

    def outbound(self, event: Event, info: StreamInfo) -> str | None:
        return event_message(event, info.channels, info.model, info.id, info.params.vad_events)

    def finished(self, summary: StreamSummary) -> str | None:
        return metadata_message(summary)

    def failed(self, detail: str) -> str | None:
        return error_message(detail, "ENGINE_FAILURE")


def accept(state: ServerState, request: web.Request, request_id: str) -> Accepted:
    """API key, then query parameters; raises AuthError or ParamError."""
    key = authorize(state.config.api_keys, request)
    params = parse_listen_params(request.query, state.model_names)
    protocols = ("token",) if "token" in offered_protocols(request) else ()
    return Accepted(DeepgramDialect(request_id), params.model, params, key, protocols)
