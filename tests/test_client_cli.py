"""URL building, option parsing and the one-line error messages (no sockets)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from client.cli import build_parser, main, options_from_args
from client.connection import close_message, rejection_message
from client.options import DEFAULT_URL, ClientOptions
from client.run import _Interrupts
from client.sources import MemorySource
from client.terminal import Console
from client.urls import listen_url

QUERY = (
    "language=en&encoding=linear16&sample_rate=16000&channels=1"
    "&interim_results=true&vad_events=true&utterance_end_ms=1000"
)


def test_listen_url_default_query() -> None:
    assert listen_url("ws://127.0.0.1:8000", language="en") == f"ws://127.0.0.1:8000/v1/listen?{QUERY}"


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("http://host:8000", "ws://host:8000/v1/listen"),
        ("https://asr.example.com", "wss://asr.example.com/v1/listen"),
        ("wss://asr.example.com/", "wss://asr.example.com/v1/listen"),
        ("HTTPS://asr.example.com/prefix/", "wss://asr.example.com/prefix/v1/listen"),
        ("ws://h:1/v1/listen", "ws://h:1/v1/listen"),
        ("localhost:8000", "ws://localhost:8000/v1/listen"),
        ("ws://[::1]:8000", "ws://[::1]:8000/v1/listen"),
    ],
)
def test_listen_url_schemes_and_paths(base: str, expected: str) -> None:
    assert listen_url(base, language="en").split("?")[0] == expected


def test_listen_url_model_no_interim_and_kept_params() -> None:
    url = listen_url("https://h/?tag=x&language=fr", language="de", model="large v2", interim=False)
    query = parse_qs(urlsplit(url).query)
    assert query == {
        "tag": ["x"],
        "language": ["de"],
        "encoding": ["linear16"],
        "sample_rate": ["16000"],
        "channels": ["1"],
        "interim_results": ["false"],
        "vad_events": ["true"],
        "model": ["large v2"],
    }
    assert url.endswith("&model=large+v2")


@pytest.mark.parametrize("base", ["ftp://h", "ws://", "http:///x"])
def test_listen_url_rejects_bad_bases(base: str) -> None:
    with pytest.raises(ValueError):
        listen_url(base, language="en")


def test_options_from_args_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMER_URL", "https://asr.example.com")
    monkeypatch.setenv("STREAMER_API_KEY", "k1")
    args = build_parser().parse_args(
        ["--file", "a.wav", "--speed", "2", "--no-interim", "--json", "--progress"]
    )
    options = options_from_args(args)
    assert options == ClientOptions(
        url="https://asr.example.com",
        api_key="k1",
        file=Path("a.wav"),
        speed=2.0,
        interim=False,
        json_output=True,
        progress=True,
    )
    monkeypatch.delenv("STREAMER_URL")
    monkeypatch.delenv("STREAMER_API_KEY")
    defaults = options_from_args(
        build_parser().parse_args(["--api-key", "k2", "--lang", "ko", "--timeout", "3"])
    )
    assert (defaults.url, defaults.api_key, defaults.language, defaults.file) == (
        DEFAULT_URL,
        "k2",
        "ko",
        None,
    )
    assert (defaults.open_timeout, defaults.close_timeout, defaults.progress) == (3.0, 3.0, None)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--file", "a.wav", "--device", "1"], "--device selects a microphone"),
        (["--file", "a.wav", "--speed", "0"], "speed must be > 0"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_url_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", "ftp://x", "--file", "a.wav"]) == 2
    assert (
        capsys.readouterr().err
        == "error: unsupported URL scheme 'ftp' in 'ftp://x' (use ws, wss, http or https)\n"
    )


def test_rejection_messages() -> None:
    body = b'{"err_code":"INVALID_AUTH","err_msg":"Invalid credentials.","request_id":"r"}'
    assert rejection_message(401, body) == (
        "the server refused the API key (HTTP 401 Unauthorized): Invalid credentials. "
        "(pass --api-key or set STREAMER_API_KEY)"
    )
    assert rejection_message(400, b'{"err_msg": "encoding must be one of linear16, mulaw, alaw"}') == (
        "the server rejected the stream parameters (HTTP 400 Bad Request): "
        "encoding must be one of linear16, mulaw, alaw"
    )
    assert rejection_message(503, b"<html>\n busy </html>", "Service Unavailable") == (
        "the server refused the connection (HTTP 503 Service Unavailable): <html> busy </html>"
    )
    assert (
        rejection_message(404, b"") == "no /v1/listen endpoint at this URL (HTTP 404 Not Found) (check --url)"
    )
    assert (
        close_message(1008, "bad frame")
        == "the server closed the stream with code 1008 policy violation: bad frame"
    )
    assert close_message(4000, "") == "the server closed the stream with code 4000"


async def test_first_interrupt_ends_the_input_and_the_second_aborts() -> None:
    source = MemorySource(b"\x00\x00" * 16000)
    task = asyncio.create_task(asyncio.sleep(10))
    warnings: list[str] = []
    c = Console(out_tty=False, err_tty=False)
    c.warn = warnings.append  # type: ignore[method-assign,assignment]
    interrupts = _Interrupts(task, source, c)
    interrupts.streaming = True
    interrupts()
    assert [b async for b in source.blocks()] == []
    assert not task.cancelled() and not interrupts.aborted and "waiting" in warnings[0]
    interrupts()
    assert interrupts.aborted
    with pytest.raises(asyncio.CancelledError):
        await task
