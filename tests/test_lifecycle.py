"""The second way a request ends (shared/lifecycle.py): its stored CSV cannot be fanned out.

Validation at upload makes that rare (a CSV changed in storage after it was accepted, or a parser that grew
stricter between versions), so the test stages it on the running stack: a request recorded as ingest records it,
with a stored CSV whose row breaks a rule, then the ``request.accepted`` event ingest would publish. The fan-out
must end the request Failed once, with its reason, and announce it through the outbox like the finisher does.
"""

from __future__ import annotations

import io
import uuid

import aio_pika
import aiohttp
from minio import Minio
from pymongo import AsyncMongoClient

from shared.messages import RequestAccepted, RoutingKey
from shared.settings import Settings
from testkit.stack import service_env
from tests.support.client import API, wait_final
from tests.support.servers import WebhookReceiver
from tests.support.staged import insert_as_ingest, request_document

BROKEN_CSV = b"Serial Number,Product Name,Input Image Urls\r\n,No serial,https://img.example/a.jpg\r\n"


async def stage_request(webhook_url: str) -> str:
    env = service_env()
    settings = Settings()
    request_id = str(uuid.uuid4())
    document = request_document(request_id, products=1, images=1, webhook_url=webhook_url)
    storage = Minio(
        settings.s3_endpoint,
        access_key=settings.s3_access_key.get_secret_value(),
        secret_key=settings.s3_secret_key.get_secret_value(),
        secure=False,
    )
    broken = io.BytesIO(BROKEN_CSV)
    storage.put_object(settings.s3_bucket, document["csv_key"], broken, len(BROKEN_CSV), content_type="text/csv")
    client: AsyncMongoClient = AsyncMongoClient(env.get("PIXPRESS_MONGO_URL", "mongodb://127.0.0.1:27017/"))
    try:
        await insert_as_ingest(client[env.get("PIXPRESS_MONGO_DB", "pixpress")], document)
    finally:
        await client.close()
    connection = await aio_pika.connect(env.get("PIXPRESS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(env.get("PIXPRESS_EXCHANGE", "pixpress"))
        body = RequestAccepted(request_id=request_id).model_dump_json().encode()
        await exchange.publish(aio_pika.Message(body), routing_key=RoutingKey.REQUEST_ACCEPTED.value)
    return request_id


async def test_a_stored_csv_that_cannot_be_fanned_out_fails_its_request_once_and_is_announced(
    stack: str, http: aiohttp.ClientSession, webhook: WebhookReceiver
):
    request_id = await stage_request(webhook.url("/hook"))
    status = await wait_final(http, request_id, timeout=60)
    assert status["status"] == "Failed"
    assert status["error"] == "the CSV could not be processed: row 1: serial number is empty", status
    assert "output_csv_url" not in status

    await webhook.wait(timeout=30)
    [delivery] = webhook.deliveries
    assert delivery.headers["webhook-id"] == f"msg_{request_id}"
    assert (delivery.json["status"], delivery.json["error"]) == ("Failed", status["error"])
    assert delivery.json["progress"]["images_total"] == status["progress"]["images_total"] == 1

    async with http.get(f"{API}/requests/{request_id}") as answer:
        detail = await answer.json()
    assert detail["webhook"]["state"] == "delivered" and len(detail["webhook"]["attempts"]) == 1
    client: AsyncMongoClient = AsyncMongoClient(service_env().get("PIXPRESS_MONGO_URL", "mongodb://127.0.0.1:27017/"))
    try:
        stored = await client[service_env().get("PIXPRESS_MONGO_DB", "pixpress")].requests.find_one({"_id": request_id})
    finally:
        await client.close()
    assert stored is not None
    assert stored["outbox_pending"] is False and stored["finished_hour"]
