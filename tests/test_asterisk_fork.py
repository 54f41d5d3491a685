"""Asterisk chan_websocket (`/asterisk`) and the audio forks (`/fork`: FreeSWITCH mod_audio_fork and
mod_audio_stream, jambonz `listen`, Vonage): codecs alone, then calls against a real server (tone
engine) from clients that follow each platform's documented messages."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np
import pytest
import soxr
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from streamer.audio import encode_mulaw, float_to_linear16
from streamer.server.ingress.asterisk import AsteriskDialect, parse_event
from streamer.server.ingress.base import Audio, ProtocolError, Reply, Start
from streamer.server.ingress.fork import ForkDialect
from tests.plain_errors import assert_plain
from tests.test_server import config, handshake_error, serve
from tests.test_twilio import call_audio

# ---- chan_websocket ----


def test_media_start_in_both_forms() -> None:
    assert parse_event("MEDIA_START connection_id:c1 channel:WebSocket/c1-0001 format:ulaw ptime:20") == (
        "MEDIA_START",
        {"connection_id": "c1", "channel": "WebSocket/c1-0001", "format": "ulaw", "ptime": "20"},
        False,
    )
    d = AsteriskDialect(["en"], {"tag": "pbx"})
    [start, answer] = d.receive_text(
        json.dumps(
            {"event": "MEDIA_START", "connection_id": "c9", "format": "slin16", "optimal_frame_size": 640}
        )
    )
    assert isinstance(start, Start) and start.call_id == "c9"
    assert (start.params.encoding, start.params.sample_rate, start.params.tag) == ("linear16", 16000, "pbx")
    assert answer == Reply('{"command": "ANSWER"}')
    assert d.receive_binary(b"\x01\x02") == [Audio(b"\x01\x02")]
    assert d.receive_text("MEDIA_XOFF") == [] and d.receive_text("DTMF_END digit:5") == []


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([b"\x00\x01"], "before MEDIA_START"),
        (["MEDIA_START format:g729"], "unsupported format"),
        (["MEDIA_START format:ulaw", "MEDIA_START format:ulaw"], "second MEDIA_START"),
        (["SURPRISE x:1"], "unknown event"),
        (["MEDIA_START format"], "malformed field"),
        (['{"event": '], "malformed control message"),
    ],
)
def test_asterisk_bad_input(messages: list[Any], expected: str) -> None:
    d = AsteriskDialect(["en"], {})
    items: list[Any] = []
    for m in messages:
        items = d.receive_binary(m) if isinstance(m, bytes) else d.receive_text(m)
    assert isinstance(items[-1], ProtocolError) and expected in items[-1].detail
    assert_plain(items[-1].detail)


# ---- forks ----


def test_fork_metadata_sets_format_and_call_id() -> None:
    d = ForkDialect(["en"], {"tag": "from-url", "sample_rate": "8000"}, "audio.drachtio.org")
    [start] = d.receive_text(json.dumps({"callId": "fs-1", "sampleRate": 16000, "mixType": "stereo"}))
    assert isinstance(start, Start) and start.call_id == "fs-1"
    p = start.params
    assert (p.sample_rate, p.channels, p.multichannel, p.tag) == (16000, 2, True, "from-url")
    assert d.receive_text('{"event": "dtmf", "digit": "1"}') == []


def test_fork_vonage_content_type_and_audio_without_metadata() -> None:
    [start] = ForkDialect(["en"], {}, None).receive_text(
        json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=16000"})
    )
    assert start.params.sample_rate == 16000  # type: ignore[union-attr]
    [start, audio] = ForkDialect(["en"], {"sample_rate": "8000"}, None).receive_binary(b"\0\0")
    assert isinstance(start, Start) and start.params.sample_rate == 8000 and audio == Audio(b"\0\0")


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ('{"mixType": "surround"}', "unknown mix type"),
        ('{"content-type": "audio/opus"}', "unsupported content-type"),
        ('{"sampleRate": 4000}', "sample_rate"),
        ("[1, 2]", "JSON object"),
        ("{oops", "malformed JSON"),
    ],
)
def test_fork_bad_metadata(metadata: str, expected: str) -> None:
    [error] = ForkDialect(["en"], {}, None).receive_text(metadata)
    assert isinstance(error, ProtocolError) and expected in error.detail
    assert_plain(error.detail)


# ---- against a real server ----


def pcm8k(audio_16k: np.ndarray) -> bytes:
    return float_to_linear16(soxr.resample(audio_16k, 16000, 8000).astype(np.float32))


async def drain_text(ws: Any) -> list[str]:
    got = []
    try:
        async for message in ws:
            got.append(message)
    except ConnectionClosed:
        pass
    return got


async def test_asterisk_dials_in_and_is_answered() -> None:
    audio = call_audio((0.3, ["abc", "bad"]), (0.8, None))
    async with serve() as server, asyncio.timeout(20):
        url = f"ws://127.0.0.1:{server.port}/asterisk?tag=pbx"
        async with connect(url, subprotocols=["media"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "media"
            await ws.send("MEDIA_START connection_id:c1 channel:WebSocket/c1-01 format:ulaw ptime:20")
            assert await ws.recv() == "ANSWER"
            data = encode_mulaw(soxr.resample(audio, 16000, 8000).astype(np.float32))
            for i in range(0, len(data), 160):
                await ws.send(data[i : i + 160])
            watcher = await connect(f"ws://127.0.0.1:{server.port}/v1/watch?stream=c1")
            await ws.close()  # Asterisk hangs up: the finals still reach watchers
            finals = []
            async with asyncio.timeout(10):
                while not any(m["type"] == "Metadata" for m in finals):
                    finals.append(json.loads(await watcher.recv()))
            words = [
                w["word"]
                for m in finals
                if m["type"] == "Results"
                for w in m["channel"]["alternatives"][0]["words"]
            ]
            assert words == ["abc", "bad"]
        status, body, _ = await handshake_error(f"ws://127.0.0.1:{server.port}/asterisk?language=xx")
        assert status == 400 and body["param"] == "language"


async def test_asterisk_needs_a_key_basic_works() -> None:
    async with serve(config(api_keys=frozenset({"pbx-key"}))) as server, asyncio.timeout(20):
        url = f"ws://127.0.0.1:{server.port}/asterisk"
        assert (await handshake_error(url))[0] == 401
        basic = base64.b64encode(b"asterisk:pbx-key").decode()
        async with connect(url, additional_headers={"Authorization": f"Basic {basic}"}) as ws:
            await ws.send("MEDIA_START format:slin")
            assert await ws.recv() == "ANSWER"
        wrong = base64.b64encode(b"asterisk:nope").decode()
        assert (await handshake_error(url, additional_headers={"Authorization": f"Basic {wrong}"}))[0] == 401


async def test_mod_audio_fork_stereo_gets_transcriptions_back() -> None:
    caller = call_audio((0.3, ["abc", "bad"]), (1.2, None))
    agent = call_audio((1.0, ["cafe"]), (0.8, None))
    length = max(len(caller), len(agent))
    stereo = np.stack([np.pad(x, (0, length - len(x))) for x in (caller, agent)], axis=1)
    data = float_to_linear16(soxr.resample(stereo, 16000, 8000).astype(np.float32).reshape(-1))
    async with serve() as server, asyncio.timeout(20):
        url = f"ws://127.0.0.1:{server.port}/fork"
        async with connect(url, subprotocols=["audio.drachtio.org"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "audio.drachtio.org"
            await ws.send(json.dumps({"uuid": "fs-call-1", "sampleRate": 8000, "mixType": "stereo"}))
            for i in range(0, len(data), 640):
                await ws.send(data[i : i + 640])
            reader = asyncio.create_task(drain_text(ws))
            await asyncio.sleep(1.0)
            await ws.close()
            back = [json.loads(m) for m in await reader]
    by_channel = {c: [w["word"] for m in back if m["channel"] == c for w in m["words"]] for c in (0, 1)}
    assert by_channel == {0: ["abc", "bad"], 1: ["cafe"]}
    assert all(m["type"] == "transcription" and m["is_final"] for m in back)


async def test_vonage_style_fork_sends_nothing_back_and_bad_metadata_closes() -> None:
    async with serve() as server, asyncio.timeout(20):
        url = f"ws://127.0.0.1:{server.port}/fork"
        async with connect(url) as ws:
            await ws.send(
                json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=16000"})
            )
            await ws.send(float_to_linear16(call_audio((0.3, ["abc"]), (0.8, None))))
            reader = asyncio.create_task(drain_text(ws))
            await asyncio.sleep(0.5)
            await ws.close()
            assert await reader == []
        async with connect(url) as ws:
            await ws.send('{"mixType": "surround"}')
            await drain_text(ws)
            assert ws.close_code == 1008 and "mix type" in (ws.close_reason or "")
