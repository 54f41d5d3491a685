"""Deepgram-compatible wire protocol: the only module that parses queries and encodes or decodes JSON.

In: `parse_listen_params(query, served_models)` turns `/v1/listen` query parameters into `ListenParams`
(raising `ParamError` naming the parameter); `decode_control(text)` turns a text frame into `KeepAlive`,
`Finalize`, `CloseStream` or `Configure` (raising `ControlMessageError`).
Out: `results_message`, `speech_started_message`, `utterance_end_message`, `metadata_message`,
`error_message`, `configure_reply`, `prerecorded_response` and `http_error` return JSON text built from
typed dataclasses, whose field names and types match the models of Deepgram's Python SDK (checked by
tests/test_deepgram_sdk.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from streamer.audio import ENCODINGS, MAX_CHANNELS, MAX_RATE, MIN_RATE, AudioFormat, Encoding
from streamer.decoding.keyterms import Keyterm, KeytermError, KeytermLimits, check_keyterms, parse_keyterm
from streamer.errors import RequestError
from streamer.session import StreamingConfig
from streamer.transcript import Event, SpeechStarted, Transcript, UtteranceEnd

CALLBACK_INTERIMS = "callback_interim_results"
"""Our parameter (not Deepgram's): post interim results to the callback too, not only finals."""
RESUMABLE = "resumable"
"""Our parameter: the client replays its audio since the last final when it resumes (client.resume), so a
restarting server leaves an unfinished utterance to the replica it resumes on instead of cutting it."""
MAX_TAG_CHARS = 128

# Deepgram parameters we accept and ignore, so that existing clients connect unchanged (README lists them).
LISTEN_PARAMS: frozenset[str] = frozenset(
    {
        "language",
        "model",
        "encoding",
        "sample_rate",
        "channels",
        "multichannel",
        "interim_results",
        "endpointing",
        "utterance_end_ms",
        "vad_events",
        "tag",
        "callback",
        "callback_method",
        CALLBACK_INTERIMS,
        RESUMABLE,
        "keyterm",
        "keywords",
    }
)
"""Query parameters of /v1/listen that this server implements."""

FORMAT_PARAMS: frozenset[str] = frozenset({"encoding", "sample_rate", "channels", "multichannel"})
STREAM_OPTIONS: frozenset[str] = LISTEN_PARAMS - FORMAT_PARAMS - {RESUMABLE}
"""The implemented parameters that are not about the audio format: what a phone platform's own options
(Twilio customParameters, AudioHook customConfig, URL query, fork metadata) may set."""

IGNORED_PARAMS: frozenset[str] = frozenset(
    {
        "alternatives",
        "detect_entities",
        "detect_language",
        "detect_topics",
        "diarize",
        "diarize_version",
        "dictation",
        "extra",
        "filler_words",
        "mip_opt_out",
        "no_delay",
        "numerals",
        "paragraphs",
        "profanity_filter",
        "punctuate",
        "redact",
        "replace",
        "search",
        "smart_format",
        "summarize",
        "tier",
        "topics",
        "utterances",
        "version",
    }
)

# First word of Deepgram's own model names (`nova-3`, `nova-2-phonecall`, `whisper-large`, `enhanced`, ...).
# A client asking for one of them gets the model serving its language rather than an error.
DEEPGRAM_MODEL_FAMILIES: frozenset[str] = frozenset(
    {
        "nova",
        "whisper",
        "enhanced",
        "base",
        "general",
        "phonecall",
        "meeting",
        "voicemail",
        "finance",
        "conversationalai",
        "video",
        "medical",
        "drivethru",
        "automotive",
        "atc",
    }
)

DEFAULT_LANGUAGE = "en"
MIN_UTTERANCE_END_MS = 1000
_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})

INVALID_QUERY_PARAMETER = "INVALID_QUERY_PARAMETER"


