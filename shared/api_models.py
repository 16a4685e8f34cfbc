"""The public contracts: every body the HTTP API answers and the webhook the notifier POSTs, as pydantic models.

They are the one source of these shapes. Ingest builds each answer from them (services/ingest/records.py,
api.py, upload.py, problems.py), the notifier builds the webhook body from :class:`WebhookPayload` and records
each attempt as a :class:`WebhookAttempt`, which the API shows again, and the OpenAPI document at
``/openapi.json`` is generated from their JSON schemas (services/ingest/openapi.py). A field changed here changes
the answers, the webhook and the documentation together. Field descriptions are written for API clients: they are
what ``/docs`` shows.

Rules of the contract:

* **Seed-compatible, additive.** The seed's bodies (``POST /upload``'s ``message`` and ``request_id``, the status
  fields) keep their names and meaning; new fields are added, never renamed or removed, and clients ignore fields
  they do not know. A field is either always present (``null`` where the schema allows it) or, when it is declared
  with :func:`when_set`, present only once it has a value (``output_csv_url`` before the CSV exists).
* **Bodies are JSON of the model's fields in declaration order**, written with :func:`json_body` (``json.dumps``
  with its default separators, so the bytes clients saw before the models stay the same).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from shared.cache import CacheKind
from shared.messages import Progress, RequestFinished, RequestStatus

ACCEPTED_MESSAGE: Final = "CSV received and processing started."
PROBLEM_TYPE_BASE = "https://pixpress.dev/problems/"


def _as_utc(value: datetime) -> datetime:
    """MongoDB hands back naive UTC datetimes unless told otherwise; answers always say they are UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]  # serialised as ISO 8601 ending in "Z"
RequestId = Annotated[str, Field(json_schema_extra={"format": "uuid"})]


def when_set(description: str, *, format: str | None = None) -> Any:
    """A field left out of the body while it is None (its type then never includes null in the schema, and it is
    not required); declare it as ``name: T | SkipJsonSchema[None] = when_set("...")``."""

    def schema(field: dict[str, Any]) -> None:
        field.pop("default", None)
        if format is not None:
            field["format"] = format

    return Field(
        default=None, exclude_if=lambda value: value is None, description=description, json_schema_extra=schema
    )


