"""``GET /requests/{id}/images/{row}/{index}/thumb?v=original|compressed``: small previews for the console.

Why ingest serves them instead of letting the browser load the images themselves (docs/security.md, "Console"):

* an original lives at whatever URL the CSV named. An ``<img>`` pointing there would make the operator's browser
  fetch arbitrary hosts, internal ones included (the browser sits inside the operator's network, where the SSRF
  guard does not reach), and tell each of them who looks. Ingest fetches it instead with the downloader the
  compressor uses (shared/download.py): the same guard on every hop, the same byte, time and redirect limits;
* a compressed image is read from storage, not from its public URL, so the page talks to this server only and
  its Content-Security-Policy can say so (``img-src 'self' blob:``);
* full-size photographs are megabytes each; a preview is a few KB.

A preview is at most :data:`THUMB_SIDE` pixels on its longer side, WebP. JPEGs are decoded at a reduced scale
(Pillow's ``draft``: libjpeg skips most of the work, 1/8 scale for a large photo). Only the first frame is decoded,
and only when its pixels are within ``PIXPRESS_MAX_IMAGE_PIXELS``; at most :data:`DECODES_AT_ONCE` decodes run at
once, in threads, so previews never hold the event loop and a burst of them cannot take the API's memory. Results
are kept in a small in-memory LRU cache (:data:`CACHE_BYTES`), and the answer may be cached by the browser.
"""

from __future__ import annotations

import asyncio
import io
from collections import OrderedDict
from collections.abc import AsyncIterator

import aiohttp
import structlog
from aiohttp import web
from PIL import Image, ImageOps, UnidentifiedImageError

from services.ingest.problems import problem, request_id_error, request_id_of
from shared.database import Database, product_id, result_id
from shared.download import DownloadError, download, download_limits, download_session
from shared.reasons import short_reason
from shared.settings import Settings
from shared.storage import STORAGE_ERRORS, Storage

log = structlog.get_logger()

THUMB_SIDE = 240  # pixels; the console shows them at 120 CSS pixels, sharp on 2x screens
DECODES_AT_ONCE = 2
CACHE_BYTES = 32 * 1024 * 1024
DOWNLOAD_CONNECTIONS = 16
VERSIONS = ("original", "compressed")
_ROW = 2**31 - 1
_PREVIEW_FORMATS = {"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"}


class ThumbnailError(Exception):
    """The bytes cannot be previewed; the message is shown to the user."""


def make_thumbnail(data: bytes, max_pixels: int, side: int = THUMB_SIDE) -> bytes:
    """A WebP of the first frame of ``data``, at most ``side`` pixels on its longer side, upright."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in _PREVIEW_FORMATS:
                raise ThumbnailError(f"unsupported image format {image.format or 'unknown'}")
            width, height = image.size
            if width * height > max_pixels:
                raise ThumbnailError(f"{width}x{height} is over the {max_pixels} pixel limit")
            if image.format in ("JPEG", "MPO"):
                # decode at 1/2, 1/4 or 1/8 scale (thumbnail() would ask too; said here because it is the point):
                # a 12-megapixel photo previews in ~19 ms instead of ~180 ms decoded whole
                image.draft("RGB", (side, side))
            image.thumbnail((side, side))
            preview = ImageOps.exif_transpose(image)
            mode = "RGBA" if preview.mode in ("RGBA", "LA", "PA") or "transparency" in preview.info else "RGB"
            out = io.BytesIO()
            preview.convert(mode).save(out, format="WEBP", quality=70, method=0)
            return out.getvalue()
    except ThumbnailError:
        raise
    except UnidentifiedImageError:
        raise ThumbnailError("not an image (no decoder recognises the bytes)") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError, MemoryError) as exc:
        raise ThumbnailError(f"cannot decode the image ({type(exc).__name__})") from None


class _Cache:
    """Least recently used first out, bounded by the bytes it holds."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> bytes | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: bytes) -> None:
        if key in self._items or len(value) > self.max_bytes:
            return
        self._items[key] = value
        self._bytes += len(value)
        while self._bytes > self.max_bytes:
            _, dropped = self._items.popitem(last=False)
            self._bytes -= len(dropped)


