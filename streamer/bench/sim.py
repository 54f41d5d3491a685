"""Single-stream recognisers on one simulated core, in virtual time, for like-for-like comparisons.

    core = Core()
    result = simulate("ours", OurSystem(engine, core), core, audio, seed=0)
    result.stats.final, result.engine_cpu_s, result.text

Audio arrives at real-time pace in random 20-100 ms frames; frame k "arrives" at the stream time of its
last sample. Every model call a system makes is a job on one core: jobs run one at a time, finals before
partial windows, and a job's duration is the CPU time it really took (`time.thread_time`, so a noisy
machine does not distort it). Results are stamped with the virtual time their job finished, turned into
the protocol's JSON shapes and analysed by `streamer.bench.load.analyse_client`, so partial, final and
end-of-speech latency mean exactly what they mean in the load benchmark. Only the waiting is simulated.

Systems (same VAD, webrtcvad with the server's defaults, for all three):
- `OurSystem`: the real sans-I/O `Session` (overlapping windows, final pass per segment, early final).
- `NaiveSystem`: what several popular servers do: every hop, decode the whole segment so far (when the core
  is busy, only the newest such request runs), and one more pass over the whole segment at its end.
- `PocketsphinxSystem`: CMU PocketSphinx (pip `pocketsphinx`, its bundled US English model) decoding each
  segment incrementally as audio arrives, with a partial hypothesis every 0.2 s and the final at the end.
"""

from __future__ import annotations

import heapq
import importlib
import itertools
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamer import SAMPLE_RATE
from streamer.bench.load import ClientRun, ClientStats, analyse_client
from streamer.ctc import FloatArray
from streamer.engine.base import Engine
from streamer.session import Session, StreamingConfig, WindowRequest
from streamer.transcript import Event, SpeechStarted, Transcript, Word, render_words
from streamer.vad import (
    SegmentAudio,
    SegmentEnd,
    Segmenter,
    SegmentEvent,
    SegmentStart,
    SpeechDetector,
    VadConfig,
)

Message = dict[str, Any]


@dataclass(order=True)
class Job:
    priority: int
    seq: int
    issued: float = field(compare=False)
    work: Callable[[], object] = field(compare=False)
    done: Callable[[object, float], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)


class Core:
    """One worker in virtual time (see the module docstring); `busy_cpu` sums the CPU of its jobs."""

    def __init__(self) -> None:
        self._queue: list[Job] = []
        self._seq = itertools.count()
        self._running: tuple[float, Job, object] | None = None
        self.free_at = 0.0
        self.busy_cpu = 0.0
        self.jobs = 0
        self.skipped = 0

    def submit(
        self, priority: int, issued: float, work: Callable[[], object], done: Callable[[object, float], None]
    ) -> Job:
        job = Job(priority, next(self._seq), issued, work, done)
        heapq.heappush(self._queue, job)
        return job

    def _next(self) -> Job | None:
        while self._queue:
            job = heapq.heappop(self._queue)
            if not job.cancelled:
                return job
            self.skipped += 1
        return None

    def advance(self, until: float) -> None:
        """Run and deliver every job that finishes by virtual time `until`."""
        while True:
            if self._running is None:
                job = self._next()
                if job is None:
                    return
                start = max(self.free_at, job.issued)
                cpu = time.thread_time()
                result = job.work()
                cpu = time.thread_time() - cpu
                self.busy_cpu += cpu
                self.jobs += 1
                self._running = (start + cpu, job, result)
            finish, job, result = self._running
            if finish > until:
                return
            self._running = None
            self.free_at = finish
            job.done(result, finish)


def results_message(t: Transcript) -> Message:
    """A Transcript as the `Results` JSON the server would send (the fields `analyse_client` reads)."""
    return {
        "type": "Results",
        "start": round(t.start, 3),
        "duration": round(t.duration, 3),
        "is_final": t.is_final,
        "speech_final": t.speech_final,
        "channel": {
            "alternatives": [
                {
                    "transcript": t.text,
                    "words": [
                        {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)} for w in t.words
                    ],
                }
            ]
        },
    }


class _Base:
    name = "system"

    def __init__(self, core: Core) -> None:
        self.core = core
        self.messages: list[tuple[float, Message]] = []
        self.model_samples = 0
        self.finals: list[str] = []

    def _emit(self, now: float, event: Event) -> None:
        if isinstance(event, SpeechStarted):
            self.messages.append((now, {"type": "SpeechStarted", "timestamp": round(event.timestamp, 3)}))
        elif isinstance(event, Transcript):
            self.messages.append((now, results_message(event)))
            if event.is_final and event.text:
                self.finals.append(event.text)

    def feed(self, samples: FloatArray, now: float) -> None:
        raise NotImplementedError

    def close(self, now: float) -> None:
        raise NotImplementedError


