"""Every upload rule of the brief's section 2 and issue 3, valid and invalid, through the running API.

Refusals must be RFC 9457 problem+json naming row and column, and must store and queue nothing. "Nothing
stored" is checked by content, not by counting a collection other tests write to at the same time: every
request document records the sha256 of its CSV (and its Idempotency-Key), and MinIO's ETag of a single-part
upload is the MD5 of its bytes, so a refused file must leave no request, no key and no object with its
digest. The accepted-upload test proves the same probes do find an upload that went through.

The API-key middleware is tested in-process: the running stack has no key, so a second app is built with
``build_app`` and a keyed ``Settings``, wired to the real MongoDB, MinIO and RabbitMQ, and served by aiohttp's
TestServer over real HTTP.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from minio import Minio
from pydantic import SecretStr

from shared.settings import Settings
from testkit.stack import service_settings
from tests.support.apps import serve_api
from tests.support.client import API, wait_final
from tests.support.photos import encode, photo
from tests.support.servers import ImageHost

HEADER = "Serial Number,Product Name,Input Image Urls"
SERIAL, NAME, URLS = "Serial Number", "Product Name", "Input Image Urls"
PROBLEM_JSON = "application/problem+json"


# --- fixtures -----------------------------------------------------------------------------------------------


@dataclass
class PhotoHost:
    """One small real photograph served locally; accepted requests are waited on before the host stops."""

    host: ImageHost
    url: str
    accepted: list[str] = field(default_factory=list)

    def urls(self, n: int) -> list[str]:
        return [f"{self.url}?n={i}" for i in range(n)]


@pytest_asyncio.fixture(scope="module")
async def photos(stack: str, http: aiohttp.ClientSession) -> AsyncIterator[PhotoHost]:
    host = ImageHost()
    await host.start()
    small = photo("coffee.png").convert("RGB").resize((64, 42))
    served = PhotoHost(host, host.add("coffee.jpg", encode(small, "JPEG", quality=90)))
    yield served
    for request_id in served.accepted:  # let the compressors finish with the host before it goes away
        await wait_final(http, request_id, timeout=120)
    await host.stop()


@pytest.fixture(scope="module")
def minio() -> Minio:
    settings = service_settings()
    return Minio(
        settings.s3_endpoint,
        access_key=settings.s3_access_key.get_secret_value(),
        secret_key=settings.s3_secret_key.get_secret_value(),
        secure=settings.s3_secure,
    )


@pytest.fixture(scope="module")
def limits() -> dict[str, int]:
    """The input limits the running services enforce: their own settings (scripts/stack.sh's service.env)."""
    settings = service_settings()
    names = ("max_csv_bytes", "max_rows", "max_urls_per_row", "max_url_length", "max_reported_errors")
    return {name: getattr(settings, name) for name in names}


# --- helpers ------------------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    content_type: str
    body: Any


async def post(
    http: aiohttp.ClientSession,
    content: bytes | str | None,
    *,
    content_type: str = "text/csv",
    filename: str = "products.csv",
    webhook_url: str | None = None,
    headers: dict[str, str] | None = None,
    base: str = API,
) -> Answer:
    form = aiohttp.FormData(default_to_multipart=True)
    if content is not None:
        data = content.encode() if isinstance(content, str) else content
        form.add_field("file", data, filename=filename, content_type=content_type)
    if webhook_url is not None:
        form.add_field("webhook_url", webhook_url)
    if content is None and webhook_url is None:
        form.add_field("note", "no file here")
    async with http.post(f"{base}/upload", data=form, headers=headers) as response:
        raw = await response.read()
        body = await response.json(content_type=None) if raw else None
        return Answer(response.status, response.content_type, body)


async def raw_request(headers: bytes, body: bytes, gate: asyncio.Event | None = None) -> Answer:
    """POST /upload over a plain socket, for bodies and headers an HTTP client library refuses to produce.

    With a ``gate``, the body's last bytes wait until it opens: many requests released at once race for real.
    """
    parts = urlsplit(API)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
    try:
        request = (
            b"POST /upload HTTP/1.1\r\nHost: " + parts.netloc.encode() + b"\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n" + headers + b"\r\n" + body
        )
        held = 4 if gate is not None else 0
        writer.write(request[: len(request) - held])
        await writer.drain()
        if gate is not None:
            await gate.wait()
            writer.write(request[-held:])
            await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=30)
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if "chunked" in fields.get("transfer-encoding", ""):
        payload = _dechunk(payload)
    content_type = fields.get("content-type", "").split(";")[0]
    answer: Any = json.loads(payload) if payload and "json" in content_type else payload.decode("utf-8", "replace")
    return Answer(status, content_type, answer)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


