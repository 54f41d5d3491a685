"""Tier 4: keyterms through the real server with the built-in model, on real recordings whose names it
misspells without them ("Whittemore" heard as "to witmore", "Norsemen" as "norsmen")."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import websockets

from streamer.audio import float_to_linear16
from streamer.bench.load import ServerProcess
from streamer.transcribe import read_audio

NAME_CLIP = "arctic_aew_a0002.wav"  # "not at this particular case tom apologized whittemore"
SERVER_TERM_CLIP = "vctk_p228_016.wav"  # "the norsemen considered the rainbow as a bridge ..."


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    process = ServerProcess(["--keyterm", "en=Norsemen"])
    url = process.start(timeout=300)
    try:
        yield url
    finally:
        assert process.stop() == 0


def pcm(eval_data: Path, name: str) -> bytes:
    return float_to_linear16(read_audio(eval_data / "en" / name))


async def stream(url: str, audio: bytes, *, query: Any = (), configure: list[str] | None = None) -> list[Any]:
    """Messages of one stream: an optional Configure first, then the audio, then CloseStream."""
    params = urlencode([("encoding", "linear16"), ("sample_rate", "16000"), *query])
    messages: list[Any] = []
    async with websockets.connect(f"{url.replace('http', 'ws')}/v1/listen?{params}") as ws:
        if configure is not None:
            await ws.send(json.dumps({"type": "Configure", "keyterms": configure}))
        for i in range(0, len(audio), 6400):
            await ws.send(audio[i : i + 6400])
        await ws.send(json.dumps({"type": "CloseStream"}))
        async for text in ws:
            messages.append(json.loads(text))
    return messages


def finals(messages: list[Any]) -> str:
    return " ".join(
        m["channel"]["alternatives"][0]["transcript"]
        for m in messages
        if m.get("type") == "Results" and m["is_final"] and m["channel"]["alternatives"][0]["transcript"]
    )


def test_a_keyterm_brings_back_a_name_the_model_misspells(server: str, eval_data: Path) -> None:
    audio = pcm(eval_data, NAME_CLIP)
    plain = finals(asyncio.run(stream(server, audio)))
    assert "whittemore" not in plain.lower() and plain.startswith("not at this particular case")
    boosted = finals(asyncio.run(stream(server, audio, query=[("keyterm", "Whittemore")])))
    assert boosted.split()[-1] == "Whittemore", boosted  # spelled as the client wrote it
    # Only the name changed: the words before it are the plain run's.
    assert boosted.split()[:5] == plain.split()[:5]
    # keywords (the older name, with a boost) and a mid-stream Configure do the same
    older = finals(asyncio.run(stream(server, audio, query=[("keywords", "Whittemore:1.5")])))
    assert older.split()[-1] == "Whittemore"
    messages = asyncio.run(stream(server, audio, configure=["Whittemore"]))
    reply = next(m for m in messages if m.get("type", "").startswith("Configure"))
    assert reply == {
        "type": "ConfigureSuccess",
        "request_id": reply["request_id"],
        "keyterms": ["Whittemore"],
    }
    assert finals(messages).split()[-1] == "Whittemore"


def test_server_keyterms_apply_to_every_stream(server: str, eval_data: Path) -> None:
    text = finals(asyncio.run(stream(server, pcm(eval_data, SERVER_TERM_CLIP))))
    assert text.split()[1] == "Norsemen", text


def test_prerecorded_keyterms_and_the_limits(server: str, eval_data: Path) -> None:
    body = (eval_data / "en" / NAME_CLIP).read_bytes()
    request = urllib.request.Request(
        f"{server}/v1/listen?{urlencode([('keyterm', 'Whittemore')])}",
        data=body,
        headers={"Content-Type": "audio/wav"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        result = json.load(response)
    transcript = result["results"]["channels"][0]["alternatives"][0]["transcript"]
    assert transcript.split()[-1] == "Whittemore"
    too_long = urllib.request.Request(
        f"{server}/v1/listen?{urlencode([('keyterm', 'x' * 101)])}",
        data=body,
        headers={"Content-Type": "audio/wav"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(too_long, timeout=30)
    assert refused.value.code == 400
    assert "keyterm: a keyterm may have at most 100 characters" in refused.value.read().decode()
