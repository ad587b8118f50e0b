"""Web Push (RFC 8030/8291/8292): aes128gcm encryption, cached VAPID, concurrent pushes over keep-alive.

Pushes of a chunk go out concurrently on one event loop per worker process
(aiohttp, already a dependency of pywebpush), at most ``concurrency`` at once
per push-service origin, over connections kept alive across tasks. Each push
has an overall deadline (connect, send and the whole answer). Redirects are
never followed and at most ``MAX_ANSWER_BYTES`` of an answer are read.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
import os
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from urllib.parse import urlsplit

import aiohttp
import http_ece
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid

from shared.clock import utcnow
from shared.egress import EndpointRefused, check_push_endpoint, is_public_address
from shared.outcomes import Outcome
from shared.payloads import PayloadTooLarge
from shared.pipeline.values import ClaimedDelivery
from shared.platforms import WEBPUSH_MAX_PLAINTEXT_BYTES
from shared.receipts import PAYLOAD_RESERVE_BYTES, ReceiptTokens
from shared.vendor_payloads import WEB, NotDeliverable, fit, webpush_urgency
from workers.adapters.base import (
    AppCredentials,
    ChunkInterrupted,
    chunk_budget,
    parse_retry_after,
    unanswered_as_retries,
    vendor_text,
)
from workers.vendors.loop import LoopThread

log = logging.getLogger(__name__)

MAX_PLAINTEXT_BYTES = WEBPUSH_MAX_PLAINTEXT_BYTES  # shared/platforms.py says why 3993
VAPID_LIFETIME_SECONDS = 12 * 3600
VAPID_RENEW_BEFORE_SECONDS = 3600
MAX_ANSWER_BYTES = 16 * 1024  # push services answer with empty or tiny bodies
MAX_MESSAGE_ID_CHARS = 512


def _b64decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


class VapidHeaders:
    """One signed VAPID header per (app key, push service origin), reused until near expiry.

    Signing costs tens of microseconds per push otherwise; a header is valid for
    every endpoint on its origin.
    """

    def __init__(self) -> None:
        self._keys: dict[str, Vapid] = {}
        self._headers: dict[tuple[str, str], tuple[str, float]] = {}

    def authorization(self, app: AppCredentials, origin: str, now: float) -> str:
        cache_key = (app.vapid_public_key, origin)
        cached = self._headers.get(cache_key)
        if cached and cached[1] - VAPID_RENEW_BEFORE_SECONDS > now:
            return cached[0]
        vapid = self._keys.get(app.vapid_public_key)
        if vapid is None:
            vapid = self._keys[app.vapid_public_key] = Vapid.from_pem(app.vapid_private_key.encode())
        expires = int(now) + VAPID_LIFETIME_SECONDS
        # A fresh claims dict each time: py_vapid writes into it.
        header: str = vapid.sign({"sub": app.vapid_subject, "aud": origin, "exp": expires})["Authorization"]
        self._headers[cache_key] = (header, expires)
        return header


EGRESS_REFUSED_AT_CONNECT = "egress refused at connect: the push service host resolved to no public address"


class NonPublicAddress(OSError):
    """A push service's host name resolved to no address pushq may connect to."""


class PublicAddressResolver(AbstractResolver):
    """Resolve with aiohttp's default resolver and keep only public addresses.

    The connection then goes to an address that was checked (TLS still verifies
    the host name), so a DNS answer pointing an allowed push-service name at
    loopback, a private network or the metadata service (DNS rebinding) cannot
    reach inside. Such a push is a retry, never a dead device: the endpoint
    passed the rules, and a resolver fault must not disable a push service's
    every device. ``allow_loopback`` is for development only
    (``PUSHQ_ALLOW_HTTP_ENDPOINTS``, the local stand-in push service).
    """

    def __init__(self, allow_loopback: bool = False) -> None:
        self._inner = aiohttp.DefaultResolver()
        self.allow_loopback = allow_loopback

    def _allowed(self, address: str) -> bool:
        if is_public_address(address):
            return True
        return self.allow_loopback and ipaddress.ip_address(address).is_loopback

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [result for result in results if self._allowed(result["host"])]
        if not allowed:
            raise NonPublicAddress(f"{host} resolves to no public address")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


