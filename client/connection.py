"""The WebSocket side: open `/v1/listen` with errors mapped to one-line messages, then run one stream.

`connect_listen(url, api_key)` returns an open connection or raises ConnectError / RejectedError.
`StreamSession(ws, source, on_text).run()` sends the source's blocks and CloseStream from one task while
another hands every text message to `on_text`; it returns once the server has closed after the final
results (or raises StreamError for an error close, a lost connection, or no answer within `close_timeout`).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)
from websockets.frames import Close

from client.errors import ConnectError, RejectedError, StreamError, UsageError
from client.sources import BYTES_PER_SECOND

CLOSE_STREAM = json.dumps({"type": "CloseStream"})
METADATA_GRACE_S = 2.0
"""After Metadata the server should close at once; if it does not within this, the client closes."""
USER_AGENT = "streamer-client/0.1"

CLOSE_NAMES = {
    1000: "normal closure",
    1001: "going away",
    1002: "protocol error",
    1003: "unsupported data",
    1006: "connection lost",
    1007: "invalid data",
    1008: "policy violation",
    1009: "message too big",
    1011: "server error",
    1012: "service restart",
    1013: "try again later",
}


def rejection_message(status: int, body: bytes | bytearray, reason: str = "") -> str:
    """One line for an HTTP error at the handshake, using the JSON body's err_msg when there is one."""
    detail = ""
    text = bytes(body).decode("utf-8", "replace").strip()
    if text:
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            for key in ("err_msg", "message", "error", "detail", "description"):
                if isinstance(data.get(key), str) and data[key]:
                    detail = data[key]
                    break
        if not detail:
            detail = " ".join(text.split())[:200]
    detail = detail or reason
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    head = f"HTTP {status}" + (f" {phrase}" if phrase else "")
    if status == 401:
        lead = "the server refused the API key"
        hint = " (pass --api-key or set STREAMER_API_KEY)"
    elif status == 403:
        lead, hint = "the server refused access", ""
    elif status == 400:
        lead, hint = "the server rejected the stream parameters", ""
    elif status == 404:
        lead, hint = "no /v1/listen endpoint at this URL", " (check --url)"
    else:
        lead, hint = "the server refused the connection", ""
    return f"{lead} ({head}): {detail}{hint}" if detail else f"{lead} ({head}){hint}"


def close_message(code: int, reason: str) -> str:
    name = CLOSE_NAMES.get(code, "")
    label = f"{code} {name}" if name else str(code)
    return f"the server closed the stream with code {label}" + (f": {reason}" if reason else "")


