"""Sans-I/O streaming recognition for one stream and one channel.

Feed it with `receive_audio(samples)` (16 kHz float32), `finalize()` (flush what is pending) and `close()`
(end of stream); collect `take_requests()` (windows for the model), answer each with
`receive_logprobs(request_id, logprobs)` (or `fail_request`), and drain `take_events()`. No I/O, no
awaiting, no model: the caller (runner.py) moves requests to the batcher and events to the client.

How finals are made (see `StreamingConfig`): partial transcripts come from cheap overlapping windows
(`partial_plan`); a final comes from one pass of the model over the audio not yet finalised, at the end of a
speech segment, so it equals an offline pass over that segment. A segment that goes on for long is
finalised in pieces: a pass over the pending audio is cut in the middle of its longest blank run (a pause
between words), far enough from the live edge that the kept frames had right context.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from streamer import SAMPLE_RATE
from streamer.ctc import FloatArray
from streamer.decoding import BeamResult, KeytermTrie, WordDecoder, final_decoder
from streamer.engine.base import Engine
from streamer.errors import ConfigError
from streamer.transcript import (
    Event,
    SpeechStarted,
    Transcript,
    UtteranceEnd,
    Word,
    render_words,
)
from streamer.vad import (
    SegmentAudio,
    Segmenter,
    SegmentEvent,
    SegmentMayEnd,
    SegmentPause,
    SegmentStart,
    SpeechDetector,
    SpeechResumed,
    VadConfig,
)
from streamer.windows import FramePlan, Geometry, Stitcher, Window, WindowPlan

RequestKind = Literal["window", "commit", "pause", "final"]


@dataclass(frozen=True)
class StreamingConfig:
    """How a session turns segments into windows and finals. Defaults, and why:

    - `partial_plan` 0.3 s left, 0.7 s hop, 0.1 s right: a partial at least every 0.7 s of speech (under a
      second even with 100 ms client frames) for 1.57x model compute in steady state; partials are replaced
      by finals, so they trade accuracy for cost. With the final pass, 2.3x in all (measured, issue note).
    - `final_pass` on: one model pass over the not-yet-final audio at the segment end, so finals equal
      an offline pass; off, finals are the stitched windows (cheaper, less exact at window edges).
    - `commit_after_s` off: the VAD already splits segments at pauses after 7 s (hard at 15 s), which bounds
      the final pass and keeps finals equal to the offline pass. When set (for a larger VAD maximum, or
      `endpointing=false` streams), pending speech beyond it is finalised in pieces cut at a pause the model
      finds, at least `commit_right_s` before the live edge. Measured on real speech, such cuts disagree
      with one pass over the whole segment on about 3-7% of the words near them.
    - `context_s` 2 s of left context for passes that do not start at the segment start (after an
      utterance end inside a segment, `VadConfig.pause_ms`, or a cut). Long stream of ../shared/data at
      endpointing 25 ms (utterances end at 210 ms pauses), offline WER: context 0.5 s 0.2615, 1 s 0.2628,
      2 s 0.2588 (segments at the default 400 ms: 0.2588).
    - `early_final` on: the final pass starts when a pause reaches `VadConfig.early_final_ms` before the
      endpoint (the VAD already knows the audio the segment would end with); if speech resumes the pass is
      discarded. Finals then arrive about that much sooner after the endpoint, for a few wasted passes.
    """

    partial_plan: WindowPlan = field(default_factory=WindowPlan)
    final_pass: bool = True
    commit_after_s: float | None = None
    commit_right_s: float = 1.0
    context_s: float = 2.0
    min_cut_run: int = 3
    """Blank frames in a row that count as a pause where a long segment may be cut."""
    early_final: bool = True
    coalesce: bool = True
    """At most one partial window of a stream in flight; hops that come due meanwhile join the next one
    (up to `coalesce_max_s` of kept audio). Interim results then come less often, not later, when the
    machine is short of CPU; finals are unaffected."""
    coalesce_max_s: float = 6.0
    interim_results: bool = True
    utterance_end_ms: int | None = None
    vad: VadConfig = field(default_factory=VadConfig)

    def __post_init__(self) -> None:
        if self.commit_after_s is not None and self.commit_after_s <= self.commit_right_s + 1.0:
            raise ConfigError("commit_after_s must exceed commit_right_s by more than 1 s")
        if self.context_s < 0:
            raise ConfigError("context_s must be >= 0")
        if self.utterance_end_ms is not None and self.utterance_end_ms < 1000:
            raise ConfigError("utterance_end_ms must be at least 1000")


@dataclass(frozen=True)
class WindowRequest:
    """Audio for one model pass. `audio` is 16 kHz float32; answer with `Session.receive_logprobs`."""

    id: int
    audio: FloatArray
    kind: RequestKind
    channel: int
    decode: FinalDecode | None = None
    """For a pass that makes a final with a word decoder (a beam search): the caller may decode its
    output where the model ran and pass the result to `receive_logprobs`, which saves the event loop that
    work."""


@dataclass(frozen=True)
class FinalDecode:
    """Decode output frames [first, end) of a pass, the first being frame `offset` of its segment, as
    `decoder.decode(out[first:end], frame_offset=offset, keyterms=keyterms)` (`prev_token=None`)."""

    first: int
    end: int
    offset: int
    decoder: WordDecoder
    keyterms: KeytermTrie | None = None

    def __call__(self, out: FloatArray) -> BeamResult:
        return self.decoder.decode(
            out[self.first : self.end], frame_offset=self.offset, keyterms=self.keyterms
        )


@dataclass
class _Pending:
    segment: _Segment
    kind: RequestKind
    window: Window


class _Segment:
    """One VAD segment: its audio, what is final, and the stitcher that feeds partials."""

    def __init__(self, start_sample: int, plan: FramePlan, geometry: Geometry) -> None:
        self.start_sample = start_sample
        self._buf = np.zeros(16000, dtype=np.float32)
        self.length = 0
        self.end_reason: str | None = None
        self.from_finalize = False
        self.region = 0  # first frame not yet final
        self.carry: int | None = None  # token at frame region-1, for CTC collapse across the cut
        self.stitcher = Stitcher(plan, geometry)
        self.inflight: dict[int, Window] = {}  # planned window id -> window, in plan order
        self.landed: dict[int, FloatArray] = {}
        self.commit_inflight = False
        self.final_issued = False
        self.final_frames: FloatArray | None = None  # set when the final pass has landed
        # An early final pass over the audio the segment would have if the current pause ends it:
        # (request id, that length in samples, its log-probs once landed).
        self.early: tuple[int, int] | None = None
        self.early_result: FloatArray | None = None
        self.early_decoded: BeamResult | None = None
        self.final_decoded: BeamResult | None = None  # the final's words, decoded where the model ran
        # Utterance ends inside the segment (`SegmentPause`): (end sample, the held silence then) of each
        # pause not yet passed over, one pass at a time; and cut pieces landed but not yet emitted
        # (kept frames, their first frame, end sample), which leave before the segment's final.
        self.pauses: deque[tuple[int, FloatArray]] = deque()
        self.pause_inflight = False
        self.ready: deque[tuple[FloatArray, int, int, BeamResult | None]] = deque()

    def append(self, samples: FloatArray) -> None:
        need = self.length + len(samples)
        if need > len(self._buf):
            grown = np.zeros(max(need, 2 * len(self._buf)), dtype=np.float32)
            grown[: self.length] = self._buf[: self.length]
            self._buf = grown
        self._buf[self.length : need] = samples
        self.length = need

    def audio(self, start: int, end: int) -> FloatArray:
        return self._buf[start:end].copy()

    def audio_through(self, start: int, end: int, held: FloatArray) -> FloatArray:
        """Samples [start, end), where the segment may not hold the last ones yet: `held` is the audio
        that ends at `end` (silence the VAD holds back until it knows whether the segment goes on)."""
        have = min(end, self.length)
        missing = end - have
        audio = self.audio(start, have)
        return np.concatenate((audio, held[len(held) - missing :])) if missing > 0 else audio

    @property
    def ended(self) -> bool:
        return self.end_reason is not None


class Session:
    """Streaming recognition state machine for one channel of one stream."""

    def __init__(
        self,
        engine: Engine,
        config: StreamingConfig,
        channel: int = 0,
        detector: SpeechDetector | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.channel = channel
        self.geometry = Geometry(engine.frame_samples, engine.receptive_field, engine.num_frames)
        self._final_decoder = final_decoder(engine)
        self._keyterms: KeytermTrie | None = None
        self._plan = FramePlan.from_seconds(config.partial_plan, engine.frame_samples)
        fs = engine.frame_samples
        self._context = round(config.context_s * SAMPLE_RATE / fs)
        self._commit_after = (
            None if config.commit_after_s is None else round(config.commit_after_s * SAMPLE_RATE)
        )
        self._commit_right = round(config.commit_right_s * SAMPLE_RATE / fs)
        self._max_hops = max(1, round(config.coalesce_max_s / config.partial_plan.hop_s))
        self._segmenter = Segmenter(config.vad, detector)
        self._segments: deque[_Segment] = deque()
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._requests: list[WindowRequest] = []
        self._cancelled: list[int] = []
        self._events: list[Event] = []
        self._last_partial: tuple[str, float] | None = None
        self._last_word_end: float | None = None
        self._utterance_end_due = False
        self._closed = False
        self._final_through = 0
        self._announced = False  # SpeechStarted or a partial with words went out since the last final
        self.samples_received = 0
        self.samples_to_model = 0
        self.speech_samples = 0
        self.coalesced_hops = 0
        """Partial hops merged into a later, longer window because the previous one was still running:
        how much this stream's interim results degraded to keep up."""

    # ---- input -------------------------------------------------------------------------------------

    @property
    def stream_time(self) -> float:
        return self.samples_received / SAMPLE_RATE

    def receive_audio(self, samples: FloatArray) -> None:
        """Feed 16 kHz float32 audio of any length."""
        if self._closed:
            raise RuntimeError("session is closed")
        self.samples_received += len(samples)
        self._apply(self._segmenter.push(samples))
        self._schedule()
        self._check_utterance_end()

    def finalize(self) -> None:
        """Flush: what is pending becomes final (`from_finalize`); the stream stays open."""
        self._apply(self._segmenter.flush())
        if self._segments:
            self._segments[-1].from_finalize = True
        else:
            self._emit_empty_finalize()
        self._schedule()

    def close(self) -> None:
        """End of stream: flush like `finalize`, then accept no more audio."""
        if self._closed:
            return
        self._apply(self._segmenter.flush())
        self._closed = True
        self._schedule()

    def hand_over(self) -> None:
        """End of this connection at a server restart, when the client will resume elsewhere and replay
        its audio since the last final: finish the segments that have ended, drop the open one (so the
        replica that resumes the stream transcribes that utterance whole instead of both cutting it)."""
        if self._closed:
            return
        self._closed = True
        if self._segments and not self._segments[-1].ended:
            open_segment = self._segments.pop()
            for request_id, pending in list(self._pending.items()):
                if pending.segment is open_segment:
                    del self._pending[request_id]
                    self._cancelled.append(request_id)
        self._schedule()

    @property
    def done(self) -> bool:
        """Closed and nothing left in flight: every final has been emitted."""
        return self._closed and not self._segments and not self._pending

    @property
    def pending_requests(self) -> int:
        return len(self._pending)

    def take_cancelled(self) -> list[int]:
        """Ids of requests whose answers are no longer needed (their work may be skipped)."""
        out, self._cancelled = self._cancelled, []
        return out

    def take_requests(self) -> list[WindowRequest]:
        out, self._requests = self._requests, []
        return out

    def take_events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def set_keyterms(self, decoder: WordDecoder | None, keyterms: KeytermTrie | None) -> None:
        """Finals requested from now on are decoded by `decoder` favouring `keyterms` (see
        `streamer.decoding.KeytermCompiler`); `keyterms` None: the engine's own decoder, no keyterms."""
        self._final_decoder = decoder if keyterms is not None else final_decoder(self.engine)
        self._keyterms = keyterms

    def receive_logprobs(
        self, request_id: int, logprobs: FloatArray, decoded: BeamResult | None = None
    ) -> None:
        """Answer to a request from `take_requests` (any order); `decoded`: see `WindowRequest.decode`."""
        entry = self._pending.pop(request_id, None)
        if entry is None:
            return
        seg = entry.segment
        if entry.kind == "window":
            seg.landed[request_id] = logprobs
            self._stitch(seg)
        elif entry.kind == "commit":
            seg.commit_inflight = False
            self._commit(seg, entry.window, logprobs)
        elif entry.kind == "pause":
            seg.pause_inflight = False
            self._pause_landed(seg, entry.window, logprobs, decoded)
        elif seg.early is not None and seg.early[0] == request_id and not seg.final_issued:
            seg.early_result = logprobs  # kept until the pause proves to be the endpoint
            seg.early_decoded = decoded
        else:
            self._final(seg, entry.window, logprobs, decoded=decoded)
        self._schedule()

    def fail_request(self, request_id: int) -> None:
        """The engine failed on a request: forget it (the caller reports the error and closes)."""
        self._pending.pop(request_id, None)

    def cancel(self) -> None:
        """Client gone: drop everything in flight; no more events."""
        self._cancelled.extend(self._pending)
        self._pending.clear()
        self._segments.clear()
        self._requests.clear()
        self._closed = True

    # ---- segmentation --------------------------------------------------------------------------------

    def _apply(self, events: list[SegmentEvent]) -> None:
        for ev in events:
            if isinstance(ev, SegmentStart):
                self._segments.append(_Segment(ev.sample, self._plan, self.geometry))
                if not ev.continued:
                    self._events.append(SpeechStarted(self.channel, ev.trigger_sample / SAMPLE_RATE))
                    self._announced = True
                self._utterance_end_due = False
            elif isinstance(ev, SegmentAudio):
                self._segments[-1].append(ev.samples)
                self.speech_samples += len(ev.samples)
            elif isinstance(ev, SegmentMayEnd):
                self._start_early_final(self._segments[-1], ev.tail)
            elif isinstance(ev, SegmentPause):
                seg = self._segments[-1]
                seg.pauses.append((seg.length + len(ev.tail), ev.tail))
            elif isinstance(ev, SpeechResumed):
                self._events.append(SpeechStarted(self.channel, ev.trigger_sample / SAMPLE_RATE))
                self._announced = True
                self._utterance_end_due = False
            else:
                self._segments[-1].end_reason = ev.reason

    # ---- planning ------------------------------------------------------------------------------------

    def _schedule(self) -> None:
        for index, seg in enumerate(list(self._segments)):
            self._maybe_pause_pass(seg)
            if self.config.final_pass:
                if self.config.interim_results and index == 0 and not seg.ended:
                    self._plan_windows(seg)
                self._maybe_commit(seg)
            else:
                self._plan_windows(seg)
            self._maybe_final(seg)

    def _request(
        self, seg: _Segment, kind: RequestKind, window: Window, tail: FloatArray | None = None
    ) -> int:
        """Queue a pass over the window's samples of the segment (the last ones from `tail`, audio that
        ends at `window.end` and that the segment may not hold yet)."""
        rid = next(self._ids)
        if tail is None:
            audio = seg.audio(window.start, window.end)
        else:
            audio = seg.audio_through(window.start, window.end, tail)
        self.samples_to_model += len(audio)
        self._pending[rid] = _Pending(seg, kind, window)
        decode = None
        if self._final_decoder is not None and kind in ("final", "pause"):
            first = window.first_frame
            decode = FinalDecode(
                window.keep_from - first,
                window.keep_to - first,
                window.keep_from,
                self._final_decoder,
                self._keyterms,
            )
        self._requests.append(WindowRequest(rid, audio, kind, self.channel, decode))
        return rid

    def _plan_windows(self, seg: _Segment) -> None:
        final = seg.ended and not self.config.final_pass
        # Coalescing: one partial window in flight at a time; while it runs, the hops that come due wait
        # and the next window keeps all of them. A machine that keeps up sees no change (a window lands
        # well within a hop); one that falls behind sends fewer, longer windows, not a growing queue.
        coalesce = self.config.coalesce
        max_hops = self._max_hops if coalesce else 1
        while not (coalesce and seg.inflight and not final):
            window = seg.stitcher.next_window(seg.length, final=final, max_hops=max_hops)
            if window is None:
                return
            if not window.final:
                self.coalesced_hops += (window.keep_to - window.keep_from) // self._plan.hop - 1
            seg.inflight[self._request(seg, "window", window)] = window

    def _stitch(self, seg: _Segment) -> None:
        # Join landed windows in plan order; drop windows planned before the region moved.
        for rid in list(seg.inflight):
            if rid not in seg.landed:
                break
            window = seg.inflight.pop(rid)
            logprobs = seg.landed.pop(rid)
            if window.keep_from == seg.stitcher.stitched:
                seg.stitcher.add(window, logprobs)
        if not self.config.final_pass:
            self._maybe_commit(seg)
        self._emit_partial()

    def _maybe_commit(self, seg: _Segment) -> None:
        """Finalise a long segment's pending audio in pieces, cut at a pause."""
        if seg.ended or seg.commit_inflight or seg.pause_inflight or self._commit_after is None:
            return
        fs = self.engine.frame_samples
        if self.config.final_pass:
            if seg.length - seg.region * fs < self._commit_after:
                return
            start = max(0, seg.region - self._context) * fs
            total = self.engine.num_frames(seg.length)
            window = Window(start, seg.length, seg.region, total, False, fs)
            seg.commit_inflight = True
            self._request(seg, "commit", window)
            return
        stitched = seg.stitcher.stitched
        if (stitched - seg.region) * fs >= self._commit_after:
            frames = seg.stitcher.frames()[seg.region :]
            self._cut(seg, frames)

    def _commit(self, seg: _Segment, window: Window, logprobs: FloatArray) -> None:
        if seg.ended and seg.final_issued:
            return  # the final pass covers it
        self._cut(seg, window.kept(logprobs))

    def _cut(self, seg: _Segment, frames: FloatArray) -> None:
        """Finalise `frames` (from `seg.region`) up to the middle of their best pause."""
        usable = len(frames) - self._commit_right
        if usable <= 1:
            return
        # Search the later half only, so that every cut finalises a good share of what is pending.
        low = usable // 2
        cut = low + _pause_cut(
            frames[low:usable], self.engine.blank_id, self.engine.word_delimiter_id, self.config
        )
        self._emit_final(seg, frames[:cut], seg.region, speech_final=False, from_finalize=False)
        seg.region += cut
        if self.config.final_pass:
            seg.stitcher = Stitcher(self._plan, self.geometry, start_frame=seg.region)
            self._drop_partial_windows(seg)
        self._last_partial = None

    def _maybe_pause_pass(self, seg: _Segment) -> None:
        """Pass over the audio up to the oldest pause not yet passed over (one at a time, so each starts
        at the cut the one before made): the utterance ended there, so that audio becomes final."""
        if seg.pause_inflight or seg.commit_inflight:
            return
        fs = self.engine.frame_samples
        while seg.pauses:
            end, held = seg.pauses.popleft()
            total = self.engine.num_frames(end)
            if total <= seg.region:
                continue  # nothing since the last cut
            start = max(0, seg.region - self._context) * fs
            seg.pause_inflight = True
            self._request(seg, "pause", Window(start, end, seg.region, total, True, fs), tail=held)
            return

    def _pause_landed(
        self, seg: _Segment, window: Window, logprobs: FloatArray, decoded: BeamResult | None
    ) -> None:
        """The audio up to a pause is final: queue it for emission and go on from there."""
        # It ends at the pause, or where the next piece's first frame begins if that is earlier.
        end = min(window.end, window.keep_to * self.engine.frame_samples)
        seg.ready.append((window.kept(logprobs), window.keep_from, end, decoded))
        seg.region = window.keep_to
        if self.config.final_pass:
            # Partial windows start again from the cut; without a final pass the stitcher goes on, since
            # the segment's final is made of its frames from the cut on.
            seg.stitcher = Stitcher(self._plan, self.geometry, start_frame=seg.region)
            self._drop_partial_windows(seg)
        self._last_partial = None
        self._flush_finals()

    def _start_early_final(self, seg: _Segment, tail: FloatArray) -> None:
        if (
            not (self.config.final_pass and self.config.early_final)
            or seg.final_issued
            or seg.commit_inflight
        ):
            return
        self._forget_early(seg)
        fs = self.engine.frame_samples
        length = seg.length + len(tail)
        total = self.engine.num_frames(length)
        if total <= seg.region:
            return
        start = max(0, seg.region - self._context) * fs
        window = Window(start, length, seg.region, total, True, fs)
        seg.early = (self._request(seg, "final", window, tail=tail), length)

    def _forget_early(self, seg: _Segment) -> None:
        if seg.early is not None:
            if self._pending.pop(seg.early[0], None) is not None:
                self._cancelled.append(seg.early[0])
            seg.early = None
            seg.early_result = None
            seg.early_decoded = None

    def _maybe_final(self, seg: _Segment) -> None:
        if seg.early is not None and not seg.final_issued and (seg.length > seg.early[1] or seg.region > 0):
            self._forget_early(seg)  # speech went on: the pause was not the end
        if not seg.ended or seg.final_issued or seg.pause_inflight or seg.pauses:
            return  # utterances that ended at pauses first, then what remains
        fs = self.engine.frame_samples
        if self.config.final_pass:
            if seg.commit_inflight:
                return  # cut first, then one pass over what remains
            if seg.early is not None and seg.length == seg.early[1]:
                # The pause was the endpoint: the early pass covered exactly this audio.
                seg.final_issued = True
                self._drop_partial_windows(seg)
                if seg.early_result is not None:
                    total = self.engine.num_frames(seg.length)
                    start = max(0, seg.region - self._context) * fs
                    window = Window(start, seg.length, seg.region, total, True, fs)
                    self._final(seg, window, seg.early_result, decoded=seg.early_decoded)
                return  # else it is still in flight and lands as this segment's final
            self._forget_early(seg)
            total = self.engine.num_frames(seg.length)
            start = max(0, seg.region - self._context) * fs
            seg.final_issued = True
            self._drop_partial_windows(seg)  # the final pass supersedes them
            window = Window(start, seg.length, seg.region, max(total, seg.region), True, fs)
            if total <= seg.region:
                self._final(seg, window, np.zeros((0, len(self.engine.vocabulary)), dtype=np.float32))
                return
            self._request(seg, "final", window)
            return
        # Stitched finals: once the stitcher has joined its last window.
        if seg.stitcher.done and not seg.inflight:
            seg.final_issued = True
            frames = seg.stitcher.frames()[seg.region :]
            window = Window(0, seg.length, seg.region, seg.region + len(frames), True, fs)
            self._final(seg, window, frames, kept=True)

    def _drop_partial_windows(self, seg: _Segment) -> None:
        """Forget partial windows still in flight; `take_cancelled` tells the caller to skip them."""
        for rid in seg.inflight:
            self._pending.pop(rid, None)
            self._cancelled.append(rid)
        seg.inflight.clear()
        seg.landed.clear()

    def _final(
        self,
        seg: _Segment,
        window: Window,
        logprobs: FloatArray,
        kept: bool = False,
        decoded: BeamResult | None = None,
    ) -> None:
        seg.final_frames = logprobs if kept else window.kept(logprobs)
        seg.final_decoded = decoded
        self._flush_finals()

    def _flush_finals(self) -> None:
        # Finals leave in segment order even when passes land out of order; a segment's pieces cut at
        # pauses before its own final.
        while self._segments:
            seg = self._segments[0]
            while seg.ready:
                frames, first, end, decoded = seg.ready.popleft()
                self._emit_final(
                    seg,
                    frames,
                    first,
                    speech_final=True,
                    from_finalize=False,
                    end_sample=end,
                    decoded=decoded,
                )
            if seg.final_frames is None:
                break
            self._segments.popleft()
            self._emit_final(
                seg,
                seg.final_frames,
                seg.region,
                speech_final=seg.end_reason == "silence",
                from_finalize=seg.from_finalize,
                end_sample=seg.length,
                decoded=seg.final_decoded,
            )
        self._emit_partial()
        # Audio may have run ahead of inference: the gap after this final may already be there.
        self._check_utterance_end()

    # ---- output --------------------------------------------------------------------------------------

    def _emit_final(
        self,
        seg: _Segment,
        frames: FloatArray,
        first_frame: int,
        *,
        speech_final: bool,
        from_finalize: bool,
        end_sample: int | None = None,
        decoded: BeamResult | None = None,
    ) -> None:
        words, last = self._words(seg, frames, first_frame, final=True, decoded=decoded)
        seg.carry = last
        fs = self.engine.frame_samples
        start = (seg.start_sample + first_frame * fs) / SAMPLE_RATE
        end = seg.start_sample + (end_sample if end_sample is not None else (first_frame + len(frames)) * fs)
        end_s = max(start, end / SAMPLE_RATE)
        self._final_through = max(self._final_through, end)
        if not words and not from_finalize:
            # No speech in it: never an utterance end. It still goes out (not as speech_final) when
            # something announced speech since the last final, so that a client can close its interim.
            speech_final = False
            if not self._announced:
                return
        self._announced = False
        if words:
            self._last_word_end = words[-1].end
            self._utterance_end_due = self.config.utterance_end_ms is not None
        self._events.append(
            Transcript(
                self.channel,
                round(start, 3),
                round(end_s - start, 3),
                tuple(words),
                is_final=True,
                speech_final=speech_final,
                from_finalize=from_finalize,
                final_through=self._final_through,
            )
        )
        self._last_partial = None

    def _emit_empty_finalize(self) -> None:
        t = round(self.stream_time, 3)
        self._events.append(Transcript(self.channel, t, 0.0, (), True, False, True, self._final_through))

    def _emit_partial(self) -> None:
        if not self.config.interim_results or not self._segments:
            return
        seg = self._segments[0]
        if seg.final_frames is not None:
            return
        stitched = seg.stitcher.frames()
        # Stitched frames, then the latest window's provisional ones, from the first frame not yet final
        # (a cut at a pause can be ahead of what the stitcher has joined).
        skip = seg.region - seg.stitcher.start_frame
        parts = [stitched[skip:]] if len(stitched) > skip else []
        provisional = seg.stitcher.provisional
        if provisional is not None and len(provisional):
            parts.append(provisional[max(0, skip - len(stitched)) :])
        if not parts or not sum(len(p) for p in parts):
            return
        frames = np.concatenate(parts) if len(parts) > 1 else parts[0]
        # Sent even when empty: a client sees progress at least once a hop during speech.
        words, _ = self._words(seg, frames, seg.region)
        fs = self.engine.frame_samples
        start = (seg.start_sample + seg.region * fs) / SAMPLE_RATE
        end = (seg.start_sample + (seg.region + len(frames)) * fs) / SAMPLE_RATE
        text = " ".join(w.word for w in words)
        if self._last_partial == (text, end):
            return
        self._last_partial = (text, end)
        self._announced = self._announced or bool(words)
        self._events.append(
            Transcript(self.channel, round(start, 3), round(end - start, 3), tuple(words), is_final=False)
        )

    def _words(
        self,
        seg: _Segment,
        frames: FloatArray,
        first_frame: int,
        final: bool = False,
        decoded: BeamResult | None = None,
    ) -> tuple[list[Word], int]:
        # Finals use the engine's final decoder (a beam search, as the offline pass does); interim
        # results stay greedy, which is cheap and is replaced by the final anyway. A result decoded where
        # the model ran assumed no token carried in: usable when none is (a cut in a pause, or a segment's
        # start), else decoded again here.
        carried = seg.carry is not None and seg.carry != self.engine.blank_id
        return render_words(
            frames,
            blank_id=self.engine.blank_id,
            delimiter_id=self.engine.word_delimiter_id,
            spell=self.engine.spell,
            frame_samples=self.engine.frame_samples,
            first_frame=first_frame,
            origin_sample=seg.start_sample,
            prev_token=seg.carry,
            decoder=self._final_decoder if final else None,
            decoded=decoded if final and not carried else None,
            keyterms=self._keyterms,
        )

    def _check_utterance_end(self) -> None:
        ms = self.config.utterance_end_ms
        if ms is None or not self._utterance_end_due or self._last_word_end is None:
            return
        if self._segmenter.in_speech:
            return
        if self.stream_time - self._last_word_end >= ms / 1000:
            self._utterance_end_due = False
            self._events.append(UtteranceEnd(self.channel, round(self._last_word_end, 3)))


def _pause_cut(frames: FloatArray, blank_id: int, delimiter_id: int | None, config: StreamingConfig) -> int:
    """Frame index to cut at: the middle of the longest run of blank/delimiter frames (latest on ties).

    Falls back to the end when no run of `min_cut_run` frames exists (a word may then be split; the CTC
    collapse still carries the last token across).
    """
    best = frames.argmax(axis=1)
    quiet = best == blank_id
    if delimiter_id is not None:
        quiet |= best == delimiter_id
    best_len, best_mid = 0, len(frames)
    run = 0
    for i, q in enumerate(quiet.tolist()):
        run = run + 1 if q else 0
        if run >= best_len and run >= config.min_cut_run:
            best_len, best_mid = run, i + 1 - run // 2
    return best_mid
