"""Pre-recorded transcription (`POST /v1/listen`): a whole file through the same Stream and batcher.

The body is WAV or FLAC (or raw audio with `encoding` and `sample_rate`); the answer is Deepgram's
pre-recorded JSON. Admission, auth and limits are those of live streams.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np
import soundfile as sf
import soxr
from aiohttp import web

from streamer import SAMPLE_RATE
from streamer.audio import MAX_CHANNELS, MAX_RATE, MIN_RATE, AudioFormat
from streamer.errors import ENGINE_FAILURE_TEXT, AudioFormatError, EngineError, StreamerError
from streamer.protocol import (
    ListenParams,
    StreamSummary,
    error_message,
    parse_listen_params,
    prerecorded_response,
)
from streamer.runner import StreamRunner
from streamer.server.admission import admit
from streamer.server.auth import authorize
from streamer.server.errors import PayloadTooLarge, error_response
from streamer.server.state import STATE, Job, ServedModel, ServerState
from streamer.stream import Stream
from streamer.transcript import Event, Transcript

log = logging.getLogger(__name__)


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body of {request.content_length} bytes is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode_body(
    body: bytes, params: ListenParams, raw: bool, json_body: bool = False
) -> tuple[bytes, AudioFormat]:
    """The body as wire bytes and their format: raw when `encoding` was given, else a file (WAV, FLAC).
    `json_body`: the client sent JSON (a `{"url": ...}` source), which is refused with the reason."""
    if not body:
        raise AudioFormatError("empty body: send WAV or FLAC, or raw audio with encoding and sample_rate")
    if raw:
        return body, params.audio_format
    if json_body:
        # Deepgram's transcribeUrl. Fetching URLs on a client's behalf would let anyone who may send audio
        # make the server connect into its own network (SSRF), so the client fetches and sends the bytes.
        raise AudioFormatError(
            "this server does not fetch audio from URLs: send the audio itself as the request body "
            "(a WAV, FLAC or OGG file, or raw audio with encoding and sample_rate)"
        )
    try:
        data, rate = sf.read(io.BytesIO(body), dtype="int16", always_2d=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        log.debug("undecodable body: %s", exc)
        raise AudioFormatError(
            "cannot decode the body as an audio file (WAV, FLAC or OGG); for raw audio set encoding and "
            "sample_rate"
        ) from None
    channels = int(data.shape[1])
    if channels > MAX_CHANNELS:
        raise AudioFormatError(f"{channels} channels; at most {MAX_CHANNELS} are supported")
    if not MIN_RATE <= rate <= MAX_RATE:
        floats = soxr.resample(data.astype(np.float32) / 32768.0, rate, SAMPLE_RATE, quality="HQ")
        data = (np.clip(floats, -1.0, 1.0) * 32767.0).astype(np.int16).reshape(-1, channels)
        rate = SAMPLE_RATE
    fmt = AudioFormat("linear16", int(rate), channels, params.multichannel and channels > 1)
    return data.astype("<i2").tobytes(), fmt


async def _transcribe(
    state: ServerState,
    model: ServedModel,
    params: ListenParams,
    pcm: bytes,
    fmt: AudioFormat,
    request_id: str,
) -> tuple[list[list[Transcript]], float]:
    """Feed a whole recording through a Stream and the shared batcher; returns finals per channel."""
    config = replace(
        params.streaming_config(state.config.streaming), interim_results=False, utterance_end_ms=None
    )
    stream = Stream(model.engine, config, fmt, model.detector_factory())
    if params.keyterms or model.keyterms.defaults:
        trie = await asyncio.to_thread(model.keyterms.compile, params.keyterms)
        stream.set_keyterms(model.keyterms.decoder, trie)
    finals: list[list[Transcript]] = [[] for _ in range(fmt.output_channels)]

    def collect(event: Event) -> None:
        if isinstance(event, Transcript) and event.is_final:
            finals[event.channel].append(event)

    runner = StreamRunner(stream, model.batcher, collect, stream_id=request_id)
    limit = state.config.limits.max_inflight_windows
    step = fmt.bytes_per_second()
    try:
        for offset in range(0, len(pcm), step):
            runner.feed(pcm[offset : offset + step])
            if runner.error is not None:
                break
            if runner.inflight > limit:
                await runner.wait_idle()
            else:
                await asyncio.sleep(0)  # let live streams run between seconds of a long file
        if runner.error is None:
            await runner.finish()
    except BaseException:
        await runner.cancel()
        raise
    if runner.error is not None:
        await runner.cancel()
        state.metrics.engine_failures.labels(model.name).inc()
        log.error("request %s: engine failure: %s", request_id, runner.error)
        raise EngineError(ENGINE_FAILURE_TEXT)
    return finals, stream.duration


async def listen_post(request: web.Request) -> web.Response:
    """Transcribe the body and answer with the result; with `callback`, answer `{"request_id"}` at once
    and post the result to the callback when it is ready (Deepgram's asynchronous mode)."""
    state = request.app[STATE]
    request_id = str(uuid.uuid4())
    try:
        admit(state, request)
        key = authorize(state.config.api_keys, request)
        params = parse_listen_params(request.query, state.model_names, state.config.keyterm_limits)
        if params.callback is not None:
            state.webhooks.check_url(params.callback)
        state.reserve("prerecorded", params.model, key)
    except StreamerError as exc:
        return error_response(state, exc, request_id)
    created = datetime.now(UTC)
    model = state.models[params.model]
    state.metrics.streams.labels(model.name, "prerecorded").inc()
    job = Job.current()
    state.jobs.add(job)
    background = False
    try:
        body = await _read_body(request, state.config.limits.max_body_bytes)
        json_body = request.content_type == "application/json" or body.lstrip()[:1] == b"{"
        pcm, fmt = _decode_body(body, params, raw="encoding" in request.query, json_body=json_body)
        state.metrics.audio_seconds.labels(model.name).inc(len(pcm) / fmt.bytes_per_second())
        work = _Work(state, model, params, request_id, created, body, pcm, fmt)
        if params.callback is None:
            return _json(await work.transcribe(), request_id)
        # The slot and the job move to a task of their own, which releases them when it is done.
        task = asyncio.get_running_loop().create_task(
            work.post_to(params.callback, key), name=f"pre-{request_id}"
        )
        work.job = Job(task)  # set before the task first runs: it starts after this handler returns
        state.jobs.add(work.job)
        background = True
        return _json(json.dumps({"request_id": request_id}), request_id)
    except StreamerError as exc:
        return error_response(state, exc, request_id)
    finally:
        state.jobs.discard(job)
        if not background:
            state.release("prerecorded", key)
        job.finished.set()


def _json(text: str, request_id: str) -> web.Response:
    return web.Response(text=text, content_type="application/json", headers={"dg-request-id": request_id})


@dataclass
class _Work:
    """One pre-recorded transcription: `await transcribe()` gives the response JSON text."""

    state: ServerState
    model: ServedModel
    params: ListenParams
    request_id: str
    created: datetime
    body: bytes
    pcm: bytes
    fmt: AudioFormat
    job: Job | None = None
    """The background job of an asynchronous (callback) request, which shutdown waits for."""

    async def transcribe(self) -> str:
        started = time.perf_counter()
        finals, duration = await _transcribe(
            self.state, self.model, self.params, self.pcm, self.fmt, self.request_id
        )
        log.info(
            "request %s: transcribed %.2f s of audio (%d channel(s)) in %.2f s with %s",
            self.request_id,
            duration,
            self.fmt.output_channels,
            time.perf_counter() - started,
            self.model.name,
        )
        summary = StreamSummary(
            request_id=self.request_id,
            created=self.created,
            duration=duration,
            channels=self.fmt.output_channels,
            sha256=hashlib.sha256(self.body).hexdigest(),
            models=(self.model.identity,),
        )
        return prerecorded_response(summary, finals)

    async def post_to(self, callback: str, key: str | None) -> None:
        """Transcribe, then hand the result (or an error message) to the webhook queue; releases the slot."""
        state = self.state
        try:
            try:
                text = await self.transcribe()
            except StreamerError as exc:
                log.warning("request %s: transcription for the callback failed: %s", self.request_id, exc)
                text = error_message(str(exc), "ENGINE_FAILURE")
            queue = state.webhooks.open(self.request_id, callback, self.params.callback_method)
            queue.put(text, must_deliver=True)
            queue.close()
        finally:
            state.release("prerecorded", key)
            if self.job is not None:
                state.jobs.discard(self.job)
                self.job.finished.set()