class ParamError(RequestError):
    """A query parameter is malformed or unsupported; `allowed` describes the accepted values."""

    err_code = INVALID_QUERY_PARAMETER

    def __init__(self, message: str, param: str, allowed: object = None) -> None:
        super().__init__(message, param)
        self.allowed = allowed


class ControlMessageError(RequestError):
    """A text frame that is not a known control message."""


# ---- client -> server -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListenParams:
    """A validated `/v1/listen` request. `model` is the served model's name (also its language)."""

    model: str
    language: str
    encoding: Encoding = "linear16"
    sample_rate: int = 16000
    channels: int = 1
    multichannel: bool = False
    interim_results: bool = False
    endpointing_ms: int | None = None
    """Client's endpointing in ms (raised to one VAD frame); None = the server default."""
    endpointing_off: bool = False
    """`endpointing=false`: segments end only on Finalize, CloseStream or the length cap."""
    utterance_end_ms: int | None = None
    vad_events: bool = False
    requested_model: str | None = None
    tag: str | None = None
    """Watchers of this tag (`/v1/watch?tag=`) follow the stream."""
    callback: str | None = None
    """Webhook the stream's finals are posted to (checked against the server's allowed hosts)."""
    callback_method: Literal["POST", "PUT"] = "POST"
    callback_interims: bool = False
    resumable: bool = False
    """The client resumes after a restart with its audio since the last final (see RESUMABLE)."""
    keyterms: tuple[Keyterm, ...] = ()
    """`keyterm` (repeatable) and `keywords` (`WORD:BOOST`, repeatable) values, within the limits."""
    ignored: tuple[str, ...] = ()
    """Known Deepgram parameters accepted without effect."""
    unknown: tuple[str, ...] = ()
    """Parameters we do not know at all (accepted, as Deepgram does)."""

    @property
    def audio_format(self) -> AudioFormat:
        return AudioFormat(self.encoding, self.sample_rate, self.channels, self.multichannel)

    @property
    def output_channels(self) -> int:
        return self.channels if self.multichannel else 1

    def streaming_config(self, base: StreamingConfig) -> StreamingConfig:
        """The server's streaming settings with this request's overrides applied."""
        vad = base.vad
        if self.endpointing_off:
            vad = vad.with_endpointing(None)
        elif self.endpointing_ms is not None:
            vad = vad.with_endpointing(self.endpointing_ms)
        return replace(
            base,
            vad=vad,
            interim_results=self.interim_results,
            utterance_end_ms=self.utterance_end_ms,
        )


def _bool(query: Mapping[str, str], name: str, default: bool) -> bool:
    raw = query.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ParamError(f"{name} must be true or false, got {raw!r}", name, ["true", "false"])


def _int(query: Mapping[str, str], name: str, low: int, high: int | None, allowed: object) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise ParamError(f"{name} must be an integer, got {raw!r}", name, allowed) from None
    if value < low or (high is not None and value > high):
        bound = f"{low}-{high}" if high is not None else f">= {low}"
        raise ParamError(f"{name} must be {bound}, got {value}", name, allowed)
    return value


def default_model(served: Sequence[str]) -> str:
    """The model a stream that names no language gets: English when served, else the first."""
    return DEFAULT_LANGUAGE if DEFAULT_LANGUAGE in served else served[0]


def _resolve_language(query: Mapping[str, str], served: Sequence[str]) -> str:
    raw = query.get("language")
    if raw is None:
        return default_model(served)
    tag = raw.strip().lower().replace("_", "-")
    if tag in served:
        return tag
    primary = tag.split("-", 1)[0]
    if primary in served:
        return primary
    raise ParamError(
        f"language {raw!r} is not served here; served: {', '.join(sorted(served))}", "language", list(served)
    )


def _is_http_url(text: str) -> bool:
    parts = urlsplit(text.strip())
    return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.hostname is not None


def _is_deepgram_model(name: str) -> bool:
    first = name.split("-", 1)[0]
    return first in DEEPGRAM_MODEL_FAMILIES or first.isdigit()


