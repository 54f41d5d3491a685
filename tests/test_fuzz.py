"""Property tests (hypothesis) of everything a client controls, without sockets.

The query decoder and the control-message decoder take arbitrary input and either decode it or raise
their one documented error. A sans-I/O connection (the server's receive loop in miniature: text frames
through `decode_control`, binary frames into a `Stream`, window requests answered late and out of order)
takes random bytes, random frame sizes and random control messages without an exception escaping; and a
stream of valid audio gives the same finals however it is split and whatever KeepAlives are interleaved.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soxr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.audio import (
    ENCODINGS,
    MAX_CHANNELS,
    MAX_RATE,
    MIN_RATE,
    AudioFormat,
    encode_alaw,
    encode_mulaw,
    float_to_linear16,
)
from streamer.engine.fake import EnergyDetector, ToneEngine
from streamer.protocol import (
    IGNORED_PARAMS,
    LISTEN_PARAMS,
    CloseStream,
    Configure,
    ControlMessageError,
    Finalize,
    KeepAlive,
    ParamError,
    decode_control,
    parse_listen_params,
)
from streamer.session import StreamingConfig, WindowRequest
from streamer.stream import Stream
from streamer.transcript import Event, Transcript
from tests.test_server import utterances

ENGINE = ToneEngine()
SERVED = ["en", "he"]
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# No subnormal floats: a native library loaded earlier in the session may flush them to zero.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_subnormal=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
TYPES = ["KeepAlive", "Finalize", "CloseStream", "Configure", "keepalive", "", "Results"]
control_texts = st.one_of(
    st.sampled_from(
        [
            '{"type":"KeepAlive"}',
            '{"type":"Finalize"}',
            '{"type":"Finalize","channel":1}',
            '{"type":"Configure","features":{"numerals":true}}',
        ]
    ),
    st.text(max_size=40),
    json_values.map(json.dumps),
    st.builds(
        lambda kind, extra: json.dumps({"type": kind, **extra}),
        st.sampled_from(TYPES) | json_values,
        st.dictionaries(st.sampled_from(["channel", "keyterms", "features", "x"]), json_values, max_size=2),
    ),
)


# ---- decoders ----


@FUZZ
@given(text=control_texts)
def test_control_decoder_decodes_or_raises_its_one_error(text: str) -> None:
    try:
        message = decode_control(text)
    except ControlMessageError as exc:
        reason = str(exc)
        assert reason and "\n" not in reason and "Traceback" not in reason
        assert len(reason.encode()) <= 123  # a close frame's reason, as is
        return
    assert isinstance(message, KeepAlive | Finalize | CloseStream | Configure)


PARAM_NAMES = sorted(LISTEN_PARAMS)
param_values = st.one_of(
    st.sampled_from(["true", "false", "1", "0", "en", "he-IL", "nova-3", "linear16", "mulaw", "alaw"]),
    st.integers(-10, 100_000).map(str),
    st.text(max_size=12),
)
queries = st.dictionaries(
    st.sampled_from(PARAM_NAMES) | st.sampled_from(sorted(IGNORED_PARAMS)) | st.text(max_size=8),
    param_values,
    max_size=6,
)


@FUZZ
@given(query=queries)
def test_query_decoder_validates_or_names_the_parameter(query: dict[str, str]) -> None:
    try:
        params = parse_listen_params(query, SERVED)
    except ParamError as exc:
        assert exc.param in query
        assert exc.allowed is not None
        assert str(exc) and "Traceback" not in str(exc)
        return
    assert params.model in SERVED and params.language in SERVED
    assert MIN_RATE <= params.sample_rate <= MAX_RATE
    assert 1 <= params.channels <= MAX_CHANNELS
    assert params.encoding in ENCODINGS
    params.audio_format  # a valid format: never raises  # noqa: B018
    params.streaming_config(StreamingConfig())


# ---- a sans-I/O connection ----


@dataclass
class Connection:
    """The server's receive loop without sockets: frames in, window requests answered when told to."""

    stream: Stream
    rng: random.Random
    pending: list[WindowRequest] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    closed_with: str | None = None

    def frame(self, data: bytes | str) -> None:
        if self.closed_with is not None:
            return
        if isinstance(data, str):
            try:
                control = decode_control(data)
            except ControlMessageError as exc:
                self.closed_with = str(exc)  # the server closes with 1008 and this reason
                self.stream.cancel()
                return
            if isinstance(control, CloseStream):
                self.closed_with = "CloseStream"
                self.stream.close()
            elif isinstance(control, Finalize):
                self.stream.finalize()
        elif not data:
            self.closed_with = "empty frame"
            self.stream.close()
        else:
            self.stream.receive_bytes(data)
        self._collect()

    def answer(self, count: int | None = None) -> None:
        """Answer `count` pending requests (all when None), in random order, as the batcher may."""
        self.rng.shuffle(self.pending)
        n = len(self.pending) if count is None else min(count, len(self.pending))
        for request in self.pending[:n]:
            self.stream.receive_logprobs(request, ENGINE.forward([request.audio])[0])
        del self.pending[:n]
        self._collect()

    def finish(self) -> None:
        if self.closed_with is None:
            self.stream.close()
            self._collect()
        while self.pending:
            self.answer()
        if self.closed_with is None or self.closed_with in ("CloseStream", "empty frame"):
            assert self.stream.done

    def _collect(self) -> None:
        cancelled = set(self.stream.take_cancelled())
        self.pending = [r for r in self.pending if (r.channel, r.id) not in cancelled]
        self.pending += self.stream.take_requests()
        self.events += self.stream.take_events()


