"""Faults: clients that vanish, an engine that raises, and SIGTERM with live streams.

In-process servers for the first two (so the test can count the server's sessions, windows and tasks),
real `python -m streamer` processes and real clients for the signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from streamer.batcher import BatcherConfig
from streamer.bench.soak import ServerProcess, read_metrics
from streamer.config import Limits
from streamer.engine.fake import ToneEngine, tone_word
from streamer.server import STATE, ServerState
from tests.sessions import WORDS
from tests.test_server import (
    Json,
    config,
    drain,
    final_words,
    pcm16,
    send_audio,
    serve,
    silence,
    utterances,
    words_of,
)

SR = 16000


async def _settle(state: ServerState, baseline_tasks: int, timeout: float = 10.0) -> None:
    """Wait until the server holds no stream, no window and no task beyond the baseline."""
    deadline = time.monotonic() + timeout
    batcher = state.models["en"].batcher
    while time.monotonic() < deadline:
        if (
            not state.live
            and not state.active
            and not state.jobs
            and not batcher.queued
            and len(asyncio.all_tasks()) <= baseline_tasks
        ):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(
        f"not released: live={len(state.live)} active={state.active} jobs={len(state.jobs)} "
        f"queued={batcher.queued} tasks={len(asyncio.all_tasks())} (baseline {baseline_tasks})"
    )


async def test_vanished_clients_release_sessions_windows_and_tasks() -> None:
    # A slow engine, so that every client leaves with windows queued or running.
    engine = ToneEngine(per_window_s=0.03)
    cfg = config(
        limits=Limits(max_inflight_windows=4, idle_timeout_s=5.0), batcher=BatcherConfig(max_batch=2)
    )
    audio = pcm16(utterances(["abc", "bad", "cafe"], ["dab", "face"], ["bead", "fade"]))
    async with serve(cfg, {"en": engine}) as server, asyncio.timeout(30):
        state = server.app[STATE]
        # A first stream from start to end, so that everything created once per app exists already.
        async with connect(server.ws_url()) as ws:
            await ws.send(json.dumps({"type": "CloseStream"}))
            await drain(ws)
        await _settle(state, baseline_tasks=10**6)
        baseline = len(asyncio.all_tasks())

        clients = [await connect(server.ws_url("interim_results=true")) for _ in range(4)]
        for ws in clients:
            await send_audio(ws, audio[: len(audio) // 2], pause=0.002)
        refs: list[weakref.ref[Any]] = []
        for live in state.live.values():
            refs += [weakref.ref(live), weakref.ref(live.stream), weakref.ref(live.runner)]
            refs += [weakref.ref(s) for s in live.stream.sessions]
        assert len(state.live) == 4 and sum(live.runner.inflight for live in state.live.values()) > 0
        assert len(asyncio.all_tasks()) > baseline
        # Four ways to vanish: TCP reset, TCP reset while the server waits for windows, a close frame
        # without CloseStream, and going away in the middle of a frame.
        clients[0].transport.abort()
        await clients[1].send(audio[len(audio) // 2 :])
        clients[1].transport.abort()
        await clients[2].close(code=1001)
        clients[3].transport.write(b"\x82\xfe\x10\x00\x01\x02\x03\x04" + b"\x00" * 100)  # 4 KiB, cut short
        clients[3].transport.abort()
        live = None  # the test holds no reference of its own

        await _settle(state, baseline)
        gc.collect()
        assert [r for r in refs if r() is not None] == [], "stream objects outlived their connection"
        async with aiohttp.ClientSession() as http:
            metrics = await read_metrics(http, server.http)
    assert metrics["streamer_live_sessions"] == 0
    assert metrics['streamer_active_streams{kind="live"}'] == 0
    assert metrics['streamer_streams_closed_total{reason="client_closed"}'] == 4


async def test_engine_failure_in_a_shared_batch_fails_only_its_stream() -> None:
    # Windows louder than 0.8 make the fake engine fail; batches of up to 8 windows from every stream,
    # so the poisoned window shares batches with healthy ones and only the one-by-one retry tells them apart.
    failed_batch_sizes: list[int] = []

    def fail(windows: Any) -> bool:
        bad = any(float(np.abs(w).max()) > 0.8 for w in windows)
        if bad:
            failed_batch_sizes.append(len(windows))
        return bad

    engine = ToneEngine(fail=fail, delay_s=0.02)
    cfg = config(batcher=BatcherConfig(max_batch=8, max_wait_ms=30.0))
    phrases = (["abc", "bad"], ["cafe"], ["dab", "face"])
    # Long enough (1.4 s) for partial windows, which batch with the other streams' partial windows; a
    # final pass batches only with other finals.
    loud = [tone_word(w, amplitude=0.95) for w in ("abcd", "face", "bead")]
    poison = np.concatenate([silence(0.3), *loud, silence(0.8)])
    async with serve(cfg, {"en": engine}) as server, asyncio.timeout(30):

        async def healthy() -> tuple[list[Json], int | None]:
            async with connect(server.ws_url("interim_results=true")) as ws:
                await send_audio(ws, pcm16(utterances(*phrases)), chunk=1600, pause=0.005)
                await ws.send(json.dumps({"type": "CloseStream"}))
                return await drain(ws), ws.close_code

        async def failing() -> tuple[list[Json], int | None, str]:
            async with connect(server.ws_url("interim_results=true")) as ws:
                with contextlib.suppress(ConnectionClosed):  # the failure may close it mid-send
                    await send_audio(ws, pcm16(poison), chunk=1600, pause=0.005)
                messages = await drain(ws)
                return messages, ws.close_code, ws.close_reason or ""

        outcomes = await asyncio.gather(healthy(), healthy(), healthy(), failing())
        async with aiohttp.ClientSession() as http:
            metrics = await read_metrics(http, server.http)
        # The server carries on: a new stream after the failure works.
        async with connect(server.ws_url()) as ws:
            await send_audio(ws, pcm16(utterances(["face"])))
            await ws.send(json.dumps({"type": "CloseStream"}))
            assert final_words(await drain(ws)) == ["face"]

    assert max(failed_batch_sizes) > 1, "the poisoned window shared a batch with others"
    assert failed_batch_sizes[-1] == 1, "and was retried alone"
    *good, (bad, bad_code, bad_reason) = outcomes
    for messages, code in good:
        assert code == 1000
        assert final_words(messages) == words_of(*phrases)
        assert messages[-1]["type"] == "Metadata"
    assert bad_code == 1011 and bad_reason == "engine failure"
    assert bad[-1]["type"] == "Error" and bad[-1]["variant"] == "ENGINE_FAILURE"
    assert metrics['streamer_engine_failures_total{model="en"}'] == 1
    assert metrics['streamer_engine_failed_batches{model="en"}'] >= 2  # the shared batch, then the retry
    assert metrics['streamer_streams_closed_total{reason="engine_error"}'] == 1


# ---- SIGTERM with live streams: a real process, real clients ----


@dataclass
class _Client:
    """A client streaming tone words at real-time pace, remembering when each word was fully sent."""

    words: list[str]
    audio: np.ndarray
    word_ends: list[int]  # sample just after each word
    sent_at: dict[int, float] = field(default_factory=dict)  # word index -> when its last byte was sent
    messages: list[Json] = field(default_factory=list)
    close_code: int | None = None

    @classmethod
    def make(cls, seed: int) -> _Client:
        rng = np.random.default_rng(seed)
        words = [WORDS[i] for i in rng.integers(0, len(WORDS), 14)]
        parts, ends, pos = [silence(0.3)], [], int(0.3 * SR)
        for i, word in enumerate(words):
            tone = tone_word(word)
            parts.append(tone)
            pos += len(tone)
            ends.append(pos)
            # Short faint gaps inside a phrase, a silence that ends the utterance every third word.
            gap = (
                silence(0.6)
                if i % 3 == 2
                else (0.012 * rng.standard_normal(int(0.12 * SR))).astype(np.float32)
            )
            parts.append(gap)
            pos += len(gap)
        return cls(words, np.concatenate(parts), ends)

    async def run(self, ws: ClientConnection) -> None:
        receiver = asyncio.create_task(self._receive(ws))
        data = pcm16(self.audio)
        began = time.monotonic()
        chunk = 1600  # 50 ms
        try:
            for offset in range(0, len(data), 2 * chunk):
                await ws.send(data[offset : offset + 2 * chunk])
                end_sample = (offset + 2 * chunk) // 2
                now = time.monotonic()
                for i, word_end in enumerate(self.word_ends):
                    if word_end <= end_sample:
                        self.sent_at.setdefault(i, now)
                await asyncio.sleep(max(0.0, began + end_sample / SR - time.monotonic()))
        except ConnectionClosed:
            pass
        await receiver
        self.close_code = ws.close_code

    async def _receive(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                self.messages.append(json.loads(raw))
        except ConnectionClosed:
            pass


async def test_sigterm_flushes_every_live_stream_of_a_real_process() -> None:
    key = "sigterm-test-key-5d1f0c"
    async with (
        ServerProcess(
            ["--model", "en=fake:tone", "--shutdown-grace", "5", "--drain-timeout", "0", "--api-key", key]
        ) as server,
        asyncio.timeout(60),
    ):
        clients = [_Client.make(seed) for seed in range(4)]
        sockets = [
            await connect(server.ws_url(), additional_headers={"Authorization": f"Token {key}"})
            for _ in clients
        ]
        runs = [asyncio.create_task(c.run(ws)) for c, ws in zip(clients, sockets, strict=True)]
        await asyncio.sleep(3.5)
        signalled = time.monotonic()
        server.terminate()
        await asyncio.gather(*runs)
        code = await server.stop()
        stopped = time.monotonic() - signalled

    log = "".join(server.log_lines)
    assert code == 0, log
    assert stopped < 5 + 2, "exits within the grace period"
    assert "Traceback" not in log and key not in log
    for client in clients:
        before = sum(1 for t in client.sent_at.values() if t < signalled)
        assert 3 <= before < len(client.words), "the signal came in the middle of the stream"
        got = final_words(client.messages)
        # Every word sent before the signal is final, in order, nothing repeated; after them at most the
        # words (or the start of the word) that were on their way.
        assert got[:before] == client.words[:before], (got, client.words, before)
        assert len(got) <= len(client.words)
        for i, word in enumerate(got[before:], before):
            assert word == client.words[i] or (i == len(got) - 1 and client.words[i].startswith(word))
        assert client.messages[-1]["type"] == "Metadata"
        assert client.close_code == 1012
