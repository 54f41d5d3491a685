"""Genesys AudioHook (protocol v2) on `/audiohook`: the signature verifier against RFC 9421's own test
vector, the codec alone, and sessions against a real server (tone engine) from the faithful client in
`tests/phone_clients.py`. Section names refer to the AudioHook Protocol Specification."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import numpy as np
import pytest
import soxr
from websockets.exceptions import ConnectionClosed

from streamer.audio import encode_mulaw, float_to_linear16
from streamer.config import DeliveryConfig, TelephonyConfig
from streamer.server.http_signatures import (
    InnerList,
    NonceCache,
    SignatureCheck,
    SignatureError,
    parse_signature_input,
    signature_base,
)
from streamer.server.ingress.audiohook import AudioHookDialect
from streamer.server.ingress.base import Audio, EndOfAudio, ProtocolError, Reply, Start
from tests.phone_clients import AudioHookClient, audiohook_headers, transcript_words
from tests.plain_errors import assert_plain
from tests.receivers import Receiver, words
from tests.test_server import config, handshake_error, serve
from tests.test_twilio import call_audio

SECRET = base64.b64decode(base64.b64encode(b"audiohook-client-secret-0123456789"))
SECRET_B64 = base64.b64encode(SECRET).decode()

# ---- RFC 9421 ----


def test_hmac_signature_matches_rfc9421_appendix_b25() -> None:
    """RFC 9421 B.2.5: HMAC-SHA256 with the shared test key over date, @authority and content-type."""
    key = base64.b64decode(
        "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ=="
    )
    header = 'sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret"'
    covered = parse_signature_input(header)["sig-b25"]
    headers = {
        "date": "Tue, 20 Apr 2021 02:07:55 GMT",
        "content-type": "application/json",
        "signature-input": header,
        "signature": "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:",
    }
    base = signature_base(covered, {**headers, "@authority": "example.com"})
    assert base.splitlines()[-1] == '"@signature-params": ' + header.split("=", 1)[1]
    expected = base64.b64decode("pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=")
    assert hmac.new(key, base.encode(), hashlib.sha256).digest() == expected
    check = SignatureCheck(
        secret_for=lambda keyid: key if keyid == "test-shared-secret" else None,
        nonces=NonceCache(),
        clock=lambda: 1618884473 + 10,
    )
    with pytest.raises(SignatureError, match="nonce"):  # the RFC example has none; AudioHook needs one
        check.verify(headers, {"@authority": "example.com"})
    covered_with_nonce = InnerList(covered.items, (*covered.params, ("nonce", "n1")))
    assert covered_with_nonce.serialise().endswith(';keyid="test-shared-secret";nonce="n1"')


# ---- the codec ----

OPEN_ID = str(uuid.uuid4())


def envelope(kind: str, seq: int, parameters: dict[str, Any], serverseq: int = 0, **extra: Any) -> str:
    body = {"version": "2", "id": OPEN_ID, "type": kind, "seq": seq, "serverseq": serverseq}
    return json.dumps({**body, "position": "PT0S", "parameters": parameters, **extra})


def open_parameters(**changes: Any) -> dict[str, Any]:
    return {
        "organizationId": str(uuid.uuid4()),
        "conversationId": str(uuid.uuid4()),
        "participant": {"id": str(uuid.uuid4()), "ani": "", "aniName": "", "dnis": ""},
        "media": [
            {"type": "audio", "format": "L16", "channels": ["external", "internal"], "rate": 16000},
            {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000},
        ],
        "language": "en-US",
        **changes,
    }


def test_open_transaction_chooses_the_first_supported_offer() -> None:
    d = AudioHookDialect(["en"], OPEN_ID)
    [reply, start] = d.receive_text(envelope("open", 1, open_parameters(customConfig={"tag": "q1"})))
    opened = json.loads(reply.text)  # type: ignore[union-attr]
    assert (opened["type"], opened["seq"], opened["clientseq"], opened["id"]) == ("opened", 1, 1, OPEN_ID)
    assert opened["parameters"]["media"] == [
        {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000}
    ]
    assert isinstance(start, Start)
    assert (start.params.encoding, start.params.channels, start.params.tag) == ("mulaw", 2, "q1")
    # Section "ping": pong, with the sequence numbers carried on.
    [pong] = d.receive_text(envelope("ping", 2, {}, serverseq=1))
    assert isinstance(pong, Reply) and json.loads(pong.text)["seq"] == 2
    assert d.receive_binary(b"\x01\x02") == [Audio(b"\x01\x02")]
    # Section "discarded": lost audio becomes silence on both channels.
    [gap] = d.receive_text(envelope("discarded", 3, {"start": "PT1S", "discarded": "PT0.5S"}, serverseq=2))
    assert gap == Audio(b"\xff" * 8000)
    [updated] = d.receive_text(envelope("update", 4, {"language": "en-GB"}, serverseq=2))
    assert json.loads(updated.text)["type"] == "updated"  # type: ignore[union-attr]
    assert d.receive_text(envelope("close", 5, {"reason": "end"}, serverseq=3)) == [EndOfAudio()]
    closed = json.loads(d.finished(None))  # type: ignore[arg-type]
    assert (closed["type"], closed["seq"], closed["clientseq"]) == ("closed", 4, 5)


def test_connection_probe_opens_and_closes_without_a_stream() -> None:
    d = AudioHookDialect(["en"], OPEN_ID)
    probe = open_parameters(conversationId="00000000-0000-0000-0000-000000000000")
    [reply] = d.receive_text(envelope("open", 1, probe))
    assert json.loads(reply.text)["type"] == "opened"  # type: ignore[union-attr]
    [closed, end] = d.receive_text(envelope("close", 2, {"reason": "end"}, serverseq=1))
    assert json.loads(closed.text)["type"] == "closed" and end == EndOfAudio()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([envelope("ping", 1, {})], "before 'open'"),
        (["OPEN", envelope("ping", 3, {}, serverseq=1)], "out of sequence"),
        (["OPEN", envelope("ping", 2, {}, serverseq=7)], "serverseq"),
        ([envelope("open", 1, open_parameters()).replace('"version": "2"', '"version": "1"')], "version"),
        (["OPEN", envelope("dance", 2, {}, serverseq=1)], "unknown message type"),
        (["OPEN", envelope("open", 2, open_parameters(), serverseq=1)], "second 'open'"),
        ([envelope("open", 1, open_parameters(media=[{"type": "video"}]))], "none of the offered media"),
        ([envelope("open", 1, open_parameters(language="fr-FR"))], "language"),
        (["{nope"], "malformed JSON"),
        ([envelope("open", 1, open_parameters(), id="someone-else")], "id differs"),
    ],
)
def test_bad_messages_are_protocol_errors(messages: list[str], expected: str) -> None:
    d = AudioHookDialect(["en"], OPEN_ID)
    items: list[Any] = []
    for text in messages:
        items = d.receive_text(envelope("open", 1, open_parameters()) if text == "OPEN" else text)
    errors = [i for i in items if isinstance(i, ProtocolError)]
    assert errors and expected in errors[0].detail, items
    assert_plain(errors[0].detail)
    disconnect = json.loads(d.rejected(errors[0].detail) or "{}")
    assert disconnect["type"] == "disconnect" and disconnect["parameters"]["reason"] == "error"


def test_audio_before_open_is_refused() -> None:
    [error] = AudioHookDialect(["en"], OPEN_ID).receive_binary(b"\x00")
    assert isinstance(error, ProtocolError)


# ---- against a real server ----


def stereo_mulaw(external: np.ndarray, internal: np.ndarray) -> bytes:
    length = max(len(external), len(internal))
    pair = [np.pad(x, (0, length - len(x))) for x in (external, internal)]
    both = np.stack([soxr.resample(x, 16000, 8000).astype(np.float32) for x in pair], axis=1)
    return encode_mulaw(both.reshape(-1))


def ws_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/audiohook"


def signed_config(**changes: Any) -> Any:
    telephony = TelephonyConfig(audiohook_client_secret=SECRET_B64)
    return config(api_keys=frozenset({"genesys-key"}), telephony=telephony, **changes)


def client(port: int, session: str | None = None, **header_changes: Any) -> AudioHookClient:
    session = session or str(uuid.uuid4())
    secret = header_changes.pop("secret", SECRET)
    key = header_changes.pop("api_key", "genesys-key")
    headers = audiohook_headers(f"127.0.0.1:{port}", "/audiohook", key, secret, session, **header_changes)
    return AudioHookClient(ws_url(port), headers, session)


async def test_session_transcribes_both_channels_back_on_the_socket_and_to_the_webhook() -> None:
    customer, agent = (["abc", "bad"], ["cafe"]), (["dab", "face"],)
    external = call_audio((0.3, customer[0]), (0.9, customer[1]), (1.0, None))
    internal = call_audio((1.4, agent[0]), (1.0, None))
    receiver = Receiver()
    await receiver.start()
    cfg = signed_config(delivery=DeliveryConfig(callback_url=receiver.url, callback_backoff_s=0.05))
    try:
        async with serve(cfg) as server, asyncio.timeout(30):
            session = client(server.port)
            await session.connect()
            opened = await session.open(custom={"tag": "genesys"})
            assert opened["parameters"]["supportedLanguages"] == ["en"]
            await session.send("ping", {"rtt": "PT0.05S"})
            assert (await session.receive())["type"] == "pong"
            await session.send_audio(stereo_mulaw(external, internal))
            tail = await session.close()
            assert tail[-1]["type"] == "closed"
            await receiver.wait_for(lambda: any(p["type"] == "Metadata" for p in receiver.posts))
            assert session.ws is not None
            with pytest.raises(ConnectionClosed):
                await session.ws.recv()
            assert session.ws.close_code == 1000
    finally:
        await receiver.stop()
    # Every server message has the next seq and echoes the last client seq (section "Sequence numbers").
    assert [m["seq"] for m in session.received] == list(range(1, len(session.received) + 1))
    assert all(m["id"] == session.session_id and m["version"] == "2" for m in session.received)
    assert all(isinstance(m, dict) for m in session.received)  # JSON text only: never a binary frame
    for channel, phrases in enumerate((customer, agent)):
        expected = [w for p in phrases for w in p]
        assert transcript_words(session.transcripts(channel)) == expected
        assert words(receiver.finals(channel)) == expected
    first = session.transcripts(1)[0]
    assert first["channel"] == "internal" and first["offset"].startswith("PT1.")
    token = first["alternatives"][0]["interpretations"][0]["tokens"][0]
    assert set(token) == {"type", "value", "confidence", "offset", "duration", "language"}
    assert receiver.posts[0]["stream"]["dialect"] == "audiohook"


async def test_l16_mono_session_and_probe() -> None:
    async with serve(signed_config()) as server, asyncio.timeout(30):
        probe = client(server.port)
        await probe.connect()
        await probe.open(conversation_id="00000000-0000-0000-0000-000000000000")
        assert [m["type"] for m in await probe.close()] == ["closed"]
        mono = client(server.port)
        await mono.connect()
        l16 = [{"type": "audio", "format": "L16", "channels": ["external"], "rate": 8000}]
        await mono.open(media=l16)
        audio = soxr.resample(call_audio((0.3, ["abc"]), (0.8, None)), 16000, 8000).astype(np.float32)
        await mono.send_audio(float_to_linear16(audio), frame_samples=320)
        mono.channels = 1
        await mono.close()
        assert transcript_words(mono.transcripts(0)) == ["abc"]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"secret": None}, "not signed"),
        ({"secret": b"wrong secret"}, "does not match"),
        ({"api_key": "other-key"}, "X-API-KEY"),
        ({"created": int(time.time()) - 600}, "expired"),
        ({"created": int(time.time()) + 600}, "future"),
    ],
)
async def test_handshake_refusals(changes: dict[str, Any], reason: str) -> None:
    async with serve(signed_config()) as server, asyncio.timeout(10):
        c = client(server.port, **changes)
        status, body, _ = await handshake_error(c.url, additional_headers=c.headers)
        assert status == 401 and reason in body["err_msg"]


async def test_replayed_signature_is_refused() -> None:
    async with serve(signed_config()) as server, asyncio.timeout(10):
        first = client(server.port, nonce="same-nonce")
        await first.connect()
        assert first.ws is not None
        await first.ws.close()
        again = client(server.port, nonce="same-nonce")
        status, body, _ = await handshake_error(again.url, additional_headers=again.headers)
        assert status == 401 and "replay" in body["err_msg"]


async def test_protocol_error_sends_disconnect_then_closes() -> None:
    async with serve(signed_config()) as server, asyncio.timeout(10):
        session = client(server.port)
        await session.connect()
        await session.open()
        await session.send("ping", {}, seq=7)  # out of sequence
        [disconnect] = await session.until("disconnect")
        assert disconnect["parameters"]["reason"] == "error" and "seq" in disconnect["parameters"]["info"]
        assert session.ws is not None
        with pytest.raises(ConnectionClosed):
            await session.ws.recv()
        assert session.ws.close_code == 1008
