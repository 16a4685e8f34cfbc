"""Object storage (MinIO / any S3) behind a small async facade.

The minio SDK is blocking, so calls run in worker threads. Objects under ``images/`` and ``outputs/`` are
public-read (clients GET them without credentials, as the brief requires); raw uploads under ``uploads/`` stay
private.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO
from urllib.parse import quote

from minio import Minio
from minio.commonconfig import REPLACE, CopySource
from minio.deleteobjects import DeleteObject
from minio.error import S3Error
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential
from urllib3.exceptions import HTTPError

from shared.settings import Settings

PUBLIC_PREFIXES = ("images/", "outputs/")
STORAGE_ERRORS = (S3Error, HTTPError, OSError)
_MISSING = ("NoSuchKey", "NoSuchObject")


@dataclass(frozen=True)
class StoredObject:
    """What a HEAD says about an object: enough to reuse it without reading it."""

    key: str
    size: int
    last_modified: datetime
    content_type: str
    metadata: dict[str, str]  # user metadata (x-amz-meta-*), names lower-case without the prefix


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


class Storage:
    """Writes retry with backoff for ``storage_retry_seconds``: a storage server that restarts for a few seconds
    delays work (the message stays unacked, holding its prefetch slot) instead of failing or redelivering it."""

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

    @property
    def retry_seconds(self) -> float:
        """How long storage calls should wait out an unreachable storage server (PIXPRESS_STORAGE_RETRY_SECONDS)."""
        return self._retry_seconds

    def public_url(self, key: str) -> str:
        return f"{self._public_base}/{key}"

    def endpoint_url(self, key: str) -> str:
        """The object at the storage endpoint itself (path style), not behind the public base URL (a CDN may
        answer from its own cache there)."""
        return f"{self._endpoint}/{self._bucket}/{quote(key)}"

    async def put_bytes(
        self, key: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None
    ) -> None:
        await asyncio.to_thread(
            self._client.put_object,
            self._bucket,
            key,
            io.BytesIO(data),
            len(data),
            content_type=content_type,
            metadata=metadata,  # type: ignore[arg-type]
        )

    async def stat(self, key: str) -> StoredObject | None:
        """HEAD the object; None when it does not exist."""
        return await asyncio.to_thread(self._stat_sync, key)

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
        metadata, which MinIO does in the metadata alone); False when it no longer exists."""
        return await asyncio.to_thread(self._touch_sync, stored)

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
        await asyncio.to_thread(self._client.put_object, self._bucket, key, stream, length, content_type=content_type)

    async def delete_prefix(self, prefix: str, limit: int) -> int:
        """Deletes up to ``limit`` objects whose keys start with ``prefix``; returns how many it deleted (fewer
        than ``limit``: none are left)."""
        return await asyncio.to_thread(self._delete_prefix_sync, prefix, limit)

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
        await asyncio.to_thread(self._client.remove_object, self._bucket, key)

    async def download_to_file(self, key: str, path: str) -> None:
        await asyncio.to_thread(self._client.fget_object, self._bucket, key, path)

    async def healthy(self) -> bool:
        try:
            return await asyncio.to_thread(self._client.bucket_exists, self._bucket)
        except STORAGE_ERRORS:
            return False
