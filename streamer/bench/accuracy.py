"""Accuracy of streaming against one full pass, on real recorded speech.

`python -m streamer.bench accuracy --data DIR [--language en] [--model SPEC] [--rate R --encoding E]
[window flags]`: for every clip of the language, the offline transcript (one pass per VAD segment, as
`streamer.transcribe`), the streaming transcript (the clip fed through the real Stream, Batcher and runner
in 20-100 ms frames, finals joined), their WER against the reference, and a long stream of all clips joined
with pauses. Clips are transcoded in memory to the wire format (`--rate`, `--encoding`; `--telephone` is
8 kHz mu-law), and the offline pass decodes the very bytes the stream sends, so the two differ only by
streaming. Ends with `accuracy: clips=N offline_wer=X streaming_wer=Y stream_vs_offline=Z compute_ratio=R`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from streamer.audio import (
    ENCODINGS,
    MAX_RATE,
    MIN_RATE,
    SAMPLE_RATE,
    AudioDecoder,
    AudioFormat,
    Encoding,
    encode_alaw,
    encode_mulaw,
    float_to_linear16,
)
from streamer.batcher import Batcher, BatcherConfig
from streamer.bench.data import Clip, join_with_pauses, load_manifest, normalise, wer
from streamer.ctc import FloatArray
from streamer.engine import BUILTIN_EN, Engine, EngineOptions, load_engine
from streamer.runner import StreamRunner
from streamer.session import StreamingConfig
from streamer.stream import Stream
from streamer.transcribe import transcribe_samples
from streamer.transcript import Event, SpeechStarted, Transcript
from streamer.windows import WindowPlan


@dataclass
class StreamResult:
    text: str
    samples_to_model: int
    speech_samples: int
    partial_gaps: list[float] = field(default_factory=list)
    """Seconds of stream audio between consecutive updates during speech: from speech start to the first
    partial, and between partials (the wait for the final after speech ends is endpointing, not speech)."""


@dataclass(frozen=True)
class Wire:
    """How clips reach the server: `encoding` at `rate` (default linear16 at 16 kHz; 8 kHz mu-law is what a
    phone network delivers). `clip_audio` is a clip resampled to the wire's rate (what a client does),
    `encode` the bytes it sends, and `to_model` those bytes as the model's 16 kHz input, decoded by the
    server's own decoder in one piece: the offline reference sees exactly what the stream sees."""

    encoding: Encoding = "linear16"
    rate: int = SAMPLE_RATE

    @property
    def format(self) -> AudioFormat:
        return AudioFormat(self.encoding, self.rate)

    def clip_audio(self, clip: Clip) -> FloatArray:
        data, rate = sf.read(str(clip.path), dtype="float32", always_2d=True)
        mono = data.mean(axis=1).astype(np.float32)
        if rate != self.rate:
            mono = soxr.resample(mono, rate, self.rate, quality="HQ").astype(np.float32)
        return mono

    def encode(self, audio: FloatArray) -> bytes:
        if self.encoding == "mulaw":
            return encode_mulaw(audio)
        if self.encoding == "alaw":
            return encode_alaw(audio)
        return float_to_linear16(audio)

    def to_model(self, data: bytes) -> FloatArray:
        decoder = AudioDecoder(self.format)
        return np.concatenate([*decoder.decode(data), *decoder.flush()])

    def __str__(self) -> str:
        return f"{self.encoding}/{self.rate}"


async def stream_transcript(
    engine: Engine,
    batcher: Batcher,
    data: bytes,
    config: StreamingConfig,
    seed: int,
    wire: Wire = Wire(),
) -> StreamResult:
    """Feed `data` (bytes in the wire's format) in random 20-100 ms frames through the real streaming path."""
    events: list[tuple[float, Event]] = []
    fmt = wire.format
    stream = Stream(engine, config, fmt)
    runner = StreamRunner(stream, batcher, lambda e: events.append((stream.duration, e)))
    bytes_per_ms = fmt.bytes_per_second() // 1000
    rng = random.Random(seed)
    pos = 0
    while pos < len(data):
        n = bytes_per_ms * rng.randint(20, 100)
        runner.feed(data[pos : pos + n])
        pos += n
        await runner.wait_idle()  # simulated time: the engine keeps up with real time
    await runner.finish()
    if runner.error is not None:
        raise runner.error
    finals = [e for _, e in events if isinstance(e, Transcript) and e.is_final]
    gaps: list[float] = []
    last: float | None = None
    for t, e in events:
        if isinstance(e, SpeechStarted):
            last = e.timestamp
        elif isinstance(e, Transcript):
            if not e.is_final and last is not None:
                gaps.append(t - last)
            last = None if e.is_final else t
    return StreamResult(
        " ".join(f.text for f in finals if f.text), stream.samples_to_model, stream.speech_samples, gaps
    )