async def raw_upload(extra_headers: bytes, csv: bytes, boundary: bytes, gate: asyncio.Event | None = None) -> Answer:
    body = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n'
        b"Content-Type: text/csv\r\n\r\n" + csv + b"\r\n--" + boundary + b"--\r\n"
    )
    content_type = b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n"
    return await raw_request(content_type + extra_headers, body, gate)


def problem_body(answer: Answer, status: int, slug: str) -> dict[str, Any]:
    """Assert an RFC 9457 answer with the given status and problem type; return its body."""
    assert answer.status == status, answer.body
    assert answer.content_type == PROBLEM_JSON
    body = answer.body
    assert body["status"] == status
    assert body["type"].endswith("/" + slug), body
    assert body["title"] and body["detail"]
    return body


def row_errors(answer: Answer) -> list[tuple[int, str | None, str]]:
    body = problem_body(answer, 400, "invalid-csv")
    for error in body["errors"]:
        assert set(error) == {"row", "column", "message"}
    return [(e["row"], e["column"], e["message"]) for e in body["errors"]]


# Appended to files a test expects to be refused for another reason: if that refusal ever regresses, the file
# is still refused (400 invalid-csv, so the test fails) instead of being accepted and fanned out on the shared stack.
POISON = ",row without a serial number: keeps a regressed refusal from queueing work,http://img.example/p.jpg"


def csv_of(*rows: str, header: str = HEADER, newline: str = "\n") -> str:
    return newline.join([header, *rows]) + newline


async def accepted(http: aiohttp.ClientSession, photos: PhotoHost, content: str | bytes, **kwargs: Any) -> str:
    answer = await post(http, content, **kwargs)
    assert answer.status == 200, answer.body
    assert answer.body["message"] == "CSV received and processing started."
    request_id = answer.body["request_id"]
    assert uuid.UUID(request_id).version == 4
    photos.accepted.append(request_id)
    return request_id


async def products(http: aiohttp.ClientSession, request_id: str, expected: int) -> list[dict[str, Any]]:
    """The product records once the fan-out has stored all ``expected`` of them."""
    deadline = time.monotonic() + 60
    while True:
        async with http.get(f"{API}/requests/{request_id}/products?limit=500") as response:
            assert response.status == 200
            page = await response.json()
        if len(page["items"]) >= expected or time.monotonic() > deadline:
            assert page["total"] == expected
            assert len(page["items"]) == expected
            return page["items"]
        await asyncio.sleep(0.1)


