"""The load generator's lean WebSocket clients: their frames (pure), and whole runs against a real aiohttp
WebSocket server on port 0 that records what arrives and answers (the streamer server itself is driven
through them by tests/test_bench_load.py)."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from aiohttp import WSMsgType, web

from streamer.bench.lean_clients import client_frame_header, parse_messages, run_lean_clients
from streamer.bench.load import frame_sizes


def _decode_header(header: bytes) -> tuple[int, bool, int, bytes]:
    """(opcode, fin, payload length, mask key) of one client frame header."""
    first, second = header[0], header[1]
    assert second & 0x80, "client frames are masked"
    length, at = second & 0x7F, 2
    if length == 126:
        (length,), at = struct.unpack_from("!H", header, 2), 4
    elif length == 127:
        (length,), at = struct.unpack_from("!Q", header, 2), 10
    assert len(header) == at + 4
    return first & 0x0F, bool(first & 0x80), length, header[at:]


@pytest.mark.parametrize("length", [0, 5, 125, 126, 3200, 65535, 65536, 200_000])
def test_frame_headers_carry_length_opcode_and_a_zero_mask(length: int) -> None:
    opcode, fin, decoded, key = _decode_header(client_frame_header(0x2, length))
    assert (opcode, fin, decoded, key) == (0x2, True, length, b"\x00\x00\x00\x00")


def test_frame_sizes_cover_the_audio_in_whole_milliseconds_of_the_range() -> None:
    total = 32 * 12_345 + 10  # not a whole number of milliseconds
    sizes = frame_sizes(total, (20, 100), seed=7)
    assert sum(sizes) == total
    assert all(size % 32 == 0 and 20 * 32 <= size <= 100 * 32 for size in sizes[:-1])
    assert 0 < sizes[-1] <= 100 * 32
    assert frame_sizes(total, (20, 100), seed=7) == sizes  # a seed gives the same frames
    assert frame_sizes(total, (20, 100), seed=8) != sizes
    assert frame_sizes(0, (20, 100), seed=7) == []


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_get("/v1/listen", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"ws://127.0.0.1:{port}/v1/listen?encoding=linear16&sample_rate=16000"

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_streams_arrive_whole_in_order_paced_and_answers_are_recorded(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    received: dict[str, list[Any]] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        name = request.query["encoding"] + str(len(received))
        log: list[Any] = []
        received[name] = log
        audio = bytearray()
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                audio += msg.data
                if len(audio) >= 6400 and not any(isinstance(x, str) for x in log):
                    await ws.send_str(json.dumps({"type": "Results", "bytes": len(audio)}))
                    log.append("sent")
                    await ws.ping(b"are you there")
            elif msg.type == WSMsgType.PONG:
                log.append(("pong", msg.data))
            elif msg.type == WSMsgType.TEXT:
                log.append(("text", msg.data))
                # A long message, sent in pieces the client must join.
                await ws.send_str(json.dumps({"type": "Metadata", "pad": "x" * 70_000}))
                await ws.close(code=1000)
        log.append(bytes(audio))
        return ws

    uri = await serve(handler)
    rng = np.random.default_rng(1)
    pcms = [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for size in (16_000, 9_632)]
    runs = await run_lean_clients(uri, pcms, frame_ms=(20, 60), seeds=[3, 4], close_timeout=10)

    assert len(received) == 2
    got_audio = sorted(log[-1] for log in received.values())
    assert got_audio == sorted(pcms)  # every byte, in order, unmasked by the zero key
    for log in received.values():
        assert ("pong", b"are you there") in log
        assert ("text", '{"type": "CloseStream"}') in log
    for run, pcm, seed in zip(runs, pcms, (3, 4), strict=True):
        assert run.error is None and not run.rejected and run.close_code == 1000
        sizes = frame_sizes(len(pcm), (20, 60), seed)
        ends = [end for end, _ in run.frames]
        assert ends == list(np.cumsum(sizes) // 2)
        # Never sent before the frame's last sample exists (real-time pace from the handshake on).
        assert all(t >= run.started + end / 16000 for end, t in run.frames)
        assert run.max_lag_s == pytest.approx(max(t - run.started - end / 16000 for end, t in run.frames))
        messages = parse_messages(run)
        assert [m["type"] for _, m in messages] == ["Results", "Metadata"]
        assert len(messages[1][1]["pad"]) == 70_000
        assert messages[0][0] >= run.frames[0][1]


async def test_a_refused_handshake_and_a_closed_port_are_errors_not_hangs(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    async def refuse(request: web.Request) -> web.StreamResponse:
        return web.json_response({"err_msg": "at capacity"}, status=503)

    uri = await serve(refuse)
    (run,) = await asyncio.wait_for(run_lean_clients(uri, [b"\x00" * 3200], frame_ms=(20, 20), seeds=[0]), 10)
    assert run.rejected and run.error == "handshake refused: HTTP 503" and not run.frames

    closed = uri.replace(uri.split(":")[2].split("/")[0], "1")  # port 1: nothing listens
    (run,) = await asyncio.wait_for(
        run_lean_clients(closed, [b"\x00" * 3200], frame_ms=(20, 20), seeds=[0]), 10
    )
    assert not run.rejected and run.error is not None and not run.frames


async def test_only_plain_ws_is_spoken() -> None:
    with pytest.raises(ValueError, match="ws:// only"):
        await run_lean_clients("wss://127.0.0.1:1/v1/listen", [b""], frame_ms=(20, 20), seeds=[0])
