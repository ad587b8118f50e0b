"""Web Push (RFC 8030/8291/8292): aes128gcm encryption, cached VAPID, the push service's answer as an outcome.

The adapter builds each request (the egress rules checked again at the push,
the payload encrypted for the subscription, the VAPID header for its origin) and
maps the answer to an outcome. How requests travel is
:class:`workers.adapters.pushes.PushRunner`'s business: concurrently on one
event loop per worker process, at most ``concurrency`` at once per push-service
origin, over the wire client's connections (HTTP/2 where the push service offers
it by ALPN, else HTTP/1.1 keep-alive), each under the push deadline, at most
``MAX_ANSWER_BYTES`` of an answer read, redirects never followed, and
connections only to public addresses (:mod:`workers.vendors.wire.addresses`).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from urllib.parse import urlsplit

import http_ece
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid

from shared.clock import utcnow
from shared.egress import EndpointRefused, check_push_endpoint
from shared.outcomes import Outcome
from shared.payloads import PayloadTooLarge
from shared.pipeline.values import ClaimedDelivery
from shared.platforms import WEBPUSH_MAX_PLAINTEXT_BYTES
from shared.receipts import PAYLOAD_RESERVE_BYTES, ReceiptTokens
from shared.vendor_payloads import WEB, NotDeliverable, fit, webpush_urgency
from workers.adapters.base import AppCredentials, parse_retry_after, vendor_text
from workers.adapters.pushes import PushRunner
from workers.vendors.wire import EgressRefused, Headers, Protocol, Request, WireClient, WireError
from workers.vendors.wire.addresses import AddressPolicy

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


def classify(status: int, headers: Headers, truncated: bool = False) -> Outcome:
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
        cleartext: Protocol = Protocol.HTTP1,
        ca_file: str | None = None,
        clock: Callable[[], datetime] = utcnow,
        receipts: ReceiptTokens | None = None,
    ) -> None:
        # The egress rules are checked again here, at each push, whatever registration let in:
        # a device stored before a rule, or under a host since removed, is never contacted.
        self.allow_http_loopback = allow_http_loopback
        self.extra_hosts = tuple(extra_hosts)
        self.deadline = deadline
        self.concurrency = concurrency
        self.clock = clock
        self.receipts = receipts  # signs each payload's receipt token (shared/receipts.py)
        self.vapid = VapidHeaders()
        # ``cleartext``: how to speak to plain-http endpoints (the loopback stand-in, development only).
        client = WireClient(
            connect_timeout=connect_timeout, cleartext=cleartext, ca_file=ca_file,
            policy=AddressPolicy.PUBLIC_OR_LOOPBACK if allow_http_loopback else AddressPolicy.PUBLIC,
            max_http1_connections=concurrency,
        )
        self.pushes = PushRunner("web push", client, concurrency=concurrency, deadline=deadline)

    def send_many(self, app: AppCredentials, deliveries: Sequence[ClaimedDelivery]) -> list[Outcome]:
        return self.pushes.run(len(deliveries), lambda i: self._send(app, deliveries[i]))

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
        async with self.pushes.limit(subscription.origin):
            now = self.clock()
            headers = [
                ("TTL", str(message.remaining_ttl(now))),  # at the push, not when the chunk was claimed
                ("Urgency", webpush_urgency(message)),
                ("Content-Encoding", "aes128gcm"),
                ("Content-Type", "application/octet-stream"),
                ("Authorization", self.vapid.authorization(app, subscription.origin, now.timestamp())),
            ]
            if message.collapse_key:
                headers.append(("Topic", message.collapse_key))
            return await self._post(Request("POST", subscription.endpoint, headers, body), truncated)

    async def _post(self, request: Request, truncated: bool) -> Outcome:
        try:
            # Bounded: a hostile or broken service cannot make the worker read without end.
            answer = await self.pushes.request(request, max_body=MAX_ANSWER_BYTES)
        except TimeoutError:
            return Outcome.retry("push service timed out")
        except EgressRefused:
            # The name passed the egress rules; only today's DNS answer points inside. One resolver fault
            # must not disable every device of a push service: try again later (counted as an egress retry).
            return Outcome.retry(EGRESS_REFUSED_AT_CONNECT)
        except WireError as exc:
            return Outcome.retry(f"connection to push service failed: {type(exc).__name__}")
        return classify(answer.status, answer.headers, truncated)

    def close(self) -> None:
        self.pushes.close()
