"""`python -m client --file` end to end against a stand-in server that speaks the Deepgram-shaped protocol.

The stand-in (websockets' threaded server on 127.0.0.1, port 0) does not recognise anything: it answers a
scripted final of two words for every second of audio it receives, an interim in between, and the last
final plus Metadata on CloseStream. Variants reject the handshake (401, 400), close with an error code
mid-stream, or stay silent after CloseStream.
"""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import soundfile as sf
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

from client import ClientOptions, connection, run_stream
from client.cli import main
from client.sources import MemorySource
from streamer.engine.fake import tone_phrase

ROOT = Path(__file__).resolve().parents[1]
BYTES_PER_S = 32000
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett"]


def results(start: float, duration: float, words: list[tuple[str, float, float]], *, final: bool) -> str:
    """A Results message in Deepgram's shape."""
    body = {
        "type": "Results",
        "channel_index": [0, 1],
        "duration": round(duration, 3),
        "start": round(start, 3),
        "is_final": final,
        "speech_final": final,
        "from_finalize": False,
        "channel": {
            "alternatives": [
                {
                    "transcript": " ".join(w for w, _, _ in words),
                    "confidence": 0.9,
                    "words": [
                        {"word": w, "start": round(s, 3), "end": round(e, 3), "confidence": 0.9}
                        for w, s, e in words
                    ],
                }
            ]
        },
        "metadata": {"request_id": "test", "model_info": {"name": "stand-in"}},
    }
    return json.dumps(body)


@dataclass
class StandIn:
    """Stand-in server behaviour and what it saw; its handler runs on the server's threads."""

    api_key: str | None = None
    fail_after_s: float | None = None
    silent_on_close: bool = False
    keep_open_after_metadata: bool = False
    received: bytearray = field(default_factory=bytearray)
    sent: list[str] = field(default_factory=list)
    finals: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    headers: list[Headers] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    _word: int = 0

    def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        self.paths.append(request.path)
        self.headers.append(request.headers)
        if self.api_key is not None and request.headers.get("Authorization") != f"Token {self.api_key}":
            return json_response(conn, HTTPStatus.UNAUTHORIZED, "invalid credentials")
        query = parse_qs(urlsplit(request.path).query)
        if query.get("language") != ["en"]:
            return json_response(
                conn, HTTPStatus.BAD_REQUEST, f"unsupported language {query.get('language')}"
            )
        return None

    def send(self, ws: ServerConnection, text: str) -> None:
        self.sent.append(text)
        ws.send(text)

    def _words(self, start: float, span: float, count: int) -> list[tuple[str, float, float]]:
        out = []
        step = span / count
        for i in range(count):
            out.append(
                (WORDS[self._word % len(WORDS)], start + i * step + 0.05, start + (i + 1) * step - 0.05)
            )
            self._word += 1
        return out

    def handler(self, ws: ServerConnection) -> None:
        committed = 0.0  # audio seconds already covered by finals
        interim_at = 0.5
        try:
            for message in ws:
                if isinstance(message, bytes):
                    self.received += message
                    total = len(self.received) / BYTES_PER_S
                    if self.fail_after_s is not None and total >= self.fail_after_s:
                        error = {"type": "Error", "description": "transcription failed: boom", "message": "X"}
                        self.send(ws, json.dumps(error))
                        ws.close(1011, "engine failure")
                        return
                    while total - committed >= 1.0:
                        words = self._words(committed, 1.0, 2)
                        self.finals.append(" ".join(w for w, _, _ in words))
                        self.send(ws, results(committed, 1.0, words, final=True))
                        committed += 1.0
                        interim_at = committed + 0.5
                    if total >= interim_at:
                        interim_at += 0.5
                        self.send(
                            ws, results(committed, total - committed, [("uh", committed, total)], final=False)
                        )
                    continue
                if json.loads(message).get("type") != "CloseStream" or self.silent_on_close:
                    continue
                total = len(self.received) / BYTES_PER_S
                if total - committed > 0.1:
                    words = self._words(committed, total - committed, 1)
                    self.finals.append(words[0][0])
                    self.send(ws, results(committed, total - committed, words, final=True))
                metadata = {"type": "Metadata", "request_id": "test", "duration": total, "channels": 1}
                self.send(ws, json.dumps(metadata))
                if self.keep_open_after_metadata:
                    continue
                ws.close(1000)
                return
        finally:
            self.done.set()


def json_response(conn: ServerConnection, status: HTTPStatus, message: str) -> Response:
    body = {"err_code": status.phrase.upper().replace(" ", "_"), "err_msg": message, "request_id": "x"}
    response = conn.respond(status, json.dumps(body))
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response


@pytest.fixture
def stand_in() -> Iterator[tuple[StandIn, str]]:
    """A running default stand-in and its base URL; tests may change its fields before connecting."""
    behaviour = StandIn()
    with running(behaviour) as url:
        yield behaviour, url


