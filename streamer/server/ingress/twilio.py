"""Twilio Media Streams (`/twilio`, WebSocket); also what Telnyx and Fonoster send.

In (JSON text only): `connected`, `start` (callSid, streamSid, tracks, customParameters, mediaFormat),
`media` (base64 8 kHz mu-law per track, `timestamp` in ms from the start of the stream), `dtmf`, `mark`,
`stop`. One track is one channel; `both_tracks` gives two (0 inbound: the caller, 1 outbound: the agent),
aligned in call time by `tracks.TrackAligner` (gaps in a track's timestamps become silence). Language,
model and options come from `customParameters` (`language`, `model`, `interim_results`, `endpointing`,
`utterance_end_ms`, `vad_events`, `tag`, `callback`, `callback_method`, `callback_interim_results`).
Nothing is sent back on the socket (Twilio accepts only media, mark and clear messages): transcripts go
to watchers (`/v1/watch?stream=<callSid>` or `?tag=`) and the webhook.

Authentication: Twilio cannot send an Authorization header. With `--twilio-auth-token`, the handshake's
`X-Twilio-Signature` (base64 HMAC-SHA1 of the exact `wss://` URL, keyed with the auth token) must be
valid; on a server with API keys but no Twilio token, `/twilio` takes only requests with an API key (and
the log says which flag to set); on an open server it is open, like `/v1/listen`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from streamer.audio import Encoding
from streamer.errors import AudioFormatError, RequestError
from streamer.protocol import STREAM_OPTIONS, default_model
from streamer.server.auth import authorize
from streamer.server.errors import AuthError
from streamer.server.ingress.base import (
    Accepted,
    Audio,
    Dialect,
    EndOfAudio,
    Inbound,
    ProtocolError,
    Start,
    json_object,
    stream_params,
)
from streamer.server.ingress.tracks import TrackAligner
from streamer.server.state import ServerState

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Twilio-Signature"
TRACKS = ("inbound", "outbound")
"""Channel order: the caller, then the agent."""
ENCODINGS: dict[str, Encoding] = {
    "audio/x-mulaw": "mulaw",
    "pcmu": "mulaw",
    "audio/x-alaw": "alaw",
    "pcma": "alaw",
}
SILENCE = {"mulaw": 0xFF, "alaw": 0xD5}
MAX_LAG_S = 1.0
"""How far one track may run ahead of the other before the late one is padded with silence."""
MAX_GAP_S = 60.0
"""The largest jump in a track's timestamps filled with silence; beyond, the stream is refused."""