def md5_etag(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # MinIO's ETag of a single-part upload


async def traces(mongo: Any, minio: Minio, data: bytes, key: str | None = None) -> dict[str, int]:
    """How many request documents, idempotency keys and stored objects carry this exact file (or key)."""
    digest = hashlib.sha256(data).hexdigest()
    etag = md5_etag(data)
    objects = await asyncio.to_thread(
        lambda: sum(
            1
            for obj in minio.list_objects(Settings().s3_bucket, prefix="uploads/", recursive=True)
            if (obj.etag or "").strip('"') == etag
        )
    )
    counts = {"requests": await mongo.requests.count_documents({"csv_sha256": digest}), "objects": objects}
    if key is not None:
        counts["requests_with_key"] = await mongo.requests.count_documents({"idempotency_key": key})
        counts["keys"] = await mongo.idempotency_keys.count_documents({"_id": key})
    return counts


def unique_row(serial: str = "S1", urls: str = "") -> str:
    """A row whose name is unique, so every upload in this module has its own bytes."""
    return f"{serial},Product {uuid.uuid4().hex},{urls}"


# --- valid files --------------------------------------------------------------------------------------------


async def test_columns_are_trimmed_case_insensitive_in_any_order_and_extra_columns_are_kept(
    http: aiohttp.ClientSession, photos: PhotoHost
):
    url = photos.url
    text = csv_of(
        f'"{url}",blue,A-1,Mug,42',
        f'"{url}",red,A-2,Cup,7',
        header="  input IMAGE urls ,Colour, serial NUMBER,PRODUCT name ,Stock",
    )
    request_id = await accepted(http, photos, text)
    items = await products(http, request_id, 2)
    assert [(p["row"], p["serial_number"], p["product_name"]) for p in items] == [(1, "A-1", "Mug"), (2, "A-2", "Cup")]
    assert items[0]["extra"] == {"Colour": "blue", "Stock": "42"}
    assert items[1]["extra"] == {"Colour": "red", "Stock": "7"}
    assert items[0]["input_image_urls"] == [url]


async def test_extra_column_names_are_neutralised_in_the_output_csv_header(
    http: aiohttp.ClientSession, photos: PhotoHost
):
    """Header cells come from the client as much as any other cell (issue 11): formula escaping covers them."""
    header = f"{HEADER},=Extra,@cmd,+plus,-minus,Plain"
    row = f"H1,Mug {uuid.uuid4().hex},{photos.url},=1+1,a,b,c,d"
    request_id = await accepted(http, photos, csv_of(row, header=header))
    final = await wait_final(http, request_id)
    async with http.get(final["output_csv_url"]) as response:
        table = list(csv.reader(io.StringIO(await response.text())))
    assert table[0][4:] == ["'=Extra", "'@cmd", "'+plus", "'-minus", "Plain", "Errors"]
    assert table[1][4] == "'=1+1"


@pytest.mark.parametrize("bom", [False, True], ids=["utf8", "utf8-bom"])
async def test_utf8_with_and_without_bom(http: aiohttp.ClientSession, photos: PhotoHost, bom: bool):
    text = csv_of(f"Ü-1,Café crème ☕ {uuid.uuid4().hex[:6]},{photos.url}")
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8")
    request_id = await accepted(http, photos, data)
    [item] = await products(http, request_id, 1)
    assert item["serial_number"] == "Ü-1"  # a BOM left in place would have broken the first header cell
    assert item["product_name"].startswith("Café crème ☕")


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
async def test_lf_and_crlf_line_endings(http: aiohttp.ClientSession, photos: PhotoHost, newline: str):
    text = csv_of(unique_row("N1", photos.url), unique_row("N2", photos.url), newline=newline)
    request_id = await accepted(http, photos, text)
    items = await products(http, request_id, 2)
    assert [p["serial_number"] for p in items] == ["N1", "N2"]
    assert all("\r" not in p["product_name"] and "\r" not in p["input_image_urls"][0] for p in items)


async def test_quoted_cells_keep_commas_quotes_and_newlines(http: aiohttp.ClientSession, photos: PhotoHost):
    a, b = photos.urls(2)
    text = csv_of(f'"Q,1","Shoe, red ""deluxe""\nsecond line","{a},{b}"')
    request_id = await accepted(http, photos, text)
    [item] = await products(http, request_id, 1)
    assert item["serial_number"] == "Q,1"
    assert item["product_name"] == 'Shoe, red "deluxe"\nsecond line'
    assert item["input_image_urls"] == [a, b]


async def test_whitespace_around_urls_is_ignored(http: aiohttp.ClientSession, photos: PhotoHost):
    a, b, c = photos.urls(3)
    text = csv_of(f'W1,Padded {uuid.uuid4().hex},"  {a} ,\t{b}  ,   {c}"')
    request_id = await accepted(http, photos, text)
    [item] = await products(http, request_id, 1)
    assert item["input_image_urls"] == [a, b, c]
    assert len(item["output_image_urls"]) == 3 and len(item["image_errors"]) == 3


async def test_exactly_the_url_limit_is_accepted(
    http: aiohttp.ClientSession, photos: PhotoHost, limits: dict[str, int]
):
    urls = photos.urls(limits["max_urls_per_row"])
    request_id = await accepted(http, photos, csv_of(f'L1,At the limit {uuid.uuid4().hex},"{",".join(urls)}"'))
    [item] = await products(http, request_id, 1)
    assert item["input_image_urls"] == urls


async def test_accepted_upload_is_stored_once_and_probes_find_it(
    http: aiohttp.ClientSession, photos: PhotoHost, mongo: Any, minio: Minio
):
    """Positive control for the "nothing stored" probes used on refusals below."""
    data = csv_of(unique_row("P1", photos.url)).encode()
    key = f"control-{uuid.uuid4()}"
    assert await traces(mongo, minio, data, key) == {"requests": 0, "objects": 0, "requests_with_key": 0, "keys": 0}
    request_id = await accepted(http, photos, data, headers={"Idempotency-Key": key})
    assert await traces(mongo, minio, data, key) == {"requests": 1, "objects": 1, "requests_with_key": 1, "keys": 1}
    document = await mongo.requests.find_one({"_id": request_id})
    assert document["csv_sha256"] == hashlib.sha256(data).hexdigest()


# --- invalid rows: every problem named by row and column ----------------------------------------------------


async def test_duplicate_serial_names_the_second_occurrence(http: aiohttp.ClientSession):
    text = csv_of("D1,A,http://img.example/1.jpg", "D2,B,http://img.example/2.jpg", " D1 ,C,http://img.example/3.jpg")
    assert row_errors(await post(http, text)) == [(3, SERIAL, "serial number 'D1' appears more than once")]


async def test_a_row_problem_mentioning_rows_is_not_mistaken_for_the_row_limit(http: aiohttp.ClientSession):
    """A message that happens to contain "more than" and "rows" is still a 400, not a 413."""
    text = csv_of("rows,A,http://img.example/1.jpg", "rows,B,http://img.example/2.jpg")
    assert row_errors(await post(http, text)) == [(2, SERIAL, "serial number 'rows' appears more than once")]


async def test_ragged_rows_are_refused(http: aiohttp.ClientSession):
    text = csv_of("R1,A", "R2,B,http://img.example/2.jpg", "R3,C,http://img.example/3.jpg,extra")
    errors = row_errors(await post(http, text))
    assert [(row, column) for row, column, _ in errors] == [(1, None), (3, None)]
    assert "2 cells but the header has 3" in errors[0][2]
    assert "4 cells but the header has 3" in errors[1][2]


async def test_broken_quoting_is_refused(http: aiohttp.ClientSession):
    errors = row_errors(await post(http, csv_of('B1,"Mug"x,http://img.example/1.jpg')))
    assert len(errors) == 1 and errors[0][0] == 1 and "not valid CSV" in errors[0][2]


async def test_too_many_urls_in_a_row(http: aiohttp.ClientSession, limits: dict[str, int]):
    n = limits["max_urls_per_row"] + 1
    cell = ",".join(f"http://img.example/{i}.jpg" for i in range(n))
    errors = row_errors(await post(http, csv_of(f'U1,Mug,"{cell}"')))
    assert errors == [(1, URLS, f"{n} URLs; at most {limits['max_urls_per_row']} per row")]


async def test_too_long_url(http: aiohttp.ClientSession, limits: dict[str, int]):
    url = "http://img.example/" + "a" * limits["max_url_length"]
    errors = row_errors(await post(http, csv_of(f"U1,Mug,{url}")))
    assert errors == [(1, URLS, f"URL longer than {limits['max_url_length']} characters")]


async def test_every_problem_in_the_file_is_reported_in_file_order(http: aiohttp.ClientSession):
    text = csv_of(
        ",NoSerial,http://img.example/1.jpg",
        "E2,,ftp://img.example/2.jpg",
        "E3,Fine,http://img.example/3.jpg",
        "E3,Dup,",
        "E5,Short",
    )
    errors = row_errors(await post(http, text))
    assert [(row, column) for row, column, _ in errors] == [
        (1, SERIAL),
        (2, NAME),
        (2, URLS),
        (4, SERIAL),
        (4, URLS),
        (5, None),
    ]


async def test_reported_problems_are_capped(http: aiohttp.ClientSession, limits: dict[str, int]):
    cap = limits["max_reported_errors"]
    bad_rows = cap + 50
    text = csv_of(*(f"C{i},Mug,ftp://img.example/{i}.jpg" for i in range(1, bad_rows + 1)))
    body = problem_body(await post(http, text), 400, "invalid-csv")
    assert len(body["errors"]) == cap
    assert [e["row"] for e in body["errors"]] == list(range(1, cap + 1))
    assert f"only the first {cap} are listed" in body["detail"]
    assert "row 1 is the first data row" in body["row_numbering"]


# --- invalid files ------------------------------------------------------------------------------------------


async def test_missing_required_columns_are_named(http: aiohttp.ClientSession):
    errors = row_errors(await post(http, "Serial Number,Name,Urls\n1,Mug,http://img.example/a.jpg\n"))
    assert [(row, column) for row, column, _ in errors] == [(0, NAME), (0, URLS)]
    assert all("is missing" in message for _, _, message in errors)


async def test_repeated_required_column_is_refused(http: aiohttp.ClientSession):
    errors = row_errors(await post(http, csv_of("1,Mug,http://img.example/a.jpg,x", header=HEADER + ",product NAME")))
    assert errors == [(0, "product NAME", "column 'product NAME' appears more than once")]


@pytest.mark.parametrize("text", [HEADER + "\n", HEADER, HEADER + "\r\n\r\n\r\n", HEADER + "\n , , \n"])
async def test_header_without_rows(http: aiohttp.ClientSession, text: str):
    assert row_errors(await post(http, text)) == [(0, None, "the file has a header but no data rows")]


async def test_missing_file_field(http: aiohttp.ClientSession):
    body = problem_body(await post(http, None), 400, "missing-file")
    assert "'file'" in body["detail"]
    body = problem_body(await post(http, None, webhook_url="http://hooks.example/x"), 400, "missing-file")
    assert "'file'" in body["detail"]


async def test_two_file_fields(http: aiohttp.ClientSession):
    form = aiohttp.FormData()
    for _ in range(2):
        form.add_field("file", csv_of("1,Mug,http://img.example/a.jpg", POISON).encode(), filename="a.csv")
    async with http.post(f"{API}/upload", data=form) as response:
        answer = Answer(response.status, response.content_type, await response.json(content_type=None))
    problem_body(answer, 400, "multiple-files")


async def test_empty_file(http: aiohttp.ClientSession):
    body = problem_body(await post(http, b""), 400, "empty-file")
    assert "empty" in body["detail"]


async def test_binary_file_is_unsupported(http: aiohttp.ClientSession):
    data = HEADER.encode() + b"\n1,Mug,http://img.example/a.jpg\x00\x01\x02\n" + POISON.encode()
    body = problem_body(await post(http, data, content_type="application/octet-stream"), 415, "binary-file")
    assert "NUL" in body["detail"]


async def test_nul_byte_late_in_the_file_is_binary_too(http: aiohttp.ClientSession):
    padding = "n" * (300 * 1024)  # the NUL comes after the first 256 KiB chunk
    data = csv_of(f"1,Mug,http://img.example/a.jpg,{padding}", header=HEADER + ",Notes").encode()
    data += b"2,P\x00Q,http://img.example/z.jpg,\n" + (POISON + ",\n").encode()
    assert data.index(b"\x00") > 256 * 1024
    problem_body(await post(http, data), 415, "binary-file")


async def test_latin1_text_is_refused(http: aiohttp.ClientSession):
    data = csv_of("1,Café crème,http://img.example/a.jpg").encode("latin-1")
    body = problem_body(await post(http, data), 400, "not-utf8")
    offset = data.index(b"\xe9")
    assert f"byte offset {offset}" in body["detail"]


@pytest.mark.parametrize("content_type", ["image/png", "application/pdf", "application/zip", "video/mp4"])
async def test_non_csv_content_type_is_unsupported(http: aiohttp.ClientSession, content_type: str):
    body = problem_body(
        await post(http, csv_of("1,Mug,http://img.example/a.jpg", POISON), content_type=content_type, filename="x"),
        415,
        "not-csv",
    )
    assert content_type in body["detail"]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"Serial Number,Product Name,Input Image Urls\n1,Mug,http://img.example/a.jpg\n", "text/csv"),
        (b'{"file": "x"}', "application/json"),
        (b"file=x", "application/x-www-form-urlencoded"),
        (b"", None),
    ],
)
async def test_body_that_is_not_multipart_is_unsupported(
    http: aiohttp.ClientSession, body: bytes, content_type: str | None
):
    headers = {"Content-Type": content_type} if content_type else {}
    async with http.post(f"{API}/upload", data=body, headers=headers) as response:
        answer = Answer(response.status, response.content_type, await response.json(content_type=None))
    assert "multipart/form-data" in problem_body(answer, 415, "unsupported-media-type")["detail"]


