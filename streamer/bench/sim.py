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

Many streams on one priced accelerator (`streamer.bench.gpu` predicts capacity this way):

    core = Core(cost=table_cost, max_batch=64)   # cost(priority, window lengths) -> seconds of one call
    result = simulate_load([OurSystem(stand_in, core) for _ in audios], core, audios)
    result.stats.final, result.busy_s, result.mean_batch

Every stream's frames arrive in one time order; when the core comes free it takes the most urgent job and
every queued job of the same priority (up to `max_batch`), as the server's batcher does (finals only with
finals), and the call lasts what `cost` says, whatever the stand-in engine that computes the log-probs
spent. (The batcher's 10 ms wait for company is not simulated.)

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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamer import SAMPLE_RATE
from streamer.bench.load import ClientRun, ClientStats, analyse_client, client_seed, frame_sizes
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
BatchCost = Callable[[int, Sequence[int]], float]
"""Seconds one model call takes, from its priority (0 finals, 1 partial windows) and window lengths."""


@dataclass(order=True)
class Job:
    priority: int
    seq: int
    issued: float = field(compare=False)
    work: Callable[[], object] = field(compare=False)
    done: Callable[[object, float], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)
    samples: int = field(default=0, compare=False)


class Core:
    """One worker in virtual time (see the module docstring); `busy_cpu` sums the time of its jobs.

    `Core()` runs one job at a time for the CPU time it really takes; `Core(cost, max_batch)` runs up to
    `max_batch` jobs of one priority per call, for `cost(priority, [samples, ...])` seconds.
    """

    def __init__(self, cost: BatchCost | None = None, max_batch: int = 1) -> None:
        self._queue: list[Job] = []
        self._seq = itertools.count()
        self._running: tuple[float, list[Job], list[object]] | None = None
        self.cost = cost
        self.max_batch = max(1, max_batch) if cost is not None else 1
        self.free_at = 0.0
        self.busy_cpu = 0.0
        self.jobs = 0
        self.batches = 0
        self.skipped = 0

    def submit(
        self,
        priority: int,
        issued: float,
        work: Callable[[], object],
        done: Callable[[object, float], None],
        samples: int = 0,
    ) -> Job:
        job = Job(priority, next(self._seq), issued, work, done, samples=samples)
        heapq.heappush(self._queue, job)
        return job

    def _next(self) -> Job | None:
        while self._queue:
            job = heapq.heappop(self._queue)
            if not job.cancelled:
                return job
            self.skipped += 1
        return None

    def _company(self, head: Job) -> list[Job]:
        """Queued jobs of the head's priority that join its call, in queue order."""
        batch = [head]
        while len(batch) < self.max_batch and self._queue and self._queue[0].priority == head.priority:
            job = heapq.heappop(self._queue)
            if job.cancelled:
                self.skipped += 1
            else:
                batch.append(job)
        return batch

    def advance(self, until: float) -> None:
        """Run and deliver every job that finishes by virtual time `until`."""
        while True:
            if self._running is None:
                head = self._next()
                if head is None:
                    return
                start = max(self.free_at, head.issued)
                batch = self._company(head)
                cpu = time.thread_time()
                results = [job.work() for job in batch]
                cpu = time.thread_time() - cpu
                took = cpu if self.cost is None else self.cost(head.priority, [job.samples for job in batch])
                self.busy_cpu += took
                self.jobs += len(batch)
                self.batches += 1
                self._running = (start + took, batch, results)
            finish, batch, results = self._running
            if finish > until:
                return
            self._running = None
            self.free_at = finish
            for job, result in zip(batch, results, strict=True):
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
                len(request.audio),
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


System = OurSystem | NaiveSystem | PocketsphinxSystem


def _drive(
    systems: Sequence[System],
    core: Core,
    audios: Sequence[FloatArray],
    seeds: Sequence[int],
    frame_ms: tuple[int, int],
) -> list[ClientRun]:
    """Every stream's frames (the load benchmark's, `frame_sizes`), at real-time pace, in one time order
    through one core; the client runs."""
    runs = [ClientRun(i, len(audio) / SAMPLE_RATE) for i, audio in enumerate(audios)]
    positions = [0] * len(audios)
    closed = [0.0] * len(audios)
    sizes = [
        iter(frame_sizes(2 * len(audio), frame_ms, seed)) for audio, seed in zip(audios, seeds, strict=True)
    ]

    def next_arrival(i: int) -> tuple[float, int, int]:
        end = positions[i] + next(sizes[i]) // 2
        return end / SAMPLE_RATE, i, end  # a frame arrives with its last sample

    arrivals = [next_arrival(i) for i in range(len(audios)) if len(audios[i])]
    heapq.heapify(arrivals)
    while arrivals:
        now, i, end = heapq.heappop(arrivals)
        core.advance(now)
        frame = audios[i][positions[i] : end]
        positions[i] = end
        runs[i].frames.append((end, now))
        systems[i].feed(frame, now)
        if end < len(audios[i]):
            heapq.heappush(arrivals, next_arrival(i))
        else:
            systems[i].close(now)
            closed[i] = now
    core.advance(math.inf)
    for run, system, ended in zip(runs, systems, closed, strict=True):
        last = max((t for t, _ in system.messages), default=ended)
        run.messages = [*system.messages, (max(ended, last), {"type": "Metadata"})]
        run.close_code = 1000
    return runs


def simulate(
    system: System,
    core: Core,
    audio: FloatArray,
    *,
    speech_s: float,
    seed: int = 0,
    frame_ms: tuple[int, int] = (20, 100),
    endpointing_s: float = 0.4,
) -> SimResult:
    """Stream `audio` through `system` in virtual time (see the module docstring)."""
    cpu = time.thread_time()
    (run,) = _drive([system], core, [audio], [seed], frame_ms)
    total = time.thread_time() - cpu
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


@dataclass
class LoadResult:
    """Many streams through one priced core (`simulate_load`): their latencies together, and the core's
    busy time and batches."""

    streams: int
    audio_s: float
    stats: ClientStats
    busy_s: float
    batches: int
    windows: int
    model_audio_s: float

    @property
    def mean_batch(self) -> float:
        return self.windows / self.batches if self.batches else math.nan

    @property
    def busy_fraction(self) -> float:
        """Core busy time per second of a mean stream: near 1, it cannot keep up much longer."""
        return self.busy_s / self.audio_s * self.streams if self.audio_s else math.nan


def simulate_load(
    systems: Sequence[OurSystem],
    core: Core,
    audios: Sequence[FloatArray],
    *,
    seed: int = 0,
    frame_ms: tuple[int, int] = (20, 100),
    endpointing_s: float = 0.4,
) -> LoadResult:
    """Stream `audios[i]` through `systems[i]`, all at once on `core` (see the module docstring); client
    `i` sends its frames in the sizes the load benchmark's client `i` uses with the same `seed`."""
    seeds = [client_seed(seed, i) for i in range(len(audios))]
    runs = _drive(systems, core, audios, seeds, frame_ms)
    stats = ClientStats()
    for run in runs:
        stats.add(analyse_client(run, endpointing_s))
    return LoadResult(
        len(audios),
        sum(r.audio_s for r in runs),
        stats,
        core.busy_cpu,
        core.batches,
        core.jobs,
        sum(s.model_samples for s in systems) / SAMPLE_RATE,
    )
