"""The copy of vLLM's Prometheus metrics into Ray's (serve_app/engine/metrics.py), on a
registry of its own; Ray's metric classes are replaced by recorders (no Ray needed). The
copy reaching a real node's metrics endpoint is tested in tests/test_openai_api.py."""

from __future__ import annotations

import prometheus_client
import pytest

from serve_app.engine.metrics import RayMetricsExport


class Recorded:
    def __init__(self, kind: str, name: str, tag_keys: tuple[str, ...]) -> None:
        self.kind, self.name, self.tag_keys = kind, name, tag_keys
        self.calls: list[tuple[str, float, dict[str, str]]] = []

    def inc(self, value: float, tags: dict[str, str]) -> None:
        self.calls.append(("inc", value, tags))

    def set(self, value: float, tags: dict[str, str]) -> None:
        self.calls.append(("set", value, tags))


@pytest.fixture
def exported() -> tuple[prometheus_client.CollectorRegistry, RayMetricsExport, dict]:
    registry = prometheus_client.CollectorRegistry()
    made: dict[str, Recorded] = {}

    def make(kind: str, name: str, description: str, tag_keys: tuple[str, ...]) -> Recorded:
        assert name not in made, f"{name} made twice"
        made[name] = Recorded(kind, name, tag_keys)
        return made[name]

    return registry, RayMetricsExport("replica-1", registry, make_metric=make), made


def test_a_counter_is_copied_by_its_increase(exported):
    registry, export, made = exported
    tokens = prometheus_client.Counter(
        "vllm:generation_tokens", "d", ["model_name"], registry=registry
    )
    tokens.labels("m").inc(3)
    export.export()
    tokens.labels("m").inc(2)
    export.export()
    export.export()  # nothing new: nothing added
    counter = made["vllm_generation_tokens"]
    assert counter.kind == "counter"
    assert counter.tag_keys == ("model_name", "ReplicaId")
    tags = {"model_name": "m", "ReplicaId": "replica-1"}
    assert counter.calls == [("inc", 3.0, tags), ("inc", 2.0, tags)]


def test_a_gauge_is_copied_by_its_value_per_label_set(exported):
    registry, export, made = exported
    running = prometheus_client.Gauge(
        "vllm:num_requests_running", "d", ["engine"], registry=registry
    )
    running.labels("0").set(4)
    running.labels("1").set(1)
    export.export()
    running.labels("0").set(0)
    export.export()
    gauge = made["vllm_num_requests_running"]
    assert gauge.kind == "gauge"
    values = [(value, tags["engine"]) for _, value, tags in gauge.calls]
    assert values == [(4.0, "0"), (1.0, "1"), (0.0, "0"), (1.0, "1")]


def test_a_histogram_becomes_its_cumulative_series(exported):
    registry, export, made = exported
    ttft = prometheus_client.Histogram(
        "vllm:time_to_first_token_seconds", "d", ["model_name"], buckets=[0.1, 1.0],
        registry=registry,
    )  # fmt: skip
    for seconds in (0.05, 0.5, 0.7, 3.0):
        ttft.labels("m").observe(seconds)
    export.export()
    assert sorted(made) == [
        "vllm_time_to_first_token_seconds_bucket",
        "vllm_time_to_first_token_seconds_count",
        "vllm_time_to_first_token_seconds_sum",
    ]  # no _created series
    bucket = made["vllm_time_to_first_token_seconds_bucket"]
    assert bucket.kind == "gauge"
    assert bucket.tag_keys == ("model_name", "le", "ReplicaId")
    assert [(tags["le"], value) for _, value, tags in bucket.calls] == [
        ("0.1", 1.0), ("1.0", 3.0), ("+Inf", 4.0),
    ]  # fmt: skip
    assert made["vllm_time_to_first_token_seconds_count"].calls[0][1] == 4.0
    assert made["vllm_time_to_first_token_seconds_sum"].calls[0][1] == pytest.approx(4.25)


def test_only_the_prefixed_metrics_are_copied(exported):
    registry, export, made = exported
    prometheus_client.Counter("http_requests", "d", registry=registry).inc()
    prometheus_client.Gauge("vllm:cache_usage", "d", registry=registry).set(0.5)
    assert export.export() == 1
    assert list(made) == ["vllm_cache_usage"]
