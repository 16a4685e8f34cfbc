"""Scraping the running stack's ``/metrics`` endpoints the way Prometheus does, and waiting for it to go quiet."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from scripts import stackctl
from shared import metrics
from testkit.stack import MANAGEMENT, MANAGEMENT_HEADERS, layout, port, services
from tests.support.client import API
from tests.support.stack import compressor_names

RABBITMQ_METRICS = f"http://127.0.0.1:{port('RABBITMQ_PROMETHEUS')}/metrics/per-object"
MINIO_METRICS = f"http://127.0.0.1:{port('MINIO')}/minio/v2/metrics/cluster"

Sample = tuple[str, frozenset[tuple[str, str]]]


def endpoints() -> dict[str, str]:
    """``/metrics`` URL of every pixpress program: ingest on the API, each worker on its health port
    (scripts/stack.env, the file the stack itself reads; the compressors as supervisord has them configured)."""
    found = {"ingest": f"{API}/metrics"}
    for name in [*services(), *compressor_names()]:
        if name != "ingest":
            found[name] = f"http://127.0.0.1:{stackctl.health_port(name, layout())}/metrics"
    return found


def families_of(service: str) -> set[str]:
    """The metric families ``service`` registers (shared/metrics.py), named as a scrape names them."""
    return {family.name for metric in metrics.SERVICE_METRICS[service] for family in metric.describe()}


@dataclass
class Scrape:
    """Samples of one or more scrapes, summed over the programs they came from."""

    samples: dict[Sample, float]
    families: dict[str, str]  # family name -> type, of every family seen
    by_program: dict[str, dict[Sample, float]]

    def value(self, name: str, **labels: str) -> float:
        """The sum over every program of the sample ``name`` with exactly these labels (0 when absent)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def names(self) -> set[str]:
        """Every sample name, as PromQL sees them (``x_total``, ``x_bucket``, ``x_count``, ``x_sum``, gauges)."""
        return {name for name, _ in self.samples}


def parse(text: str) -> tuple[dict[Sample, float], dict[str, str]]:
    samples: dict[Sample, float] = {}
    families: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, families


async def fetch_text(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as response:
        assert response.status == 200, f"{url}: {response.status}"
        assert response.content_type == "text/plain", f"{url}: {response.content_type}"
        return await response.text()


async def scrape(http: aiohttp.ClientSession, programs: dict[str, str] | None = None) -> Scrape:
    """Scrape every pixpress program at once and sum the samples over them (as ``sum()`` in PromQL would)."""
    programs = programs or endpoints()
    texts = await asyncio.gather(*(fetch_text(http, url) for url in programs.values()))
    total: defaultdict[Sample, float] = defaultdict(float)
    families: dict[str, str] = {}
    by_program = {}
    for name, text in zip(programs, texts, strict=True):
        samples, kinds = parse(text)
        by_program[name] = samples
        families.update(kinds)
        for key, value in samples.items():
            total[key] += value
    return Scrape(dict(total), families, by_program)


async def wait_quiet(http: aiohttp.ClientSession, timeout: float = 120.0) -> None:
    """Until no queue of the pipeline (delay queues included, dead-letter queues excepted) holds a message for
    longer than the management API's statistics interval (5 s): whatever earlier tests left in flight (retries,
    webhooks) has settled, so counters move only for what the caller does next."""
    deadline = time.monotonic() + timeout
    quiet_polls = 0
    busy: dict[str, int] = {}
    while time.monotonic() < deadline:
        async with http.get(f"{MANAGEMENT}/queues/%2F", headers=MANAGEMENT_HEADERS) as response:
            response.raise_for_status()
            queues = await response.json()
        busy = {
            q["name"]: q.get("messages", 0)
            for q in queues
            if not q["name"].endswith(".dlq") and q.get("messages", 0)
        }
        quiet_polls = quiet_polls + 1 if not busy else 0
        if quiet_polls >= 4:
            return
        await asyncio.sleep(2)
    raise AssertionError(f"the pipeline's queues did not empty in {timeout:.0f}s: {busy}")
