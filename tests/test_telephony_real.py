"""Tier 5: real two-party telephone calls (Asterisk prompts, 8 kHz) into a real server process with the
built-in model, through each phone dialect's real or faithful client; per channel, the finals that reach
the webhook receiver and a watcher equal the offline transcript of that channel's audio.

Twilio: the PyPI `streamdouble` Media Streams simulator places the call (a two-track `<Start><Stream>`
fork: the caller on `inbound`, the agent on `outbound`, paced in real time). The other platforms have
no installable client: `tests/phone_clients.py` follows their specifications.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import jiwer
import numpy as np
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
async def server_with_receiver(*args: str) -> AsyncIterator[tuple[ServerProcess, Receiver]]:
    receiver = Receiver(secret=SECRET)
    await receiver.start()
    server = ServerProcess(["--callback-url", receiver.url, *args], env={"STREAMER_CALLBACK_SECRET": SECRET})
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


async def test_audiohook_call() -> None:
    from streamer.audio import encode_mulaw
    from tests.phone_clients import AudioHookClient, audiohook_headers, transcript_words

    call = two_party_call()
    stereo = encode_mulaw(np.stack([call.caller, call.agent], axis=1).reshape(-1))
    async with server_with_receiver() as (server, receiver):
        base = server.url.replace("http", "ws", 1)
        host = base.split("://", 1)[1]
        async with Watcher(f"{base}/v1/watch?tag=audiohook-call") as watcher, asyncio.timeout(90):
            session_id = str(uuid.uuid4())
            headers = audiohook_headers(host, "/audiohook", "any-key", None, session_id)
            session = AudioHookClient(f"{base}/audiohook", headers, session_id)
            await session.connect()
            opened = await session.open(custom={"tag": "audiohook-call"})
            conversation = opened["id"]
            await session.send_audio(stereo)
            assert (await session.close())[-1]["type"] == "closed"
            await receiver.wait_for(lambda: any(p["type"] == "Metadata" for p in receiver.posts), timeout=60)
            while not any(m["type"] == "Metadata" for m in watcher.messages):
                await asyncio.sleep(0.1)
        call_id = receiver.posts[-1]["stream"]["call_id"]
        assert conversation == session_id and call_id
        check_channels(receiver, watcher, call_id)
        for channel in (0, 1):  # and back on the AudioHook socket itself
            assert " ".join(transcript_words(session.transcripts(channel))) == offline(call.mulaw(channel))


async def test_audiosocket_call_one_connection_per_leg() -> None:
    """AudioSocket carries one mono leg per connection (its UUID is the stream's call id): the caller and
    the agent come in as two connections, as two Snoop channels would send them."""
    import re

    from streamer.audio import float_to_linear16
    from streamer.server.ingress.audiosocket import packet

    call = two_party_call()
    legs = {uuid.uuid4(): call.caller, uuid.uuid4(): call.agent}
    async with server_with_receiver("--audiosocket-port", "0") as (server, receiver):
        found = [re.search(r"AudioSocket listening on [^:]+:(\d+)", line) for line in server.log_lines]
        port = int(next(m for m in found if m).group(1))
        base = server.url.replace("http", "ws", 1)
        watchers = [Watcher(f"{base}/v1/watch?stream={leg}") for leg in legs]

        async def dial(leg: uuid.UUID, audio: np.ndarray) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            slin = float_to_linear16(audio)
            writer.write(packet(0x01, leg.bytes))
            for offset in range(0, len(slin), 320):
                writer.write(packet(0x10, slin[offset : offset + 320]))
                await writer.drain()
            writer.write(packet(0x00))
            await writer.drain()
            assert await reader.read() == b""
            writer.close()

        async with watchers[0], watchers[1], asyncio.timeout(90):
            await asyncio.gather(*(dial(leg, audio) for leg, audio in legs.items()))
            await receiver.wait_for(
                lambda: sum(p["type"] == "Metadata" for p in receiver.posts) >= 2, timeout=60
            )
            for w in watchers:
                while not any(m["type"] == "Metadata" for m in w.messages):
                    await asyncio.sleep(0.1)
    from streamer.audio import encode_mulaw

    for (leg, audio), watcher in zip(legs.items(), watchers, strict=True):
        reference = offline(encode_mulaw(audio))
        assert " ".join(words(receiver.finals(0, stream=str(leg)))) == reference
        assert " ".join(words(watcher.finals(0))) == reference
    assert receiver.bad_signatures == 0


async def test_asterisk_chan_websocket_call_one_connection_per_leg() -> None:
    """chan_websocket carries one channel per connection: one dialled connection per leg."""
    call = two_party_call()
    legs = {"leg-caller": call.mulaw(0), "leg-agent": call.mulaw(1)}
    async with server_with_receiver() as (server, receiver):
        base = server.url.replace("http", "ws", 1)
        watchers = [Watcher(f"{base}/v1/watch?stream={leg}") for leg in legs]

        async def dial(leg: str, data: bytes) -> None:
            async with connect(f"{base}/asterisk", subprotocols=["media"]) as ws:  # type: ignore[list-item]
                await ws.send(json.dumps({"event": "MEDIA_START", "connection_id": leg, "format": "ulaw"}))
                assert json.loads(await ws.recv()) == {"command": "ANSWER"}
                for offset in range(0, len(data), 160):
                    await ws.send(data[offset : offset + 160])

        async with watchers[0], watchers[1], asyncio.timeout(90):
            await asyncio.gather(*(dial(leg, data) for leg, data in legs.items()))
            await receiver.wait_for(
                lambda: sum(p["type"] == "Metadata" for p in receiver.posts) >= 2, timeout=60
            )
            for w in watchers:
                while not any(m["type"] == "Metadata" for m in w.messages):
                    await asyncio.sleep(0.1)
    for (leg, data), watcher in zip(legs.items(), watchers, strict=True):
        reference = offline(data)
        assert " ".join(words(receiver.finals(0, stream=leg))) == reference
        assert " ".join(words(watcher.finals(0))) == reference


async def test_freeswitch_audio_fork_stereo_call() -> None:
    from streamer.audio import float_to_linear16

    call = two_party_call()
    stereo = float_to_linear16(np.stack([call.caller, call.agent], axis=1).reshape(-1))
    async with server_with_receiver() as (server, receiver):
        base = server.url.replace("http", "ws", 1)
        async with Watcher(f"{base}/v1/watch?tag=fork-call") as watcher, asyncio.timeout(90):
            async with connect(f"{base}/fork", subprotocols=["audio.drachtio.org"]) as ws:  # type: ignore[list-item]
                metadata = {"uuid": "fs-uuid-1", "sampleRate": 8000, "mixType": "stereo", "tag": "fork-call"}
                await ws.send(json.dumps(metadata))
                for offset in range(0, len(stereo), 640):
                    await ws.send(stereo[offset : offset + 640])
                await ws.close()
            await receiver.wait_for(lambda: any(p["type"] == "Metadata" for p in receiver.posts), timeout=60)
            while not any(m["type"] == "Metadata" for m in watcher.messages):
                await asyncio.sleep(0.1)
        check_channels(receiver, watcher, "fs-uuid-1")
