"""``POST /upload``: receive, validate, store durably, publish one event, answer. Nothing else on this path.

The file is streamed to a temporary file (never held whole in memory), validated in a worker thread, then
stored in MinIO with the request record in MongoDB before one confirmed ``request.accepted`` event goes out.
Turning rows into product records and image tasks happens later, in :mod:`services.ingest.fanout`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from pymongo.errors import DuplicateKeyError

from services.ingest.csv_parser import CsvReader, HeaderError, Limits, RowProblem, url_problem
from services.ingest.problems import problem
from services.ingest.records import new_request_document
from shared.api_models import UploadAccepted, json_body
from shared.broker import Broker
from shared.database import Database
from shared.messages import RequestAccepted, RoutingKey
from shared.reasons import short_reason
from shared.request_hours import record_hour
from shared.settings import Settings
from shared.storage import Storage
from shared.timeutil import utcnow

log = structlog.get_logger()

ORPHAN_KEY_AFTER = timedelta(minutes=1)
_NON_CSV_TYPES = (
    "image/",
    "audio/",
    "video/",
    "font/",
    "application/pdf",
    "application/zip",
    "application/gzip",
    "application/x-",
    "application/vnd.openxmlformats",
)


def accepted(request_id: str, *, replayed: bool = False) -> web.Response:
    """The seed's exact answer, plus additive keys."""
    return web.json_response(json_body(UploadAccepted.of(request_id, replayed=replayed)))


class UploadRefused(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


@dataclass
class Validation:
    rows: int = 0
    urls: int = 0
    header: list[str] = field(default_factory=list)
    extra_columns: list[str] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)
    truncated: bool = False


def validate_file(path: str, limits: Limits, max_problems: int) -> Validation:
    """Read the whole file once, collecting up to ``max_problems`` problems; runs in a thread."""
    result = Validation()
    with open(path, encoding="utf-8-sig", newline="", errors="strict") as stream:
        reader = CsvReader(stream, limits)
        try:
            reader.read_header()
        except HeaderError as exc:
            result.problems = exc.problems
            return result
        result.header, result.extra_columns = reader.header, reader.extra_columns
        for item in reader:
            if isinstance(item, RowProblem):
                if len(result.problems) >= max_problems:
                    result.truncated = True
                    break
                result.problems.append(item)
        result.rows, result.urls = reader.rows_seen, reader.urls_seen
    if not result.problems and result.rows == 0:
        result.problems.append(RowProblem(0, None, "the file has a header but no data rows"))
    return result


