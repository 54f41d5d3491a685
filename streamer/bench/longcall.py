"""Hour-long call: one stream of many minutes of speech through the real server; the server's memory stays
flat, every final arrives, and word times are as right at the end as at the start.

    python -m streamer.bench longcall --minutes 60 --speed 4          # built-in model, ../shared/data
    python -m streamer.bench longcall --minutes 3 --speed 30 --model fake:tone --synthetic

Starts `python -m streamer --port 0` (so its RSS is the server's alone) and streams one call: the English
clips of `--data` joined with pauses (one "cycle", about 5 minutes), repeated until `--minutes`, sent as
linear16 in 100 ms frames at `--speed` times real time. Every `--sample-every` seconds it prints the
server's RSS, how much audio was sent and how far the finals have come. At the end it sends CloseStream
and waits for the Metadata.

Checks, from the finals: each cycle is the same audio, so from the second cycle on (the first starts the
call, the others follow a cycle) each full cycle's transcript should read like the second one's
(`same_text`), the word error rate of every cycle against the first stays small (`wer_vs_first_max`), and
every cycle's first word starts at the same offset into it (`time_drift_max`: the largest difference from
the first cycle, seconds); the finals reach the end of the call (`last_word_end` against the call's
length); RSS growth compares the median of the first fifth of the samples after the first two minutes of
audio with the median of the last fifth. The last line is

    longcall: minutes=M speed=S cycles=C same_text=A/B wer_vs_first_max=W time_drift_max=D
              last_word_end=E rss_start=R0MB rss_end=R1MB rss_growth=G% errors=N

(on one line); the exit status is 1 on errors (no Metadata, a wrong close, ERROR lines in the server log, or
finals that stop short of the call's last cycle).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from streamer import SAMPLE_RATE
from streamer.bench.data import wer
from streamer.bench.soak import DEFAULT_DATA, ServerProcess, log, median_ends, speech_audio

FRAME_S = 0.1
WARMUP_AUDIO_S = 120.0


@dataclass
class Sample:
    wall_s: float
    audio_s: float
    final_s: float
    rss_kib: int


@dataclass
class Call:
    messages: list[dict[str, Any]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    sent_s: float = 0.0
    final_s: float = 0.0
    """End of the last final word so far, stream seconds."""
    errors: list[str] = field(default_factory=list)

    def words(self) -> list[dict[str, Any]]:
        return [
            w
            for m in self.messages
            if m.get("type") == "Results" and m.get("is_final")
            for w in m["channel"]["alternatives"][0]["words"]
        ]


async def _receive(ws: ClientConnection, call: Call) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for raw in ws:
            message = json.loads(raw)
            call.messages.append(message)
            if message.get("type") == "Results" and message.get("is_final"):
                words = message["channel"]["alternatives"][0]["words"]
                call.final_s = float(words[-1]["end"]) if words else call.final_s


async def _sample(server: ServerProcess, call: Call, every_s: float, started: float) -> None:
    while True:
        sample = Sample(time.monotonic() - started, call.sent_s, call.final_s, server.rss_kib())
        call.samples.append(sample)
        log(
            f"t={sample.wall_s:6.0f}s audio={sample.audio_s / 60:5.1f}min "
            f"finals_to={sample.final_s / 60:5.1f}min "
            f"rss={sample.rss_kib / 1024:7.1f}MB"
        )
        await asyncio.sleep(every_s)


async def stream_call(server: ServerProcess, audio: bytes, speed: float, every_s: float) -> Call:
    """Send `audio` (linear16, 16 kHz) as one stream at `speed` x real time; collect what comes back."""
    call = Call()
    url = server.ws_url("encoding=linear16&sample_rate=16000&channels=1&interim_results=false")
    frame = int(FRAME_S * SAMPLE_RATE) * 2
    started = time.monotonic()
    async with connect(url, max_size=None) as ws:
        receiver = asyncio.create_task(_receive(ws, call))
        sampler = asyncio.create_task(_sample(server, call, every_s, started))
        try:
            for i, pos in enumerate(range(0, len(audio), frame)):
                await ws.send(audio[pos : pos + frame])
                call.sent_s = (pos + frame) / 2 / SAMPLE_RATE
                delay = started + (i + 1) * FRAME_S / speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await ws.send(json.dumps({"type": "CloseStream"}))
            async with asyncio.timeout(600):
                await receiver
        finally:
            sampler.cancel()
            receiver.cancel()
            await asyncio.gather(sampler, receiver, return_exceptions=True)
        if ws.close_code != 1000:
            call.errors.append(f"closed with {ws.close_code} {ws.close_reason}")
    if not call.messages or call.messages[-1].get("type") != "Metadata":
        call.errors.append("no Metadata at the end")
    return call


@dataclass
class Report:
    cycles: int
    same_text: int
    wer_vs_first: float
    drift_s: float
    last_word_end_s: float
    call_s: float
    rss_start_kib: int
    rss_end_kib: int
    errors: list[str]

    @property
    def rss_growth_pct(self) -> float:
        return 100.0 * (self.rss_end_kib - self.rss_start_kib) / max(1, self.rss_start_kib)

    def line(self, minutes: float, speed: float) -> str:
        return (
            f"longcall: minutes={minutes:g} speed={speed:g} cycles={self.cycles} "
            f"same_text={self.same_text}/{max(0, self.cycles - 1)} wer_vs_first_max={self.wer_vs_first:.4f} "
            f"time_drift_max={self.drift_s:.3f} "
            f"last_word_end={self.last_word_end_s:.1f}/{self.call_s:.1f} "
            f"rss_start={self.rss_start_kib / 1024:.1f}MB rss_end={self.rss_end_kib / 1024:.1f}MB "
            f"rss_growth={self.rss_growth_pct:.1f}% errors={len(self.errors)}"
        )


def analyse(call: Call, cycle_s: float, call_s: float, errors: list[str]) -> Report:
    """Per full cycle: its words' text and where its first word starts into the cycle; texts against the
    second cycle (the first that follows a cycle) and the first, times against the first."""
    words = call.words()
    full = int(call_s // cycle_s)
    texts: list[str] = []
    firsts: list[float] = []
    for k in range(full):
        inside = [w for w in words if k * cycle_s <= w["start"] < (k + 1) * cycle_s]
        texts.append(" ".join(w["word"] for w in inside))
        firsts.append(inside[0]["start"] - k * cycle_s if inside else float("nan"))
    drift = max((abs(f - firsts[0]) for f in firsts), default=0.0)
    last_end = float(words[-1]["end"]) if words else 0.0
    if full and last_end < (full - 1) * cycle_s:
        errors.append(f"finals stop at {last_end:.1f} s of a {call_s:.1f} s call")
    after = [s for s in call.samples if s.audio_s >= min(WARMUP_AUDIO_S, call_s / 5)] or call.samples
    start, end = (int(m) for m in median_ends([s.rss_kib for s in after])) if after else (0, 0)
    same = sum(t == texts[1] for t in texts[1:]) if len(texts) > 1 else 0
    worst = max((wer([texts[0]], [t]) for t in texts[1:]), default=0.0) if texts and texts[0] else 0.0
    return Report(full, same, worst, drift, last_end, call_s, start, end, errors)


async def longcall(args: argparse.Namespace) -> tuple[Report, Call]:
    cycle = speech_audio(None if args.synthetic else args.data, seed=args.seed)
    # Whole 60 ms steps (two 30 ms VAD frames, three 20 ms model frames): every cycle then meets the VAD
    # and the model at the same phase, so cycles can be compared word for word (a shift of a few ms
    # changes what a weak model reads).
    step = 2 * SAMPLE_RATE * 60 // 1000
    cycle += bytes(-len(cycle) % step)
    cycle_s = len(cycle) / 2 / SAMPLE_RATE
    total = int(args.minutes * 60 * SAMPLE_RATE) * 2
    audio = (cycle * (total // len(cycle) + 1))[:total]
    log(f"call: {total / 2 / SAMPLE_RATE / 60:.1f} min, cycles of {cycle_s:.1f} s, speed {args.speed:g}x")
    server_args = ["--model", f"en={args.model}", *args.server_args]
    async with ServerProcess(server_args) as server:
        call = await stream_call(server, audio, args.speed, args.sample_every)
        code = await server.stop()
        errors = list(call.errors) + [line.strip() for line in server.error_lines()]
        if code != 0:
            errors.append(f"server exit status {code}")
    return analyse(call, cycle_s, total / 2 / SAMPLE_RATE, errors), call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamer.bench longcall", description=__doc__)
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the call (default 60)")
    parser.add_argument("--speed", type=float, default=4.0, help="times real time (default 4)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with MANIFEST.tsv and audio")
    parser.add_argument("--synthetic", action="store_true", help="tone phrases instead of --data (fake:tone)")
    parser.add_argument("--model", default="builtin:en", help="model spec (default builtin:en)")
    parser.add_argument("--sample-every", type=float, default=30.0, help="seconds between RSS samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "server_args", nargs="*", help="more server flags after `--`, e.g. -- --threads 2", default=[]
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.speed <= 0:
        parser.error("--minutes and --speed must be positive")
    report, _ = asyncio.run(longcall(args))
    for error in report.errors[:20]:
        log(f"error: {error}")
    log(report.line(args.minutes, args.speed))
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
