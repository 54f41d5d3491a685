"""`ClientOptions`: everything one run of the client needs, independent of argparse and the environment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "ws://127.0.0.1:8000"
SAMPLE_RATE = 16000
"""The client always sends 16 kHz mono linear16; files and microphones are converted to it."""


@dataclass(frozen=True)
class ClientOptions:
    """One run of the client. `file=None` means the microphone (`device` picks it)."""

    url: str = DEFAULT_URL
    api_key: str | None = None
    language: str = "en"
    model: str | None = None
    file: Path | None = None
    device: str | None = None
    speed: float = 1.0
    """File mode: pace multiplier (2.0 sends twice as fast as real time)."""
    pace: bool = True
    """File mode: False sends as fast as the server accepts."""
    interim: bool = True
    json_output: bool = False
    """One server message per stdout line, exactly as received, instead of captions."""
    srt: Path | None = None
    vtt: Path | None = None
    progress: bool | None = None
    """File mode progress bar on stderr: None shows it only when stderr is a terminal."""
    file_frame_ms: int = 100
    mic_block_ms: int = 50
    mic_queue_blocks: int = 200
    """Microphone blocks held while the network is slow (200 x 50 ms = 10 s); beyond, the oldest go."""
    open_timeout: float = 10.0
    close_timeout: float = 10.0
    """Seconds to wait for the last finals and Metadata after CloseStream."""
    utterance_end_ms: int = 1000
    tag: str | None = None
    """Sent as `tag`: screens can follow this stream with `--watch TAG` or the page's watch view."""
    watch: str | None = None
    """Receive only: show the captions of the streams sent with this tag (`/v1/watch`), send no audio."""
    resume_buffer_s: float = 120.0
    """Audio kept since the last final to replay after a server restart or a dropped connection (0: off)."""
    resume_attempts: int = 8
    """Reconnections in a row (with back-off) before a cut stream is given up."""

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ValueError(f"speed must be > 0, got {self.speed}")
        if self.file_frame_ms <= 0 or self.mic_block_ms <= 0:
            raise ValueError("frame sizes must be > 0 ms")
        if self.mic_queue_blocks < 1:
            raise ValueError("mic_queue_blocks must be >= 1")
        if self.open_timeout <= 0 or self.close_timeout <= 0:
            raise ValueError("timeouts must be > 0 s")
        if self.resume_buffer_s < 0:
            raise ValueError("--resume-buffer must be >= 0 s")
