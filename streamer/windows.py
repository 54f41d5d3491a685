"""Overlapping-window planning and stitching over one speech segment (pure logic).

A window is left context + hop + right context. Each window's hop frames are kept; right-context frames are
provisional; the last window of a segment runs without right context and keeps everything to the end. Use
`Stitcher(plan, geometry)`: `next_window(available, final)` plans the next window over the segment's first
`available` samples, `add(window, logprobs)` stitches its kept frames (in plan order).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamer import SAMPLE_RATE
from streamer.errors import ConfigError

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class WindowPlan:
    """Window sizes in seconds; rounded to whole model frames by `FramePlan.from_seconds`."""

    left_s: float = 0.3
    hop_s: float = 0.7
    right_s: float = 0.1

    def __post_init__(self) -> None:
        if self.left_s < 0 or self.right_s < 0:
            raise ConfigError("window left and right context must be >= 0 s")
        if self.hop_s <= 0:
            raise ConfigError("window hop must be > 0 s")

    @property
    def compute_ratio(self) -> float:
        """Model audio seconds per audio second in steady state: (L + H + R) / H."""
        return (self.left_s + self.hop_s + self.right_s) / self.hop_s


@dataclass(frozen=True)
class Geometry:
    """What the planner needs to know of a model: frame stride, receptive field, frame count."""

    frame_samples: int
    receptive_field: int
    num_frames: Callable[[int], int]

    @property
    def lookahead(self) -> int:
        """Samples past a frame's start that it reads beyond one stride."""
        return max(0, self.receptive_field - self.frame_samples)


@dataclass(frozen=True)
class FramePlan:
    left: int
    hop: int
    right: int

    @classmethod
    def from_seconds(cls, plan: WindowPlan, frame_samples: int) -> FramePlan:
        def frames(seconds: float) -> int:
            return round(seconds * SAMPLE_RATE / frame_samples)

        return cls(frames(plan.left_s), max(1, frames(plan.hop_s)), frames(plan.right_s))


def partial_window_samples(plan: WindowPlan, frame_samples: int, receptive_field: int) -> int:
    """Samples in a partial window once a segment is under way (left + hop + right context, plus what
    the last frame reads beyond its stride): the fixed shape most model calls of a stream have."""
    frames = FramePlan.from_seconds(plan, frame_samples)
    return (frames.left + frames.hop + frames.right) * frame_samples + max(0, receptive_field - frame_samples)


@dataclass(frozen=True)
class Window:
    """Samples [start, end) of the segment; frames [keep_from, keep_to) (segment frame indices) kept."""

    start: int
    end: int
    keep_from: int
    keep_to: int
    final: bool
    frame_samples: int

    @property
    def first_frame(self) -> int:
        """Segment frame index of the window's output frame 0."""
        return self.start // self.frame_samples

    def kept(self, logprobs: FloatArray) -> FloatArray:
        """The window's kept frames out of its full output."""
        return logprobs[self.keep_from - self.first_frame : self.keep_to - self.first_frame]

    def provisional(self, logprobs: FloatArray) -> FloatArray:
        """Frames after the kept ones (right context): shown in partials, replaced later."""
        return logprobs[self.keep_to - self.first_frame :]


class Stitcher:
    """Plans the windows of one segment from frame `start_frame` on and joins their kept frames."""

    def __init__(self, plan: FramePlan, geometry: Geometry, start_frame: int = 0) -> None:
        self.plan = plan
        self.geometry = geometry
        self.start_frame = start_frame
        self._planned = start_frame  # frames covered by windows already planned
        self._stitched = start_frame  # frames already joined
        self._parts: list[FloatArray] = []
        self.provisional: FloatArray | None = None
        self.done = False

    @property
    def planned(self) -> int:
        return self._planned

    @property
    def stitched(self) -> int:
        return self._stitched

    def next_window(self, available: int, final: bool = False, max_hops: int = 1) -> Window | None:
        """The next window over the segment's first `available` samples, or None if it cannot run yet.

        With `final=True`, `available` is the segment's whole length: the window reaches its end with no
        right context and keeps every remaining frame; after it the stitcher plans nothing more. With
        `max_hops` > 1 the window keeps as many whole hops as the audio allows, up to that many: one
        longer window over audio that several would have covered (fewer, cheaper passes when behind).
        """
        if self.done:
            return None
        p, g, fs = self.plan, self.geometry, self.geometry.frame_samples
        start = max(0, self._planned - p.left) * fs
        if final:
            self.done = True
            total = g.num_frames(available)
            if total <= self._planned:
                return None
            window = Window(start, available, self._planned, total, True, fs)
        else:
            room = (available - g.lookahead) // fs - p.right - self._planned  # frames keepable now
            hops = min(max_hops, room // p.hop)
            if hops < 1:
                return None
            keep_to = self._planned + hops * p.hop
            end = (keep_to + p.right) * fs + g.lookahead
            window = Window(start, end, self._planned, keep_to, False, fs)
        self._planned = window.keep_to
        return window

    def add(self, window: Window, logprobs: FloatArray) -> None:
        """Join a window's kept frames; windows must arrive in the order they were planned."""
        if window.keep_from != self._stitched:
            raise ValueError(f"window keeps frames from {window.keep_from}, expected {self._stitched}")
        kept = window.kept(logprobs)
        if len(kept) != window.keep_to - window.keep_from:
            raise ValueError(
                f"window [{window.start}, {window.end}) gave {len(logprobs)} frames, "
                f"too few to keep [{window.keep_from}, {window.keep_to})"
            )
        self._parts.append(kept)
        self._stitched = window.keep_to
        self.provisional = window.provisional(logprobs)

    def frames(self) -> FloatArray:
        """All stitched frames so far, from `start_frame`."""
        if len(self._parts) > 1:
            self._parts = [np.concatenate(self._parts)]
        if not self._parts:
            return np.zeros((0, 0), dtype=np.float32)
        return self._parts[0]
