"""The server's configuration: one frozen dataclass tree, validated on construction.

Build it in code (`ServerConfig(models=(ModelSpec("en", "builtin:en"),))`) or from flags and `STREAMER_*`
environment variables with `streamer.cli.build_config(argv)`. Invalid values raise `ConfigError`.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Literal

from streamer.batcher import BatcherConfig
from streamer.decoding.keyterms import Keyterm, KeytermLimits
from streamer.engine import BUILTIN_EN, EngineOptions
from streamer.errors import ConfigError
from streamer.session import StreamingConfig

VadChoice = Literal["auto", "webrtc", "energy", "silero"]
VAD_CHOICES: tuple[VadChoice, ...] = ("auto", "webrtc", "energy", "silero")
DetectorKind = Literal["webrtc", "energy", "silero"]
MAX_WORKERS = 256

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_ORIGIN = re.compile(r"^[a-z][a-z0-9+.-]*://[^/\s]+$")


def normalise_origin(origin: str) -> str:
    """An Origin as browsers send it (`https://app.example.com:8443`): lower case, no trailing slash."""
    return origin.strip().rstrip("/").lower()


@dataclass(frozen=True)
class ModelSpec:
    """A served model: `name` is also the language it serves (`en`), `spec` what `load_engine` loads."""

    name: str
    spec: str

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(
                f"model name {self.name!r}: use a lower-case language code such as 'en' or 'pt-br' "
                "(letters, digits, '-', '_', '.')"
            )
        if not self.spec.strip():
            raise ConfigError(f"model {self.name!r}: empty model spec")

    @property
    def language(self) -> str:
        return self.name

    @property
    def is_fake(self) -> bool:
        """A model-free test engine (`fake:tone`), which only an energy VAD hears."""
        return self.spec == "fake" or self.spec.startswith("fake:")

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """`LANG=SPEC` (for example `en=builtin:en` or `he=/models/w2v2-he`) -> ModelSpec."""
        name, sep, spec = text.partition("=")
        if not sep or not name.strip() or not spec.strip():
            raise ConfigError(f"model {text!r}: expected LANG=SPEC, for example en=builtin:en")
        return cls(name.strip().lower(), spec.strip())


DEFAULT_MODELS = (ModelSpec("en", BUILTIN_EN),)


@dataclass(frozen=True)
class Limits:
    """Capacity and timing limits. Defaults, and why:

    - 64 streams: a CPU box saturates well before; the batcher queue then pushes back on the sockets.
    - 10 s idle timeout: what Deepgram clients expect (they send KeepAlive every few seconds).
    - 4 MiB WebSocket frames: far above any sane audio chunk (1 s of 48 kHz 8-channel linear16 is 768 KB).
    - 100 MB pre-recorded bodies: about 50 minutes of 16 kHz 16-bit mono.
    - 8 windows in flight per stream before the receive loop waits: two partial windows plus finals on
      several channels, without one stream filling the batcher queue.
    - Admission by measured load: new streams get 503 while the model's inference lanes were busy 90% of
      the last 10 s, or its windows waited 1 s on average in the queue. Below 90% busy an engine still
      keeps up with real time for the streams it has; above it, one more stream makes all of them late.
      A 10 s window smooths the bursts of final passes at utterance ends.
    - 4 h per stream: longer than any call or meeting we expect, short enough that a forgotten client
      (KeepAlive forever) cannot hold a slot for days.
    - 300 s of drain after SIGTERM: most calls end within five minutes, so a rolling restart cuts few;
      the rest are closed with 1012 and clients that hold a resume token continue on another replica.
      Kubernetes' terminationGracePeriodSeconds must cover it (plus preStop and the shutdown grace).
    - 64 results queued for a client that reads slowly (tens of seconds of interims, about 100 KB): beyond,
      the oldest interim results are dropped; finals never are, but when they alone fill it the server
      stops reading that client's audio.
    """

    max_streams: int = 64
    idle_timeout_s: float = 10.0
    max_message_bytes: int = 4 * 1024 * 1024
    max_body_bytes: int = 100 * 1000 * 1000
    shutdown_grace_s: float = 10.0
    drain_timeout_s: float = 300.0
    """After SIGTERM: not ready and no new streams, while running ones go on for up to this long."""
    max_inflight_windows: int = 8
    max_busy_fraction: float = 0.9
    max_queue_wait_s: float = 1.0
    load_window_s: float = 10.0
    max_stream_duration_s: float = 4 * 3600.0
    max_outbox: int = 64

    def __post_init__(self) -> None:
        if self.max_streams < 1:
            raise ConfigError(f"max streams must be >= 1, got {self.max_streams}")
        if not self.idle_timeout_s > 0:
            raise ConfigError(f"idle timeout must be > 0 s, got {self.idle_timeout_s}")
        if self.max_message_bytes < 1024:
            raise ConfigError(f"max message size must be >= 1024 bytes, got {self.max_message_bytes}")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"max body size must be >= 1024 bytes, got {self.max_body_bytes}")
        if self.shutdown_grace_s < 0:
            raise ConfigError(f"shutdown grace must be >= 0 s, got {self.shutdown_grace_s}")
        if self.drain_timeout_s < 0:
            raise ConfigError(f"drain timeout must be >= 0 s, got {self.drain_timeout_s}")
        if self.max_inflight_windows < 1:
            raise ConfigError(f"max in-flight windows must be >= 1, got {self.max_inflight_windows}")
        if not 0 < self.max_busy_fraction <= 1:
            raise ConfigError(f"max busy fraction must be > 0 and <= 1, got {self.max_busy_fraction}")
        if not self.max_queue_wait_s > 0:
            raise ConfigError(f"max queue wait must be > 0 s, got {self.max_queue_wait_s}")
        if not self.load_window_s >= 0.1:
            raise ConfigError(f"load window must be >= 0.1 s, got {self.load_window_s}")
        if not self.max_stream_duration_s > 0:
            raise ConfigError(f"max stream duration must be > 0 s, got {self.max_stream_duration_s}")
        if self.max_outbox < 1:
            raise ConfigError(f"max outbox must be >= 1 message, got {self.max_outbox}")


@dataclass(frozen=True)
class DeliveryConfig:
    """Where transcripts go besides the stream's own connection: signed webhooks and watchers.

    - `callback_url`: a webhook every stream posts its finals to unless it names its own (`callback`).
    - `callback_secret`: HMAC-SHA256 key of the `X-Streamer-Signature` header; None sends unsigned posts.
    - `callback_hosts`: hosts a client-given callback may name (`*`: any). Empty refuses client-given
      callbacks: otherwise anyone who may open a stream could make the server post into its own network.
    - 6 attempts per message with back-off from 0.5 s doubling to 8 s (about 15 s of outage ridden out),
      5 s per attempt, 256 messages waiting per stream: interims are dropped first when it is full;
      a final that cannot be delivered is counted in /metrics and logged.
    - Watchers get the last 10 finals of a tag on joining and 64 queued messages before interims drop
      (a watcher with twice that many finals unread is disconnected); at most 256 watchers.
    """

    callback_url: str | None = None
    callback_secret: str | None = field(default=None, repr=False)
    callback_hosts: frozenset[str] = frozenset()
    callback_attempts: int = 6
    callback_backoff_s: float = 0.5
    callback_max_backoff_s: float = 8.0
    callback_timeout_s: float = 5.0
    callback_queue: int = 256
    watch_history: int = 10
    watch_queue: int = 64
    max_watchers: int = 256

    def __post_init__(self) -> None:
        if self.callback_url is not None:
            check_callback_url(self.callback_url, "callback URL")
        if self.callback_attempts < 1:
            raise ConfigError(f"callback attempts must be >= 1, got {self.callback_attempts}")
        if not 0 < self.callback_backoff_s <= self.callback_max_backoff_s:
            raise ConfigError("callback back-off must be > 0 and <= its maximum")
        if not self.callback_timeout_s > 0:
            raise ConfigError(f"callback timeout must be > 0 s, got {self.callback_timeout_s}")
        if self.callback_queue < 1 or self.watch_queue < 1 or self.watch_history < 0 or self.max_watchers < 0:
            raise ConfigError("callback and watch queues must hold >= 1 message, history >= 0")


def check_callback_url(url: str, what: str) -> str:
    """`url` if it is an absolute http(s) URL with a host, else ConfigError naming `what`."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what} must be an http:// or https:// URL with a host, got {url[:100]!r}")
    return url


