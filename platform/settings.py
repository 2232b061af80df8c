"""The one typed settings object; nothing else in Celeriac reads the environment.

Defaults are the embedded mode (one command on a laptop): SQLite under ``./var``, kombu's
filesystem transport, a local blob directory and a local keyring file. Every production
service is switched on by an environment variable prefixed ``CELERIAC_`` (nested fields use
``__``: ``CELERIAC_WORKERS__COMPUTE_CONCURRENCY=4``).
"""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "CELERIAC_"
NESTED_DELIMITER = "__"


def _scheme(url: str) -> str:
    return urlsplit(url).scheme


def _database_url(url: str) -> str:
    if _scheme(url) not in {"sqlite", "postgresql+psycopg"}:
        raise ValueError("must start with sqlite:/// or postgresql+psycopg://")
    return url


_BROKER_SCHEMES = {"filesystem", "redis", "rediss", "amqp", "amqps", "pyamqp", "memory"}


def _broker_url(url: str) -> str:
    if _scheme(url) not in _BROKER_SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(sorted(_BROKER_SCHEMES))}")
    return url


def _redis_url(url: str | None) -> str | None:
    if url is not None and _scheme(url) not in {"redis", "rediss", "unix"}:
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    return url


DatabaseUrl = Annotated[str, AfterValidator(_database_url)]
BrokerUrl = Annotated[str, AfterValidator(_broker_url)]
RedisUrl = Annotated[str | None, AfterValidator(_redis_url)]


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    # How long an Idempotency-Key's stored answer is replayed.
    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=24 * 3600)
    # An in_flight reservation older than this was left by an API that died mid-request:
    # a retry recovers its answer (a stored job) or takes the reservation over.
    idempotency_lease_seconds: float = Field(default=60.0, gt=0, le=3600)
    # celeriac up waits this long for every pool and the plugin registry (a compute
    # worker took 125 s to publish on a loaded machine).
    up_ready_timeout_seconds: float = Field(default=300.0, gt=0)
    # How long uvicorn's supervisor (``celeriac api --workers N``) waits for a worker process
    # to answer its health ping before it kills and replaces it. uvicorn's 5 s default
    # killed every worker still importing on a loaded machine (a spawned child took over
    # 5 s to answer at load 18), so the API never came up.
    worker_healthcheck_seconds: int = Field(default=60, ge=1, le=600)
    # Upper bound on how long a revoked key or suspended tenant keeps working per process.
    auth_cache_poll_seconds: float = Field(default=1.0, gt=0, le=5)
    # Upper bound on how long an admin's change of a tenant's quotas takes to reach a process.
    quota_cache_poll_seconds: float = Field(default=1.0, gt=0, le=5)
    page_size_max: int = Field(default=100, ge=1)
    # A second, internal port that serves only the backlog KEDA scales on
    # (celeriac.platform.ops.server); None: not served. It needs metrics_token.
    ops_port: int | None = Field(default=None, ge=1, le=65535)
    # The bearer token KEDA's TriggerAuthentication presents on the ops port.
    metrics_token: SecretStr | None = None
    # At most one scan of the broker's keys per this many seconds per process: KEDA's three
    # ScaledObjects and the HPA read the same numbers within one polling interval.
    backlog_cache_seconds: float = Field(default=5.0, ge=0, le=60)

    # How often an open job event stream reads its job's rows when no Redis nudge came
    # (a nudge lost by pub/sub is late by at most this; platform/jobs/events.py).
    events_poll_seconds: float = Field(default=2.0, gt=0, le=30)

    @model_validator(mode="after")
    def _ops_port_needs_a_token(self) -> ApiSettings:
        if self.ops_port is not None:
            token = self.metrics_token.get_secret_value() if self.metrics_token else ""
            if len(token) < 32:
                raise ValueError(
                    "CELERIAC_API__OPS_PORT needs CELERIAC_API__METRICS_TOKEN (32 characters "
                    "or more)"
                )
            if self.ops_port == self.port:
                raise ValueError("CELERIAC_API__OPS_PORT must differ from CELERIAC_API__PORT")
        return self


