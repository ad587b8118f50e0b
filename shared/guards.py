"""Redis-backed guards shared by every API process: the daily quota, the registration rate
limit and the limit on failed client authentications at the token endpoint.

Each is a single Lua script, so each check-and-count is atomic in Redis and
exact however many API processes run at once.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis

from shared.errors import ServiceError

_RESERVE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local wanted = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
if used + wanted > limit then
  return {0, used}
end
used = redis.call('INCRBY', KEYS[1], wanted)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {1, used}
"""

# A refund never creates the counter (the day's key may have expired, or the day turned) and never
# leaves it without an expiry: a counter without TTL would live in Redis forever.
_REFUND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local left = redis.call('DECRBY', KEYS[1], ARGV[1])
if left < 0 then redis.call('SET', KEYS[1], 0, 'KEEPTTL') end
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return left
"""

_SLIDING_WINDOW = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, count, tonumber(oldest[2])}
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], window)
return {1, count + 1, 0}
"""

# Sliding windows of authentication attempts, one per key (KEYS[i] limited to ARGV[2 + i]): when any
# window is full, the milliseconds until the last full one has room; otherwise the attempt (ARGV[3 +
# #KEYS], a unique member) is added to every window and 0 returned. Taken before the secret is checked,
# so concurrent attempts cannot overshoot; a successful attempt is removed again (it is no failure).
_ATTEMPT_SLOT = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local member = ARGV[3 + #KEYS]
local wait = 0
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= tonumber(ARGV[2 + i]) then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    local until_free = tonumber(oldest[2]) + window - now
    if until_free > wait then wait = until_free end
  end
end
if wait > 0 then return wait end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, member)
  redis.call('PEXPIRE', key, window)
end
return 0
"""


class QuotaExceeded(ServiceError):
    status, code, message = 429, "daily_quota_exceeded", "Daily quota exceeded"


class RateLimited(ServiceError):
    status, code, message = 429, "rate_limited", "Too many registrations, try again later"


class TooManyFailedAuthentications(ServiceError):
    status, code, message = 429, "rate_limited", "Too many failed client authentications, try again later"


@dataclass(frozen=True)
class QuotaDecision:
    limit: int
    used: int
    reset_at: datetime  # the next UTC midnight

    @property
    def remaining(self) -> int:
        return max(self.limit - self.used, 0)

    def headers(self, now: datetime) -> dict[str, str]:
        return {
            "X-Quota-Limit": str(self.limit),
            "X-Quota-Remaining": str(self.remaining),
            "X-Quota-Reset": str(seconds_until(self.reset_at, now)),
        }


def next_utc_midnight(now: datetime) -> datetime:
    day = now.astimezone(UTC).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def seconds_until(moment: datetime, now: datetime) -> int:
    return max(math.ceil((moment - now).total_seconds()), 1)


class DailyQuota:
    """Notifications per app per UTC day, counted in Redis (one key per app and day)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._reserve = client.register_script(_RESERVE)
        self._refund = client.register_script(_REFUND)

    @staticmethod
    def _key(app_id: uuid.UUID, now: datetime) -> str:
        return f"pushq:quota:{app_id}:{now.astimezone(UTC):%Y-%m-%d}"

    def reserve(self, app_id: uuid.UUID, count: int, limit: int, now: datetime) -> QuotaDecision:
        """Take ``count`` from today's quota, all or nothing; raise QuotaExceeded otherwise."""
        reset_at = next_utc_midnight(now)
        allowed, used = self._reserve(keys=[self._key(app_id, now)], args=[count, limit, 2 * 86_400])
        decision = QuotaDecision(limit=limit, used=int(used), reset_at=reset_at)
        if not allowed:
            raise QuotaExceeded(headers={"Retry-After": str(seconds_until(reset_at, now)), **decision.headers(now)})
        return decision

    def refund(self, app_id: uuid.UUID, count: int, now: datetime) -> None:
        """Give back a reservation whose request did not commit."""
        self._refund(keys=[self._key(app_id, now)], args=[count, 2 * 86_400])

    def used(self, app_id: uuid.UUID, now: datetime) -> int:
        """Notifications the app has taken from the UTC day of ``now`` (operators' view; reads only)."""
        value = self._client.get(self._key(app_id, now))
        return int(value or 0)


@dataclass(frozen=True)
class QuotaPolicy:
    """The counter and the limit for apps without one of their own."""

    counter: DailyQuota
    default_limit: int


