"""The page's server side: `/`, `/watch`, `/static/`, `/v1/models`, the plain-GET diagnosis the page relies
on, and the terminal client's `--tag` / `--watch` (real server on port 0, tone engine)."""

from __future__ import annotations

import asyncio
import io

import aiohttp
import pytest

from client.options import ClientOptions
from client.run import run_stream, run_watch
from client.sources import MemorySource
from client.urls import listen_url, watch_url
from streamer.config import Limits
from tests.test_server import config, pcm16, serve, utterances


async def test_page_files_and_models() -> None:
    async with serve() as server, aiohttp.ClientSession() as http:
        for path, kind in (("/", "text/html"), ("/watch", "text/html"), ("/static/js/cues.js", "javascript")):
            async with http.get(server.http + path) as resp:
                assert resp.status == 200 and kind in resp.headers["Content-Type"], path
        async with http.get(server.http + "/static/../streamer/config.py") as resp:
            assert resp.status in (403, 404)
        async with http.get(server.http + "/v1/models") as resp:
            body = await resp.json()
        [model] = body["stt"]
        assert body["tts"] == [] and model["name"] == "en" and model["languages"] == ["en"]
        assert model["streaming"] and model["architecture"] == "tone-fake"


async def test_models_need_the_key_when_the_server_has_keys() -> None:
    async with serve(config(api_keys=frozenset({"k1"}))) as server, aiohttp.ClientSession() as http:
        async with http.get(server.http + "/v1/models") as resp:
            assert resp.status == 401
        async with http.get(server.http + "/v1/models", headers={"Authorization": "Token k1"}) as resp:
            assert resp.status == 200


async def test_plain_get_tells_what_the_handshake_would_get() -> None:
    """Browsers are not told why a WebSocket failed; the page asks the same URL over HTTP."""
    cfg = config(limits=Limits(max_streams=1, idle_timeout_s=5.0, shutdown_grace_s=2.0))
    async with serve(cfg) as server, aiohttp.ClientSession() as http:
        async with http.get(server.http + "/v1/listen") as resp:
            assert resp.status == 426  # would be accepted
        async with http.get(server.http + "/v1/listen?language=xx") as resp:
            assert resp.status == 400
        ws = await http.ws_connect(server.ws_url())
        async with http.get(server.http + "/v1/listen") as resp:
            assert resp.status == 503 and resp.headers["Retry-After"]  # the one slot is taken
        await ws.close()


def test_client_urls() -> None:
    assert "tag=room+1" in listen_url("http://h:1", language="en", tag="room 1")
    assert watch_url("https://h/prefix/v1/listen", "room") == "wss://h/prefix/v1/watch?tag=room"


async def test_watch_shows_what_a_tagged_client_sends() -> None:
    async with serve() as server, asyncio.timeout(30):
        out, err = io.StringIO(), io.StringIO()
        stop = asyncio.Event()
        watching = asyncio.create_task(
            run_watch(ClientOptions(url=server.http, watch="desk"), stdout=out, stderr=err, stop=stop)
        )
        await asyncio.sleep(0.3)
        sender = ClientOptions(url=server.http, tag="desk", interim=False)
        report = await run_stream(
            sender,
            source=MemorySource(pcm16(utterances(["abc", "bad"], ["cafe"])), speed=4.0, pace=True),
            stdout=io.StringIO(),
        )
        assert report.exit_code == 0
        await asyncio.sleep(0.3)
        stop.set()
        assert await watching == 0
    assert out.getvalue().split() == ["abc", "bad", "cafe"] == report.transcript.split()


def test_watch_and_sending_options_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    from client.cli import main

    assert main(["--watch", "x", "--tag", "y"]) == 2
    assert "--watch only receives" in capsys.readouterr().err


async def test_own_page_origin_is_allowed_when_origins_are_restricted() -> None:
    from websockets.asyncio.client import connect

    from tests.test_server import handshake_error

    cfg = config(allowed_origins=frozenset({"https://captions.example.com"}))
    async with serve(cfg) as server:
        own = f"http://127.0.0.1:{server.port}"
        async with connect(server.ws_url(), origin=own) as ws:  # type: ignore[arg-type]
            await ws.send(b"")
        status, _, _ = await handshake_error(server.ws_url(), origin="http://127.0.0.1:1")  # type: ignore[arg-type]
        assert status == 403  # another port is another origin
