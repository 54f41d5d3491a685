"""Dynamic batching of window requests from every stream of one model.

Create one `Batcher(engine, config)` per model, `start()` it inside the event loop, and `await
batcher.infer(audio, priority)` from any session task: the call returns the window's log-probs, or raises
the `EngineError` of its window. Lower priorities go first (finals 0, partial windows 1), FIFO within one.
`await batcher.stop()` resolves everything still pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from streamer.engine.base import Engine, FloatArray
from streamer.errors import ConfigError, EngineError, OverloadError
from streamer.load import LoadTracker

log = logging.getLogger(__name__)

BATCH_HISTORY = 10_000


@dataclass(frozen=True)
class BatcherConfig:
    """Defaults: batches of up to 16 windows (the CPU gains little beyond, a GPU gains up to it), a 10 ms
    wait for company (a tenth of a partial hop, so it barely adds latency), 256 queued windows before
    `infer` makes callers wait (backpressure to the sockets instead of memory growth)."""

    max_batch: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 256

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ConfigError("max batch size must be >= 1")
        if self.max_wait_ms < 0:
            raise ConfigError("max batch wait must be >= 0 ms")
        if self.max_queue < 1:
            raise ConfigError("batcher queue size must be >= 1")


@dataclass
class _Item:
    audio: FloatArray
    future: asyncio.Future[FloatArray]
    enqueued: float = field(default_factory=time.perf_counter)
    priority: int = 1
    post: Callable[[FloatArray], object] | None = None
    post_result: object = None


@dataclass
class BatchStats:
    """Counters read by /metrics and the benchmarks."""

    batches: int = 0
    windows: int = 0
    failed_batches: int = 0
    skipped: int = 0
    audio_samples: int = 0
    busy_s: float = 0.0
    """Wall time inside engine.forward, summed over the lanes."""
    cpu_s: float = 0.0
    """CPU time of the inference threads inside engine.forward."""
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=BATCH_HISTORY))
    """Sizes of the most recent batches (bounded: a server runs for months)."""


class Batcher:
    """One loop per model: forms batches (bounded size and wait, no polling) and runs them on the engine's
    `concurrency` inference threads ("lanes"), one batch per lane at a time.

    A batch is formed only when a lane is free, so windows wait in the priority queue (where a final can
    still overtake them) rather than behind a batch already taken. With several lanes, partial windows
    never take the last free one: a final that arrives finds a lane at once instead of waiting for a
    partial window to finish, which matters most when the CPU is short and every pass runs slower.
    """

    def __init__(
        self,
        engine: Engine,
        config: BatcherConfig | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        load: LoadTracker | None = None,
    ) -> None:
        self.engine = engine
        self.config = config or BatcherConfig()
        self.max_batch = max(1, min(self.config.max_batch, engine.max_batch))
        self.stats = BatchStats()
        self.lanes = max(1, engine.concurrency)
        self.load = load or LoadTracker(lanes=self.lanes)
        """Recent busy fraction and queue wait of the inference lanes (admission control reads it)."""
        self._on_batch = on_batch
        self._queue: asyncio.PriorityQueue[tuple[int, int, _Item]] | None = None
        self._seq = itertools.count()
        self._task: asyncio.Task[None] | None = None
        # One thread per lane: most engines are not re-entrant (torch already uses every core per call);
        # engines made of single-core replicas declare more.
        self._executor = ThreadPoolExecutor(max_workers=self.lanes, thread_name_prefix=f"infer-{engine.name}")
        self._free_lanes: asyncio.Semaphore | None = None
        self._lane_tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._running: dict[int, _Item] = {}  # id -> item, for the batches on the lanes
        self._partial_lanes = max(1, self.lanes - 1)
        self._partial_running = 0  # lanes running partial windows
        self._wake = asyncio.Event()  # a final arrived or a partial lane came free

    def start(self) -> None:
        """Start the batching loop on the running event loop (idempotent)."""
        if self._task is None:
            self._queue = asyncio.PriorityQueue(self.config.max_queue)
            self._free_lanes = asyncio.Semaphore(self.lanes)
            self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def infer(self, audio: FloatArray, priority: int = 1) -> FloatArray:
        """Log-probs for one window; waits while the queue is full.

        Finals (priority 0) overtake queued partial windows (1): under load partials arrive later, finals
        keep their latency.
        """
        return (await self.infer_then(audio, priority, None))[0]

    async def infer_then(
        self, audio: FloatArray, priority: int, post: Callable[[FloatArray], object] | None
    ) -> tuple[FloatArray, object]:
        """Like `infer`, and `post(log_probs)` run on the inference thread right after the model, off the
        event loop (e.g. a final's beam search): returns both. A `post` that raises gives None (logged)."""
        if self._closed or self._queue is None:
            raise OverloadError("the model is shutting down")
        future: asyncio.Future[FloatArray] = asyncio.get_running_loop().create_future()
        item = _Item(audio, future, priority=priority, post=post)
        await self._queue.put((priority, next(self._seq), item))
        if priority == 0:
            self._wake.set()
        out = await future
        return out, item.post_result

    async def _run(self) -> None:
        assert self._queue is not None and self._free_lanes is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            await self._free_lanes.acquire()
            try:
                batch = await self._form_batch(queue, loop)
            except BaseException:
                self._free_lanes.release()
                raise
            live = [item for item in batch if not item.future.done()]
            self.stats.skipped += len(batch) - len(live)
            if not live:
                self._free_lanes.release()
                continue
            self._partial_running += live[0].priority > 0  # counted now: the next batch forms before it runs
            task = loop.create_task(self._lane(live), name="batch")
            self._lane_tasks.add(task)
            task.add_done_callback(self._lane_tasks.discard)

    async def _form_batch(
        self, queue: asyncio.PriorityQueue[tuple[int, int, _Item]], loop: asyncio.AbstractEventLoop
    ) -> list[_Item]:
        """The next batch: the most urgent window, then windows of the same priority that join it.

        Finals (priority 0) take only the finals already queued and never wait: a final in a batch waits
        for the whole batch, so a final batched with partial windows would pay for their compute too.
        Partial windows wait up to `max_wait_ms` for company."""
        while True:
            priority, seq, head = await queue.get()
            if priority == 0 or self._partial_running < self._partial_lanes:
                break
            # Every lane partial windows may use is busy: leave the window queued until a final comes
            # (which takes this free lane) or a partial lane frees.
            queue.put_nowait((priority, seq, head))
            self._wake.clear()
            await self._wake.wait()
        batch = [head]
        deadline = loop.time() + (self.config.max_wait_ms / 1000 if priority > 0 else 0.0)
        while len(batch) < self.max_batch:
            if queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    entry = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                entry = queue.get_nowait()
            if entry[0] != priority:
                queue.put_nowait(entry)  # back where it was: its sequence number keeps its place
                break
            batch.append(entry[2])
        return batch

    async def _lane(self, batch: list[_Item]) -> None:
        """Run one batch on a free lane, then free it."""
        assert self._free_lanes is not None
        partial = batch[0].priority > 0
        for item in batch:
            self._running[id(item)] = item
        started = time.perf_counter()
        token = self.load.begin(started - min(item.enqueued for item in batch), started)
        try:
            await self._run_batch(batch)
        finally:
            self.load.end(token)
            for item in batch:
                self._running.pop(id(item), None)
            self._partial_running -= partial
            if partial:
                self._wake.set()
            self._free_lanes.release()

    async def _run_batch(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        windows = [item.audio for item in batch]
        try:
            outputs, wall, cpu = await loop.run_in_executor(self._executor, self._forward, batch)
        except Exception as exc:  # one bad batch never kills the loop
            self.stats.failed_batches += 1
            log.error("engine %s failed on a batch of %d windows: %s", self.engine.name, len(batch), exc)
            if len(batch) > 1:
                # Retry one by one so that only the window that fails (e.g. one bad input) fails its stream.
                for item in batch:
                    await self._run_batch([item])
                return
            error = exc if isinstance(exc, EngineError) else EngineError(f"inference failed: {exc}")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        self.stats.batches += 1
        self.stats.windows += len(batch)
        self.stats.audio_samples += sum(len(w) for w in windows)
        self.stats.busy_s += wall
        self.stats.cpu_s += cpu
        self.stats.batch_sizes.append(len(batch))
        if self._on_batch is not None:
            self._on_batch(len(batch), wall)
        for item, out in zip(batch, outputs, strict=True):
            if not item.future.done():
                item.future.set_result(out)

    def _forward(self, batch: list[_Item]) -> tuple[list[FloatArray], float, float]:
        wall, cpu = time.perf_counter(), time.thread_time()
        outputs = self.engine.forward([item.audio for item in batch])
        elapsed = time.perf_counter() - wall, time.thread_time() - cpu
        for item, out in zip(batch, outputs, strict=False):
            if item.post is not None:
                try:
                    item.post_result = item.post(out)
                except Exception as exc:  # the caller falls back to doing it itself
                    log.error("engine %s: post-processing a window failed: %s", self.engine.name, exc)
        return outputs, *elapsed

    async def stop(self) -> None:
        """Stop the loop; every request still queued fails with OverloadError (idempotent)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        leftovers = list(self._running.values())  # before the lanes stop and forget them
        for task in list(self._lane_tasks):
            task.cancel()
        for task in list(self._lane_tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._queue is not None:
            while not self._queue.empty():
                leftovers.append(self._queue.get_nowait()[2])
        for item in leftovers:
            if not item.future.done():
                item.future.set_exception(OverloadError("the model is shutting down"))
        self._executor.shutdown(wait=True)
