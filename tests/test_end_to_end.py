"""Tier 4: the real server process with the built-in model, and the real client process, on real speech."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jiwer
import pytest

JFK = (
    "and so my fellow americans ask not what your country can do for you ask what you can do for your country"
)


def offline_text(path: Path) -> str:
    from streamer.engine import BUILTIN_EN, EngineOptions, load_engine
    from streamer.transcribe import read_audio, transcribe_samples
    from streamer.vad import VadConfig

    engine = load_engine(BUILTIN_EN, EngineOptions(threads=1))  # the server's default decoder too
    try:
        results = transcribe_samples(engine, read_audio(path), VadConfig())
    finally:
        engine.close()
    return " ".join(r.text for r in results if r.text)


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    url = None
    for _ in range(50):
        line = proc.stdout.readline()
        if m := re.search(r"listening on (http://\S+)", line):
            url = m.group(1)
            break
    if url is None:
        proc.kill()
        pytest.fail("server did not start")
    yield url.replace("http://", "ws://")
    proc.terminate()
    assert proc.wait(timeout=20) == 0


def test_client_file_mode_transcribes_a_recording_with_the_builtin_model(
    server_url: str, eval_data: Path, tmp_path: Path
) -> None:
    srt = tmp_path / "jfk.srt"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "client",
            "--url",
            server_url,
            "--file",
            str(eval_data / "en" / "jfk.wav"),
            "--no-pace",
            "--srt",
            str(srt),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    streamed = out.stdout.strip().splitlines()[-1]
    # The finals are the offline pass over the same VAD segments, word for word; the model's own accuracy
    # (jfk.wav has two long pauses, and the built-in model is weaker on the short segments they make) is
    # the accuracy benchmark's business.
    assert streamed == offline_text(eval_data / "en" / "jfk.wav")
    assert jiwer.wer(JFK, streamed) < 0.35
    cues = srt.read_text().strip().split("\n\n")
    assert len(cues) >= 2
    times = re.findall(r"(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)", srt.read_text())
    starts = [int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000 for h, m, s, ms, *_ in times]
    assert starts == sorted(starts) and 0 <= starts[0] < 1.0 and starts[-1] < 11.0
    text = " ".join(line for cue in cues for line in cue.splitlines()[2:])
    assert text == streamed


def test_client_reports_a_rejected_language_clearly(server_url: str, eval_data: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "client",
            "--url",
            server_url,
            "--lang",
            "xx",
            "--file",
            str(eval_data / "en" / "jfk.wav"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "language" in out.stderr and "en" in out.stderr