class running:
    """Serve `behaviour` on a free port in a background thread; the value is the base URL."""

    def __init__(self, behaviour: StandIn) -> None:
        self.behaviour = behaviour
        self.server: Server | None = None

    def __enter__(self) -> str:
        # Late binding so a test can replace the behaviour's settings after the fixture started.
        self.server = serve(
            lambda ws: self.behaviour.handler(ws),
            "127.0.0.1",
            0,
            process_request=lambda conn, req: self.behaviour.process_request(conn, req),
            compression=None,
            # The handler stops reading when it fails a stream; without a queue bound the reader thread
            # still drains the audio in flight and completes the closing handshake.
            max_queue=None,
        )
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        port = self.server.socket.getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.shutdown()


def write_wav(path: Path, seconds: float, *, rate: int = 16000, channels: int = 1) -> np.ndarray:
    """A tone-phrase recording of about `seconds`, written as 16-bit PCM; returns the int16 samples."""
    phrase = tone_phrase(["bad", "cafe", "face", "dead"], sr=rate)
    reps = int(np.ceil(seconds * rate / len(phrase)))
    audio = np.tile(phrase, reps)[: int(seconds * rate)]
    pcm = np.rint(audio * 32767).astype(np.int16)
    data = np.stack([pcm] * channels, axis=1) if channels > 1 else pcm
    sf.write(path, data, rate, subtype="PCM_16")
    return pcm


SRT_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)$")


def parse_srt(text: str) -> list[tuple[int, float, float, list[str]]]:
    """(number, start, end, lines) per cue; fails the test on any malformed block."""
    cues = []
    for block in text.strip().split("\n\n"):
        lines = block.split("\n")
        match = SRT_TIME.match(lines[1])
        assert match, f"bad SRT time line {lines[1]!r}"
        g = [int(x) for x in match.groups()]
        start = g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000
        end = g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000
        cues.append((int(lines[0]), start, end, lines[2:]))
    return cues