class OurSystem(_Base):
    """The real `Session`; each window request is one job (finals and commits before partial windows)."""

    name = "ours"

    def __init__(
        self,
        engine: Engine,
        core: Core,
        config: StreamingConfig | None = None,
        detector: SpeechDetector | None = None,
    ) -> None:
        super().__init__(core)
        self.engine = engine
        self.session = Session(engine, config or StreamingConfig(), detector=detector)
        self._jobs: dict[int, Job] = {}

    def feed(self, samples: FloatArray, now: float) -> None:
        self.session.receive_audio(samples)
        self._pump(now)

    def close(self, now: float) -> None:
        self.session.close()
        self._pump(now)

    def _pump(self, now: float) -> None:
        for request in self.session.take_requests():
            self._jobs[request.id] = self.core.submit(
                1 if request.kind == "window" else 0,
                now,
                self._work(request),
                self._landed(request),
            )
        for rid in self.session.take_cancelled():
            job = self._jobs.pop(rid, None)
            if job is not None:
                job.cancelled = True
        for event in self.session.take_events():
            self._emit(now, event)

    def _work(self, request: WindowRequest) -> Callable[[], object]:
        def work() -> object:
            self.model_samples += len(request.audio)
            return self.engine.forward([request.audio])[0]

        return work

    def _landed(self, request: WindowRequest) -> Callable[[object, float], None]:
        def done(logprobs: object, now: float) -> None:
            self._jobs.pop(request.id, None)
            assert isinstance(logprobs, np.ndarray)
            self.session.receive_logprobs(request.id, logprobs)
            self._pump(now)

        return done


@dataclass
class _NaiveSegment:
    start: int
    chunks: list[FloatArray] = field(default_factory=list)
    length: int = 0
    next_hop: int = 0
    queued: Job | None = None
    reason: str | None = None
    finalised: bool = False

    def audio(self) -> FloatArray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)


class _VadSystem(_Base):
    def __init__(self, core: Core, vad: VadConfig | None, detector: SpeechDetector | None = None) -> None:
        super().__init__(core)
        self.segmenter = Segmenter(vad or VadConfig(), detector)

    def feed(self, samples: FloatArray, now: float) -> None:
        for event in self.segmenter.push(samples):
            self._segment_event(event, now)

    def close(self, now: float) -> None:
        for event in self.segmenter.flush():
            self._segment_event(event, now)

    def _segment_event(self, event: SegmentEvent, now: float) -> None:
        raise NotImplementedError


class NaiveSystem(_VadSystem):
    """Re-decode the whole growing segment every `hop_s` of its audio; one full pass at its end."""

    name = "naive"

    def __init__(
        self,
        engine: Engine,
        core: Core,
        vad: VadConfig | None = None,
        hop_s: float = 0.7,
        detector: SpeechDetector | None = None,
    ) -> None:
        super().__init__(core, vad, detector)
        self.engine = engine
        self.hop = round(hop_s * SAMPLE_RATE)
        self.coalesced = 0
        self._segment: _NaiveSegment | None = None

    def _segment_event(self, event: SegmentEvent, now: float) -> None:
        if isinstance(event, SegmentStart):
            self._segment = _NaiveSegment(event.sample, next_hop=self.hop)
            if not event.continued:
                self._emit(now, SpeechStarted(0, event.trigger_sample / SAMPLE_RATE))
            return
        seg = self._segment
        if seg is None:
            return
        if isinstance(event, SegmentAudio):
            seg.chunks.append(event.samples)
            seg.length += len(event.samples)
            while seg.length >= seg.next_hop:
                seg.next_hop += self.hop
                if seg.queued is not None:  # not started yet: the newer request replaces it
                    seg.queued.cancelled = True
                    self.coalesced += 1
                seg.queued = self.core.submit(
                    1, now, self._decode(seg, final=False), self._landed(seg, final=False)
                )
        elif isinstance(event, SegmentEnd):
            seg.reason = event.reason
            if seg.queued is not None:
                seg.queued.cancelled = True
            self.core.submit(0, now, self._decode(seg, final=True), self._landed(seg, final=True))
            self._segment = None

    def _decode(self, seg: _NaiveSegment, final: bool) -> Callable[[], object]:
        def work() -> object:
            if not final:
                seg.queued = None
                if seg.finalised or seg.reason is not None:
                    return None
            audio = seg.audio()  # whatever has arrived by now: the newest buffer
            if self.engine.num_frames(len(audio)) == 0:
                return (len(audio), None)
            self.model_samples += len(audio)
            return (len(audio), self.engine.forward([audio])[0])

        return work

    def _landed(self, seg: _NaiveSegment, final: bool) -> Callable[[object, float], None]:
        def done(result: object, now: float) -> None:
            if result is None or seg.finalised:
                return
            assert isinstance(result, tuple)
            length, logprobs = result
            words: list[Word] = []
            if logprobs is not None:
                words, _ = render_words(
                    logprobs,
                    blank_id=self.engine.blank_id,
                    delimiter_id=self.engine.word_delimiter_id,
                    spell=self.engine.spell,
                    frame_samples=self.engine.frame_samples,
                    first_frame=0,
                    origin_sample=seg.start,
                )
            start = seg.start / SAMPLE_RATE
            transcript = Transcript(
                0, start, length / SAMPLE_RATE, tuple(words), final, final and seg.reason == "silence"
            )
            if final:
                seg.finalised = True
            self._emit(now, transcript)

        return done


