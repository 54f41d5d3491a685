"""Overload: admission by measured engine load, and backpressure instead of memory growth.

A slow fake engine (`ToneEngine(per_window_s=...)`) saturates the inference thread: new streams then get
503 with Retry-After and /readyz turns not ready, while the streams already running finish with every
final. A client that sends faster than real time is held back by the socket (the server stops reading
while its windows are in flight), and a client that reads slowly loses interim results, never finals.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import aiohttp
import numpy as np
import pytest
from websockets.asyncio.client import connect

from streamer.batcher import BatcherConfig
from streamer.cli import build_config, main
from streamer.config import Limits, ModelSpec
from streamer.engine.fake import ToneEngine, tone_phrase
from streamer.errors import ConfigError
from streamer.load import LoadTracker
from streamer.server import STATE, EngineSaturated, ServerState
from tests.test_server import (
    Json,
    Server,
    config,
    drain,
    final_words,
    handshake_error,
    pcm16,
    results,
    send_audio,
    serve,
    silence,
    utterances,
    words_of,
)

# ---- the measure ----


def test_load_tracker_measures_busy_time_and_queue_wait() -> None:
    tracker = LoadTracker(window_s=1.0)
    assert tracker.busy_fraction(now=100.0) == 0.0 and tracker.queue_wait(now=100.0) == 0.0
    token = tracker.begin(0.2, now=100.0)
    assert tracker.busy_fraction(now=100.5) == pytest.approx(0.5)  # the running batch counts
    tracker.end(token, now=100.6)
    tracker.end(token, now=100.65)  # ending twice changes nothing
    tracker.end(tracker.begin(0.4, now=100.7), now=100.9)
    assert tracker.busy_fraction(now=101.0) == pytest.approx(0.8)
    assert tracker.queue_wait(now=101.0) == pytest.approx(0.3)
    # Half a window later only what overlaps the window counts: 100.5-100.6 and 100.7-100.9.
    assert tracker.busy_fraction(now=101.5) == pytest.approx(0.3)
    assert tracker.queue_wait(now=101.5) == pytest.approx(0.4)
    assert tracker.busy_fraction(now=103.0) == 0.0 and tracker.queue_wait(now=103.0) == 0.0
    tracker.begin(0.0, now=110.0)  # one batch longer than the window: fully busy
    assert tracker.busy_fraction(now=111.5) == 1.0


def test_load_tracker_counts_each_lane() -> None:
    # Two lanes: one batch running keeps half the capacity busy, two keep all of it.
    tracker = LoadTracker(window_s=1.0, lanes=2)
    first = tracker.begin(0.0, now=100.0)
    assert tracker.busy_fraction(now=101.0) == pytest.approx(0.5)
    second = tracker.begin(0.0, now=101.0)
    assert tracker.busy_fraction(now=102.0) == pytest.approx(1.0)
    tracker.end(first, now=102.0)
    tracker.end(second, now=102.5)
    assert tracker.busy_fraction(now=103.0) == pytest.approx(0.25)  # 102.0-102.5 on one of two lanes
    with pytest.raises(ConfigError):
        LoadTracker(lanes=0)


def test_load_limits_from_flags_and_environment(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = build_config(
        ["--max-busy", "0.75", "--load-window", "5"],
        {"STREAMER_MAX_QUEUE_WAIT": "0.5", "STREAMER_MAX_OUTBOX": "16", "STREAMER_MAX_BUSY": "0.1"},
    )
    assert cfg.limits.max_busy_fraction == 0.75  # the flag beats the environment
    assert cfg.limits.max_queue_wait_s == 0.5 and cfg.limits.load_window_s == 5.0
    assert cfg.limits.max_outbox == 16
    default = build_config([], {}).limits
    assert (default.max_busy_fraction, default.max_queue_wait_s, default.load_window_s) == (0.9, 1.0, 10.0)
    for argv in (
        ["--max-busy", "0"],
        ["--max-busy", "1.5"],
        ["--max-queue-wait", "0"],
        ["--load-window", "0"],
    ):
        assert main(argv) == 2
        assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--max-busy", "--max-queue-wait", "--load-window", "--max-outbox", "STREAMER_MAX_BUSY"):
        assert flag in text


# ---- admission ----


async def _ready(server: Server) -> tuple[int, Json]:
    async with aiohttp.ClientSession() as http, http.get(f"{server.http}/readyz") as resp:
        return resp.status, await resp.json()


async def _wait_ready(server: Server, want: int, timeout: float = 8.0) -> Json:
    deadline = time.monotonic() + timeout
    while True:
        status, body = await _ready(server)
        if status == want or time.monotonic() > deadline:
            assert status == want, body
            return body
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("trigger", ["busy", "queue_wait"])
async def test_saturated_engine_refuses_new_streams_and_finishes_old_ones(trigger: str) -> None:
    # Each window costs 80 ms on the one inference thread, so a stream sent faster than real time keeps
    # it busy. With the busy limit at 1 (only a window-long batch reaches it), the queue wait trips alone.
    limits = (
        Limits(load_window_s=1.0, max_busy_fraction=0.9, max_queue_wait_s=60.0)
        if trigger == "busy"
        else Limits(load_window_s=1.0, max_busy_fraction=1.0, max_queue_wait_s=0.05)
    )
    engine = ToneEngine(per_window_s=0.08)
    cfg = config(limits=limits, batcher=BatcherConfig(max_batch=1))
    phrases = tuple([["abc", "bad", "cafe"], ["dab", "face"]] * 4)
    async with serve(cfg, {"en": engine}) as server, asyncio.timeout(60):
        assert (await _ready(server))[0] == 200
        streams = [await connect(server.ws_url("interim_results=true")) for _ in range(2)]
        for ws in streams:
            await send_audio(ws, pcm16(utterances(*phrases)), chunk=3200)
        body = await _wait_ready(server, 503)
        assert body["load"]["en"]["saturated"] is True
        assert body["accepting"] is True and body["active_streams"] == 2
        status, error, headers = await handshake_error(server.ws_url())
        assert status == 503 and error["err_code"] == "OVERLOADED"
        assert int(headers["Retry-After"]) >= 1
        assert ("busy" if trigger == "busy" else "waited") in error["err_msg"]
        # The streams already admitted go on to the end.
        outcomes = []
        for ws in streams:
            await ws.send(json.dumps({"type": "CloseStream"}))
            outcomes.append((await drain(ws), ws.close_code))
        # Once the engine has had a quiet window, streams are admitted again.
        await _wait_ready(server, 200)
        async with connect(server.ws_url()) as ws:
            await send_audio(ws, pcm16(utterances(["face"])))
            await ws.send(json.dumps({"type": "CloseStream"}))
            assert final_words(await drain(ws)) == ["face"]
        async with aiohttp.ClientSession() as http:
            metrics = await (await http.get(f"{server.http}/metrics")).text()
    for messages, code in outcomes:
        assert code == 1000
        assert final_words(messages) == words_of(*phrases)
        assert messages[-1]["type"] == "Metadata"
    assert 'streamer_rejected_requests_total{reason="saturated"} 1.0' in metrics
    assert "streamer_engine_busy_ratio" in metrics and "streamer_engine_queue_wait_seconds" in metrics


def test_saturation_is_per_model() -> None:
    cfg = config(models=(ModelSpec("en", "fake:tone"), ModelSpec("he", "fake:tone")))
    state = ServerState(cfg, {"en": ToneEngine(), "he": ToneEngine()}, owns_engines=False)
    state.models["en"].batcher.load.begin(0.0, now=time.perf_counter() - 60)  # busy for a minute
    assert state.saturation("en") is not None and state.saturation("he") is None
    state.reserve("live", "he")  # the other model's streams are still admitted
    with pytest.raises(EngineSaturated, match="capacity"):
        state.reserve("live", "en")
    assert not state.ready


# ---- backpressure: a client that sends too fast ----


async def test_fast_sender_is_held_back_by_the_socket_and_buffers_stay_bounded() -> None:
    engine = ToneEngine(per_window_s=0.05)
    max_inflight = 2
    cfg = config(
        limits=Limits(max_inflight_windows=max_inflight, idle_timeout_s=5.0),
        batcher=BatcherConfig(max_batch=1),
    )
    speech = utterances(*[["abc", "bad", "cafe"]] * 4)
    data = pcm16(np.tile(speech, 40))  # 6 MB: over a minute of work for this engine
    async with serve(cfg, {"en": engine}) as server, asyncio.timeout(30):
        state = server.app[STATE]
        batcher = state.models["en"].batcher
        # A small client send buffer, so that what is in flight is what the server side holds.
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
        ws = await connect(server.ws_url("interim_results=true"), sock=sock, compression=None)
        sent = 0

        async def blast() -> None:
            nonlocal sent
            for i in range(0, len(data), 3200):
                await ws.send(data[i : i + 3200])
                sent += len(data[i : i + 3200])

        sender = asyncio.create_task(blast())
        samples: list[dict[str, Any]] = []
        for _ in range(40):
            await asyncio.sleep(0.05)
            live = next(iter(state.live.values()))
            samples.append(
                {
                    "sent": sent,
                    "received": live.stream.bytes_received,
                    "inflight": live.runner.inflight,
                    "queued": batcher.queued,
                    "outbox": live._out.qsize(),
                    "pending": sum(s.pending_requests for s in live.stream.sessions),
                }
            )
        assert not sender.done(), "the client could not send everything: the socket pushed back"
        sender.cancel()
        ws.transport.abort()  # and it may go away in the middle of it
        for _ in range(200):
            if not state.live and not batcher.queued:
                break
            await asyncio.sleep(0.02)
        assert not state.live and not state.active and not batcher.queued

    last = samples[-1]
    assert last["received"] > 0
    assert last["sent"] < len(data) / 2
    # What the client got out is what the server's bounded buffers hold: the kernel receive buffer
    # (2 x 256 KiB) and aiohttp's frame queue (about 512 KiB) plus a frame; nothing grows with the blast.
    assert last["sent"] - last["received"] < 1.6 * 1024 * 1024
    assert max(s["inflight"] for s in samples) <= max_inflight + 2
    assert max(s["queued"] for s in samples) <= max_inflight + 2
    assert max(s["pending"] for s in samples) <= max_inflight + 2
    assert max(s["outbox"] for s in samples) <= Limits().max_outbox


# ---- backpressure: a client that reads too slowly ----


async def _stream_continuous_speech(server: Server, *, reads_slowly: bool) -> tuple[list[Json], int]:
    """20 s of pause-less tone speech on 4 channels at 10x real time, interim results on; a slow reader
    does not read (its socket buffer is small) until everything is sent."""
    words = ["abc", "bad", "cafe", "dab", "face", "bead", "fade"] * 20
    mono = np.concatenate([silence(0.3), tone_phrase(words)])[: 20 * 16000]
    data = pcm16(np.repeat(mono[:, None], 4, axis=1).reshape(-1))
    query = "interim_results=true&endpointing=false&channels=4&multichannel=true"
    sock = socket.socket()
    if reads_slowly:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    # No compression: results then take their real size in the socket buffers.
    async with connect(
        server.ws_url(query), sock=sock, compression=None, max_queue=1 if reads_slowly else None
    ) as ws:
        live = next(iter(server.app[STATE].live.values()))
        await send_audio(ws, data, chunk=4 * 3200, pause=0.01)
        await ws.send(json.dumps({"type": "CloseStream"}))
        messages = await drain(ws)
        assert ws.close_code == 1000
    return messages, live._out.dropped


async def test_slow_reader_gets_fewer_interims_and_every_final() -> None:
    cfg = config(limits=Limits(max_outbox=8, idle_timeout_s=10.0))
    async with serve(cfg) as server, asyncio.timeout(40):
        prompt, prompt_dropped = await _stream_continuous_speech(server, reads_slowly=False)
        slow, slow_dropped = await _stream_continuous_speech(server, reads_slowly=True)
        async with aiohttp.ClientSession() as http:
            metrics = await (await http.get(f"{server.http}/metrics")).text()

    def interims(messages: list[Json]) -> int:
        return sum(1 for m in results(messages) if not m["is_final"])

    assert prompt_dropped == 0
    assert slow_dropped > 0 and interims(slow) < interims(prompt)
    assert interims(slow) + slow_dropped >= interims(prompt) * 0.8  # dropped, not never made
    for channel in range(4):
        assert final_words(slow, channel) == final_words(prompt, channel)
        assert len(final_words(slow, channel)) > 20
    assert slow[-1]["type"] == "Metadata"
    assert f'streamer_interims_dropped_total{{model="en"}} {float(slow_dropped)}' in metrics
    # Interim results that survive are still in order and only cover audio after the last final.
    for channel in range(4):
        final_end = 0.0
        for msg in results(slow):
            if msg["channel_index"][0] != channel:
                continue
            assert msg["start"] >= final_end - 1e-6
            if msg["is_final"]:
                final_end = msg["start"] + msg["duration"]


async def test_streams_do_not_negotiate_compression() -> None:
    # permessage-deflate would cost ~300 KB of zlib state per stream and inflate every audio frame.
    async with serve() as server, asyncio.timeout(10), connect(server.ws_url()) as ws:
        assert ws.protocol.extensions == []
        await ws.send(json.dumps({"type": "CloseStream"}))
        await drain(ws)
