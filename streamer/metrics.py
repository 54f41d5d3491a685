"""Prometheus metrics of one server app, in a registry of its own (so tests can build many apps).

`metrics = Metrics()`; the server updates the instruments below and serves `metrics.render()` at
`/metrics`. Labels: `model` is the served model name, `kind` live or prerecorded, `reason` a short word.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from streamer.batcher import BatchStats

# Latency of results: a partial arrives within a hop plus a batch; a final waits for a full pass.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
INFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    """Every instrument the server exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._engine_time: _EngineTime | None = None
        self.active_streams = Gauge(
            "streamer_active_streams", "Streams being transcribed now.", ["kind"], registry=r
        )
        self.streams = Counter("streamer_streams", "Streams accepted.", ["model", "kind"], registry=r)
        self.audio_seconds = Counter(
            "streamer_audio_seconds", "Seconds of audio received (per channel).", ["model"], registry=r
        )
        self.batch_size = Histogram(
            "streamer_batch_size",
            "Windows per engine batch (the _count is the number of batches).",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "streamer_inference_seconds",
            "Wall time of one engine batch.",
            ["model"],
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.partial_latency = Histogram(
            "streamer_partial_latency_seconds",
            "From receiving the audio behind a partial's window to sending the partial.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.final_latency = Histogram(
            "streamer_final_latency_seconds",
            "From receiving the audio (or control message) that triggered a final pass to sending the final.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "streamer_rejected_requests", "Requests refused, by reason.", ["reason"], registry=r
        )
        self.engine_failures = Counter(
            "streamer_engine_failures", "Streams ended by an engine failure.", ["model"], registry=r
        )
        self.closed = Counter(
            "streamer_streams_closed", "Live streams ended, by reason.", ["reason"], registry=r
        )
        self.interims_dropped = Counter(
            "streamer_interims_dropped",
            "Interim results dropped because their client read too slowly (finals never are).",
            ["model"],
            registry=r,
        )
        self.coalesced_hops = Counter(
            "streamer_coalesced_hops",
            "Partial-window hops merged into a later, longer window because the stream's previous window "
            "was still running: interim results coming less often because the model is behind (degrading).",
            ["model"],
            registry=r,
        )
        self.dialect_streams = Counter(
            "streamer_dialect_streams",
            "Live connections accepted, by wire dialect (deepgram, twilio, audiohook, ...).",
            ["dialect"],
            registry=r,
        )
        self.webhook_messages = Counter(
            "streamer_webhook_messages",
            "Webhook messages by kind (final: finals and closing Metadata; interim) and outcome: delivered, "
            "failed (after every retry, or no room left: each also logged), dropped (interims only).",
            ["kind", "outcome"],
            registry=r,
        )
        self.webhook_retries = Counter(
            "streamer_webhook_retries", "Webhook posts retried after a failed attempt.", registry=r
        )
        self.watchers = Gauge("streamer_watchers", "Open /v1/watch connections.", registry=r)
        # Set when /metrics is read (ServerState.refresh_gauges): load, leaks and queues at a glance.
        self.live_sessions = Gauge(
            "streamer_live_sessions",
            "Live streams holding server resources, from handshake until everything is released.",
            registry=r,
        )
        self.tasks = Gauge("streamer_asyncio_tasks", "Tasks alive on the server's event loop.", registry=r)
        self.max_streams = Gauge(
            "streamer_max_streams",
            "Concurrent streams this server admits (--max-streams); active/max is its stream load.",
            registry=r,
        )
        self.stream_load = Gauge(
            "streamer_stream_load_ratio",
            "Streams being transcribed over --max-streams (1: full); what the autoscaler reads.",
            registry=r,
        )
        self.draining = Gauge(
            "streamer_draining",
            "1 from SIGTERM on: not ready, no new streams, the running ones finish (--drain-timeout).",
            registry=r,
        )
        self.engine_busy = Gauge(
            "streamer_engine_busy_ratio",
            "Share of the load window (--load-window) the model's inference lanes were busy (1: all).",
            ["model"],
            registry=r,
        )
        self.queue_wait = Gauge(
            "streamer_engine_queue_wait_seconds",
            "Mean time the batches of the load window waited in the model's queue.",
            ["model"],
            registry=r,
        )
        self.queued_windows = Gauge(
            "streamer_queued_windows", "Windows waiting in the model's batch queue.", ["model"], registry=r
        )
        self.failed_batches = Gauge(
            "streamer_engine_failed_batches",
            "Engine calls that raised since start (a failed batch of several windows is retried one by one).",
            ["model"],
            registry=r,
        )

    def track_batcher(self, model: str, stats: BatchStats) -> None:
        """Export `stats` (read at every scrape) as the model's engine-time counters; see `_EngineTime`."""
        if self._engine_time is None:
            self._engine_time = _EngineTime()
            self.registry.register(self._engine_time)
        self._engine_time.stats[model] = stats

    def track_worker(
        self,
        worker: str,
        streams: Callable[[], int],
        accepted: Callable[[], int],
        engine_busy: Callable[[], dict[str, float]],
    ) -> None:
        """In a worker process: export its own view with a `worker` label (see `_WorkerView`)."""
        self.registry.register(_WorkerView(worker, streams, accepted, engine_busy))

    def observe_batch(self, model: str, size: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(size)
        self.inference_seconds.labels(model).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """(body, content type) for the /metrics response."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _EngineTime(Collector):
    """Counters read from each model's `BatchStats` when /metrics is scraped (the benchmarks diff them):

    - `streamer_inference_cpu_seconds_total`: CPU time of the inference threads inside `engine.forward`.
      Engines that fan a batch out to other threads (the built-in model's replicas, torch's intra-op
      pool) spend part of their CPU outside that thread, so this undercounts them; the load benchmark
      also reads per-thread CPU from /proc for that reason.
    - `streamer_inference_busy_seconds_total`: wall time inside `engine.forward`.
    - `streamer_model_audio_seconds_total`: seconds of audio sent through the model (windows overlap, so
      this over `streamer_audio_seconds_total` is the compute ratio).
    - `streamer_skipped_windows_total`: windows dropped before inference (superseded or cancelled).
    """

    def __init__(self) -> None:
        self.stats: dict[str, BatchStats] = {}

    def collect(self) -> Iterator[Metric]:
        families = (
            ("streamer_inference_cpu_seconds", "CPU seconds of the inference threads inside engine.forward."),
            ("streamer_inference_busy_seconds", "Wall seconds inside engine.forward."),
            ("streamer_model_audio_seconds", "Seconds of audio the model ran over (windows overlap)."),
            ("streamer_skipped_windows", "Windows skipped before inference (superseded or cancelled)."),
        )
        out = [CounterMetricFamily(name, text, labels=["model"]) for name, text in families]
        for model, s in self.stats.items():
            out[0].add_metric([model], s.cpu_s)
            out[1].add_metric([model], s.busy_s)
            out[2].add_metric([model], s.audio_samples / 16000)
            out[3].add_metric([model], float(s.skipped))
        yield from out


class _WorkerView(Collector):
    """One worker's share of the server, labelled `worker` (`w1`, ...), read at every scrape. The
    supervisor merges the workers' texts into one (`streamer.metrics_merge`), where every other family
    is summed over the workers and these show how the streams spread:

    - `streamer_worker_active_streams`: streams and requests this worker runs now;
    - `streamer_worker_streams_total`: streams and requests it took since it started;
    - `streamer_worker_engine_busy_ratio`: its copy of each model's busy share of the load window.
    """

    def __init__(
        self,
        worker: str,
        streams: Callable[[], int],
        accepted: Callable[[], int],
        engine_busy: Callable[[], dict[str, float]],
    ) -> None:
        self.worker = worker
        self._streams = streams
        self._accepted = accepted
        self._engine_busy = engine_busy

    def collect(self) -> Iterator[Metric]:
        active = GaugeMetricFamily(
            "streamer_worker_active_streams", "Streams this worker process runs now.", labels=["worker"]
        )
        active.add_metric([self.worker], float(self._streams()))
        accepted = CounterMetricFamily(
            "streamer_worker_streams", "Streams and requests this worker process took.", labels=["worker"]
        )
        accepted.add_metric([self.worker], float(self._accepted()))
        busy = GaugeMetricFamily(
            "streamer_worker_engine_busy_ratio",
            "Share of the load window this worker's copy of the model was busy.",
            labels=["worker", "model"],
        )
        for model, fraction in self._engine_busy().items():
            busy.add_metric([self.worker, model], fraction)
        yield from (active, accepted, busy)
