"""Tier 4: Twilio Media Streams on `/twilio` against a real server (tone engine), with our own client
that follows Twilio's message reference, signed the way Twilio signs (checked with the `twilio` package's
own RequestValidator), and delivered to a watcher and a webhook receiver."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import soxr
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from streamer.audio import encode_mulaw
from streamer.config import DeliveryConfig, TelephonyConfig
from streamer.engine.fake import tone_phrase
from tests.receivers import Receiver, words
from tests.test_server import Json, config, final_words, handshake_error, serve, silence

FRAME = 160  # 20 ms of 8 kHz mu-law, what Twilio sends per media message


def mulaw_8k(audio_16k: np.ndarray) -> bytes:
    return encode_mulaw(soxr.resample(audio_16k, 16000, 8000).astype(np.float32))


def call_audio(*parts: tuple[float, list[str] | None]) -> np.ndarray:
    """(seconds of silence, words or None) pieces of one party's side of a call, at 16 kHz."""
    out = []
    for i, (pause, phrase) in enumerate(parts):
        out.append(silence(pause))
        if phrase:
            out.append(tone_phrase(phrase, seed=i))
    return np.concatenate(out).astype(np.float32)


def twilio_start(tracks: list[str], custom: dict[str, str], call_sid: str = "CA42") -> str:
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "start": {
                "accountSid": "AC1",
                "streamSid": "MZ1",
                "callSid": call_sid,
                "tracks": tracks,
                "customParameters": custom,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
            "streamSid": "MZ1",
        }
    )


