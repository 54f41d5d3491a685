"""The server's configuration: one frozen dataclass tree, validated on construction.

Build it in code (`ServerConfig(models=(ModelSpec("en", "builtin:en"),))`) or from flags and `STREAMER_*`
environment variables with `streamer.cli.build_config(argv)`. Invalid values raise `ConfigError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from streamer.batcher import BatcherConfig
from streamer.engine import BUILTIN_EN, EngineOptions
from streamer.errors import ConfigError
from streamer.session import StreamingConfig

VadChoice = Literal["auto", "webrtc", "energy"]
VAD_CHOICES: tuple[VadChoice, ...] = ("auto", "webrtc", "energy")

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


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
    """

    max_streams: int = 64
    idle_timeout_s: float = 10.0
    max_message_bytes: int = 4 * 1024 * 1024
    max_body_bytes: int = 100 * 1000 * 1000
    shutdown_grace_s: float = 10.0
    max_inflight_windows: int = 8

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
        if self.max_inflight_windows < 1:
            raise ConfigError(f"max in-flight windows must be >= 1, got {self.max_inflight_windows}")


@dataclass(frozen=True)
class ServerConfig:
    """Everything `streamer.server.run` and `create_app` need. `api_keys` empty = no authentication."""

    host: str = "127.0.0.1"
    port: int = 8000
    models: tuple[ModelSpec, ...] = DEFAULT_MODELS
    api_keys: frozenset[str] = field(default=frozenset(), repr=False)  # never in logs or reprs
    limits: Limits = field(default_factory=Limits)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    batcher: BatcherConfig = field(default_factory=BatcherConfig)
    engine: EngineOptions = field(default_factory=EngineOptions)
    vad: VadChoice = "auto"
    """Speech detector: webrtc, energy (for the `fake:tone` test engine), or auto (energy for fake models)."""

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
        if self.vad not in VAD_CHOICES:
            raise ConfigError(f"vad must be one of {', '.join(VAD_CHOICES)}, got {self.vad!r}")

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    def uses_energy_vad(self, model: ModelSpec) -> bool:
        """Whether streams of `model` use the energy detector instead of webrtcvad."""
        return self.vad == "energy" or (self.vad == "auto" and model.is_fake)