def _all(query: Mapping[str, str], name: str) -> list[str]:
    """Every value of a repeatable parameter (`query` may be a multi-dict with `getall`, as aiohttp's)."""
    getall = getattr(query, "getall", None)
    if getall is not None:
        values: list[str] = getall(name, [])
        return values
    value = query.get(name)
    return [] if value is None else [value]


def parse_keyterms(query: Mapping[str, str], limits: KeytermLimits) -> tuple[Keyterm, ...]:
    """The `keyterm` and `keywords` values of `query`, checked against `limits`; raises ParamError."""
    try:
        terms = [parse_keyterm(v, with_boost=False) for v in _all(query, "keyterm")]
        terms += [parse_keyterm(v, with_boost=True) for v in _all(query, "keywords")]
        check_keyterms(terms, limits, "keyterm" if "keyterm" in query else "keywords")
    except KeytermError as exc:
        raise ParamError(str(exc), exc.param or "keyterm", "keyterms within the server's limits") from None
    return tuple(terms)


def parse_listen_params(
    query: Mapping[str, str], served_models: Sequence[str], keyterm_limits: KeytermLimits | None = None
) -> ListenParams:
    """Validate `/v1/listen` query parameters against the served model names (= languages).

    `model` picks a served model by name; a Deepgram model name (`nova-3`, `enhanced`, ...) falls back to
    the model of `language`; any other name is an error. `keyterm` and `keywords` may repeat (`query` a
    multi-dict) and must keep within `keyterm_limits`. Raises `ParamError`.
    """
    if not served_models:
        raise ValueError("no served models")
    language = _resolve_language(query, served_models)
    requested = query.get("model")
    model = language
    if requested is not None:
        name = requested.strip().lower()
        if name in served_models:
            model = name
        elif not _is_deepgram_model(name):
            raise ParamError(
                f"model {requested!r} is not served here; served: {', '.join(sorted(served_models))}",
                "model",
                list(served_models),
            )

    encoding_raw = query.get("encoding")
    encoding: Encoding = "linear16"
    if encoding_raw is not None:
        value = encoding_raw.strip().lower()
        if value not in ENCODINGS:
            raise ParamError(f"unsupported encoding {encoding_raw!r}", "encoding", list(ENCODINGS))
        encoding = value
    rate = _int(query, "sample_rate", MIN_RATE, MAX_RATE, f"{MIN_RATE}-{MAX_RATE}")
    channels = _int(query, "channels", 1, MAX_CHANNELS, f"1-{MAX_CHANNELS}")

    endpointing_ms: int | None = None
    endpointing_off = False
    raw_endpointing = query.get("endpointing")
    if raw_endpointing is not None:
        value = raw_endpointing.strip().lower()
        if value == "false":
            endpointing_off = True
        elif value != "true":  # true: the server default
            endpointing_ms = _int(query, "endpointing", 0, None, "milliseconds >= 0, or false")
    utterance_end_ms = _int(
        query, "utterance_end_ms", MIN_UTTERANCE_END_MS, None, f"milliseconds >= {MIN_UTTERANCE_END_MS}"
    )

    tag = query.get("tag")
    if tag is not None and (not tag.isprintable() or not 0 < len(tag) <= MAX_TAG_CHARS):
        raise ParamError(f"tag must be 1-{MAX_TAG_CHARS} printable characters", "tag", "text")
    callback = query.get("callback")
    if callback is not None and not _is_http_url(callback):
        raise ParamError("callback must be an http:// or https:// URL with a host", "callback", "URL")
    method = query.get("callback_method", "post").strip().upper()
    if method not in ("POST", "PUT"):
        raise ParamError(f"unsupported callback_method {method[:20]!r}", "callback_method", ["post", "put"])

    names = sorted(set(query.keys()))
    return ListenParams(
        model=model,
        language=language,
        encoding=encoding,
        sample_rate=rate if rate is not None else 16000,
        channels=channels if channels is not None else 1,
        multichannel=_bool(query, "multichannel", False),
        interim_results=_bool(query, "interim_results", False),
        endpointing_ms=endpointing_ms,
        endpointing_off=endpointing_off,
        utterance_end_ms=utterance_end_ms,
        vad_events=_bool(query, "vad_events", False),
        requested_model=requested,
        tag=tag,
        callback=callback,
        callback_method="PUT" if method == "PUT" else "POST",
        callback_interims=_bool(query, CALLBACK_INTERIMS, False),
        resumable=_bool(query, RESUMABLE, False),
        keyterms=parse_keyterms(query, keyterm_limits or KeytermLimits()),
        ignored=tuple(n for n in names if n in IGNORED_PARAMS),
        unknown=tuple(n for n in names if n not in IGNORED_PARAMS and n not in LISTEN_PARAMS),
    )


