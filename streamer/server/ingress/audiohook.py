"""Genesys Cloud AudioHook Monitor, protocol version 2 (`/audiohook`, WebSocket).

Client (Genesys) -> server, JSON text with `version`, `id` (the session), `type`, `seq` (1, 2, ...),
`serverseq` (the last server seq it saw), `position` and `parameters`: `open` (media offers, language,
conversation and participant; a null conversation id is Genesys' connection probe), `ping`, `update`,
`paused`, `resumed` and `discarded` (audio that never came: silence keeps channel times), `error`,
`close`. Binary frames: audio in the chosen format (PCMU or L16, 8 kHz; channels `external` (the
customer, channel 0) and `internal` (the agent, channel 1) interleaved), only after `opened`.
Server -> client, JSON only (never a binary frame): `opened` (the chosen offer), `pong`, `updated`,
`event` with `transcript` entities (channelId, isFinal, offset, duration, alternatives with word tokens),
`closed` after the last finals, and `disconnect` (reason `error`) before a protocol-error close. Every
server message carries `seq` (1, 2, ...) and `clientseq` (the last client seq received); a client
message out of sequence is a protocol error.

Authentication at the handshake: `X-API-KEY` must be one of the server's API keys (when it has any); with
`--audiohook-client-secret`, the request's RFC 9421 signature (HMAC-SHA256, `keyid` the API key, nonce
and expiry checked) is required too. Options (`tag`, `callback`, `interim_results`, ...) come from the
open message's `customConfig`.
"""

from __future__ import annotations

import hmac
import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from streamer.audio import Encoding
from streamer.errors import RequestError
from streamer.protocol import StreamSummary, default_model
from streamer.server.auth import match_key
from streamer.server.errors import AuthError
from streamer.server.http_signatures import NonceCache, SignatureCheck, SignatureError
from streamer.server.ingress.base import (
    Accepted,
    Audio,
    Dialect,
    EndKind,
    EndOfAudio,
    Inbound,
    ProtocolError,
    Reply,
    Start,
    StreamInfo,
    json_object,
    stream_params,
)
from streamer.server.state import ServerState
from streamer.transcript import Event, Transcript

log = logging.getLogger(__name__)

VERSION = "2"
PROBE_CONVERSATION = "00000000-0000-0000-0000-000000000000"
CHANNELS = ("external", "internal")
"""Channel order: the customer, then the agent."""
FORMATS: dict[str, tuple[Encoding, int]] = {"PCMU": ("mulaw", 1), "L16": ("linear16", 2)}
"""AudioHook format -> our encoding and bytes per sample."""
SIGNED_COMPONENTS = ("@request-target", "@authority", "audiohook-session-id", "x-api-key")
MAX_SILENCE_S = 60.0
"""The longest stretch of missing audio (discarded, or paused then resumed) filled with silence."""


def duration(seconds: float) -> str:
    """An ISO 8601 duration in seconds, as AudioHook writes positions (`PT1.25S`)."""
    return f"PT{round(seconds, 3):g}S"


def parse_duration(text: object) -> float:
    if not isinstance(text, str) or not (text.startswith("PT") and text.endswith("S")):
        raise RequestError(f"expected a duration like PT1.5S, got {str(text)[:30]!r}")
    return float(text[2:-1])


