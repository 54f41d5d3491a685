"""Bad input gets a clear error, and other streams never notice (real server on port 0, fake tone engine).

Handshake: every malformed or unsupported query parameter is refused with HTTP 400 and a JSON body naming
the parameter and what is allowed. Mid-stream: frames that are not control messages, unknown message
types, oversized frames and audio after CloseStream close the offending stream with a code and a short
reason, while a second stream, running at the same time, gets every final.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect

from streamer.audio import MAX_CHANNELS, MAX_RATE, MIN_RATE
from streamer.config import Limits
from streamer.server import STATE
from tests.plain_errors import assert_plain
from tests.test_server import (
    Json,
    Server,
    config,
    drain,
    final_words,
    handshake_error,
    pcm16,
    send_audio,
    serve,
    silence,
    utterances,
    words_of,
)

HEALTHY = (["abc", "bad"], ["cafe"], ["dab", "face"])


# ---- handshake ----


@pytest.mark.parametrize(
    ("query", "param", "allowed"),
    [
        ("encoding=flac", "encoding", ["linear16", "mulaw", "alaw"]),
        ("encoding=", "encoding", ["linear16", "mulaw", "alaw"]),
        (f"sample_rate={MIN_RATE - 1}", "sample_rate", f"{MIN_RATE}-{MAX_RATE}"),
        (f"sample_rate={MAX_RATE + 1}", "sample_rate", f"{MIN_RATE}-{MAX_RATE}"),
        ("sample_rate=16k", "sample_rate", f"{MIN_RATE}-{MAX_RATE}"),
        ("sample_rate=16000.0", "sample_rate", f"{MIN_RATE}-{MAX_RATE}"),
        ("channels=0", "channels", f"1-{MAX_CHANNELS}"),
        (f"channels={MAX_CHANNELS + 1}", "channels", f"1-{MAX_CHANNELS}"),
        ("channels=two", "channels", f"1-{MAX_CHANNELS}"),
        ("multichannel=yes%20please", "multichannel", ["true", "false"]),
        ("vad_events=2", "vad_events", ["true", "false"]),
        ("interim_results=", "interim_results", ["true", "false"]),
        ("endpointing=soon", "endpointing", "milliseconds >= 0, or false"),
        ("utterance_end_ms=1s", "utterance_end_ms", "milliseconds >= 1000"),
        ("language=zz-ZZ", "language", ["en"]),
        ("model=..%2F..%2Fmodels%2Fevil", "model", ["en"]),  # a client can never name a path to load
        ("model=hf-user%2Fsome-model", "model", ["en"]),
    ],
)
async def test_handshake_names_the_bad_parameter_and_what_is_allowed(
    query: str, param: str, allowed: object
) -> None:
    async with serve() as server, asyncio.timeout(10):
        status, body, headers = await handshake_error(server.ws_url(query))
    assert status == 400
    assert headers["Content-Type"].startswith("application/json")
    assert body["err_code"] == "INVALID_QUERY_PARAMETER"
    assert body["param"] == param
    assert body["allowed"] == allowed
    assert body["request_id"] and body["err_msg"]
    assert_plain(body["err_msg"])


@pytest.mark.parametrize(
    "query",
    [
        f"sample_rate={MIN_RATE}&channels=1",
        f"sample_rate={MAX_RATE}&channels={MAX_CHANNELS}&multichannel=TRUE",
        "encoding=MULAW&sample_rate=8000&interim_results=1&vad_events=0&endpointing=false",
    ],
)
async def test_handshake_accepts_the_edges_of_every_range(query: str) -> None:
    async with serve() as server, asyncio.timeout(10), connect(server.ws_url(query)) as ws:
        await ws.send(json.dumps({"type": "CloseStream"}))
        messages = await drain(ws)
        assert ws.close_code == 1000
    assert messages[-1]["type"] == "Metadata"


# ---- mid-stream: the offender is closed, its neighbour carries on ----


async def _healthy_stream(server: Server) -> tuple[list[Json], int | None]:
    async with connect(server.ws_url("interim_results=true")) as ws:
        await send_audio(ws, pcm16(utterances(*HEALTHY)), chunk=3200, pause=0.01)
        await ws.send(json.dumps({"type": "CloseStream"}))
        return await drain(ws), ws.close_code


Misbehave = Callable[[ClientConnection], Awaitable[None]]


async def _send_text(ws: ClientConnection, text: str) -> None:
    await send_audio(ws, pcm16(utterances(["bad"])), pause=0.01)
    await ws.send(text)


async def _oversized(ws: ClientConnection) -> None:
    await send_audio(ws, pcm16(utterances(["bad"])), pause=0.01)
    await ws.send(b"\x01\x00" * 4096)  # 8 KiB, over the 4 KiB limit of these tests


async def _audio_after_close_stream(ws: ClientConnection) -> None:
    await send_audio(ws, pcm16(utterances(["bad", "cafe"])), pause=0.01)
    await ws.send(json.dumps({"type": "CloseStream"}))
    await ws.send(pcm16(np.concatenate([silence(0.2), utterances(["face"])]))[:3000])


CASES: dict[str, tuple[Misbehave, int, str]] = {
    "not_json": (lambda ws: _send_text(ws, "hello server"), 1008, "JSON"),
    "json_array": (lambda ws: _send_text(ws, "[1, 2, 3]"), 1008, "JSON object"),
    "unknown_type": (lambda ws: _send_text(ws, '{"type": "Explode"}'), 1008, "Explode"),
    "type_not_a_string": (lambda ws: _send_text(ws, '{"type": {"nested": true}}'), 1008, "unknown"),
    "bad_finalize_channel": (
        lambda ws: _send_text(ws, '{"type": "Finalize", "channel": "x"}'),
        1008,
        "channel",
    ),
    "oversized_frame": (_oversized, 1009, ""),
    "audio_after_close_stream": (_audio_after_close_stream, 1008, "after CloseStream"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_bad_frame_closes_only_its_stream(case: str) -> None:
    misbehave, code, reason_part = CASES[case]
    cfg = config(limits=Limits(max_message_bytes=4096, idle_timeout_s=5.0))

    async with serve(cfg) as server, asyncio.timeout(20):

        async def offender() -> tuple[list[Json], int | None, str]:
            async with connect(server.ws_url()) as ws:
                await misbehave(ws)
                messages = await drain(ws)
                return messages, ws.close_code, ws.close_reason or ""

        (good, good_code), (bad, bad_code, reason) = await asyncio.gather(_healthy_stream(server), offender())
        state = server.app[STATE]
        for _ in range(100):  # each handler releases its stream just after the close handshake
            if not state.live and not state.active:
                break
            await asyncio.sleep(0.02)
        assert not state.live and not state.active, "both streams released"

    assert bad_code == code
    assert reason_part in reason
    assert "Traceback" not in reason and "\n" not in reason and len(reason.encode()) <= 123
    assert good_code == 1000
    assert final_words(good) == words_of(*HEALTHY)
    assert good[-1]["type"] == "Metadata"
    if case == "audio_after_close_stream":
        # What came before CloseStream was transcribed and flushed; only the late audio was refused.
        assert final_words(bad) == ["bad", "cafe"]
        assert bad[-1]["type"] == "Metadata"


@pytest.mark.parametrize(
    ("query", "channels"),
    [("", 1), ("channels=2&multichannel=true", 2), ("channels=3", 1)],
)
async def test_odd_byte_counts_are_carried_not_errors(query: str, channels: int) -> None:
    phrases = (["abc", "bad"], ["cafe"])
    mono = utterances(*phrases)
    n_in = 3 if "channels=3" in query else channels
    audio = np.repeat(mono[:, None], n_in, axis=1).reshape(-1)
    data = pcm16(audio)
    sizes = [1, 3, 1001, 7, 2223, 5, 4097]  # no frame holds whole samples, let alone whole frames
    async with serve() as server, asyncio.timeout(20), connect(server.ws_url(query)) as ws:
        pos, i = 0, 0
        while pos < len(data):
            await ws.send(data[pos : pos + sizes[i % len(sizes)]])
            pos, i = pos + sizes[i % len(sizes)], i + 1
        await ws.send(json.dumps({"type": "CloseStream"}))
        messages = await drain(ws)
        assert ws.close_code == 1000
    for channel in range(channels):
        assert final_words(messages, channel=channel if channels > 1 else None) == words_of(*phrases)
    assert messages[-1]["type"] == "Metadata"
    assert messages[-1]["duration"] == pytest.approx(len(mono) / 16000, abs=0.01)
