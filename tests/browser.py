"""Driving Debian's Chromium with Playwright for the web page's tests (Playwright's own browser download
cannot work on these machines: `executable_path` points at the system's). Tests skip with the way to get
what is missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

CHROMIUM_PATHS = (Path("/usr/lib/chromium/chromium"), Path("/usr/bin/chromium"))


def chromium_path() -> Path:
    """The system Chromium binary, or skip with how to install it."""
    for path in CHROMIUM_PATHS:
        if path.exists():
            return path
    found = shutil.which("chromium")
    if found:
        return Path(found)
    pytest.skip("Chromium not found: apt-get install chromium (CI's .ci/run installs it as root)")


def fake_microphone_file(source: Path, out: Path, lead_s: float = 3.0, tail_s: float = 4.0) -> Path:
    """`source` as 16-bit mono 16 kHz WAV led and followed by silence, for Chromium's fake capture device:
    its headless AudioContext starts late (audio before it is lost), and with `%noloop` the last 10 ms
    repeat forever, so the file must end in real silence."""
    audio, rate = sf.read(str(source), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if rate != 16000:
        mono = soxr.resample(mono, rate, 16000)
    padded = np.concatenate([np.zeros(int(lead_s * 16000)), mono, np.zeros(int(tail_s * 16000))])
    sf.write(str(out), padded.astype(np.float32), 16000, subtype="PCM_16")
    return out


def browser_args(microphone: Path | None = None) -> list[str]:
    args = ["--disable-audio-output", "--autoplay-policy=no-user-gesture-required"]
    if microphone is not None:
        args += [
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={microphone}%noloop",
        ]
    return args
