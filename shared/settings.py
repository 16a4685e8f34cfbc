"""Every service's configuration, read from ``PIXPRESS_*`` environment variables and validated at start.

One settings class for all services keeps the names (and their documented defaults in the README) in a
single place; a service that does not use a field simply ignores it.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, HttpUrl, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Validated configuration; a bad value stops the service at start with a clear message."""

    model_config = SettingsConfigDict(env_prefix="PIXPRESS_", extra="ignore", frozen=True)

    # --- infrastructure -------------------------------------------------------------------------------
    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    mongo_url: SecretStr = SecretStr("mongodb://127.0.0.1:27017/")
    mongo_db: str = "pixpress"
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: SecretStr = SecretStr("pixpress")
    s3_secret_key: SecretStr = SecretStr("pixpress-secret")
    s3_secure: bool = False
    s3_bucket: str = "pixpress"
    public_base_url: HttpUrl | None = Field(
        default=None,
        description="Base URL clients use to GET stored objects; defaults to the S3 endpoint + bucket.",
    )
    exchange: str = "pixpress"
    storage_retry_seconds: float = Field(default=60.0, ge=0, description="keep retrying storage writes this long")

    # --- HTTP API -------------------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=5000, ge=1, le=65535)
    api_key: SecretStr | None = None
    # a client must send its request line and headers within this long of connecting (or of its previous answer;
    # it is also how long an idle keep-alive connection stays open): slow-header clients cannot hold connections
    api_header_timeout: float = Field(default=15.0, gt=0)
    # the whole upload body must arrive within this long (50 MiB at ~1.5 Mbit/s): slow-body clients are cut off
    api_body_timeout: float = Field(default=300.0, gt=0)

    # --- health endpoint for the workers (ingest answers on its API port) -----------------------------
    health_host: str = "127.0.0.1"
    health_port: int = Field(default=0, ge=0, le=65535, description="0 disables the health server")

    # --- input limits -----------------------------------------------------------------------------------
    max_csv_bytes: int = Field(default=50 * 1024 * 1024, ge=1)
    max_rows: int = Field(default=1_000_000, ge=1)
    max_urls_per_row: int = Field(default=20, ge=1)
    max_url_length: int = Field(default=2048, ge=16)
    max_reported_errors: int = Field(default=100, ge=1)

    # --- image fetching and processing ----------------------------------------------------------------
    allow_private_urls: bool = False
    max_image_bytes: int = Field(default=50 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(default=100_000_000, ge=1, description="decoded pixels, every frame counted")
    max_image_frames: int = Field(default=1000, ge=1, description="frames of an animated or multi-page image")
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=20.0, gt=0)
    download_timeout: float = Field(default=60.0, gt=0)
    max_redirects: int = Field(default=5, ge=0)
    jpeg_quality: int = Field(default=50, ge=1, le=100)
    jpeg_fast_path: bool = Field(
        default=True, description="on|off: re-quantise JPEGs in the DCT domain (docs/jpeg-fast-path.md)"
    )
    cache: bool = Field(
        default=True,
        description="on|off: reuse the output of source bytes already compressed at the same settings, and "
        "revalidate known URLs with If-None-Match / If-Modified-Since (docs/cache.md); off: every image is "
        "downloaded and compressed again, stored under its request",
    )
    compressor_prefetch: int = Field(default=8, ge=1)
    compressor_workers: int = Field(default=1, ge=1, description="codec threads per compressor process")
    image_max_attempts: int = Field(default=4, ge=1)
    retry_base_delay_ms: int = Field(default=1000, ge=10)

    # --- fan-out / aggregation --------------------------------------------------------------------------
    fanout_batch: int = Field(default=500, ge=1)
    aggregator_prefetch: int = Field(default=256, ge=1, description="results in flight; also the batch size")
    sweep_interval: float = Field(default=30.0, gt=0)
    stuck_after: float = Field(default=600.0, gt=0, description="quiet time before a request is re-checked")
    retention_days: int | None = Field(
        default=None,
        ge=1,
        description="delete finished requests (records and stored objects) this many days after they finished; "
        "unset keeps everything",
    )

    # --- webhooks ---------------------------------------------------------------------------------------
    webhook_secret: SecretStr | None = None
    webhook_timeout: float = Field(default=10.0, gt=0)
    webhook_max_attempts: int = Field(default=6, ge=1)
    webhook_retry_delays_ms: list[int] = Field(default=[1000, 5000, 30000, 120000, 600000])

    log_level: str = "INFO"

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
