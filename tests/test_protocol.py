"""Tier 1 (pure): /v1/listen query parsing, control messages and the JSON shape of every server message."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from multidict import MultiDict

from streamer.audio import AudioFormat
from streamer.decoding.keyterms import Keyterm, KeytermLimits
from streamer.protocol import (
    IGNORED_PARAMS,
    CloseStream,
    Configure,
    ControlMessageError,
    Finalize,
    KeepAlive,
    ListenParams,
    ModelIdentity,
    ModelInfo,
    ParamError,
    StreamSummary,
    configure_reply,
    decode_control,
    error_message,
    http_error,
    metadata_message,
    parse_listen_params,
    prerecorded_response,
    results_message,
    speech_started_message,
    utterance_end_message,
)
from streamer.session import StreamingConfig
from streamer.transcript import SpeechStarted, Transcript, UtteranceEnd, Word

SERVED = ["en", "he"]
MODEL = ModelIdentity("0b7c6c1e-0000-5000-8000-000000000001", ModelInfo("en", "0.1.0", "tone-fake"))


def parse(**query: str) -> ListenParams:
    return parse_listen_params(query, SERVED)


# ---- query parameters ----


def test_defaults_follow_deepgram() -> None:
    p = parse()
    assert p.model == "en" and p.language == "en"
    assert p.audio_format == AudioFormat("linear16", 16000, 1, False)
    assert p.interim_results is False  # Deepgram's default
    assert p.vad_events is False
    assert p.endpointing_ms is None and not p.endpointing_off
    assert p.utterance_end_ms is None
    assert p.output_channels == 1


def test_full_query() -> None:
    p = parse(
        language="he",
        encoding="mulaw",
        sample_rate="8000",
        channels="2",
        multichannel="true",
        interim_results="TRUE",
        endpointing="300",
        utterance_end_ms="1500",
        vad_events="1",
    )
    assert p.model == "he"
    assert p.audio_format == AudioFormat("mulaw", 8000, 2, True)
    assert p.interim_results and p.vad_events
    assert p.endpointing_ms == 300 and p.utterance_end_ms == 1500
    assert p.output_channels == 2


def test_default_language_without_english() -> None:
    assert parse_listen_params({}, ["he", "ar"]).model == "he"


@pytest.mark.parametrize("tag", ["en-US", "EN", "en_GB", "en-us"])
def test_language_tags_fall_back_to_primary_subtag(tag: str) -> None:
    assert parse(language=tag).model == "en"


@pytest.mark.parametrize(
    "name", ["nova-3", "nova-2-phonecall", "enhanced", "base", "general", "whisper-large"]
)
def test_deepgram_model_names_use_the_language_model(name: str) -> None:
    p = parse(model=name, language="he")
    assert p.model == "he" and p.requested_model == name


def test_served_model_name_wins() -> None:
    assert parse(model="he").model == "he"


def test_ignored_and_unknown_params_are_accepted() -> None:
    p = parse(punctuate="true", smart_format="true", diarize="true", keywords="x:2", foo="bar")
    assert p.ignored == ("diarize", "punctuate", "smart_format")
    assert p.unknown == ("foo",)
    assert {"punctuate", "smart_format", "diarize", "redact", "mip_opt_out"} <= IGNORED_PARAMS
    # tag, callback and callback_method are implemented now (watchers, webhooks), and keyterms.
    assert not {"tag", "callback", "callback_method", "keyterm", "keywords"} & IGNORED_PARAMS


def test_keyterm_and_keywords_repeat_and_keep_within_the_limits() -> None:
    query = MultiDict(
        [
            ("keyterm", "Jonatas Grosman"),
            ("keyterm", "Whittemore"),
            ("keywords", "kubectl:3"),
            ("keywords", "tv"),
        ]
    )
    p = parse_listen_params(query, ["en"])
    assert p.keyterms == (
        Keyterm("Jonatas Grosman"),
        Keyterm("Whittemore"),
        Keyterm("kubectl", 3.0),
        Keyterm("tv", 1.0),
    )
    assert parse(keyterm="a:b").keyterms == (Keyterm("a:b"),)  # keyterm has no boost syntax
    for query, limits, message in [
        (MultiDict([("keyterm", "a"), ("keyterm", "b")]), KeytermLimits(max_terms=1), "at most 1 keyterms"),
        ({"keyterm": "x" * 101}, KeytermLimits(), "at most 100 characters"),
        ({"keywords": "word:99"}, KeytermLimits(), "between -10 and 10"),
        ({"keywords": "word:much"}, KeytermLimits(), "must be a number"),
    ]:
        with pytest.raises(ParamError, match=message) as err:
            parse_listen_params(query, ["en"], limits)
        assert err.value.param in ("keyterm", "keywords")


def test_tag_and_callback_params() -> None:
    p = parse(tag="desk-4", callback="https://crm.example/hook", callback_method="put")
    assert (p.tag, p.callback, p.callback_method, p.callback_interims) == (
        "desk-4",
        "https://crm.example/hook",
        "PUT",
        False,
    )
    assert parse(callback_interim_results="true").callback_interims
    for query, param in (
        ({"tag": ""}, "tag"),
        ({"tag": "x" * 129}, "tag"),
        ({"tag": "a\nb"}, "tag"),
        ({"callback": "ftp://x/y"}, "callback"),
        ({"callback": "/relative"}, "callback"),
        ({"callback_method": "get"}, "callback_method"),
    ):
        with pytest.raises(ParamError) as info:
            parse(**query)
        assert info.value.param == param


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"encoding": "opus"}, "encoding"),
        ({"encoding": "flac"}, "encoding"),
        ({"sample_rate": "7999"}, "sample_rate"),
        ({"sample_rate": "48001"}, "sample_rate"),
        ({"sample_rate": "16k"}, "sample_rate"),
        ({"sample_rate": "16000.0"}, "sample_rate"),
        ({"channels": "0"}, "channels"),
        ({"channels": "9"}, "channels"),
        ({"channels": "two"}, "channels"),
        ({"multichannel": "yes please"}, "multichannel"),
        ({"interim_results": "maybe"}, "interim_results"),
        ({"vad_events": "2"}, "vad_events"),
        ({"endpointing": "-5"}, "endpointing"),
        ({"endpointing": "soon"}, "endpointing"),
        ({"utterance_end_ms": "999"}, "utterance_end_ms"),
        ({"utterance_end_ms": "1s"}, "utterance_end_ms"),
        ({"language": "fr"}, "language"),
        ({"language": "zz-ZZ"}, "language"),
        ({"model": "my-private-model"}, "model"),
    ],
)
def test_bad_params_name_the_param(query: dict[str, str], param: str) -> None:
    with pytest.raises(ParamError) as info:
        parse_listen_params(query, SERVED)
    assert info.value.param == param
    assert info.value.allowed is not None
    assert info.value.err_code == "INVALID_QUERY_PARAMETER"


def test_language_error_lists_served_languages() -> None:
    with pytest.raises(ParamError) as info:
        parse(language="fr")
    assert info.value.allowed == SERVED


def test_model_error_lists_served_models() -> None:
    with pytest.raises(ParamError) as info:
        parse(model="whatever")
    assert info.value.allowed == SERVED


def test_endpointing_mapping() -> None:
    base = StreamingConfig()
    assert parse().streaming_config(base).vad.endpoint_ms == base.vad.endpoint_ms
    assert parse(endpointing="true").streaming_config(base).vad.endpoint_ms == base.vad.endpoint_ms
    assert parse(endpointing="false").streaming_config(base).vad.endpoint_ms is None
    assert parse(endpointing="900").streaming_config(base).vad.endpoint_ms == 900
    # Shorter than the server's: segments keep its endpoint, the utterance ends at a pause inside them,
    # never shorter than min_pause_ms (Deepgram's default of 10 ms, LiveKit's 25, or 0).
    vad = parse(endpointing="250").streaming_config(base).vad
    assert (vad.endpoint_ms, vad.pause_ms) == (base.vad.endpoint_ms, 250)
    for short in ("0", "10", "25", "50"):
        vad = parse(endpointing=short).streaming_config(base).vad
        assert (vad.endpoint_ms, vad.pause_ms) == (base.vad.endpoint_ms, base.vad.min_pause_ms)
    assert parse(endpointing="false").streaming_config(base).vad.pause_ms is None


def test_streaming_config_overrides() -> None:
    config = parse(interim_results="true", utterance_end_ms="1200").streaming_config(StreamingConfig())
    assert config.interim_results is True and config.utterance_end_ms == 1200
    assert parse().streaming_config(StreamingConfig()).interim_results is False


# ---- control messages ----


def test_control_messages() -> None:
    assert decode_control('{"type":"KeepAlive"}') == KeepAlive()
    assert decode_control('{"type":"CloseStream"}') == CloseStream()
    assert decode_control('{"type":"Finalize"}') == Finalize()
    assert decode_control('{"type":"Finalize","channel":1}') == Finalize(1)
    keyterms = decode_control('{"type":"Configure","keyterms":["cafe"]}')
    assert keyterms == Configure(keyterms=("cafe",))
    features = decode_control('{"type":"Configure","features":{"numerals":true}}')
    assert features == Configure(features={"numerals": True})
    assert json.loads(configure_reply("r1", ["cafe"])) == {
        "type": "ConfigureSuccess",
        "request_id": "r1",
        "keyterms": ["cafe"],
    }
    assert json.loads(configure_reply("r1", [], "too many")) == {
        "type": "ConfigureFailure",
        "request_id": "r1",
        "code": "CONFIGURE_KEYTERM_LIMIT_EXCEEDED",
        "description": "too many",
    }
    assert json.loads(configure_reply("r1")) == {"type": "ConfigureSuccess", "request_id": "r1"}


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "",
        "[1,2]",
        '"KeepAlive"',
        '{"type":"Bogus"}',
        "{}",
        '{"type":"Finalize","channel":"x"}',
        '{"type":"Configure","keyterms":"cafe"}',
        '{"type":"Configure","features":{"numerals":1}}',
    ],
)
def test_bad_control_messages(text: str) -> None:
    with pytest.raises(ControlMessageError) as info:
        decode_control(text)
    assert len(str(info.value).encode()) <= 123  # fits a close frame's reason


# ---- server messages ----


def _transcript(is_final: bool = True, channel: int = 0) -> Transcript:
    words = (Word("abc", 0.5, 0.86, 0.91234), Word("bad", 0.98, 1.34, 0.8))
    return Transcript(channel, 0.27, 1.23456, words, is_final, speech_final=is_final, from_finalize=False)


def test_results_shape_and_types() -> None:
    msg = json.loads(results_message(_transcript(), 2, MODEL, "req-1"))
    assert set(msg) == {
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
    assert msg["type"] == "Results"
    assert msg["channel_index"] == [0, 2]
    assert msg["start"] == 0.27 and msg["duration"] == 1.235
    assert msg["is_final"] is True and msg["speech_final"] is True and msg["from_finalize"] is False
    alt = msg["channel"]["alternatives"][0]
    assert alt["transcript"] == "abc bad"
    assert isinstance(alt["confidence"], float) and 0 < alt["confidence"] <= 1
    assert alt["words"][0] == {"word": "abc", "start": 0.5, "end": 0.86, "confidence": 0.9123}
    for word in alt["words"]:
        assert set(word) == {"word", "start", "end", "confidence"}
    assert msg["metadata"] == {
        "request_id": "req-1",
        "model_info": {"name": "en", "version": "0.1.0", "arch": "tone-fake"},
        "model_uuid": MODEL.uuid,
    }


def test_empty_results() -> None:
    empty = Transcript(0, 3.0, 0.0, (), True, False, True)
    msg = json.loads(results_message(empty, 1, MODEL, "r"))
    alt = msg["channel"]["alternatives"][0]
    assert alt == {"transcript": "", "confidence": 0.0, "words": []}
    assert msg["from_finalize"] is True


def test_speech_started_and_utterance_end() -> None:
    started = json.loads(speech_started_message(SpeechStarted(1, 0.4801), 2))
    assert started == {"type": "SpeechStarted", "channel": [1, 2], "timestamp": 0.48}
    end = json.loads(utterance_end_message(UtteranceEnd(0, 2.5), 1))
    assert end == {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 2.5}


def _summary() -> StreamSummary:
    return StreamSummary(
        "req-9", datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC), 3.5, 1, "ab" * 32, (MODEL,)
    )


def test_metadata_shape() -> None:
    msg = json.loads(metadata_message(_summary()))
    assert msg == {
        "type": "Metadata",
        "transaction_key": "deprecated",
        "request_id": "req-9",
        "sha256": "ab" * 32,
        "created": "2025-01-02T03:04:05.678Z",
        "duration": 3.5,
        "channels": 1,
        "models": [MODEL.uuid],
        "model_info": {MODEL.uuid: {"name": "en", "version": "0.1.0", "arch": "tone-fake"}},
    }


def test_prerecorded_shape() -> None:
    finals = [[_transcript(), Transcript(0, 2.0, 1.0, (Word("cafe", 2.1, 2.6, 0.7),), True)], []]
    msg = json.loads(prerecorded_response(_summary(), finals))
    assert set(msg) == {"metadata", "results"}
    assert set(msg["metadata"]) == {
        "transaction_key",
        "request_id",
        "sha256",
        "created",
        "duration",
        "channels",
        "models",
        "model_info",
    }
    channels = msg["results"]["channels"]
    assert len(channels) == 2
    first = channels[0]["alternatives"][0]
    assert first["transcript"] == "abc bad cafe"
    assert [w["word"] for w in first["words"]] == ["abc", "bad", "cafe"]
    assert channels[1]["alternatives"][0] == {"transcript": "", "confidence": 0.0, "words": []}


def test_error_bodies() -> None:
    assert json.loads(error_message("boom", "ENGINE_FAILURE")) == {
        "type": "Error",
        "description": "boom",
        "variant": "ENGINE_FAILURE",
        "message": "ENGINE_FAILURE",
    }
    body = json.loads(http_error("INVALID_QUERY_PARAMETER", "bad", "r1", param="encoding", allowed=["a"]))
    assert body == {
        "err_code": "INVALID_QUERY_PARAMETER",
        "err_msg": "bad",
        "request_id": "r1",
        "param": "encoding",
        "allowed": ["a"],
    }
    assert set(json.loads(http_error("INVALID_AUTH", "no", "r2"))) == {"err_code", "err_msg", "request_id"}