@dataclass(frozen=True)
class TelephonyConfig:
    """Phone-platform dialects. `twilio_auth_token` validates `X-Twilio-Signature` on `/twilio`;
    `public_url` (`wss://asr.example.com`) is the base URL the platform dials when a proxy in front of the
    server changes the Host or scheme the signature was computed over."""

    twilio_auth_token: str | None = field(default=None, repr=False)
    public_url: str | None = None
    audiohook_client_secret: str | None = field(default=None, repr=False)
    """Base64 client secret of the Genesys AudioHook integration: requests must then be signed with it."""
    audiosocket_port: int | None = None
    """TCP port of the Asterisk AudioSocket listener (0: any free port); None: no listener."""
    audiosocket_host: str | None = None
    """Interface of the AudioSocket listener; None: the server's --host."""

    @property
    def audiohook_secret_bytes(self) -> bytes | None:
        if self.audiohook_client_secret is None:
            return None
        return base64.b64decode(self.audiohook_client_secret)

    def __post_init__(self) -> None:
        if self.audiosocket_port is not None and not 0 <= self.audiosocket_port <= 65535:
            raise ConfigError(f"AudioSocket port must be 0-65535, got {self.audiosocket_port}")
        if self.audiohook_client_secret is not None:
            try:
                base64.b64decode(self.audiohook_client_secret, validate=True)
            except (binascii.Error, ValueError):
                raise ConfigError("the AudioHook client secret must be base64, as Genesys shows it") from None
        if self.public_url is not None and not _PUBLIC_URL.match(self.public_url):
            raise ConfigError(f"public URL must look like wss://host[:port], got {self.public_url!r}")


