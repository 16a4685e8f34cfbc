"""The output cache's keys and rules, without any server: what changes a key, when a remembered URL is worth
revalidating, the extension guess, and the agreement between reuse and retention (docs/cache.md)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from services.compressor import output_cache
from services.compressor.output_cache import OutputCache, content_key, output_extensions, policy_fingerprint
from shared.cache import Reuse, may_delete, reuse_decision
from shared.messages import SourceRecord
from shared.settings import Settings
from shared.storage import Storage
from tests.support.photos import encode, photo

pytestmark = pytest.mark.pure

SOURCE = hashlib.sha256(b"some source bytes").hexdigest()
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


# --- keys and revalidation --------------------------------------------------------------------------------------------


def test_every_setting_that_changes_output_bytes_changes_the_key(monkeypatch: pytest.MonkeyPatch):
    base = content_key(SOURCE, policy_fingerprint(50, True))
    assert base == content_key(SOURCE, policy_fingerprint(50, True))  # deterministic: redeliveries overwrite
    others = {
        "quality": content_key(SOURCE, policy_fingerprint(51, True)),
        "DCT path off": content_key(SOURCE, policy_fingerprint(50, False)),
        "other bytes": content_key(hashlib.sha256(b"other").hexdigest(), policy_fingerprint(50, True)),
    }
    monkeypatch.setattr(output_cache, "POLICY_VERSION", output_cache.POLICY_VERSION + 1)
    others["policy version"] = content_key(SOURCE, policy_fingerprint(50, True))
    assert base not in others.values() and len(set(others.values())) == len(others)


async def test_a_remembered_url_is_revalidated_only_when_its_output_is_of_these_settings():
    async with aiohttp.ClientSession() as http:
        cache = OutputCache(Storage(Settings()), http, quality=50, jpeg_fast_path=True, retention_days=None)
        at_quality_80 = OutputCache(Storage(Settings()), http, quality=80, jpeg_fast_path=True, retention_days=None)
    key = cache.key_for(SOURCE, "jpg")
    known = SourceRecord(sha256=SOURCE, size=10, etag='"v1"', object_key=key)
    assert cache.revalidation_target(known) == key
    assert cache.revalidation_target(known.model_copy(update={"etag": None, "last_modified": "x"})) == key
    assert cache.revalidation_target(known.model_copy(update={"etag": None})) is None  # nothing to ask with
    assert cache.revalidation_target(None) is None
    assert at_quality_80.revalidation_target(known) is None  # a 304 would not give it the bytes it needs
    per_request = known.model_copy(update={"object_key": f"images/{uuid.uuid4()}/0000001-00.jpg"})
    assert cache.revalidation_target(per_request) is None


def test_the_extension_guess_reads_the_magic_bytes():
    assert output_extensions(encode(photo("chelsea.png"), "JPEG")) == ("jpg",)
    assert output_extensions(encode(photo("chelsea.png"), "WEBP")) == ("webp",)
    assert output_extensions(encode(photo("chelsea.png"), "PNG")) == ("jpg", "webp")
    assert output_extensions(b"") == ("jpg", "webp")


def test_reuse_and_deletion_leave_half_the_window_between_them():
    day = timedelta(days=1)
    for days in (1, 30):
        window = days * day
        assert reuse_decision(NOW - window / 4 + timedelta(seconds=1), NOW, days) is Reuse.FRESH
        assert reuse_decision(NOW - window / 4, NOW, days) is Reuse.REFRESH
        assert reuse_decision(NOW - window / 2 + timedelta(seconds=1), NOW, days) is Reuse.REFRESH
        assert reuse_decision(NOW - window / 2, NOW, days) is Reuse.EXPIRING
        assert not may_delete(NOW - window + timedelta(seconds=1), NOW, days)
        assert may_delete(NOW - window, NOW, days)
        # the latest a reused object can have been last used, and the first moment retention may delete it
        latest_reuse = NOW - window / 2 + timedelta(seconds=1)
        assert not may_delete(latest_reuse, NOW + window / 2 - timedelta(seconds=2), days)
    assert reuse_decision(NOW - 1000 * day, NOW, None) is Reuse.FRESH  # no retention: nothing is ever deleted
