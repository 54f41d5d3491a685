"""Prometheus metrics of one server app, in a registry of its own (so tests can build many apps).

`metrics = Metrics()`; the server updates the instruments below and serves `metrics.render()` at
`/metrics`. Labels: `model` is the served model name, `kind` live or prerecorded, `reason` a short word.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Latency of results: a partial arrives within a hop plus a batch; a final waits for a full pass.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
INFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    """Every instrument the server exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
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

    def observe_batch(self, model: str, size: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(size)
        self.inference_seconds.labels(model).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """(body, content type) for the /metrics response."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
