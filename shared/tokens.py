"""Push token validation, canonical form and the hash devices are deduplicated on."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from typing import Any

from shared import crypto
from shared.egress import EndpointRefused, check_push_endpoint
from shared.errors import InvalidPushToken
from shared.models import Platform
from shared.platforms import APNS_TOKEN, FCM_TOKEN

MAX_ENDPOINT_LENGTH = 2048


def b64url_decode(value: str) -> bytes:
    """Decode unpadded URL-safe base64, the encoding of Web Push keys."""
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def canonical_token(
    platform: str, push_token: str, *, allow_http: bool = False, extra_hosts: Iterable[str] = ()
) -> tuple[str, str]:
    """Validate ``push_token`` for ``platform``; return (canonical token, token hash).

    For Web Push the token is the browser's PushSubscription JSON and the hash is
    taken over the endpoint alone: the endpoint names the subscription, so a
    re-registration with refreshed keys updates the same device. The hash is the
    HMAC with PUSHQ_TOKEN_HASH_KEY (:func:`shared.crypto.token_hash`): the token
    itself is only ever stored encrypted.

    A Web Push endpoint must pass the egress rules (:func:`shared.egress.check_push_endpoint`:
    an allowlisted push service over https, or with ``allow_http`` = PUSHQ_ALLOW_HTTP_ENDPOINTS
    http to loopback; ``extra_hosts`` = PUSHQ_WEBPUSH_EXTRA_HOSTS), since the workers will POST to it.
    """
    if platform == Platform.WEB.value:
        subscription = parse_subscription(push_token, allow_http=allow_http, extra_hosts=extra_hosts)
        canonical = json.dumps(subscription, separators=(",", ":"), sort_keys=True)
        return canonical, crypto.token_hash(subscription["endpoint"])
    if platform == Platform.IOS.value:
        if not APNS_TOKEN.fullmatch(push_token):
            raise InvalidPushToken(reason="an APNs device token is 64 or more hex characters")
        token = push_token.lower()
        return token, crypto.token_hash(token)
    if platform == Platform.ANDROID.value:
        if not FCM_TOKEN.fullmatch(push_token):
            raise InvalidPushToken(reason="not an FCM registration token")
        return push_token, crypto.token_hash(push_token)
    raise InvalidPushToken(reason=f"unknown platform {platform!r}")


def parse_subscription(
    push_token: str, *, allow_http: bool = False, extra_hosts: Iterable[str] = ()
) -> dict[str, Any]:
    """Validate a Web Push subscription (``JSON.stringify(pushSubscription)``) and its endpoint's egress rules."""
    try:
        raw = json.loads(push_token)
    except (ValueError, TypeError):
        raise InvalidPushToken(reason="a web push_token is the PushSubscription as JSON") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("endpoint"), str) or not isinstance(raw.get("keys"), dict):
        raise InvalidPushToken(reason="subscription needs endpoint and keys")
    endpoint = raw["endpoint"]
    if len(endpoint) > MAX_ENDPOINT_LENGTH:
        raise InvalidPushToken(reason=f"endpoint is longer than {MAX_ENDPOINT_LENGTH} characters")
    try:
        check_push_endpoint(endpoint, allow_http_loopback=allow_http, extra_hosts=extra_hosts)
    except EndpointRefused as refused:
        raise InvalidPushToken(reason=refused.reason) from None
    keys = raw["keys"]
    p256dh, auth = keys.get("p256dh"), keys.get("auth")
    try:
        point = b64url_decode(p256dh) if isinstance(p256dh, str) else b""
        secret = b64url_decode(auth) if isinstance(auth, str) else b""
    except (binascii.Error, ValueError):
        raise InvalidPushToken(reason="keys must be URL-safe base64") from None
    if len(point) != 65 or point[0] != 4:
        raise InvalidPushToken(reason="keys.p256dh must be an uncompressed P-256 point")
    if len(secret) != 16:
        raise InvalidPushToken(reason="keys.auth must be 16 bytes")
    return {"endpoint": endpoint, "keys": {"p256dh": p256dh, "auth": auth}}


def device_token_hash(platform: str, token: str) -> str:
    """The hash of a stored (canonical) token, as :func:`canonical_token` computes it."""
    if platform == Platform.WEB.value:
        return crypto.token_hash(json.loads(token)["endpoint"])
    return crypto.token_hash(token)