async def play_call(
    ws: ClientConnection,
    tracks: dict[str, bytes],
    custom: dict[str, str],
    *,
    drop_every: int = 0,
    pace_s: float = 0.0,
    call_sid: str = "CA42",
) -> None:
    """Send a whole call as Twilio does: connected, start, media per 20 ms per track, stop.
    `drop_every`: every Nth caller frame is never sent (lost upstream: a gap in its timestamps)."""
    await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    await ws.send(twilio_start(list(tracks), custom, call_sid))
    length = max(len(data) for data in tracks.values())
    sequence = 2
    for index, offset in enumerate(range(0, length, FRAME)):
        for track, data in tracks.items():
            if track == "inbound" and drop_every and index % drop_every == drop_every - 1:
                continue
            chunk = data[offset : offset + FRAME]
            if not chunk:
                continue
            message = {
                "event": "media",
                "sequenceNumber": str(sequence),
                "media": {
                    "track": track,
                    "chunk": str(index + 1),
                    "timestamp": str(offset // 8),
                    "payload": base64.b64encode(chunk).decode(),
                },
                "streamSid": "MZ1",
            }
            await ws.send(json.dumps(message))
            sequence += 1
        if pace_s:
            await asyncio.sleep(pace_s)
    await ws.send(
        json.dumps({"event": "stop", "sequenceNumber": str(sequence), "stop": {}, "streamSid": "MZ1"})
    )


async def collect(ws: ClientConnection) -> list[Any]:
    got: list[Any] = []
    try:
        async for raw in ws:
            got.append(raw)
    except ConnectionClosed:
        pass
    return got


async def send_inbound(ws: Any, audio: bytes) -> None:
    """`audio` (8 kHz mu-law) as the inbound track's media messages, timestamps in call milliseconds."""
    for offset in range(0, len(audio), FRAME):
        chunk = base64.b64encode(audio[offset : offset + FRAME]).decode()
        media = {"track": "inbound", "timestamp": str(offset // 8), "payload": chunk}
        await ws.send(json.dumps({"event": "media", "media": media}))


def twilio_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/twilio"


async def test_two_party_call_reaches_watcher_and_webhook_per_channel() -> None:
    caller = (["abc", "bad"], ["cafe"])
    agent = (["dab", "face"], ["bead"])
    caller_audio = call_audio((0.3, caller[0]), (0.9, caller[1]), (1.6, None))
    agent_audio = call_audio((1.2, agent[0]), (0.9, agent[1]), (0.8, None))
    receiver = Receiver(secret="hook-key")
    await receiver.start()
    delivery = DeliveryConfig(callback_url=receiver.url, callback_secret="hook-key", callback_backoff_s=0.05)
    try:
        async with serve(config(delivery=delivery)) as server, asyncio.timeout(40):
            watched: list[Json] = []
            viewer = await connect(f"ws://127.0.0.1:{server.port}/v1/watch?stream=CA42")
            watching = asyncio.create_task(collect(viewer))
            async with connect(twilio_url(server.port)) as ws:
                tracks = {"inbound": mulaw_8k(caller_audio), "outbound": mulaw_8k(agent_audio)}
                await play_call(ws, tracks, {"tag": "queue-7", "interim_results": "true"}, drop_every=7)
                back = await collect(ws)
                assert ws.close_code == 1000
            assert back == []  # Twilio accepts only media, mark and clear: nothing is sent on its socket
            await receiver.wait_for(lambda: any(p["type"] == "Metadata" for p in receiver.posts))
            await viewer.close()
            watched = [json.loads(m) for m in await watching]
    finally:
        await receiver.stop()
    for channel, phrases in enumerate((caller, agent)):
        expected = [w for p in phrases for w in p]
        assert final_words(watched, channel) == expected
        assert words(receiver.finals(channel)) == expected
    # Channel times are call times: the agent's first word starts after 1.2 s of the call even though the
    # caller's track lost every 7th frame (the gaps were filled, not closed up).
    first_agent = receiver.finals(1)[0]["channel"]["alternatives"][0]["words"][0]
    assert 1.15 <= first_agent["start"] <= 1.35
    first_caller_late = receiver.finals(0)[1]["channel"]["alternatives"][0]["words"][0]
    assert abs(first_caller_late["start"] - (0.3 + len(tone_phrase(caller[0])) / 16000 + 0.9)) < 0.1
    stream = receiver.posts[0]["stream"]
    assert (stream["dialect"], stream["call_id"], stream["tag"]) == ("twilio", "CA42", "queue-7")
    assert receiver.finals(0)[0]["channel_index"] == [0, 2]
    assert receiver.bad_signatures == 0


async def test_signature_is_required_when_a_twilio_token_is_set(caplog: pytest.LogCaptureFixture) -> None:
    twilio_request = pytest.importorskip("twilio.request_validator")
    token = "twilio-token-1"
    cfg = config(api_keys=frozenset({"k1"}), telephony=TelephonyConfig(twilio_auth_token=token))
    async with serve(cfg) as server, asyncio.timeout(20):
        url = twilio_url(server.port)
        signed_url = f"wss://127.0.0.1:{server.port}/twilio"  # the URL Twilio dialled, as it signs it
        good = twilio_request.RequestValidator(token).compute_signature(signed_url, {})
        assert (await handshake_error(url))[0] == 401
        bad = twilio_request.RequestValidator("wrong").compute_signature(signed_url, {})
        status, body, _ = await handshake_error(url, additional_headers={"X-Twilio-Signature": bad})
        assert status == 401 and "X-Twilio-Signature" in body["err_msg"]
        async with connect(url, additional_headers={"X-Twilio-Signature": good}) as ws:
            await play_call(ws, {"inbound": mulaw_8k(call_audio((0.3, ["abc"]), (0.8, None)))}, {})
            await collect(ws)
            assert ws.close_code == 1000
        async with connect(
            url, additional_headers={"Authorization": "Token k1"}
        ) as ws:  # an API key also does
            await ws.send(json.dumps({"event": "stop"}))
            await collect(ws)
            assert ws.close_code == 1000
    # Behind a proxy the public URL is what Twilio signed.
    public = "wss://asr.example.com"
    cfg = replace(cfg, telephony=TelephonyConfig(twilio_auth_token=token, public_url=public))
    async with serve(cfg) as server, asyncio.timeout(20):
        good = twilio_request.RequestValidator(token).compute_signature(f"{public}/twilio", {})
        async with connect(twilio_url(server.port), additional_headers={"X-Twilio-Signature": good}) as ws:
            await ws.send(json.dumps({"event": "stop"}))
            await collect(ws)
    # API keys but no Twilio token: refused, and the log names the flag to set.
    caplog.set_level(logging.WARNING, logger="streamer")
    async with serve(config(api_keys=frozenset({"k1"}))) as server, asyncio.timeout(20):
        status, body, _ = await handshake_error(twilio_url(server.port))
        assert status == 401 and "--twilio-auth-token" in body["err_msg"]
    assert any("--twilio-auth-token" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        (["{oops"], "malformed JSON"),
        (
            ['{"event":"media","media":{"track":"inbound","payload":"AAAA","timestamp":"0"}}'],
            "before 'start'",
        ),
        (["START", '{"event":"media","media":{"track":"inbound","payload":"%%%"}}'], "base64"),
        (["START", '{"event":"dance"}'], "unknown event"),
        ([b"\x00\x01"], "JSON text"),
    ],
)
async def test_bad_input_closes_that_call_only(messages: list[Any], reason: str) -> None:
    async with serve() as server, asyncio.timeout(20):
        good = await connect(twilio_url(server.port))
        await good.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        async with connect(twilio_url(server.port)) as bad:
            for message in messages:
                await bad.send(twilio_start(["inbound"], {}) if message == "START" else message)
            await collect(bad)
            assert bad.close_code == 1008 and reason in (bad.close_reason or "")
        # The other call is untouched: it still streams and ends normally.
        await play_call(good, {"inbound": mulaw_8k(call_audio((0.3, ["abc"]), (0.8, None)))}, {})
        await collect(good)
        assert good.close_code == 1000


async def test_oversized_frame_and_idle_call() -> None:
    from streamer.config import Limits

    limits = Limits(idle_timeout_s=0.5, max_message_bytes=4096)
    async with serve(config(limits=limits)) as server, asyncio.timeout(20):
        async with connect(twilio_url(server.port)) as ws:
            await ws.send("x" * 5000)
            await collect(ws)
            assert ws.close_code == 1009
        async with connect(twilio_url(server.port)) as ws:
            await ws.send(twilio_start(["inbound"], {}))
            await collect(ws)  # no media: the idle timeout ends the call
            assert ws.close_code == 1011


async def test_hangup_without_stop_still_delivers_the_finals() -> None:
    receiver = Receiver()
    await receiver.start()
    delivery = DeliveryConfig(callback_url=receiver.url, callback_backoff_s=0.05)
    try:
        async with serve(config(delivery=delivery)) as server, asyncio.timeout(30):
            ws = await connect(twilio_url(server.port))
            audio = mulaw_8k(call_audio((0.3, ["abc", "bad"]), (0.2, None)))
            await ws.send(twilio_start(["inbound"], {}, call_sid="CA-hangup"))
            await send_inbound(ws, audio)
            await ws.close()  # the caller hangs up: no stop message
            await receiver.wait_for(lambda: any(p["type"] == "Metadata" for p in receiver.posts))
    finally:
        await receiver.stop()
    assert words(receiver.finals(stream="CA-hangup")) == ["abc", "bad"]


async def test_shutdown_mid_call_delivers_every_final_and_closes_1012() -> None:
    from streamer.server import STATE

    receiver = Receiver()
    await receiver.start()
    delivery = DeliveryConfig(callback_url=receiver.url, callback_backoff_s=0.05)
    try:
        async with serve(config(delivery=delivery)) as server, asyncio.timeout(30):
            ws = await connect(twilio_url(server.port))
            audio = mulaw_8k(call_audio((0.3, ["abc", "bad"]), (0.05, None)))  # speech still going on
            await ws.send(twilio_start(["inbound"], {}, call_sid="CA-drain"))
            await send_inbound(ws, audio)
            await server.app[STATE].shutdown()
            await collect(ws)
            assert ws.close_code == 1012
            await receiver.wait_for(lambda: any(p["type"] == "Metadata" for p in receiver.posts))
            dialects = server.app[STATE].metrics.dialect_streams.labels("twilio")._value.get()
    finally:
        await receiver.stop()
    assert words(receiver.finals(stream="CA-drain")) == ["abc", "bad"] and dialects == 1


async def test_streamdouble_with_packet_loss_keeps_call_time() -> None:
    """streamdouble drops 10% of the caller's frames upstream (a jump in media.timestamp); the server
    fills the gaps, so the stream lasts exactly as long as the call."""
    api = pytest.importorskip("streamdouble.api")
    from streamdouble.chaos import Impairments
    from streamdouble.session import SessionConfig

    audio = mulaw_8k(call_audio((0.3, ["abc", "bad"]), (1.0, None)))
    audio += b"\xff" * (-len(audio) % FRAME)
    frames = [audio[i : i + FRAME] for i in range(0, len(audio), FRAME)]
    receiver = Receiver()
    await receiver.start()
    delivery = DeliveryConfig(callback_url=receiver.url, callback_backoff_s=0.05)
    try:
        async with serve(config(delivery=delivery)) as server, asyncio.timeout(40):
            session = SessionConfig(
                impairments=Impairments(loss=0.1, jitter_ms=15),
                chaos_seed=7,
                response_timeout_s=0.3,
                quiet_period_s=0.1,
                echo_marks=False,
            )
            report = await api.call(twilio_url(server.port), frames=frames, config=session)
            assert report.result.frames_dropped > 0 and report.violations == []
            await receiver.wait_for(lambda: any(p["type"] == "Metadata" for p in receiver.posts))
    finally:
        await receiver.stop()
    metadata = receiver.posts[-1]
    # Every dropped frame came back as silence: the stream is as long as the call (last frame included).
    assert metadata["duration"] == pytest.approx(len(frames) * 0.02, abs=0.021)
