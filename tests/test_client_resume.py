"""The client side of resuming: the replay buffer, and a stream that outlives a server restart."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from aiohttp import web

from client.options import ClientOptions
from client.resume import ReplayBuffer
from client.run import run_stream
from client.sources import MemorySource
from streamer.config import ServerConfig
from streamer.engine.fake import ToneEngine
from streamer.server import create_app
from tests.receivers import free_port
from tests.test_server import config, pcm16, utterances

PHRASES = (["abc", "bad"], ["cafe"], ["dab", "face"], ["bead", "fade"], ["head", "jig"])


def test_replay_buffer_trims_at_finals_and_drops_the_oldest_beyond_its_size() -> None:
    buffer = ReplayBuffer(max_bytes=10)
    for block in (b"aaaa", b"bbbb"):
        buffer.add(block)
    assert buffer.replay(2) == (2, [b"aa", b"bbbb"])  # a final ended inside the first block
    buffer.add(b"cccc")
    assert (buffer.start, buffer.end, buffer.dropped) == (2, 12, 0)
    buffer.add(b"dddd")  # 14 bytes kept would be over 10: the oldest block goes, unfinal
    assert buffer.replay(0) == (8, [b"cccc", b"dddd"])
    assert buffer.dropped == 6


@asynccontextmanager
async def serve_on(cfg: ServerConfig, port: int) -> AsyncIterator[web.Application]:
    app = create_app(cfg, {m.name: ToneEngine() for m in cfg.models})
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    try:
        yield app
    finally:
        await runner.cleanup()  # shutdown: streams end with their finals and 1012


async def test_client_resumes_its_stream_on_the_restarted_server() -> None:
    port = free_port()
    cfg = config(resume_secret=b"client-resume-test")
    pcm = pcm16(utterances(*PHRASES))
    first_final = asyncio.Event()
    seen: list[dict[str, Any]] = []

    def on_message(text: str) -> None:
        message = json.loads(text)
        seen.append(message)
        if message.get("is_final") and message["channel"]["alternatives"][0]["words"]:
            first_final.set()

    err = io.StringIO()
    options = ClientOptions(url=f"ws://127.0.0.1:{port}")
    source = MemorySource(pcm, frame_ms=50, speed=3.0, pace=True)
    async with serve_on(cfg, port):
        client = asyncio.create_task(
            run_stream(options, source=source, stdout=io.StringIO(), stderr=err, on_message=on_message)
        )
        await asyncio.wait_for(first_final.wait(), 20)
    # The server is gone mid-stream (1012); the client retries until the new one listens.
    await asyncio.sleep(0.5)
    async with serve_on(cfg, port):
        report = await asyncio.wait_for(client, 60)
    assert report.exit_code == 0, err.getvalue()
    assert "server shutting down: resuming the stream" in err.getvalue()
    assert report.transcript == " ".join(w for p in PHRASES for w in p)
    results = [m for m in seen if m["type"] == "Results" and m["is_final"]]
    assert len({m["metadata"]["request_id"] for m in results}) == 1
    starts = [float(m["start"]) for m in results]
    assert starts == sorted(starts)
    assert report.metadata is not None
    assert report.metadata["duration"] == len(pcm) / 32000


async def test_a_server_without_the_secret_refuses_the_token_and_the_client_says_why() -> None:
    port = free_port()
    pcm = pcm16(utterances(*PHRASES))
    first_final = asyncio.Event()

    def on_message(text: str) -> None:
        if '"is_final":true' in text:
            first_final.set()

    err = io.StringIO()
    options = ClientOptions(url=f"ws://127.0.0.1:{port}")
    source = MemorySource(pcm, frame_ms=50, speed=3.0, pace=True)
    async with serve_on(config(resume_secret=b"one"), port):
        client = asyncio.create_task(
            run_stream(options, source=source, stdout=io.StringIO(), stderr=err, on_message=on_message)
        )
        await asyncio.wait_for(first_final.wait(), 20)
    async with serve_on(replace(config(), resume_secret=b"two"), port):
        report = await asyncio.wait_for(client, 60)
    assert report.exit_code == 1
    assert "signature does not match" in err.getvalue()


async def test_without_a_resume_buffer_a_restart_ends_the_run_as_before() -> None:
    port = free_port()
    pcm = pcm16(utterances(*PHRASES))
    first_final = asyncio.Event()
    err = io.StringIO()
    options = ClientOptions(url=f"ws://127.0.0.1:{port}", resume_buffer_s=0)
    source = MemorySource(pcm, frame_ms=50, speed=3.0, pace=True)
    async with serve_on(config(), port):
        client = asyncio.create_task(
            run_stream(
                options,
                source=source,
                stdout=io.StringIO(),
                stderr=err,
                on_message=lambda text: first_final.set() if '"is_final":true' in text else None,
            )
        )
        await asyncio.wait_for(first_final.wait(), 20)
    report = await asyncio.wait_for(client, 30)
    assert report.exit_code == 1
    assert "1012" in err.getvalue() and "resuming" not in err.getvalue()