def offline_transcript(engine: Engine, audio: FloatArray, config: StreamingConfig) -> str:
    return " ".join(r.text for r in transcribe_samples(engine, audio, config.vad) if r.text)


@dataclass
class Row:
    name: str
    seconds: float
    reference: str
    offline: str
    streaming: str
    result: StreamResult


async def evaluate(
    engine: Engine,
    clips: list[Clip],
    config: StreamingConfig,
    *,
    long_stream: bool,
    seed: int,
    verbose: bool,
    wire: Wire = Wire(),
) -> tuple[list[Row], Row | None]:
    batcher = Batcher(engine, BatcherConfig())
    batcher.start()
    rows: list[Row] = []
    audios = []
    try:
        rate = wire.format.sample_rate
        for i, clip in enumerate(clips):
            audio = wire.clip_audio(clip)
            audios.append(audio)
            data = wire.encode(audio)
            offline = offline_transcript(engine, wire.to_model(data), config)
            result = await stream_transcript(engine, batcher, data, config, seed + i, wire)
            rows.append(Row(clip.name, len(audio) / rate, clip.transcript, offline, result.text, result))
            if verbose:
                print(f"  [{i + 1}/{len(clips)}] {clip.name}", file=sys.stderr, flush=True)
        joined_row = None
        if long_stream and clips:
            joined = join_with_pauses(audios, seed=seed, rate=rate)
            data = wire.encode(joined)
            offline = offline_transcript(engine, wire.to_model(data), config)
            result = await stream_transcript(engine, batcher, data, config, seed, wire)
            reference = " ".join(c.transcript for c in clips)
            joined_row = Row("long-stream", len(joined) / rate, reference, offline, result.text, result)
    finally:
        await batcher.stop()
    return rows, joined_row


def _line(row: Row) -> str:
    r = row.result
    return (
        f"{row.name[:28]:<28} {row.seconds:7.1f} {wer([row.reference], [row.offline]):8.3f} "
        f"{wer([row.reference], [row.streaming]):8.3f} {wer([row.offline], [row.streaming]):8.3f} "
        f"{r.samples_to_model / max(1, r.speech_samples):6.2f} {max(r.partial_gaps, default=0.0):6.2f}"
    )


def add_streaming_flags(parser: argparse.ArgumentParser) -> None:
    """Window-plan and finalisation flags shared by the benchmarks."""
    d = StreamingConfig()
    parser.add_argument("--window-left", type=float, default=d.partial_plan.left_s, help="left context, s")
    parser.add_argument("--window-hop", type=float, default=d.partial_plan.hop_s, help="hop, s")
    parser.add_argument("--window-right", type=float, default=d.partial_plan.right_s, help="right context, s")
    parser.add_argument(
        "--no-final-pass",
        action="store_true",
        help="finals from the stitched windows instead of a final pass",
    )
    parser.add_argument(
        "--commit-after",
        type=float,
        default=d.commit_after_s or 0.0,
        help="finalise pending speech beyond this many seconds at a model-found pause (0: off, the default)",
    )
    parser.add_argument("--no-interim", action="store_true", help="no partial windows at all")


