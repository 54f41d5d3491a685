"""Small, faithful clients of the phone platforms' streaming protocols, written from their published
specifications, for tests (no installable client exists here for these):

- `AudioHookClient`: Genesys Cloud AudioHook Monitor protocol v2 ("AudioHook Protocol Specification",
  Genesys Cloud Developer Center): the handshake headers (Audiohook-Organization-Id, -Correlation-Id,
  -Session-Id, X-API-KEY) signed per RFC 9421 (HMAC-SHA256, keyid, nonce, created, expires), the open
  transaction, ping, update, paused/resumed/discarded, the close transaction; `seq`/`serverseq`
  bookkeeping; `position` advanced by the audio sent.

The signer here builds the RFC 9421 signature base by hand, independently of the server's verifier.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

SIGNED = (
    "@request-target",
    "@authority",
    "audiohook-organization-id",
    "audiohook-session-id",
    "audiohook-correlation-id",
    "x-api-key",
)


def audiohook_headers(
    host: str,
    path: str,
    api_key: str,
    secret: bytes | None,
    session_id: str,
    *,
    created: int | None = None,
    expires_in: int = 30,
    nonce: str | None = None,
) -> dict[str, str]:
    """The handshake headers Genesys sends, signed with `secret` when given (RFC 9421 section 3.1)."""
    headers = {
        "Audiohook-Organization-Id": str(uuid.uuid4()),
        "Audiohook-Correlation-Id": str(uuid.uuid4()),
        "Audiohook-Session-Id": session_id,
        "X-API-KEY": api_key,
    }
    if secret is None:
        return headers
    created = int(time.time()) if created is None else created
    nonce = nonce or secrets.token_urlsafe(16)
    values = {"@request-target": path, "@authority": host, **{k.lower(): v for k, v in headers.items()}}
    components = " ".join(f'"{c}"' for c in SIGNED)
    params = (
        f'({components});keyid="{api_key}";nonce="{nonce}";alg="hmac-sha256";'
        f"created={created};expires={created + expires_in}"
    )
    lines = [f'"{c}": {values[c]}' for c in SIGNED] + [f'"@signature-params": {params}']
    digest = hmac.new(secret, "\n".join(lines).encode(), hashlib.sha256).digest()
    headers["Signature-Input"] = f"sig1={params}"
    headers["Signature"] = f"sig1=:{base64.b64encode(digest).decode()}:"
    return headers


@dataclass
class AudioHookClient:
    """One AudioHook session as Genesys runs it. `await open(...)`, `await send_audio(bytes)`,
    `await close()`; `received` holds every server message, in order."""

    url: str
    headers: dict[str, str]
    session_id: str
    seq: int = 0
    serverseq: int = 0
    samples: int = 0
    """Samples per channel sent: the position."""
    channels: int = 2
    received: list[dict[str, Any]] = field(default_factory=list)
    ws: ClientConnection | None = None

    async def connect(self) -> None:
        self.ws = await connect(self.url, additional_headers=self.headers)

    def _position(self) -> str:
        return f"PT{self.samples / 8000:g}S"

    async def send(self, kind: str, parameters: dict[str, Any], **overrides: Any) -> None:
        assert self.ws is not None
        self.seq += 1
        message = {
            "version": "2",
            "id": self.session_id,
            "type": kind,
            "seq": self.seq,
            "serverseq": self.serverseq,
            "position": self._position(),
            "parameters": parameters,
            **overrides,
        }
        await self.ws.send(json.dumps(message))

    async def receive(self) -> dict[str, Any]:
        assert self.ws is not None
        message = json.loads(await self.ws.recv())
        assert isinstance(message, dict), message
        self.serverseq = message["seq"]
        self.received.append(message)
        return message

    async def open(
        self,
        *,
        conversation_id: str | None = None,
        media: list[dict[str, Any]] | None = None,
        language: str = "en-US",
        custom: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        offers = media or [
            {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000},
            {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000},
        ]
        parameters: dict[str, Any] = {
            "organizationId": str(uuid.uuid4()),
            "conversationId": conversation_id or str(uuid.uuid4()),
            "participant": {"id": str(uuid.uuid4()), "ani": "+15550100", "aniName": "", "dnis": "+15550199"},
            "media": offers,
            "language": language,
            "supportedLanguages": True,
        }
        if custom is not None:
            parameters["customConfig"] = custom
        await self.send("open", parameters)
        opened = await self.receive()
        assert opened["type"] == "opened", opened
        self.channels = len(opened["parameters"]["media"][0]["channels"])
        return opened

    async def send_audio(self, data: bytes, frame_samples: int = 160) -> None:
        """Interleaved audio in frames of `frame_samples` per channel (20 ms at 8 kHz by default)."""
        assert self.ws is not None
        step = frame_samples * self.channels
        for offset in range(0, len(data), step):
            chunk = data[offset : offset + step]
            await self.ws.send(chunk)
            self.samples += len(chunk) // self.channels

    async def close(self, reason: str = "end") -> list[dict[str, Any]]:
        """The close transaction: everything the server sends up to and including `closed`."""
        await self.send("close", {"reason": reason})
        return await self.until("closed")

    async def until(self, kind: str) -> list[dict[str, Any]]:
        got = []
        try:
            while True:
                message = await self.receive()
                got.append(message)
                if message["type"] == kind:
                    return got
        except ConnectionClosed:
            return got

    def transcripts(self, channel: int | None = None, final: bool = True) -> list[dict[str, Any]]:
        out = []
        for message in self.received:
            if message["type"] != "event":
                continue
            for entity in message["parameters"]["entities"]:
                data = entity["data"]
                wanted = channel is None or data["channelId"] == channel
                if entity["type"] == "transcript" and data["isFinal"] == final and wanted:
                    out.append(data)
        return out


def transcript_words(entities: list[dict[str, Any]]) -> list[str]:
    return [t["value"] for e in entities for t in e["alternatives"][0]["interpretations"][0]["tokens"]]
