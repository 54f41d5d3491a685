"""Asterisk AudioSocket on its own TCP port: the packet codec (kind, 16-bit big-endian length, payload,
as Asterisk's res_audiosocket frames it) and calls against a real server with a faithful TCP client."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest
import soxr

from streamer.audio import float_to_linear16
from streamer.config import DeliveryConfig, Limits, TelephonyConfig
from streamer.server import STATE
from streamer.server.ingress.audiosocket import AudioSocketDialect, packet
from streamer.server.ingress.base import Audio, EndOfAudio, ProtocolError, Start
from tests.receivers import Receiver, words
from tests.test_server import config, serve
from tests.test_twilio import call_audio

CALL = uuid.UUID("4f2c1c7e-9d7a-4c7b-a1a6-2f1e3d4c5b6a")


def test_packets_split_anywhere_across_reads() -> None:
    d = AudioSocketDialect(["en"])
    wire = packet(0x01, CALL.bytes) + packet(0x10, b"\x01\x00" * 160) + packet(0x03, b"5") + packet(0x00)
    items = []
    for i in range(0, len(wire), 7):  # TCP may cut anywhere
        items += d.receive_binary(wire[i : i + 7])
    starts = [i for i in items if isinstance(i, Start)]
    assert len(starts) == 1 and starts[0].call_id == str(CALL)
    assert (starts[0].params.encoding, starts[0].params.sample_rate) == ("linear16", 8000)
    assert b"".join(i.data for i in items if isinstance(i, Audio)) == b"\x01\x00" * 160
    assert isinstance(items[-1], EndOfAudio)


def test_rate_kinds() -> None:
    d = AudioSocketDialect(["en"])
    items = d.receive_binary(packet(0x01, CALL.bytes) + packet(0x12, b"\0\0" * 320))
    assert items[0].params.sample_rate == 16000  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (packet(0x10, b"\0\0"), "before the UUID"),
        (packet(0x01, b"short"), "16 bytes"),
        (packet(0x01, CALL.bytes) + packet(0x01, CALL.bytes), "second UUID"),
        (packet(0x01, CALL.bytes) + packet(0x42, b""), "unknown packet kind 0x42"),
        (packet(0x01, CALL.bytes) + packet(0x10, b"\0\0") + packet(0x12, b"\0\0"), "16000 Hz after"),
    ],
)
def test_bad_packets(wire: bytes, expected: str) -> None:
    items = AudioSocketDialect(["en"]).receive_binary(wire)
    assert isinstance(items[-1], ProtocolError) and expected in items[-1].detail


async def send_call(port: int, call: uuid.UUID, audio_16k: np.ndarray, *, hangup: bool = True) -> bytes:
    """Dial in as Asterisk does: UUID, then 20 ms slin packets, then hangup; returns what came back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    slin = float_to_linear16(soxr.resample(audio_16k, 16000, 8000).astype(np.float32))
    writer.write(packet(0x01, call.bytes))
    for offset in range(0, len(slin), 320):
        writer.write(packet(0x10, slin[offset : offset + 320]))
        await writer.drain()
    if hangup:
        writer.write(packet(0x00))
    await writer.drain()
    back = await reader.read()  # until the server closes
    writer.close()
    return back


def audiosocket_config(**changes: object) -> object:
    return config(telephony=TelephonyConfig(audiosocket_port=0), **changes)


async def test_call_reaches_webhook_and_watcher_and_nothing_comes_back() -> None:
    import json

    from websockets.asyncio.client import connect

    receiver = Receiver()
    await receiver.start()
    delivery = DeliveryConfig(callback_url=receiver.url, callback_backoff_s=0.05)
    try:
        async with serve(audiosocket_config(delivery=delivery)) as server, asyncio.timeout(30):  # type: ignore[arg-type]
            port = server.app[STATE].audiosocket_port
            assert port
            viewer = await connect(f"ws://127.0.0.1:{server.port}/v1/watch?stream={CALL}")
            audio = call_audio((0.3, ["abc", "bad"]), (0.9, ["cafe"]), (0.8, None))
            assert await send_call(port, CALL, audio) == b""
            await receiver.wait_for(lambda: any(p["type"] == "Metadata" for p in receiver.posts))
            first = json.loads(await viewer.recv())
            await viewer.close()
    finally:
        await receiver.stop()
    assert words(receiver.finals(0, stream=str(CALL))) == ["abc", "bad", "cafe"]
    assert first["stream"]["dialect"] == "audiosocket" and first["stream"]["call_id"] == str(CALL)


async def test_bad_packet_closes_that_call_only_and_idle_calls_end() -> None:
    limits = Limits(idle_timeout_s=0.5, shutdown_grace_s=2.0)
    async with serve(audiosocket_config(limits=limits)) as server, asyncio.timeout(30):  # type: ignore[arg-type]
        port = server.app[STATE].audiosocket_port
        assert port
        good = asyncio.create_task(send_call(port, uuid.uuid4(), call_audio((0.3, ["abc"]), (0.8, None))))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(packet(0x10, b"\0\0"))  # audio before the UUID
        assert await reader.read() == b""  # closed by the server
        writer.close()
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        idle_writer.write(packet(0x01, uuid.uuid4().bytes))
        assert await idle_reader.read() == b""  # the idle timeout ends a silent call
        idle_writer.close()
        await good
        metrics = server.app[STATE].metrics
        assert metrics.closed.labels("bad_message")._value.get() == 1
        assert metrics.closed.labels("idle")._value.get() == 1
        assert metrics.closed.labels("close_stream")._value.get() == 1
