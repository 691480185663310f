"""`up`'s one metrics endpoint: every service's families merged, each series labelled with its
service, and whether each service answered."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from callstream import up
from callstream.metrics import merge
from foundation.runtime import Metrics
from foundation.settings import KafkaSettings


def test_families_of_several_services_merge_into_one_exposition() -> None:
    normalizer, store = Metrics("normalizer"), Metrics("store")
    normalizer.received.labels("normalizer", "calls.raw").inc(5)
    store.received.labels("store", "calls.events").inc(7)
    own = CollectorRegistry()
    Counter("store_written_events", "Rows.", registry=own).inc(3)
    exposition = merge(
        [
            ("normalizer", generate_latest(normalizer.registry).decode()),
            ("store", (generate_latest(store.registry) + generate_latest(own)).decode()),
            ("alerts", None),
        ]
    ).decode()
    families = {f.name: f for f in text_string_to_metric_families(exposition)}
    received = {
        (s.labels["service"], s.labels["topic"]): s.value
        for s in families["callstream_records_received"].samples
        if s.name.endswith("_total")
    }
    assert received == {("normalizer", "calls.raw"): 5.0, ("store", "calls.events"): 7.0}
    (written,) = [s for s in families["store_written_events"].samples if s.name.endswith("_total")]
    assert (written.labels, written.value) == ({"service": "store"}, 3.0)
    answered = {s.labels["service"]: s.value for s in families["callstream_up"].samples}
    assert answered == {"normalizer": 1.0, "store": 1.0, "alerts": 0.0}
    assert exposition.count("# TYPE callstream_records_received_total counter") == 1


def test_up_children_serve_metrics_and_sources_stop_first() -> None:
    children = up.services(KafkaSettings(), 8080, up.DEFAULT_DATA_DIR, demo=True)
    names = [child.name for child in children]
    assert names[-3:] == ["ingress", "simulate", "poll"]  # stopped in reverse: poll first
    assert all(child.metrics for child in children if child.name != "simulate")
    assert next(c for c in children if c.name == "ingress").metrics == (
        "http://127.0.0.1:8080/metrics"
    )
    for child in children:
        if child.metrics and child.name != "ingress":
            port = child.args[child.args.index("--metrics-port") + 1]
            assert child.metrics == f"http://127.0.0.1:{port}/metrics"
    ingress = next(c for c in children if c.name == "ingress")
    assert "CALLSTREAM_POLL__MOBILE_AGENT__BASE_URL" in ingress.env  # it knows a poller runs


def test_up_runs_the_ingress_with_the_workers_asked_for() -> None:
    def ingress_args(**options: int) -> tuple[str, ...]:
        children = up.services(KafkaSettings(), 8080, up.DEFAULT_DATA_DIR, **options)
        return tuple(next(c for c in children if c.name == "ingress").args)

    assert ingress_args(ingress_workers=2)[-2:] == ("--workers", "2")
    assert "--workers" not in ingress_args()  # CALLSTREAM_INGRESS__WORKERS decides, as inherited
