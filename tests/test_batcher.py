"""Tier 2 (fake engine): dynamic batching across concurrent requests, failures, skips and shutdown."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from streamer.batcher import Batcher, BatcherConfig
from streamer.engine.fake import ToneEngine
from streamer.errors import ConfigError, EngineError, OverloadError


def _window(seed: int, n: int = 8000) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


async def _answers_every_window_correctly(batcher: Batcher, count: int, priority: int = 1) -> None:
    """Send `count` windows at once; each answer must be what the engine gives that window alone."""
    windows = [_window(i) for i in range(count)]
    outs = await asyncio.gather(*(batcher.infer(w, priority) for w in windows))
    reference = ToneEngine()
    for w, out in zip(windows, outs, strict=True):
        np.testing.assert_array_equal(out, reference.forward([w])[0])


async def test_concurrent_requests_are_batched_and_answered_correctly() -> None:
    engine = ToneEngine(delay_s=0.02)
    batcher = Batcher(engine, BatcherConfig(max_batch=8, max_wait_ms=5))
    batcher.start()
    await _answers_every_window_correctly(batcher, 40)
    assert max(batcher.stats.batch_sizes) == 8
    assert sum(batcher.stats.batch_sizes) == 40
    assert batcher.stats.batches < 40 / 2
    # Inference ran on one thread, never on the event loop's.
    assert len(engine.threads_seen) == 1 and threading.get_ident() not in engine.threads_seen
    await batcher.stop()


async def test_max_batch_is_capped_by_the_engine() -> None:
    engine = ToneEngine(max_batch=1, delay_s=0.005)
    batcher = Batcher(engine, BatcherConfig(max_batch=16))
    batcher.start()
    await asyncio.gather(*(batcher.infer(_window(i)) for i in range(6)))
    assert set(batcher.stats.batch_sizes) == {1}
    await batcher.stop()


async def test_a_failing_batch_fails_exactly_its_requests() -> None:
    poison = _window(99)
    engine = ToneEngine(fail=lambda ws: any(w is poison for w in ws))
    batcher = Batcher(engine, BatcherConfig(max_batch=1))
    batcher.start()
    # Batches of one: only the poisoned window's request fails, and the loop lives on.
    results = await asyncio.gather(
        batcher.infer(_window(1)), batcher.infer(poison), batcher.infer(_window(2)), return_exceptions=True
    )
    assert isinstance(results[1], EngineError)
    assert not isinstance(results[0], BaseException) and not isinstance(results[2], BaseException)
    assert batcher.stats.failed_batches == 1
    ok = await batcher.infer(_window(3))
    assert ok.shape[1] == len(engine.vocabulary)
    await batcher.stop()


async def test_a_bad_window_in_a_shared_batch_fails_only_its_own_request() -> None:
    poison = _window(99)
    engine = ToneEngine(delay_s=0.01, fail=lambda ws: any(w is poison for w in ws))
    batcher = Batcher(engine, BatcherConfig(max_batch=8, max_wait_ms=20))
    batcher.start()
    results = await asyncio.gather(
        *(batcher.infer(w) for w in [_window(1), poison, _window(2), _window(3)]), return_exceptions=True
    )
    assert [isinstance(r, EngineError) for r in results] == [False, True, False, False]
    assert 4 in engine.batch_sizes  # they did share a batch first
    await batcher.stop()


async def test_cancelled_requests_are_skipped() -> None:
    engine = ToneEngine(delay_s=0.05)
    batcher = Batcher(engine, BatcherConfig(max_batch=1, max_wait_ms=0))
    batcher.start()
    first = asyncio.create_task(batcher.infer(_window(0)))
    await asyncio.sleep(0.01)  # the first window is now running
    doomed = [asyncio.create_task(batcher.infer(_window(i))) for i in range(1, 4)]
    await asyncio.sleep(0)
    for t in doomed:
        t.cancel()
    await first
    await asyncio.sleep(0.1)
    assert batcher.stats.skipped == 3
    assert batcher.stats.windows == 1
    await batcher.stop()


async def test_stop_resolves_everything_pending() -> None:
    engine = ToneEngine(delay_s=0.05)
    batcher = Batcher(engine, BatcherConfig(max_batch=2, max_wait_ms=0, max_queue=64))
    batcher.start()
    tasks = [asyncio.create_task(batcher.infer(_window(i))) for i in range(10)]
    await asyncio.sleep(0.02)
    await batcher.stop()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(t.done() for t in tasks)
    assert any(isinstance(r, OverloadError) for r in results)
    with pytest.raises(OverloadError):
        await batcher.infer(_window(0))


async def test_queue_is_bounded() -> None:
    engine = ToneEngine(delay_s=0.05)
    batcher = Batcher(engine, BatcherConfig(max_batch=1, max_wait_ms=0, max_queue=2))
    batcher.start()
    tasks = [asyncio.create_task(batcher.infer(_window(i))) for i in range(8)]
    await asyncio.sleep(0.01)
    assert batcher.queued <= 2
    await asyncio.gather(*tasks)
    await batcher.stop()


def test_invalid_config() -> None:
    with pytest.raises(ConfigError):
        BatcherConfig(max_batch=0)


async def test_finals_overtake_queued_partial_windows() -> None:
    engine = ToneEngine(delay_s=0.03)
    batcher = Batcher(engine, BatcherConfig(max_batch=1, max_wait_ms=0))
    batcher.start()
    order: list[str] = []

    async def run(name: str, priority: int) -> None:
        await batcher.infer(_window(len(order) + 10), priority)
        order.append(name)

    first = asyncio.create_task(run("busy", 1))
    await asyncio.sleep(0.01)  # the engine is now busy with the first window
    tasks = [asyncio.create_task(run(f"partial{i}", 1)) for i in range(3)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(run("final", 0)))
    await asyncio.gather(first, *tasks)
    assert order[:2] == ["busy", "final"]
    assert order[2:] == ["partial0", "partial1", "partial2"]
    await batcher.stop()


class _LengthPaced(ToneEngine):
    """Takes 0.1 s per second of audio in a call, like a real model (a long final pass is slow)."""

    def forward(self, windows):  # type: ignore[no-untyped-def]
        time.sleep(0.1 * sum(len(w) for w in windows) / 16000)
        return super().forward(windows)


async def test_lanes_run_batches_side_by_side() -> None:
    engine = ToneEngine(max_batch=1, concurrency=2, delay_s=0.05)
    batcher = Batcher(engine, BatcherConfig(max_batch=8, max_wait_ms=5))
    assert batcher.lanes == 2 and batcher.max_batch == 1
    batcher.start()
    await _answers_every_window_correctly(batcher, 6, priority=0)
    assert engine.max_active == 2  # never more calls at once than the engine allows
    assert len(engine.threads_seen) == 2 and threading.get_ident() not in engine.threads_seen
    assert batcher.load.lanes == 2
    await batcher.stop()


async def test_partial_windows_leave_a_lane_free_for_finals() -> None:
    engine = ToneEngine(max_batch=1, concurrency=2, delay_s=0.1)
    batcher = Batcher(engine, BatcherConfig(max_batch=1, max_wait_ms=0))
    batcher.start()
    order: list[str] = []

    async def run(name: str, priority: int) -> None:
        await batcher.infer(_window(len(order)), priority)
        order.append(name)

    # Three partial windows at once: one lane runs them one after another, the other stays free ...
    partials = [asyncio.create_task(run(f"partial {i}", 1)) for i in range(3)]
    await asyncio.sleep(0.03)
    assert engine.max_active == 1
    # ... so a final that comes meanwhile runs at once instead of after the second partial window.
    await run("final", 0)
    await asyncio.gather(*partials)
    assert order == ["partial 0", "final", "partial 1", "partial 2"]
    assert engine.max_active == 2
    await batcher.stop()


@pytest.mark.parametrize("lanes", [1, 2])
async def test_a_long_pass_holds_up_others_only_without_a_second_lane(lanes: int) -> None:
    engine = _LengthPaced(max_batch=1, concurrency=lanes)
    batcher = Batcher(engine, BatcherConfig(max_batch=1, max_wait_ms=0))
    batcher.start()
    order: list[str] = []

    async def run(name: str, seconds: float, priority: int) -> None:
        await batcher.infer(_window(len(order), int(seconds * 16000)), priority)
        order.append(name)

    long = asyncio.create_task(run("long final", 3.0, 0))  # 0.3 s on a lane
    await asyncio.sleep(0.02)  # it is running now
    await asyncio.gather(long, run("short final", 0.5, 0))
    assert order == (["long final", "short final"] if lanes == 1 else ["short final", "long final"])
    await batcher.stop()


async def test_a_final_is_never_batched_with_partial_windows() -> None:
    engine = ToneEngine(max_batch=8, delay_s=0.05)
    batcher = Batcher(engine, BatcherConfig(max_batch=8, max_wait_ms=20))
    batcher.start()
    busy = asyncio.create_task(batcher.infer(_window(0), 1))
    await asyncio.sleep(0.01)  # the engine is busy with it; the rest queue up meanwhile
    partials = [asyncio.create_task(batcher.infer(_window(i), 1)) for i in range(1, 4)]
    finals = [asyncio.create_task(batcher.infer(_window(i), 0)) for i in range(4, 6)]
    await asyncio.gather(busy, *partials, *finals)
    # The busy window alone, then the two finals together, then the three partial windows together.
    assert engine.batch_sizes == [1, 2, 3]
    await batcher.stop()
