"""Asterisk AudioSocket (a TCP listener on its own port, `--audiosocket-port`).

Every packet is a kind byte, a 2-byte big-endian payload length and the payload (Asterisk's
`res_audiosocket`): 0x01 the call's UUID (16 bytes, first), 0x10 audio as signed linear 16-bit
little-endian mono at 8 kHz (0x11-0x16: 12, 16, 24, 32, 44.1 and 48 kHz), 0x03 a DTMF digit, 0x00
hangup, 0xff an error (one code byte). One connection is one call leg and one stream; the UUID is its
call id (watch it with `/v1/watch?stream=UUID`). The protocol has no authentication and no way to name a
language: streams use the server's default model, and the port belongs on a private network.
Nothing is sent back; the connection is closed when the stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid

from streamer.protocol import default_model
from streamer.server.ingress.base import (
    Accepted,
    Audio,
    Dialect,
    EndOfAudio,
    Inbound,
    ProtocolError,
    Start,
    stream_params,
)
from streamer.server.live import LiveStream
from streamer.server.state import ServerState
from streamer.server.transport import Frame

log = logging.getLogger(__name__)

KIND_HANGUP = 0x00
KIND_UUID = 0x01
KIND_DTMF = 0x03
KIND_ERROR = 0xFF
AUDIO_RATES = {0x10: 8000, 0x11: 12000, 0x12: 16000, 0x13: 24000, 0x14: 32000, 0x15: 44100, 0x16: 48000}
ERRORS = {0x00: "none", 0x01: "hangup", 0x02: "frame forwarding", 0x04: "memory"}
READ_BYTES = 64 * 1024
RECEIVE_BUFFER_BYTES = 256 * 1024


def packet(kind: int, payload: bytes = b"") -> bytes:
    """One AudioSocket packet (for clients and tests)."""
    return bytes([kind]) + len(payload).to_bytes(2, "big") + payload


class AudioSocketDialect(Dialect):
    """Codec of one AudioSocket connection: reassembles packets from the TCP byte stream."""

    name = "audiosocket"

    def __init__(self, served_models: list[str]) -> None:
        self.served_models = served_models
        self.call_id: str | None = None
        self.rate: int | None = None
        self._buffer = bytearray()
        self._ended = False

    def receive_text(self, text: str) -> list[Inbound]:  # a TCP transport only yields bytes
        return [ProtocolError("AudioSocket is a binary protocol")]

    def receive_binary(self, data: bytes) -> list[Inbound]:
        self._buffer += data
        items: list[Inbound] = []
        while len(self._buffer) >= 3 and not self._ended:
            length = int.from_bytes(self._buffer[1:3], "big")
            if len(self._buffer) < 3 + length:
                break
            kind, payload = self._buffer[0], bytes(self._buffer[3 : 3 + length])
            del self._buffer[: 3 + length]
            items += self._packet(kind, payload)
            if items and isinstance(items[-1], ProtocolError | EndOfAudio):
                self._ended = True
        return items

    def _packet(self, kind: int, payload: bytes) -> list[Inbound]:
        if kind == KIND_UUID:
            if self.call_id is not None:
                return [ProtocolError("a second UUID packet")]
            if len(payload) != 16:
                return [ProtocolError(f"a UUID packet carries 16 bytes, not {len(payload)}")]
            self.call_id = str(uuid.UUID(bytes=payload))
            return []
        if self.call_id is None:
            return [ProtocolError(f"packet kind 0x{kind:02x} before the UUID")]
        if kind in AUDIO_RATES:
            return self._audio(AUDIO_RATES[kind], payload)
        if kind == KIND_HANGUP:
            return [EndOfAudio()]
        if kind == KIND_DTMF:
            log.debug("audiosocket call %s: DTMF %r", self.call_id, payload[:1])
            return []
        if kind == KIND_ERROR:
            code = payload[0] if payload else 0
            log.info(
                "audiosocket call %s: Asterisk reports error %s", self.call_id, ERRORS.get(code, hex(code))
            )
            return [EndOfAudio()]
        return [ProtocolError(f"unknown packet kind 0x{kind:02x}")]

    def _audio(self, rate: int, payload: bytes) -> list[Inbound]:
        if self.rate is None:
            self.rate = rate
            params = stream_params({}, self.served_models, encoding="linear16", sample_rate=rate)
            return [Start(params, call_id=self.call_id), Audio(payload)]
        if rate != self.rate:
            return [ProtocolError(f"audio at {rate} Hz after audio at {self.rate} Hz")]
        return [Audio(payload)]


class TcpConnection:
    """A TCP connection as a `streamer.server.transport.Connection`: bytes in, nothing meaningful out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._eof = False

    @property
    def closed(self) -> bool:
        return self._eof or self.writer.is_closing()

    @property
    def close_code(self) -> int | None:
        return None

    async def receive(self, timeout: float | None = None) -> Frame:
        if self.closed:
            return Frame("closed")
        try:
            async with asyncio.timeout(timeout):
                data = await self.reader.read(READ_BYTES)
        except TimeoutError:
            raise  # nothing came in time: the bridge's idle timeout (TimeoutError is an OSError)
        except (ConnectionError, OSError) as exc:
            self._eof = True
            return Frame("error", detail=str(exc))
        if not data:
            self._eof = True
            return Frame("closed")
        return Frame("binary", data=data)

    async def send_text(self, text: str) -> None:
        raise ConnectionError("AudioSocket carries no text")

    async def close(self, code: int, reason: str) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def serve_connection(
    state: ServerState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """One AudioSocket connection: admission, then the live-stream bridge (as `websocket_endpoint`)."""
    request_id = str(uuid.uuid4())
    peer = writer.get_extra_info("peername")
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
    served = state.model_names
    model = default_model(served)
    connection = TcpConnection(reader, writer)
    try:
        if not state.accepting:
            raise ConnectionRefusedError("the server is shutting down")
        live = LiveStream(state, connection, Accepted(AudioSocketDialect(served), model, None), request_id)
        state.reserve("live", model, None)
    except Exception as exc:  # refusal: AudioSocket has no way to say why but the log
        log.info("audiosocket connection %s from %s refused: %s", request_id, peer, exc)
        state.metrics.rejected.labels("overload").inc()
        await connection.close(0, "")
        return

    async def prepare() -> None:
        return None

    await live.serve(prepare)


async def start_listener(state: ServerState, host: str, port: int) -> asyncio.Server:
    """Listen for AudioSocket connections; the caller closes the returned server."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_connection(state, reader, writer)

    server = await asyncio.start_server(handle, host, port, limit=READ_BYTES)
    bound = server.sockets[0].getsockname()
    state.audiosocket_port = int(bound[1])
    log.info("AudioSocket listening on %s:%d (no authentication: keep it on a private network)", *bound[:2])
    return server


async def adopt(state: ServerState, sock: socket.socket) -> None:
    """Serve an AudioSocket connection that another process accepted (a worker of `--workers`)."""

    def protocol() -> asyncio.StreamReaderProtocol:
        reader = asyncio.StreamReader(limit=READ_BYTES)
        return asyncio.StreamReaderProtocol(reader, handle)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_connection(state, reader, writer)

    await asyncio.get_running_loop().connect_accepted_socket(protocol, sock)
