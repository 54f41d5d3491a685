"""Stream resume tokens: a stream cut by a restart continues on any replica that shares the secret.

    codec = ResumeCodec(secret, ttl_s=300)
    issuer = ResumeIssuer(codec, request_id, query, key, channels)  # one per /v1/listen stream
    issuer.update(transcript)  # each final -> {"token": ..., "from": seconds} for the Results message
    resume = codec.open(token, key, resume_from)  # at the next handshake; raises ResumeError

A token is stateless and signed (HMAC-SHA256): it holds the stream's request id, the query parameters it
was opened with, per channel the 16 kHz stream sample up to which its finals were sent, a fingerprint
of the API key (a token works only with the key that opened the stream) and an expiry. The client
reconnects with `resume=TOKEN&resume_from=SECONDS` (where the audio it replays starts) and replays its
audio from there; the server drops per channel what was already final, so every word is final once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streamer import SAMPLE_RATE
from streamer.errors import RequestError
from streamer.stream import StreamStart
from streamer.transcript import Transcript

VERSION = 1
RESUME_PARAMS = ("resume", "resume_from")
"""Query parameters of a resuming handshake; every other parameter comes from the token."""
MAX_TOKEN_CHARS = 8192


class ResumeError(RequestError):
    """A resume token that cannot be used: malformed, forged, expired, or another key's (400)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "resume")


@dataclass(frozen=True)
class Resume:
    """A verified resume request: whose stream, with which parameters, from where."""

    request_id: str
    query: tuple[tuple[str, str], ...]
    start: StreamStart

    @property
    def lost_seconds(self) -> float:
        """Audio between a channel's last final and a later replay start: gone (the client lacked it)."""
        lost = max((self.start.at - end for end in self.start.final_through), default=0)
        return max(lost, 0) / SAMPLE_RATE


class ResumeCodec:
    """Signs and verifies tokens with one secret; `ttl_s` is how long a token is valid after issue."""

    def __init__(self, secret: bytes | None, ttl_s: float) -> None:
        self.shared = secret is not None
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self.ttl_s = ttl_s

    def key_print(self, key: str | None) -> str:
        """A keyed fingerprint of the API key (the token does not reveal the key or a plain hash of it)."""
        if key is None:
            return ""
        return hmac.new(self._secret, b"api-key\0" + key.encode(), hashlib.sha256).hexdigest()[:32]

    def seal(self, payload: Mapping[str, Any]) -> str:
        body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).rstrip(b"=")
        mac = base64.urlsafe_b64encode(self._mac(body)).rstrip(b"=")
        return (body + b"." + mac).decode()

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._secret, b"resume\0" + body, hashlib.sha256).digest()

    def open(self, token: str, key: str | None, resume_from: str | None, now: float | None = None) -> Resume:
        """Verify `token` for a client holding `key`; `resume_from` (seconds, default: where the token
        says finals end) is where the replayed audio starts. Raises ResumeError."""
        payload = self._verify(token)
        now = time.time() if now is None else now
        try:
            request_id = str(payload["id"])
            query = tuple((str(k), str(v)) for k, v in payload["q"])
            ends = [int(e) for e in payload["f"]]
            expires = float(payload["x"])
            key_print = str(payload["k"])
        except (KeyError, TypeError, ValueError):
            raise ResumeError("the resume token is malformed") from None
        if not ends or min(ends) < 0:
            raise ResumeError("the resume token is malformed")
        if now > expires:
            raise ResumeError(f"the resume token expired {now - expires:.0f} s ago; start a new stream")
        if not hmac.compare_digest(key_print, self.key_print(key)):
            raise ResumeError("the resume token belongs to another API key")
        if resume_from is None:
            at = min(ends)
        else:
            try:
                seconds = float(resume_from)
            except ValueError:
                raise ResumeError(f"resume_from must be seconds, got {resume_from[:40]!r}") from None
            if not 0 <= seconds < 1e7:
                raise ResumeError(f"resume_from must be >= 0 s, got {resume_from[:40]!r}")
            at = round(seconds * SAMPLE_RATE)
        return Resume(request_id, query, StreamStart(at, tuple(ends)))

    def _verify(self, token: str) -> dict[str, Any]:
        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
            raise ResumeError("the resume token is malformed")
        body, mac = token.encode().split(b".")
        try:
            given = base64.urlsafe_b64decode(mac + b"=" * (-len(mac) % 4))
            if not hmac.compare_digest(given, self._mac(body)):
                raise ResumeError(
                    "the resume token's signature does not match (issued by a server with another "
                    "--resume-secret, or altered)"
                )
            payload = json.loads(base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4)))
        except (binascii.Error, ValueError):
            raise ResumeError("the resume token is malformed") from None
        if not isinstance(payload, dict) or payload.get("v") != VERSION:
            raise ResumeError("the resume token is from an incompatible server version")
        return payload


class ResumeIssuer:
    """The current resume token of one stream, updated by each final it sends."""

    def __init__(
        self,
        codec: ResumeCodec,
        request_id: str,
        query: Sequence[tuple[str, str]],
        key: str | None,
        final_through: Sequence[int],
    ) -> None:
        self._codec = codec
        self._base = {
            "v": VERSION,
            "id": request_id,
            "q": [list(p) for p in query],
            "k": codec.key_print(key),
        }
        self.final_through = list(final_through)

    def update(self, transcript: Transcript) -> dict[str, object]:
        """The `resume` field for a final `transcript`: a fresh token and where a replay starts."""
        if transcript.final_through is not None:
            channel = transcript.channel
            self.final_through[channel] = max(self.final_through[channel], transcript.final_through)
        return self.current()

    def current(self) -> dict[str, object]:
        token = self._codec.seal(
            {**self._base, "f": self.final_through, "x": round(time.time() + self._codec.ttl_s)}
        )
        return {"token": token, "from": min(self.final_through) / SAMPLE_RATE}


def listen_query(query: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The parameters a stream was opened with, as a token keeps them (never the resume ones)."""
    return tuple((k, v) for k, v in query.items() if k not in RESUME_PARAMS)