class AudioHookDialect(Dialect):
    """Codec of one AudioHook session (see the module docstring)."""

    name = "audiohook"

    def __init__(self, served_models: list[str], session_id: str | None) -> None:
        self.served_models = served_models
        self.session_id = session_id
        self.client_seq = 0
        self.server_seq = 0
        self.opened = False
        self.closing = False
        self.probe = False
        self.channels: tuple[str, ...] = ()
        self.language = "en-US"
        self._bytes_per_sample = 1
        self._silence = b"\xff"

    # ---- server messages ----

    def _message(self, kind: str, parameters: Mapping[str, Any]) -> str:
        self.server_seq += 1
        return json.dumps(
            {
                "version": VERSION,
                "type": kind,
                "seq": self.server_seq,
                "clientseq": self.client_seq,
                "id": self.session_id or str(uuid.UUID(int=0)),
                "parameters": dict(parameters),
            },
            separators=(",", ":"),
        )

    # ---- client messages ----

    def receive_binary(self, data: bytes) -> list[Inbound]:
        if not self.opened or self.probe:
            return [ProtocolError("audio before the session was opened")]
        if self.closing:
            return []  # the bridge counts audio after the end; the close code says so
        return [Audio(data)]

    def receive_text(self, text: str) -> list[Inbound]:
        message = json_object(text)
        if isinstance(message, ProtocolError):
            return [message]
        kind = message.get("type")
        try:
            self._check_envelope(message)
            if kind == "open":
                return self._open(message)
            if not self.opened:
                return [ProtocolError(f"{kind!r} before 'open'")]
            if kind == "ping":
                return [Reply(self._message("pong", {}))]
            if kind == "update":
                return self._update(message)
            if kind in ("paused", "error"):
                log.info("audiohook session %s: client %s %s", self.session_id, kind, message["parameters"])
                return []
            if kind in ("resumed", "discarded"):
                return self._gap(message)
            if kind == "close":
                return self._close()
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return [ProtocolError(f"malformed {kind!r} message: {type(exc).__name__} {exc}")]
        except RequestError as exc:
            return [ProtocolError(str(exc))]
        return [ProtocolError(f"unknown message type {str(kind)[:40]!r}")]

    def _check_envelope(self, message: Mapping[str, Any]) -> None:
        if message.get("version") != VERSION:
            raise RequestError(f"protocol version {str(message.get('version'))[:10]!r}; this server speaks 2")
        seq = message.get("seq")
        if not isinstance(seq, int) or seq != self.client_seq + 1:
            raise RequestError(f"seq {seq!r} out of sequence (expected {self.client_seq + 1})")
        if message.get("serverseq") != self.server_seq:
            raise RequestError(
                f"serverseq {message.get('serverseq')!r}, but the last server seq is {self.server_seq}"
            )
        if not isinstance(message.get("parameters"), dict):
            raise RequestError("parameters must be an object")
        if self.session_id is not None and message.get("id") != self.session_id:
            raise RequestError("id differs from the session id of the handshake")
        self.client_seq = seq

    def _open(self, message: Mapping[str, Any]) -> list[Inbound]:
        if self.opened:
            raise RequestError("a second 'open'")
        self.session_id = self.session_id or str(message["id"])
        parameters = message["parameters"]
        chosen = self._choose_media(parameters.get("media"))
        self.channels = tuple(chosen["channels"])
        encoding, self._bytes_per_sample = FORMATS[chosen["format"]]
        self._silence = b"\xff" if encoding == "mulaw" else b"\0\0"
        self.opened = True
        self.probe = parameters.get("conversationId") == PROBE_CONVERSATION
        start: list[Inbound] = []
        if not self.probe:  # parameters first: an error must not use up a server seq
            custom = parameters.get("customConfig") or {}
            if not isinstance(custom, dict):
                raise RequestError("customConfig must be an object")
            options = {k: v for k, v in custom.items() if k != "language"}  # the open message says it
            if parameters.get("language"):
                self.language = str(parameters["language"])
                options["language"] = self.language
            params = stream_params(
                options,
                self.served_models,
                encoding=encoding,
                sample_rate=8000,
                channels=len(self.channels),
                source="open parameters",
            )
            start = [Start(params, call_id=str(parameters.get("conversationId") or "") or None)]
        else:
            log.info("audiohook session %s: connection probe", self.session_id)
        opened: dict[str, Any] = {"startPaused": False, "media": [chosen]}
        if parameters.get("supportedLanguages"):
            opened["supportedLanguages"] = list(self.served_models)
        return [Reply(self._message("opened", opened)), *start]

    def _choose_media(self, offers: object) -> dict[str, Any]:
        if not isinstance(offers, list) or not offers:
            raise RequestError("open offers no media")
        for offer in offers:  # in the client's order of preference
            if not isinstance(offer, dict):
                continue
            channels = offer.get("channels")
            if (
                offer.get("type") == "audio"
                and offer.get("format") in FORMATS
                and offer.get("rate") == 8000
                and isinstance(channels, list)
                and 0 < len(channels) <= 2
                and all(c in CHANNELS for c in channels)
                and len(set(channels)) == len(channels)
            ):
                return {"type": "audio", "format": offer["format"], "channels": channels, "rate": 8000}
        raise RequestError("none of the offered media is supported (audio, PCMU or L16, 8000 Hz)")

    def _update(self, message: Mapping[str, Any]) -> list[Inbound]:
        language = message["parameters"].get("language")
        if language:
            log.info(
                "audiohook session %s: language update to %s kept the stream's model",
                self.session_id,
                language,
            )
        return [Reply(self._message("updated", {}))]

    def _gap(self, message: Mapping[str, Any]) -> list[Inbound]:
        discarded = parse_duration(message["parameters"].get("discarded", "PT0S"))
        if discarded <= 0 or self.probe:
            return []
        if discarded > MAX_SILENCE_S:
            log.warning(
                "audiohook session %s: %.1f s of audio discarded; %g s of silence keep the times",
                self.session_id,
                discarded,
                MAX_SILENCE_S,
            )
        samples = int(min(discarded, MAX_SILENCE_S) * 8000)
        return [Audio(self._silence * samples * len(self.channels))]

    def _close(self) -> list[Inbound]:
        self.closing = True
        if self.probe:
            return [Reply(self._message("closed", {})), EndOfAudio()]
        return [EndOfAudio()]  # `closed` follows the last finals (finished)

    # ---- what the bridge asks ----

    def outbound(self, event: Event, info: StreamInfo) -> str | None:
        if not isinstance(event, Transcript) or not event.words:
            return None
        if not event.is_final and not info.params.interim_results:
            return None
        words = [
            {
                "type": "word",
                "value": w.word,
                "confidence": round(w.confidence, 4),
                "offset": duration(w.start),
                "duration": duration(max(w.end - w.start, 0.0)),
                "language": self.language,
            }
            for w in event.words
        ]
        transcript = {
            "id": str(uuid.uuid4()),
            "channelId": event.channel,
            "channel": self.channels[event.channel] if event.channel < len(self.channels) else "external",
            "isFinal": event.is_final,
            "offset": duration(event.start),
            "duration": duration(event.duration),
            "alternatives": [
                {
                    "confidence": round(event.confidence, 4),
                    "languages": [self.language],
                    "interpretations": [{"type": "display", "transcript": event.text, "tokens": words}],
                }
            ],
        }
        return self._message("event", {"entities": [{"type": "transcript", "data": transcript}]})

    def finished(self, summary: StreamSummary) -> str | None:
        return self._message("closed", {}) if self.closing else self._disconnect("completed", "")

    def failed(self, detail: str) -> str | None:
        return self._disconnect("error", detail)

    def rejected(self, detail: str) -> str | None:
        return self._disconnect("error", detail)

    def _disconnect(self, reason: str, info: str) -> str:
        parameters = {"reason": reason, **({"info": info[:200]} if info else {})}
        return self._message("disconnect", parameters)

    def close_frame(self, kind: EndKind, detail: str, idle_timeout_s: float) -> tuple[int, str]:
        if kind == "close_stream":
            return 1000, ""
        return super().close_frame(kind, detail, idle_timeout_s)


