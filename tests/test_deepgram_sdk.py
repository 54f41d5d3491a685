"""Tier 4 (real server on port 0) driven by Deepgram's own Python SDK (`deepgram-sdk` v7), as a user would.

The only change from code written for Deepgram's cloud is the environment's base URLs. The SDK parses every
server message into its pydantic models; it falls back silently to an unvalidated object (or skips the
message with a logged warning) when a field is missing or of the wrong type, so each test re-validates what
it got (`checked`) and fails on the SDK's "Skipping unknown WebSocket message" warning. Audio comes from
`tone_phrase`, which the injected `ToneEngine` reads as the given words, with the energy VAD.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from aiohttp import web

pytest.importorskip("deepgram", reason="deepgram-sdk is not installed")

from deepgram import AsyncDeepgramClient, DeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.core.events import EventType
from deepgram.environment import DeepgramClientEnvironment
from deepgram.errors import BadRequestError
from deepgram.listen.v1.types import (
    ListenV1Configure,
    ListenV1ConfigureFailure,
    ListenV1ConfigureSuccess,
    ListenV1Error,
    ListenV1Metadata,
    ListenV1Results,
    ListenV1ResultsChannelAlternativesItemWordsItem,
    ListenV1SpeechStarted,
    ListenV1UtteranceEnd,
)
from deepgram.types.listen_v1response import ListenV1Response
from websockets.exceptions import ConnectionClosed, InvalidStatus

from streamer.audio import float_to_linear16
from streamer.config import Limits, ModelSpec, ServerConfig
from streamer.engine.fake import ToneEngine, tone_phrase
from streamer.server import create_app

pytestmark = [
    # The SDK's async client is built on websockets' legacy API, deprecated since websockets 14.
    pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings(
        "ignore:websockets.exceptions.InvalidStatusCode is deprecated:DeprecationWarning"
    ),
    pytest.mark.filterwarnings("ignore:websockets.client.connect is deprecated:DeprecationWarning"),
]

SR = 16000
KEY = "sdk-test-key"
PHRASES = (["bad", "cafe", "face"], ["dab", "ace"])
SDK_LOGGER = "deepgram.listen.v1.socket_client"
# What a user passes for Deepgram's cloud; the server accepts all of it (model and formatting are mapped or
# ignored, language en-US means the en model).
LIVE_OPTIONS: dict[str, Any] = {
    "model": "nova-3",
    "language": "en-US",
    "encoding": "linear16",
    "sample_rate": SR,
    "punctuate": True,
    "smart_format": True,
}


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.float32)


def speech(*phrases: Sequence[str], gap_s: float = 1.3) -> np.ndarray:
    """Phrases after a lead-in, each followed by a pause long enough for endpointing and UtteranceEnd."""
    parts = [silence(0.3)]
    for i, words in enumerate(phrases):
        parts += [tone_phrase(list(words), seed=i), silence(gap_s)]
    return np.concatenate(parts).astype(np.float32)


def two_channels(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """(samples, 2) audio, the shorter channel padded with silence."""
    length = max(len(left), len(right))
    return np.stack([np.pad(left, (0, length - len(left))), np.pad(right, (0, length - len(right)))], axis=1)


def words_of(*phrases: Sequence[str]) -> str:
    return " ".join(w for p in phrases for w in p)


def chunks(data: bytes, size: int = 3200) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def checked(message: Any) -> Any:
    """`message` after checking that it is an SDK model that validates as one, not the SDK's unvalidated
    fallback for a message with missing or mistyped fields."""
    assert not isinstance(message, (bytes, dict)), f"the SDK did not recognise {message!r}"
    type(message).model_validate(message.model_dump())
    return message


def no_sdk_warnings(caplog: pytest.LogCaptureFixture) -> None:
    skipped = [r.getMessage() for r in caplog.records if r.name == SDK_LOGGER]
    assert not skipped, skipped


def environment(port: int) -> DeepgramClientEnvironment:
    host = f"127.0.0.1:{port}"
    return DeepgramClientEnvironment(
        base=f"http://{host}", production=f"ws://{host}", agent=f"ws://{host}", agent_rest=f"http://{host}"
    )


@asynccontextmanager
async def serve(engine: ToneEngine | None = None) -> AsyncIterator[int]:
    """Our real server with an API key on 127.0.0.1, port 0; yields the port."""
    config = ServerConfig(
        models=(ModelSpec("en", "fake:tone"),),
        api_keys=frozenset({KEY}),
        limits=Limits(idle_timeout_s=5.0, shutdown_grace_s=2.0),
    )
    app = create_app(config, engines={"en": engine or ToneEngine()})
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


@pytest.fixture(autouse=True)
def _sdk_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=SDK_LOGGER)


def finals_text(results: Sequence[ListenV1Results], channel: int = 0) -> str:
    return " ".join(
        r.channel.alternatives[0].transcript
        for r in results
        if r.is_final and r.channel_index[0] == channel and r.channel.alternatives[0].transcript
    )


# ---- live streaming ----


async def test_live_async_client(caplog: pytest.LogCaptureFixture) -> None:
    audio = speech(*PHRASES)
    pcm = float_to_linear16(audio)
    received: list[Any] = []
    async with serve() as port, asyncio.timeout(15):
        client = AsyncDeepgramClient(api_key=KEY, environment=environment(port))
        async with client.listen.v1.connect(
            **LIVE_OPTIONS,
            channels=1,
            interim_results=True,
            vad_events=True,
            utterance_end_ms=1000,
            endpointing=300,
        ) as connection:

            async def listen() -> None:
                async for message in connection:
                    received.append(message)

            listener = asyncio.create_task(listen())
            await connection.send_keep_alive()
            for chunk in chunks(pcm):
                await connection.send_media(chunk)
                await asyncio.sleep(0.015)  # faster than real time, slow enough for interim results
            await connection.send_close_stream()
            await listener
    no_sdk_warnings(caplog)
    for message in received:
        checked(message)

    results = [m for m in received if isinstance(m, ListenV1Results)]
    finals = [r for r in results if r.is_final]
    assert finals_text(results) == words_of(*PHRASES)
    assert any(not r.is_final for r in results), "interim results"
    first_final = received.index(finals[0])
    assert any(isinstance(m, ListenV1Results) and not m.is_final for m in received[:first_final])
    for r in results:
        assert r.channel_index == [0, 1]
        assert r.metadata.model_info.name == "en" and r.metadata.model_uuid
        words = r.channel.alternatives[0].words
        assert all(isinstance(w, ListenV1ResultsChannelAlternativesItemWordsItem) for w in words)
        assert [w.word for w in words] == r.channel.alternatives[0].transcript.split()
        assert all(r.start - 1e-6 <= w.start < w.end <= r.start + r.duration + 1e-6 for w in words)
    spoken = [r for r in finals if r.channel.alternatives[0].words]
    assert len(spoken) == len(PHRASES) and all(r.speech_final and not r.from_finalize for r in spoken)
    assert len({r.metadata.request_id for r in results}) == 1

    started = [m for m in received if isinstance(m, ListenV1SpeechStarted)]
    assert len(started) == len(PHRASES)
    assert all(s.channel == [0, 1] for s in started)
    assert started[0].timestamp < spoken[0].channel.alternatives[0].words[0].end
    ends = [m for m in received if isinstance(m, ListenV1UtteranceEnd)]
    assert len(ends) == len(PHRASES)
    for end, final in zip(ends, spoken, strict=True):
        assert end.channel == [0, 1]
        assert end.last_word_end == pytest.approx(final.channel.alternatives[0].words[-1].end, abs=0.05)

    metadata = received[-1]
    assert isinstance(metadata, ListenV1Metadata)
    assert metadata.request_id == results[0].metadata.request_id
    assert metadata.channels == 1
    assert metadata.duration == pytest.approx(len(audio) / SR, abs=0.01)
    assert metadata.sha256 == hashlib.sha256(pcm).hexdigest()
    assert metadata.created and metadata.transaction_key


async def test_live_sync_client_finalize_configure_close(caplog: pytest.LogCaptureFixture) -> None:
    """The sync client in Deepgram's documented style: event handlers and `start_listening` on a thread.
    With endpointing off only Finalize ends an utterance; the stream stays open after it."""
    first, second = PHRASES
    events: list[tuple[EventType, Any]] = []
    finalized = threading.Event()
    configured = threading.Event()

    def on_message(message: Any) -> None:
        events.append((EventType.MESSAGE, message))
        if isinstance(message, ListenV1Results) and message.from_finalize:
            finalized.set()
        if isinstance(message, (ListenV1ConfigureSuccess, ListenV1ConfigureFailure)):
            configured.set()

    def run(port: int) -> None:
        client = DeepgramClient(api_key=KEY, environment=environment(port))
        with client.listen.v1.connect(**LIVE_OPTIONS, endpointing=False, interim_results=False) as connection:
            for kind in (EventType.OPEN, EventType.CLOSE, EventType.ERROR):
                connection.on(kind, lambda data, kind=kind: events.append((kind, data)))
            connection.on(EventType.MESSAGE, on_message)
            listener = threading.Thread(target=connection.start_listening, daemon=True)
            listener.start()
            for chunk in chunks(float_to_linear16(speech(first, gap_s=0.5))):
                connection.send_media(chunk)
            connection.send_finalize()
            assert finalized.wait(5), "no Results answering Finalize"
            for message in (
                ListenV1Configure(keyterms=["cafe"]),
                ListenV1Configure(keyterms=["x" * 101]),  # over the 100-character limit: refused
                ListenV1Configure(features={"numerals": True}),
            ):
                configured.clear()
                connection.send_configure(message)
                assert configured.wait(5), f"no answer to {message!r}"
            connection.send_keep_alive()
            for chunk in chunks(float_to_linear16(speech(second, gap_s=0.5))):
                connection.send_media(chunk)
            connection.send_close_stream()
            listener.join(5)
            assert not listener.is_alive()

    async with serve() as port, asyncio.timeout(15):
        await asyncio.to_thread(run, port)
    no_sdk_warnings(caplog)

    kinds = [kind for kind, _ in events]
    assert kinds[0] is EventType.OPEN and kinds[-1] is EventType.CLOSE
    assert EventType.ERROR not in kinds, events
    messages = [checked(data) for kind, data in events if kind is EventType.MESSAGE]
    results = [m for m in messages if isinstance(m, ListenV1Results)]
    assert all(r.is_final for r in results)
    assert finals_text(results) == words_of(first, second)
    by_finalize = next(r for r in results if r.from_finalize)
    assert by_finalize.channel.alternatives[0].transcript == " ".join(first)
    assert not by_finalize.speech_final
    replies = [m for m in messages if isinstance(m, (ListenV1ConfigureSuccess, ListenV1ConfigureFailure))]
    assert [type(m) for m in replies] == [
        ListenV1ConfigureSuccess,
        ListenV1ConfigureFailure,
        ListenV1ConfigureSuccess,
    ]
    replaced, refused, features = replies
    assert replaced.keyterms == ["cafe"]  # the keyterms now in effect
    assert refused.code == "CONFIGURE_KEYTERM_LIMIT_EXCEEDED" and "100 characters" in refused.description
    assert features.keyterms is None  # keyterms untouched
    assert replaced.request_id == refused.request_id == results[0].metadata.request_id
    assert isinstance(messages[-1], ListenV1Metadata)


async def test_live_multichannel(caplog: pytest.LogCaptureFixture) -> None:
    stereo = two_channels(speech(PHRASES[0]), speech(PHRASES[1], gap_s=1.0))
    pcm = float_to_linear16(stereo.reshape(-1))  # interleaved
    received: list[Any] = []
    async with serve() as port, asyncio.timeout(15):
        client = AsyncDeepgramClient(api_key=KEY, environment=environment(port))
        async with client.listen.v1.connect(**LIVE_OPTIONS, channels=2, multichannel=True) as connection:
            for chunk in chunks(pcm, 6400):
                await connection.send_media(chunk)
            await connection.send_close_stream()
            async for message in connection:
                received.append(checked(message))
    no_sdk_warnings(caplog)
    results = [m for m in received if isinstance(m, ListenV1Results)]
    assert {tuple(r.channel_index) for r in results} == {(0, 2), (1, 2)}
    assert finals_text(results, 0) == words_of(PHRASES[0])
    assert finals_text(results, 1) == words_of(PHRASES[1])
    metadata = received[-1]
    assert isinstance(metadata, ListenV1Metadata) and metadata.channels == 2


async def test_live_engine_failure_is_an_sdk_error(caplog: pytest.LogCaptureFixture) -> None:
    received: list[Any] = []
    async with serve(ToneEngine(fail=lambda windows: True)) as port, asyncio.timeout(15):
        client = AsyncDeepgramClient(api_key=KEY, environment=environment(port))
        async with client.listen.v1.connect(**LIVE_OPTIONS) as connection:
            for chunk in chunks(float_to_linear16(speech(PHRASES[0]))):
                await connection.send_media(chunk)
            with contextlib.suppress(ConnectionClosed):  # the server closes with 1011 after the Error
                async for message in connection:
                    received.append(checked(message))
    no_sdk_warnings(caplog)
    error = received[-1]
    assert isinstance(error, ListenV1Error)
    assert error.variant and error.description.startswith("transcription failed")


async def test_handshake_refusals_reach_the_sdk() -> None:
    async with serve() as port, asyncio.timeout(15):
        wrong = AsyncDeepgramClient(api_key="wrong-key", environment=environment(port))
        with pytest.raises(ApiError) as refused:
            async with wrong.listen.v1.connect(model="nova-3"):
                pass
        assert refused.value.status_code == 401
        client = AsyncDeepgramClient(api_key=KEY, environment=environment(port))
        with pytest.raises(ApiError) as refused:
            async with client.listen.v1.connect(model="nova-3", encoding="opus"):
                pass
        assert refused.value.status_code == 400

        def sync_wrong_key() -> int:
            sync = DeepgramClient(api_key="wrong-key", environment=environment(port))
            # The sync client only maps websockets' legacy InvalidStatusCode to ApiError; with websockets
            # >= 14 the handshake refusal reaches the caller as InvalidStatus, still carrying the 401.
            try:
                with sync.listen.v1.connect(model="nova-3"):
                    pass
            except ApiError as exc:
                return int(exc.status_code or 0)
            except InvalidStatus as exc:
                return exc.response.status_code
            return 0

        assert await asyncio.to_thread(sync_wrong_key) == 401


# ---- pre-recorded ----


def _wav(audio: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, SR, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


async def test_prerecorded_transcribe_file() -> None:
    left = speech(PHRASES[0])
    stereo = two_channels(left, speech(PHRASES[1]))
    wav = _wav(stereo)
    async with serve() as port, asyncio.timeout(15):
        client = AsyncDeepgramClient(api_key=KEY, environment=environment(port))
        response = await client.listen.v1.media.transcribe_file(
            request=wav, model="nova-3", language="en", multichannel=True, punctuate=True, smart_format=True
        )
        raw = await client.listen.v1.media.with_raw_response.transcribe_file(
            request=_wav(left), model="nova-3"
        )
        with pytest.raises(BadRequestError) as bad:
            await client.listen.v1.media.transcribe_file(request=b"not audio at all")
        wrong = AsyncDeepgramClient(api_key="wrong-key", environment=environment(port))
        with pytest.raises(ApiError) as refused:
            await wrong.listen.v1.media.transcribe_file(request=wav)

    assert isinstance(response, ListenV1Response)
    checked(response)
    metadata = response.metadata
    assert metadata.channels == 2 and metadata.duration == pytest.approx(len(stereo) / SR, abs=0.01)
    assert metadata.sha256 == hashlib.sha256(wav).hexdigest() and metadata.created.tzinfo is not None
    assert len(metadata.models) == 1 and metadata.models[0] in metadata.model_info
    channels = response.results.channels
    assert len(channels) == 2
    for channel, words in zip(channels, PHRASES, strict=True):
        assert channel.alternatives is not None
        best = channel.alternatives[0]
        assert best.transcript == " ".join(words)
        assert [w.word for w in best.words or []] == list(words)

    mono = raw.data
    assert isinstance(mono, ListenV1Response)
    assert raw.headers["dg-request-id"] == mono.metadata.request_id
    assert mono.results.channels[0].alternatives is not None
    assert mono.results.channels[0].alternatives[0].transcript == words_of(PHRASES[0])

    assert bad.value.status_code == 400 and bad.value.body["err_code"] == "INVALID_AUDIO"
    assert refused.value.status_code == 401 and refused.value.body["err_code"] == "INVALID_AUTH"
