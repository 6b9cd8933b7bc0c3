"""Peek's one typed settings object, read from the environment once per process."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ALL_ANALYZERS = ("colors", "quality", "faces", "text", "scene")

# The variables that point Peek at external services; without them everything runs embedded.
SERVICE_VARIABLES = (
    "DATABASE_URL",
    "REDIS_URL",
    "KAFKA_BOOTSTRAP_SERVERS",
    "S3_ENDPOINT_URL",
    "R2_BUCKET_NAME",
    "R2_ACCOUNT_ID",
    "UPLOAD_FOLDER",
)


def embedded_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``environ`` without the service variables: a process started with it uses the
    embedded defaults (SQLite, a local folder, an in-process cache, `peek up`'s own broker)."""
    return {name: value for name, value in environ.items() if name not in SERVICE_VARIABLES}


def parse_process_counts(text: str) -> tuple[int, dict[str, int]]:
    """``"1,text=2"`` → (1, {"text": 2}): a count for every analyzer, then counts of named ones."""
    default, by_analyzer = 1, {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, count = (side.strip() for side in item.rpartition("="))
        if not count.isdigit() or (name and name not in ALL_ANALYZERS):
            raise ValueError(
                f"PEEK_WORKER_PROCESSES takes a count and analyzer=count pairs (analyzers: "
                f"{', '.join(ALL_ANALYZERS)}), not {item!r}"
            )
        if name:
            by_analyzer[name] = int(count)
        else:
            default = int(count)
    return default, by_analyzer


class Settings(BaseSettings):
    """Configuration; names kept from the earlier Peek API where it had them."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    data_dir: Path = Field(Path("peek-data"), validation_alias=AliasChoices("PEEK_DATA_DIR"))

    # Services. Empty means "use the embedded default".
    database_url: str = Field("", validation_alias=AliasChoices("DATABASE_URL"))
    redis_url: str = Field("", validation_alias=AliasChoices("REDIS_URL"))
    # Set by `peek up` when it runs the memory-only embedded broker: unfinished work is re-emitted
    # at start-up, because a restarted broker has forgotten it.
    broker_ephemeral: bool = Field(False, validation_alias=AliasChoices("PEEK_BROKER_EPHEMERAL"))
    # When that broker started (Unix time, set by `peek up`): only images whose latest event was
    # sent before then are re-emitted; unset means unknown, and every unfinished image is.
    broker_started_at: datetime | None = Field(None, validation_alias=AliasChoices("PEEK_BROKER_STARTED_AT"))
    # Prefix of every Redis key and channel: lets several deployments (or test runs) share a Redis.
    redis_namespace: str = Field("peek", validation_alias=AliasChoices("PEEK_REDIS_NAMESPACE"))
    kafka_bootstrap_servers: str = Field("", validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS"))

    # Object storage: R2 (seed names), any S3 endpoint, or a local folder.
    r2_account_id: str = Field("", validation_alias=AliasChoices("R2_ACCOUNT_ID"))
    r2_access_key_id: str = Field("", validation_alias=AliasChoices("R2_ACCESS_KEY_ID"))
    r2_secret_access_key: str = Field("", validation_alias=AliasChoices("R2_SECRET_ACCESS_KEY"))
    r2_bucket_name: str = Field("", validation_alias=AliasChoices("R2_BUCKET_NAME"))
    r2_public_domain: str = Field("", validation_alias=AliasChoices("R2_PUBLIC_DOMAIN"))
    s3_endpoint_url: str = Field("", validation_alias=AliasChoices("S3_ENDPOINT_URL"))
    s3_region: str = Field("auto", validation_alias=AliasChoices("S3_REGION", "AWS_REGION"))
    upload_folder: str = Field("", validation_alias=AliasChoices("UPLOAD_FOLDER"))

    # Upload limits.
    max_file_size: int = Field(16 * 1024 * 1024, validation_alias=AliasChoices("MAX_FILE_SIZE"))
    max_image_pixels: int = Field(60_000_000, validation_alias=AliasChoices("PEEK_MAX_IMAGE_PIXELS"))

    cors_allowed_origins: str = Field("", validation_alias=AliasChoices("CORS_ALLOWED_ORIGINS"))
    # Access: API keys are required when this is set or once any key exists (`peek keys create`).
    require_api_keys: bool = Field(False, validation_alias=AliasChoices("PEEK_REQUIRE_API_KEYS"))
    rate_limit_per_minute: int = Field(600, validation_alias=AliasChoices("PEEK_RATE_LIMIT_PER_MINUTE"))
    # How long an upload waits for the broker's acknowledgement before answering 503.
    produce_timeout_s: float = Field(10.0, validation_alias=AliasChoices("PEEK_PRODUCE_TIMEOUT_S"))
    # Slow senders (slowloris) get a 408 when their body has not arrived by then.
    request_body_timeout_s: float = Field(60.0, validation_alias=AliasChoices("PEEK_REQUEST_BODY_TIMEOUT_S"))
    public_api_url: str = Field("", validation_alias=AliasChoices("PEEK_PUBLIC_API_URL"))

    # Pipeline shape and tuning.
    analyzers: str = Field(",".join(ALL_ANALYZERS), validation_alias=AliasChoices("PEEK_ANALYZERS"))
    topic_partitions: int = Field(6, validation_alias=AliasChoices("PEEK_TOPIC_PARTITIONS"))
    # Images in flight per analyzer worker; 0 = 8 per analysis process. The worker takes what is
    # waiting in batches of up to this many (shared among one stream reader per process) and
    # publishes each batch's partials together: a lone upload is a batch of one, and under a
    # backlog fewer, fuller produce requests halve the worker's own CPU per image (bench/pipeline.py).
    worker_concurrency: int = Field(0, ge=0, validation_alias=AliasChoices("PEEK_WORKER_CONCURRENCY"))
    # Analysis processes per analyzer worker: "N" for every analyzer, "N,text=M,..." to give some
    # their own count, 0 for in-process threads. Text costs about half of all analysis and faces
    # about a third, so each gets two processes by default: whichever of them is left last with
    # work can still use both cores (bench/pipeline.py compares this with 1 and 2 for all).
    worker_processes: str = Field("1,text=2,faces=2", validation_alias=AliasChoices("PEEK_WORKER_PROCESSES"))
    analyzer_timeout_s: float = Field(60.0, validation_alias=AliasChoices("PEEK_ANALYZER_TIMEOUT_S"))
    kafka_session_timeout_s: float = Field(6.0, validation_alias=AliasChoices("PEEK_KAFKA_SESSION_TIMEOUT_S"))
    # Longest a consumer's fetch waits at the broker when there is nothing to read (Faust fixes 1500).
    # Kafka answers a waiting fetch as soon as data arrives, so there this only sets how often an
    # idle consumer asks. The embedded broker (Tansu) looks again only about every half of the wait,
    # so on `peek up` it also sets how late an event is seen on a quiet topic: one image takes about
    # 1.1 s from upload to result at 1500 and 0.3 s at 100, but each fetch costs the broker about
    # 1.5 ms of CPU, and an idle `peek up` used 4-6% of a core at 1500, 10% at 500, 16% at 100.
    # Bulk throughput measured best at 1500 (fewer empty fetches while everything queued is read).
    kafka_fetch_max_wait_ms: int = Field(
        1500, ge=10, le=30_000, validation_alias=AliasChoices("PEEK_KAFKA_FETCH_MAX_WAIT_MS")
    )
    # The reconciler (sink.aggregator.reconcile) looks every interval. An image whose events wait in
    # Kafka in front of a working analyzer is never overdue; one whose analyzer's offset stood still
    # for RECONCILE_AFTER_S, or whose fate the broker cannot tell, is re-emitted once it has made no
    # progress for that long, and given up after MAX_ATTEMPTS emissions.
    reconcile_interval_s: float = Field(10.0, validation_alias=AliasChoices("PEEK_RECONCILE_INTERVAL_S"))
    reconcile_after_s: float = Field(300.0, validation_alias=AliasChoices("PEEK_RECONCILE_AFTER_S"))
    reconcile_max_attempts: int = Field(3, validation_alias=AliasChoices("PEEK_RECONCILE_MAX_ATTEMPTS"))
    # uvicorn processes of `peek api`. 2 measured best for ingest on the 2-core reference machine
    # (bench/ingest.py: 326 uploads/s against 220 with 1); 1 gives the smallest footprint.
    api_workers: int = Field(2, ge=1, validation_alias=AliasChoices("PEEK_API_WORKERS"))
    # Bulk ingestion: parts per batch request, parts of one request accepted at once, and objects
    # per page of a bucket ingestion.
    batch_max_files: int = Field(256, validation_alias=AliasChoices("PEEK_BATCH_MAX_FILES"))
    ingest_concurrency: int = Field(16, validation_alias=AliasChoices("PEEK_INGEST_CONCURRENCY"))
    bucket_page_size: int = Field(200, validation_alias=AliasChoices("PEEK_BUCKET_PAGE_SIZE"))
    # Admission control: new uploads answer 503 + Retry-After once this many images are still
    # processing (all API processes together). Kafka is meant to hold the queue during bulk
    # ingestion (accepting stays cheap and memory flat while workers catch up), so the default is
    # large: it only stops a queue that would take hours to drain. A lower bound keeps interactive
    # latency (upload to result) short at the price of refusing bursts; 0 turns the check off.
    max_backlog: int = Field(100_000, validation_alias=AliasChoices("PEEK_MAX_BACKLOG"))
    # Upload requests (single or batch) one API process handles at once before answering 503;
    # bounds the bodies and threads a process holds. 0 = no bound.
    max_uploads_in_flight: int = Field(64, validation_alias=AliasChoices("PEEK_MAX_UPLOADS_IN_FLIGHT"))
    result_cache_ttl_s: int = Field(7 * 24 * 3600, validation_alias=AliasChoices("PEEK_RESULT_CACHE_TTL_S"))

    # Prometheus endpoint of a worker or sink process (the API serves /metrics on its own port);
    # 0 = off. `peek up` gives every process its own port.
    metrics_port: int = Field(0, validation_alias=AliasChoices("PEEK_METRICS_PORT"))

    # Per-upload webhooks (the `callback_url` form field): HMAC-SHA256 key of the signature header,
    # time limit per attempt, attempts, and the first pause between attempts (doubling after).
    webhook_secret: str = Field("", validation_alias=AliasChoices("PEEK_WEBHOOK_SECRET"))
    webhook_timeout_s: float = Field(5.0, validation_alias=AliasChoices("PEEK_WEBHOOK_TIMEOUT_S"))
    webhook_max_attempts: int = Field(5, validation_alias=AliasChoices("PEEK_WEBHOOK_MAX_ATTEMPTS"))
    webhook_backoff_s: float = Field(1.0, validation_alias=AliasChoices("PEEK_WEBHOOK_BACKOFF_S"))

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("worker_processes")
    @classmethod
    def _process_counts(cls, value: str) -> str:
        parse_process_counts(value)
        return value

    def processes_for(self, analyzer: str) -> int:
        """Analysis processes of one analyzer's worker (PEEK_WORKER_PROCESSES)."""
        default, by_analyzer = parse_process_counts(self.worker_processes)
        return by_analyzer.get(analyzer, default)

    def concurrency_for(self, analyzer: str) -> int:
        """Images one analyzer's worker has in flight at once (PEEK_WORKER_CONCURRENCY)."""
        return self.worker_concurrency or 8 * max(1, self.processes_for(analyzer))

    @property
    def analyzer_names(self) -> list[str]:
        return [name.strip() for name in self.analyzers.split(",") if name.strip()]

    @property
    def effective_database_url(self) -> str:
        """The SQLAlchemy URL, normalised to psycopg 3 for PostgreSQL; SQLite in the data folder by default."""
        url = self.database_url or f"sqlite:///{self.data_dir / 'peek.db'}"
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    @property
    def uses_r2(self) -> bool:
        return bool(self.r2_account_id and self.r2_bucket_name)

    @property
    def uses_s3(self) -> bool:
        return self.uses_r2 or bool(self.s3_endpoint_url and self.r2_bucket_name)

    @property
    def s3_endpoint(self) -> str:
        if self.s3_endpoint_url:
            return self.s3_endpoint_url
        return f"https://{self.r2_account_id}.r2.cloudflarestorage.com"

    @property
    def local_storage_dir(self) -> Path:
        return Path(self.upload_folder).resolve() if self.upload_folder else self.data_dir / "images"

    @property
    def cors_origins(self) -> list[str]:
        return [origin.strip() for origin in self.cors_allowed_origins.split(",") if origin.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