class Subscription:
    """A browser's push subscription as stored in the device token: endpoint and its keys."""

    __slots__ = ("auth_secret", "endpoint", "origin", "receiver_key")

    def __init__(self, token: str) -> None:
        document = json.loads(token)
        self.endpoint: str = document["endpoint"]
        parts = urlsplit(self.endpoint)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("endpoint is not an http(s) URL")
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.receiver_key = _b64decode(document["keys"]["p256dh"])
        self.auth_secret = _b64decode(document["keys"]["auth"])

    def encrypt(self, plaintext: bytes) -> bytes:
        """RFC 8291 aes128gcm with a new ephemeral ECDH key for this message."""
        encrypted: bytes = http_ece.encrypt(
            plaintext, private_key=ec.generate_private_key(ec.SECP256R1()), dh=self.receiver_key,
            auth_secret=self.auth_secret, version="aes128gcm",
        )
        return encrypted


def classify(status: int, headers: Mapping[str, str], truncated: bool = False) -> Outcome:
    """A push service's answer as an outcome; nothing beyond the status code is kept from a refusal."""
    if status in (200, 201, 202):
        # A header that is not UTF-8 arrives with surrogate escapes: cleaned, never stored as it is.
        return Outcome.sent(vendor_text(headers.get("Location") or None, MAX_MESSAGE_ID_CHARS), truncated)
    reason = f"push service answered {status}"
    if status in (404, 410):
        return Outcome.dead_token(f"{reason}: subscription gone")
    if status == 413:
        return Outcome.rejected(f"{reason}: payload too large")
    if status == 429 or status >= 500:
        return Outcome.retry(reason, parse_retry_after(headers.get("Retry-After")))
    return Outcome.rejected(reason)  # 3xx included: a redirect is never followed


def with_receipt(payload: bytes, token: str) -> bytes:
    """The payload (a JSON object) with ``"receipt": token`` added, when it still fits Web Push's limit.

    A message that fills the whole payload goes without a receipt: receipts are
    best effort, the message itself is not.
    """
    if len(payload) + PAYLOAD_RESERVE_BYTES > MAX_PLAINTEXT_BYTES or not payload.endswith(b"}"):
        return payload
    return payload[:-1] + (b',"receipt":"' if len(payload) > 2 else b'"receipt":"') + token.encode() + b'"}'


