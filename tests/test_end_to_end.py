"""A CSV of real photographs through all four services, the real broker, database and object store."""

from __future__ import annotations

import asyncio
import csv
import io
import time

import aiohttp
from PIL import Image
from standardwebhooks.webhooks import Webhook

from tests.support.client import API, FINAL, csv_text, upload, wait_final
from tests.support.photos import PHOTOS, encode, photo, photo_bytes, quantization, reference_quantization
from tests.support.servers import ImageHost, WebhookReceiver

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the one `make test` gives the notifier


async def test_photos_flow_through_every_service(
    stack: str, http: aiohttp.ClientSession, image_host: ImageHost, webhook: WebhookReceiver
):
    urls = {
        name: image_host.add(name, photo_bytes(name), "image/png" if name.endswith("png") else "image/jpeg")
        for name in PHOTOS
    }
    missing = image_host.url("/img/does-not-exist.jpg")
    rows = [
        ("SKU-1", "Astronaut poster", [urls["astronaut.png"], urls["rocket.jpg"]]),
        ("SKU-2", "Cat mug", [urls["chelsea.png"]]),
        ("SKU-3", "=cmd|' /C calc'!A0", [urls["coffee.png"], missing, urls["retina.jpg"]]),
        ("SKU-4", "Motorbike", [urls["motorcycle_left.png"], urls["hubble_deep_field.jpg"]]),
    ]
    response = await upload(http, csv_text(rows), webhook_url=webhook.url("/hook"))
    assert response.status == 200
    accepted = await response.json()
    assert accepted["message"] == "CSV received and processing started."
    request_id = accepted["request_id"]

    status = await wait_final(http, request_id)
    assert status["status"] == "Completed"
    assert status["progress"]["images_total"] == 8
    assert status["progress"]["images_done"] == 7
    assert status["progress"]["images_failed"] == 1
    assert status["progress"]["percent"] == 100.0
    assert status["progress"]["bytes_out"] < status["progress"]["bytes_in"]

    async with http.get(status["output_csv_url"]) as csv_response:
        assert csv_response.status == 200
        table = list(csv.reader(io.StringIO(await csv_response.text())))
    assert table[0] == ["Serial Number", "Product Name", "Input Image Urls", "Output Image Urls", "Errors"]
    assert [r[0] for r in table[1:]] == ["SKU-1", "SKU-2", "SKU-3", "SKU-4"]
    assert table[3][1].startswith("'=")  # formula injection neutralised
    for (serial, _name, inputs), out_row in zip(rows, table[1:], strict=True):
        assert out_row[2].split(",") == inputs
        outputs = out_row[3].split(",")
        assert len(outputs) == len(inputs), serial
        for input_url, output_url in zip(inputs, outputs, strict=True):
            if input_url == missing:
                assert output_url == ""
                assert "image 2: download failed: HTTP 404" in out_row[4]
                continue
            name = input_url.rsplit("/", 1)[1]
            async with http.get(output_url) as image_response:
                assert image_response.status == 200
                data = await image_response.read()
            out = Image.open(io.BytesIO(data))
            assert out.format == "JPEG" and out.size == photo(name).size
            assert quantization(out) == reference_quantization(photo(name)), name

    await webhook.wait(timeout=30)
    assert len(webhook.deliveries) == 1
    delivery = webhook.deliveries[0]
    body = delivery.json
    assert body["request_id"] == request_id
    assert body["status"] == "Completed"
    assert body["output_csv_url"] == status["output_csv_url"]
    assert body["progress"]["images_done"] == 7
    Webhook(WEBHOOK_SECRET).verify(delivery.body, {k.lower(): v for k, v in delivery.headers.items()})
    assert delivery.headers["webhook-id"] == f"msg_{request_id}"


async def test_status_is_processing_while_an_image_is_in_flight_then_completed_and_products_are_listed(
    stack: str, http: aiohttp.ClientSession, image_host: ImageHost
):
    """Every status the API reports, polled from the upload on, moves forward only: Queued (if a poll beats the
    fan-out, which starts at once), Processing for as long as the image host holds the download, Completed."""
    url = image_host.add("one.jpg", encode(photo("chelsea.png"), "JPEG", quality=90))
    image_host.hold = asyncio.Event()
    response = await upload(http, csv_text([("A1", "Cat", [url, url])]))
    request_id = (await response.json())["request_id"]
    seen: list[dict] = []
    deadline = time.monotonic() + 60
    while not seen or seen[-1]["status"] != "Processing":
        assert time.monotonic() < deadline, f"never Processing while the download was held: {seen[-1:]}"
        async with http.get(f"{API}/status/{request_id}") as answer:
            seen.append(await answer.json())
        await asyncio.sleep(0.02)
    while image_host.hits["one.jpg"] == 0:  # a compressor is waiting on the held image: still Processing after
        assert time.monotonic() < deadline, "no compressor asked for the image"
        await asyncio.sleep(0.05)
    async with http.get(f"{API}/status/{request_id}") as answer:
        seen.append(await answer.json())
    assert seen[-1]["status"] == "Processing" and seen[-1]["progress"]["images_settled"] == 0, seen[-1]
    image_host.hold.set()
    while seen[-1]["status"] not in FINAL:
        assert time.monotonic() < deadline, f"not final: {seen[-1]}"
        await asyncio.sleep(0.05)
        async with http.get(f"{API}/status/{request_id}") as answer:
            seen.append(await answer.json())
    statuses = [body["status"] for body in seen]
    assert statuses[-1] == "Completed", seen[-1]
    order = ["Queued", "Processing", "Completed"]
    assert statuses == sorted(statuses, key=order.index), statuses
    assert all("output_csv_url" not in body for body in seen if body["status"] != "Completed")
    final = seen[-1]
    async with http.get(f"{API}/requests/{request_id}/products") as products:
        page = await products.json()
    assert page["total"] == 1
    item = page["items"][0]
    assert item["serial_number"] == "A1" and item["input_image_urls"] == [url, url]
    assert all(u and u.endswith(".jpg") for u in item["output_image_urls"])
    async with http.get(f"{API}/requests/{request_id}/output.csv", allow_redirects=False) as redirect:
        assert redirect.status == 302 and redirect.headers["Location"] == final["output_csv_url"]


async def test_unknown_and_malformed_ids_answer_problem_json_with_the_seed_error_member(
    stack: str, http: aiohttp.ClientSession
):
    unknown_id = "00000000-0000-4000-8000-000000000000"
    for path in (f"/status/{unknown_id}", f"/requests/{unknown_id}", f"/requests/{unknown_id}/products"):
        async with http.get(f"{API}{path}") as unknown:
            assert unknown.status == 404, path
            assert unknown.content_type == "application/problem+json"
            body = await unknown.json(content_type=None)
            assert body["status"] == 404 and body["type"].endswith("/unknown-request")
            assert body["error"] == body["detail"] == f"request {unknown_id} not found"
    for path in ("/status/not-a-uuid", "/requests/12345/output.csv"):
        async with http.get(f"{API}{path}") as malformed:
            assert malformed.status == 400, path
            assert malformed.content_type == "application/problem+json"
            body = await malformed.json(content_type=None)
            assert body["status"] == 400 and "expected a UUID" in body["error"]
