"""Accuracy of streaming against one full pass, on real recorded speech.

`python -m streamer.bench accuracy --data DIR [--language en] [--model SPEC] [--rate R --encoding E]
[window flags]`: for every clip of the language, the offline transcript (one pass per VAD segment, as
`streamer.transcribe`), the streaming transcript (the clip fed through the real Stream, Batcher and runner
in 20-100 ms frames, finals joined), their WER against the reference, and a long stream of all clips joined
with pauses. Clips are transcoded in memory to the wire format (`--rate`, `--encoding`; `--telephone` is
8 kHz mu-law), and the offline pass decodes the very bytes the stream sends, so the two differ only by
streaming.

Noise and detectors: `--noise KIND:SNR` (babble, white, pink, brown; SNR in dB against the speech's active
level, see `streamer.bench.noise`) mixes noise into every clip and into the long stream before the wire
encoding (babble: four other clips of the set at once); `--vad webrtc|webrtc-nogate|silero` picks the
detector (webrtc-nogate: webrtc without the level gate, `VadConfig.quiet_db=None`), for the stream and the
offline pass alike. `--noise-only-s` seconds of the noise alone, at the absolute level the long stream's
mix used, go through the segmenter to count false speech starts; the long stream is also simulated on one
core in virtual time (`streamer.bench.sim`) for final latency.

Ends with `accuracy: clips=N offline_wer=X streaming_wer=Y stream_vs_offline=Z compute_ratio=R` over the
clips, then on the same line `false_starts_per_min=F noise_in_speech=S vad_cpu=C final_p50=P
final_p95=Q endpoints=E`: speech starts per minute of noise alone and the fraction of it that segments
took in; core-seconds of segmenter + detector per audio second (measured on the noise-only pass); the
long stream's simulated final latency (s) at its E endpoints (nan without the long stream, with
`--no-sim`, or when noise kept every segment open until the length cap).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

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
from streamer.bench.noise import NOISE_KINDS, NoiseSpec, make_noise, mix_at_snr, scaled
from streamer.ctc import FloatArray
from streamer.decoding import BeamOptions, BeamResult, KeytermTrie, WordDecoder, final_decoder
from streamer.engine import BUILTIN_EN, DECODERS, Engine, EngineOptions, load_engine
from streamer.errors import ConfigError
from streamer.runner import StreamRunner
from streamer.session import StreamingConfig
from streamer.stream import Stream
from streamer.transcribe import transcribe_samples
from streamer.transcript import Event, SpeechStarted, Transcript
from streamer.vad import SegmentAudio, Segmenter, SegmentStart, SpeechDetector, VadConfig
from streamer.windows import WindowPlan

DetectorFactory = Callable[[], SpeechDetector]
BenchVad = Literal["webrtc", "webrtc-nogate", "silero"]
BENCH_VADS: tuple[BenchVad, ...] = ("webrtc", "webrtc-nogate", "silero")


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
    detectors: DetectorFactory | None = None,
) -> StreamResult:
    """Feed `data` (bytes in the wire's format) in random 20-100 ms frames through the real streaming path
    (`detectors`: makes each channel's speech detector; None: webrtcvad)."""
    events: list[tuple[float, Event]] = []
    fmt = wire.format
    stream = Stream(engine, config, fmt, detectors)
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


def offline_transcript(
    engine: Engine, audio: FloatArray, config: StreamingConfig, detectors: DetectorFactory | None = None
) -> str:
    detector = detectors() if detectors is not None else None
    return " ".join(
        r.text
        for r in transcribe_samples(engine, audio, config.vad, detector=detector, context_s=config.context_s)
        if r.text
    )


@dataclass
class Row:
    name: str
    seconds: float
    reference: str
    offline: str
    streaming: str
    result: StreamResult
    noise_power: float = 0.0
    """Mean power of the noise mixed in (wire-rate samples; 0 without noise)."""
    model_audio: FloatArray | None = field(default=None, repr=False)
    """The 16 kHz audio the model saw (kept for the long stream only, for the simulation)."""


def noisy(
    audio: FloatArray, noise: NoiseSpec | None, seed: int, rate: int, others: list[FloatArray]
) -> tuple[FloatArray, float]:
    """`audio` with `noise` mixed in at its SNR (babble from `others`) and the noise power used; the
    audio unchanged (power 0) without noise."""
    if noise is None:
        return audio, 0.0
    background = make_noise(noise.kind, len(audio), seed=seed, sources=others, rate=rate)
    return mix_at_snr(audio, background, noise.snr_db, rate)


async def evaluate(
    engine: Engine,
    clips: list[Clip],
    config: StreamingConfig,
    *,
    long_stream: bool,
    seed: int,
    verbose: bool,
    wire: Wire = Wire(),
    noise: NoiseSpec | None = None,
    detectors: DetectorFactory | None = None,
) -> tuple[list[Row], Row | None]:
    """Every clip offline and streamed (and the clips joined into one long stream); `noise` is mixed into
    each clip (babble from the other clips) and into the joined stream at its SNR; `detectors` makes the
    speech detector of each stream and offline pass (None: webrtcvad)."""
    batcher = Batcher(engine, BatcherConfig())
    batcher.start()
    rows: list[Row] = []
    rate = wire.format.sample_rate
    audios = [wire.clip_audio(clip) for clip in clips]
    try:
        for i, clip in enumerate(clips):
            audio, power = noisy(audios[i], noise, seed + i, rate, audios[:i] + audios[i + 1 :])
            data = wire.encode(audio)
            offline = offline_transcript(engine, wire.to_model(data), config, detectors)
            result = await stream_transcript(engine, batcher, data, config, seed + i, wire, detectors)
            rows.append(
                Row(clip.name, len(audio) / rate, clip.transcript, offline, result.text, result, power)
            )
            if verbose:
                print(f"  [{i + 1}/{len(clips)}] {clip.name}", file=sys.stderr, flush=True)
        joined_row = None
        if long_stream and clips:
            # Babble here is made of the same clips (at random offsets, four at once): there are no others.
            joined, power = noisy(join_with_pauses(audios, seed=seed, rate=rate), noise, seed, rate, audios)
            data = wire.encode(joined)
            model_audio = wire.to_model(data)
            offline = offline_transcript(engine, model_audio, config, detectors)
            result = await stream_transcript(engine, batcher, data, config, seed, wire, detectors)
            reference = " ".join(c.transcript for c in clips)
            joined_row = Row(
                "long-stream", len(joined) / rate, reference, offline, result.text, result, power, model_audio
            )
    finally:
        await batcher.stop()
    return rows, joined_row


@dataclass(frozen=True)
class NoiseOnly:
    """Noise alone through the segmenter: false speech starts and what the VAD cost."""

    seconds: float
    starts: int
    vad_cpu_s: float
    in_segments_s: float = 0.0
    """Noise-only audio that segments took in (a detector stuck on "speech" starts once, then holds)."""

    @property
    def speech_fraction(self) -> float:
        return self.in_segments_s / self.seconds if self.seconds else math.nan

    @property
    def starts_per_min(self) -> float:
        return self.starts * 60.0 / self.seconds if self.seconds else math.nan

    @property
    def cpu_per_audio_s(self) -> float:
        """Core-seconds of segmenter + detector per second of audio."""
        return self.vad_cpu_s / self.seconds if self.seconds else math.nan


def noise_only(
    noise: NoiseSpec | None,
    power: float,
    seconds: float,
    vad: VadConfig,
    detectors: DetectorFactory | None,
    *,
    seed: int,
    wire: Wire = Wire(),
    sources: list[FloatArray] | None = None,
) -> NoiseOnly:
    """`seconds` of `noise` alone at mean power `power` (silence without noise), sent over the wire and
    through a fresh segmenter in 20-100 ms pieces; counts segment starts (split continuations excluded).
    The segmenter starts with no speech level, so its level gate is idle: the detector alone decides."""
    rate = wire.format.sample_rate
    n = round(seconds * rate)
    if n <= 0:
        return NoiseOnly(0.0, 0, 0.0)  # --noise-only-s 0: skipped (nan per minute)
    if noise is None:
        audio = np.zeros(n, np.float32)
    else:
        audio = scaled(make_noise(noise.kind, n, seed=seed, sources=sources, rate=rate), power)
    samples = wire.to_model(wire.encode(audio))
    segmenter = Segmenter(vad, detectors() if detectors is not None else None)
    rng = random.Random(seed)
    starts = 0
    kept = 0
    cpu = time.thread_time()
    pos = 0
    while pos < len(samples):
        step = 16 * rng.randint(20, 100)
        events = segmenter.push(samples[pos : pos + step])
        starts += sum(1 for e in events if isinstance(e, SegmentStart) and not e.continued)
        kept += sum(len(e.samples) for e in events if isinstance(e, SegmentAudio))
        pos += step
    kept += sum(len(e.samples) for e in segmenter.flush() if isinstance(e, SegmentAudio))
    return NoiseOnly(len(samples) / SAMPLE_RATE, starts, time.thread_time() - cpu, kept / SAMPLE_RATE)


def simulated_finals(
    engine: Engine, row: Row, config: StreamingConfig, detectors: DetectorFactory | None, seed: int
) -> tuple[float, float, int]:
    """Final latency p50 and p95 (s) of `row`'s audio through the real Session on one simulated core in
    virtual time (`streamer.bench.sim`): the waiting is simulated, the model's CPU time is real. Latency is
    measured at endpoints only (finals with speech_final), whose count is the third value: noise that
    keeps the detector on gives few or none (segments then end at the length cap)."""
    from streamer.bench.load import percentile
    from streamer.bench.sim import Core, OurSystem, simulate

    if row.model_audio is None:
        return math.nan, math.nan, 0
    core = Core()
    system = OurSystem(engine, core, config, detector=detectors() if detectors is not None else None)
    speech_s = row.result.speech_samples / SAMPLE_RATE
    result = simulate(system, core, row.model_audio, speech_s=speech_s, seed=seed)
    finals = result.stats.final
    return percentile(finals, 50), percentile(finals, 95), len(finals)


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
    parser.add_argument(
        "--endpointing-ms",
        type=int,
        default=d.vad.endpoint_ms,
        help="silence that ends an utterance, as a client's endpointing parameter (default %(default)s)",
    )


def streaming_config(args: argparse.Namespace) -> StreamingConfig:
    """The config a stream gets for these flags (endpointing as the protocol applies a client's value)."""
    base = StreamingConfig()
    return replace(
        base,
        partial_plan=WindowPlan(args.window_left, args.window_hop, args.window_right),
        final_pass=not args.no_final_pass,
        commit_after_s=args.commit_after or None,
        interim_results=not args.no_interim,
        vad=base.vad.with_endpointing(args.endpointing_ms),
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
    parser.add_argument(
        "--noise",
        type=_noise_arg,
        default=None,
        metavar="KIND:SNR",
        help=f"mix noise into every clip and the long stream: KIND one of {', '.join(NOISE_KINDS)}, SNR in "
        "dB against the speech's active level (e.g. pink:10)",
    )
    parser.add_argument(
        "--vad",
        choices=BENCH_VADS,
        default="webrtc",
        help="speech detector for stream and offline pass; webrtc-nogate: webrtc without the level gate "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--noise-only-s",
        type=float,
        default=60.0,
        help="seconds of the noise alone (at the mix's level) to count false speech starts (0: skip)",
    )
    parser.add_argument(
        "--no-sim", action="store_true", help="skip the simulated final latency of the long stream"
    )
    parser.add_argument(
        "--biasing",
        type=_sizes,
        default=None,
        metavar="N[,N...]",
        help="keyterm benchmark instead of streaming: each clip's rare words plus N distractors as keyterms, "
        "offline, reporting WER, B-WER and U-WER per list size and without boosting (see "
        "streamer.bench.biasing)",
    )
    parser.add_argument(
        "--rare-zipf",
        type=float,
        default=3.5,
        help="--biasing: words under this wordfreq Zipf frequency are rare (default %(default)s)",
    )
    add_decoder_flags(parser)
    add_streaming_flags(parser)
    args = parser.parse_args(argv)
    if args.telephone and (args.rate or args.encoding):
        parser.error("--telephone is --rate 8000 --encoding mulaw: give one or the other")
    wire = (
        Wire("mulaw", 8000) if args.telephone else Wire(args.encoding or "linear16", args.rate or SAMPLE_RATE)
    )
    if not MIN_RATE <= wire.rate <= MAX_RATE:
        parser.error(f"--rate must be {MIN_RATE}-{MAX_RATE} Hz")
    config, detectors = bench_vad(args.vad, streaming_config(args))
    clips = load_manifest(args.data, args.language)
    if args.clips:
        clips = clips[: args.clips]
    if not clips:
        print(f"error: no clips of language {args.language!r} in {args.data}", file=sys.stderr)
        return 2
    if not args.quiet:
        # the beam decoder's first lexicon build takes minutes: show its progress
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        logging.getLogger("streamer.engine.hama_lexicon").setLevel(logging.INFO)
    engine = load_engine(args.model, engine_options(args))
    if args.biasing is not None:
        from streamer.bench import biasing

        return biasing.evaluate(
            engine,
            clips,
            args.biasing,
            config.vad,
            zipf=args.rare_zipf,
            seed=args.seed,
            context_s=config.context_s,
            verbose=not args.quiet,
        )
    timed = _TimedDecoder.install(engine)
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
            noise=args.noise,
            detectors=detectors,
        )
    )
    # Noise alone at the absolute level of the long stream's mix (else the clips' mean level).
    level = joined.noise_power if joined is not None else float(np.mean([r.noise_power for r in rows]))
    alone = noise_only(
        args.noise,
        level,
        args.noise_only_s,
        config.vad,
        detectors,
        seed=args.seed + 10_000,
        wire=wire,
        sources=[wire.clip_audio(c) for c in clips] if args.noise and args.noise.kind == "babble" else None,
    )
    p50, p95, endpoints = (
        (math.nan, math.nan, 0)
        if joined is None or args.no_sim
        else simulated_finals(engine, joined, config, detectors, args.seed)
    )
    plan = config.partial_plan
    print(
        f"model={engine.name} windows(left/hop/right)={plan.left_s}/{plan.hop_s}/{plan.right_s}s "
        f"final_pass={config.final_pass} commit_after={config.commit_after_s or 'off'} "
        f"wire={wire} vad={args.vad} noise={args.noise or 'none'} endpointing_ms={args.endpointing_ms} "
        f"utterance_pause_ms={config.vad.pause_ms or '-'}"
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
        f"compute_ratio={to_model / max(1, speech):.3f} "
        f"false_starts_per_min={alone.starts_per_min:.2f} noise_in_speech={alone.speech_fraction:.3f} "
        f"vad_cpu={alone.cpu_per_audio_s:.5f} final_p50={p50:.3f} final_p95={p95:.3f} endpoints={endpoints} "
        f"decoder={args.decoder} decoder_cpu={timed.cpu_per_audio_s if timed else 0.0:.5f}"
    )
    return 0


def add_decoder_flags(parser: argparse.ArgumentParser) -> None:
    """`--decoder` and the beam search's options (see `streamer.decoding.BeamOptions`)."""
    d = BeamOptions()
    parser.add_argument(
        "--decoder", choices=DECODERS, default="auto", help="how finals are decoded (default: the server's)"
    )
    parser.add_argument("--beam", type=int, default=d.beam, help="beam width (default %(default)s)")
    parser.add_argument("--lm-weight", type=float, default=d.lm_weight, help="word LM weight")
    parser.add_argument("--word-bonus", type=float, default=d.word_bonus, help="insertion bonus per word")
    parser.add_argument("--oov-logp", type=float, default=d.oov_logp, help="LM log-prob of unknown words")
    parser.add_argument(
        "--split-penalty", type=float, default=d.split_penalty, help="cost of a word boundary without <wb>"
    )
    parser.add_argument(
        "--lexicon-words", type=int, default=EngineOptions().lexicon_words, help="words in the lexicon"
    )
    parser.add_argument(
        "--keyterm-bonus", type=float, default=d.keyterm_bonus, help="bonus per matched keyterm unit"
    )
    parser.add_argument(
        "--keyterm-logp", type=float, default=d.keyterm_logp, help="LM log-prob of a keyterm's words"
    )


def engine_options(args: argparse.Namespace) -> EngineOptions:
    beam = BeamOptions(
        beam=args.beam,
        lm_weight=args.lm_weight,
        word_bonus=args.word_bonus,
        oov_logp=args.oov_logp,
        split_penalty=args.split_penalty,
        keyterm_bonus=args.keyterm_bonus,
        keyterm_logp=args.keyterm_logp,
    )
    return EngineOptions(decoder=args.decoder, beam=beam, lexicon_words=args.lexicon_words)


class _TimedDecoder:
    """Wraps an engine's final decoder to add up the CPU it spends (on the calling thread)."""

    def __init__(self, inner: WordDecoder, frame_seconds: float) -> None:
        self.inner = inner
        self.cpu = 0.0
        self.audio = 0.0
        self._frame_seconds = frame_seconds

    @classmethod
    def install(cls, engine: Engine) -> _TimedDecoder | None:
        inner = final_decoder(engine)
        if inner is None:
            return None
        timed = cls(inner, engine.frame_samples / SAMPLE_RATE)
        setattr(engine, "final_decoder", timed)  # noqa: B010 (an optional attribute, not in the protocol)
        return timed

    def decode(
        self,
        logprobs: FloatArray,
        *,
        frame_offset: int = 0,
        prev_token: int | None = None,
        keyterms: KeytermTrie | None = None,
    ) -> BeamResult:
        t0 = time.thread_time()
        result = self.inner.decode(
            logprobs, frame_offset=frame_offset, prev_token=prev_token, keyterms=keyterms
        )
        self.cpu += time.thread_time() - t0
        self.audio += len(logprobs) * self._frame_seconds
        return result

    @property
    def cpu_per_audio_s(self) -> float:
        """Core-seconds of decoding per second of decoded audio."""
        return self.cpu / self.audio if self.audio else 0.0


def bench_vad(vad: BenchVad, config: StreamingConfig) -> tuple[StreamingConfig, DetectorFactory | None]:
    """The streaming config and detector factory of a `--vad` choice (None: the segmenter's webrtcvad)."""
    if vad == "webrtc-nogate":
        return replace(config, vad=replace(config.vad, quiet_db=None)), None
    if vad == "silero":
        from streamer.vad_silero import silero_factory

        return config, silero_factory()
    return config, None


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected list sizes like 0,100,1000, got {text!r}") from None
    if not sizes or any(n < 0 for n in sizes):
        raise argparse.ArgumentTypeError(f"expected list sizes like 0,100,1000, got {text!r}")
    return sizes


def _noise_arg(text: str) -> NoiseSpec:
    try:
        return NoiseSpec.parse(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


__all__ = ["main", "normalise"]