def _index(raw: str, upper: int) -> int | None:
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 10 and int(raw) <= upper else None


class Thumbnails:
    def __init__(self, settings: Settings, db: Database, storage: Storage) -> None:
        self.settings = settings
        self.db = db
        self.storage = storage
        self.limits = download_limits(settings)
        self.cache = _Cache(CACHE_BYTES)
        self.decoding = asyncio.Semaphore(DECODES_AT_ONCE)
        self.session: aiohttp.ClientSession | None = None

    async def lifetime(self, _app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: the download session lives as long as the app."""
        self.session = download_session(self.settings, DOWNLOAD_CONNECTIONS)
        yield
        await self.session.close()

    async def handle(self, request: web.Request) -> web.Response:
        request_id = request_id_of(request)
        row = _index(request.match_info["row"], _ROW)
        index = _index(request.match_info["index"], _ROW)
        version = request.query.get("v", "compressed")
        if row is None or row < 1 or index is None or version not in VERSIONS:
            detail = "row is a CSV data row (1 = the first), index a URL position (from 0), v original or compressed"
            return problem(400, "bad-image", "Bad image address", detail)
        if await self.db.requests.find_one({"_id": request_id}, projection={"_id": 1}) is None:
            message = f"request {request_id} not found"
            raise request_id_error(web.HTTPNotFound, "unknown-request", "Unknown request id", message)
        key = f"{result_id(request_id, row, index)}:{version}"
        preview = self.cache.get(key)
        if preview is None:
            loaded = await (self._compressed if version == "compressed" else self._original)(request_id, row, index)
            if isinstance(loaded, web.Response):
                return loaded
            try:
                async with self.decoding:
                    preview = await asyncio.to_thread(make_thumbnail, loaded, self.settings.max_image_pixels)
            except ThumbnailError as exc:
                return problem(502, "no-preview", "No preview", short_reason(str(exc)))  # the bytes came from elsewhere
            self.cache.put(key, preview)
        # the compressed image never changes; an original might, so it is kept for an hour only
        age = 86400 if version == "compressed" else 3600
        headers = {"Cache-Control": f"private, max-age={age}", "X-Content-Type-Options": "nosniff"}
        return web.Response(body=preview, content_type="image/webp", headers=headers)

    async def _compressed(self, request_id: str, row: int, index: int) -> bytes | web.Response:
        result = await self.db.results.find_one({"_id": result_id(request_id, row, index)})
        if result is None or not result.get("ok"):
            detail = "this image failed" if result is not None else "no such image, or it is not compressed yet"
            return problem(404, "no-image", "No compressed image", detail)
        key = self.storage.key_of(result.get("output_url") or "")
        if key is None:
            return problem(404, "no-image", "No compressed image", "the stored image is not in this server's storage")
        try:
            return await self.storage.get_bytes(key, self.settings.max_image_bytes)
        except (*STORAGE_ERRORS, ValueError) as exc:
            log.warning("thumbnail_storage_failed", request_id=request_id, key=key, error=type(exc).__name__)
            return problem(502, "storage-failed", "Storage failed", "the compressed image could not be read")

    async def _original(self, request_id: str, row: int, index: int) -> bytes | web.Response:
        product = await self.db.products.find_one({"_id": product_id(request_id, row)})
        urls = product.get("input_image_urls", []) if product else []
        if index >= len(urls):
            return problem(404, "no-image", "No such image", f"row {row} has no image {index}")
        assert self.session is not None, "the app's cleanup context opens the session"
        try:
            return await download(self.session, urls[index], self.limits)
        except DownloadError as exc:
            return problem(502, "original-unavailable", "Original unavailable", short_reason(exc.reason))
