"""Audio forks (`/fork`, WebSocket): FreeSWITCH mod_audio_fork and mod_audio_stream, jambonz `listen`,
Vonage's WebSocket endpoint.

The platform connects (subprotocol `audio.drachtio.org` for mod_audio_fork, `audio.jambonz.org` for
jambonz; none for mod_audio_stream and Vonage) and sends one text frame of metadata, then binary L16
(16-bit little-endian) audio, 8 or 16 kHz, mono, mixed or stereo (interleaved, the caller first).
Metadata (JSON) may carry `sampleRate`/`sample_rate`, `mixType`/`mix_type` (`mono`, `mixed`,
`stereo`), Vonage's `content-type` (`audio/l16;rate=16000`), a call id (`callSid`, `callId`, `uuid`,
`call_id`, `conversation_uuid`) and options (`language`, `model`, `tag`, `callback`, ...); the URL's
query parameters give defaults for all of them. Audio without metadata starts the stream from the query.
With the drachtio and jambonz subprotocols, transcripts come back on the socket as
`{"type": "transcription", ...}` JSON; otherwise nothing is sent back. Later text frames (DTMF and other
platform events) are logged. Authentication: an API key in `Authorization` (Basic with the key as
password, which mod_audio_fork and jambonz `wsAuth` send, or Token).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from streamer.errors import RequestError
from streamer.protocol import parse_listen_params
from streamer.server.auth import authorize, offered_protocols
from streamer.server.ingress.base import (
    Accepted,
    Audio,
    Dialect,
    Inbound,
    ProtocolError,
    Start,
    StreamInfo,
    json_object,
    stream_params,
)
from streamer.server.state import ServerState
from streamer.transcript import Event, Transcript

log = logging.getLogger(__name__)

SUBPROTOCOLS = ("audio.drachtio.org", "audio.jambonz.org")
"""Subprotocols whose clients take transcripts back on the socket."""
CALL_IDS = ("callSid", "callId", "call_id", "uuid", "conversation_uuid")
MIX_CHANNELS = {"mono": 1, "mixed": 1, "stereo": 2}
_RATE_IN_TYPE = re.compile(r"rate=(\d+)")


class ForkDialect(Dialect):
    """Codec of one fork connection (see the module docstring)."""

    name = "fork"

    def __init__(self, served_models: list[str], query: Mapping[str, str], subprotocol: str | None) -> None:
        self.served_models = served_models
        self.query = dict(query)
        self.subprotocol = subprotocol
        self.started = False

    def receive_text(self, text: str) -> list[Inbound]:
        message = json_object(text, "metadata")
        if isinstance(message, ProtocolError):
            return [message]
        if self.started:
            log.debug("fork event %s", str(message)[:200])
            return []
        return self._start(message)

    def receive_binary(self, data: bytes) -> list[Inbound]:
        if self.started:
            return [Audio(data)]
        return [*self._start({}), Audio(data)]  # no metadata: the URL's parameters say it all

    def _start(self, metadata: Mapping[str, Any]) -> list[Inbound]:
        settings = {k: str(v) for k, v in self.query.items()}
        settings.update({k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in metadata.items()})
        rate = settings.get("sampleRate") or settings.get("sample_rate")
        content_type = settings.get("content-type", "")
        if content_type:
            if not content_type.lower().startswith("audio/l16"):
                return [ProtocolError(f"unsupported content-type {content_type[:40]!r}; send audio/l16")]
            found = _RATE_IN_TYPE.search(content_type)
            rate = found.group(1) if found else rate
        mix = settings.get("mixType") or settings.get("mix_type") or "mono"
        channels = MIX_CHANNELS.get(mix.lower())
        if channels is None:
            return [ProtocolError(f"unknown mix type {mix[:20]!r}; use mono, mixed or stereo")]
        try:
            params = stream_params(
                settings,
                self.served_models,
                encoding="linear16",
                sample_rate=int(rate or 8000),
                channels=channels,
                source="metadata",
            )
        except (RequestError, ValueError) as exc:
            return [ProtocolError(f"metadata: {exc}" if isinstance(exc, ValueError) else str(exc))]
        self.started = True
        call = next((settings[k] for k in CALL_IDS if settings.get(k)), None)
        return [Start(params, call_id=call)]

    def outbound(self, event: Event, info: StreamInfo) -> str | None:
        if self.subprotocol not in SUBPROTOCOLS or not isinstance(event, Transcript):
            return None
        if not event.is_final and not info.params.interim_results:
            return None
        return json.dumps(
            {
                "type": "transcription",
                "is_final": event.is_final,
                "channel": event.channel,
                "start": round(event.start, 3),
                "duration": round(event.duration, 3),
                "transcript": event.text,
                "confidence": round(event.confidence, 4),
                "words": [
                    {
                        "word": w.word,
                        "start": round(w.start, 3),
                        "end": round(w.end, 3),
                        "confidence": round(w.confidence, 4),
                    }
                    for w in event.words
                ],
                "stream_id": info.id,
            },
            separators=(",", ":"),
        )


def accept(state: ServerState, request: web.Request, request_id: str) -> Accepted:
    """API key (when the server has keys); query options are checked when the stream starts."""
    key = authorize(state.config.api_keys, request)
    offered = offered_protocols(request)
    chosen = next((p for p in SUBPROTOCOLS if p in offered), None)
    served = state.model_names
    query = dict(request.query)
    model = parse_listen_params({k: v for k, v in query.items() if k in ("language", "model")}, served).model
    return Accepted(ForkDialect(served, query, chosen), model, None, key, (chosen,) if chosen else ())