async def connect_listen(
    url: str, api_key: str | None = None, *, open_timeout: float = 10.0
) -> ClientConnection:
    """Open the WebSocket; every failure becomes a ClientError with a message fit for one line."""
    headers = {"Authorization": f"Token {api_key}"} if api_key else None
    try:
        return await connect(
            url,
            additional_headers=headers,
            user_agent_header=USER_AGENT,
            open_timeout=open_timeout,
            # Audio barely compresses; deflate would only cost CPU on both ends.
            compression=None,
            close_timeout=2.0,
            max_size=None,
        )
    except InvalidStatus as exc:
        response = exc.response
        message = rejection_message(response.status_code, response.body, response.reason_phrase)
        raise RejectedError(message, response.status_code) from None
    except InvalidURI as exc:
        raise UsageError(f"invalid server URL {url!r}: {exc}") from None
    except TimeoutError:
        raise ConnectError(f"timed out after {open_timeout:g} s connecting to {_where(url)}") from None
    except socket.gaierror as exc:
        raise ConnectError(
            f"cannot resolve the server host in {_where(url)}: {exc.strerror or exc}"
        ) from None
    except ConnectionRefusedError:
        raise ConnectError(
            f"cannot connect to {_where(url)}: connection refused (is the server running?)"
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        if "refused" in reason.lower():
            reason += " (is the server running?)"
        raise ConnectError(f"cannot connect to {_where(url)}: {reason}") from None
    except InvalidHandshake as exc:
        raise ConnectError(f"WebSocket handshake with {_where(url)} failed: {exc}") from None


def _where(url: str) -> str:
    """The URL without its query, which only repeats what the user typed as options."""
    return url.split("?", 1)[0]


@dataclass
class StreamOutcome:
    """How the stream ended: what was sent, and the close the server sent (None when the client closed)."""

    sent_bytes: int = 0
    close_sent: bool = False
    received: int = 0
    """Text messages received."""
    metadata: dict[str, Any] | None = None
    close_code: int | None = None
    close_reason: str = ""

    @property
    def sent_seconds(self) -> float:
        return self.sent_bytes / BYTES_PER_SECOND


class BlockSource(Protocol):
    """Where a stream's audio comes from: an `AudioSource`, or a `client.resume.ResumableFeed`."""

    def blocks(self) -> AsyncIterator[bytes]: ...


class StreamSession:
    """One stream over an open connection; see the module docstring. `run()` may be called once."""

    def __init__(
        self,
        ws: ClientConnection,
        source: BlockSource,
        on_text: Callable[[str], None],
        *,
        on_sent: Callable[[float], None] | None = None,
        close_timeout: float = 10.0,
    ) -> None:
        self.ws = ws
        self.source = source
        self.on_text = on_text
        self.on_sent = on_sent or (lambda seconds: None)
        self.close_timeout = close_timeout
        self.outcome = StreamOutcome()

    async def run(self) -> StreamOutcome:
        sender = asyncio.create_task(self._send(), name="client-sender")
        receiver = asyncio.create_task(self._receive(), name="client-receiver")
        try:
            done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if sender in done:
                sender.result()  # a failing source (unreadable file) ends the run with its error
                try:
                    await asyncio.wait_for(asyncio.shield(receiver), self.close_timeout)
                except TimeoutError:
                    # recv() only ends when the TCP connection does; a server that sent its close frame
                    # but keeps the socket open has still told us how the stream ended.
                    frame = self.ws.protocol.close_rcvd
                    if frame is not None:
                        self._record_close(frame)
                        return self._checked()
                    raise StreamError(
                        f"no final results within {self.close_timeout:g} s after CloseStream; giving up"
                    ) from None
            receiver.result()
        finally:
            for task in (sender, receiver):
                task.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)
            await self.ws.close()
        return self._checked()

    async def _send(self) -> None:
        outcome = self.outcome
        blocks = self.source.blocks()
        try:
            async for block in blocks:
                if not block:
                    continue  # an empty binary frame means "end of stream" to Deepgram servers
                await self.ws.send(block)
                outcome.sent_bytes += len(block)
                self.on_sent(outcome.sent_seconds)
            await self.ws.send(CLOSE_STREAM)
            outcome.close_sent = True
        except ConnectionClosed:
            pass  # the receiver sees the same close and reports it
        finally:
            # Close a generator source now (it may hold a file), not whenever it is garbage-collected.
            aclose = getattr(blocks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _receive(self) -> None:
        outcome = self.outcome
        while True:
            # Once Metadata has come after CloseStream nothing else is due; do not hang on a lazy close.
            timeout = METADATA_GRACE_S if outcome.metadata is not None and outcome.close_sent else None
            try:
                message = await asyncio.wait_for(self.ws.recv(), timeout)
            except TimeoutError:
                return
            except ConnectionClosed as exc:
                self._record_close(exc.rcvd)
                return
            if isinstance(message, str):
                outcome.received += 1
                if _is_metadata(message):
                    outcome.metadata = _loads_or_empty(message)
                self.on_text(message)

    def _record_close(self, frame: Close | None) -> None:
        # No close frame means the TCP connection dropped: report it like the 1006 of the RFC.
        self.outcome.close_code = frame.code if frame is not None else 1006
        self.outcome.close_reason = frame.reason if frame is not None else ""

    def _checked(self) -> StreamOutcome:
        """The outcome, or StreamError when the server's close says the stream failed."""
        code = self.outcome.close_code
        if code is None or code == 1000:
            return self.outcome
        if code == 1006:
            raise StreamError("lost the connection to the server before the stream ended")
        raise StreamError(close_message(code, self.outcome.close_reason))


def _is_metadata(text: str) -> bool:
    # Cheap pre-check: only parse the messages that might be Metadata.
    return '"Metadata"' in text and _loads_or_empty(text).get("type") == "Metadata"


def _loads_or_empty(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
