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
from collections.abc import Callable
from typing import BinaryIO, TypeVar

import structlog
from minio import Minio
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
T = TypeVar("T")


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

    async def _retrying(self, operation: str, key: str, call: Callable[[], T]) -> T:
        """Run the blocking ``call`` in a thread, again after each transient failure until the retry time is up
        (the last try may start up to one backoff, at most 5 s, before that); then, or on a permanent error, the
        error is raised. ``call`` must be safe to repeat from the start."""
        async for attempt in AsyncRetrying(
            stop=stop_after_delay(self._retry_seconds),
            wait=wait_exponential_jitter(multiplier=0.2, max=5),
            retry=retry_if_exception(is_transient),
            before_sleep=_retry_logger(operation, key),
            reraise=True,
        ):
            with attempt:
                return await asyncio.to_thread(call)
        raise AssertionError("unreachable: AsyncRetrying either returns or raises")

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        def put() -> None:
            self._client.put_object(self._bucket, key, io.BytesIO(data), len(data), content_type=content_type)

        await self._retrying("put", key, put)

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
