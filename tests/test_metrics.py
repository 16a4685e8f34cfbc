"""The services' Prometheus metrics, scraped from the running stack the way Prometheus does.

Counters must be exact: after a request of N images the compressors' ``pixpress_images_processed_total`` has
grown by exactly N, split as the status API splits it, with the bytes the status API reports, and every
histogram has counted what happened once. Each test first waits until the pipeline's queues are empty, so what
earlier tests left in flight does not move the counters under it. Every query of the dashboard and the alert
rules (deploy/observability) must name only metrics these scrapes return.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime

import aiohttp
import pytest

from shared import metrics
from testkit.stack import service_settings
from tests.support import zoo
from tests.support.client import API, csv_text, upload, wait_final
from tests.support.metrics import (
    MINIO_METRICS,
    RABBITMQ_METRICS,
    Scrape,
    endpoints,
    families_of,
    fetch_text,
    parse,
    scrape,
    wait_quiet,
)
from tests.support.photos import unique_jpeg, unique_png
from tests.support.promql import SYNTHETIC, dashboard_exprs, grafana_to_promql, promcheck
from tests.support.servers import ImageHost, WebhookReceiver

SETTINGS = service_settings()  # the settings the running services were started with


async def scrape_until(
    http: aiohttp.ClientSession, done: Callable[[Scrape], bool], timeout: float = 20.0
) -> Scrape:
    """Scrape until ``done`` holds: a service counts an event just after the write that a client sees first."""
    deadline = time.monotonic() + timeout
    while True:
        current = await scrape(http)
        if done(current) or time.monotonic() > deadline:
            return current
        await asyncio.sleep(0.25)


async def request_detail(http: aiohttp.ClientSession, request_id: str) -> dict:
    async with http.get(f"{API}/requests/{request_id}") as response:
        assert response.status == 200
        return await response.json()


async def test_reused_outputs_count_by_kind_and_run_no_codec(
    stack: str, http: aiohttp.ClientSession, image_host: ImageHost
):
    """The same CSV again: every image revalidated (304), counted as processed and as cached, no codec run, nothing
    stored; the same bytes under new URLs: downloaded, counted as same_bytes (docs/cache.md)."""
    if not SETTINGS.cache:
        pytest.skip("the stack runs with PIXPRESS_CACHE=off: nothing is ever reused")
    bodies = {"c-photo.jpg": unique_jpeg("rocket.jpg"), "c-flat.png": unique_png("coffee.png")}
    urls = [image_host.add(name, body, validators="both") for name, body in bodies.items()]
    copies = [image_host.add(f"copy-{name}", body) for name, body in bodies.items()]

    async def run(urls_: list[str]) -> dict:
        accepted = await upload(http, csv_text([("C-1", "Cached", urls_)]))
        assert accepted.status == 200
        status = await wait_final(http, (await accepted.json())["request_id"])
        assert status["status"] == "Completed"
        return status["progress"]

    await wait_quiet(http)
    await run(urls)
    for urls_, kind in ((urls, "revalidated"), (copies, "same_bytes")):
        before = await scrape(http)
        progress = await run(urls_)
        assert progress["images_cached"] == 2

        def delta(name: str, scrape_: Scrape, before: Scrape = before, **labels: str) -> float:
            return scrape_.value(name, **labels) - before.value(name, **labels)

        after = await scrape_until(http, lambda s: delta("pixpress_images_processed_total", s, outcome="ok") >= 2)
        cached = {k: delta("pixpress_images_cached_total", after, kind=k) for k in metrics.CACHE_KINDS}
        assert cached == {**dict.fromkeys(metrics.CACHE_KINDS, 0.0), kind: 2}, kind
        assert delta("pixpress_images_processed_total", after, outcome="ok") == 2
        assert delta("pixpress_image_bytes_in_total", after) == progress["bytes_in"]
        assert delta("pixpress_image_bytes_out_total", after) == progress["bytes_out"]
        assert sum(delta("pixpress_images_codec_total", after, codec=c) for c in metrics.CODECS) == 0
        assert delta("pixpress_stage_seconds_count", after, stage="decode_encode") == 0
        assert delta("pixpress_stage_seconds_count", after, stage="store") == 0


async def test_a_request_moves_the_counters_by_exactly_its_images(
    stack: str, http: aiohttp.ClientSession, image_host: ImageHost, webhook: WebhookReceiver
):
    # bytes no earlier test produced: outputs are cached by the source's bytes (docs/cache.md), and a reused
    # output would run no codec and store nothing
    jpegs = [image_host.add(f"m-{n}.jpg", unique_jpeg(n)) for n in ("rocket.jpg", "chelsea.png", "coffee.png")]
    pngs = [image_host.add(n, unique_png(n), "image/png") for n in ("astronaut.png", "motorcycle_left.png")]
    flaky = image_host.add("m-flaky.jpg", unique_jpeg("retina.jpg"))
    image_host.flaky["m-flaky.jpg"] = 2  # two 503s, then the image: two retries, one image
    html = image_host.add("m-page.jpg", zoo.HTML_PAGE, "text/html")
    truncated = image_host.add("m-truncated.jpg", zoo.truncated_jpeg())
    missing = image_host.url("/img/m-missing.jpg")
    rows = [
        ("M-1", "Rocket", [jpegs[0], pngs[0], missing]),
        ("M-2", "Cat", [jpegs[1], flaky]),
        ("M-3", "Coffee", [jpegs[2], html, pngs[1], truncated]),
    ]
    images = sum(len(urls) for _, _, urls in rows)
    webhook.responses = [500] * SETTINGS.webhook_max_attempts  # every attempt fails: the event goes dead

    await wait_quiet(http)
    before = await scrape(http)
    refused = await upload(http, "Serial Number,Product Name\r\nX,no image column\r\n")
    assert refused.status == 400
    accepted = await upload(http, csv_text(rows), webhook_url=webhook.url("/hook"))
    assert accepted.status == 200
    request_id = (await accepted.json())["request_id"]
    status = await wait_final(http, request_id)
    assert status["status"] == "Completed"
    progress = status["progress"]
    assert (progress["images_total"], progress["images_done"], progress["images_failed"]) == (images, 6, 3)
    for _ in range(120):
        if (await request_detail(http, request_id))["webhook"]["state"] == "dead":
            break
        await asyncio.sleep(0.25)

    def delta(name: str, scrape_: Scrape | None = None, **labels: str) -> float:
        return (scrape_ or after).value(name, **labels) - before.value(name, **labels)

    after = await scrape_until(
        http,
        lambda s: delta("pixpress_images_processed_total", s, outcome="ok") >= 6
        and delta("pixpress_images_processed_total", s, outcome="failed") >= 3
        and delta("pixpress_webhook_attempts_total", s, outcome="dead") >= 1,
    )

    # compressors: exactly the request's images, split and sized as the status API says
    assert delta("pixpress_images_processed_total", outcome="ok") == progress["images_done"]
    assert delta("pixpress_images_processed_total", outcome="failed") == progress["images_failed"]
    assert delta("pixpress_image_bytes_in_total") == progress["bytes_in"]
    assert delta("pixpress_image_bytes_out_total") == progress["bytes_out"]
    reasons = {reason: delta("pixpress_image_failures_total", reason=reason) for reason in metrics.FAILURE_REASONS}
    expected = {"download_4xx": 1, "not_an_image": 1, "corrupt": 1}
    assert reasons == {**dict.fromkeys(metrics.FAILURE_REASONS, 0.0), **expected}
    codecs = {codec: delta("pixpress_images_codec_total", codec=codec) for codec in metrics.CODECS}
    jpeg_count = 4  # three JPEG photos and the flaky one; the two PNGs go through Pillow
    assert codecs == ({"dct": jpeg_count, "pillow": 2} if SETTINGS.jpeg_fast_path else {"dct": 0, "pillow": 6})
    assert {kind: delta("pixpress_images_cached_total", kind=kind) for kind in metrics.CACHE_KINDS} == dict.fromkeys(
        metrics.CACHE_KINDS, 0.0
    )
    assert delta("pixpress_image_retries_total") == 2
    assert delta("pixpress_images_quarantined_total") == 0

    # stage histograms: one observation per run of a stage
    stages = {stage: delta("pixpress_stage_seconds_count", stage=stage) for stage in metrics.STAGES}
    # one publish per result message; results finishing close together share one, how many depends on timing
    assert 1 <= stages["publish"] <= images, stages
    assert {stage: count for stage, count in stages.items() if stage != "publish"} == {
        "download": images + 2,  # every attempt, the two 503s included
        "decode_encode": 6 + 2,  # every downloaded body: the six images, the HTML page, the truncated JPEG
        "store": 6,
    }
    for stage in metrics.STAGES:
        assert delta("pixpress_stage_seconds_bucket", stage=stage, le="+Inf") == stages[stage]
        assert delta("pixpress_stage_seconds_sum", stage=stage) > 0

    # aggregator: results recorded once each, one finished request, its duration
    assert delta("pixpress_results_recorded_total", outcome="ok") == 6
    assert delta("pixpress_results_recorded_total", outcome="failed") == 3
    assert delta("pixpress_requests_finished_total", status="Completed") == 1
    assert delta("pixpress_requests_finished_total", status="Failed") == 0
    assert delta("pixpress_request_seconds_count") == 1
    assert delta("pixpress_request_seconds_bucket", le="+Inf") == 1
    took = (datetime.fromisoformat(status["updated_at"]) - datetime.fromisoformat(status["created_at"])).total_seconds()
    assert 0 < delta("pixpress_request_seconds_sum") <= took + 0.01

    # ingest: one upload accepted, one refused
    assert delta("pixpress_uploads_total", outcome="accepted") == 1
    assert delta("pixpress_uploads_total", outcome="refused") == 1
    assert delta("pixpress_uploads_total", outcome="error") == 0

    # notifier: every attempt failed, the last one dead-lettered
    attempts = SETTINGS.webhook_max_attempts
    assert len(webhook.deliveries) == attempts
    assert delta("pixpress_webhook_attempts_total", outcome="retry") == attempts - 1
    assert delta("pixpress_webhook_attempts_total", outcome="dead") == 1
    assert delta("pixpress_webhook_attempts_total", outcome="delivered") == 0


async def test_the_open_request_gauges_follow_a_slow_request(
    stack: str, http: aiohttp.ClientSession, image_host: ImageHost
):
    aggregator = {"aggregator": endpoints()["aggregator"]}
    await wait_quiet(http)
    open_before = (await scrape(http, aggregator)).value("pixpress_open_requests")
    image_host.delay = 3 * SETTINGS.sweep_interval + 2  # the download keeps the request open over a few sweeps
    url = image_host.add("slow.jpg", unique_jpeg("chelsea.png"))
    uploaded = time.monotonic()
    request_id = (await (await upload(http, csv_text([("S-1", "Slow", [url])]))).json())["request_id"]

    during = await scrape_until(
        http, lambda s: s.value("pixpress_oldest_open_request_age_seconds") >= SETTINGS.sweep_interval, timeout=30
    )
    age = during.value("pixpress_oldest_open_request_age_seconds")
    assert during.value("pixpress_open_requests") >= open_before + 1
    assert age >= SETTINGS.sweep_interval
    if open_before == 0:  # ours is the only open request, so the oldest
        assert age <= time.monotonic() - uploaded + 1

    await wait_final(http, request_id)
    after = await scrape_until(
        http, lambda s: s.value("pixpress_open_requests") <= open_before, timeout=4 * SETTINGS.sweep_interval + 5
    )
    assert after.value("pixpress_open_requests") <= open_before


async def test_every_service_exports_its_own_metrics_and_process_metrics(stack: str, http: aiohttp.ClientSession):
    programs = endpoints()
    assert {"ingest", "aggregator", "notifier"} <= set(programs)
    assert any(name.startswith("compressor-") for name in programs)
    for program, url in programs.items():
        samples, families = parse(await fetch_text(http, url))
        service = "compressor" if program.startswith("compressor-") else program
        assert {name for name in families if name.startswith("pixpress_")} == families_of(service), program
        assert families["process_resident_memory_bytes"] == "gauge"
        assert families["process_cpu_seconds"] == "counter"
        rss = next(value for (name, _), value in samples.items() if name == "process_resident_memory_bytes")
        assert 10e6 < rss < 2e9, (program, rss)


async def test_rabbitmq_and_minio_export_their_metrics(stack: str, http: aiohttp.ClientSession):
    samples, _ = parse(await fetch_text(http, RABBITMQ_METRICS))
    queues = {dict(labels).get("queue") for name, labels in samples if name == "rabbitmq_queue_messages_ready"}
    assert {"compressor.images", "aggregator.results", "notifier.webhooks.dlq"} <= queues
    consumers = {
        dict(labels)["queue"]: value for (name, labels), value in samples.items() if name == "rabbitmq_queue_consumers"
    }
    assert consumers["compressor.images"] >= 1
    samples, _ = parse(await fetch_text(http, MINIO_METRICS))
    assert any(name.startswith("minio_") for name, _ in samples)


async def test_every_dashboard_and_alert_query_names_only_exported_metrics(stack: str, http: aiohttp.ClientSession):
    """deploy/observability's queries, parsed by Prometheus's own parser (promcheck), against every metric name a
    query may use: pixpress's services and RabbitMQ's plugin (per object, and the aggregated endpoint for its
    global counters), as scraped now."""
    exported = (await scrape(http)).names() | SYNTHETIC
    for url in (RABBITMQ_METRICS, RABBITMQ_METRICS.removesuffix("/per-object")):
        samples, _ = parse(await fetch_text(http, url))
        exported |= {name for name, _ in samples}
    exprs = [grafana_to_promql(expr) for expr in dashboard_exprs()]
    checked = promcheck(exprs)
    assert checked["errors"] == []
    assert len(checked["rules"]) == 6
    queries = [(f"alert {rule['name']}", rule["metrics"]) for rule in checked["rules"]]
    for entry in checked["exprs"]:
        assert "error" not in entry, entry
        queries.append((entry["expr"], entry["metrics"]))
    for query, names in queries:
        assert names, f"{query} reads no metric"
        assert set(names) <= exported, f"{query} names {sorted(set(names) - exported)}, which nothing exports"
