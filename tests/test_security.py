"""Security: API keys (constant-time checks, never logged, per-key limits), TLS, browser origins, limits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import ssl
import subprocess
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import streamer.server
import streamer.server.auth
from streamer.bench.soak import ServerProcess
from streamer.cli import build_config, main
from streamer.config import Limits, ModelSpec, ServerConfig
from streamer.engine.fake import ToneEngine
from streamer.errors import ConfigError
from streamer.server import STATE, AuthError, ServerState
from streamer.server.auth import authorize
from tests.test_server import (
    _wav,
    config,
    drain,
    final_words,
    handshake_error,
    pcm16,
    send_audio,
    serve,
    utterances,
)

# ---- API keys ----


def _state(keys: set[str]) -> ServerState:
    return ServerState(config(api_keys=frozenset(keys)), {"en": ToneEngine()}, owns_engines=False)


def test_keys_are_compared_in_constant_time_with_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = {"k-short", "a-much-longer-key-0123456789abcdef", "middle-key-42", "zz-last-in-order"}
    state = _state(keys)
    compared: list[tuple[int, int]] = []
    real = streamer.server.auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(streamer.server.auth.hmac, "compare_digest", counting)
    for given in [*sorted(keys), "wrong", "k-shor", "a-much-longer-key-0123456789abcdef-and-more"]:
        compared.clear()
        request = make_mocked_request("GET", "/v1/listen", headers={"Authorization": f"Token {given}"})
        try:
            assert authorize(state.config.api_keys, request) == given
        except AuthError:
            assert given not in keys
        # Every key, whichever matched or none; equal-length digests, so neither a key's length nor a
        # matching prefix changes the work done.
        assert len(compared) == len(keys)
        assert set(compared) == {(32, 32)}


async def test_keys_never_appear_in_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key, other = "sk-test-9f8e7d6c5b4a", "sk-second-0a1b2c3d"
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# team keys\n{key} max_streams=1\n{other}\n", encoding="utf-8")
    cfg = build_config(["--api-keys-file", str(keys_file), "--model", "en=fake:tone"], {})
    caplog.set_level(logging.DEBUG)  # every logger, aiohttp's access log included
    async with serve(cfg) as server, asyncio.timeout(20):
        auth = {"Authorization": f"Token {key}"}
        async with connect(server.ws_url("interim_results=true"), additional_headers=auth) as ws:
            await send_audio(ws, pcm16(utterances(["bad"])), pause=0.005)
            # Refused while the key's one stream is open: per-key limit.
            status, _, _ = await handshake_error(server.ws_url(), additional_headers=auth)
            assert status == 429
            await ws.send(json.dumps({"type": "CloseStream"}))
            assert final_words(await drain(ws)) == ["bad"]
        async with connect(server.ws_url(), subprotocols=["token", other]) as ws:  # type: ignore[list-item]
            await ws.send(json.dumps({"type": "CloseStream"}))
            await drain(ws)
        for bad in (f"Token {key}x", f"Bearer {key[:-1]}", f"Token {other.upper()}"):
            status, body, _ = await handshake_error(
                server.ws_url(), additional_headers={"Authorization": bad}
            )
            assert status == 401 and key not in json.dumps(body)
        async with aiohttp.ClientSession() as http:
            url = f"{server.http}/v1/listen"
            async with http.post(url, data=_wav(utterances(["cafe"])), headers=auth) as resp:
                assert resp.status == 200
            async with http.post(url, data=b"x" * 2000, headers={"Authorization": f"Token {key}!"}) as resp:
                assert resp.status == 401
    # The server's side of the log: everything but the test's own WebSocket client, which logs the
    # headers it sends at DEBUG.
    server_side = [r for r in caplog.records if not r.name.startswith("websockets")]
    text = "\n".join(f"{r.name} {r.getMessage()} {r.args!r}" for r in server_side)
    assert "stream" in text and "aiohttp.access" in text, "the log was captured"
    for secret in (key, other, key[:-1], other.upper()):
        assert secret not in text


async def test_per_key_stream_limits(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("alpha max_streams=1\nbeta  # no limit of its own\ngamma max_streams=2\n", "utf-8")
    cfg = build_config(["--api-keys-file", str(keys_file), "--model", "en=fake:tone"], {})
    assert cfg.key_stream_limit("alpha") == 1 and cfg.key_stream_limit("beta") is None
    assert "alpha" not in repr(cfg)
    headers = {k: {"Authorization": f"Token {k}"} for k in ("alpha", "beta", "gamma")}
    async with serve(cfg) as server, asyncio.timeout(20):
        state = server.app[STATE]
        first = await connect(server.ws_url(), additional_headers=headers["alpha"])
        status, body, response_headers = await handshake_error(
            server.ws_url(), additional_headers=headers["alpha"]
        )
        assert status == 429 and body["err_code"] == "TOO_MANY_REQUESTS"
        assert "alpha" not in body["err_msg"] and int(response_headers["Retry-After"]) >= 1
        # Other keys are not held back by alpha's limit.
        others = [
            await connect(server.ws_url(), additional_headers=headers[k]) for k in ("beta", "beta", "gamma")
        ]
        # Pre-recorded requests count against the key too.
        async with aiohttp.ClientSession() as http:
            url = f"{server.http}/v1/listen"
            async with http.post(url, data=_wav(utterances(["bad"])), headers=headers["alpha"]) as resp:
                assert resp.status == 429
        for ws in [first, *others]:
            await ws.send(json.dumps({"type": "CloseStream"}))
            await drain(ws)
        for _ in range(100):  # released just after the close handshake
            if not state.key_streams:
                break
            await asyncio.sleep(0.02)
        assert state.key_streams == {}
        async with connect(server.ws_url(), additional_headers=headers["alpha"]) as ws:
            await ws.send(json.dumps({"type": "CloseStream"}))
            assert (await drain(ws))[-1]["type"] == "Metadata"


@pytest.mark.parametrize(
    "line", ["sk-secret-777 max_streams=zero", "sk-secret-777 max_streams=0", "sk-secret-777 streams=3"]
)
def test_keys_file_errors_name_the_line_not_the_key(
    tmp_path: Path, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"good-key\n{line}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        build_config(["--api-keys-file", str(keys_file)], {})
    assert "line 2" in str(info.value) and "sk-secret-777" not in str(info.value)
    assert main(["--api-keys-file", str(keys_file)]) == 2
    assert "sk-secret-777" not in capsys.readouterr().err


# ---- TLS ----


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost and its key: with `cryptography` when installed, else
    the openssl command; skips the test when neither is there."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("neither the cryptography package nor openssl is available to make a certificate")
        subprocess.run(
            [
                *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
                *("-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost"),
                *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
            ],
            check=True,
            capture_output=True,
        )
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key


async def test_tls_serves_wss_to_a_client_that_trusts_the_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    args = ["--model", "en=fake:tone", "--tls-cert", str(cert), "--tls-key", str(key)]
    async with ServerProcess(args) as server, asyncio.timeout(30):
        assert server.url.startswith("https://127.0.0.1:")
        async with connect(server.ws_url("interim_results=true"), ssl=trust) as ws:
            await send_audio(ws, pcm16(utterances(["abc", "bad"], ["cafe"])), pause=0.005)
            await ws.send(json.dumps({"type": "CloseStream"}))
            messages = await drain(ws)
        assert final_words(messages) == ["abc", "bad", "cafe"]
        assert messages[-1]["type"] == "Metadata"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/healthz", ssl=trust) as resp:
                assert resp.status == 200
            # Without trusting the certificate, or without TLS at all, there is no stream.
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await http.get(f"{server.url}/healthz")
            with pytest.raises((aiohttp.ClientError, ConnectionError)):
                plain = server.url.replace("https://", "http://")
                async with http.get(f"{plain}/healthz") as resp:
                    assert resp.status != 200
        code = await server.stop()
    assert code == 0
    assert "Traceback" not in "".join(server.log_lines)


def test_tls_settings_are_checked_at_start_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cert, key = _self_signed(tmp_path)
    cfg = build_config(["--tls-cert", str(cert)], {"STREAMER_TLS_KEY": str(key)})
    assert cfg.tls_enabled and streamer.server.ssl_context(cfg) is not None
    with pytest.raises(ConfigError, match="both"):
        build_config(["--tls-cert", str(cert)], {})
    # A key that does not belong to the certificate, or a missing file: exit 2 before any model loads.
    other = tmp_path / "other"
    other.mkdir()
    _, wrong_key = _self_signed(other)
    for argv in (
        ["--tls-cert", str(cert), "--tls-key", str(wrong_key)],
        ["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(key)],
    ):
        caplog.clear()
        assert main([*argv, "--model", "en=fake:tone"]) == 2
        assert "cannot load the TLS certificate" in caplog.text
        assert "loading model" not in caplog.text


# ---- browser origins ----


async def test_only_allowed_browser_origins_may_open_streams() -> None:
    cfg = config(allowed_origins=frozenset({"https://app.example.com", "http://localhost:3000"}))
    async with serve(cfg) as server, asyncio.timeout(20):
        status, body, _ = await handshake_error(server.ws_url(), origin="https://evil.example")  # type: ignore[arg-type]
        assert status == 403 and body["err_code"] == "FORBIDDEN_ORIGIN" and body["param"] == "Origin"
        status, _, _ = await handshake_error(server.ws_url(), origin="https://app.example.com.evil.example")  # type: ignore[arg-type]
        assert status == 403
        for origin in ("https://app.example.com", "HTTPS://App.Example.com/", "http://localhost:3000", None):
            async with connect(server.ws_url(), origin=origin) as ws:  # type: ignore[arg-type]
                await ws.send(json.dumps({"type": "CloseStream"}))
                assert (await drain(ws))[-1]["type"] == "Metadata"
        async with aiohttp.ClientSession() as http:
            headers = {"Origin": "https://evil.example"}
            async with http.post(
                f"{server.http}/v1/listen", data=_wav(utterances(["bad"])), headers=headers
            ) as r:
                assert r.status == 403
    open_cfg = config()  # no list: any origin
    anywhere = "https://anywhere.example"
    async with (
        serve(open_cfg) as server,
        asyncio.timeout(10),
        connect(server.ws_url(), origin=anywhere) as ws,  # type: ignore[arg-type]
    ):
        await ws.send(json.dumps({"type": "CloseStream"}))
        await drain(ws)


def test_allowed_origins_from_flags_and_environment(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"STREAMER_ALLOWED_ORIGINS": "https://a.example, https://B.example:8443/"}
    assert build_config([], env).allowed_origins == {"https://a.example", "https://b.example:8443"}
    flags = ["--allowed-origin", "https://c.example", "--allowed-origin", "http://localhost:3000"]
    assert build_config(flags, env).allowed_origins == {"https://c.example", "http://localhost:3000"}
    assert build_config([], {}).allowed_origins == frozenset()
    for bad in ("c.example", "https://c.example/app", "*"):
        assert main(["--allowed-origin", bad]) == 2
        assert "origin" in capsys.readouterr().err


# ---- session limits ----


async def test_max_stream_duration_flushes_finals_then_closes() -> None:
    cfg = config(limits=Limits(max_stream_duration_s=1.5, idle_timeout_s=5.0))
    async with serve(cfg) as server, asyncio.timeout(20), connect(server.ws_url()) as ws:
        # Real-time pace: the first words arrive in time, the stream is cut while the client still sends.
        audio = pcm16(utterances(["abc", "bad"], ["cafe", "dab", "face", "bead"]))
        with contextlib.suppress(ConnectionClosed):  # the server closes while we send
            await send_audio(ws, audio, chunk=1600, pause=0.05)
        messages = await drain(ws)
        assert ws.close_code == 1008
        assert "maximum stream duration of 1.5 s" in (ws.close_reason or "")
    assert final_words(messages) == ["abc", "bad"]
    assert messages[-1]["type"] == "Metadata"
    assert messages[-1]["duration"] >= 1.4


def test_session_limit_flags(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = build_config(
        ["--max-stream-duration", "60", "--idle-timeout", "3", "--max-message-bytes", "65536"],
        {"STREAMER_MAX_OUTBOX": "32"},
    )
    limits = cfg.limits
    assert (limits.max_stream_duration_s, limits.idle_timeout_s, limits.max_message_bytes) == (60, 3, 65536)
    assert limits.max_outbox == 32
    assert build_config([], {}).limits.max_stream_duration_s == 4 * 3600
    for argv in (["--max-stream-duration", "0"], ["--max-outbox", "0"], ["--max-message-bytes", "10"]):
        assert main(argv) == 2
        capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--max-stream-duration", "--tls-cert", "--tls-key", "--allowed-origin", "max_streams=N"):
        assert flag in text
    assert ServerConfig(models=(ModelSpec("en", "fake:tone"),)).limits.max_stream_duration_s == 14400
