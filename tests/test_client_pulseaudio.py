"""Tier 5: the terminal client's real microphone path. PortAudio (through sounddevice) reads the default
PulseAudio source, which is the monitor of a null sink that `paplay` plays a real recording into; the
captions printed and the SRT written after Ctrl-C (SIGINT) must match the offline transcript."""

from __future__ import annotations

import asyncio
import ctypes.util
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jiwer
import pytest

from streamer.bench.soak import ServerProcess
from tests.browser import fake_microphone_file
from tests.test_web_page import offline_text, parse_srt

pytestmark = pytest.mark.slow
HINT = "apt-get install pulseaudio pulseaudio-utils libportaudio2 (CI's .ci/run installs them as root)"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=20)


@pytest.fixture
def null_sink() -> Iterator[str]:
    """A PulseAudio null sink whose monitor is the default source (the microphone PortAudio opens)."""
    if not (shutil.which("pulseaudio") and shutil.which("pactl") and shutil.which("paplay")):
        pytest.skip(f"PulseAudio not found: {HINT}")
    if ctypes.util.find_library("portaudio") is None:
        pytest.skip(f"PortAudio not found: {HINT}")
    if _run("pactl", "info").returncode != 0:
        started = _run("pulseaudio", "--daemonize", "--exit-idle-time=-1")
        if _run("pactl", "info").returncode != 0:
            pytest.skip(f"PulseAudio did not start: {started.stderr.strip()[:200]}")
    name = "streamer_test_sink"
    loaded = _run("pactl", "load-module", "module-null-sink", f"sink_name={name}")
    assert loaded.returncode == 0, loaded.stderr
    previous = _run("pactl", "get-default-source").stdout.strip()
    _run("pactl", "set-default-source", f"{name}.monitor")
    try:
        yield name
    finally:
        if previous:
            _run("pactl", "set-default-source", previous)
        _run("pactl", "unload-module", loaded.stdout.strip())


async def test_microphone_captions_and_srt_after_ctrl_c(
    null_sink: str, eval_data: Path, tmp_path: Path
) -> None:
    recording = eval_data / "en" / "ls_2412-153948-0000.wav"
    played = fake_microphone_file(recording, tmp_path / "play.wav", lead_s=1.0, tail_s=2.0)
    srt = tmp_path / "mic.srt"
    server = ServerProcess([])
    await server.start()
    try:
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "client",
            "--url",
            server.url,
            "--srt",
            str(srt),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        await asyncio.sleep(2.0)  # the client has opened the microphone and the stream
        player = await asyncio.create_subprocess_exec("paplay", f"--device={null_sink}", str(played))
        assert await player.wait() == 0
        await asyncio.sleep(1.5)
        client.send_signal(signal.SIGINT)  # Ctrl-C once: end the input, wait for the last results
        out, err = await asyncio.wait_for(client.communicate(), 30)
    finally:
        await server.stop()
    assert client.returncode == 0, err.decode()
    printed = " ".join(out.decode().split()).lower()
    reference = offline_text(recording)
    assert jiwer.wer(reference, printed) <= 0.10, (printed, reference)
    cues = parse_srt(srt.read_text())
    assert " ".join(text for *_, text in cues).lower() == printed
    assert re.search(r"waiting for the last results", err.decode())