class ConsoleSettings(BaseModel):
    """The web console's sessions (platform/console/sessions.py)."""

    # A session unused this long ends (sliding); one never outlives the absolute timeout.
    idle_timeout_seconds: int = Field(default=30 * 60, ge=60)
    absolute_timeout_seconds: int = Field(default=12 * 3600, ge=300)
    # How often open pages poll the job state while something runs.
    poll_seconds: float = Field(default=2.0, gt=0, le=60)


# Standard Webhooks' schedule: after each failed attempt, the wait before the next one.
DEFAULT_RETRY_SCHEDULE = [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0]


class WebhookSettings(BaseModel):
    # http:// targets only for local development.
    allow_http: bool = False
    # Admin allowlist: destinations in these CIDRs pass the private-address check.
    allowed_cidrs: list[str] = []
    # Waits after each failed attempt (seconds, +-10% jitter); after the last, it failed.
    retry_schedule_seconds: list[float] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE), min_length=1
    )
    # A 2xx within this long is a success; anything else (redirects too) a failure.
    timeout_seconds: float = Field(default=15.0, gt=0, le=60)
    # A receiver's Retry-After (429/503) is honoured up to this long.
    max_retry_after_seconds: float = Field(default=86400.0, gt=0)
    # A target failing without a break for this long is disabled.
    disable_after_seconds: float = Field(default=5 * 86400.0, gt=0)
    # Deliveries per second to one target, unless the target sets its own.
    deliveries_per_second: float = Field(default=10.0, gt=0)
    # How often beat looks for deliveries that are due (retries, lost messages).
    scan_interval_seconds: float = Field(default=1.0, gt=0)
    # Where tenants fetch results: the results URL in an event is built on it.
    public_api_url: str = "http://127.0.0.1:8000"


class AuthSettings(BaseModel):
    """Admin/billing JWTs and the API-key pepper.

    Secrets have no built-in values: when unset, :func:`load_settings` reads them from
    (or creates them in) ``var/secrets`` so the embedded mode works with no set-up.
    """

    jwt_issuer: str = "celeriac"
    jwt_audience: str = "celeriac-api"
    jwt_hs256_secret: SecretStr | None = None
    # RS256 verification keys: a PEM public key and/or a JWKS file. Each key is pinned to
    # one algorithm; an RS256 key is never used as an HS256 secret.
    jwt_public_key_file: Path | None = None
    jwt_public_key_id: str = "rs256"
    jwt_jwks_file: Path | None = None
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=60)
    api_key_pepper: SecretStr | None = None


class BlobSettings(BaseModel):
    backend: Literal["local", "s3"] = "local"
    local_dir: Path = Path("var/blobs")  # default follows var_dir
    s3_bucket: str | None = None
    # Only for an S3-compatible endpoint other than AWS (the tests' moto server).
    s3_endpoint_url: str | None = None
    region: str = "us-east-1"
    # Server-side encryption of every object, beneath the platform's own envelope:
    # "bucket" leaves it to the bucket's default (Terraform: SSE-KMS with the platform's
    # data key); "tenant_key" asks for SSE-KMS with the object's tenant key (needs
    # keys.provider=kms), so that destroying the tenant key also locks S3's own copy.
    s3_sse: Literal["bucket", "tenant_key"] = "bucket"


class KeySettings(BaseModel):
    provider: Literal["local", "kms"] = "local"
    keyring_path: Path = Path("var/keyring.json")  # default follows var_dir
    kms_endpoint_url: str | None = None  # only for a KMS-compatible endpoint (tests: moto)
    kms_region: str | None = None  # None: the same as blob.region
    # per_tenant: a KMS key of its own per tenant (alias kms_alias_prefix + tenant id),
    # destroyed when the tenant is deleted. pooled: one shared key (kms_pooled_key_id) for
    # every tenant, with the tenant id in every data key's encryption context; deleting a
    # tenant then removes its blobs but cannot shred the shared key (docs/adr/0008).
    mode: Literal["per_tenant", "pooled"] = "per_tenant"
    kms_alias_prefix: str = Field(
        default="alias/celeriac/tenant/", pattern=r"^alias/[A-Za-z0-9/_-]+/$"
    )
    # The tag every tenant key carries (value: the tenant id); Terraform's IAM policy lets
    # the platform use only keys with it (terraform/variables.tf tenant_tag_key).
    kms_tenant_tag_key: str = "celeriac:tenant"
    kms_pooled_key_id: str | None = None  # key id, ARN, alias or alias ARN (mode=pooled)
    # KMS ScheduleKeyDeletion window for a deleted tenant's key. The key is disabled at
    # once (its data is unreadable from then on); the window is how long an operator can
    # still cancel the deletion of a tenant deleted by mistake. KMS allows 7 to 30.
    deletion_window_days: int = Field(default=30, ge=7, le=30)
    # Plaintext data keys live only in process memory, bounded in count and age.
    data_key_cache_size: int = Field(default=1024, ge=0)
    data_key_cache_ttl_seconds: int = Field(default=300, ge=0)


