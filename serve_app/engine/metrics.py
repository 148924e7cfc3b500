"""vLLM's engine metrics on Ray's metrics endpoint, at the cost of vLLM's own server.

vLLM's stat logger records on every engine step: a dozen counters and gauges, a histogram
observation per finished request for each of its request histograms, and one inter-token
latency per generated token. vLLM's own `RayPrometheusStatLogger` sends each of those through
Ray's metrics API, and Ray's dashboard agent then replays every histogram observation, which
costs the agent several times the CPU of this way (docs/benchmarks, decision 24).

So vLLM records into prometheus_client in the replica, exactly as `vllm serve` does
(`RayExportedStatLogger` is vLLM's own `PrometheusStatLogger`), and every
VLLM_LOG_STATS_INTERVAL seconds, when vLLM's periodic stats log runs, `RayMetricsExport`
copies the totals into Ray's metrics: a counter by its increase since the last copy, a gauge
by its value, and a histogram as the series Prometheus reads from one, `<name>_bucket{le}`,
`<name>_sum` and `<name>_count` (cumulative, as Ray gauges), so `histogram_quantile` over
`rate(ray_vllm_..._bucket[5m])` works as before. The names and tags are those vLLM's Ray
logger gives them (`vllm:` becomes `vllm_`, each series tagged with its replica's ReplicaId);
the cost is a few hundred gauge updates per interval, off the token path. The sums are exact
(Ray's agent rebuilds a histogram's sum from bucket midpoints); the series lag by up to the
interval. Part of the engine adapter: the only module that knows vLLM's stat loggers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import prometheus_client
from vllm.v1.metrics.loggers import PrometheusStatLogger

# (kind: "counter" or "gauge", name, description, tag keys) -> a Ray metric
MetricFactory = Callable[[str, str, str, tuple[str, ...]], Any]


def ray_metric(kind: str, name: str, description: str, tag_keys: tuple[str, ...]) -> Any:
    from ray.util import metrics

    cls = metrics.Counter if kind == "counter" else metrics.Gauge
    return cls(name=name, description=description, tag_keys=tag_keys)


def ray_name(name: str) -> str:
    """The name Ray accepts for a Prometheus name (`vllm:x` -> `vllm_x`): Ray's rule for metric
    names (letters, digits, `_`), the one vLLM's own Ray logger applies."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


class RayMetricsExport:
    """Copies the `prefix` metrics of a prometheus_client registry into Ray's metrics."""

    def __init__(
        self,
        replica_id: str,
        registry: prometheus_client.CollectorRegistry = prometheus_client.REGISTRY,
        prefix: str = "vllm:",
        make_metric: MetricFactory = ray_metric,
    ) -> None:
        self.replica_id = replica_id
        self.registry = registry
        self.prefix = prefix
        self.make_metric = make_metric
        self._metrics: dict[str, Any] = {}
        self._counted: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def _metric(self, kind: str, name: str, description: str, labels: Iterable[str]) -> Any:
        if name not in self._metrics:
            keys = (*labels, "ReplicaId")
            self._metrics[name] = self.make_metric(kind, name, description, keys)
        return self._metrics[name]

    def export(self) -> int:
        """Copy every sample once; returns how many were copied."""
        copied = 0
        for family in self.registry.collect():
            if not family.name.startswith(self.prefix) or family.type not in (
                "counter",
                "gauge",
                "histogram",
            ):
                continue
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # prometheus_client's creation time; Ray keeps its own
                tags = {**sample.labels, "ReplicaId": self.replica_id}
                if family.type == "counter":
                    name = ray_name(family.name)
                    key = (name, tuple(sorted(sample.labels.items())))
                    increase = sample.value - self._counted.get(key, 0.0)
                    self._counted[key] = sample.value
                    if increase > 0:
                        metric = self._metric("counter", name, family.documentation, sample.labels)
                        metric.inc(increase, tags=tags)
                else:  # a gauge, or one of a histogram's cumulative series
                    name = ray_name(sample.name)
                    metric = self._metric("gauge", name, family.documentation, sample.labels)
                    metric.set(sample.value, tags=tags)
                copied += 1
        return copied


def prefix_cache_counts(
    registry: prometheus_client.CollectorRegistry = prometheus_client.REGISTRY,
) -> dict[str, int]:
    """Prompt tokens this process's engine looked up in its prefix cache, and found there
    (vLLM's `prefix_cache_queries` and `prefix_cache_hits` counters; 0 with stats disabled)."""
    counts = {"queries": 0, "hits": 0}
    for family in registry.collect():
        kind = family.name.removeprefix("vllm:prefix_cache_")
        if family.name.startswith("vllm:prefix_cache_") and kind in counts:
            counts[kind] += int(sum(s.value for s in family.samples if s.name.endswith("_total")))
    return counts


class RayExportedStatLogger(PrometheusStatLogger):
    """vLLM's Prometheus stat logger, whose periodic `log()` also copies its metrics into
    Ray's metrics (`RayMetricsExport`)."""

    def __init__(self, vllm_config: Any, engine_indexes: list[int] | None = None) -> None:
        super().__init__(vllm_config, engine_indexes)
        from ray import serve

        self.export = RayMetricsExport(serve.get_replica_context().replica_id.unique_id)

    def log(self) -> None:
        super().log()
        self.export.export()
