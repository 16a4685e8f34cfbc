"""Every service's configuration, read from ``PIXPRESS_*`` environment variables and validated at start.

One settings class for all services keeps the names, defaults and meanings in a single place (docs/configuration.md
is generated from this file by scripts/gen_config_docs.py); a service that does not use a field simply ignores it.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, HttpUrl, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.messages import MAX_RESULTS_PER_MESSAGE


class Settings(BaseSettings):
    """Validated configuration; a bad value stops the service at start with a clear message."""

    model_config = SettingsConfigDict(env_prefix="PIXPRESS_", extra="ignore", frozen=True)

    # --- infrastructure -------------------------------------------------------------------------------
    amqp_url: SecretStr = Field(
        default=SecretStr("amqp://guest:guest@127.0.0.1:5672/"),
        description="RabbitMQ (`amqps://` for TLS; `?heartbeat=N` sets the heartbeat in seconds, default the "
        "broker's 60)",
    )
    mongo_url: SecretStr = Field(default=SecretStr("mongodb://127.0.0.1:27017/"), description="MongoDB or FerretDB")
    mongo_db: str = Field(default="pixpress", description="database name")
    s3_endpoint: str = Field(default="127.0.0.1:9000", description="MinIO/S3 `host:port`")
    s3_access_key: SecretStr = Field(default=SecretStr("pixpress"), description="S3 access key")
    s3_secret_key: SecretStr = Field(default=SecretStr("pixpress-secret"), description="S3 secret key")
    s3_secure: bool = Field(default=False, description="use https to S3")
    s3_bucket: str = Field(
        default="pixpress", description="bucket; `images/` and `outputs/` are public-read, `uploads/` private"
    )
    public_base_url: HttpUrl | None = Field(
        default=None,
        description="base of the image and output CSV URLs handed to clients; "
        "unset: `http(s)://<S3 endpoint>/<bucket>`",
    )
    exchange: str = Field(default="pixpress", description="RabbitMQ topic exchange every service publishes to")
    storage_retry_seconds: float = Field(
        default=60.0,
        ge=0,
        description="storage reads, writes and deletes retry transient failures (refused, reset, timeouts, 5xx, MinIO "
        "starting) with exponential backoff this long, rewinding streams, while the message stays unacked; "
        "permanent errors fail at once",
    )

    # --- HTTP API -------------------------------------------------------------------------------------
    api_host: str = Field(default="127.0.0.1", description="address the API listens on")
    api_port: int = Field(default=5000, ge=1, le=65535, description="port the API listens on")
    api_key: SecretStr | None = Field(
        default=None,
        description="when set, every route but `/healthz`, `/metrics` (Prometheus scrapes it; docs/security.md) and "
        "the `/docs` page (Swagger UI's shell, which asks for the key) needs this value in an `X-API-Key` header, "
        "`/openapi.json` included; unset: the API is open",
    )
    api_header_timeout: float = Field(
        default=15.0,
        gt=0,
        description="seconds a client has to send its request line and headers after connecting or after its "
        "previous answer (also the idle keep-alive time): slow-header clients cannot hold connections",
    )
    api_body_timeout: float = Field(
        default=300.0,
        gt=0,
        description="seconds the whole upload body may take (50 MiB at ~1.5 Mbit/s), else 408",
    )

    # --- health endpoint for the workers (ingest answers on its API port) -----------------------------
    health_host: str = Field(default="127.0.0.1", description="address of the workers' `/healthz` and `/metrics`")
    health_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="port of the workers' `/healthz` and `/metrics` (compressor, aggregator, notifier); 0: off. "
        "The native stack, compose and Kubernetes set one per process (docs/observability.md)",
    )

    # --- input limits -----------------------------------------------------------------------------------
    max_csv_bytes: int = Field(default=50 * 1024 * 1024, ge=1, description="largest CSV upload, in bytes (else 413)")
    max_rows: int = Field(default=1_000_000, ge=1, description="most data rows in one CSV (else 413)")
    max_urls_per_row: int = Field(default=20, ge=1, description="most image URLs in one `Input Image Urls` cell")
    max_url_length: int = Field(default=2048, ge=16, description="longest URL, in characters")
    max_reported_errors: int = Field(default=100, ge=1, description="problems listed in one 400 answer")

    # --- image fetching and processing ----------------------------------------------------------------
    allow_private_urls: bool = Field(
        default=False,
        description="allow image and webhook URLs on loopback, private, link-local and other non-public "
        "addresses (local use and tests only: docs/security.md)",
    )
    max_image_bytes: int = Field(
        default=50 * 1024 * 1024, ge=1, description="largest image download, in bytes (streamed; stops at the limit)"
    )
    max_image_pixels: int = Field(
        default=100_000_000, ge=1, description="decoded pixels per image, every frame counted, checked before decoding"
    )
    max_image_frames: int = Field(default=1000, ge=1, description="frames of an animated or multi-page image")
    connect_timeout: float = Field(default=5.0, gt=0, description="seconds to connect to an image host or webhook")
    read_timeout: float = Field(
        default=20.0, gt=0, description="seconds an image host may stay silent, before its answer or during the body"
    )
    download_timeout: float = Field(default=60.0, gt=0, description="seconds one whole image download may take")
    max_redirects: int = Field(default=5, ge=0, description="redirects followed per download, each hop checked")
    jpeg_quality: int = Field(default=50, ge=1, le=100, description="quality of every lossy encoder (JPEG and WebP)")
    jpeg_fast_path: bool = Field(
        default=True,
        description="on: JPEGs are re-quantised in the DCT domain instead of decoded to pixels "
        "(docs/jpeg-fast-path.md); off: every image through Pillow",
    )
    cache: bool = Field(
        default=True,
        description="on: outputs are stored under a key of the source bytes and every setting that changes them, "
        "and reused; known URLs are revalidated with If-None-Match / If-Modified-Since (docs/cache.md); off: every "
        "image is downloaded and compressed again and stored under its request",
    )
    compressor_prefetch: int = Field(default=8, ge=1, description="image tasks in flight per compressor process")
    compressor_workers: int = Field(default=1, ge=1, description="codec threads per compressor process")
    image_max_attempts: int = Field(
        default=4, ge=1, description="download attempts for transient failures (timeouts, 408, 429, 5xx, resets)"
    )
    retry_base_delay_ms: int = Field(
        default=1000, ge=10, description="first download retry delay; doubles each attempt, plus 0-30 % jitter"
    )
    result_batch: int = Field(
        default=16,
        ge=1,
        le=MAX_RESULTS_PER_MESSAGE,
        description="most results a compressor sends in one `image.done.batch` message (docs/messages.md); "
        "1: one `image.done` message per image, as compressors before it did",
    )
    result_batch_delay_ms: int = Field(
        default=250,
        ge=0,
        le=1000,
        description="longest a finished result waits for others to share its message; it waits only while the "
        "compressor still has images in progress, so a lone image or a request's last one goes at once",
    )

    # --- fan-out / aggregation --------------------------------------------------------------------------
    fanout_batch: int = Field(default=500, ge=1, description="CSV rows per fan-out batch")
    aggregator_prefetch: int = Field(
        default=256,
        ge=1,
        description="results in flight in the aggregator; they are written in batches of up to this many",
    )
    sweep_interval: float = Field(default=30.0, gt=0, description="seconds between the aggregator's recovery sweeps")
    stuck_after: float = Field(
        default=600.0,
        gt=0,
        description="seconds without progress before the sweeper re-checks a request and re-issues its missing "
        "images; keep it above the worst retry chain of one download (~4 min by default)",
    )
    retention_days: int | None = Field(
        default=None,
        ge=1,
        description="delete finished requests (records and stored objects) this many days after they finished "
        "(docs/retention.md), and shared cache objects no result points to once they went unused as long; compressors "
        "reuse a shared object only while it is younger than half of it, so give every service the same value "
        "(docs/cache.md); unset keeps everything",
    )

    # --- webhooks ---------------------------------------------------------------------------------------
    webhook_secret: SecretStr | None = Field(
        default=None, description="Standard Webhooks signing secret, `whsec_...`; unset: webhooks are not signed"
    )
    webhook_timeout: float = Field(default=10.0, gt=0, description="seconds per webhook attempt")
    webhook_max_attempts: int = Field(
        default=6, ge=1, description="webhook attempts before the event goes to `notifier.webhooks.dlq`"
    )
    webhook_retry_delays_ms: list[int] = Field(
        default=[1000, 5000, 30000, 120000, 600000],
        description="delays before webhook attempt 2, 3, ...; the last one repeats",
    )

    log_level: str = Field(
        default="INFO",
        description="least level logged (`DEBUG`, `INFO`, `WARNING`, `ERROR`): JSON on stdout, one object a line "
        "with `service`, and `request_id` where there is one",
    )

    @field_validator("webhook_retry_delays_ms")
    @classmethod
    def _delays_positive(cls, value: list[int]) -> list[int]:
        if not value or any(delay <= 0 for delay in value):
            raise ValueError("webhook_retry_delays_ms needs at least one positive delay")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _secret_format(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("whsec_"):
            raise ValueError("webhook_secret must be a Standard Webhooks secret starting with 'whsec_'")
        return value

    @property
    def public_base(self) -> str:
        """Where clients fetch stored objects from, without a trailing slash."""
        if self.public_base_url is not None:
            return str(self.public_base_url).rstrip("/")
        scheme = "https" if self.s3_secure else "http"
        return f"{scheme}://{self.s3_endpoint}/{self.s3_bucket}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings are read once per process so every module sees the same validated values."""
    return Settings()