class TwilioDialect(Dialect):
    """Codec of one Media Streams connection (see the module docstring)."""

    name = "twilio"

    def __init__(self, served_models: list[str]) -> None:
        self.served_models = served_models
        self.call_sid: str | None = None
        self.stream_sid: str | None = None
        self.tracks: tuple[str, ...] = ()
        self.rate = 8000
        self._aligner: TrackAligner | None = None
        self._stopped = False

    def receive_binary(self, data: bytes) -> list[Inbound]:
        return [ProtocolError("Media Streams messages are JSON text; a binary frame is not one")]

    def receive_text(self, text: str) -> list[Inbound]:
        message = json_object(text)
        if isinstance(message, ProtocolError):
            return [message]
        if not isinstance(message.get("event"), str):
            return [ProtocolError("a message must be a JSON object with an 'event'")]
        event = message["event"]
        if self._stopped:
            return [ProtocolError(f"{event!r} after 'stop'")]
        try:
            if event == "connected":
                return []
            if event == "start":
                return self._start(message)
            if event == "media":
                return self._media(message)
            if event == "stop":
                self._stopped = True
                rest = self._aligner.flush() if self._aligner is not None else b""
                return [Audio(rest), EndOfAudio()] if rest else [EndOfAudio()]
            if event in ("dtmf", "mark"):
                log.debug("call %s: %s %s", self.call_sid, event, message.get(event))
                return []
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return [ProtocolError(f"malformed {event!r} message: {type(exc).__name__} {exc}")]
        except (RequestError, AudioFormatError) as exc:
            return [ProtocolError(str(exc))]
        return [ProtocolError(f"unknown event {event[:40]!r}")]

    def _start(self, message: Mapping[str, Any]) -> list[Inbound]:
        if self._aligner is not None:
            return [ProtocolError("a second 'start' message")]
        start = message["start"]
        call_sid = str(start.get("callSid") or start.get("call_sid") or message.get("streamSid") or "")
        fmt = start.get("mediaFormat") or start.get("media_format") or {}
        encoding = ENCODINGS.get(str(fmt.get("encoding", "audio/x-mulaw")).lower())
        if encoding is None:
            raise AudioFormatError(f"unsupported media encoding {str(fmt.get('encoding'))[:40]!r}")
        self.rate = int(fmt.get("sampleRate") or fmt.get("sample_rate") or 8000)
        tracks = start.get("tracks") or ["inbound"]
        if not isinstance(tracks, list) or not tracks or any(t not in TRACKS for t in tracks):
            raise RequestError(f"tracks must be a list of {' and '.join(TRACKS)}, got {str(tracks)[:60]}")
        self.tracks = tuple(t for t in TRACKS if t in tracks)  # channel 0 the caller, 1 the agent
        custom = start.get("customParameters") or start.get("custom_parameters") or {}
        if not isinstance(custom, dict):
            raise RequestError("customParameters must be an object")
        passed_over = sorted(set(custom) - STREAM_OPTIONS)
        if passed_over:
            log.debug("call %s: customParameters passed over: %s", call_sid, passed_over)
        params = stream_params(
            custom,
            self.served_models,
            encoding=encoding,
            sample_rate=self.rate,
            channels=len(self.tracks),
            source="customParameters",
        )
        self.call_sid = call_sid or None
        self.stream_sid = str(message.get("streamSid") or start.get("streamSid") or "") or None
        self._aligner = TrackAligner(
            len(self.tracks),
            SILENCE[encoding],
            max_lag=int(MAX_LAG_S * self.rate),
            max_gap=int(MAX_GAP_S * self.rate),
        )
        return [Start(params, call_id=self.call_sid)]

    def _media(self, message: Mapping[str, Any]) -> list[Inbound]:
        if self._aligner is None:
            return [ProtocolError("'media' before 'start'")]
        media = message["media"]
        track = media.get("track", "inbound")
        if track not in self.tracks:
            raise RequestError(f"media of track {str(track)[:20]!r}, which 'start' did not announce")
        try:
            payload = base64.b64decode(media["payload"], validate=True)
        except (binascii.Error, ValueError):
            raise RequestError("media payload is not valid base64") from None
        timestamp = media.get("timestamp")
        channel = self.tracks.index(track)
        if timestamp is None:  # no time stamp: the audio follows what the track already has
            self._aligner.add(channel, self._aligner.position(channel), payload)
        else:
            self._aligner.add(channel, int(timestamp) * self.rate // 1000, payload)
        ready = self._aligner.take()
        return [Audio(ready)] if ready else []


def signature(auth_token: str, url: str, params: Mapping[str, str] | None = None) -> str:
    """Twilio's request signature: base64 HMAC-SHA1 over the URL and the sorted POST parameters."""
    data = url + "".join(f"{k}{v}" for k, v in sorted((params or {}).items()))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def _candidate_urls(state: ServerState, request: web.Request) -> list[str]:
    """The URLs Twilio may have signed: `--public-url` or the Host it dialled, with and without :443."""
    base = state.config.telephony.public_url or f"wss://{request.host}"
    url = base + request.path_qs
    scheme, _, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    urls = [url]
    if host.endswith(":443"):
        urls.append(f"{scheme}://{host[:-4]}{slash}{path}")
    elif ":" not in host.rsplit("]", 1)[-1]:
        urls.append(f"{scheme}://{host}:443{slash}{path}")
    return urls


def _check_signature(state: ServerState, request: web.Request, token: str) -> None:
    given = request.headers.get(SIGNATURE_HEADER, "")
    if not given:
        raise AuthError(f"missing {SIGNATURE_HEADER}")
    valid = False
    for url in _candidate_urls(state, request):  # every candidate: no early exit
        valid = hmac.compare_digest(signature(token, url).encode(), given.encode()) or valid
    if not valid:
        raise AuthError(f"invalid {SIGNATURE_HEADER} (if a proxy changes the Host, set --public-url)")


def accept(state: ServerState, request: web.Request, request_id: str) -> Accepted:
    """Signature, API key or an open server; the stream's parameters come with the `start` message."""
    token = state.config.telephony.twilio_auth_token
    key: str | None = None
    if token is not None and SIGNATURE_HEADER in request.headers:
        _check_signature(state, request, token)
    elif state.config.auth_enabled and "Authorization" in request.headers:
        key = authorize(state.config.api_keys, request)
    elif token is not None:
        _check_signature(state, request, token)  # raises: no signature
    elif state.config.auth_enabled:
        log.warning("request %s: /twilio refused: API keys are set but no --twilio-auth-token", request_id)
        raise AuthError("Twilio requests are not accepted: the server needs --twilio-auth-token")
    served = state.model_names
    default = default_model(served)
    return Accepted(TwilioDialect(served), default, None, key)
