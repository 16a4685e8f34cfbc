"""The compressor's side of the output cache: keys from source bytes and policy, lookups by HEAD (docs/cache.md).

MinIO itself is the cache: an object under a content key exists or it does not, and a HEAD (about 1 ms) says
which, so a deleted object (retention, a bucket emptied by hand) is simply a miss, never a broken URL. The
compressor needs no database: what it knows about a URL's last download comes in the task (``ImageTask.known``,
looked up by the fan-out in batches) and what it learns goes out in the result, for the aggregator to remember.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

import aiohttp
import PIL
import structlog
from PIL import features

from services.compressor import _jpegdct
from shared.cache import Reuse, is_shared_object, reuse_decision, shared_object_key
from shared.messages import SourceRecord
from shared.storage import Storage, StoredObject, user_metadata
from shared.timeutil import utcnow

log = structlog.get_logger()

# Bump whenever services/compressor/compress.py or _jpegdct.c changes the bytes they write for some input: every
# output made before then stops being reused (their keys are never computed again) and expires with its requests.
POLICY_VERSION = 1

_JPEG_MAGIC = b"\xff\xd8\xff"


def policy_fingerprint(quality: int, jpeg_fast_path: bool) -> str:
    """Everything besides the source bytes that decides the output bytes: the policy's version, the settings that
    change output (quality, the DCT-domain path on or off) and the codec libraries' versions (an upgraded encoder
    may write other bytes, and outputs must be what a fresh run writes). Limits (pixels, frames, bytes) are not in
    it: they decide whether an image is refused, and refusals are never cached."""
    return ";".join(
        (
            f"policy={POLICY_VERSION}",
            f"quality={quality}",
            f"dct={'on' if jpeg_fast_path else 'off'}",
            f"pillow={PIL.__version__}",
            f"libjpeg-turbo={features.version_feature('libjpeg_turbo')}",
            f"libwebp={features.version('webp')}",
            f"dct-libjpeg-turbo={_jpegdct.LIBJPEG_TURBO_VERSION_NUMBER}",
        )
    )


def content_key(source_sha256: str, fingerprint: str) -> str:
    return hashlib.sha256(f"{fingerprint}\n{source_sha256}".encode()).hexdigest()


def output_extensions(data: bytes) -> tuple[str, ...]:
    """The extensions the policy can give these bytes' output, most likely first, read from the magic bytes alone
    (no decode): JPEG (and MPO) stay JPEG, WebP stays WebP, anything else becomes JPEG or, with transparency, WebP.
    A wrong guess costs a miss, never a wrong output: an output is stored under the extension it really has."""
    if data.startswith(_JPEG_MAGIC):
        return ("jpg",)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ("webp",)
    return ("jpg", "webp")


@dataclass(frozen=True)
class Output:
    """An output in storage and what a result reports about it: its size, the codec that made it, the format its
    source decoded as and its own (None where unknown)."""

    key: str
    size: int
    codec: str | None
    format_in: str | None = None
    format_out: str | None = None


@dataclass(frozen=True)
class Hit(Output):
    """A shared output that may be reused; codec and formats are read back from the object's metadata and type
    (a revalidated image has no bytes to look at)."""


@dataclass(frozen=True)
class Expiring:
    """A shared output that exists but that retention may delete any moment (``Reuse.EXPIRING``)."""

    key: str


class OutputCache:
    def __init__(
        self,
        storage: Storage,
        http: aiohttp.ClientSession,
        quality: int,
        jpeg_fast_path: bool,
        retention_days: int | None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.storage = storage
        self.http = http  # to the storage endpoint only: not through the SSRF guard, which would refuse it
        self.fingerprint = policy_fingerprint(quality, jpeg_fast_path)
        self.retention_days = retention_days
        self.clock = clock

    def key_for(self, source_sha256: str, extension: str) -> str:
        return shared_object_key(content_key(source_sha256, self.fingerprint), extension)

    def revalidation_target(self, known: SourceRecord | None) -> str | None:
        """The object a 304 for ``known``'s validators would let us reuse, or None when asking the origin is
        pointless: nothing known, no validators, or an output made at other settings (a quality or policy change:
        the bytes are needed to make the new one)."""
        if known is None or not (known.etag or known.last_modified) or not is_shared_object(known.object_key):
            return None
        extension = known.object_key.rsplit(".", 1)[1]
        return known.object_key if known.object_key == self.key_for(known.sha256, extension) else None

    async def find(self, source_sha256: str, data: bytes) -> Hit | Expiring | None:
        """The shared output of these source bytes, looked up under each extension they may have."""
        for extension in output_extensions(data):
            found = await self.check(self.key_for(source_sha256, extension))
            if found is not None:
                return found
        return None

    async def check(self, key: str) -> Hit | Expiring | None:
        """HEAD ``key`` and apply the reuse rule (shared/cache.py): reuse, reuse after a touch, or leave it be."""
        stored = await self._head(key)
        if stored is None:
            return None
        decision = reuse_decision(stored.last_modified, self.clock(), self.retention_days)
        if decision is Reuse.EXPIRING:
            log.info("cache_object_expiring", key=key, last_modified=stored.last_modified.isoformat())
            return Expiring(key)
        if decision is Reuse.REFRESH and not await self.storage.touch(stored):
            return None  # deleted between the HEAD and the touch
        return _hit(stored)

    async def _head(self, key: str) -> StoredObject | None:
        """HEAD without credentials on the event loop: outputs are public-read, so this answers like a signed
        HEAD (MinIO: 200 or 404) at a fraction of the CPU: minio-py's stat_object, a SigV4-signed request through
        urllib3 in a worker thread, was a quarter of a compressor's CPU on an unchanged re-upload (py-spy,
        docs/cache.md). Any other answer (an S3 without the public policy says 403 for a missing key) is left to
        the signed HEAD. An unreachable storage server is waited out like in every storage call."""
        answered, stored = await self.storage.retrying(
            "head", key, lambda: self._anonymous_head(key), transient=_unreachable
        )
        return stored if answered else await self.storage.stat(key)

    async def _anonymous_head(self, key: str) -> tuple[bool, StoredObject | None]:
        """(False, None) when the answer was neither 200 nor 404."""
        async with self.http.head(self.storage.endpoint_url(key)) as answer:
            if answer.status == 404:
                return True, None
            if answer.status != 200:
                return False, None
            headers = answer.headers
            return True, StoredObject(
                key,
                int(headers.get("Content-Length", "0")),
                parsedate_to_datetime(headers["Last-Modified"]),
                headers.get("Content-Type", ""),
                user_metadata(headers),
            )


def _unreachable(error: BaseException) -> bool:
    """The storage server did not answer (refused, reset, timed out): worth another try."""
    return isinstance(error, aiohttp.ClientConnectionError | TimeoutError)


def shared_object_metadata(codec: str, source_format: str) -> dict[str, str]:
    """What a shared output carries besides its bytes, so whoever reuses it can report the image as the run that
    made it did: the codec, and the format the source decoded as (a function of the source bytes, like the key).
    Objects stored before ``source-format`` was written report it as unknown."""
    metadata = {"codec": codec}
    if source_format:
        metadata["source-format"] = source_format
    return metadata


_FORMAT_OF_TYPE = {"image/jpeg": "JPEG", "image/webp": "WEBP"}


def _hit(stored: StoredObject) -> Hit:
    return Hit(
        stored.key,
        stored.size,
        stored.metadata.get("codec"),
        format_in=stored.metadata.get("source-format"),
        format_out=_FORMAT_OF_TYPE.get(stored.content_type),
    )