class RegistrationLimiter:
    """At most ``limit`` registrations per user in any sliding ``window_seconds``."""

    def __init__(self, client: redis.Redis, limit: int, window_seconds: int) -> None:
        self._script = client.register_script(_SLIDING_WINDOW)
        self.limit = limit
        self.window_ms = window_seconds * 1000

    def hit(self, user_id: uuid.UUID, now: datetime) -> None:
        now_ms = int(now.timestamp() * 1000)
        allowed, _count, oldest = self._script(
            keys=[f"pushq:registrations:{user_id}"], args=[now_ms, self.window_ms, self.limit, uuid.uuid4().hex]
        )
        if not allowed:
            retry_after = max(math.ceil((int(oldest) + self.window_ms - now_ms) / 1000), 1)
            raise RateLimited(headers={"Retry-After": str(retry_after)})


class ReceiptsRateLimited(ServiceError):
    status, code, message = 429, "rate_limited", "Too many receipts, try again later"


class ReceiptLimiter:
    """At most ``per_minute`` receipts per source address (IPv6 per /64) in any minute: one Redis script call."""

    def __init__(self, client: redis.Redis, per_minute: int) -> None:
        self._script = client.register_script(_SLIDING_WINDOW)
        self.limit = per_minute

    def hit(self, address: str | None, now: datetime) -> None:
        now_ms = int(now.timestamp() * 1000)
        allowed, _count, oldest = self._script(
            keys=[f"pushq:receipts:{address_bucket(address)}"], args=[now_ms, 60_000, self.limit, uuid.uuid4().hex]
        )
        if not allowed:
            retry_after = max(math.ceil((int(oldest) + 60_000 - now_ms) / 1000), 1)
            raise ReceiptsRateLimited(headers={"Retry-After": str(retry_after)})


@dataclass(frozen=True)
class AuthenticationAttempt:
    """A reserved slot in the failure windows: forgiven when the authentication succeeds."""

    keys: tuple[str, ...]
    member: str


def address_bucket(address: str | None) -> str:
    """The unit a per-address limit counts: an IPv4 address, or an IPv6 address's /64.

    One IPv6 subscriber usually holds a whole /64 (2^64 addresses), so counting
    full addresses would let one client rotate through them without limit. An
    IPv4-mapped IPv6 address counts as its IPv4 address; anything unparsable
    counts as itself (bounded: hashed when long).
    """
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
    except ValueError:
        return address if len(address) <= 64 else "sha256:" + hashlib.sha256(address.encode("utf-8", "replace")).hexdigest()
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class ClientAuthFailureLimiter:
    """At most ``per_client`` failed authentications per client id, and ``per_address`` per source
    address, in any sliding ``window_seconds`` (the token endpoint; OWASP API4).

    :meth:`reserve` runs before the secret's scrypt hash is computed, so a flood of
    guesses costs one Redis round trip each, not tens of milliseconds of CPU and
    16 MiB of memory. Client ids are keyed by their SHA-256 (any string a caller
    sends, bounded in size); addresses by :func:`address_bucket` (IPv6 by /64).
    """

    def __init__(self, client: redis.Redis, per_client: int, per_address: int, window_seconds: int) -> None:
        self._attempt = client.register_script(_ATTEMPT_SLOT)
        self._client = client
        self.per_client, self.per_address = per_client, per_address
        self.window_ms = window_seconds * 1000

    def reserve(self, client_id: str, address: str | None, now: datetime) -> AuthenticationAttempt:
        """Count an attempt as a failure until :meth:`forgive`; :class:`TooManyFailedAuthentications` when over."""
        client_key = "pushq:auth-failures:client:" + hashlib.sha256(str(client_id).encode("utf-8", "replace")).hexdigest()
        address_key = f"pushq:auth-failures:address:{address_bucket(address)}"
        attempt = AuthenticationAttempt((client_key, address_key), uuid.uuid4().hex)
        now_ms = int(now.timestamp() * 1000)
        wait_ms = int(self._attempt(
            keys=list(attempt.keys),
            args=[now_ms, self.window_ms, self.per_client, self.per_address, attempt.member],
        ))
        if wait_ms > 0:
            raise TooManyFailedAuthentications(headers={"Retry-After": str(max(math.ceil(wait_ms / 1000), 1))})
        return attempt

    def forgive(self, attempt: AuthenticationAttempt) -> None:
        """The attempt succeeded: it no longer counts against the client or the address."""
        pipeline = self._client.pipeline(transaction=False)
        for key in attempt.keys:
            pipeline.zrem(key, attempt.member)
        pipeline.execute()
