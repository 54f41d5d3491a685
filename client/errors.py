"""The client's error hierarchy; `cli.main` prints the message on one line and exits with `exit_code`."""

from __future__ import annotations


class ClientError(Exception):
    """A failure worth one line on stderr, no traceback."""

    exit_code = 1


class UsageError(ClientError):
    """Bad options or a local input the client cannot use (exit 2, like argparse)."""

    exit_code = 2


class SourceError(UsageError):
    """The audio input (file or microphone) cannot be opened or read."""


class ConnectError(ClientError):
    """The server cannot be reached: refused, unknown host, timeout, not a WebSocket server."""


class RejectedError(ClientError):
    """The server answered the handshake with an HTTP error (bad key, bad parameters)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class StreamError(ClientError):
    """The stream ended badly after the handshake: error close code, lost connection, no final results."""