formats = st.builds(
    AudioFormat,
    encoding=st.sampled_from(ENCODINGS),
    sample_rate=st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000]),
    channels=st.integers(1, 3),
    multichannel=st.booleans(),
)
valid_controls = st.sampled_from(['{"type":"KeepAlive"}', '{"type":"Finalize"}', '{"type":"KeepAlive"}'])
operations = st.lists(
    # Weighted so that most runs go on for a while: any invalid text frame ends the connection.
    st.one_of(
        st.tuples(st.just("bytes"), st.binary(max_size=6000)),
        st.tuples(st.just("bytes"), st.binary(min_size=2000, max_size=9000)),
        st.tuples(st.just("tone"), st.integers(1, 8000)),
        st.tuples(st.just("text"), valid_controls),
        st.tuples(st.just("answer"), st.integers(0, 4)),
        st.tuples(st.just("text"), control_texts),
    ),
    max_size=40,
)
TONE = float_to_linear16(utterances(["abc", "bad"], ["face"]))


def _check_finals(events: list[Event], channels: int) -> None:
    for channel in range(channels):
        end = 0.0
        for event in events:
            if isinstance(event, Transcript) and event.is_final and event.channel == channel:
                assert event.start >= end - 1e-6, "finals of a channel neither overlap nor go back"
                end = event.start + event.duration


@FUZZ
@given(fmt=formats, ops=operations, seed=st.integers(0, 2**16))
def test_random_frames_and_control_messages_never_escape(
    fmt: AudioFormat, ops: list[tuple[str, Any]], seed: int
) -> None:
    conn = Connection(
        Stream(ENGINE, StreamingConfig(interim_results=True), fmt, EnergyDetector), random.Random(seed)
    )
    tone_pos = 0
    for kind, value in ops:
        if kind == "answer":
            conn.answer(value)
        elif kind == "tone":  # a stretch of speech (in whatever format was declared: noise or words)
            conn.frame(TONE[tone_pos : tone_pos + value] or b"\x00")
            tone_pos = (tone_pos + value) % len(TONE)
        else:
            conn.frame(value)
    conn.finish()
    _check_finals(conn.events, fmt.output_channels)


# ---- valid audio: the split does not matter ----

PHRASES = (["abc", "bad"], ["cafe", "dab"], ["face"])  # letters a-f: tones under 4 kHz, fine at 8 kHz


@functools.cache
def _wire_audio(fmt: AudioFormat) -> bytes:
    mono = utterances(*PHRASES, gap_s=0.7)
    if fmt.sample_rate != 16000:
        mono = soxr.resample(mono, 16000, fmt.sample_rate).astype(np.float32)
    interleaved = np.repeat(mono[:, None], fmt.channels, axis=1).reshape(-1)
    if fmt.encoding == "mulaw":
        return encode_mulaw(interleaved)
    if fmt.encoding == "alaw":
        return encode_alaw(interleaved)
    return float_to_linear16(interleaved)


def _finals_of(fmt: AudioFormat, frames: list[bytes | str], seed: int, lag: int) -> list[tuple[Any, ...]]:
    conn = Connection(
        Stream(ENGINE, StreamingConfig(interim_results=True), fmt, EnergyDetector), random.Random(seed)
    )
    for i, frame in enumerate(frames):
        conn.frame(frame)
        if lag == 0 or i % lag == 0:
            conn.answer(conn.rng.randint(0, 3) if lag else None)
    conn.finish()
    finals = [
        (e.channel, e.start, e.duration, tuple(w.word for w in e.words), e.speech_final)
        for e in conn.events
        if isinstance(e, Transcript) and e.is_final
    ]
    # Channels are independent: how their finals interleave depends on when windows land.
    return sorted(finals, key=lambda f: f[0])


@functools.cache
def _reference(fmt: AudioFormat) -> list[tuple[Any, ...]]:
    return _finals_of(fmt, [_wire_audio(fmt)], seed=0, lag=0)


REFERENCE_FORMATS = [
    AudioFormat(),
    AudioFormat("linear16", 44100, 2, True),
    AudioFormat("mulaw", 8000, 1, False),
    AudioFormat("alaw", 8000, 2, False),
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(REFERENCE_FORMATS),
    sizes=st.lists(st.integers(1, 9000), max_size=8),
    big=st.integers(2000, 9000),
    keepalive_every=st.integers(0, 5),
    lag=st.integers(0, 4),
    seed=st.integers(0, 2**16),
)
def test_valid_audio_split_at_random_gives_the_same_finals(
    fmt: AudioFormat, sizes: list[int], big: int, keepalive_every: int, lag: int, seed: int
) -> None:
    data = _wire_audio(fmt)
    sizes = [*sizes, big]  # any sizes, odd ones included, but not a million one-byte frames
    frames: list[bytes | str] = []
    pos, i = 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        frames.append(data[pos : pos + n])
        pos, i = pos + n, i + 1
        if keepalive_every and i % keepalive_every == 0:
            frames.append('{"type":"KeepAlive"}')
    got = _finals_of(fmt, frames, seed, lag)
    reference = _reference(fmt)
    assert got == reference
    for channel in range(fmt.output_channels):
        words = [w for c, *_, ws, _ in reference if c == channel for w in ws]
        assert words == [w for p in PHRASES for w in p]
