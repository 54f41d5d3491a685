"""Tier 4: every way the server refuses a request or ends a stream, over a real server on port 0, answers in
plain words: what was wrong and what to do, never a Python repr, a path or a traceback. The dialect codecs'
refusals are checked the same way in their own tests (`tests.plain_errors.assert_plain`)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import numpy as np
import pytest
from websockets.asyncio.client import connect

from streamer.config import BatcherConfig, DeliveryConfig, Limits
from streamer.engine.fake import ToneEngine, tone_word
from streamer.errors import ENGINE_FAILURE_TEXT
from tests.plain_errors import assert_plain
from tests.test_server import _wav, config, drain, handshake_error, pcm16, serve, silence, utterances

LOUD = 0.8  # the fake engine fails on windows louder than this


def failing_engine() -> ToneEngine:
    return ToneEngine(fail=lambda windows: any(float(np.abs(w).max()) > LOUD for w in windows))


def poison() -> np.ndarray:
    return np.concatenate([silence(0.3), tone_word("abc", amplitude=0.95), silence(0.8)])


def test_the_check_catches_what_real_servers_leak() -> None:
    for leak in (
        "cannot decode (Error opening <_io.BytesIO object at 0x7f3a2c1b9d50>: Format not recognised)",
        'Traceback (most recent call last):\n  File "/srv/app/server.py", line 12, in handle',
        "unsupported value <class 'NoneType'>",
        "cannot open /usr/lib/python3/dist-packages/model.bin",
        "failed in streamer/server/prerecorded.py",
    ):
        with pytest.raises(AssertionError):
            assert_plain(leak)
    assert_plain("encoding: 'mp3' is not one of linear16, mulaw, alaw; see /v1/listen's parameters")


async def post(
    http: aiohttp.ClientSession, url: str, body: bytes, **headers: str
) -> tuple[int, dict[str, Any]]:
    async with http.post(url, data=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_prerecorded_refusals_are_plain_and_a_url_source_is_explained() -> None:
    cfg = config(
        limits=Limits(max_body_bytes=200_000),
        api_keys=frozenset({"k1"}),
        delivery=DeliveryConfig(callback_hosts=("hooks.example.com",)),
    )
    auth = {"Authorization": "Token k1"}
    wav = _wav(utterances(["abc"]))
    async with serve(cfg) as server, asyncio.timeout(20), aiohttp.ClientSession() as http:
        url = f"{server.http}/v1/listen"
        cases = {
            "no key": await post(http, url, wav),
            "wrong key": await post(http, url, wav, Authorization="Token nope"),
            "empty body": await post(http, url, b"", **auth),
            "not audio": await post(http, url, b"this is not audio", **auth),
            "broken wav": await post(http, url, b"RIFF\x10\x00\x00\x00WAVEjunkjunk", **auth),
            "too large": await post(http, url, b"\x00" * 300_000, **auth),
            "bad encoding": await post(http, url + "?encoding=speex", wav, **auth),
            "bad model": await post(http, url + "?model=..%2Fsecret", wav, **auth),
            "callback host": await post(http, url + "?callback=http://10.0.0.1/x", wav, **auth),
            "url source": await post(
                http,
                url,
                json.dumps({"url": "http://10.0.0.1/a.wav"}).encode(),
                **auth,
                **{"Content-Type": "application/json"},
            ),
            "url source, no type": await post(http, url, b' {"url": "https://example.com/a.wav"}', **auth),
        }
    for name, (status, body) in cases.items():
        assert 400 <= status < 500, (name, status, body)
        assert body["err_msg"] and body["request_id"], (name, body)
        assert_plain(body["err_msg"])
    for name in ("url source", "url source, no type"):
        status, body = cases[name]
        assert status == 400 and body["err_code"] == "INVALID_AUDIO"
        assert "does not fetch audio from URLs" in body["err_msg"], body
    assert "cannot decode the body as an audio file" in cases["not audio"][1]["err_msg"]


async def test_engine_failures_tell_the_client_plainly_and_the_log_has_the_detail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = config(batcher=BatcherConfig(max_batch=1))
    caplog.set_level(logging.ERROR)
    async with serve(cfg, {"en": failing_engine()}) as server, asyncio.timeout(20):
        async with aiohttp.ClientSession() as http:
            status, body = await post(http, f"{server.http}/v1/listen", _wav(poison()))
        async with connect(server.ws_url()) as ws:
            await ws.send(pcm16(poison()))
            messages = await drain(ws)
            code, reason = ws.close_code, ws.close_reason
    assert status == 500 and body["err_code"] == "ENGINE_FAILURE"
    assert body["err_msg"] == ENGINE_FAILURE_TEXT
    assert code == 1011 and messages[-1]["type"] == "Error"
    assert messages[-1]["description"] == ENGINE_FAILURE_TEXT
    for text in (reason or "", messages[-1]["description"]):
        assert_plain(text)
    # What the client is spared, the operator gets.
    assert sum("fake engine failure" in r.getMessage() for r in caplog.records) >= 2


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[1, 2]",
        '{"type": "Nope"}',
        '{"type": 5}',
        '{"type": "Configure", "features": 7}',
        "{" * 5000,
    ],
)
async def test_bad_control_messages_end_the_stream_with_a_plain_reason(frame: str) -> None:
    async with serve() as server, asyncio.timeout(10), connect(server.ws_url()) as ws:
        await ws.send(frame)
        messages = await drain(ws)
    assert ws.close_code in (1008, 1009)
    texts = [ws.close_reason or ""] + [m.get("description", "") for m in messages if m.get("type") == "Error"]
    assert any(texts), messages
    for text in texts:
        assert_plain(text)


async def test_handshake_refusals_are_plain() -> None:
    cfg = config(
        api_keys=frozenset({"k1"}),
        allowed_origins=frozenset({"https://captions.example.com"}),
        limits=Limits(max_streams=1, idle_timeout_s=5.0, shutdown_grace_s=5.0),
        resume_secret=b"resume-secret",
    )
    key = {"Authorization": "Token k1"}
    async with serve(cfg) as server, asyncio.timeout(20):
        url = server.ws_url()
        answers = [
            await handshake_error(url),
            await handshake_error(url, additional_headers={"Authorization": "Token nope"}),
            await handshake_error(url, additional_headers={**key, "Origin": "https://evil.example.com"}),
            await handshake_error(server.ws_url("resume=garbage&resume_from=1"), additional_headers=key),
            await handshake_error(server.ws_url("sample_rate=1e9"), additional_headers=key),
            await handshake_error(server.ws_url("channels=-1"), additional_headers=key),
        ]
        async with connect(url, additional_headers=key):  # the one slot taken
            answers.append(await handshake_error(url, additional_headers=key))
        async with (
            aiohttp.ClientSession() as http,
            http.get(url.replace("ws://", "http://"), headers=key) as resp,
        ):
            plain_get = await resp.json()
    statuses = [status for status, _, _ in answers]
    assert statuses == [401, 401, 403, 400, 400, 400, 503], statuses
    for _, body, _ in answers:
        assert body["err_msg"], body
        assert_plain(body["err_msg"])
    assert_plain(plain_get["err_msg"])
