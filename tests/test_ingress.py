"""Tier 1: the ingress codecs without sockets (Deepgram, Twilio Media Streams) and track alignment.

Twilio message shapes follow Twilio's "Media Streams - WebSocket Messages" reference (connected, start,
media, dtmf, mark, stop; `timestamp` in ms from the start of the stream as a string; base64 mu-law).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest

from streamer.server.ingress.base import (
    Audio,
    EndOfAudio,
    Flush,
    ProtocolError,
    Reconfigure,
    Reply,
    Start,
    stream_params,
)
from streamer.server.ingress.deepgram import DeepgramDialect
from streamer.server.ingress.tracks import TrackAligner
from streamer.server.ingress.twilio import TwilioDialect, signature
from tests.plain_errors import assert_plain

SERVED = ["en", "he"]


# ---- Deepgram ----


def test_deepgram_codec_maps_frames_to_items() -> None:
    d = DeepgramDialect("req-1")
    assert d.receive_binary(b"\x01\x02") == [Audio(b"\x01\x02")]
    assert d.receive_binary(b"") == [EndOfAudio()]  # the old convention: an empty frame ends the stream
    assert d.receive_text('{"type":"Finalize"}') == [Flush()]
    assert d.receive_text('{"type":"CloseStream"}') == [EndOfAudio()]
    assert d.receive_text('{"type":"KeepAlive"}') == []
    [reply] = d.receive_text('{"type":"Configure","features":{}}')
    assert isinstance(reply, Reply) and json.loads(reply.text)["type"] == "ConfigureSuccess"
    # keyterms go to the stream, which answers through `configured` once they are in effect
    assert d.receive_text('{"type":"Configure","keyterms":["Whittemore"]}') == [Reconfigure(("Whittemore",))]
    assert json.loads(d.configured(["Whittemore"], None) or "") == {
        "type": "ConfigureSuccess",
        "request_id": "req-1",
        "keyterms": ["Whittemore"],
    }
    [bad] = d.receive_text("not json")
    assert isinstance(bad, ProtocolError) and bad.detail


# ---- track alignment ----


def test_aligner_interleaves_tracks_in_call_time() -> None:
    a = TrackAligner(2, silence=0xFF, max_lag=100, max_gap=1000)
    a.add(0, 0, b"\x01\x02\x03")
    assert a.take() == b""  # track 1 has nothing yet: nothing is ready
    a.add(1, 0, b"\x11\x12")
    assert a.take() == b"\x01\x11\x02\x12"
    a.add(1, 2, b"\x13")
    assert a.take() == b"\x03\x13"


def test_aligner_fills_gaps_with_silence_and_trims_overlap() -> None:
    a = TrackAligner(1, silence=0xFF, max_lag=100, max_gap=1000)
    a.add(0, 0, b"\x01\x02")
    a.add(0, 5, b"\x03")  # samples 2-4 never came: silence keeps the call's times
    assert a.take() == b"\x01\x02\xff\xff\xff\x03"
    a.add(0, 4, b"\x07\x08\x09")  # samples 4-5 again: only sample 6 is new
    assert a.take() == b"\x09"
    assert (a.filled, a.trimmed) == (3, 2)


def test_aligner_pads_a_track_that_falls_behind_and_flushes_the_rest() -> None:
    a = TrackAligner(2, silence=0, max_lag=4, max_gap=1000)
    a.add(0, 0, bytes(range(1, 11)))  # track 1 silent: after 4 samples of lead it is padded
    out = a.take()
    assert out[0::2] == bytes(range(1, 7)) and out[1::2] == bytes(6)
    a.add(0, 10, b"\x0b")
    assert a.flush()[0::2] == bytes(range(7, 12))


def test_aligner_refuses_absurd_jumps() -> None:
    from streamer.errors import AudioFormatError

    a = TrackAligner(1, silence=0, max_lag=4, max_gap=100)
    with pytest.raises(AudioFormatError):
        a.add(0, 101, b"\x01")


# ---- Twilio ----


def start_message(tracks: list[str], custom: dict[str, str] | None = None) -> str:
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "start": {
                "accountSid": "AC00",
                "streamSid": "MZ00",
                "callSid": "CA123",
                "tracks": tracks,
                "customParameters": custom or {},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
            "streamSid": "MZ00",
        }
    )


def media(track: str, timestamp_ms: int, payload: bytes, **extra: Any) -> str:
    body = {"track": track, "chunk": "1", "timestamp": str(timestamp_ms)}
    body["payload"] = base64.b64encode(payload).decode()
    body.update(extra)
    return json.dumps({"event": "media", "sequenceNumber": "2", "media": body, "streamSid": "MZ00"})


def test_twilio_start_gives_parameters_from_custom_parameters() -> None:
    d = TwilioDialect(SERVED)
    assert d.receive_text('{"event":"connected","protocol":"Call","version":"1.0.0"}') == []
    custom = {"language": "he", "interim_results": "true", "tag": "desk-7", "crm_id": "x"}
    [start] = d.receive_text(start_message(["inbound", "outbound"], custom))
    assert isinstance(start, Start) and start.call_id == "CA123"
    p = start.params
    assert (p.model, p.encoding, p.sample_rate, p.channels, p.multichannel) == ("he", "mulaw", 8000, 2, True)
    assert p.interim_results and p.tag == "desk-7"
    # Twilio passes strings only: several keyterms separated by commas; a JSON list where allowed.
    custom = {"keyterm": "Whittemore, Jonatas Grosman", "keywords": "kubectl:2"}
    [start] = TwilioDialect(SERVED).receive_text(start_message(["inbound"], custom))
    assert isinstance(start, Start)
    assert [(k.text, k.boost) for k in start.params.keyterms] == [
        ("Whittemore", 1.0),
        ("Jonatas Grosman", 1.0),
        ("kubectl", 2.0),
    ]
    listed = stream_params({"keyterm": ["a, b", "c"]}, list(SERVED), encoding="mulaw", sample_rate=8000)
    assert [k.text for k in listed.keyterms] == ["a, b", "c"]


def test_twilio_both_tracks_become_aligned_channels() -> None:
    d = TwilioDialect(SERVED)
    d.receive_text(start_message(["inbound", "outbound"]))
    caller, agent = bytes([1]) * 160, bytes([2]) * 160
    assert d.receive_text(media("inbound", 0, caller)) == []  # waits for the agent's 20 ms
    [audio] = d.receive_text(media("outbound", 0, agent))
    assert isinstance(audio, Audio) and audio.data == bytes([1, 2]) * 160
    # The caller's frame at 40 ms: 20 ms (160 samples) were lost upstream and become silence.
    d.receive_text(media("inbound", 40, caller))
    [audio] = d.receive_text(media("outbound", 20, agent * 2))
    assert audio.data[0::2] == bytes([0xFF]) * 160 + caller
    assert audio.data[1::2] == agent * 2
    d.receive_text(media("inbound", 60, caller))
    [rest, end] = d.receive_text('{"event":"stop","sequenceNumber":"9","stop":{}}')
    assert rest == Audio(bytes([1, 0xFF]) * 160) and end == EndOfAudio()  # the agent padded at the end


def test_twilio_single_track_passes_media_through() -> None:
    d = TwilioDialect(SERVED)
    [start] = d.receive_text(start_message(["inbound"]))
    assert isinstance(start, Start) and start.params.channels == 1
    [audio] = d.receive_text(media("inbound", 0, b"\x10" * 160))
    assert audio == Audio(b"\x10" * 160)
    assert d.receive_text('{"event":"dtmf","dtmf":{"track":"inbound_track","digit":"5"}}') == []
    assert d.receive_text('{"event":"mark","mark":{"name":"m1"}}') == []


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        (["{not json"], "malformed JSON"),
        (['["event"]'], "JSON object"),
        (['{"event":"hello"}'], "unknown event"),
        ([media("inbound", 0, b"\x01")], "before 'start'"),
        (
            ["START", '{"event":"media","media":{"track":"inbound","payload":"@@@","timestamp":"0"}}'],
            "base64",
        ),
        (["START", media("outbound", 0, b"\x01")], "did not announce"),
        (["START", "START"], "second 'start'"),
        (["START", '{"event":"media"}'], "malformed 'media'"),
        (["START", '{"event":"stop"}', '{"event":"media"}'], "after 'stop'"),
        ([start_message(["inbound"], {"language": "fr"})], "customParameters: language"),
        ([start_message(["sideways"])], "tracks must be"),
        (["START", media("inbound", 10_000_000, b"\x01")], "jumps"),
    ],
)
def test_twilio_bad_input_is_a_protocol_error(messages: list[str], expected: str) -> None:
    d = TwilioDialect(SERVED)
    items: list[Any] = []
    for text in messages:
        items = d.receive_text(start_message(["inbound"]) if text == "START" else text)
    errors = [i for i in items if isinstance(i, ProtocolError)]
    assert errors and expected in errors[0].detail, items
    assert_plain(errors[0].detail)


def test_twilio_refuses_binary_frames() -> None:
    [error] = TwilioDialect(SERVED).receive_binary(b"\x00")
    assert isinstance(error, ProtocolError)


def test_twilio_signature_matches_twilios_own_validator() -> None:
    twilio_request = pytest.importorskip("twilio.request_validator")
    validator = twilio_request.RequestValidator("auth-token-123")
    url = "wss://asr.example.com/twilio"
    assert signature("auth-token-123", url) == validator.compute_signature(url, {})
    assert validator.validate(url, {}, signature("auth-token-123", url))
    assert signature("other-token", url) != validator.compute_signature(url, {})


def test_twilio_mulaw_silence_byte_decodes_to_zero() -> None:
    from streamer.audio import MULAW_TABLE

    assert MULAW_TABLE[0xFF] == 0.0 and np.all(np.abs(MULAW_TABLE) <= 1.0)
