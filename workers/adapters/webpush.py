"""Web Push (RFC 8030/8291/8292) through pywebpush, with pooled connections and cached VAPID."""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from datetime import datetime
from typing import Sequence
from urllib.parse import urlsplit

import requests
from py_vapid import Vapid
from pywebpush import WebPusher, WebPushException
from requests.adapters import HTTPAdapter

from shared.delivery import ClaimedDelivery
from shared.outcomes import Outcome
from shared.payloads import PayloadTooLarge, fit_body
from workers.adapters.base import AppCredentials, parse_retry_after

log = logging.getLogger(__name__)

# aes128gcm adds an 86-byte header, 1 delimiter byte and a 16-byte tag; push
# services may refuse bodies over 4096 bytes, so plaintext must stay within 3993.
MAX_PLAINTEXT_BYTES = 4096 - 86 - 1 - 16
VAPID_LIFETIME_SECONDS = 12 * 3600
VAPID_RENEW_BEFORE_SECONDS = 3600


def webpush_payload(delivery: ClaimedDelivery, body: str | None = None) -> bytes:
    """The JSON a service worker receives in its push event (``url`` to open on click)."""
    payload = {"title": delivery.title, "body": delivery.body if body is None else body, "data": delivery.data}
    if delivery.url:
        payload["url"] = delivery.url
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class VapidHeaders:
    """One signed VAPID header per (app key, push service origin), reused until near expiry.

    Signing costs tens of microseconds per push otherwise; a header is valid for
    every endpoint on its origin.
    """

    def __init__(self) -> None:
        self._keys: dict[str, Vapid] = {}
        self._headers: dict[tuple[str, str], tuple[str, float]] = {}

    def authorization(self, app: AppCredentials, endpoint: str, now: float) -> str:
        parts = urlsplit(endpoint)
        origin = f"{parts.scheme}://{parts.netloc}"
        cache_key = (app.vapid_public_key, origin)
        cached = self._headers.get(cache_key)
        if cached and cached[1] - VAPID_RENEW_BEFORE_SECONDS > now:
            return cached[0]
        vapid = self._keys.get(app.vapid_public_key)
        if vapid is None:
            vapid = self._keys[app.vapid_public_key] = Vapid.from_pem(app.vapid_private_key.encode())
        expires = int(now) + VAPID_LIFETIME_SECONDS
        # A fresh claims dict each time: py_vapid and pywebpush write into it.
        header = vapid.sign({"sub": app.vapid_subject, "aud": origin, "exp": expires})["Authorization"]
        self._headers[cache_key] = (header, expires)
        return header


class WebPushAdapter:
    platform = "web"

    def __init__(self, connect_timeout: float = 5.0, read_timeout: float = 10.0, pool_size: int = 32) -> None:
        self.timeout = (connect_timeout, read_timeout)
        self.session = requests.Session()
        # With trust_env, requests scans all of os.environ for proxy settings on every push
        # (a third of a push's CPU). Without proxies configured, read the CA bundle once instead;
        # with proxies, keep requests' full handling (NO_PROXY included).
        if not any(urllib.request.getproxies().get(scheme) for scheme in ("http", "https")):
            self.session.trust_env = False
            self.session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        # Keep-alive pool per push service host: one TLS handshake serves many pushes.
        self.session.mount("https://", HTTPAdapter(pool_connections=16, pool_maxsize=pool_size))
        self.session.mount("http://", HTTPAdapter(pool_connections=16, pool_maxsize=pool_size))
        self.vapid = VapidHeaders()

    def send_many(self, app: AppCredentials, deliveries: Sequence[ClaimedDelivery], now: datetime) -> list[Outcome]:
        return [self.send(app, delivery, now) for delivery in deliveries]

    def send(self, app: AppCredentials, delivery: ClaimedDelivery, now: datetime) -> Outcome:
        try:
            payload, truncated = fit_body(lambda body: webpush_payload(delivery, body), delivery.body, MAX_PLAINTEXT_BYTES)
        except PayloadTooLarge as exc:
            return Outcome.rejected(f"payload too large for Web Push: {exc}")
        try:
            subscription = json.loads(delivery.token)
            pusher = WebPusher(subscription, requests_session=self.session)
            headers = {
                "Authorization": self.vapid.authorization(app, subscription["endpoint"], now.timestamp()),
                "Urgency": "high" if delivery.priority == "high" else "normal",
            }
            if delivery.collapse_key:
                headers["Topic"] = delivery.collapse_key
            response = pusher.send(
                data=payload, headers=headers, ttl=delivery.remaining_ttl(now), timeout=self.timeout
            )
        except requests.Timeout:
            return Outcome.retry("push service timed out")
        except requests.ConnectionError as exc:
            return Outcome.retry(f"connection to push service failed: {type(exc).__name__}")
        except (WebPushException, ValueError, KeyError) as exc:
            return Outcome.rejected(f"cannot encode for this subscription: {exc}")
        return self.outcome(response, truncated)

    @staticmethod
    def outcome(response: requests.Response, truncated: bool = False) -> Outcome:
        status = response.status_code
        if status in (200, 201, 202):
            return Outcome.sent(response.headers.get("Location"), truncated)
        reason = f"push service answered {status}"
        if status in (404, 410):
            return Outcome.dead_token(f"{reason}: subscription gone")
        if status == 413:
            return Outcome.rejected(f"{reason}: payload too large")
        if status == 429 or status >= 500:
            return Outcome.retry(reason, parse_retry_after(response.headers.get("Retry-After")))
        return Outcome.rejected(reason)

    def close(self) -> None:
        self.session.close()
