"""Deepgram's live transcription protocol (`GET /v1/listen`): the server's native dialect.

Handshake: API key (`Authorization: Token`/`Bearer`, or the browser's `Sec-WebSocket-Protocol: token,
KEY`) and query parameters (`streamer.protocol.parse_listen_params`). Binary frames are audio (an empty
one ends the stream, Deepgram's old convention); text frames are KeepAlive, Finalize, CloseStream and
Configure. Out: `Results`, `SpeechStarted` (with `vad_events`), `UtteranceEnd`, the closing `Metadata`,
and `Error` before an engine-failure close. Wire messages live in `streamer.protocol`.

Resume (`streamer.server.resume`): each final `Results` and the closing `Metadata` carry a `resume`
field (`{"token", "from"}`); a handshake with `resume=TOKEN&resume_from=SECONDS` continues that stream.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from aiohttp import web
from multidict import MultiDict

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
    with_field,
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
    Reconfigure,
    Reply,
    StreamInfo,
)
from streamer.server.resume import RESUME_PARAMS, Resume, ResumeError, ResumeIssuer, listen_query
from streamer.server.state import ServerState
from streamer.transcript import Event, Transcript


class DeepgramDialect(Dialect):
    """Codec of one `/v1/listen` connection; `request_id` answers Configure messages."""

    name = "deepgram"

    def __init__(self, request_id: str, resume: ResumeIssuer | None = None) -> None:
        self.request_id = request_id
        self.resume = resume

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
            if control.keyterms is not None:
                return [Reconfigure(control.keyterms)]
            return [Reply(configure_reply(self.request_id))]
        return []  # KeepAlive: receiving it already reset the idle timer

    def outbound(self, event: Event, info: StreamInfo) -> str | None:
        message = event_message(event, info.channels, info.model, info.id, info.params.vad_events)
        if (
            message is not None
            and self.resume is not None
            and isinstance(event, Transcript)
            and event.is_final
        ):
            message = with_field(message, "resume", json.dumps(self.resume.update(event)))
        return message

    def finished(self, summary: StreamSummary) -> str | None:
        message = metadata_message(summary)
        if self.resume is not None:
            message = with_field(message, "resume", json.dumps(self.resume.current()))
        return message

    def failed(self, detail: str) -> str | None:
        return error_message(detail, "ENGINE_FAILURE")

    def configured(self, keyterms: Sequence[str], failure: str | None) -> str | None:
        return configure_reply(self.request_id, keyterms, failure)


def accept(state: ServerState, request: web.Request, request_id: str) -> Accepted:
    """API key, then query parameters (a resumed stream's come from its token); raises AuthError,
    ParamError or ResumeError."""
    key = authorize(state.config.api_keys, request)
    query = request.query
    resume: Resume | None = None
    if "resume" in query:
        resume = state.resume.open(query["resume"], key, query.get("resume_from"))
        _check_same_params(query, resume.query)
        query = MultiDict(resume.query)
    params = parse_listen_params(query, state.model_names, state.config.keyterm_limits)
    if resume is not None and len(resume.start.final_through) != params.output_channels:
        raise ResumeError("the resume token is malformed")
    final_through: Sequence[int] = (
        resume.start.final_through if resume is not None else (0,) * params.output_channels
    )
    if resume is not None:
        request_id = resume.request_id
        final_through = tuple(resume.start.origin(c) for c in range(params.output_channels))
    issuer = ResumeIssuer(state.resume, request_id, listen_query(query), key, final_through)
    protocols = ("token",) if "token" in offered_protocols(request) else ()
    return Accepted(DeepgramDialect(request_id, issuer), params.model, params, key, protocols, resume)


def _check_same_params(given: Mapping[str, str], resumed: Sequence[tuple[str, str]]) -> None:
    """A resuming client may repeat the stream's parameters, not change them."""
    kept: dict[str, list[str]] = {}
    for name, value in resumed:
        kept.setdefault(name, []).append(value)
    getall = getattr(given, "getall", None)
    for name in {k for k in given if k not in RESUME_PARAMS}:
        values = getall(name) if getall is not None else [given[name]]
        if values != kept.get(name, []):
            raise ResumeError(f"parameter {name[:40]!r} differs from the resumed stream's; leave it out")
