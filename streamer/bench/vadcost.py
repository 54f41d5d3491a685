"""CPU cost of the speech detectors per stream: core-seconds per second of audio.

`python -m streamer.bench vadcost [--data DIR] [--seconds 60] [--batch 1,16,64,256]`: the same audio
(the clips of DIR joined, else pink noise) through
- each detector alone, frame by frame, as a session calls it (webrtc; silero, one model step per 512
  samples per stream);
- the whole segmenter with each detector (what a session really pays: framing, level gate, pre-roll);
- silero's model stepping B streams at once (one call per 32 ms tick for B streams), per stream.
CPU is this process's (`time.process_time`), so BLAS threads that a large batched matmul starts are
counted too; run it on an otherwise idle machine for clean figures. Ends with
`vadcost: webrtc=W silero=S silero_batched_B=X ...` (detector alone, core-s per audio s per stream).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from streamer import SAMPLE_RATE
from streamer.bench.data import load_manifest
from streamer.bench.noise import make_noise
from streamer.ctc import FloatArray
from streamer.vad import Segmenter, SpeechDetector, VadConfig, WebRtcDetector
from streamer.vad_silero import CHUNK, CONTEXT, SileroDetector, SileroModel, load_silero_model


def detector_cost(detector: SpeechDetector, audio: FloatArray, frame: int) -> tuple[float, float]:
    """Core-seconds per audio second of `detector.is_speech` over `audio` in frames of `frame` samples:
    the process's and the calling thread's (equal when the detector starts no threads)."""
    frames = [audio[i : i + frame] for i in range(0, len(audio) - frame + 1, frame)]
    cpu, own = time.process_time(), time.thread_time()
    for f in frames:
        detector.is_speech(f)
    seconds = len(frames) * frame / SAMPLE_RATE
    return (time.process_time() - cpu) / seconds, (time.thread_time() - own) / seconds


def segmenter_cost(detector: SpeechDetector | None, audio: FloatArray, vad: VadConfig) -> float:
    """Core-seconds per audio second of a whole `Segmenter` fed 40 ms pieces."""
    segmenter = Segmenter(vad, detector)
    step = SAMPLE_RATE * 40 // 1000
    cpu = time.process_time()
    for i in range(0, len(audio), step):
        segmenter.push(audio[i : i + step])
    segmenter.flush()
    return (time.process_time() - cpu) / (len(audio) / SAMPLE_RATE)


def batched_cost(model: SileroModel, audio: FloatArray, batch: int, ticks: int) -> float:
    """Core-seconds per audio second per stream when one model call steps `batch` streams (each at a
    different offset of `audio`, wrapping around), over `ticks` 32 ms ticks."""
    rng = np.random.default_rng(batch)
    window = rng.integers(0, len(audio), size=batch)[:, None] + np.arange(CONTEXT + CHUNK)
    state = SileroModel.initial_state(batch)
    cpu = time.process_time()
    for t in range(ticks):
        # Gathering each stream's chunk is part of the batched cost: a server would do it every tick.
        chunks = np.take(audio, window + t * CHUNK, mode="wrap")
        _, state = model.step(chunks, state)
    return (time.process_time() - cpu) / (ticks * CHUNK / SAMPLE_RATE) / batch


def load_audio(data: Path | None, seconds: float) -> FloatArray:
    n = round(seconds * SAMPLE_RATE)
    if data is None:
        return make_noise("pink", n, seed=0) * np.float32(0.05)
    parts: list[FloatArray] = []
    for clip in load_manifest(data, "en"):
        parts.append(clip.audio())
        if sum(len(p) for p in parts) >= n:
            break
    audio = np.concatenate(parts)
    return np.resize(audio, n).astype(np.float32)  # loops the clips when there are too few


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamer.bench vadcost", description=__doc__)
    parser.add_argument(
        "--data", type=Path, default=None, help="folder with MANIFEST.tsv (default: pink noise)"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per measurement (default 60)")
    parser.add_argument(
        "--batch", default="1,16,64,256", help="streams per batched silero call, comma-separated"
    )
    args = parser.parse_args(argv)
    try:
        batches = [int(b) for b in args.batch.split(",") if b.strip()]
    except ValueError:
        parser.error("--batch: comma-separated integers")
    if any(b < 1 for b in batches):
        parser.error("--batch: sizes must be >= 1")
    audio = load_audio(args.data, args.seconds)
    vad = VadConfig()
    model = load_silero_model()
    frame = vad.frame_samples
    made: dict[str, Callable[[], SpeechDetector]] = {
        "webrtc": lambda: WebRtcDetector(vad.aggressiveness),
        "silero": lambda: SileroDetector(model=model),
    }
    measured = {name: detector_cost(make(), audio, frame) for name, make in made.items()}
    alone = {name: process for name, (process, _) in measured.items()}
    whole = {name: segmenter_cost(make(), audio, vad) for name, make in made.items()}
    ticks = max(1, round(args.seconds * SAMPLE_RATE / CHUNK))
    batched = {b: batched_cost(model, audio, b, max(10, ticks // b)) for b in batches}
    print(f"audio={len(audio) / SAMPLE_RATE:.0f}s frame={vad.frame_ms}ms (core-seconds per audio second)")
    for name in made:
        print(
            f"{name:<8} detector={alone[name]:.5f} (its own thread: {measured[name][1]:.5f}) "
            f"segmenter+detector={whole[name]:.5f} streams_per_core={1 / whole[name]:.0f}"
        )
    for b, cost in batched.items():
        print(
            f"silero batched {b:>4} streams per call: {cost:.5f} per stream ({1 / cost:.0f} streams per core)"
        )
    fields = " ".join(f"silero_batched_{b}={c:.5f}" for b, c in batched.items())
    print(f"vadcost: webrtc={alone['webrtc']:.5f} silero={alone['silero']:.5f} {fields}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
