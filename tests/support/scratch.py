"""Buckets of their own on the stack's MinIO, for tests that must count or age objects nobody else writes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from minio import Minio

from shared.database import Database
from shared.settings import Settings
from shared.storage import Storage


def minio_client(settings: Settings) -> Minio:
    return Minio(
        settings.s3_endpoint,
        access_key=settings.s3_access_key.get_secret_value(),
        secret_key=settings.s3_secret_key.get_secret_value(),
        secure=settings.s3_secure,
    )


def drop_bucket(settings: Settings) -> None:
    """Delete the bucket with everything in it."""
    minio = minio_client(settings)
    for item in minio.list_objects(settings.s3_bucket, recursive=True):
        minio.remove_object(settings.s3_bucket, item.object_name)
    minio.remove_bucket(settings.s3_bucket)


@asynccontextmanager
async def scratch_stores(purpose: str) -> AsyncIterator[tuple[Database, Storage, Settings]]:
    """A database and a bucket of their own on the stack's servers, dropped afterwards."""
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(mongo_db=f"pixpress_test_{purpose}_{suffix}", s3_bucket=f"pixpress-test-{purpose}-{suffix}")
    db, storage = Database(settings), Storage(settings)
    await db.connect()
    await storage.ensure_bucket()
    try:
        yield db, storage, settings
    finally:
        await db.client.drop_database(settings.mongo_db)
        drop_bucket(settings)
        await db.close()
