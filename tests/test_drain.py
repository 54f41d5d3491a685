"""Soft drain on SIGTERM, on a real process: not ready and no new streams at once, running streams go on
until they end (or --drain-timeout), a second SIGTERM ends them now (finals, 1012)."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
from websockets.asyncio.client import connect

from streamer.bench.soak import ServerProcess
from streamer.engine.fake import tone_phrase
from tests.test_server import drain, final_words, handshake_error, pcm16, send_audio, silence, utterances

ARGS = ["--model", "en=fake:tone", "--drain-timeout", "60", "--shutdown-grace", "5"]


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.text()


async def test_sigterm_drains_running_streams_to_their_natural_end() -> None:
    async with ServerProcess(ARGS) as server, asyncio.timeout(60):
        async with connect(server.ws_url("interim_results=true")) as ws:
            await send_audio(ws, pcm16(utterances(["abc", "bad"])))
            assert (await get(server.url + "/readyz"))[0] == 200
            signalled = time.monotonic()
            server.terminate()
            await asyncio.sleep(0.5)
            status, body = await get(server.url + "/readyz")
            assert status == 503 and json.loads(body)["accepting"] is False
            assert "streamer_draining 1.0" in (await get(server.url + "/metrics"))[1]
            refused, error, headers = await handshake_error(server.ws_url())
            assert refused == 503 and "shutting down" in error["err_msg"] and headers["Retry-After"]
            # The running stream is not cut: more speech after the signal is transcribed as usual.
            await send_audio(ws, pcm16(utterances(["cafe", "dab"])), pause=0.01)
            await ws.send(json.dumps({"type": "CloseStream"}))
            messages = await drain(ws)
            assert ws.close_code == 1000
        code = await server.stop()
        stopped = time.monotonic() - signalled
    assert code == 0
    assert final_words(messages) == ["abc", "bad", "cafe", "dab"]
    assert messages[-1]["type"] == "Metadata"
    assert stopped < 20, "exits once its last stream has ended, not after the whole drain timeout"
    log = "".join(server.log_lines)
    assert "drained: every stream and request ended on its own" in log and "Traceback" not in log


async def test_second_sigterm_ends_the_drain_with_finals_and_1012() -> None:
    async with ServerProcess(ARGS) as server, asyncio.timeout(60):
        async with connect(server.ws_url("interim_results=true")) as ws:
            await send_audio(ws, pcm16(utterances(["abc", "bad"])))
            server.terminate()
            await asyncio.sleep(0.5)
            await send_audio(ws, pcm16(tone_phrase(["cafe"], seed=3)))  # an utterance still open
            await send_audio(ws, pcm16(silence(0.1)))
            await asyncio.sleep(0.5)
            assert server.proc is not None
            ended = time.monotonic()
            server.proc.send_signal(15)  # the second SIGTERM
            messages = await drain(ws)
            took = time.monotonic() - ended
            assert ws.close_code == 1012
        code = await server.stop()
    assert code == 0 and took < 10
    # The client did not say it resumes (resumable): the open utterance is made final before the close.
    assert final_words(messages) == ["abc", "bad", "cafe"]
    assert messages[-1]["type"] == "Metadata" and "resume" in messages[-1]
    assert "drain cut short" in "".join(server.log_lines)


async def test_sigint_ends_streams_at_once_and_a_resumable_stream_is_handed_over() -> None:
    async with ServerProcess(ARGS) as server, asyncio.timeout(60):
        async with connect(server.ws_url("interim_results=true&resumable=true")) as ws:
            await send_audio(ws, pcm16(utterances(["abc", "bad"])))
            await send_audio(ws, pcm16(tone_phrase(["cafe"], seed=3)))  # still open at the signal
            await asyncio.sleep(0.5)
            assert server.proc is not None
            server.proc.send_signal(2)
            messages = await drain(ws)
            assert ws.close_code == 1012
        code = await server.stop()
    assert code == 0
    # The open utterance is left to the replica the client resumes on: its token points before it.
    assert final_words(messages) == ["abc", "bad"]
    finals = [m for m in messages if m["type"] == "Results" and m["is_final"]]
    assert messages[-1]["resume"]["from"] == finals[-1]["resume"]["from"]
    assert messages[-1]["resume"]["from"] <= finals[-1]["start"] + finals[-1]["duration"] + 0.001