async def test_file_over_the_byte_limit(http: aiohttp.ClientSession, limits: dict[str, int]):
    limit = limits["max_csv_bytes"]
    # short ragged rows: a file at the limit is read to the end, but stops after the first reported problems
    filler = (HEADER + "\n" + "x\n" * (limit // 2)).encode()
    at_limit = filler[:limit]
    over = at_limit + b"\n"
    assert len(over) == limit + 1
    body = problem_body(await post(http, over), 413, "file-too-large")
    assert body["limit_bytes"] == limit
    answer = await post(http, at_limit)
    assert answer.status == 400, answer.body  # exactly at the limit: judged on content, not size


async def test_file_over_the_row_limit(http: aiohttp.ClientSession, limits: dict[str, int]):
    rows = limits["max_rows"]
    line = "{},P,http://i.example/a.jpg\n"
    size = len(HEADER) + 1 + (rows + 1) * len(line.format(rows + 1))  # an upper bound
    if size > limits["max_csv_bytes"]:
        pytest.skip(f"max_rows + 1 rows (~{size} bytes) would break the byte limit first")
    over = HEADER + "\n" + "".join(line.format(i) for i in range(1, rows + 2)) + POISON + "\n"
    body = problem_body(await post(http, over), 413, "too-many-rows")
    assert f"more than {rows} rows" in body["detail"]
    assert body["errors"][-1]["row"] == rows + 1


@pytest.mark.parametrize(
    "webhook_url",
    ["ftp://hooks.example/x", "not a url", "javascript:alert(1)", "/relative/hook", "http://"],
)
async def test_invalid_webhook_url(http: aiohttp.ClientSession, webhook_url: str):
    answer = await post(http, csv_of("1,Mug,http://img.example/a.jpg", POISON), webhook_url=webhook_url)
    problem_body(answer, 400, "invalid-webhook-url")


@pytest.mark.parametrize("key", ["", "k" * 256, "caf\xe9", "tab\there"])
async def test_idempotency_key_length(http: aiohttp.ClientSession, key: str):
    # aiohttp's client would refuse to send a non-ASCII header value, so the header goes out as raw bytes
    raw = key.encode("latin-1")
    answer = await raw_upload(
        b"Idempotency-Key: " + raw + b"\r\n", csv_of("1,Mug,http://img.example/a.jpg", POISON).encode(), b"b0und"
    )
    problem_body(answer, 400, "bad-idempotency-key")


async def test_webhook_url_field_too_long(http: aiohttp.ClientSession, limits: dict[str, int]):
    url = "http://hooks.example/" + "h" * (4 * 1024 * 1024)  # the field is read in bounded chunks, not buffered
    answer = await post(http, csv_of("1,Mug,http://img.example/a.jpg"), webhook_url=url)
    assert "too long" in problem_body(answer, 400, "invalid-webhook-url")["detail"]


MULTIPART_PART = (
    b'--b0und\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\nContent-Type: text/csv\r\n\r\n'
)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (b"multipart/form-data", MULTIPART_PART + b"x\r\n--b0und--\r\n"),
        (b"multipart/form-data; boundary=b0und", b"no boundary anywhere in here"),
        (b"multipart/form-data; boundary=b0und", MULTIPART_PART + b"Serial Number,Prod"),
        (
            b"multipart/form-data; boundary=b0und",
            b'--b0und\r\nContent-Disposition: form-data; name="I\x0bX"\r\n\r\nv\r\n--b0und--\r\n',
        ),
    ],
    ids=["no-boundary-parameter", "boundary-never-found", "body-cut-short", "control-character-in-part-header"],
)
async def test_malformed_multipart_is_a_client_error(content_type: bytes, body: bytes):
    answer = await raw_request(b"Content-Type: " + content_type + b"\r\n", body)
    problem_body(answer, 400, "malformed-multipart")