def streaming_config(args: argparse.Namespace) -> StreamingConfig:
    return replace(
        StreamingConfig(),
        partial_plan=WindowPlan(args.window_left, args.window_hop, args.window_right),
        final_pass=not args.no_final_pass,
        commit_after_s=args.commit_after or None,
        interim_results=not args.no_interim,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamer.bench accuracy", description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="folder with MANIFEST.tsv and audio")
    parser.add_argument("--language", default="en", help="clips of this language (default %(default)s)")
    parser.add_argument("--model", default=BUILTIN_EN, help="model spec (default %(default)s)")
    parser.add_argument("--clips", type=int, default=0, help="use only the first N clips (0: all)")
    parser.add_argument("--no-long-stream", action="store_true", help="skip the joined long-stream case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rate", type=int, default=None, help=f"wire sample rate, {MIN_RATE}-{MAX_RATE} Hz (default 16000)"
    )
    parser.add_argument(
        "--encoding", choices=ENCODINGS, default=None, help="wire encoding (default linear16)"
    )
    parser.add_argument(
        "--telephone",
        action="store_true",
        help="send the clips as 8 kHz mu-law, as a phone network does (--rate 8000 --encoding mulaw)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_streaming_flags(parser)
    args = parser.parse_args(argv)
    if args.telephone and (args.rate or args.encoding):
        parser.error("--telephone is --rate 8000 --encoding mulaw: give one or the other")
    wire = (
        Wire("mulaw", 8000) if args.telephone else Wire(args.encoding or "linear16", args.rate or SAMPLE_RATE)
    )
    if not MIN_RATE <= wire.rate <= MAX_RATE:
        parser.error(f"--rate must be {MIN_RATE}-{MAX_RATE} Hz")
    config = streaming_config(args)
    clips = load_manifest(args.data, args.language)
    if args.clips:
        clips = clips[: args.clips]
    if not clips:
        print(f"error: no clips of language {args.language!r} in {args.data}", file=sys.stderr)
        return 2
    engine = load_engine(args.model, EngineOptions())
    started = time.perf_counter()
    rows, joined = asyncio.run(
        evaluate(
            engine,
            clips,
            config,
            long_stream=not args.no_long_stream,
            seed=args.seed,
            verbose=not args.quiet,
            wire=wire,
        )
    )
    plan = config.partial_plan
    print(
        f"model={engine.name} windows(left/hop/right)={plan.left_s}/{plan.hop_s}/{plan.right_s}s "
        f"final_pass={config.final_pass} commit_after={config.commit_after_s or 'off'} "
        f"wire={wire}"
    )
    print(f"{'clip':<28} {'seconds':>7} {'off_wer':>8} {'str_wer':>8} {'s_vs_o':>8} {'comp':>6} {'gap':>6}")
    for row in rows:
        print(_line(row))
    to_model = sum(r.result.samples_to_model for r in rows)
    speech = sum(r.result.speech_samples for r in rows)
    gaps = [g for r in rows for g in r.result.partial_gaps]
    if joined is not None:
        print(_line(joined))
        j = joined
        print(
            f"long-stream: seconds={j.seconds:.1f} offline_wer={wer([j.reference], [j.offline]):.4f} "
            f"streaming_wer={wer([j.reference], [j.streaming]):.4f} "
            f"stream_vs_offline={wer([j.offline], [j.streaming]):.4f} "
            f"compute_ratio={j.result.samples_to_model / max(1, j.result.speech_samples):.3f}"
        )
    print(
        f"partials: max_gap={max(gaps, default=0.0):.2f}s (stream seconds between updates during speech); "
        f"elapsed={time.perf_counter() - started:.1f}s"
    )
    spelled = getattr(engine, "spell_calls", None)
    if spelled is not None:
        # Words the phoneme-to-text model actually converted (cache misses), against the words in the
        # transcripts: what spelling per word with a cache costs.
        words = sum(len(r.offline.split()) + len(r.streaming.split()) for r in rows)
        print(f"spelling: p2g_conversions={spelled} transcript_words={words} (offline + streaming)")
    refs = [r.reference for r in rows]
    print(
        f"accuracy: clips={len(rows)} offline_wer={wer(refs, [r.offline for r in rows]):.4f} "
        f"streaming_wer={wer(refs, [r.streaming for r in rows]):.4f} "
        f"stream_vs_offline={wer([r.offline for r in rows], [r.streaming for r in rows]):.4f} "
        f"compute_ratio={to_model / max(1, speech):.3f}"
    )
    return 0


__all__ = ["main", "normalise"]