def _optional_when_unset(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """A :func:`when_set` field is not required in the schema (later pydantic releases do this by themselves)."""
    unset = {name for name, field in model.model_fields.items() if field.exclude_if is not None}
    if "required" in schema:
        schema["required"] = [name for name in schema["required"] if name not in unset]


class ApiModel(BaseModel):
    """Strict on what we send: an unknown field is a bug here, not a newer producer (compare shared/messages.py).
    Every field is required in the schema, except those declared with :func:`when_set`."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_serialization_defaults_required=True,
        json_schema_extra=_optional_when_unset,
    )


def json_body(model: BaseModel) -> dict[str, Any]:
    """The JSON-ready dict of a model, for ``web.json_response`` and ``json.dumps``."""
    return model.model_dump(mode="json")


def json_bytes(model: BaseModel) -> bytes:
    """Compact JSON, for bodies that are signed (the webhook)."""
    return json.dumps(json_body(model), separators=(",", ":")).encode()


# --- POST /upload --------------------------------------------------------------------------------------------


class UploadAccepted(ApiModel):
    """The seed's answer (`message`, `request_id`), plus where to follow the request."""

    message: Literal["CSV received and processing started."] = ACCEPTED_MESSAGE
    request_id: RequestId = Field(description="A random UUID (version 4); keep it to follow the request.")
    status_url: str = Field(description="Path of the status resource, `/status/{request_id}`.")
    replayed: Literal[True] | SkipJsonSchema[None] = when_set(
        "Present when the `Idempotency-Key` was seen before with the same file: nothing new was started."
    )

    @classmethod
    def of(cls, request_id: str, *, replayed: bool = False) -> UploadAccepted:
        return cls(request_id=request_id, status_url=f"/status/{request_id}", replayed=True if replayed else None)


# --- GET /status/{id}, GET /requests/{id} ----------------------------------------------------------------------


class ProgressView(ApiModel):
    """Counts of a request; exact once it is final, live (and at most a moment behind) while it runs."""

    products_total: int = Field(ge=0, description="Data rows in the CSV.")
    images_total: int = Field(ge=0, description="Input image URLs in the CSV.")
    images_done: int = Field(ge=0, description="Images compressed and stored.")
    images_failed: int = Field(ge=0, description="Images that failed for good (the reason is in the product).")
    images_settled: int = Field(ge=0, description="`images_done + images_failed`.")
    percent: float = Field(ge=0, le=100, description="Settled images in percent of `images_total`, two decimals.")
    bytes_in: int = Field(ge=0, description="Bytes downloaded of the images that were compressed.")
    bytes_out: int = Field(ge=0, description="Bytes stored after compression.")
    savings_percent: float | None = Field(
        description="`100 * (1 - bytes_out / bytes_in)`, two decimals; null before the first image is done."
    )
    images_cached: int = Field(
        ge=0,
        description="Of `images_done`: outputs reused without compressing again, because the same bytes were "
        "compressed before at the same settings (`PIXPRESS_CACHE`).",
    )
    images_revalidated: int = Field(
        ge=0,
        description="Of `images_cached`: the image host answered 304 Not Modified, so the image was not even "
        "downloaded.",
    )

    @classmethod
    def of(cls, progress: Progress) -> ProgressView:
        savings = round(100.0 * (1 - progress.bytes_out / progress.bytes_in), 2) if progress.bytes_in else None
        return cls(
            **progress.model_dump(),
            images_settled=progress.images_settled,
            percent=progress.percent,
            savings_percent=savings,
        )


class StatusView(ApiModel):
    """A request's status and progress (`GET /status/{request_id}`)."""

    request_id: RequestId
    status: RequestStatus = Field(
        description="`Queued` → `Processing` → `Completed` (every image settled, at least one succeeded) or "
        "`Failed` (the CSV could not be processed, or no image succeeded)."
    )
    created_at: UtcDatetime
    updated_at: UtcDatetime
    progress: ProgressView
    output_csv_url: str | SkipJsonSchema[None] = when_set(
        "Absolute URL of the output CSV, once it exists; a GET needs no credentials.", format="uri"
    )
    error: str | SkipJsonSchema[None] = when_set("Why the request failed; present only when `Failed`.")


class RequestsPage(ApiModel):
    """Requests newest first (`GET /requests`), one page."""

    items: list[StatusView] = Field(description="Each request as `GET /status/{request_id}` answers it.")
    next: str | SkipJsonSchema[None] = when_set(
        "Path of the next (older) page; absent on the last page. Requests uploaded meanwhile never shift it."
    )


class WebhookState(StrEnum):
    """Where a request's webhook delivery stands; the notifier writes it, the API shows it."""

    PENDING = "pending"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    DEAD = "dead"


class WebhookAttempt(ApiModel):
    """One POST of the webhook. The notifier stores exactly this (``model_dump()``) and the API shows it."""

    attempt: int = Field(ge=1)
    at: UtcDatetime | None = Field(description="When the attempt started.")
    ok: bool = Field(description="The receiver answered 2xx.")
    status_code: int | None = Field(description="The receiver's HTTP status; null when none came.")
    error: str | None = Field(description="Why the attempt failed (`HTTP 500`, `timed out`, …); null when ok.")
    duration_ms: int = Field(ge=0)
    refused: bool = Field(
        default=False,
        description="The SSRF guard refused the URL (a private, loopback or reserved address, in any spelling); "
        "no further attempt is made and the delivery is `dead` at once.",
    )

    @classmethod
    def from_document(cls, stored: dict[str, Any]) -> WebhookAttempt:
        """An attempt as the notifier stored it; fields a newer notifier added are left out, not refused."""
        return cls.model_validate({name: stored[name] for name in cls.model_fields if name in stored})


class WebhookView(ApiModel):
    """Webhook delivery history of a request."""

    target: str = Field(description="Scheme and host of the webhook URL only (no path, query or credentials).")
    webhook_id: str = Field(description="The `webhook-id` header of every delivery attempt (`msg_<request_id>`).")
    state: WebhookState
    attempts: list[WebhookAttempt]


class RequestDetail(StatusView):
    """The status plus the webhook delivery history (`GET /requests/{request_id}`)."""

    webhook: WebhookView | None = Field(description="Null when the upload named no `webhook_url`.")


# --- GET /requests/{id}/products -------------------------------------------------------------------------------


class ImageState(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class ImageView(ApiModel):
    """One input image of a product and what became of it (what the console shows side by side)."""

    index: int = Field(ge=0, description="Position of the URL in the product's `Input Image Urls` cell, from 0.")
    input_url: str
    state: ImageState
    output_url: str | None = Field(description="The compressed image; null unless `done`.")
    error: str | None = Field(description="Why it failed; null unless `failed`.")
    format_in: str | None = Field(
        description="What the original decoded as (`JPEG`, `PNG`, `WEBP`, `GIF`, `MPO`, `TIFF`, `BMP`); null "
        "unless `done`, and for images compressed before pixpress recorded formats."
    )
    format_out: str | None = Field(description="`JPEG` or `WEBP`; null like `format_in`.")
    bytes_in: int | None = Field(ge=0, description="Bytes downloaded; null unless `done`.")
    bytes_out: int | None = Field(ge=0, description="Bytes stored; null unless `done`.")
    cache: CacheKind | None = Field(
        description="How the output was reused without compressing again (`revalidated`: the host answered 304 "
        "and nothing was downloaded, `bytes_in` is the size it had; `same_bytes`: these bytes were compressed "
        "before), as in the product's `image_cache`; null when it was compressed for this request, and unless "
        "`done`."
    )
    thumbnails: dict[str, str] = Field(
        description="Paths of downscaled previews (`original`, and `compressed` once done) served by this API: "
        "`GET /requests/{request_id}/images/{row}/{index}/thumb`."
    )


class ProductView(ApiModel):
    """One CSV data row with its outcome per image."""

    row: int = Field(ge=1, description="1 = first data row of the CSV.")
    serial_number: str
    product_name: str
    extra: dict[str, str] = Field(description="The input's extra columns, by header name.")
    input_image_urls: list[str]
    output_image_urls: list[str | None] = Field(
        description="One slot per input URL, same order; null until done, and when the image failed."
    )
    image_errors: list[str | None] = Field(description="One slot per input URL; why the image failed, else null.")
    image_cache: list[CacheKind | None] = Field(
        description="One slot per input URL: how its output was reused without compressing again (`revalidated`: "
        "the host answered 304; `same_bytes`: these bytes were compressed before), null when it was compressed "
        "for this request, failed or is pending."
    )
    pending: int = Field(ge=0, description="Images of this product not settled yet.")
    images: list[ImageView] = Field(description="The same per image, with formats, sizes and thumbnails.")


class ProductsPage(ApiModel):
    """One page of a request's products, in row order."""

    request_id: RequestId
    offset: int = Field(ge=0, description="Rows before this page: it holds rows `offset+1` … `offset+limit`.")
    limit: int = Field(ge=1)
    total: int = Field(ge=0, description="Products in the request.")
    items: list[ProductView]
    failed: bool = Field(
        description="The page holds only products with at least one failed image (`failed=true`). Such a page "
        "may hold fewer than `limit` products, even none, and still have a `next`: each page searches a bounded "
        "number of rows."
    )
    next: str | SkipJsonSchema[None] = when_set("Path of the next page; absent on the last page.")


# --- problems (RFC 9457), health -------------------------------------------------------------------------------


class RowError(ApiModel):
    """One problem in the CSV. Row 1 is the first data row; row 0 is the header or the whole file."""

    row: int = Field(ge=0)
    column: str | None = Field(description="The column concerned; null when it is the whole row or file.")
    message: str


class Problem(ApiModel):
    """RFC 9457 problem details: `type` names the problem, `detail` says what to fix."""

    type: str = Field(
        json_schema_extra={"format": "uri"}, description=f"The problem, e.g. `{PROBLEM_TYPE_BASE}invalid-csv`."
    )
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    errors: list[RowError] | SkipJsonSchema[None] = when_set(
        "Every problem found in the file, in file order, at most `PIXPRESS_MAX_REPORTED_ERRORS`; `detail` says "
        "when the list was cut short."
    )
    row_numbering: str | SkipJsonSchema[None] = when_set("How `errors[].row` counts rows.")
    limit_bytes: int | SkipJsonSchema[None] = when_set("The byte limit a too-large file broke.")
    error: str | SkipJsonSchema[None] = when_set(
        '`detail` again, for clients of the seed API, which answered `{"error": ...}` about request ids.'
    )

    @classmethod
    def of(cls, status: int, slug: str, title: str, detail: str, **members: Any) -> Problem:
        return cls(type=PROBLEM_TYPE_BASE + slug, title=title, status=status, detail=detail, **members)


class RequestIdProblem(Problem):
    """A malformed (400) or unknown (404) request id; carries the seed API's `error` member."""

    error: str = Field(description='`detail` again, for clients of the seed API, which answered `{"error": ...}`.')


class Health(ApiModel):
    """Whether this service's servers answer."""

    status: Literal["ok", "unhealthy"]
    checks: dict[str, bool] = Field(description="Each dependency (`broker`, `database`, `storage`) and its state.")

    @classmethod
    def of(cls, checks: dict[str, bool]) -> Health:
        return cls(status="ok" if all(checks.values()) else "unhealthy", checks=checks)


# --- the webhook -----------------------------------------------------------------------------------------------


def webhook_id(request_id: str) -> str:
    """The ``webhook-id`` of every delivery for a request: stable across retries and redeliveries."""
    return f"msg_{request_id}"


class WebhookPayload(ApiModel):
    """What the notifier POSTs to the upload's `webhook_url` once the request is final (Standard Webhooks headers:
    `webhook-id`, `webhook-timestamp`, and `webhook-signature` when the server has a secret)."""

    type: Literal["request.finished"] = "request.finished"
    request_id: RequestId
    status: RequestStatus
    output_csv_url: str | None = Field(description="Absolute URL of the output CSV; null when none was written.")
    error: str | None = Field(description="Why the request failed; null when `Completed`.")
    progress: ProgressView
    finished_at: UtcDatetime

    @classmethod
    def of(cls, event: RequestFinished) -> WebhookPayload:
        return cls(
            request_id=event.request_id,
            status=event.status,
            output_csv_url=event.output_csv_url,
            error=event.error,
            progress=ProgressView.of(event.progress),
            finished_at=event.finished_at,
        )