def test_file_streams_to_the_server_and_writes_srt_vtt_and_transcript(
    stand_in: tuple[StandIn, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, url = stand_in
    server.api_key = "sekret"
    pcm = write_wav(tmp_path / "talk.wav", 9.3)
    srt, vtt = tmp_path / "talk.srt", tmp_path / "talk.vtt"
    argv = ["--file", str(tmp_path / "talk.wav"), "--url", url, "--api-key", "sekret", "--no-pace"]
    code = main([*argv, "--srt", str(srt), "--vtt", str(vtt), "--model", "tiny"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert server.done.wait(2)

    # The audio arrives bit-exact, with the documented query and the key in the Authorization header.
    assert bytes(server.received) == pcm.astype("<i2").tobytes()
    path = urlsplit(server.paths[0])
    assert path.path == "/v1/listen"
    assert parse_qs(path.query) == {
        "language": ["en"],
        "encoding": ["linear16"],
        "sample_rate": ["16000"],
        "channels": ["1"],
        "interim_results": ["true"],
        "vad_events": ["true"],
        "utterance_end_ms": ["1000"],
        "model": ["tiny"],
        "resumable": ["true"],  # the client replays its audio after a restart (--resume-buffer)
    }
    assert server.headers[0]["Authorization"] == "Token sekret"

    # Not a terminal: no live captions, only the whole transcript at the end.
    transcript = " ".join(server.finals)
    assert out == transcript + "\n"
    assert "\r" not in out

    cues = parse_srt(srt.read_text(encoding="utf-8"))
    assert [n for n, *_ in cues] == list(range(1, len(cues) + 1))
    assert len(cues) > 1
    previous_end = 0.0
    for _, start, end, lines in cues:
        assert previous_end <= start < end
        assert end - start <= 7.0
        assert 1 <= len(lines) <= 2 and all(len(line) <= 42 for line in lines)
        previous_end = end
    assert " ".join(" ".join(lines) for *_, lines in cues) == transcript

    text = vtt.read_text(encoding="utf-8")
    assert text.startswith("WEBVTT\n\n")
    assert re.search(r"^00:00:00\.\d{3} --> 00:00:0\d\.\d{3}$", text, re.M)


def test_json_prints_every_message_exactly_as_received(
    stand_in: tuple[StandIn, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, url = stand_in
    write_wav(tmp_path / "a.wav", 2.3)
    code = main(["--file", str(tmp_path / "a.wav"), "--url", url, "--no-pace", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert lines == server.sent
    parsed = [json.loads(line) for line in lines]
    assert parsed[-1]["type"] == "Metadata"
    assert any(m.get("is_final") is False for m in parsed)


def test_file_is_paced_in_real_time_times_speed(
    stand_in: tuple[StandIn, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = stand_in
    write_wav(tmp_path / "a.wav", 2.0)
    started = time.monotonic()
    code = main(["--file", str(tmp_path / "a.wav"), "--url", url, "--speed", "8"])
    elapsed = time.monotonic() - started
    assert code == 0, capsys.readouterr().err
    assert 0.2 <= elapsed < 2.0  # 2 s of audio at 8x is 0.25 s


def test_other_rates_and_channels_are_sent_as_16k_mono(
    stand_in: tuple[StandIn, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, url = stand_in
    write_wav(tmp_path / "stereo.wav", 1.5, rate=44100, channels=2)
    code = main(["--file", str(tmp_path / "stereo.wav"), "--url", url, "--no-pace"])
    assert code == 0, capsys.readouterr().err
    assert server.done.wait(2)
    assert abs(len(server.received) - 1.5 * BYTES_PER_S) <= 2 * 16  # within a millisecond


def test_wrong_key_is_one_line_with_the_servers_message(
    stand_in: tuple[StandIn, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, url = stand_in
    server.api_key = "right"
    write_wav(tmp_path / "a.wav", 0.5)
    code = main(["--file", str(tmp_path / "a.wav"), "--url", url, "--api-key", "wrong"])
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "401" in err and "invalid credentials" in err and "API key" in err


def test_rejected_parameters_show_the_servers_err_msg(
    stand_in: tuple[StandIn, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = stand_in
    write_wav(tmp_path / "a.wav", 0.5)
    code = main(["--file", str(tmp_path / "a.wav"), "--url", url, "--lang", "xx"])
    _, err = capsys.readouterr()
    assert code == 1
    assert err.count("\n") == 1
    assert "400" in err and "unsupported language ['xx']" in err


def test_unreachable_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    write_wav(tmp_path / "a.wav", 0.5)
    code = main(["--file", str(tmp_path / "a.wav"), "--url", f"http://127.0.0.1:{port}"])
    _, err = capsys.readouterr()
    assert code == 1
    assert err == (
        f"error: cannot connect to ws://127.0.0.1:{port}/v1/listen: "
        "connection refused (is the server running?)\n"
    )


def test_error_close_mid_stream_shows_code_and_reason(
    stand_in: tuple[StandIn, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, url = stand_in
    server.fail_after_s = 1.0
    write_wav(tmp_path / "a.wav", 3.0)
    code = main(["--file", str(tmp_path / "a.wav"), "--url", url, "--no-pace"])
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert err == (
        "error: the server closed the stream with code 1011 server error: engine failure "
        "(transcription failed: boom)\n"
    )


def test_no_answer_after_close_stream_times_out(
    stand_in: tuple[StandIn, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, url = stand_in
    server.silent_on_close = True
    write_wav(tmp_path / "a.wav", 0.5)
    code = main(["--file", str(tmp_path / "a.wav"), "--url", url, "--no-pace", "--timeout", "0.3"])
    _, err = capsys.readouterr()
    assert code == 1
    assert "no final results within 0.3 s" in err


def test_server_that_stays_open_after_metadata_is_closed_by_the_client(
    stand_in: tuple[StandIn, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    server, url = stand_in
    server.keep_open_after_metadata = True
    monkeypatch.setattr(connection, "METADATA_GRACE_S", 0.2)
    write_wav(tmp_path / "a.wav", 1.2)
    code = main(["--file", str(tmp_path / "a.wav"), "--url", url, "--no-pace"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out == " ".join(server.finals) + "\n"


def test_missing_file_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["--file", str(tmp_path / "nope.wav")])
    _, err = capsys.readouterr()
    assert code == 2
    assert err.startswith("error: cannot read audio file") and err.count("\n") == 1


def test_python_m_client_runs_without_sounddevice(stand_in: tuple[StandIn, str], tmp_path: Path) -> None:
    """The real entry point in a fresh interpreter; --file must never import sounddevice."""
    server, url = stand_in
    write_wav(tmp_path / "a.wav", 1.2)
    probe = (
        "import runpy, sys\n"
        "try:\n"
        "    runpy.run_module('client', run_name='__main__')\n"
        "finally:\n"
        "    print('sounddevice' in sys.modules, file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, "--file", str(tmp_path / "a.wav"), "--url", url, "--no-pace"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={"PATH": "", "STREAMER_API_KEY": ""},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == " ".join(server.finals) + "\n"
    assert proc.stderr.strip().splitlines()[-1] == "False"


async def test_run_stream_in_process_with_an_injected_source(stand_in: tuple[StandIn, str]) -> None:
    """The shape an end-to-end test against the real server uses: no files, no subprocess."""
    server, url = stand_in
    pcm = np.rint(tone_phrase(["bad", "cafe"]) * 32767).astype("<i2").tobytes() * 2
    out, err = io.StringIO(), io.StringIO()
    seen: list[str] = []
    report = await run_stream(
        ClientOptions(url=url),
        source=MemorySource(pcm, frame_ms=50),
        stdout=out,
        stderr=err,
        on_message=seen.append,
    )
    assert report.exit_code == 0, err.getvalue()
    assert report.transcript == " ".join(server.finals)
    assert [r.transcript for r in report.finals] == server.finals
    assert report.metadata is not None and report.metadata["type"] == "Metadata"
    assert seen == server.sent
    # Not a file: finals are committed line by line (a microphone piped somewhere), no transcript at the end.
    assert out.getvalue() == "".join(f + "\n" for f in server.finals)
