"""How windows share model calls, and how large a batch a device should take (pure logic, no torch).

    groups = length_groups([17680, 80000, 17680], max_batch=16, padded=True)   # [[1], [0, 2]]
    times = time_batch_sizes(seconds_of_one_call)      # BatchTimes(seconds={1: 0.012, 2: 0.013, ...})
    max_batch = pick_max_batch(times.seconds)          # e.g. 32

The transformers engine plans its calls with `length_groups` and, on a GPU with `--max-batch auto`, picks
its batch size with `time_batch_sizes` + `pick_max_batch`; the simulator (`streamer.bench.sim`) prices
batches with the same grouping, and the GPU benchmark (`streamer.bench.gpu`) prints the same choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

MAX_PAD_RATIO = 1.25
"""Longest / shortest window allowed in one padded sub-batch."""
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""Batch sizes timed to choose one; the last is the most `--max-batch auto` ever takes."""
AUTO_BATCH_LIMIT = BATCH_SIZES[-1]
GAIN = 0.10
"""A larger batch is worth it when it costs at least this much less per window."""


def length_groups(
    lengths: Sequence[int], max_batch: int, *, padded: bool, pad_ratio: float = MAX_PAD_RATIO
) -> list[list[int]]:
    """Indices of `lengths` split into model calls of at most `max_batch` windows.

    `padded`: windows of different lengths may share a call (padded to the longest, with an attention
    mask): longest first, and a new call whenever padding would waste more than `pad_ratio` allows, so
    final passes of similar lengths share a call while a 1 s partial window never pays for a 12 s final
    (measured: that halved the streams a CPU holds). Otherwise only equal lengths share a call.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, not {max_batch}")
    if padded:
        groups: list[list[int]] = []
        for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            if groups and len(groups[-1]) < max_batch and lengths[i] * pad_ratio >= lengths[groups[-1][0]]:
                groups[-1].append(i)
            else:
                groups.append([i])
        return groups
    by_length: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        by_length.setdefault(n, []).append(i)
    return [same[k : k + max_batch] for same in by_length.values() for k in range(0, len(same), max_batch)]


def pick_max_batch(seconds: Mapping[int, float], gain: float = GAIN) -> int:
    """The smallest timed batch size beyond which the time per window improves by less than `gain`.

    `seconds` maps batch sizes to the time of one call of that many windows. Every larger size is compared
    (not only the next one), so a dip in one noisy figure does not stop the choice early.
    """
    sizes = sorted(b for b, t in seconds.items() if b >= 1 and t > 0 and math.isfinite(t))
    if not sizes:
        raise ValueError("no usable timings to choose a batch size from")
    per_window = {b: seconds[b] / b for b in sizes}
    for i, b in enumerate(sizes):
        if all(per_window[c] > (1.0 - gain) * per_window[b] for c in sizes[i + 1 :]):
            return b
    return sizes[-1]  # not reached: the largest size always qualifies


@dataclass(frozen=True)
class BatchTimes:
    """Seconds per call by batch size, and why the timing stopped: "sizes" (all timed), "flat" (larger
    batches stopped paying), "memory" (the next size did not fit) or "slow" (a call took too long)."""

    seconds: dict[int, float]
    stopped: str


def time_batch_sizes(
    run: Callable[[int], float | None],
    sizes: Sequence[int] = BATCH_SIZES,
    *,
    gain: float = GAIN,
    flat_steps: int = 2,
    max_call_s: float = math.inf,
) -> BatchTimes:
    """Time growing batches with `run(size)` (seconds of one call, None when it does not fit in memory).

    Stops after `flat_steps` sizes in a row that each improved the time per window by less than `gain`
    (two, so that `pick_max_batch` sees a size beyond its choice), at the first None, and after a call
    slower than `max_call_s`: the timing budget goes where the answer is.
    """
    seconds: dict[int, float] = {}
    flat = 0
    previous: int | None = None
    for size in sizes:
        took = run(size)
        if took is None:
            return BatchTimes(seconds, "memory")
        seconds[size] = took
        if previous is not None:
            improved = took / size < (1.0 - gain) * seconds[previous] / previous
            flat = 0 if improved else flat + 1
        previous = size
        if flat >= flat_steps:
            return BatchTimes(seconds, "flat")
        if took > max_call_s:
            return BatchTimes(seconds, "slow")
    return BatchTimes(seconds, "sizes")
