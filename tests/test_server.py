"""Tier 4 (real server on port 0, real WebSocket clients) with the fake tone engine and the energy VAD.

Audio comes from `tone_phrase`, which `ToneEngine` "reads" as the given words, so every transcript is known.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import soundfile as sf
import soxr
import websockets
from aiohttp import web
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from streamer.audio import encode_alaw, encode_mulaw, float_to_linear16
from streamer.batcher import BatcherConfig
from streamer.cli import build_config, main
from streamer.config import Limits, ModelSpec, ServerConfig
from streamer.engine.base import Engine
from streamer.engine.fake import ToneEngine, tone_phrase, tone_word
from streamer.errors import ConfigError
from streamer.server import STATE, create_app
from tests.plain_errors import assert_plain

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
Json = dict[str, Any]


def silence(seconds: float, sr: int = SR) -> np.ndarray:
    return np.zeros(int(seconds * sr), dtype=np.float32)


def utterances(*phrases: Sequence[str], gap_s: float = 0.8) -> np.ndarray:
    """Phrases separated by silence long enough to end each utterance (endpointing 400 ms)."""
    parts = [silence(0.3)]
    for i, words in enumerate(phrases):
        parts += [tone_phrase(list(words), seed=i), silence(gap_s)]
    return np.concatenate(parts).astype(np.float32)


def pcm16(audio: np.ndarray) -> bytes:
    return float_to_linear16(audio)


def words_of(*phrases: Sequence[str]) -> list[str]:
    return [w for p in phrases for w in p]


def config(**changes: Any) -> ServerConfig:
    limits = changes.pop("limits", Limits(idle_timeout_s=5.0, shutdown_grace_s=5.0))
    base = ServerConfig(models=(ModelSpec("en", "fake:tone"),), limits=limits)
    return replace(base, **changes)


@dataclass
class Server:
    app: web.Application
    port: int

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}/v1/listen" + (f"?{query}" if query else "")


@asynccontextmanager
async def serve(
    cfg: ServerConfig | None = None, engines: dict[str, Engine] | None = None
) -> AsyncIterator[Server]:
    cfg = cfg or config()
    app = create_app(cfg, engines if engines is not None else {m.name: ToneEngine() for m in cfg.models})
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield Server(app, int(runner.addresses[0][1]))
    finally:
        await runner.cleanup()


async def send_audio(ws: ClientConnection, data: bytes, chunk: int = 3200, pause: float = 0.0) -> None:
    """Send `data` in chunks; `pause` seconds between chunks lets windows run while audio still arrives
    (without it the whole stream is in before any window, and partials of finished audio are skipped)."""
    for i in range(0, len(data), chunk):
        await ws.send(data[i : i + chunk])
        if pause:
            await asyncio.sleep(pause)


async def drain(ws: ClientConnection) -> list[Json]:
    """Every message until the server closes."""
    out: list[Json] = []
    try:
        async for raw in ws:
            out.append(json.loads(raw))
    except ConnectionClosed:
        pass
    return out


def results(messages: list[Json]) -> list[Json]:
    return [m for m in messages if m["type"] == "Results"]


def final_words(messages: list[Json], channel: int | None = None) -> list[str]:
    out: list[str] = []
    for m in results(messages):
        if m["is_final"] and (channel is None or m["channel_index"][0] == channel):
            out += [w["word"] for w in m["channel"]["alternatives"][0]["words"]]
    return out


async def handshake_error(url: str, **kwargs: Any) -> tuple[int, Json, Any]:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, **kwargs):
            pass
    response = info.value.response
    return response.status_code, json.loads(response.body or b"{}"), response.headers


def check_results_schema(msg: Json) -> None:
    deepgram = {
        "type",
        "channel_index",
        "duration",
        "start",
        "is_final",
        "speech_final",
        "from_finalize",
        "channel",
        "metadata",
    }
    # Finals also carry our resume token (interim results do not).
    assert set(msg) == (deepgram | {"resume"} if msg["is_final"] else deepgram)
    if msg["is_final"]:
        assert set(msg["resume"]) == {"token", "from"} and msg["resume"]["from"] >= 0
    assert isinstance(msg["channel_index"], list) and len(msg["channel_index"]) == 2
    assert all(isinstance(i, int) for i in msg["channel_index"])
    assert isinstance(msg["start"], float | int) and isinstance(msg["duration"], float | int)
    assert all(isinstance(msg[k], bool) for k in ("is_final", "speech_final", "from_finalize"))
    alternatives = msg["channel"]["alternatives"]
    assert len(alternatives) == 1
    alt = alternatives[0]
    assert isinstance(alt["transcript"], str) and isinstance(alt["confidence"], float | int)
    assert alt["transcript"] == " ".join(w["word"] for w in alt["words"])
    for word in alt["words"]:
        assert set(word) == {"word", "start", "end", "confidence"}
        assert isinstance(word["word"], str)
        assert msg["start"] - 1e-6 <= word["start"] <= word["end"] <= msg["start"] + msg["duration"] + 1e-6
        assert 0.0 <= word["confidence"] <= 1.0
    meta = msg["metadata"]
    assert set(meta) == {"request_id", "model_info", "model_uuid"}
    assert set(meta["model_info"]) == {"name", "version", "arch"}


def check_metadata(msg: Json, *, duration: float, channels: int = 1) -> None:
    assert msg["type"] == "Metadata"
    assert msg["transaction_key"] == "deprecated"
    assert re.fullmatch(r"[0-9a-f]{64}", msg["sha256"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", msg["created"])
    assert msg["duration"] == pytest.approx(duration, abs=0.01)
    assert msg["channels"] == channels
    assert len(msg["models"]) == 1 and set(msg["model_info"]) == set(msg["models"])


# ---- live streaming ----


async def test_results_schema_order_and_finals_invariant() -> None:
    phrases = (["abc", "bad"], ["cafe", "dab", "face"], ["ace"])
    audio = utterances(*phrases)
    query = "interim_results=true&vad_events=true"
    async with serve() as server, asyncio.timeout(20), connect(server.ws_url(query)) as ws:
        # Odd chunk sizes: samples split across frames must not matter.
        await send_audio(ws, pcm16(audio), chunk=2223, pause=0.01)
        await ws.send(json.dumps({"type": "CloseStream"}))
        messages = await drain(ws)
        assert ws.close_code == 1000
    request_ids = set()
    for msg in results(messages):
        check_results_schema(msg)
        assert msg["channel_index"] == [0, 1]
        assert msg["metadata"]["model_info"] == {"name": "en", "version": "0.1.0", "arch": "tone-fake"}
        request_ids.add(msg["metadata"]["request_id"])
    assert len(request_ids) == 1
    # The finals are the whole transcript: nothing lost, nothing repeated.
    assert final_words(messages) == words_of(*phrases)
    finals = [m for m in results(messages) if m["is_final"]]
    assert all(m["speech_final"] for m in finals[:-1]), "utterances ended by silence are speech_final"
    # Interim results come before their final and only cover audio after the last final.
    assert any(not m["is_final"] for m in results(messages))
    final_end = 0.0
    for msg in results(messages):
        assert msg["start"] >= final_end - 1e-6
        if msg["is_final"]:
            final_end = msg["start"] + msg["duration"]
    first_final = next(i for i, m in enumerate(messages) if m["type"] == "Results" and m["is_final"])
    assert any(m["type"] == "Results" and not m["is_final"] for m in messages[:first_final])
    started = [m for m in messages if m["type"] == "SpeechStarted"]
    assert len(started) == len(phrases)
    assert all(m["channel"] == [0, 1] and isinstance(m["timestamp"], float) for m in started)
    # CloseStream: last Results, then Metadata, then close 1000.
    assert messages[-1]["type"] == "Metadata"
    check_metadata(messages[-1], duration=len(audio) / SR)
    assert messages[-1]["request_id"] in request_ids


async def test_interim_results_default_off_and_empty_frame_closes() -> None:
    phrases = (["bad", "cafe"],)
    audio = utterances(*phrases)
    async with serve() as server, asyncio.timeout(20), connect(server.ws_url()) as ws:
        await send_audio(ws, pcm16(audio))
        await ws.send(b"")  # the old Deepgram way to say CloseStream
        messages = await drain(ws)
        assert ws.close_code == 1000
    assert all(m["is_final"] for m in results(messages))
    assert not [m for m in messages if m["type"] == "SpeechStarted"]  # vad_events is off by default
    assert final_words(messages) == words_of(*phrases)
    assert messages[-1]["type"] == "Metadata"


async def test_finalize_flushes_and_keeps_the_stream_open() -> None:
    async with serve() as server, asyncio.timeout(20), connect(server.ws_url("endpointing=false")) as ws:
        await send_audio(ws, pcm16(np.concatenate([silence(0.3), tone_phrase(["abc", "dab"])])))
        await ws.send(json.dumps({"type": "Finalize"}))
        flushed: list[Json] = []
        while not (flushed and flushed[-1]["type"] == "Results" and flushed[-1]["is_final"]):
            flushed.append(json.loads(await ws.recv()))
        assert flushed[-1]["from_finalize"] is True
        assert final_words(flushed) == ["abc", "dab"]
        # Still open: more audio, then close.
        await send_audio(ws, pcm16(np.concatenate([silence(0.3), tone_phrase(["face"]), silence(0.2)])))
        await ws.send(json.dumps({"type": "CloseStream"}))
        rest = await drain(ws)
        assert ws.close_code == 1000
    assert final_words(rest) == ["face"]
    assert not any(m.get("from_finalize") for m in results(rest))
    assert rest[-1]["type"] == "Metadata"


async def test_finalize_with_nothing_pending() -> None:
    async with serve() as server, asyncio.timeout(10), connect(server.ws_url()) as ws:
        await ws.send(json.dumps({"type": "Finalize"}))
        msg = json.loads(await ws.recv())
        assert msg["type"] == "Results" and msg["is_final"] and msg["from_finalize"]
        assert msg["channel"]["alternatives"][0]["transcript"] == ""


async def test_utterance_end_after_the_gap() -> None:
    query = "utterance_end_ms=1000&interim_results=true"
    async with serve() as server, asyncio.timeout(10), connect(server.ws_url(query)) as ws:
        await send_audio(ws, pcm16(np.concatenate([silence(0.3), tone_phrase(["bad"]), silence(0.6)])))
        seen: list[Json] = []
        while not (seen and seen[-1]["type"] == "Results" and seen[-1]["is_final"]):
            seen.append(json.loads(await ws.recv()))
        last_word_end = seen[-1]["channel"]["alternatives"][0]["words"][-1]["end"]
        # The gap is measured in stream time, so it takes more (silent) audio, not waiting.
        await send_audio(ws, pcm16(silence(1.2)))
        end = json.loads(await ws.recv())
        while end["type"] != "UtteranceEnd":
            end = json.loads(await ws.recv())
    assert end == {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": last_word_end}


async def test_keepalive_keeps_the_stream_and_idle_timeout_closes_it() -> None:
    cfg = config(limits=Limits(idle_timeout_s=0.5))
    async with serve(cfg) as server, asyncio.timeout(10), connect(server.ws_url()) as ws:
        for _ in range(6):  # 1.2 s, over twice the idle timeout, kept alive
            await ws.send(json.dumps({"type": "KeepAlive"}))
            await asyncio.sleep(0.2)
        await send_audio(ws, pcm16(utterances(["bad"])))
        started = time.monotonic()
        messages = await drain(ws)
        waited = time.monotonic() - started
        assert ws.close_code == 1011
        assert (ws.close_reason or "").startswith("NET-0001")
    assert final_words(messages) == ["bad"]
    assert messages[-1]["type"] == "Metadata"
    assert 0.4 < waited < 3.0


async def test_multichannel_keeps_channels_apart() -> None:
    left = utterances(["abc", "bad"])
    right = utterances(["cafe"], ["dab"])
    n = max(len(left), len(right))
    stereo = np.zeros((n, 2), dtype=np.float32)
    stereo[: len(left), 0] = left
    stereo[: len(right), 1] = right
    query = "channels=2&multichannel=true&interim_results=true"
    async with serve() as server, asyncio.timeout(20), connect(server.ws_url(query)) as ws:
        await send_audio(ws, pcm16(stereo.reshape(-1)), chunk=4000)
        await ws.send(json.dumps({"type": "CloseStream"}))
        messages = await drain(ws)
    for msg in results(messages):
        check_results_schema(msg)
        assert msg["channel_index"][1] == 2
    assert final_words(messages, channel=0) == ["abc", "bad"]
    assert final_words(messages, channel=1) == ["cafe", "dab"]
    check_metadata(messages[-1], duration=n / SR, channels=2)


async def test_downmixed_stereo_reports_one_channel() -> None:
    mono = utterances(["face"])
    stereo = np.stack([mono, mono], axis=1)
    async with serve() as server, asyncio.timeout(20), connect(server.ws_url("channels=2")) as ws:
        await send_audio(ws, pcm16(stereo.reshape(-1)))
        await ws.send(json.dumps({"type": "CloseStream"}))
        messages = await drain(ws)
    assert {tuple(m["channel_index"]) for m in results(messages)} == {(0, 1)}
    assert final_words(messages) == ["face"]


@pytest.mark.parametrize("encoding", ["mulaw", "alaw"])
async def test_g711_at_8khz(encoding: str) -> None:
    # Tone pitches must stay below 4 kHz at 8 kHz: letters a-f are 400-1400 Hz.
    phrases = (["bad", "cafe"], ["face"])
    audio_8k = soxr.resample(utterances(*phrases), SR, 8000).astype(np.float32)
    data = encode_mulaw(audio_8k) if encoding == "mulaw" else encode_alaw(audio_8k)
    query = f"encoding={encoding}&sample_rate=8000"
    async with serve() as server, asyncio.timeout(20), connect(server.ws_url(query)) as ws:
        await send_audio(ws, data, chunk=1600)
        await ws.send(json.dumps({"type": "CloseStream"}))
        messages = await drain(ws)
    assert final_words(messages) == words_of(*phrases)
    check_metadata(messages[-1], duration=len(audio_8k) / 8000)


async def test_bad_control_messages_close_1008() -> None:
    async with serve() as server, asyncio.timeout(10):
        for text, reason in [("not json", "JSON"), ('{"type":"Explode"}', "Explode")]:
            async with connect(server.ws_url()) as ws:
                await ws.send(text)
                await drain(ws)
                assert ws.close_code == 1008
                assert reason in (ws.close_reason or "")


async def test_oversized_frame_closes_1009() -> None:
    cfg = config(limits=Limits(max_message_bytes=4096))
    async with serve(cfg) as server, asyncio.timeout(10), connect(server.ws_url()) as ws:
        await ws.send(b"\x00" * 8192)
        await drain(ws)
        assert ws.close_code == 1009


async def test_engine_failure_closes_1011_and_spares_other_streams() -> None:
    # Windows louder than 0.8 make the fake engine fail. Batches of one, so that a failing window cannot
    # share its batch (and its error) with the healthy stream's windows.
    engine = ToneEngine(fail=lambda windows: any(float(np.abs(w).max()) > 0.8 for w in windows))
    cfg = config(batcher=BatcherConfig(max_batch=1))
    phrases = (["abc", "bad"], ["cafe"], ["dab", "face"])
    poison = np.concatenate([silence(0.3), tone_word("abc", amplitude=0.95), silence(0.8)])
    async with serve(cfg, {"en": engine}) as server, asyncio.timeout(20):

        async def healthy() -> tuple[list[Json], int | None]:
            async with connect(server.ws_url()) as ws:
                await send_audio(ws, pcm16(utterances(*phrases)), chunk=1600)
                await ws.send(json.dumps({"type": "CloseStream"}))
                return await drain(ws), ws.close_code

        async def failing() -> tuple[list[Json], int | None]:
            async with connect(server.ws_url()) as ws:
                await send_audio(ws, pcm16(poison), chunk=1600)
                return await drain(ws), ws.close_code

        (good, good_code), (bad, bad_code) = await asyncio.gather(healthy(), failing())
        async with aiohttp.ClientSession() as http:
            metrics = await (await http.get(f"{server.http}/metrics")).text()
    assert bad_code == 1011
    assert bad[-1]["type"] == "Error" and bad[-1]["description"]
    assert good_code == 1000
    assert final_words(good) == words_of(*phrases)
    assert good[-1]["type"] == "Metadata"
    assert 'streamer_engine_failures_total{model="en"} 1.0' in metrics


# ---- handshake: auth, params, capacity ----


async def test_auth() -> None:
    cfg = config(api_keys=frozenset({"s3cret", "other"}))
    assert "s3cret" not in repr(cfg)
    async with serve(cfg) as server, asyncio.timeout(10):
        url = server.ws_url()
        status, body, headers = await handshake_error(url)
        assert status == 401 and body["err_code"] == "INVALID_AUTH"
        status, body, _ = await handshake_error(url, additional_headers={"Authorization": "Token wrong"})
        assert status == 401
        status, _, _ = await handshake_error(url, subprotocols=["token", "wrong"])
        assert status == 401
        for header in ("Token s3cret", "Bearer s3cret", "token other"):
            async with connect(url, additional_headers={"Authorization": header}) as ws:
                await ws.send(json.dumps({"type": "CloseStream"}))
                assert (await drain(ws))[-1]["type"] == "Metadata"
        # Browser form: the key rides in Sec-WebSocket-Protocol and the server selects "token".
        async with connect(url, subprotocols=["token", "s3cret"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "token"
            await ws.send(json.dumps({"type": "CloseStream"}))
            await drain(ws)
        async with aiohttp.ClientSession() as http:
            wav = _wav(utterances(["bad"]))
            async with http.post(f"{server.http}/v1/listen", data=wav) as resp:
                assert resp.status == 401
            headers = {"Authorization": "Token s3cret"}
            async with http.post(f"{server.http}/v1/listen", data=wav, headers=headers) as resp:
                assert resp.status == 200


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("encoding=opus", "encoding"),
        ("sample_rate=96000", "sample_rate"),
        ("sample_rate=abc", "sample_rate"),
        ("channels=9", "channels"),
        ("interim_results=perhaps", "interim_results"),
        ("endpointing=-1", "endpointing"),
        ("utterance_end_ms=500", "utterance_end_ms"),
        ("language=fr", "language"),
        ("model=someone-elses-model", "model"),
    ],
)
async def test_bad_params_fail_the_handshake(query: str, param: str) -> None:
    async with serve() as server, asyncio.timeout(10):
        status, body, _ = await handshake_error(server.ws_url(query))
    assert status == 400
    assert body["err_code"] == "INVALID_QUERY_PARAMETER"
    assert body["param"] == param and body["allowed"]
    assert param in body["err_msg"] or param in ("language", "model")
    assert_plain(body["err_msg"])
    if param in ("language", "model"):
        assert body["allowed"] == ["en"]


async def test_deepgram_params_are_accepted_and_models_fall_back() -> None:
    query = "model=nova-3&language=en-US&punctuate=true&smart_format=true&diarize=true&tag=x&mystery=1"
    async with serve() as server, asyncio.timeout(10), connect(server.ws_url(query)) as ws:
        await send_audio(ws, pcm16(utterances(["cafe"])))
        await ws.send(json.dumps({"type": "CloseStream"}))
        messages = await drain(ws)
    assert final_words(messages) == ["cafe"]
    assert results(messages)[0]["metadata"]["model_info"]["name"] == "en"


async def test_max_streams_and_readiness() -> None:
    cfg = config(limits=Limits(max_streams=1))
    async with serve(cfg) as server, asyncio.timeout(10), aiohttp.ClientSession() as http:
        assert (await http.get(f"{server.http}/readyz")).status == 200
        async with connect(server.ws_url()) as ws:
            status, body, headers = await handshake_error(server.ws_url())
            assert status == 503 and headers["Retry-After"]
            assert body["err_code"] == "TOO_MANY_STREAMS"
            ready = await http.get(f"{server.http}/readyz")
            assert ready.status == 503 and (await ready.json())["active_streams"] == 1
            await ws.send(json.dumps({"type": "CloseStream"}))
            await drain(ws)
        for _ in range(50):  # the handler releases its slot just after the close
            if (await http.get(f"{server.http}/readyz")).status == 200:
                break
            await asyncio.sleep(0.02)
        assert (await http.get(f"{server.http}/readyz")).status == 200
        metrics = await (await http.get(f"{server.http}/metrics")).text()
    assert 'streamer_rejected_requests_total{reason="overload"} 1.0' in metrics


async def test_plain_get_is_refused() -> None:
    async with serve() as server, asyncio.timeout(10), aiohttp.ClientSession() as http:
        resp = await http.get(f"{server.http}/v1/listen")
        assert resp.status == 426
        assert (await resp.json())["err_code"] == "UPGRADE_REQUIRED"


# ---- pre-recorded, health and metrics ----


def _wav(audio: np.ndarray, sr: int = SR, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, sr, format=fmt, subtype="PCM_16")
    return buf.getvalue()


async def test_prerecorded_wav_and_raw() -> None:
    phrases = (["abc", "bad"], ["cafe"])
    audio = utterances(*phrases)
    cfg = config(limits=Limits(max_body_bytes=400_000))
    async with serve(cfg) as server, asyncio.timeout(20), aiohttp.ClientSession() as http:
        url = f"{server.http}/v1/listen"
        async with http.post(url, data=_wav(audio), headers={"Content-Type": "audio/wav"}) as resp:
            assert resp.status == 200
            assert resp.headers["dg-request-id"]
            wav_body = await resp.json()
        # 8 kHz stereo WAV, downmixed.
        audio_8k = soxr.resample(audio, SR, 8000).astype(np.float32)
        async with http.post(url, data=_wav(np.stack([audio_8k, audio_8k], axis=1), 8000)) as resp:
            stereo_body = await resp.json()
        async with http.post(url, data=_wav(audio, fmt="FLAC")) as resp:
            assert resp.status == 200
            flac_body = await resp.json()
        async with http.post(f"{url}?encoding=linear16&sample_rate=16000", data=pcm16(audio)) as resp:
            assert resp.status == 200
            raw_body = await resp.json()
        async with http.post(url, data=b"this is not audio") as resp:
            assert resp.status == 400
            assert (await resp.json())["err_code"] == "INVALID_AUDIO"
        async with http.post(url, data=b"\x00" * 500_000) as resp:
            assert resp.status == 413
            assert (await resp.json())["err_code"] == "PAYLOAD_TOO_LARGE"
        async with http.post(f"{url}?encoding=speex", data=pcm16(audio)) as resp:
            assert resp.status == 400 and (await resp.json())["param"] == "encoding"
    expected = " ".join(words_of(*phrases))
    for body in (wav_body, flac_body, raw_body, stereo_body):
        assert set(body) == {"metadata", "results"}
        alt = body["results"]["channels"][0]["alternatives"][0]
        assert alt["transcript"] == expected
        assert all(set(w) == {"word", "start", "end", "confidence"} for w in alt["words"])
        meta = body["metadata"]
        assert meta["duration"] == pytest.approx(len(audio) / SR, abs=0.01)
        assert meta["channels"] == 1 and len(meta["models"]) == 1
        assert set(meta["model_info"]) == set(meta["models"])
        assert re.fullmatch(r"[0-9a-f]{64}", meta["sha256"])


async def test_prerecorded_multichannel() -> None:
    left, right = utterances(["abc"]), utterances(["dab"])
    async with serve() as server, asyncio.timeout(20), aiohttp.ClientSession() as http:
        wav = _wav(np.stack([left, right], axis=1))
        async with http.post(f"{server.http}/v1/listen?multichannel=true", data=wav) as resp:
            body = await resp.json()
    channels = body["results"]["channels"]
    assert [c["alternatives"][0]["transcript"] for c in channels] == ["abc", "dab"]
    assert body["metadata"]["channels"] == 2


async def test_health_ready_and_metrics() -> None:
    async with serve() as server, asyncio.timeout(20), aiohttp.ClientSession() as http:
        assert (await http.get(f"{server.http}/healthz")).status == 200
        ready = await http.get(f"{server.http}/readyz")
        assert ready.status == 200
        assert (await ready.json())["max_streams"] == Limits().max_streams
        async with connect(server.ws_url("interim_results=true")) as ws:
            await send_audio(ws, pcm16(utterances(["abc", "bad"], ["cafe"])), pause=0.01)
            await ws.send(json.dumps({"type": "CloseStream"}))
            await drain(ws)
        await handshake_error(server.ws_url("encoding=opus"))
        resp = await http.get(f"{server.http}/metrics")
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()

    def value(pattern: str) -> float:
        match = re.search(rf"^{pattern} ([0-9.e+-]+)$", text, re.M)
        assert match, pattern
        return float(match.group(1))

    assert value(r'streamer_active_streams\{kind="live"\}') == 0
    assert value(r'streamer_streams_total\{kind="live",model="en"\}') == 1
    assert value(r'streamer_audio_seconds_total\{model="en"\}') > 3
    assert value(r'streamer_batch_size_count\{model="en"\}') > 0
    assert value(r'streamer_inference_seconds_count\{model="en"\}') > 0
    assert value(r'streamer_partial_latency_seconds_count\{model="en"\}') > 0
    assert value(r'streamer_final_latency_seconds_count\{model="en"\}') >= 2
    assert value(r'streamer_rejected_requests_total\{reason="bad_param"\}') == 1
    assert value(r'streamer_streams_closed_total\{reason="close_stream"\}') == 1


async def test_a_stream_ahead_of_a_slow_model_coalesces_and_says_so_in_metrics() -> None:
    # One long phrase at 5x real time into a model that takes 0.5 s a call: about three hops come due
    # while each partial window runs, and join the next one; /metrics counts them, the finals are whole.
    phrase = ["abc", "bad", "cafe", "dead", "face", "bead", "cab", "ded", "bed", "abc", "bad", "cafe"]
    engine = ToneEngine(delay_s=0.5)
    async with serve(engines={"en": engine}) as server, asyncio.timeout(30), aiohttp.ClientSession() as http:
        async with connect(server.ws_url("interim_results=true")) as ws:
            await send_audio(ws, pcm16(utterances(phrase)), pause=0.02)
            await ws.send(json.dumps({"type": "CloseStream"}))
            messages = await drain(ws)
        await asyncio.sleep(0.2)  # the stream's last count is exported as it closes
        text = await (await http.get(f"{server.http}/metrics")).text()
    assert final_words(messages) == phrase
    assert [m for m in results(messages) if not m["is_final"]]  # interim results still came
    match = re.search(r'^streamer_coalesced_hops_total\{model="en"\} ([0-9.e+-]+)$', text, re.M)
    assert match and float(match.group(1)) >= 2


async def test_shutdown_flushes_live_streams_and_refuses_new_ones() -> None:
    async with serve() as server, asyncio.timeout(10):
        async with connect(server.ws_url("endpointing=false")) as ws:
            await send_audio(ws, pcm16(np.concatenate([silence(0.3), tone_phrase(["bad", "cafe"])])))
            await ws.send(json.dumps({"type": "KeepAlive"}))
            await asyncio.sleep(0.2)  # let the server read everything sent
            state = server.app[STATE]
            shutdown = asyncio.create_task(state.shutdown())
            messages = await drain(ws)
            await shutdown
            assert ws.close_code == 1012
        status, body, _ = await handshake_error(server.ws_url())
        assert status == 503 and body["err_code"] == "SHUTTING_DOWN"
    assert final_words(messages) == ["bad", "cafe"]
    assert messages[-1]["type"] == "Metadata"


async def test_shutdown_grace_bounds_a_slow_flush() -> None:
    engine = ToneEngine(delay_s=1.5)  # the final pass cannot finish within the grace period
    cfg = config(limits=Limits(shutdown_grace_s=0.2))
    url_query = "endpointing=false"
    async with (
        serve(cfg, {"en": engine}) as server,
        asyncio.timeout(10),
        connect(server.ws_url(url_query)) as ws,
    ):
        await send_audio(ws, pcm16(np.concatenate([silence(0.3), tone_phrase(["bad"])])))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await server.app[STATE].shutdown()
        took = time.monotonic() - started
        messages = await drain(ws)
        assert ws.close_code == 1012
    assert took < 1.4
    assert not [m for m in messages if m["type"] == "Metadata"]


# ---- a real tiny transformers checkpoint, loaded by the app itself ----


async def test_transformers_model_loaded_by_the_app(tmp_path: Path) -> None:
    tiny_models = pytest.importorskip("tests.tiny_models")
    folder = tiny_models.build_tiny_model(tmp_path / "tiny-he", alphabet="hebrew", arch="wav2vec2")
    cfg = config(models=(ModelSpec("he", str(folder)),), vad="energy")
    app_cfg = replace(cfg, engine=replace(cfg.engine, device="cpu", warmup=False))
    app = create_app(app_cfg)  # engines=None: the app loads (and later closes) the model
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with asyncio.timeout(30), connect(f"ws://127.0.0.1:{port}/v1/listen?language=he") as ws:
            await send_audio(ws, pcm16(utterances(["abc"])))
            await ws.send(json.dumps({"type": "CloseStream"}))
            messages = await drain(ws)
    finally:
        await runner.cleanup()
    finals = [m for m in results(messages) if m["is_final"]]
    assert finals, "the random model still answers every utterance"
    for msg in finals:
        check_results_schema(msg)
        assert msg["metadata"]["model_info"]["name"] == "he"
        assert msg["metadata"]["model_info"]["arch"] == "tiny-he"  # the folder's name, not the server's path
    assert messages[-1]["type"] == "Metadata"


# ---- command line ----


def test_config_from_flags_and_environment(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# ops keys\nk3\n\n", encoding="utf-8")
    env = {
        "STREAMER_PORT": "9001",
        "STREAMER_MODEL": "en=fake:tone, he=/models/he",
        "STREAMER_API_KEYS": "k1,k2",
        "STREAMER_IDLE_TIMEOUT": "3.5",
        "STREAMER_NO_FINAL_PASS": "1",
    }
    cfg = build_config(["--api-keys-file", str(keys), "--max-streams", "5", "--window-hop", "0.64"], env)
    assert cfg.port == 9001
    assert [(m.name, m.spec) for m in cfg.models] == [("en", "fake:tone"), ("he", "/models/he")]
    assert cfg.api_keys == {"k1", "k2", "k3"}
    assert "k1" not in repr(cfg)
    assert cfg.limits.idle_timeout_s == 3.5 and cfg.limits.max_streams == 5
    assert cfg.streaming.partial_plan.hop_s == 0.64
    assert cfg.streaming.final_pass is False
    # The flag beats the environment.
    assert build_config(["--port", "0", "--model", "xx=fake:tone"], env).port == 0
    assert build_config(["--model", "xx=fake:tone"], env).models == (ModelSpec("xx", "fake:tone"),)
    default = build_config([], {})
    assert default.models == (ModelSpec("en", "builtin:en"),) and default.port == 8000
    assert default.host == "127.0.0.1" and not default.api_keys
    assert build_config(["--endpointing-ms", "false"], {}).streaming.vad.endpoint_ms is None
    assert default.streaming.vad.quiet_db == 30.0 and default.streaming.vad.early_final_ms == 200
    assert build_config(["--vad-quiet-db", "off"], {}).streaming.vad.quiet_db is None
    assert build_config([], {"STREAMER_VAD_QUIET_DB": "24"}).streaming.vad.quiet_db == 24.0
    assert build_config(["--early-final-ms", "0"], {}).streaming.vad.early_final_ms == 0
    # Batch size: the engine picks (timed on a GPU, 1 on a CPU; the batcher lets it take up to 256) unless a
    # number is given.
    assert default.engine.max_batch is None and default.batcher.max_batch == 256
    chosen = build_config(["--max-batch", "4"], {})
    assert chosen.engine.max_batch == 4 and chosen.batcher.max_batch == 4


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "http"],
        ["--port", "70000"],
        ["--model", "en"],
        ["--model", "en=fake:tone", "--model", "en=builtin:en"],
        ["--max-streams", "0"],
        ["--idle-timeout", "-1"],
        ["--window-hop", "0"],
        ["--vad-quiet-db", "-3"],
        ["--vad-quiet-db", "loud"],
        ["--early-final-ms", "-1"],
        ["--vad-aggressiveness", "7"],
        ["--endpointing-ms", "5"],
        ["--max-batch", "0"],
        ["--max-batch", "lots"],
        ["--vad", "psychic"],
        ["--log-level", "loud"],
        ["--api-keys-file", "/nonexistent/keys"],
    ],
)
def test_invalid_settings_exit_2_with_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and "Traceback" not in err


def test_unknown_flag_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--frobnicate"])
    assert info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_build_config_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="STREAMER_PORT"):
        build_config([], {"STREAMER_PORT": "eighty"})


def test_help_documents_every_flag_with_env_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--host", "--port", "--model", "--api-key", "--max-streams", "--shutdown-grace", "--vad"):
        assert flag in text
    for env in (
        "STREAMER_HOST",
        "STREAMER_PORT",
        "STREAMER_MODEL",
        "STREAMER_API_KEYS",
        "STREAMER_LOG_LEVEL",
    ):
        assert env in text
    assert "default 127.0.0.1" in text and "default 8000" in text


# ---- the real process ----


async def test_process_serves_and_stops_gracefully_on_sigterm() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streamer",
        "--port",
        "0",
        "--model",
        "en=fake:tone",
        "--drain-timeout",
        "0",  # this test is about the flush; tests/test_drain.py covers the drain
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    log: list[str] = []
    try:
        async with asyncio.timeout(30):
            port = None
            while port is None:
                line = (await proc.stderr.readline()).decode()
                assert line, "server exited early:\n" + "".join(log)
                log.append(line)
                match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
                port = int(match.group(1)) if match else None
            url = f"ws://127.0.0.1:{port}/v1/listen?interim_results=true"
            async with websockets.connect(url) as ws:
                # One finished utterance, then one still open when the signal comes.
                await send_audio(ws, pcm16(utterances(["abc", "bad"])))
                await send_audio(ws, pcm16(tone_phrase(["cafe", "dab"], seed=5)))
                seen: list[Json] = []
                while True:  # an interim about the open utterance proves the server is reading it
                    seen.append(json.loads(await ws.recv()))
                    last = seen[-1]
                    if (
                        last["type"] == "Results"
                        and "cafe" in last["channel"]["alternatives"][0]["transcript"]
                    ):
                        break
                await asyncio.sleep(0.3)
                proc.send_signal(signal.SIGTERM)
                messages = seen + await drain(ws)
                assert ws.close_code == 1012
            rest = (await proc.stderr.read()).decode()
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    log.append(rest)
    assert code == 0, "".join(log)
    assert messages[-1]["type"] == "Metadata"
    assert final_words(messages) == ["abc", "bad", "cafe", "dab"]
    assert "Traceback" not in "".join(log)
