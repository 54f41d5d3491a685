"""One error hierarchy for the whole server; the edge (server/, cli.py) maps it to statuses and codes."""

from __future__ import annotations


class StreamerError(Exception):
    """Base class of every error the project raises on purpose."""


class ConfigError(StreamerError):
    """An invalid setting at start-up (flag, environment variable or config value)."""


class ModelLoadError(StreamerError):
    """A model could not be loaded (missing folder, offline hub, unsupported architecture)."""


class RequestError(StreamerError):
    """A client request is invalid; `param` names the offending parameter."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class AudioFormatError(StreamerError):
    """Audio cannot be decoded with the stream's declared format."""


class EngineError(StreamerError):
    """The engine failed on a batch; the affected requests carry it."""


# What a client is told when the engine fails on its audio. The engine's own message (which may name
# files, devices or memory sizes) goes to the server log only.
ENGINE_FAILURE_TEXT = "transcription failed: the model failed on this audio (the server log has the details)"


class OverloadError(StreamerError):
    """No capacity left for another stream or request."""