def _verify_signature(state: ServerState, request: web.Request, api_key: str) -> None:
    secret = state.config.telephony.audiohook_secret_bytes
    assert secret is not None
    checker = SignatureCheck(
        secret_for=lambda keyid: secret if hmac.compare_digest(keyid.encode(), api_key.encode()) else None,
        nonces=state.audiohook_nonces,
        required=SIGNED_COMPONENTS,
    )
    derived = {
        "@request-target": request.path_qs,
        "@authority": request.host.lower(),
        "@method": request.method,
        "@path": request.path,
        "@query": "?" + request.query_string,
        "@scheme": "wss" if state.config.tls_enabled or request.secure else "ws",
    }
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        checker.verify(headers, derived)
    except SignatureError as exc:
        raise AuthError(f"AudioHook signature: {exc}") from None


def accept(state: ServerState, request: web.Request, request_id: str) -> Accepted:
    """X-API-KEY (when the server has keys) and the signature (with a client secret); then `open`."""
    api_key = request.headers.get("X-API-KEY", "")
    key: str | None = None
    if state.config.auth_enabled:
        key = match_key(state.config.api_keys, api_key) if api_key else None
        if key is None:
            raise AuthError("missing or invalid X-API-KEY")
    if state.config.telephony.audiohook_secret_bytes is not None:
        _verify_signature(state, request, api_key)
    session = request.headers.get("Audiohook-Session-Id") or None
    return Accepted(AudioHookDialect(state.model_names, session), default_model(state.model_names), None, key)


__all__ = ["AudioHookDialect", "NonceCache", "accept", "duration"]
