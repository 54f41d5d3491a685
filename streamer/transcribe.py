"""Offline transcription: one full model pass per VAD segment (or over the whole file).

This is the reference that streaming output is measured against, and a tool on its own:
`python -m streamer.transcribe FILE [--model SPEC] [--json] [--no-vad] [--decoder D] [--keyterm TERM]`.
From code:
`transcribe_samples(engine, samples_16k, vad_config, detector=None)` returns the words of each segment
(`detector`: the stream's speech detector, e.g. a `SileroDetector`; None is webrtcvad).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from streamer import SAMPLE_RATE
from streamer.ctc import FloatArray
from streamer.decoding import KeytermTrie, WordDecoder, final_decoder, keyterm_compiler
from streamer.decoding.keyterms import check_keyterms, parse_keyterm
from streamer.engine import BUILTIN_EN, DECODERS, Engine, EngineOptions, load_engine
from streamer.errors import StreamerError
from streamer.transcript import Word, render_words
from streamer.vad import (
    SegmentAudio,
    SegmentEnd,
    Segmenter,
    SegmentPause,
    SegmentStart,
    SpeechDetector,
    VadConfig,
)
from streamer.windows import Window


@dataclass(frozen=True)
class SegmentResult:
    start: float
    end: float
    words: list[Word]

    @property
    def text(self) -> str:
        return " ".join(w.word for w in self.words)


def read_audio(path: str | Path) -> FloatArray:
    """Any file soundfile reads, as 16 kHz mono float32."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1).astype(np.float32)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    return mono


@dataclass(frozen=True)
class SpeechSegment:
    start: int
    """Stream sample where the segment begins."""
    audio: FloatArray
    pauses: tuple[int, ...] = ()
    """Segment samples where an utterance ended inside it (`VadConfig.pause_ms`): cut points."""


def speech_segments(
    samples: FloatArray, config: VadConfig, detector: SpeechDetector | None = None
) -> list[SpeechSegment]:
    """Each speech segment with its pauses, exactly as a streaming session would cut them (with a fresh
    `detector`, the one the stream uses; None: webrtcvad)."""
    seg = Segmenter(config, detector)
    out: list[SpeechSegment] = []
    start = 0
    parts: list[FloatArray] = []
    pauses: list[int] = []
    for ev in [*seg.push(samples), *seg.flush()]:
        if isinstance(ev, SegmentStart):
            start, parts, pauses = ev.sample, [], []
        elif isinstance(ev, SegmentAudio):
            parts.append(ev.samples)
        elif isinstance(ev, SegmentPause):
            pauses.append(sum(len(p) for p in parts) + len(ev.tail))
        elif isinstance(ev, SegmentEnd):
            audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
            out.append(SpeechSegment(start, audio, tuple(pauses)))
    return out


def vad_segments(
    samples: FloatArray, config: VadConfig, detector: SpeechDetector | None = None
) -> list[tuple[int, FloatArray]]:
    """(start sample, audio) of each speech segment (see `speech_segments`)."""
    return [(s.start, s.audio) for s in speech_segments(samples, config, detector)]


def transcribe_samples(
    engine: Engine,
    samples: FloatArray,
    vad: VadConfig | None,
    *,
    detector: SpeechDetector | None = None,
    context_s: float = 2.0,
    keyterms: KeytermTrie | None = None,
    decoder: WordDecoder | None = None,
) -> list[SegmentResult]:
    """One pass per VAD segment (`vad=None`: one pass over everything); `detector` is a fresh speech
    detector of the kind the stream uses (None: webrtcvad), so the segments are the stream's.

    A segment with pauses (`VadConfig.pause_ms`) gets one pass per piece between them, each with up to
    `context_s` of the segment's audio before it as left context (its frames discarded), as a stream
    makes its utterance finals (`StreamingConfig.context_s`). `keyterms` are decoded with `decoder` (a
    `KeytermCompiler`'s), as a stream with those keyterms decodes its finals."""
    segments = speech_segments(samples, vad, detector) if vad is not None else [SpeechSegment(0, samples)]
    fs = engine.frame_samples
    context = round(context_s * SAMPLE_RATE / fs)
    if keyterms is None or decoder is None:
        keyterms, decoder = None, final_decoder(engine)  # the one a stream's finals use: both stay equal
    results = []
    for seg in segments:
        region, carry = 0, None
        for end in (*seg.pauses, len(seg.audio)):
            total = engine.num_frames(end)
            if total <= region:
                continue
            window = Window(max(0, region - context) * fs, end, region, total, True, fs)
            # From the stream, not the segment: a pause can end after the tail the segment keeps.
            audio = samples[seg.start + window.start : seg.start + end]
            frames = window.kept(engine.forward([audio])[0])
            words, carry = render_words(
                frames,
                blank_id=engine.blank_id,
                delimiter_id=engine.word_delimiter_id,
                spell=engine.spell,
                frame_samples=fs,
                first_frame=region,
                origin_sample=seg.start,
                prev_token=carry,
                decoder=decoder,
                keyterms=keyterms,
            )
            piece_start = seg.start + (region * fs if region else 0)
            piece_end = seg.start + (min(end, total * fs) if end < len(seg.audio) else end)
            results.append(SegmentResult(piece_start / SAMPLE_RATE, piece_end / SAMPLE_RATE, words))
            region = total
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streamer.transcribe", description="Transcribe a recording with one full pass."
    )
    parser.add_argument("file", help="audio file (WAV, FLAC, anything soundfile reads)")
    parser.add_argument(
        "--model",
        default=BUILTIN_EN,
        help=f"model: {BUILTIN_EN} (built-in English), a hub id, or a local folder (default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print segments and words as JSON")
    parser.add_argument("--no-vad", action="store_true", help="one pass over the whole file, no VAD")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (default auto)")
    parser.add_argument(
        "--decoder",
        choices=DECODERS,
        default="auto",
        help="greedy, beam (lexicon beam search), or auto: beam for the built-in model and where a "
        "checkpoint has a language_model/ (default %(default)s; as the server decides)",
    )
    parser.add_argument(
        "--keyterm", action="append", default=[], metavar="TERM", help="a keyterm to favour (repeatable)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        samples = read_audio(args.file)
        options = EngineOptions(device=args.device, dtype=args.dtype, max_batch=1, decoder=args.decoder)
        engine = load_engine(args.model, options)
        compiler = keyterm_compiler(engine)
        terms = [parse_keyterm(t, with_boost=False, param="--keyterm") for t in args.keyterm]
        check_keyterms(terms, compiler.limits, "--keyterm")
        results = transcribe_samples(
            engine,
            samples,
            None if args.no_vad else VadConfig(),
            keyterms=compiler.compile(terms),
            decoder=compiler.decoder,
        )
    except (StreamerError, OSError, sf.LibsndfileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        payload = {
            "duration": round(len(samples) / SAMPLE_RATE, 3),
            "transcript": " ".join(r.text for r in results if r.text),
            "segments": [
                {"start": r.start, "end": r.end, "transcript": r.text, "words": [asdict(w) for w in r.words]}
                for r in results
            ],
        }
        print(json.dumps(payload, ensure_ascii=False, indent=2))
    else:
        print(" ".join(r.text for r in results if r.text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