class WebPushAdapter:
    platform = "web"

    def __init__(
        self,
        connect_timeout: float = 5.0,
        deadline: float = 15.0,
        *,
        concurrency: int = 32,
        allow_http_loopback: bool = False,
        extra_hosts: Sequence[str] = (),
        clock: Callable[[], datetime] = utcnow,
        receipts: ReceiptTokens | None = None,
    ) -> None:
        # The egress rules are checked again here, at each push, whatever registration let in:
        # a device stored before a rule, or under a host since removed, is never contacted.
        self.allow_http_loopback = allow_http_loopback
        self.extra_hosts = tuple(extra_hosts)
        self.connect_timeout = connect_timeout
        self.deadline = deadline
        self.concurrency = concurrency
        self.clock = clock
        self.receipts = receipts  # signs each payload's receipt token (shared/receipts.py)
        self.vapid = VapidHeaders()
        self._loop = LoopThread("pushq-webpush")
        self._session: aiohttp.ClientSession | None = None
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._pid = os.getpid()

    def send_many(self, app: AppCredentials, deliveries: Sequence[ClaimedDelivery]) -> list[Outcome]:
        if not deliveries:
            return []
        # The chunk's deadline: its waves of pushes, each bounded by the push deadline.
        budget = chunk_budget(len(deliveries), self.concurrency, self.deadline)
        try:
            answers = self._loop.run_each(len(deliveries), lambda i: self._send_safely(app, deliveries[i]), budget)
        except ChunkInterrupted as interrupted:  # the task's time limit: keep what came back
            raise ChunkInterrupted(unanswered_as_retries(interrupted.partial, interrupted.cause),
                                   interrupted.cause) from interrupted
        except Exception as exc:
            log.exception("web push chunk of %d failed", len(deliveries))
            return [Outcome.retry(f"web push client error: {type(exc).__name__}")] * len(deliveries)
        return unanswered_as_retries(answers, None)

    def send(self, app: AppCredentials, delivery: ClaimedDelivery) -> Outcome:
        return self.send_many(app, [delivery])[0]

    def _client_session(self) -> aiohttp.ClientSession:
        """This process's session (on the loop's thread)."""
        if self._pid != os.getpid():  # forked: the parent's session belongs to the parent's loop
            self._session, self._limits, self._pid = None, {}, os.getpid()
        if self._session is None:
            self._session = self._new_session()
        return self._session

    def _new_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=self.concurrency, ssl=ssl.create_default_context(), ttl_dns_cache=60,
            resolver=PublicAddressResolver(allow_loopback=self.allow_http_loopback),
        )
        return aiohttp.ClientSession(
            connector=connector, trust_env=False, auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout),
        )

    async def _send_safely(self, app: AppCredentials, delivery: ClaimedDelivery) -> Outcome:
        """Any failure of this one push becomes its outcome; the chunk's other pushes go on."""
        try:
            self._client_session()  # after a fork: the session and limits start afresh, before any is used
            return await self._send(app, delivery)
        except Exception as exc:
            log.exception("web push: unexpected error for delivery %s", delivery.delivery_id)
            return Outcome.retry(f"unexpected error pushing: {type(exc).__name__}")

    async def _send(self, app: AppCredentials, delivery: ClaimedDelivery) -> Outcome:
        message = delivery.message
        try:
            payload, truncated = fit(WEB, message)  # as the API measured it at accept
        except PayloadTooLarge as exc:
            return Outcome.rejected(f"payload too large for Web Push: {exc}")
        except NotDeliverable as exc:
            return Outcome.rejected(str(exc))
        if self.receipts is not None:
            payload = with_receipt(payload, self.receipts.token(delivery.delivery_id))
        try:
            subscription = Subscription(delivery.token)
        except (ValueError, KeyError, TypeError) as exc:
            return Outcome.rejected(f"cannot encrypt for this subscription: {type(exc).__name__}")
        try:
            check_push_endpoint(subscription.endpoint, allow_http_loopback=self.allow_http_loopback,
                                extra_hosts=self.extra_hosts)
        except EndpointRefused as exc:
            return Outcome.rejected(f"endpoint refused by the egress rules: {exc.reason}", disable_device=True)
        try:
            body = subscription.encrypt(payload)
        except (ValueError, KeyError, TypeError) as exc:
            return Outcome.rejected(f"cannot encrypt for this subscription: {type(exc).__name__}")
        limit = self._limits.get(subscription.origin)
        if limit is None:
            limit = self._limits[subscription.origin] = asyncio.Semaphore(self.concurrency)
        async with limit:
            now = self.clock()
            headers = {
                "TTL": str(message.remaining_ttl(now)),  # at the push, not when the chunk was claimed
                "Urgency": webpush_urgency(message),
                "Content-Encoding": "aes128gcm",
                "Content-Type": "application/octet-stream",
                "Authorization": self.vapid.authorization(app, subscription.origin, now.timestamp()),
            }
            if message.collapse_key:
                headers["Topic"] = message.collapse_key
            return await self._post(subscription.endpoint, body, headers, truncated)

    async def _post(self, endpoint: str, body: bytes, headers: dict[str, str], truncated: bool) -> Outcome:
        session = self._client_session()
        try:
            async with asyncio.timeout(self.deadline):
                async with session.post(endpoint, data=body, headers=headers, allow_redirects=False) as response:
                    # Bounded: a hostile or broken service cannot make the worker read without end.
                    await response.content.read(MAX_ANSWER_BYTES)
                    return classify(response.status, response.headers, truncated)
        except TimeoutError:
            return Outcome.retry("push service timed out")
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, NonPublicAddress):
                # The name passed the egress rules; only today's DNS answer points inside. One resolver fault
                # must not disable every device of a push service: try again later (counted as an egress retry).
                return Outcome.retry(EGRESS_REFUSED_AT_CONNECT)
            return Outcome.retry(f"connection to push service failed: {type(exc).__name__}")
        except aiohttp.ClientError as exc:
            return Outcome.retry(f"connection to push service failed: {type(exc).__name__}")

    def close(self) -> None:
        async def shutdown() -> None:
            if self._session is not None:
                await self._session.close()
                self._session = None
            self._limits.clear()

        self._loop.close(shutdown)
        self._session = None
        self._limits = {}