class WorkerSettings(BaseModel):
    orchestration_concurrency: int = Field(default=100, ge=1)
    distribution_concurrency: int = Field(default=100, ge=1)
    compute_concurrency: int = Field(default=2, ge=1)
    compute_max_tasks_per_child: int = Field(default=200, ge=1)
    compute_soft_time_limit: int = Field(default=300, ge=1)
    compute_hard_time_limit: int = Field(default=360, ge=1)
    visibility_timeout: int = Field(default=3600, ge=60)
    # How often workers and beat touch their liveness heartbeat file (var_dir/heartbeat);
    # the chart's probes call a file older than a few of these dead.
    heartbeat_seconds: float = Field(default=10.0, gt=0, le=60)


class JobSettings(BaseModel):
    """How jobs are cut up, retried and watched."""

    # Records per input chunk: one dataset task per (generator x chunk).
    chunk_records: int = Field(default=5000, ge=1)
    # Records per analysis slice: a row-wise analyzer (``sentiment``) runs as one task per
    # slice of the dataset's rows, ceil(records / slice_records) slices, and one merge.
    # Each slice reads and combines the whole dataset, so slices much smaller than this
    # cost more than they save (ADR 0009).
    slice_records: int = Field(default=25_000, ge=1)
    # A transient compute failure is retried this many times (exponential backoff, jitter).
    task_max_retries: int = Field(default=3, ge=0)
    retry_backoff_seconds: float = Field(default=1.0, gt=0)
    retry_backoff_max_seconds: float = Field(default=60.0, gt=0)
    # A task redelivered more often than this (its worker keeps dying) is recorded failed.
    task_max_deliveries: int = Field(default=5, ge=1)
    # The reconciler re-dispatches a queued/running job that has not moved for this long.
    stall_seconds: float = Field(default=120.0, gt=0)
    reconcile_interval_seconds: float = Field(default=10.0, gt=0)
    # A job re-dispatched more often than this is failed rather than retried for ever.
    max_dispatches: int = Field(default=5, ge=1)
    # How often beat deletes the data of jobs past their tenant's retention_days.
    retention_sweep_seconds: float = Field(default=300.0, gt=0)


class CacheSettings(BaseModel):
    """The cache-aside layer on the cache Redis (``redis_url``; no Redis, no cache).

    Hot blobs are cached as the ciphertext the blob store holds, never as plaintext, and
    by default only over a remote store: a local store's files are in the page cache
    already, which Redis is slower than (docs/adr/0007-redis-cache-aside.md). Every process
    must have the same ``blobs`` setting: one that does not cache does not invalidate.
    """

    enabled: bool = True
    blobs: Literal["auto", "on", "off"] = "auto"  # auto: on unless the blob store is local
    # Blobs larger than this are read from the store every time.
    blob_max_bytes: int = Field(default=4 * 1024 * 1024, gt=0, le=64 * 1024 * 1024)
    # A hot blob is read by the tasks of one job, within seconds of each other.
    blob_ttl_seconds: float = Field(default=60.0, gt=0)
    # Tenant profiles and the plugin registry; changing them also deletes them.
    config_ttl_seconds: float = Field(default=300.0, gt=0)


