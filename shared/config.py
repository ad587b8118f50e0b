"""One settings object for the API, the workers, the scheduler and the CLI.

Every value comes from an environment variable (documented in README.md with
its default); explicit keyword overrides win over the environment, so tests and
embedding code never have to mutate ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

DEFAULT_DATABASE_URL = "sqlite:///pushq.sqlite3"


class ConfigError(ValueError):
    """A setting has a value pushq cannot work with."""


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
    """Runtime configuration; see README.md "Configuration" for each variable."""

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
    # Web Push endpoints must be https in production; the local stand-in is http.
    allow_http_endpoints: bool = field(default=False, metadata={"env": "PUSHQ_ALLOW_HTTP_ENDPOINTS"})
    vendor_connect_timeout: float = field(default=5.0, metadata={"env": "PUSHQ_VENDOR_CONNECT_TIMEOUT"})
    vendor_read_timeout: float = field(default=10.0, metadata={"env": "PUSHQ_VENDOR_READ_TIMEOUT"})
    # Vendor endpoints; the defaults are the real vendors (tests point them at the stand-ins).
    apns_host: str | None = field(default=None, metadata={"env": "PUSHQ_APNS_HOST"})  # None: Apple's, per app sandbox flag
    apns_port: int = field(default=443, metadata={"env": "PUSHQ_APNS_PORT"})
    apns_ca_file: str | None = field(default=None, metadata={"env": "PUSHQ_APNS_CA_FILE"})  # extra CA to trust
    fcm_base_url: str = field(default="https://fcm.googleapis.com", metadata={"env": "PUSHQ_FCM_BASE_URL"})
    delivery_chunk_size: int = field(default=100, metadata={"env": "PUSHQ_DELIVERY_CHUNK_SIZE"})
    # A queued notification not fanned out after this long is re-enqueued by the sweeper.
    sweep_after_seconds: int = field(default=60, metadata={"env": "PUSHQ_SWEEP_AFTER_SECONDS"})
    sweep_interval_seconds: float = field(default=30.0, metadata={"env": "PUSHQ_SWEEP_INTERVAL"})
    # A delivery claimed by a worker that died is claimable again after this lease.
    claim_lease_seconds: int = field(default=300, metadata={"env": "PUSHQ_CLAIM_LEASE_SECONDS"})
    max_attempts: int = field(default=5, metadata={"env": "PUSHQ_MAX_ATTEMPTS"})
    retry_base_seconds: float = field(default=2.0, metadata={"env": "PUSHQ_RETRY_BASE_SECONDS"})
    retry_max_seconds: float = field(default=600.0, metadata={"env": "PUSHQ_RETRY_MAX_SECONDS"})
    # How long POST /v1/push/send waits for first delivery attempts before answering "pending".
    fanout_wait_seconds: float = field(default=10.0, metadata={"env": "PUSHQ_FANOUT_WAIT_SECONDS"})
    # Guards (see README "Quotas, limits and idempotency").
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
    log_level: str = field(default="INFO", metadata={"env": "PUSHQ_LOG_LEVEL"})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
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
        if self.delivery_chunk_size < 1:
            raise ConfigError("PUSHQ_DELIVERY_CHUNK_SIZE must be at least 1")

    def replace(self, **changes: Any) -> "Settings":
        """A copy with ``changes`` applied and validated."""
        settings = dataclasses.replace(self, **changes)
        settings.validate()
        return settings


def _parse(f: dataclasses.Field, raw: str) -> Any:
    kind = f.type
    try:
        if kind == "bool":
            return _bool(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "tuple[str, ...]":
            return _tuple(raw)
    except ValueError as exc:
        raise ConfigError(f"{f.metadata['env']}: {exc}") from exc
    return raw


def documented_variables() -> list[tuple[str, Any]]:
    """(env var, default) pairs, used by `pushq config` and checked against README.md."""
    return [(f.metadata["env"], f.default) for f in dataclasses.fields(Settings)]
