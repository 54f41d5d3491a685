"""Tier 5: real two-party telephone calls (Asterisk prompts, 8 kHz) into a real server process with the
built-in model, through each phone dialect's real or faithful client; per channel, the finals that reach
the webhook receiver and a watcher equal the offline transcript of that channel's audio.

Twilio: the PyPI `streamdouble` Media Streams simulator places the call (a two-track `<Start><Stream>`
fork: the caller on `inbound`, the agent on `outbound`, paced in real time).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import jiwer
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from streamer.bench.soak import ServerProcess
from tests.receivers import Receiver, words
from tests.telephone_calls import offline, two_party_call

pytestmark = pytest.mark.slow
SECRET = "receiver-secret"


class Watcher:
    def __init__(self, url: str) -> None:
        self.url = url
        self.messages: list[dict[str, Any]] = []
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watcher:
        self.ws = await connect(self.url)
        self.task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.messages.append(json.loads(raw))
        except ConnectionClosed:
            pass

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()
        assert self.task is not None
        await self.task

    def finals(self, channel: int) -> list[dict[str, Any]]:
        return [
            m
            for m in self.messages
            if m.get("type") == "Results" and m["is_final"] and m["channel_index"][0] == channel
        ]


@asynccontextmanager
async def server_with_receiver() -> AsyncIterator[tuple[ServerProcess, Receiver]]:
    receiver = Receiver(secret=SECRET)
    await receiver.start()
    server = ServerProcess(["--callback-url", receiver.url], env={"STREAMER_CALLBACK_SECRET": SECRET})
    await server.start()
    try:
        yield server, receiver
    finally:
        await server.stop()
        await receiver.stop()


def check_channels(receiver: Receiver, watcher: Watcher, call_id: str) -> None:
    call = two_party_call()
    for channel, text in ((0, call.caller_text), (1, call.agent_text)):
        reference = offline(call.mulaw(channel))
        hooked = " ".join(words(receiver.finals(channel, stream=call_id)))
        watched = " ".join(words(watcher.finals(channel)))
        assert hooked == reference, (channel, hooked, reference)
        assert watched == reference, (channel, watched, reference)
        # And the model heard the prompts (the built-in model reads these four exactly offline).
        assert jiwer.wer(text.replace(".", "").replace("'", ""), hooked.replace("'", "")) <= 0.25, hooked
    assert receiver.bad_signatures == 0


async def test_twilio_call_with_streamdouble() -> None:
    api = pytest.importorskip("streamdouble.api")
    from streamdouble.session import SessionConfig

    call = two_party_call()
    caller, agent = call.mulaw(0), call.mulaw(1)
    frames = [caller[i : i + 160] for i in range(0, len(caller), 160)]
    agent_frames = [agent[i : i + 160] for i in range(0, len(agent), 160)]
    async with server_with_receiver() as (server, receiver):
        base = server.url.replace("http", "ws", 1)
        async with Watcher(f"{base}/v1/watch?tag=twilio-call") as watcher, asyncio.timeout(90):
            config = SessionConfig(
                fork=True,
                tracks=["inbound", "outbound"],
                agent_frames=agent_frames,
                custom_parameters={"tag": "twilio-call"},
                response_timeout_s=0.5,
                quiet_period_s=0.2,
            )
            report = await api.call(f"{base}/twilio", frames=frames, config=config)
            sent = report.result
            assert report.violations == [] and sent.outbound_frames_sent == len(agent_frames)
            assert sent.frames_sent - sent.outbound_frames_sent == len(frames)
            call_id = report.result.identity.call_sid
            await receiver.wait_for(lambda: any(p["type"] == "Metadata" for p in receiver.posts), timeout=60)
            while not any(m["type"] == "Metadata" for m in watcher.messages):
                await asyncio.sleep(0.1)
        check_channels(receiver, watcher, call_id)