class LogSettings(BaseModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_lines: bool = True


class ObservabilitySettings(BaseModel):
    """Metrics, traces and error reports (docs/adr/0013-observability.md)."""

    # Prometheus text on /metrics (API) and on metrics_port (workers, beat).
    metrics_enabled: bool = True
    # prometheus-client's multiprocess directory; each process group gets a subdirectory
    # of its own, wiped when it starts. Default follows var_dir.
    metrics_dir: Path = Path("var/metrics")
    # Where a worker or beat serves /metrics (``celeriac worker --metrics-port``); None: not.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
    # /metrics/tenants exports this many tenants (by backlog) and one "other" bucket.
    tenant_metrics_top_n: int = Field(default=20, ge=1, le=500)
    # OpenTelemetry: spans go to this OTLP/HTTP endpoint (".../v1/traces"); None: no tracing.
    otlp_endpoint: str | None = None
    trace_sample_ratio: float = Field(default=1.0, ge=0, le=1)
    # How long finished spans wait before export (the batch processor's schedule). The
    # SDK's own default: each export costs an HTTP request and the resource's encoding, so
    # a longer wait makes fewer, fuller batches (a batch leaves early at 512 spans anyway).
    trace_export_delay_ms: int = Field(default=5000, ge=1)
    sentry_sample_rate: float = Field(default=1.0, ge=0, le=1)
    sentry_traces_sample_rate: float = Field(default=0.0, ge=0, le=1)


class Settings(BaseSettings):
    """Everything Celeriac can be told, with the embedded mode as the defaults."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        extra="forbid",
        frozen=True,
    )

    # Where the embedded mode keeps its files; the defaults below it follow it.
    var_dir: Path = Path("var")
    database_url: DatabaseUrl = "sqlite:///var/celeriac.db"
    broker_url: BrokerUrl = "filesystem://"
    # Redis for cache, rate limits and the result backend; None = in-process/SQLite equivalents.
    redis_url: RedisUrl = None
    result_backend: str | None = None
    sentry_dsn: SecretStr | None = None
    environment: str = "embedded"

    api: ApiSettings = ApiSettings()
    webhooks: WebhookSettings = WebhookSettings()
    auth: AuthSettings = AuthSettings()
    blob: BlobSettings = BlobSettings()
    keys: KeySettings = KeySettings()
    workers: WorkerSettings = WorkerSettings()
    jobs: JobSettings = JobSettings()
    cache: CacheSettings = CacheSettings()
    log: LogSettings = LogSettings()
    observability: ObservabilitySettings = ObservabilitySettings()
    console: ConsoleSettings = ConsoleSettings()

    @model_validator(mode="before")
    @classmethod
    def _embedded_paths_follow_var_dir(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        var_dir = Path(data.get("var_dir") or "var")
        data.setdefault("database_url", f"sqlite:///{var_dir / 'celeriac.db'}")
        for section, field, default in (
            ("blob", "local_dir", var_dir / "blobs"),
            ("keys", "keyring_path", var_dir / "keyring.json"),
            ("observability", "metrics_dir", var_dir / "metrics"),
        ):
            values = data.setdefault(section, {})
            if isinstance(values, dict):
                values.setdefault(field, default)
        return data

    @model_validator(mode="after")
    def _combinations(self) -> Settings:
        pooled = self.keys.provider == "kms" and self.keys.mode == "pooled"
        if pooled and not self.keys.kms_pooled_key_id:
            raise ValueError("CELERIAC_KEYS__MODE=pooled needs CELERIAC_KEYS__KMS_POOLED_KEY_ID")
        if self.blob.backend == "s3" and not self.blob.s3_bucket:
            raise ValueError("CELERIAC_BLOB__BACKEND=s3 needs CELERIAC_BLOB__S3_BUCKET")
        if self.blob.s3_sse == "tenant_key" and self.keys.provider != "kms":
            raise ValueError("CELERIAC_BLOB__S3_SSE=tenant_key needs CELERIAC_KEYS__PROVIDER=kms")
        return self

    @property
    def kms_region(self) -> str:
        return self.keys.kms_region or self.blob.region

    @property
    def caches_blobs(self) -> bool:
        """Whether hot blobs are read through the shared cache (see :class:`CacheSettings`)."""
        if self.redis_url is None or not self.cache.enabled or self.cache.blobs == "off":
            return False
        return self.cache.blobs == "on" or self.blob.backend != "local"

    @property
    def is_embedded_broker(self) -> bool:
        return _scheme(self.broker_url) == "filesystem"

    @property
    def broker_dir(self) -> Path:
        return self.var_dir / "broker"

    @property
    def celery_result_backend(self) -> str:
        if self.result_backend:
            return self.result_backend
        if self.redis_url:
            return self.redis_url
        return f"db+sqlite:///{self.var_dir / 'results.db'}"

    def jwt_secret(self) -> str:
        return _secret_value(self.auth.jwt_hs256_secret)

    def api_key_pepper(self) -> bytes:
        return _secret_value(self.auth.api_key_pepper).encode()


def _secret_value(secret: SecretStr | None) -> str:
    if secret is None:  # load_settings fills it; a hand-built Settings may not
        raise RuntimeError("secret not configured")
    return secret.get_secret_value()


class SettingsError(Exception):
    """A setting has a value Celeriac cannot use; the message is one line naming it."""


def _embedded_secret(var_dir: Path, name: str) -> SecretStr:
    """Read or create a generated secret under ``var/secrets`` (mode 0600)."""
    path = var_dir / "secrets" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return SecretStr(path.read_text().strip())


# The tenant SDK's and CLI's own variables (client/, README): a shell that exported them
# to run ``celeriac-client`` must still run ``celeriac``; the platform never reads them.
CLIENT_VARIABLES = frozenset({"CELERIAC_URL", "CELERIAC_API_KEY"})


def load_settings() -> Settings:
    """Build the settings from the environment, or raise :class:`SettingsError`."""
    unknown = sorted(set(_prefixed_variables()) - _known_variables() - CLIENT_VARIABLES)
    if unknown:
        raise SettingsError(f"{', '.join(unknown)}: unknown setting (a typo?)")
    try:
        settings = Settings()
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None
    auth = settings.auth
    updates: dict[str, SecretStr] = {}
    if auth.jwt_hs256_secret is None:
        updates["jwt_hs256_secret"] = _embedded_secret(settings.var_dir, "jwt-hs256")
    if auth.api_key_pepper is None:
        updates["api_key_pepper"] = _embedded_secret(settings.var_dir, "api-key-pepper")
    if updates:
        settings = settings.model_copy(update={"auth": auth.model_copy(update=updates)})
    if len(settings.jwt_secret().encode()) < 32:
        raise SettingsError(
            f"{ENV_PREFIX}AUTH{NESTED_DELIMITER}JWT_HS256_SECRET: must be at least 32 bytes"
        )
    return settings


def _prefixed_variables() -> list[str]:
    return [name.upper() for name in os.environ if name.upper().startswith(ENV_PREFIX)]


def _known_variables() -> set[str]:
    """Every CELERIAC_ variable a setting reads; pydantic-settings ignores the others,
    which would make a misspelt variable silently fall back to a default."""
    known = set()
    for name, field in Settings.model_fields.items():
        known.add(ENV_PREFIX + name.upper())
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            known |= {
                f"{ENV_PREFIX}{name}{NESTED_DELIMITER}{sub}".upper() for sub in section.model_fields
            }
    return known


def describe_validation_error(exc: ValidationError) -> str:
    """One line per bad setting, named as the environment variable that sets it."""
    lines = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # a rule across settings: its message names them
            lines.append(message)
            continue
        name = ENV_PREFIX + NESTED_DELIMITER.join(str(p) for p in error["loc"]).upper()
        lines.append(f"{name}: {message}{_shown_input(name, error.get('input'))}")
    return "; ".join(lines)


def _shown_input(name: str, value: object) -> str:
    """The rejected value for the message, never a secret or a URL's password."""
    if isinstance(value, dict) or any(w in name for w in ("SECRET", "PEPPER", "DSN")):
        return ""
    if isinstance(value, str) and urlsplit(value).password:
        parts = urlsplit(value)
        value = parts._replace(netloc=f"{parts.username}:***@{parts.hostname}").geturl()
    return f" (got {value!r})"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built once."""
    return load_settings()
