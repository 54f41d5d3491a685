"""What every ingress dialect is: a sans-I/O codec between one wire format and the live-stream bridge.

A dialect object serves one connection. The bridge hands it every frame (`receive_text`,
`receive_binary`) and acts on the `Inbound` items it returns, in order; it asks it how to say each
transcript event (`outbound`), the closing summary (`finished`), an engine failure (`failed`) and how to
close (`close_frame`). Limits, admission, idle timeouts, backpressure, drain and metrics belong to the
bridge (`streamer.server.live`), so a dialect has no lifecycle code of its own.

The handshake is the module's `accept(state, request, request_id) -> Accepted` (WebSocket dialects):
authentication and parameters, raising a `StreamerError` to refuse with an HTTP status.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from multidict import MultiDict

from streamer.audio import Encoding
from streamer.decoding.keyterms import KeytermLimits
from streamer.errors import RequestError
from streamer.protocol import (
    STREAM_OPTIONS,
    ListenParams,
    ModelIdentity,
    ParamError,
    StreamSummary,
    parse_listen_params,
)
from streamer.server.resume import Resume
from streamer.transcript import Event

# ---- what a dialect makes of an inbound frame --------------------------------------------------------


@dataclass(frozen=True)
class Audio:
    """Audio bytes in the stream's declared format (all channels interleaved)."""

    data: bytes


@dataclass(frozen=True)
class Start:
    """The stream's parameters, for dialects whose first messages carry them (not the handshake).
    `call_id` names the call in logs (a Twilio callSid, an AudioHook session id, ...)."""

    params: ListenParams
    call_id: str | None = None


@dataclass(frozen=True)
class Flush:
    """Make pending audio final now; the stream stays open (Deepgram's Finalize)."""


@dataclass(frozen=True)
class EndOfAudio:
    """The client has sent its last audio: flush the finals, then close normally."""


@dataclass(frozen=True)
class Reply:
    """A protocol message to send back at once (a pong, a Configure answer, an `opened`)."""

    text: str


@dataclass(frozen=True)
class ProtocolError:
    """The client broke the protocol: the stream ends with a protocol-level close naming `detail`."""

    detail: str


@dataclass(frozen=True)
class Reconfigure:
    """Replace the stream's keyterms (Deepgram's Configure); the dialect's `configured` says the answer."""

    keyterms: tuple[str, ...]


Inbound = Audio | Start | Flush | EndOfAudio | Reply | ProtocolError | Reconfigure


def json_object(text: str, what: str = "a message") -> dict[str, Any] | ProtocolError:
    """A text frame parsed as a JSON object, or the protocol error that a malformed one is."""
    try:
        message = json.loads(text)
    except ValueError as exc:
        return ProtocolError(f"malformed JSON: {exc}")
    if not isinstance(message, dict):
        return ProtocolError(f"{what} must be a JSON object")
    return message


@dataclass(frozen=True)
class StreamInfo:
    """What outbound messages of a started stream may need to say."""

    id: str
    params: ListenParams
    model: ModelIdentity

    @property
    def channels(self) -> int:
        return self.params.output_channels


EndKind = Literal[
    "close_stream",
    "idle",
    "max_duration",
    "shutdown",
    "bad_message",
    "engine_error",
    "slow_client",
    "client_closed",
]
"""How a live stream ended (see `streamer.server.live.End`)."""


class Dialect:
    """Base of every dialect: binary frames are audio, text frames are refused, nothing is sent back.

    Subclasses override what their wire format does differently.
    """

    name: ClassVar[str] = "raw"

    def receive_text(self, text: str) -> list[Inbound]:
        return [ProtocolError("text messages are not part of this protocol")]

    def receive_binary(self, data: bytes) -> list[Inbound]:
        return [Audio(data)]

    def outbound(self, event: Event, info: StreamInfo) -> str | None:
        """The message for a transcript event (Transcript, SpeechStarted, UtteranceEnd), or None."""
        return None

    def finished(self, summary: StreamSummary) -> str | None:
        """The last message after the last finals of a stream that ends normally, or None."""
        return None

    def failed(self, detail: str) -> str | None:
        """The message before the close that an engine failure causes, or None."""
        return None

    def configured(self, keyterms: Sequence[str], failure: str | None) -> str | None:
        """The answer to a `Reconfigure`: `keyterms` now in effect, or why the new ones were refused."""
        return None

    def rejected(self, detail: str) -> str | None:
        """The message before the close that a protocol error (`detail`) causes, or None."""
        return None

    def close_frame(self, kind: EndKind, detail: str, idle_timeout_s: float) -> tuple[int, str]:
        """WebSocket close code and reason for how the stream ended."""
        return standard_close_frame(kind, detail, idle_timeout_s)


def standard_close_frame(kind: EndKind, detail: str, idle_timeout_s: float) -> tuple[int, str]:
    """The close codes `/v1/listen` uses (Deepgram's), which the other WebSocket dialects share."""
    if kind == "close_stream":
        return 1000, ""
    if kind == "idle":
        # Deepgram's code and prefix for the same condition, so clients that match on it keep working.
        return 1011, f"NET-0001: no audio or KeepAlive received for {idle_timeout_s:g} s"
    if kind == "shutdown":
        return 1012, "server shutting down"
    if kind in ("bad_message", "max_duration"):
        return 1008, detail
    if kind == "engine_error":
        return 1011, "engine failure"
    if kind == "slow_client":
        return 1008, f"results not read for {idle_timeout_s:g} s"
    return 1000, ""


def stream_params(
    options: Mapping[str, object],
    served_models: list[str],
    *,
    encoding: Encoding,
    sample_rate: int,
    channels: int = 1,
    source: str = "options",
    keyterm_limits: KeytermLimits | None = None,
) -> ListenParams:
    """Stream parameters from a platform's own options (only `STREAM_OPTIONS` are read; booleans as
    JSON gives them are fine; `keyterm` and `keywords` may be lists, or several terms separated by
    commas where a platform passes only strings) and the audio format its protocol fixes. Raises
    RequestError naming `source` and the parameter."""
    query: MultiDict[str] = MultiDict()
    for k, v in options.items():
        if k not in STREAM_OPTIONS:
            continue
        if k in ("keyterm", "keywords"):
            for term in v if isinstance(v, list) else str(v).split(","):
                if str(term).strip():
                    query.add(k, str(term).strip())
        else:
            query[k] = str(v).lower() if isinstance(v, bool) else str(v)
    query.update(
        encoding=encoding,
        sample_rate=str(sample_rate),
        channels=str(channels),
        multichannel="true" if channels > 1 else "false",
    )
    try:
        return parse_listen_params(query, served_models, keyterm_limits)
    except ParamError as exc:
        raise RequestError(f"{source}: {exc}", exc.param) from None


def _text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)  # JSON true -> "true"


@dataclass(frozen=True)
class Accepted:
    """A handshake a dialect accepted: the codec for the connection and what admission needs.

    `model` is the model the stream slot is reserved for; `params` None means the dialect's first
    messages carry them (a `Start`). `key` is the API key for per-key limits (None: auth off or the
    platform signs its requests). `protocols` are the WebSocket subprotocols the server may choose.
    """

    dialect: Dialect
    model: str
    params: ListenParams | None
    key: str | None = None
    protocols: tuple[str, ...] = field(default=())
    resume: Resume | None = None
    """Set when the handshake resumes a stream another connection started (`streamer.server.resume`)."""
