"""Prometheus expositions of several processes as one: each scraped when the whole is asked for,
every sample labelled with where it came from. `callstream up` serves every service's metrics
this way, and the ingress workers of `callstream ingress --workers N` each other's."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import aiohttp
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

SCRAPE_TIMEOUT_S = 2.0


async def fetch(session: aiohttp.ClientSession, url: str) -> str | None:
    """The exposition at `url`, or None if it does not answer 200 within SCRAPE_TIMEOUT_S."""
    try:
        async with asyncio.timeout(SCRAPE_TIMEOUT_S), session.get(url) as answer:
            if answer.status != 200:
                return None
            return await answer.text()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


def merge(
    scraped: Iterable[tuple[str, str | None]], label: str, answered: tuple[str, str]
) -> bytes:
    """The expositions of several sources as one: `(source, text or None if it did not
    answer)`. Families of one name become one family; a sample without `label` gets its
    source's name as `label`. `answered` is the name and help of a gauge, by `label`: 1 for a
    source that answered, 0 for one that did not."""
    families: dict[str, Metric] = {}
    up = GaugeMetricFamily(*answered, labels=[label])
    for source, text in scraped:
        up.add_metric([source], 0.0 if text is None else 1.0)
        for family in text_string_to_metric_families(text or ""):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            for sample in family.samples:
                labels = sample.labels
                if label not in labels:
                    labels = {label: source, **labels}
                merged.samples.append(sample._replace(labels=labels))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed([up, *families.values()]))
    return generate_latest(registry)


class _Fixed:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families