class PocketsphinxSystem(_VadSystem):
    """PocketSphinx decoding each VAD segment as its audio arrives (one job per VAD frame)."""

    name = "pocketsphinx"

    def __init__(self, core: Core, vad: VadConfig | None = None, partial_every_s: float = 0.2) -> None:
        super().__init__(core, vad)
        pocketsphinx = importlib.import_module("pocketsphinx")  # optional: pip install pocketsphinx
        self.decoder = pocketsphinx.Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")
        self.partial_every = round(partial_every_s * SAMPLE_RATE)
        self._start = 0
        self._fed = 0
        self._last_partial = 0

    def _words(self) -> list[Word]:
        words = []
        for seg in self.decoder.seg():
            text = str(seg.word)
            if text.startswith(("<", "[")) or not text:
                continue
            text = text.split("(")[0]
            start = self._start / SAMPLE_RATE + seg.start_frame / 100
            words.append(
                Word(
                    text,
                    round(start, 3),
                    round(self._start / SAMPLE_RATE + (seg.end_frame + 1) / 100, 3),
                    1.0,
                )
            )
        return words

    def _segment_event(self, event: SegmentEvent, now: float) -> None:
        if isinstance(event, SegmentStart):

            def begin() -> object:
                self._start, self._fed, self._last_partial = event.sample, 0, 0
                self.decoder.start_utt()
                return None

            self.core.submit(0, now, begin, lambda _r, _t: None)
            if not event.continued:
                self._emit(now, SpeechStarted(0, event.trigger_sample / SAMPLE_RATE))
        elif isinstance(event, SegmentAudio):
            pcm = (np.clip(event.samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()

            def process() -> object:
                self.decoder.process_raw(pcm, False, False)
                self._fed += len(pcm) // 2
                self.model_samples += len(pcm) // 2
                if self._fed - self._last_partial < self.partial_every:
                    return None
                self._last_partial = self._fed
                return Transcript(
                    0, self._start / SAMPLE_RATE, self._fed / SAMPLE_RATE, tuple(self._words()), False
                )

            self.core.submit(0, now, process, self._landed)
        elif isinstance(event, SegmentEnd):
            reason = event.reason

            def end() -> object:
                self.decoder.end_utt()
                words = tuple(self._words())
                return Transcript(
                    0, self._start / SAMPLE_RATE, self._fed / SAMPLE_RATE, words, True, reason == "silence"
                )

            self.core.submit(0, now, end, self._landed)

    def _landed(self, result: object, now: float) -> None:
        if isinstance(result, Transcript):
            self._emit(now, result)


@dataclass
class SimResult:
    """One system over one stream: analysed latencies, compute and text."""

    name: str
    audio_s: float
    speech_s: float
    model_audio_s: float
    engine_cpu_s: float
    total_cpu_s: float
    stats: ClientStats
    text: str
    skipped: int = 0

    @property
    def compute_ratio(self) -> float:
        """Seconds of audio through the model per second of speech (nan for non-window systems)."""
        return self.model_audio_s / self.speech_s if self.speech_s else math.nan


def simulate(
    system: OurSystem | NaiveSystem | PocketsphinxSystem,
    core: Core,
    audio: FloatArray,
    *,
    speech_s: float,
    seed: int = 0,
    frame_ms: tuple[int, int] = (20, 100),
    endpointing_s: float = 0.4,
) -> SimResult:
    """Stream `audio` through `system` in virtual time (see the module docstring)."""
    rng = random.Random(seed)
    run = ClientRun(0, len(audio) / SAMPLE_RATE)
    cpu = time.thread_time()
    pos = 0
    now = 0.0
    while pos < len(audio):
        frame = audio[pos : pos + 16 * rng.randint(*frame_ms)]
        pos += len(frame)
        now = pos / SAMPLE_RATE
        core.advance(now)
        run.frames.append((pos, now))
        system.feed(frame, now)
    system.close(now)
    core.advance(math.inf)
    total = time.thread_time() - cpu
    run.messages = [*system.messages, (max(now, core.free_at), {"type": "Metadata"})]
    run.close_code = 1000
    return SimResult(
        system.name,
        len(audio) / SAMPLE_RATE,
        speech_s,
        system.model_samples / SAMPLE_RATE,
        core.busy_cpu,
        total,
        analyse_client(run, endpointing_s),
        " ".join(system.finals),
        core.skipped + getattr(system, "coalesced", 0),
    )
