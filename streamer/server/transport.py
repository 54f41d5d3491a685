"""What the live-stream bridge needs of a connection, whatever carries it (WebSocket, raw TCP).

A `Connection` yields `Frame`s (`await receive(timeout)`, TimeoutError when nothing came), sends text
(`await send_text`, ConnectionError or RuntimeError once the peer is gone) and closes with a code and a
reason (`await close`; a transport without close codes ignores them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

FrameKind = Literal["text", "binary", "closed", "error"]


@dataclass(frozen=True)
class Frame:
    """One message from the peer: `text` or `binary` data, or the end of the connection (`closed`, or
    `error` with a `detail` such as "message too big")."""

    kind: FrameKind
    text: str = ""
    data: bytes = b""
    detail: str = ""


class Connection(Protocol):
    """One client connection as the live-stream bridge sees it."""

    @property
    def closed(self) -> bool: ...

    @property
    def close_code(self) -> int | None: ...

    async def receive(self, timeout: float | None = None) -> Frame: ...

    async def send_text(self, text: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


def reason_bytes(reason: str) -> bytes:
    """A close frame's reason cut to the 123 bytes of UTF-8 that WebSocket allows."""
    data = reason.encode()
    return data if len(data) <= 123 else data[:120].decode(errors="ignore").encode() + b"..."
