"""Resume tokens: signing and checks, a resumed `Stream`, and a stream resumed over a real server."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect

from streamer import SAMPLE_RATE
from streamer.audio import AudioFormat
from streamer.engine.fake import ToneEngine
from streamer.server.resume import ResumeCodec, ResumeError, ResumeIssuer
from streamer.session import StreamingConfig
from streamer.stream import Stream, StreamStart
from streamer.transcript import Transcript
from tests.test_server import (
    config,
    drain,
    final_words,
    handshake_error,
    pcm16,
    send_audio,
    serve,
    silence,
    utterances,
)

Json = dict[str, Any]
PHRASES = (["bad", "cab"], ["face", "head"], ["jig", "kid"], ["fade", "dim"])


# ---- the token ----


def issuer(codec: ResumeCodec, key: str | None = "k1", channels: int = 1) -> ResumeIssuer:
    return ResumeIssuer(codec, "req-1", [("encoding", "linear16"), ("tag", "a")], key, [0] * channels)


def final(channel: int, through: int) -> Transcript:
    return Transcript(channel, 0.0, 1.0, (), True, True, False, through)


def test_token_round_trip_keeps_identity_parameters_and_progress() -> None:
    codec = ResumeCodec(b"shared", ttl_s=60)
    mint = issuer(codec)
    resume_field = mint.update(final(0, 48_000))
    assert resume_field["from"] == 3.0
    opened = codec.open(str(resume_field["token"]), "k1", None)
    assert opened.request_id == "req-1"
    assert opened.query == (("encoding", "linear16"), ("tag", "a"))
    assert opened.start == StreamStart(48_000, (48_000,))
    # Another replica with the same secret accepts it; the replay may start earlier or later.
    other = ResumeCodec(b"shared", ttl_s=60)
    assert other.open(str(resume_field["token"]), "k1", "2.5").start.at == 40_000
    later = other.open(str(resume_field["token"]), "k1", "3.5")
    assert later.lost_seconds == 0.5
    # Progress never goes back: an older final on one channel does not rewind it.
    assert mint.update(final(0, 16_000))["from"] == 3.0


def test_token_refusals_name_the_reason() -> None:
    codec = ResumeCodec(b"shared", ttl_s=60)
    token = str(issuer(codec).update(final(0, 16_000))["token"])
    with pytest.raises(ResumeError, match="another --resume-secret"):
        ResumeCodec(b"other", ttl_s=60).open(token, "k1", None)
    with pytest.raises(ResumeError, match="another API key"):
        codec.open(token, "k2", None)
    with pytest.raises(ResumeError, match="expired"):
        codec.open(token, "k1", None, now=time.time() + 120)
    body, mac = token.split(".")
    tampered = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + mac
    with pytest.raises(ResumeError, match=r"signature|malformed"):
        codec.open(tampered, "k1", None)
    for bad in ("", "abc", "a.b.c", "x" * 9000):
        with pytest.raises(ResumeError, match="malformed"):
            codec.open(bad, "k1", None)
    with pytest.raises(ResumeError, match="resume_from"):
        codec.open(token, "k1", "soon")
    with pytest.raises(ResumeError, match="resume_from"):
        codec.open(token, "k1", "-1")
    # Without a shared secret each process has its own key: another process cannot open the token.
    assert not ResumeCodec(None, 60).shared
    with pytest.raises(ResumeError):
        ResumeCodec(None, 60).open(str(issuer(ResumeCodec(None, 60)).current()["token"]), "k1", None)


def test_token_does_not_reveal_the_key() -> None:
    codec = ResumeCodec(b"shared", ttl_s=60)
    token = str(issuer(codec, key="secret-key-123").current()["token"])
    body = token.split(".")[0]
    payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
    assert "secret-key-123" not in payload


# ---- a resumed Stream: sans-I/O ----


def run_stream(audio: np.ndarray, start: StreamStart | None = None) -> list[Transcript]:
    stream = Stream(ToneEngine(), StreamingConfig(), AudioFormat("linear16", SAMPLE_RATE, 1), start=start)
    stream.receive_bytes(pcm16(audio))
    stream.close()
    engine = ToneEngine()
    out: list[Transcript] = []
    while not stream.done:
        for request in stream.take_requests():
            stream.receive_logprobs(request, engine.forward([request.audio])[0])
        out += [e for e in stream.take_events() if isinstance(e, Transcript) and e.is_final]
    return out


def test_resumed_stream_continues_times_and_skips_what_was_final() -> None:
    audio = utterances(*PHRASES)
    whole = run_stream(audio)
    assert [w.word for t in whole for w in t.words] == [w for p in PHRASES for w in p]
    cut = whole[1].final_through
    assert cut is not None
    # The client replays from 0.4 s before the cut: that part is dropped, times stay those of the stream.
    replay_at = cut - int(0.4 * SAMPLE_RATE)
    resumed = run_stream(audio[replay_at:], StreamStart(replay_at, (cut,)))
    assert [(w.word, w.start, w.end) for t in resumed for w in t.words] == [
        (w.word, w.start, w.end) for t in whole[2:] for w in t.words
    ]
    assert resumed[-1].final_through == whole[-1].final_through


# ---- over a real server ----


def resume_field(message: Json) -> Json:
    field = message.get("resume")
    assert isinstance(field, dict), message
    return field


async def test_stream_cut_mid_way_resumes_on_a_new_connection() -> None:
    audio = pcm16(utterances(*PHRASES))
    async with serve() as server:
        first: list[Json] = []
        async with connect(server.ws_url("tag=room-1")) as ws:
            await send_audio(ws, audio[: len(audio) // 2], pause=0.002)
            while not any(m.get("is_final") and m["channel"]["alternatives"][0]["words"] for m in first):
                first.append(json.loads(await ws.recv()))
            # The connection drops (no CloseStream): what was final so far is kept by the client.
        finals = [m for m in first if m["type"] == "Results" and m["is_final"]]
        token = resume_field(finals[-1])
        at = round(float(token["from"]) * SAMPLE_RATE)
        assert at > 0
        query = f"resume={token['token']}&resume_from={token['from']}"
        async with connect(server.ws_url(query)) as ws:
            await send_audio(ws, audio[2 * at :], pause=0.002)
            await ws.send(json.dumps({"type": "CloseStream"}))
            second = await drain(ws)
    assert final_words(finals) + final_words(second) == [w for p in PHRASES for w in p]
    resumed = [m for m in second if m["type"] == "Results" and m["is_final"]]
    assert resumed[0]["start"] >= at / SAMPLE_RATE - 0.001
    assert {m["metadata"]["request_id"] for m in finals + resumed} == {finals[0]["metadata"]["request_id"]}
    metadata = second[-1]
    assert metadata["type"] == "Metadata"
    assert metadata["duration"] == pytest.approx(len(audio) / 2 / SAMPLE_RATE, abs=0.01)
    assert metadata["request_id"] == finals[0]["metadata"]["request_id"]
    assert resume_field(metadata)["from"] >= resumed[-1]["start"]


async def test_resume_refusals_are_400_with_the_reason() -> None:
    cfg = config(api_keys=frozenset({"key-a", "key-b"}))
    async with serve(cfg) as server:
        async with connect(server.ws_url("tag=x"), additional_headers={"Authorization": "Token key-a"}) as ws:
            await send_audio(ws, pcm16(utterances(PHRASES[0])))
            await ws.send(json.dumps({"type": "CloseStream"}))
            messages = await drain(ws)
        token = resume_field(messages[-1])["token"]
        header = {"additional_headers": {"Authorization": "Token key-b"}}
        status, body, _ = await handshake_error(server.ws_url(f"resume={token}"), **header)
        assert status == 400 and "another API key" in body["err_msg"]
        header = {"additional_headers": {"Authorization": "Token key-a"}}
        status, body, _ = await handshake_error(server.ws_url(f"resume={token}&tag=y"), **header)
        assert status == 400 and "'tag' differs" in body["err_msg"]
        status, body, _ = await handshake_error(server.ws_url("resume=nonsense"), **header)
        assert status == 400 and "malformed" in body["err_msg"]
        # The same parameters repeated are fine.
        async with connect(server.ws_url(f"resume={token}&tag=x"), **header) as ws:
            await ws.send(pcm16(silence(0.2)))
            await ws.send(json.dumps({"type": "CloseStream"}))
            assert (await drain(ws))[-1]["type"] == "Metadata"


async def test_replicas_sharing_a_secret_resume_each_others_streams() -> None:
    audio = pcm16(utterances(*PHRASES[:2]))
    shared = {"resume_secret": b"replica-secret"}
    async with serve(config(**shared)) as one, serve(config(**shared)) as two, serve(config()) as alone:
        async with connect(one.ws_url()) as ws:
            await send_audio(ws, audio)
            await ws.send(json.dumps({"type": "CloseStream"}))
            token = resume_field((await drain(ws))[-1])["token"]
        async with connect(two.ws_url(f"resume={token}")) as ws:
            await ws.send(json.dumps({"type": "CloseStream"}))
            assert (await drain(ws))[-1]["type"] == "Metadata"
        status, body, _ = await handshake_error(alone.ws_url(f"resume={token}"))
        assert status == 400 and "signature" in body["err_msg"]
