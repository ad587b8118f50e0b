"""One settings object for the API, the workers, the scheduler and the CLI.

Every value comes from an environment variable (documented in docs/configuration.md with
its default); explicit keyword overrides win over the environment, so tests and
embedding code never have to mutate ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_DATABASE_URL = "sqlite:///pushq.sqlite3"


class ConfigError(ValueError):
    """A setting has a value pushq cannot work with."""


# Claims with a meaning of their own: none of them can be what marks a service token.
_RESERVED_CLAIMS = frozenset({"iss", "aud", "sub", "exp", "nbf", "iat", "jti", "app_id", "scope", "client_id"})


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"not a boolean: {value!r}")


def _tuple(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.replace(",", " ").split() if part.strip())


@dataclass(frozen=True)
class Settings:
    """Runtime configuration; see docs/configuration.md for each variable."""

    database_url: str = field(default=DEFAULT_DATABASE_URL, metadata={"env": "DATABASE_URL"})
    # None means "no Redis configured": `pushq run` then starts an embedded one.
    redis_url: str | None = field(default=None, metadata={"env": "REDIS_URL"})
    # The Celery broker, when it should not be REDIS_URL (which also keeps quotas and rate limits).
    broker_url: str | None = field(default=None, metadata={"env": "PUSHQ_BROKER_URL"})

    jwt_secret: str | None = field(default=None, metadata={"env": "JWT_SECRET"})
    jwt_public_key: str | None = field(default=None, metadata={"env": "JWT_PUBLIC_KEY"})
    jwt_jwks_url: str | None = field(default=None, metadata={"env": "JWT_JWKS_URL"})
    jwt_algorithms: tuple[str, ...] = field(default=("HS256",), metadata={"env": "JWT_ALGORITHMS"})
    jwt_issuer: str = field(default="pushq", metadata={"env": "JWT_ISSUER"})
    jwt_audience: str = field(default="pushq", metadata={"env": "JWT_AUDIENCE"})
    jwt_leeway_seconds: int = field(default=30, metadata={"env": "JWT_LEEWAY_SECONDS"})

    default_ttl_seconds: int = field(default=86_400, metadata={"env": "PUSHQ_DEFAULT_TTL"})
    # Development only: also accept http:// Web Push endpoints on loopback (the local stand-in push service).
    allow_http_endpoints: bool = field(default=False, metadata={"env": "PUSHQ_ALLOW_HTTP_ENDPOINTS"})
    # Push services besides the browsers' own (shared/egress.py): host names, "*.domain" for any subdomain.
    webpush_extra_hosts: tuple[str, ...] = field(default=(), metadata={"env": "PUSHQ_WEBPUSH_EXTRA_HOSTS"})
    # Active devices per user per app; registering one more disables the least recently seen.
    max_devices_per_user: int = field(default=20, metadata={"env": "PUSHQ_MAX_DEVICES_PER_USER"})
    vendor_connect_timeout: float = field(default=5.0, metadata={"env": "PUSHQ_VENDOR_CONNECT_TIMEOUT"})
    vendor_read_timeout: float = field(default=10.0, metadata={"env": "PUSHQ_VENDOR_READ_TIMEOUT"})
    # Vendor endpoints; the defaults are the real vendors (tests point them at the stand-ins).
    apns_host: str | None = field(default=None, metadata={"env": "PUSHQ_APNS_HOST"})  # None: Apple's, per app sandbox flag
    apns_port: int = field(default=443, metadata={"env": "PUSHQ_APNS_PORT"})
    apns_ca_file: str | None = field(default=None, metadata={"env": "PUSHQ_APNS_CA_FILE"})  # extra CA to trust
    fcm_base_url: str = field(default="https://fcm.googleapis.com", metadata={"env": "PUSHQ_FCM_BASE_URL"})
    # The whole of one push (connect, send, the whole answer); default: connect + read timeouts.
    push_deadline_seconds: float | None = field(default=None, metadata={"env": "PUSHQ_PUSH_DEADLINE_SECONDS"})
    # Pushes in flight at once per push-service origin, within one worker process.
    push_concurrency: int = field(default=32, metadata={"env": "PUSHQ_PUSH_CONCURRENCY"})
    delivery_chunk_size: int = field(default=100, metadata={"env": "PUSHQ_DELIVERY_CHUNK_SIZE"})
    # Devices a broadcast's fan-out step pages at most (one transaction, then its chunks are enqueued).
    broadcast_page_size: int = field(default=1000, metadata={"env": "PUSHQ_BROADCAST_PAGE_SIZE"})
    # A queued notification not fanned out after this long is re-enqueued by the sweeper.
    sweep_after_seconds: int = field(default=60, metadata={"env": "PUSHQ_SWEEP_AFTER_SECONDS"})
    sweep_interval_seconds: float = field(default=30.0, metadata={"env": "PUSHQ_SWEEP_INTERVAL"})
    # Backpressure: with more deliveries than this waiting for a worker (as the last sweep counted),
    # send answers carry X-Queue-Backlog and X-Queue-Delay; the work is still accepted and stored.
    backpressure_threshold: int = field(default=10_000, metadata={"env": "PUSHQ_BACKPRESSURE_THRESHOLD"})
    # How often the scheduler releases scheduled sends whose send_at has come (a send goes out within
    # about this plus a fan-out after its send_at; never before).
    schedule_interval_seconds: float = field(default=1.0, metadata={"env": "PUSHQ_SCHEDULE_INTERVAL"})
    # Housekeeping (shared/services/housekeeping.py), run by the scheduler every interval; 0 days = job off.
    housekeeping_interval_seconds: float = field(default=3600.0, metadata={"env": "PUSHQ_HOUSEKEEPING_INTERVAL"})
    # Final notifications (and their deliveries) older than this many days are deleted.
    retention_days: int = field(default=30, metadata={"env": "PUSHQ_RETENTION_DAYS"})
    # Active devices not registered again for this many days are disabled ("idle").
    device_idle_days: int = field(default=270, metadata={"env": "PUSHQ_DEVICE_IDLE_DAYS"})
    # OAuth clients revoked this many days ago are deleted (must outlast a token's lifetime).
    revoked_client_days: int = field(default=30, metadata={"env": "PUSHQ_REVOKED_CLIENT_DAYS"})
    # Rows per housekeeping statement, and statements per job per run.
    housekeeping_batch_size: int = field(default=1000, metadata={"env": "PUSHQ_HOUSEKEEPING_BATCH_SIZE"})
    housekeeping_max_batches: int = field(default=20, metadata={"env": "PUSHQ_HOUSEKEEPING_MAX_BATCHES"})
    # A delivery claimed by a worker that died is claimable again after this lease.
    claim_lease_seconds: int = field(default=300, metadata={"env": "PUSHQ_CLAIM_LEASE_SECONDS"})
    max_attempts: int = field(default=5, metadata={"env": "PUSHQ_MAX_ATTEMPTS"})
    retry_base_seconds: float = field(default=2.0, metadata={"env": "PUSHQ_RETRY_BASE_SECONDS"})
    retry_max_seconds: float = field(default=600.0, metadata={"env": "PUSHQ_RETRY_MAX_SECONDS"})
    # How long POST /v1/push/send waits for first delivery attempts before answering "pending".
    fanout_wait_seconds: float = field(default=10.0, metadata={"env": "PUSHQ_FANOUT_WAIT_SECONDS"})
    # Concurrent POST /v1/push/send waits per app (all API processes); beyond it the call answers at once.
    max_waits_per_app: int = field(default=4, metadata={"env": "PUSHQ_MAX_WAITS_PER_APP"})
    # Database connections per API process: at least the serving threads (gunicorn --threads).
    db_pool_size: int = field(default=10, metadata={"env": "PUSHQ_DB_POOL_SIZE"})
    # Guards (see docs/api.md "Quotas, limits and idempotency").
    default_daily_quota: int = field(default=100_000, metadata={"env": "PUSHQ_DEFAULT_DAILY_QUOTA"})
    registration_limit: int = field(default=10, metadata={"env": "PUSHQ_REGISTRATION_LIMIT"})
    registration_window_seconds: int = field(default=3600, metadata={"env": "PUSHQ_REGISTRATION_WINDOW_SECONDS"})
    idempotency_ttl_seconds: int = field(default=86_400, metadata={"env": "PUSHQ_IDEMPOTENCY_TTL_SECONDS"})
    max_body_bytes: int = field(default=1024 * 1024, metadata={"env": "PUSHQ_MAX_BODY_BYTES"})
    # Secrets at rest: Fernet keys (first encrypts, all decrypt: rotation) and the HMAC key for token lookups.
    encryption_keys: tuple[str, ...] = field(default=(), metadata={"env": "PUSHQ_ENCRYPTION_KEYS"})
    token_hash_key: str | None = field(default=None, metadata={"env": "PUSHQ_TOKEN_HASH_KEY"})
    # The built-in client-credentials endpoint (POST /oauth/token) signs with this PEM private key
    # (RS*/ES* deployments) or with JWT_SECRET (HS*).
    token_signing_key: str | None = field(default=None, metadata={"env": "PUSHQ_TOKEN_SIGNING_KEY"})
    token_lifetime_seconds: int = field(default=3600, metadata={"env": "PUSHQ_TOKEN_LIFETIME_SECONDS"})
    # Failed client authentications at POST /oauth/token per client id / per source address per window.
    token_failures_per_client: int = field(default=10, metadata={"env": "PUSHQ_TOKEN_FAILURES_PER_CLIENT"})
    token_failures_per_address: int = field(default=30, metadata={"env": "PUSHQ_TOKEN_FAILURES_PER_ADDRESS"})
    token_failure_window_seconds: int = field(default=300, metadata={"env": "PUSHQ_TOKEN_FAILURE_WINDOW_SECONDS"})
    # scrypt runs at once per API process at POST /oauth/token (16 MiB and tens of ms each); beyond, 503.
    token_hash_concurrency: int = field(default=2, metadata={"env": "PUSHQ_TOKEN_HASH_CONCURRENCY"})
    # The claim (name=value) that makes a token with app_id a service token; pushq's own tokens carry it.
    service_token_claim: str = field(default="token_use=service", metadata={"env": "PUSHQ_SERVICE_TOKEN_CLAIM"})
    log_level: str = field(default="INFO", metadata={"env": "PUSHQ_LOG_LEVEL"})
    # "text" (one readable line per event) or "json" (one object per line, for log shippers).
    log_format: str = field(default="text", metadata={"env": "PUSHQ_LOG_FORMAT"})
    # Where every pushq process of this host writes its Prometheus metrics (one subdirectory per
    # gunicorn master / Celery worker); GET /metrics reads them all. None: <tmp>/pushq-metrics-<uid>.
    metrics_dir: str | None = field(default=None, metadata={"env": "PUSHQ_METRICS_DIR"})
    # When set, GET /metrics requires "Authorization: Bearer <this>".
    metrics_token: str | None = field(default=None, metadata={"env": "PUSHQ_METRICS_TOKEN"})
    # A Celery worker also serves this host's metrics on this port (hosts without the API); 0: off.
    worker_metrics_port: int = field(default=0, metadata={"env": "PUSHQ_WORKER_METRICS_PORT"})
    # The address that port listens on: loopback unless a scraper elsewhere needs it (e.g. 0.0.0.0 or ::).
    worker_metrics_host: str = field(default="127.0.0.1", metadata={"env": "PUSHQ_WORKER_METRICS_HOST"})
    # Queue gauges (a broker connection and two aggregate queries) are read at most once per this many
    # seconds per process, whatever the scrape rate; scrapes in between get the last reading.
    metrics_refresh_seconds: float = field(default=15.0, metadata={"env": "PUSHQ_METRICS_REFRESH_SECONDS"})
    # Outcome webhooks (docs/api.md "Outcome webhooks"): attempts per event before giving up, the backoff
    # between them (full jitter, doubling from the base up to the max), one POST's whole deadline, events per
    # POST when many are due, and how long a rotated-out secret still signs.
    webhook_max_attempts: int = field(default=10, metadata={"env": "PUSHQ_WEBHOOK_MAX_ATTEMPTS"})
    webhook_retry_base_seconds: float = field(default=5.0, metadata={"env": "PUSHQ_WEBHOOK_RETRY_BASE_SECONDS"})
    webhook_retry_max_seconds: float = field(default=3600.0, metadata={"env": "PUSHQ_WEBHOOK_RETRY_MAX_SECONDS"})
    webhook_deadline_seconds: float = field(default=10.0, metadata={"env": "PUSHQ_WEBHOOK_DEADLINE_SECONDS"})
    webhook_batch_size: int = field(default=50, metadata={"env": "PUSHQ_WEBHOOK_BATCH_SIZE"})
    webhook_secret_overlap_seconds: int = field(default=86_400, metadata={"env": "PUSHQ_WEBHOOK_SECRET_OVERLAP_SECONDS"})
    # How often the scheduler hands due webhook events to the webhooks queue.
    webhook_interval_seconds: float = field(default=1.0, metadata={"env": "PUSHQ_WEBHOOK_INTERVAL"})
    # The HMAC key of receipt tokens (docs/security.md); None: derived from PUSHQ_TOKEN_HASH_KEY.
    receipt_key: str | None = field(default=None, metadata={"env": "PUSHQ_RECEIPT_KEY"})
    # Receipts per source address (IPv6 per /64) per minute at POST /push/receipts.
    receipts_per_address_per_minute: int = field(default=600, metadata={"env": "PUSHQ_RECEIPTS_PER_ADDRESS_PER_MINUTE"})
    # The status page at /admin answers only to this token (bearer, or its login cookie); None: /admin is off (404).
    admin_token: str | None = field(default=None, metadata={"env": "PUSHQ_ADMIN_TOKEN"})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); ``overrides`` win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            if name in env and env[name] != "":
                values[f.name] = _parse(f, env[name])
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse combinations that would be insecure or cannot work."""
        algorithms = set(self.jwt_algorithms)
        if not algorithms:
            raise ConfigError("JWT_ALGORITHMS is empty")
        if "none" in {a.lower() for a in algorithms}:
            raise ConfigError("JWT_ALGORITHMS must never allow 'none'")
        symmetric = {a for a in algorithms if a.startswith("HS")}
        asymmetric = algorithms - symmetric
        if symmetric and (self.jwt_public_key or self.jwt_jwks_url):
            # An HS algorithm next to a public key lets anyone sign with the public key as secret.
            raise ConfigError("HS* algorithms cannot be combined with JWT_PUBLIC_KEY or JWT_JWKS_URL")
        if asymmetric and not (self.jwt_public_key or self.jwt_jwks_url):
            raise ConfigError(f"{sorted(asymmetric)} need JWT_PUBLIC_KEY or JWT_JWKS_URL")
        if self.broadcast_page_size < 1:
            raise ConfigError("PUSHQ_BROADCAST_PAGE_SIZE must be at least 1")
        if self.delivery_chunk_size < 1:
            raise ConfigError("PUSHQ_DELIVERY_CHUNK_SIZE must be at least 1")
        self._validate_security_limits()
        self._validate_schedules()
        if self.push_concurrency < 1:
            raise ConfigError("PUSHQ_PUSH_CONCURRENCY must be at least 1")
        if self.metrics_refresh_seconds < 0:
            raise ConfigError("PUSHQ_METRICS_REFRESH_SECONDS must be 0 (every scrape) or more seconds")
        if self.log_format not in ("text", "json"):
            raise ConfigError("PUSHQ_LOG_FORMAT must be text or json")
        if self.admin_token is not None and len(self.admin_token) < 16:
            # The token is the only thing between the internet and every app's traffic figures.
            raise ConfigError("PUSHQ_ADMIN_TOKEN must be at least 16 characters (e.g. `openssl rand -hex 32`)")
        if self.claim_lease_seconds <= self.deliver_time_limits[1]:
            # A live worker's deliveries must never be claimed by another.
            raise ConfigError(
                f"PUSHQ_CLAIM_LEASE_SECONDS ({self.claim_lease_seconds}) must exceed a chunk's hard time limit "
                f"({self.deliver_time_limits[1]:.0f} s: push deadline x waves of PUSHQ_PUSH_CONCURRENCY + margins)"
            )

    @property
    def push_deadline(self) -> float:
        """Seconds one push may take in all: connect, send and the whole answer."""
        if self.push_deadline_seconds is not None:
            return self.push_deadline_seconds
        return self.vendor_connect_timeout + self.vendor_read_timeout

    @property
    def deliver_time_limits(self) -> tuple[float, float]:
        """Celery (soft, hard) time limits of a deliver task: a chunk's worst case plus margins.

        Pushes run concurrently, at most ``push_concurrency`` per origin, each bounded by the
        push deadline; the soft limit leaves one more deadline to write outcomes, the hard
        one another to give up.
        """
        waves = -(-self.delivery_chunk_size // self.push_concurrency)
        soft = (waves + 1) * self.push_deadline
        return soft, soft + self.push_deadline

    @property
    def webhook_time_limits(self) -> tuple[float, float]:
        """Celery (soft, hard) time limits of a webhook task: its one POST's deadline plus margins to record it."""
        return self.webhook_deadline_seconds + 5, self.webhook_deadline_seconds + 10

    @property
    def webhook_lease_seconds(self) -> float:
        """How long a claimed webhook batch is held: past its task's hard limit, with time to wait in its queue."""
        return self.webhook_time_limits[1] + 60

    def _validate_security_limits(self) -> None:
        """The egress allowlist, device cap, token-endpoint throttle and service-token claim (docs/security.md)."""
        from shared.egress import parse_host_patterns

        try:
            parse_host_patterns(self.webpush_extra_hosts)
        except ValueError as exc:
            raise ConfigError(f"PUSHQ_WEBPUSH_EXTRA_HOSTS: {exc}") from None
        for name, value in (("PUSHQ_MAX_DEVICES_PER_USER", self.max_devices_per_user),
                            ("PUSHQ_TOKEN_FAILURES_PER_CLIENT", self.token_failures_per_client),
                            ("PUSHQ_TOKEN_FAILURES_PER_ADDRESS", self.token_failures_per_address),
                            ("PUSHQ_TOKEN_FAILURE_WINDOW_SECONDS", self.token_failure_window_seconds),
                            ("PUSHQ_TOKEN_HASH_CONCURRENCY", self.token_hash_concurrency)):
            if value < 1:
                raise ConfigError(f"{name} must be at least 1")
        claim, equals, claim_value = self.service_token_claim.partition("=")
        if not (claim.strip() and equals and claim_value.strip()) or claim.strip() in _RESERVED_CLAIMS:
            raise ConfigError(f"PUSHQ_SERVICE_TOKEN_CLAIM must be name=value, the name none of {sorted(_RESERVED_CLAIMS)}")

    def _validate_schedules(self) -> None:
        """Scheduled sends and housekeeping (docs/operations.md)."""
        for name, value in (("PUSHQ_SCHEDULE_INTERVAL", self.schedule_interval_seconds),
                            ("PUSHQ_HOUSEKEEPING_INTERVAL", self.housekeeping_interval_seconds)):
            if value <= 0:
                raise ConfigError(f"{name} must be more than 0 seconds")
        for name, value in (("PUSHQ_RETENTION_DAYS", self.retention_days),
                            ("PUSHQ_DEVICE_IDLE_DAYS", self.device_idle_days),
                            ("PUSHQ_REVOKED_CLIENT_DAYS", self.revoked_client_days)):
            if value < 0:
                raise ConfigError(f"{name} must be 0 (off) or more days")
        for name, number in (("PUSHQ_WEBHOOK_MAX_ATTEMPTS", self.webhook_max_attempts),
                             ("PUSHQ_WEBHOOK_BATCH_SIZE", self.webhook_batch_size),
                             ("PUSHQ_RECEIPTS_PER_ADDRESS_PER_MINUTE", self.receipts_per_address_per_minute)):
            if number < 1:
                raise ConfigError(f"{name} must be at least 1")
        for name, seconds in (("PUSHQ_WEBHOOK_DEADLINE_SECONDS", self.webhook_deadline_seconds),
                              ("PUSHQ_WEBHOOK_INTERVAL", self.webhook_interval_seconds),
                              ("PUSHQ_WEBHOOK_RETRY_BASE_SECONDS", self.webhook_retry_base_seconds)):
            if seconds <= 0:
                raise ConfigError(f"{name} must be more than 0 seconds")
        if self.webhook_retry_max_seconds < self.webhook_retry_base_seconds or self.webhook_secret_overlap_seconds < 0:
            raise ConfigError("PUSHQ_WEBHOOK_RETRY_MAX_SECONDS must be at least the base; the secret overlap 0 or more")
        if self.housekeeping_batch_size < 1 or self.housekeeping_max_batches < 1:
            raise ConfigError("PUSHQ_HOUSEKEEPING_BATCH_SIZE and PUSHQ_HOUSEKEEPING_MAX_BATCHES must be at least 1")
        if self.revoked_client_days and self.revoked_client_days * 86_400 <= self.token_lifetime_seconds + self.jwt_leeway_seconds:
            # Deleting a revoked client while a token of its may still verify would un-revoke that token.
            raise ConfigError("PUSHQ_REVOKED_CLIENT_DAYS must outlast PUSHQ_TOKEN_LIFETIME_SECONDS (or be 0)")

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied and validated."""
        settings = dataclasses.replace(self, **changes)
        settings.validate()
        return settings


# How a raw environment value becomes each type a setting may have; a setting of any other type is refused.
_PARSERS: dict[Any, Callable[[str], Any]] = {bool: _bool, int: int, float: float, str: str, tuple[str, ...]: _tuple}


def _parser_for(annotation: Any) -> Callable[[str], Any]:
    """The parser of a setting's (resolved) type; ``X | None`` parses as ``X`` (unset means None)."""
    if isinstance(annotation, types.UnionType) and type(None) in annotation.__args__:
        rest = [arg for arg in annotation.__args__ if arg is not type(None)]
        if len(rest) == 1:
            annotation = rest[0]
    try:
        return _PARSERS[annotation]
    except (KeyError, TypeError):
        raise TypeError(f"a setting of type {annotation!r} has no parser: add one to shared.config._PARSERS") from None


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    parser = _parser_for(typing.get_type_hints(Settings)[f.name])
    try:
        return parser(raw)
    except ValueError as exc:
        raise ConfigError(f"{f.metadata['env']}: {exc}") from exc


def documented_variables() -> list[tuple[str, Any]]:
    """(env var, default) pairs, used by `pushq config` and checked against docs/configuration.md."""
    return [(f.metadata["env"], f.default) for f in dataclasses.fields(Settings)]