# --- refusals store and queue nothing -----------------------------------------------------------------------


REFUSED = {
    "row-problem": (lambda u: csv_of(f",{u},http://img.example/a.jpg").encode(), "text/csv", 400),
    "header-only": (lambda u: f"{HEADER},{u}\n".encode(), "text/csv", 400),
    "not-utf8": (lambda u: csv_of(f"1,{u} \xe9,http://img.example/a.jpg").encode("latin-1"), "text/csv", 400),
    "binary": (lambda u: csv_of(f"1,{u},http://img.example/a.jpg", POISON).encode() + b"\x00", "text/csv", 415),
    "image-type": (lambda u: csv_of(f"1,{u},http://img.example/a.jpg", POISON).encode(), "image/png", 415),
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_refused_upload_stores_and_queues_nothing(http: aiohttp.ClientSession, mongo: Any, minio: Minio, case):
    make, content_type, status = REFUSED[case]
    data = make(uuid.uuid4().hex)
    key = f"refused-{uuid.uuid4()}"
    answer = await post(http, data, content_type=content_type, headers={"Idempotency-Key": key})
    assert answer.status == status and answer.content_type == PROBLEM_JSON
    # no request document means no request.accepted event either: it is published after the insert, and the
    # fan-out ignores ids it cannot find
    assert await traces(mongo, minio, data, key) == {"requests": 0, "objects": 0, "requests_with_key": 0, "keys": 0}


# --- Idempotency-Key ----------------------------------------------------------------------------------------


async def test_same_key_same_file_returns_the_same_request_and_starts_nothing_new(
    http: aiohttp.ClientSession, photos: PhotoHost, mongo: Any, minio: Minio
):
    key = f"idem-{uuid.uuid4()}"
    data = csv_of(unique_row("I1", photos.url)).encode()
    first = await accepted(http, photos, data, headers={"Idempotency-Key": key})
    again = await post(http, data, headers={"Idempotency-Key": key})
    assert again.status == 200
    assert again.body["request_id"] == first
    assert again.body["replayed"] is True
    assert again.body["message"] == "CSV received and processing started."
    assert await traces(mongo, minio, data, key) == {"requests": 1, "objects": 1, "requests_with_key": 1, "keys": 1}

    other = csv_of(unique_row("I1", photos.url)).encode()
    conflict = problem_body(await post(http, other, headers={"Idempotency-Key": key}), 422, "idempotency-key-reused")
    assert "different file" in conflict["detail"]
    assert await traces(mongo, minio, other, key) == {"requests": 0, "objects": 0, "requests_with_key": 1, "keys": 1}


async def test_racing_uploads_with_one_key_store_one_file_and_one_request(
    http: aiohttp.ClientSession, photos: PhotoHost, mongo: Any, minio: Minio
):
    """20 uploads with the same key at once (issue 11 saw 2 and 11 orphan CSVs): the losers store nothing."""
    key = f"race-{uuid.uuid4()}"
    same = csv_of(unique_row("R1", photos.url)).encode()
    other = csv_of(unique_row("R1", photos.url)).encode()
    gate = asyncio.Event()
    uploads = [
        asyncio.create_task(raw_upload(f"Idempotency-Key: {key}\r\n".encode(), body, b"r4ce", gate))
        for body in [same] * 14 + [other] * 6
    ]
    await asyncio.sleep(0.5)  # every request is in, short of its last bytes
    gate.set()
    answers = await asyncio.gather(*uploads)
    assert {answer.status for answer in answers} <= {200, 422}, [a.body for a in answers]
    ids = {answer.body["request_id"] for answer in answers if answer.status == 200}
    assert len(ids) == 1, ids
    photos.accepted.extend(ids)
    found = {
        "same": await traces(mongo, minio, same, key),
        "other": await traces(mongo, minio, other, key),
    }
    stored = found["same"]["objects"] + found["other"]["objects"]
    requests = found["same"]["requests"] + found["other"]["requests"]
    assert (stored, requests, found["same"]["keys"]) == (1, 1, 1), found


async def test_a_key_left_behind_by_an_upload_that_died_is_freed_after_a_minute(
    http: aiohttp.ClientSession, photos: PhotoHost, mongo: Any
):
    """The key is recorded just before the request; a crash between the two must not block the key forever."""
    key = f"orphan-{uuid.uuid4()}"
    ghost = str(uuid.uuid4())
    data = csv_of(unique_row("O1", photos.url)).encode()
    long_ago = datetime.now(UTC) - timedelta(minutes=5)
    await mongo.idempotency_keys.insert_one(
        {"_id": key, "request_id": ghost, "csv_sha256": "x", "created_at": long_ago}
    )
    request_id = await accepted(http, photos, data, headers={"Idempotency-Key": key})
    assert request_id != ghost
    assert (await mongo.idempotency_keys.find_one({"_id": key}))["request_id"] == request_id

    recent = f"orphan-{uuid.uuid4()}"  # a minute has not passed: maybe a concurrent upload still on its way
    await mongo.idempotency_keys.insert_one(
        {"_id": recent, "request_id": ghost, "csv_sha256": "x", "created_at": datetime.now(UTC)}
    )
    problem_body(await post(http, data, headers={"Idempotency-Key": recent}), 422, "idempotency-key-reused")


# --- optional API key (in-process app on the real servers) --------------------------------------------------


@pytest_asyncio.fixture(scope="module")
async def keyed_api() -> AsyncIterator[TestClient]:
    async with serve_api(Settings(api_key=SecretStr("s3cret-key-for-tests"))) as client:
        yield client


PROTECTED = [
    ("GET", "/status/00000000-0000-4000-8000-000000000000"),
    ("GET", "/requests/00000000-0000-4000-8000-000000000000"),
    ("GET", "/requests/00000000-0000-4000-8000-000000000000/products"),
    ("GET", "/requests/00000000-0000-4000-8000-000000000000/output.csv"),
    ("POST", "/upload"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize("key", [None, "", "wrong", "s3cret-key-for-tests-but-longer", "S3CRET-KEY-FOR-TESTS"])
async def test_api_key_is_required_when_configured(keyed_api: TestClient, method: str, path: str, key: str | None):
    headers = {} if key is None else {"X-API-Key": key}
    async with keyed_api.request(method, path, headers=headers, allow_redirects=False) as response:
        assert response.status == 401
        assert response.content_type == PROBLEM_JSON
        assert (await response.json(content_type=None))["type"].endswith("/unauthorized")


async def test_right_api_key_reaches_the_handlers(keyed_api: TestClient, mongo: Any, minio: Minio):
    headers = {"X-API-Key": "s3cret-key-for-tests"}
    async with keyed_api.get("/status/00000000-0000-4000-8000-000000000000", headers=headers) as response:
        assert response.status == 404
    async with keyed_api.get("/status/nope", headers=headers) as response:
        assert response.status == 400
    data = csv_of(f",{uuid.uuid4().hex},http://img.example/a.jpg").encode()
    answer = await post(keyed_api.session, data, headers=headers, base=str(keyed_api.make_url("")).rstrip("/"))
    assert row_errors(answer) == [(1, SERIAL, "serial number is empty")]
    assert await traces(mongo, minio, data) == {"requests": 0, "objects": 0}


async def test_health_is_open_without_a_key(keyed_api: TestClient):
    async with keyed_api.get("/healthz") as response:
        assert response.status == 200, await response.text()


async def test_metrics_are_open_without_a_key_and_never_show_it(keyed_api: TestClient):
    """Prometheus scrapes /metrics without the key (docs/security.md says why and what the page shows)."""
    async with keyed_api.get("/metrics") as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "text/plain"
        page = await response.text()
    assert "process_resident_memory_bytes" in page
    assert "s3cret-key-for-tests" not in page
    async with keyed_api.get("/metrics/anything-else") as response:  # an open route, not an open path prefix
        assert response.status == 401


async def test_the_openapi_document_needs_the_key_and_the_docs_shell_does_not(keyed_api: TestClient):
    """The document lists every route and limit, so it is protected like every route but /healthz. The /docs page
    is Swagger UI's shell (a browser cannot send the header on navigation): it holds nothing about the API, asks
    for the key and reads the document with it (services/ingest/docs.py, docs/security.md)."""
    async with keyed_api.get("/openapi.json") as response:
        assert response.status == 401
        assert response.content_type == PROBLEM_JSON
    async with keyed_api.get("/openapi.json", headers={"X-API-Key": "s3cret-key-for-tests"}) as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["security"] == [{"ApiKey": []}]
    for path in ("/docs", "/docs/pixpress-docs.js", "/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"):
        async with keyed_api.get(path) as response:
            assert response.status == 200, path
            shell = await response.text()
        if not path.startswith("/docs/assets/"):  # ours, not Swagger UI's
            assert not any(route in shell for route in ("/upload", "/status/", "/requests/", "max_rows")), path
    async with keyed_api.get("/docs/anything-else") as response:  # open routes, not an open path prefix
        assert response.status == 401
