"""One server's Prometheus text from the texts of its worker processes (pure; the supervisor uses it).

    body = merge_expositions([w1_text, w2_text], retired)   # what one scrape of the server shows
    retired = retire(retired, last_text_of_a_dead_worker)   # its counters keep counting

Counters and histograms are summed over the workers, so every series reads as if one process had served
everything; `retired` holds the counters of workers that died (as of their last scrape) so that no sum
goes backwards when a worker is restarted (Prometheus would read that as a reset of the whole server).
Gauges are summed too (streams, tasks, queued windows), except those that already describe the whole
server (`GLOBAL_GAUGES`, the same in every worker: the highest is shown) and one engine copy's load
(`MEAN_GAUGES`: the mean over the workers). Families labelled `worker` (`streamer_worker_*`) never
collide, so they come through as they are. `_created` samples are dropped: a sum of creation times means
nothing, and the text format does not need them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

GLOBAL_GAUGES = frozenset({"streamer_max_streams", "streamer_stream_load_ratio", "streamer_draining"})
MEAN_GAUGES = frozenset({"streamer_engine_busy_ratio", "streamer_engine_queue_wait_seconds"})
MONOTONIC = frozenset({"counter", "histogram"})
"""Family types whose samples only grow: summed, and kept for workers that died."""

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class _Family:
    name: str
    documentation: str
    type: str
    values: dict[SampleKey, list[float]] = field(default_factory=dict)

    def combined(self, key: SampleKey) -> float:
        values = self.values[key]
        if self.name in GLOBAL_GAUGES:
            return max(values)
        if self.name in MEAN_GAUGES:
            return sum(values) / len(values)
        return sum(values)


def _collect(texts: Iterable[str], families: dict[str, _Family], monotonic_only: bool) -> None:
    for text in texts:
        for parsed in text_string_to_metric_families(text):
            if (monotonic_only and parsed.type not in MONOTONIC) or parsed.name.endswith("_created"):
                continue  # (the text format parses a histogram's _created samples as a gauge of their own)
            family = families.setdefault(parsed.name, _Family(parsed.name, parsed.documentation, parsed.type))
            for sample in parsed.samples:
                if sample.name.endswith("_created"):
                    continue
                key = (sample.name, tuple(sample.labels.items()))
                family.values.setdefault(key, []).append(float(sample.value))


class _Merged(Collector):
    def __init__(self, families: Sequence[_Family]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            metric = Metric(family.name, family.documentation, family.type)
            for key in family.values:
                name, labels = key
                metric.add_sample(name, dict(labels), family.combined(key))
            yield metric


def _render(families: dict[str, _Family]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(list(families.values())))
    return generate_latest(registry)


def merge_expositions(texts: Sequence[str], retired: str = "") -> bytes:
    """The workers' texts (and the supervisor's own families) as one exposition (see the module doc)."""
    families: dict[str, _Family] = {}
    _collect(texts, families, monotonic_only=False)
    if retired:
        # Added as one more worker, counters only: a dead worker's gauges (its streams) are gone with it.
        _collect([retired], families, monotonic_only=True)
    return _render(families)


def retire(retired: str, last: str) -> str:
    """`retired` plus the counters and histograms of `last`, the last text of a worker that died."""
    families: dict[str, _Family] = {}
    _collect([retired, last], families, monotonic_only=True)
    return _render(families).decode()