@dataclass(frozen=True)
class KeepAlive:
    pass


@dataclass(frozen=True)
class Finalize:
    channel: int | None = None
    """Deepgram lets a client name one channel; every channel is finalised regardless (see README)."""


@dataclass(frozen=True)
class CloseStream:
    pass


@dataclass(frozen=True)
class Configure:
    """Deepgram's mid-stream update (the SDK's `send_configure`): `None` fields keep their setting."""

    keyterms: tuple[str, ...] | None = None
    features: Mapping[str, bool] | None = None


ControlMessage = KeepAlive | Finalize | CloseStream | Configure


def _configure(data: Mapping[str, Any]) -> Configure:
    keyterms = data.get("keyterms")
    if keyterms is not None and (
        not isinstance(keyterms, list) or not all(isinstance(k, str) for k in keyterms)
    ):
        raise ControlMessageError("Configure keyterms must be a list of strings")
    features = data.get("features")
    if features is not None and (
        not isinstance(features, dict) or not all(isinstance(v, bool) for v in features.values())
    ):
        raise ControlMessageError("Configure features must map feature names to true or false")
    return Configure(tuple(keyterms) if keyterms is not None else None, features)


def decode_control(text: str) -> ControlMessage:
    """Decode a text frame; raises `ControlMessageError` with a short reason (fit for a close frame)."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ControlMessageError("text frames must be JSON control messages") from None
    if not isinstance(data, dict):
        raise ControlMessageError("control message must be a JSON object")
    kind = data.get("type")
    if kind == "KeepAlive":
        return KeepAlive()
    if kind == "CloseStream":
        return CloseStream()
    if kind == "Finalize":
        channel = data.get("channel")
        if channel is not None and (not isinstance(channel, int) or isinstance(channel, bool) or channel < 0):
            raise ControlMessageError("Finalize channel must be a channel index")
        return Finalize(channel)
    if kind == "Configure":
        return _configure(data)
    shown = kind if isinstance(kind, str) else json.dumps(kind)
    raise ControlMessageError(f"unknown control message type {shown[:40]!r}")


# ---- server -> client -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    arch: str


@dataclass(frozen=True)
class ModelIdentity:
    """Who answered: `uuid` is stable for a given model name and spec."""

    uuid: str
    info: ModelInfo


@dataclass(frozen=True)
class WireWord:
    word: str
    start: float
    end: float
    confidence: float


@dataclass(frozen=True)
class Alternative:
    transcript: str
    confidence: float
    words: list[WireWord]


@dataclass(frozen=True)
class ResultsChannel:
    alternatives: list[Alternative]


@dataclass(frozen=True)
class ResultsMetadata:
    request_id: str
    model_info: ModelInfo
    model_uuid: str


@dataclass(frozen=True)
class ResultsMessage:
    channel_index: list[int]
    duration: float
    start: float
    is_final: bool
    speech_final: bool
    from_finalize: bool
    channel: ResultsChannel
    metadata: ResultsMetadata
    type: Literal["Results"] = "Results"


@dataclass(frozen=True)
class SpeechStartedMessage:
    channel: list[int]
    timestamp: float
    type: Literal["SpeechStarted"] = "SpeechStarted"


@dataclass(frozen=True)
class UtteranceEndMessage:
    channel: list[int]
    last_word_end: float
    type: Literal["UtteranceEnd"] = "UtteranceEnd"


@dataclass(frozen=True)
class StreamSummary:
    """What the closing `Metadata` (and a pre-recorded response's `metadata`) reports."""

    request_id: str
    created: datetime
    duration: float
    channels: int
    sha256: str
    models: tuple[ModelIdentity, ...]


@dataclass(frozen=True)
class MetadataMessage:
    request_id: str
    sha256: str
    created: str
    duration: float
    channels: int
    models: list[str]
    model_info: dict[str, ModelInfo]
    transaction_key: str = "deprecated"
    type: Literal["Metadata"] = "Metadata"


@dataclass(frozen=True)
class ErrorMessage:
    description: str
    variant: str
    """The error's category, which Deepgram's SDK requires (its `ListenV1Error`): our error code."""
    message: str = ""
    type: Literal["Error"] = "Error"


@dataclass(frozen=True)
class ConfigureSuccessMessage:
    request_id: str
    keyterms: list[str] | None = None
    """The keyterms now in effect, when the Configure replaced them."""
    type: Literal["ConfigureSuccess"] = "ConfigureSuccess"


@dataclass(frozen=True)
class ConfigureFailureMessage:
    request_id: str
    code: str
    description: str
    type: Literal["ConfigureFailure"] = "ConfigureFailure"


@dataclass(frozen=True)
class PrerecordedChannel:
    alternatives: list[Alternative]


@dataclass(frozen=True)
class PrerecordedResults:
    channels: list[PrerecordedChannel]


@dataclass(frozen=True)
class PrerecordedMetadata:
    request_id: str
    sha256: str
    created: str
    duration: float
    channels: int
    models: list[str]
    model_info: dict[str, ModelInfo]
    transaction_key: str = "deprecated"


@dataclass(frozen=True)
class PrerecordedResponse:
    metadata: PrerecordedMetadata
    results: PrerecordedResults


def _dumps(message: object) -> str:
    return json.dumps(asdict(message), ensure_ascii=False, separators=(",", ":"))  # type: ignore[call-overload]


def with_stream(message: str, stream: str) -> str:
    """`message` (a JSON object made by this module) with a `"stream"` field holding `stream`, a JSON
    object from `stream_label`: how watchers and webhooks tell the streams they receive apart."""
    return with_field(message, "stream", stream)


def with_field(message: str, name: str, value_json: str) -> str:
    """`message` (a JSON object made by this module) with one more field, `name`, whose value is the
    JSON text `value_json` (the message is not parsed again)."""
    return f'{message[:-1]},"{name}":{value_json}}}'


def stream_label(stream_id: str, dialect: str, tag: str | None, call_id: str | None) -> str:
    """The `"stream"` field of delivered messages: id, dialect, tag and call id (JSON text)."""
    return json.dumps(
        {"id": stream_id, "dialect": dialect, "tag": tag, "call_id": call_id},
        ensure_ascii=False,
        separators=(",", ":"),
    )


def iso_time(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a `Z`, as Deepgram writes `created`."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _alternative(words: Sequence[WireWord], confidence: float) -> Alternative:
    return Alternative(" ".join(w.word for w in words), round(confidence, 4), list(words))


def _wire_words(transcript: Transcript) -> list[WireWord]:
    return [
        WireWord(w.word, round(w.start, 3), round(w.end, 3), round(w.confidence, 4)) for w in transcript.words
    ]


def results_message(transcript: Transcript, channels: int, model: ModelIdentity, request_id: str) -> str:
    """A `Results` message for one channel's partial or final transcript (`channels` = channel count)."""
    message = ResultsMessage(
        channel_index=[transcript.channel, channels],
        duration=round(transcript.duration, 3),
        start=round(transcript.start, 3),
        is_final=transcript.is_final,
        speech_final=transcript.speech_final,
        from_finalize=transcript.from_finalize,
        channel=ResultsChannel([_alternative(_wire_words(transcript), transcript.confidence)]),
        metadata=ResultsMetadata(request_id, model.info, model.uuid),
    )
    return _dumps(message)


def event_message(
    event: Event, channels: int, model: ModelIdentity, request_id: str, vad_events: bool
) -> str | None:
    """The message a transcript event becomes on /v1/listen (None: SpeechStarted without `vad_events`)."""
    if isinstance(event, Transcript):
        return results_message(event, channels, model, request_id)
    if isinstance(event, SpeechStarted):
        return speech_started_message(event, channels) if vad_events else None
    if isinstance(event, UtteranceEnd):
        return utterance_end_message(event, channels)
    return None


def speech_started_message(event: SpeechStarted, channels: int) -> str:
    return _dumps(SpeechStartedMessage([event.channel, channels], round(event.timestamp, 3)))


def utterance_end_message(event: UtteranceEnd, channels: int) -> str:
    return _dumps(UtteranceEndMessage([event.channel, channels], round(event.last_word_end, 3)))


def metadata_message(summary: StreamSummary) -> str:
    """The closing `Metadata` message of a live stream."""
    return _dumps(
        MetadataMessage(
            request_id=summary.request_id,
            sha256=summary.sha256,
            created=iso_time(summary.created),
            duration=round(summary.duration, 3),
            channels=summary.channels,
            models=[m.uuid for m in summary.models],
            model_info={m.uuid: m.info for m in summary.models},
        )
    )


def error_message(description: str, code: str = "") -> str:
    """An `Error` message sent just before the server closes the stream with an error code."""
    return _dumps(ErrorMessage(description, code or "Error", code))


def configure_reply(
    request_id: str, keyterms: Sequence[str] | None = None, failure: str | None = None
) -> str:
    """Deepgram's answer to `Configure`; the stream goes on either way.

    `keyterms`: the terms now in effect when the message replaced them; `failure`: why the new keyterms
    were refused (`CONFIGURE_KEYTERM_LIMIT_EXCEEDED`; the old ones stay). Formatting `features` succeed
    without effect, as the `punctuate` or `numerals` query parameters are accepted and ignored.
    """
    if failure is not None:
        return _dumps(ConfigureFailureMessage(request_id, "CONFIGURE_KEYTERM_LIMIT_EXCEEDED", failure))
    success = asdict(ConfigureSuccessMessage(request_id, list(keyterms) if keyterms is not None else None))
    if keyterms is None:
        del success["keyterms"]  # present only when the message replaced them
    return json.dumps(success, ensure_ascii=False, separators=(",", ":"))


def prerecorded_response(summary: StreamSummary, channels: Sequence[Sequence[Transcript]]) -> str:
    """Deepgram's pre-recorded JSON: one alternative per channel joining that channel's finals."""
    out: list[PrerecordedChannel] = []
    for finals in channels:
        words = [w for t in finals for w in _wire_words(t)]
        confidence = sum(w.confidence for w in words) / len(words) if words else 0.0
        out.append(PrerecordedChannel([_alternative(words, confidence)]))
    metadata = PrerecordedMetadata(
        request_id=summary.request_id,
        sha256=summary.sha256,
        created=iso_time(summary.created),
        duration=round(summary.duration, 3),
        channels=summary.channels,
        models=[m.uuid for m in summary.models],
        model_info={m.uuid: m.info for m in summary.models},
    )
    return _dumps(PrerecordedResponse(metadata, PrerecordedResults(out)))


def http_error(
    err_code: str, err_msg: str, request_id: str, *, param: str | None = None, allowed: object = None
) -> str:
    """JSON body of a refused request (handshake or POST): `err_code`, `err_msg`, and `param`/`allowed`
    when one query parameter is at fault."""
    body: dict[str, Any] = {"err_code": err_code, "err_msg": err_msg, "request_id": request_id}
    if param is not None:
        body["param"] = param
    if allowed is not None:
        body["allowed"] = allowed
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))
