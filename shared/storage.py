"""Object storage (MinIO / any S3) behind a small async facade.

The minio SDK is blocking, so calls run in worker threads. Objects under ``images/`` and ``outputs/`` are
public-read (clients GET them without credentials, as the brief requires); raw uploads under ``uploads/`` stay
private.

Every read and write retries transient failures (connection refused or reset, timeouts, 5xx answers, MinIO still
starting) with exponential backoff for up to ``PIXPRESS_STORAGE_RETRY_SECONDS``; minio-py's own urllib3 retries
(5 more tries within about 6 s) run inside each of our tries. A storage server that restarts therefore delays the work
holding it: the message being handled stays unacked and keeps its prefetch slot, instead of failing, being
redelivered and, for image tasks, moving to the suspect queue. Permanent errors (access denied, no such key or
bucket) are raised at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, TypeVar
from urllib.parse import quote

import structlog
from minio import Minio
from minio.commonconfig import REPLACE, CopySource
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
    wait_exponential_jitter,
)
from urllib3.exceptions import HTTPError

from shared.settings import Settings

log = structlog.get_logger()

PUBLIC_PREFIXES = ("images/", "outputs/")
STORAGE_ERRORS = (S3Error, ServerError, InvalidResponseError, HTTPError, OSError)
# S3 error codes that say "try again" whatever the HTTP status (RequestTimeout is a 400)
_TRANSIENT_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "XMinioServerNotInitialized"}
)
_MISSING = ("NoSuchKey", "NoSuchObject")
T = TypeVar("T")


@dataclass(frozen=True)
class StoredObject:
    """What a HEAD says about an object: enough to reuse it without reading it."""

    key: str
    size: int
    last_modified: datetime
    content_type: str
    metadata: dict[str, str]  # user metadata (x-amz-meta-*), names lower-case without the prefix


def is_transient(error: BaseException) -> bool:
    """Worth another try: the server was unreachable, slow or said so. Local file errors and S3's refusals
    (4xx such as AccessDenied, NoSuchKey, NoSuchBucket) are not."""
    if isinstance(error, HTTPError | ConnectionError | TimeoutError):  # urllib3: refused, reset, timed out, retried out
        return True
    if isinstance(error, S3Error):
        return error.code in _TRANSIENT_CODES or error.response.status >= 500
    if isinstance(error, ServerError):
        return error.status_code >= 500
    if isinstance(error, InvalidResponseError):  # a proxy's HTML 502 page, say
        return "Response code: 5" in str(error)
    return False


def _public_read_policy(bucket: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": ["*"]},
                    "Action": ["s3:GetObject"],
                    "Resource": [f"arn:aws:s3:::{bucket}/{prefix}*" for prefix in PUBLIC_PREFIXES],
                }
            ],
        }
    )


def user_metadata(headers: Mapping[str, str]) -> dict[str, str]:
    """The ``x-amz-meta-*`` headers of an object, by their names lower-case without the prefix."""
    prefix = "x-amz-meta-"
    return {name.lower()[len(prefix) :]: value for name, value in headers.items() if name.lower().startswith(prefix)}


def _retry_logger(operation: str, key: str) -> Callable[[RetryCallState], None]:
    def log_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "storage_retry",
            operation=operation,
            key=key,
            attempt=state.attempt_number,
            error=f"{type(error).__name__}: {str(error)[:200]}",
            next_try_in=round(state.upcoming_sleep, 2),
        )

    return log_retry


class Storage:
    """Reads and writes retry transient failures for ``storage_retry_seconds`` (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self._retry_seconds = settings.storage_retry_seconds
        self._bucket = settings.s3_bucket
        self._public_base = settings.public_base
        self._endpoint = f"{'https' if settings.s3_secure else 'http'}://{settings.s3_endpoint}"
        self._client = Minio(
            settings.s3_endpoint,
            access_key=settings.s3_access_key.get_secret_value(),
            secret_key=settings.s3_secret_key.get_secret_value(),
            secure=settings.s3_secure,
        )

    async def ensure_bucket(self, wait_seconds: float = 120.0) -> None:
        """Create the bucket and its public-read policy, waiting for a storage server that is still booting."""
        async for attempt in AsyncRetrying(
            stop=stop_after_delay(wait_seconds),
            wait=wait_exponential(multiplier=0.2, max=5),
            retry=retry_if_exception_type(STORAGE_ERRORS),
            reraise=True,
        ):
            with attempt:
                await asyncio.to_thread(self._ensure_bucket_sync)

    def _ensure_bucket_sync(self) -> None:
        if not self._client.bucket_exists(self._bucket):
            try:
                self._client.make_bucket(self._bucket)
            except S3Error as exc:  # another service created it first
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
        self._client.set_bucket_policy(self._bucket, _public_read_policy(self._bucket))

    def public_url(self, key: str) -> str:
        return f"{self._public_base}/{key}"

    def key_of(self, public_url: str) -> str | None:
        """The object key behind a URL :meth:`public_url` made; None for any other URL (never a key outside the
        public prefixes, so a stored URL cannot be turned into a read of a private upload)."""
        prefix = f"{self._public_base}/"
        if not public_url.startswith(prefix):
            return None
        key = public_url[len(prefix) :]
        if not key.startswith(PUBLIC_PREFIXES) or ".." in key.split("/"):
            return None
        return key

    async def get_bytes(self, key: str, max_bytes: int) -> bytes:
        """The whole object, refused (``ValueError``) when it is larger than ``max_bytes``."""

        def get() -> bytes:
            response = self._client.get_object(self._bucket, key)
            try:
                declared = int(response.headers.get("Content-Length", "0") or 0)
                if declared > max_bytes:
                    raise ValueError(f"object {key} is {declared} bytes; the limit is {max_bytes}")
                data = response.read(max_bytes + 1)
                if len(data) > max_bytes:
                    raise ValueError(f"object {key} is larger than {max_bytes} bytes")
                return data
            finally:
                response.close()
                response.release_conn()

        return await self._retrying("get", key, get)

    def endpoint_url(self, key: str) -> str:
        """The object at the storage endpoint itself (path style), not behind the public base URL (a CDN may
        answer from its own cache there)."""
        return f"{self._endpoint}/{self._bucket}/{quote(key)}"

    async def retrying(
        self,
        operation: str,
        key: str,
        call: Callable[[], Awaitable[T]],
        transient: Callable[[BaseException], bool] = is_transient,
    ) -> T:
        """Await ``call()`` again after each transient failure until the retry time is up (the last try may start
        up to one backoff, at most 5 s, before that); then, or on a permanent error, the error is raised. ``call``
        must be safe to repeat from the start. Public for storage requests made without minio-py (the output
        cache's anonymous HEAD), which pass what counts as transient for their client."""
        async for attempt in AsyncRetrying(
            stop=stop_after_delay(self._retry_seconds),
            wait=wait_exponential_jitter(multiplier=0.2, max=5),
            retry=retry_if_exception(transient),
            before_sleep=_retry_logger(operation, key),
            reraise=True,
        ):
            with attempt:
                return await call()
        raise AssertionError("unreachable: AsyncRetrying either returns or raises")

    async def _retrying(self, operation: str, key: str, call: Callable[[], T]) -> T:
        """:meth:`retrying` for a blocking minio-py ``call``, run in a worker thread."""
        return await self.retrying(operation, key, lambda: asyncio.to_thread(call))

    async def put_bytes(
        self, key: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None
    ) -> None:
        """``metadata``: user metadata, stored as ``x-amz-meta-<name>`` headers (see :meth:`stat`)."""

        def put() -> None:
            self._client.put_object(
                self._bucket,
                key,
                io.BytesIO(data),
                len(data),
                content_type=content_type,
                metadata=metadata,  # type: ignore[arg-type]
            )

        await self._retrying("put", key, put)

    async def stat(self, key: str) -> StoredObject | None:
        """HEAD the object; None when it does not exist."""
        return await self._retrying("stat", key, lambda: self._stat_sync(key))

    def _stat_sync(self, key: str) -> StoredObject | None:
        try:
            found = self._client.stat_object(self._bucket, key)
        except S3Error as exc:
            if exc.code in _MISSING:
                return None
            raise
        assert found.last_modified is not None and found.size is not None
        metadata = user_metadata(found.metadata or {})
        return StoredObject(key, found.size, found.last_modified, found.content_type or "", metadata)

    async def touch(self, stored: StoredObject) -> bool:
        """Move the object's Last-Modified to now without moving its bytes (a copy onto itself replacing its
        metadata, which MinIO does in the metadata alone); False when it no longer exists. Safe to repeat."""
        return await self._retrying("touch", stored.key, lambda: self._touch_sync(stored))

    def _touch_sync(self, stored: StoredObject) -> bool:
        metadata = {f"x-amz-meta-{name}": value for name, value in stored.metadata.items()}
        metadata["Content-Type"] = stored.content_type
        try:
            self._client.copy_object(
                self._bucket,
                stored.key,
                CopySource(self._bucket, stored.key),
                metadata=metadata,  # type: ignore[arg-type]
                metadata_directive=REPLACE,
            )
        except S3Error as exc:
            if exc.code in _MISSING:
                return False
            raise
        return True

    async def put_stream(self, key: str, stream: BinaryIO, length: int, content_type: str) -> None:
        """``stream`` must be seekable: every try sends it again from where it stood at the call."""
        start = stream.tell()

        def put() -> None:
            stream.seek(start)  # a failed try may have read part or all of it
            self._client.put_object(self._bucket, key, stream, length, content_type=content_type)

        await self._retrying("put", key, put)

    async def delete_prefix(self, prefix: str, limit: int) -> int:
        """Deletes up to ``limit`` objects whose keys start with ``prefix``; returns how many it deleted (fewer
        than ``limit``: none are left)."""
        return await self._retrying("delete_prefix", prefix, lambda: self._delete_prefix_sync(prefix, limit))

    def _delete_prefix_sync(self, prefix: str, limit: int) -> int:
        names = []
        for item in self._client.list_objects(self._bucket, prefix=prefix, recursive=True):
            names.append(item.object_name)
            if len(names) >= limit:
                break
        if names:
            # remove_objects is lazy: the errors must be read for the deletes to happen at all
            errors = list(self._client.remove_objects(self._bucket, (DeleteObject(name) for name in names)))
            if errors:
                raise OSError(f"deleting {errors[0].name} failed: {errors[0].code} {errors[0].message}")
        return len(names)

    async def delete(self, key: str) -> None:
        await self._retrying("delete", key, lambda: self._client.remove_object(self._bucket, key))

    async def download_to_file(self, key: str, path: str) -> None:
        """Every try downloads the whole object again into a part file next to ``path``, renamed on success;
        the part file is removed when the download fails for good."""
        part = f"{path}.part"

        def get() -> None:
            self._client.fget_object(self._bucket, key, path, tmp_file_path=part)

        try:
            await self._retrying("get", key, get)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(part)

    async def healthy(self) -> bool:
        try:
            return await asyncio.to_thread(self._client.bucket_exists, self._bucket)
        except STORAGE_ERRORS:
            return False
