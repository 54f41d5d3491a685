"""Offline transcription: one full model pass per VAD segment (or over the whole file).

This is the reference that streaming output is measured against, and a tool on its own:
`python -m streamer.transcribe FILE [--model SPEC] [--json] [--no-vad]`. From code:
`transcribe_samples(engine, samples_16k, vad_config)` returns the words of each segment.
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
from streamer.engine import BUILTIN_EN, Engine, EngineOptions, load_engine
from streamer.errors import StreamerError
from streamer.transcript import Word, render_words
from streamer.vad import SegmentAudio, SegmentEnd, Segmenter, SegmentStart, VadConfig


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


def vad_segments(samples: FloatArray, config: VadConfig) -> list[tuple[int, FloatArray]]:
    """(start sample, audio) of each speech segment, exactly as a streaming session would cut them."""
    seg = Segmenter(config)
    out: list[tuple[int, FloatArray]] = []
    start = 0
    parts: list[FloatArray] = []
    for ev in [*seg.push(samples), *seg.flush()]:
        if isinstance(ev, SegmentStart):
            start, parts = ev.sample, []
        elif isinstance(ev, SegmentAudio):
            parts.append(ev.samples)
        elif isinstance(ev, SegmentEnd):
            out.append((start, np.concatenate(parts) if parts else np.zeros(0, np.float32)))
    return out


def transcribe_samples(engine: Engine, samples: FloatArray, vad: VadConfig | None) -> list[SegmentResult]:
    """One pass per VAD segment (`vad=None`: one pass over everything)."""
    segments = vad_segments(samples, vad) if vad is not None else [(0, samples)]
    results = []
    for start, audio in segments:
        if engine.num_frames(len(audio)) == 0:
            continue
        logprobs = engine.forward([audio])[0]
        words, _ = render_words(
            logprobs,
            blank_id=engine.blank_id,
            delimiter_id=engine.word_delimiter_id,
            spell=engine.spell,
            frame_samples=engine.frame_samples,
            first_frame=0,
            origin_sample=start,
        )
        results.append(SegmentResult(start / SAMPLE_RATE, (start + len(audio)) / SAMPLE_RATE, words))
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        samples = read_audio(args.file)
        engine = load_engine(args.model, EngineOptions(device=args.device, dtype=args.dtype, max_batch=1))
        results = transcribe_samples(engine, samples, None if args.no_vad else VadConfig())
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