class UploadHandler:
    def __init__(self, settings: Settings, db: Database, storage: Storage, broker: Broker) -> None:
        self.settings = settings
        self.db = db
        self.storage = storage
        self.broker = broker
        self.limits = Limits(
            settings.max_rows, settings.max_urls_per_row, settings.max_url_length, settings.allow_private_urls
        )
        self._recorded_hour: str | None = None

    async def __call__(self, request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/form-data"):
            return problem(
                415,
                "unsupported-media-type",
                "Unsupported Media Type",
                "send the CSV as multipart/form-data with the file in a field named 'file'",
            )
        idempotency_key = request.headers.get("Idempotency-Key")
        if idempotency_key is not None and not (
            1 <= len(idempotency_key) <= 255 and idempotency_key.isascii() and idempotency_key.isprintable()
        ):
            return problem(
                400,
                "bad-idempotency-key",
                "Bad Idempotency-Key",
                "Idempotency-Key must be 1 to 255 printable ASCII characters",
            )
        fd, path = tempfile.mkstemp(prefix="pixpress-upload-", suffix=".csv")
        os.close(fd)
        try:
            return await self._handle(request, path, idempotency_key)
        except UploadRefused as refused:
            return refused.response
        finally:
            os.unlink(path)

    async def _handle(self, request: web.Request, path: str, idempotency_key: str | None) -> web.Response:
        webhook_url, digest, size = await self._receive(request, path)
        if webhook_url is not None:
            self._check_webhook(webhook_url)
        if idempotency_key is not None:
            previous = await self._previous_use(idempotency_key)
            if previous is not None:
                return self._replay(previous, digest)
        validation = await self._validate(path)
        request_id = str(uuid.uuid4())
        structlog.contextvars.bind_contextvars(request_id=request_id)
        if idempotency_key is not None:
            # claimed before anything is stored: an upload that loses the race for its key stores nothing
            holder = await self._claim(idempotency_key, request_id, digest)
            if holder is not None:
                return self._replay(holder, digest)
        try:
            return await self._store(request_id, path, size, digest, validation, webhook_url, idempotency_key)
        except BaseException:
            if idempotency_key is not None:  # free the key at once: the client may retry with it
                await self.db.idempotency_keys.delete_one({"_id": idempotency_key, "request_id": request_id})
            raise

    async def _store(
        self,
        request_id: str,
        path: str,
        size: int,
        digest: str,
        validation: Validation,
        webhook_url: str | None,
        idempotency_key: str | None,
    ) -> web.Response:
        csv_key = f"uploads/{request_id}/input.csv"
        with open(path, "rb") as stream:  # noqa: ASYNC230 - opening a local temp file; the upload runs in a thread
            await self.storage.put_stream(csv_key, stream, size, "text/csv")
        document = new_request_document(
            request_id,
            csv_key=csv_key,
            csv_sha256=digest,
            products_total=validation.rows,
            images_total=validation.urls,
            header=validation.header,
            extra_columns=validation.extra_columns,
            webhook_url=webhook_url,
            idempotency_key=idempotency_key,
        )
        try:
            await self._record_hour(document["created_hour"])
            await self.db.requests.insert_one(document)
        except BaseException:
            await self.storage.delete(csv_key)  # no request refers to it: do not leave it behind
            raise
        await self.broker.publish(
            RoutingKey.REQUEST_ACCEPTED, RequestAccepted(request_id=request_id), message_id=request_id
        )
        log.info("upload_accepted", rows=validation.rows, urls=validation.urls, bytes=size)
        return accepted(request_id)

    async def _record_hour(self, hour: str) -> None:
        """List the request's hour for ``GET /requests`` (shared/request_hours.py) before the request exists; once
        per hour per process, as an hour that has requests is never deleted while it is recent."""
        if hour != self._recorded_hour:
            await record_hour(self.db, hour)
            self._recorded_hour = hour

    async def _claim(self, key: str, request_id: str, digest: str) -> dict[str, Any] | None:
        """Record ``key`` as this upload's; when another upload holds it already, return that upload's record."""
        try:
            await self.db.idempotency_keys.insert_one(
                {"_id": key, "request_id": request_id, "csv_sha256": digest, "created_at": utcnow()}
            )
            return None
        except DuplicateKeyError:
            holder = await self.db.idempotency_keys.find_one({"_id": key})
        if holder is None:  # claimed and released again in between (that upload failed): let the client retry
            raise UploadRefused(
                problem(
                    409,
                    "idempotency-key-busy",
                    "Idempotency-Key busy",
                    "another upload with this Idempotency-Key just failed; send it again",
                )
            )
        return holder

    async def _previous_use(self, key: str) -> dict[str, Any] | None:
        """The earlier upload under ``key``, if it got as far as its request record.

        The key is recorded just before the request; an upload that died between the two leaves an orphan key.
        One older than a minute (so not a concurrent upload still on its way) is dropped and the key is free.
        """
        previous = await self.db.idempotency_keys.find_one({"_id": key})
        if previous is None or await self.db.requests.find_one({"_id": previous["request_id"]}, {"_id": 1}):
            return previous
        created = previous.get("created_at")
        if created is not None and created > utcnow() - ORPHAN_KEY_AFTER:
            return previous
        await self.db.idempotency_keys.delete_one({"_id": key, "request_id": previous["request_id"]})
        log.warning("idempotency_key_orphan_dropped", request_id=previous["request_id"])
        return None

    @staticmethod
    def _replay(previous: dict[str, Any], digest: str) -> web.Response:
        """Same key and same bytes: the original answer again, and nothing new starts."""
        if previous.get("csv_sha256") != digest:
            return problem(
                422,
                "idempotency-key-reused",
                "Idempotency-Key reused",
                "this Idempotency-Key was already used with a different file",
            )
        return accepted(previous["request_id"], replayed=True)

    async def _receive(self, request: web.Request, path: str) -> tuple[str | None, str, int]:
        """Stream the multipart body; returns (webhook_url, sha256 of the file, file size).

        The body must arrive within ``api_body_timeout``: a client trickling bytes cannot hold the connection.
        """
        limit = self.settings.api_body_timeout
        try:
            async with asyncio.timeout(limit):
                return await self._read_parts(request, path)
        except TimeoutError:
            response = problem(
                408, "body-timeout", "Request body too slow", f"the upload body did not arrive within {limit:g} s"
            )
            response.force_close()
            raise UploadRefused(response) from None
        # aiohttp's multipart reader: no boundary, boundary not found, body cut short, malformed part headers
        except (ValueError, HttpProcessingError) as exc:
            raise UploadRefused(
                problem(
                    400,
                    "malformed-multipart",
                    "Malformed multipart body",
                    "the multipart/form-data body could not be read: " + short_reason(str(exc)),
                )
            ) from None

    async def _read_parts(self, request: web.Request, path: str) -> tuple[str | None, str, int]:
        reader = await request.multipart()
        webhook_url: str | None = None
        digest: str | None = None
        size = 0
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "file":
                if digest is not None:
                    raise UploadRefused(
                        problem(400, "multiple-files", "More than one file", "send exactly one 'file' field")
                    )
                self._check_part_type(part)
                digest, size = await self._save(part, path)
            elif part.name == "webhook_url":
                raw = bytearray()
                while chunk := await part.read_chunk(4096):  # bounded: never buffer a huge field
                    raw += chunk
                    if len(raw) > self.settings.max_url_length:
                        raise UploadRefused(
                            problem(400, "invalid-webhook-url", "Invalid webhook_url", "webhook_url is too long")
                        )
                webhook_url = part.decode(bytes(raw)).decode("utf-8", errors="replace").strip() or None
            else:
                await part.release()
        if digest is None:
            raise UploadRefused(
                problem(400, "missing-file", "Missing file", "the multipart body has no field named 'file'")
            )
        if size == 0:
            raise UploadRefused(problem(400, "empty-file", "Empty file", "the uploaded file is empty"))
        return webhook_url, digest, size

    @staticmethod
    def _check_part_type(part: BodyPartReader) -> None:
        declared = (part.headers.get("Content-Type") or "").lower()
        if declared.startswith(_NON_CSV_TYPES):
            raise UploadRefused(
                problem(415, "not-csv", "Not a CSV file", f"the file was sent as {declared}; send a CSV (text/csv)")
            )

    async def _save(self, part: BodyPartReader, path: str) -> tuple[str, int]:
        limit = self.settings.max_csv_bytes
        sha = hashlib.sha256()
        size = 0
        with open(path, "wb") as out:  # noqa: ASYNC230 - writes below go through a thread
            while chunk := await part.read_chunk(256 * 1024):
                if b"\x00" in chunk:  # anywhere in the file, not only at its start; memchr is cheap
                    raise UploadRefused(
                        problem(
                            415,
                            "binary-file",
                            "Binary file",
                            "the file contains NUL bytes; it is not a CSV text file",
                        )
                    )
                size += len(chunk)
                if size > limit:
                    raise UploadRefused(
                        problem(
                            413,
                            "file-too-large",
                            "File too large",
                            f"the file is larger than the limit of {limit} bytes",
                            limit_bytes=limit,
                        )
                    )
                sha.update(chunk)
                await asyncio.to_thread(out.write, chunk)
        return sha.hexdigest(), size

    def _check_webhook(self, url: str) -> None:
        reason = url_problem(url, self.settings.max_url_length, allow_private=self.settings.allow_private_urls)
        if reason is not None:
            raise UploadRefused(problem(400, "invalid-webhook-url", "Invalid webhook_url", reason))

    async def _validate(self, path: str) -> Validation:
        try:
            validation = await asyncio.to_thread(validate_file, path, self.limits, self.settings.max_reported_errors)
        except UnicodeDecodeError as exc:
            raise UploadRefused(
                problem(400, "not-utf8", "Not UTF-8", f"the file is not valid UTF-8 text (byte offset {exc.start})")
            ) from None
        if not validation.problems:
            return validation
        # the reader stops at the first row over the limit, so only that problem has a row number above it
        too_many_rows = any(p.row > self.settings.max_rows for p in validation.problems)
        if too_many_rows:
            raise UploadRefused(
                problem(
                    413,
                    "too-many-rows",
                    "Too many rows",
                    f"the file has more than {self.settings.max_rows} rows",
                    errors=[p.as_dict() for p in validation.problems],
                )
            )
        detail = f"{len(validation.problems)} problem(s) found"
        if validation.truncated:
            detail += f"; only the first {self.settings.max_reported_errors} are listed"
        raise UploadRefused(
            problem(
                400,
                "invalid-csv",
                "Invalid CSV",
                detail,
                errors=[p.as_dict() for p in validation.problems],
                row_numbering="row 1 is the first data row; row 0 is the header",
            )
        )