_PUBLIC_URL = re.compile(r"^wss?://[^/\s]+$")


@dataclass(frozen=True)
class ServerConfig:
    """Everything `streamer.server.run` and `create_app` need. `api_keys` empty = no authentication."""

    host: str = "127.0.0.1"
    port: int = 8000
    models: tuple[ModelSpec, ...] = DEFAULT_MODELS
    api_keys: frozenset[str] = field(default=frozenset(), repr=False)  # never in logs or reprs
    api_key_limits: tuple[tuple[str, int], ...] = field(default=(), repr=False)
    api_keys_watch_all: frozenset[str] = field(default=frozenset(), repr=False)
    """Keys that may watch any stream (`watch=all` in the keys file); the others watch their own streams'
    tags only."""
    """(key, max concurrent streams) for keys with their own limit; the others share `limits.max_streams`."""
    allowed_origins: frozenset[str] = frozenset()
    """Browser origins allowed on /v1/listen (normalised, see `normalise_origin`); empty = any. Requests
    without an Origin header (non-browser clients) are always allowed."""
    tls_cert: str | None = None
    """PEM certificate chain file; with `tls_key`, the server speaks HTTPS and wss://."""
    tls_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    batcher: BatcherConfig = field(default_factory=BatcherConfig)
    engine: EngineOptions = field(default_factory=EngineOptions)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    telephony: TelephonyConfig = field(default_factory=TelephonyConfig)
    resume_secret: bytes | None = field(default=None, repr=False)
    """HMAC key of stream resume tokens, shared by every replica behind one address; None: a random key
    per process (a stream then resumes only on the process that started it)."""
    resume_ttl_s: float = 300.0
    """How long a resume token stays valid after the final it came with."""
    keyterms: tuple[tuple[str, Keyterm], ...] = ()
    """Server keyterms: (model name, term); every stream of that model gets them (`*`: every model)."""
    keyterm_limits: KeytermLimits = field(default_factory=KeytermLimits)
    vad: VadChoice = "auto"
    """Speech detector: webrtc, silero (silero-vad, a small neural network: steadier in noise, several
    times webrtc's CPU), energy (for the `fake:tone` test engine), or auto (energy for fake models,
    webrtc otherwise)."""
    workers: int = 1
    """Server processes (`--workers`): 1 serves in this process, as always; more start a supervisor that
    accepts connections and hands each to the least loaded worker (`streamer.server.supervisor`)."""

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("host must not be empty")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0-65535, got {self.port}")
        if not self.models:
            raise ConfigError("at least one model is needed")
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"model named more than once: {', '.join(duplicates)}")
        for key in self.api_keys:
            if not key or any(c.isspace() for c in key) or "," in key:
                raise ConfigError("API keys must be non-empty, without whitespace or commas")
        if not self.api_keys_watch_all <= self.api_keys:
            raise ConfigError("a watch=all entry names a key that is not configured")
        for key, limit in self.api_key_limits:
            # Never name the key in the message: it may end up in a log.
            if key not in self.api_keys:
                raise ConfigError("a per-key stream limit names a key that is not configured")
            if limit < 1:
                raise ConfigError(f"per-key max_streams must be >= 1, got {limit}")
        for origin in self.allowed_origins:
            if origin != normalise_origin(origin) or not _ORIGIN.match(origin):
                raise ConfigError(
                    f"allowed origin {origin!r}: expected scheme://host[:port] in lower case, "
                    "for example https://app.example.com"
                )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both a certificate and a key (--tls-cert and --tls-key)")
        if self.vad not in VAD_CHOICES:
            raise ConfigError(f"vad must be one of {', '.join(VAD_CHOICES)}, got {self.vad!r}")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"workers must be 1-{MAX_WORKERS}, got {self.workers}")

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None

    def key_stream_limit(self, key: str) -> int | None:
        """The concurrent-stream limit of one API key, or None when it has none of its own."""
        for known, limit in self.api_key_limits:
            if known == key:
                return limit
        return None

    def uses_energy_vad(self, model: ModelSpec) -> bool:
        """Whether streams of `model` use the energy detector instead of webrtcvad."""
        return self.detector_kind(model) == "energy"

    def detector_kind(self, model: ModelSpec) -> DetectorKind:
        """The speech detector streams of `model` use (`auto` resolved)."""
        if self.vad == "auto":
            return "energy" if model.is_fake else "webrtc"
        return self.vad
