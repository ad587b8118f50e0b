"""Each vendor's payload, built in one place: the adapters send these bytes, the API measures them at accept.

A send is accepted only if every platform it targets can carry it: the API
builds the same document the adapter will build, with the body cut as far as
the truncation rule lets it (:mod:`shared.payloads`: only the body is cut, to a
prefix and "…"), and measures it against that vendor's limit
(:mod:`shared.platforms`). Since both sides call the functions below, the check
cannot drift from what is sent.

* Web Push: the JSON the service worker reads (title, body, data, url), at most
  3993 bytes of plaintext before aes128gcm.
* APNs: ``aps`` (alert, badge, sound) plus ``data`` and ``url``, at most 4096 bytes.
* FCM: the HTTP v1 ``message`` without its target (the device token): the
  notification, the data map (every value a string: FCM v1 accepts only string
  values) and the android options, at most 4096 bytes. FCM counts the payload it
  delivers, not the registration token, so a token's length never decides
  whether a message fits. Some data keys are FCM's own and refused
  (:data:`FCM_RESERVED_KEYS`, :data:`FCM_RESERVED_PREFIXES`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.message import Message, compact_json
from shared.message_options import merge
from shared.payloads import ELLIPSIS, PayloadTooLarge, fit_body
from shared.platforms import ANDROID as ANDROID_PLATFORM
from shared.platforms import IOS as IOS_PLATFORM
from shared.platforms import PLATFORM_NAMES
from shared.platforms import PLATFORMS as PLATFORM_SPECS
from shared.platforms import WEB as WEB_PLATFORM

WEB, IOS, ANDROID = WEB_PLATFORM.name, IOS_PLATFORM.name, ANDROID_PLATFORM.name  # the registry's (shared.platforms)
PLATFORMS = PLATFORM_NAMES
VENDORS = {name: spec.vendor for name, spec in PLATFORM_SPECS.items()}
LIMITS = {name: spec.max_payload_bytes for name, spec in PLATFORM_SPECS.items()}
FCM_MAX_TTL_SECONDS = 28 * 24 * 3600  # FCM's android.ttl range is 0-28 days

# FCM data keys that are FCM's own (HTTP v1 reference: "from", "message_type", or any word starting
# with "google" or "gcm"; the legacy API also took "collapse_key" from the data): FCM refuses the message.
FCM_RESERVED_KEYS = frozenset({"from", "message_type", "collapse_key"})
FCM_RESERVED_PREFIXES = ("google", "gcm")


# -- Web Push --------------------------------------------------------------------------------


class NotDeliverable(Exception):
    """This platform cannot carry this kind of message at all (a silent push to a browser)."""


SILENT_WEB = ("silent push not sent to a browser: browsers show a notification for every push "
              "(silent pushes reach iOS and Android devices only)")
# interruption_level -> Web Push Urgency (RFC 8030 5.3); without one, priority decides (high / normal).
WEBPUSH_URGENCY = {"passive": "low", "active": "normal", "time-sensitive": "high", "critical": "high"}


def webpush_document(message: Message, body: str | None = None) -> dict[str, Any]:
    """What the service worker reads: title, body, data, url, and what it passes to ``showNotification``.

    ``image``, ``tag`` (the group), ``renotify``, ``actions`` (``action``, ``title``
    and the ``url`` that button opens) and the allowlisted ``webpush`` override keys
    (``icon``, ``badge``, ``dir``, ``lang``, ``requireInteraction``, ``silent``,
    ``vibrate``, ``timestamp``) sit beside title and body.
    """
    options = message.options
    if options.silent:
        raise NotDeliverable(SILENT_WEB)
    document = message.payload(body)
    if options.image:
        document["image"] = options.image
    if options.group:
        document["tag"] = options.group
        if options.renotify:
            document["renotify"] = True
    if options.actions:
        document["actions"] = [{"action": a.id, "title": a.title, **({"url": a.url} if a.url else {})}
                               for a in options.actions]
    return merge(document, options.webpush)


def webpush_payload(message: Message, body: str | None = None) -> bytes:
    """The JSON a service worker receives in its push event (``url`` to open on click)."""
    return compact_json(webpush_document(message, body))


def webpush_urgency(message: Message) -> str:
    """The ``Urgency`` header: from the interruption level when given, else from the priority."""
    level = message.options.interruption_level
    if level:
        return WEBPUSH_URGENCY[level]
    return "high" if message.priority == "high" else "normal"


# -- APNs ------------------------------------------------------------------------------------


def apns_message(content: Message, body: str | None = None) -> dict[str, Any]:
    """The APNs payload: ``aps`` for the system, ``data`` and ``url`` (and ``image``) for the app.

    A silent push is ``aps: {content-available: 1}`` alone (Apple refuses a
    background push with an alert, sound or badge). An image sets
    ``mutable-content`` so the app's notification service extension can fetch the
    top-level ``image`` URL. The ``apns`` override is merged last (allowlisted keys
    of ``aps`` and ``aps.alert`` only).
    """
    options = content.options
    if options.silent:
        message: dict[str, Any] = {"aps": {"content-available": 1}}
    else:
        alert: dict[str, Any] = {"title": content.title, "body": content.body if body is None else body}
        if options.title_loc_key:
            alert["title-loc-key"] = options.title_loc_key
            if options.title_loc_args:
                alert["title-loc-args"] = list(options.title_loc_args)
        if options.body_loc_key:
            alert["loc-key"] = options.body_loc_key
            if options.body_loc_args:
                alert["loc-args"] = list(options.body_loc_args)
        aps: dict[str, Any] = {"alert": alert}
        if content.badge is not None:
            aps["badge"] = content.badge
        if options.interruption_level == "critical":  # a critical alert plays its sound through mute
            aps["sound"] = {"critical": 1, "name": content.sound or "default", "volume": 1.0}
        elif content.sound is not None:
            aps["sound"] = content.sound
        for key, value in (("interruption-level", options.interruption_level),
                           ("relevance-score", options.relevance_score), ("thread-id", options.group),
                           ("category", options.category), ("mutable-content", 1 if options.image else None)):
            if value is not None:
                aps[key] = value
        message = {"aps": aps}
    if content.data:
        message["data"] = content.data
    if content.url:
        message["url"] = content.url
    if options.image and not options.silent:
        message["image"] = options.image
    return merge(message, options.apns)


def apns_push_type(content: Message) -> str:
    """The ``apns-push-type`` header: ``background`` for a silent push, else ``alert``."""
    return "background" if content.options.silent else "alert"


def apns_priority(content: Message) -> int:
    """The ``apns-priority`` header: 10 for a high-priority alert; 5 otherwise (Apple requires 5 for background)."""
    return 10 if content.priority == "high" and not content.options.silent else 5


def apns_payload(content: Message, body: str | None = None) -> bytes:
    """The exact bytes sent to APNs: compact UTF-8 JSON of :func:`apns_message`."""
    return compact_json(apns_message(content, body))


# -- FCM -------------------------------------------------------------------------------------


def fcm_data(message: Message) -> dict[str, str]:
    """The message's ``data`` map: FCM only accepts string values.

    String values are kept as they are; every other value (numbers, booleans,
    null, lists, objects) is JSON-encoded, so ``1`` arrives as ``"1"``, ``True``
    as ``"true"``, ``None`` as ``"null"`` and ``{"a": [1]}`` as ``'{"a":[1]}'``;
    the app decodes them with a JSON parser. Keys are made strings. When the
    notification has a ``url`` it is added as ``data["url"]`` (replacing a
    ``url`` key in the data).
    """
    data = {
        str(key): value if isinstance(value, str) else compact_json(value).decode("utf-8")
        for key, value in (message.data or {}).items()
    }
    if message.url:
        data["url"] = message.url
    return data


def fcm_reserved_keys(data: Iterable[str]) -> list[str]:
    """The keys of ``data`` FCM keeps for itself (it refuses a message carrying one)."""
    return [key for key in data if key in FCM_RESERVED_KEYS or key.startswith(FCM_RESERVED_PREFIXES)]


# interruption_level -> FCM android.notification.notification_priority
FCM_NOTIFICATION_PRIORITY = {"passive": "PRIORITY_LOW", "active": "PRIORITY_DEFAULT",
                             "time-sensitive": "PRIORITY_HIGH", "critical": "PRIORITY_MAX"}


def fcm_message(content: Message, now: datetime, body: str | None = None) -> dict[str, Any]:
    """The HTTP v1 ``message`` object without its target: what FCM counts against its limit.

    ``android.ttl`` is the TTL left at ``now``; it only shrinks as time passes,
    so a message measured at accept is never smaller than the one pushed later.
    A silent push is a data message: no ``notification`` and no
    ``android.notification``. The ``fcm`` override is merged last (allowlisted keys).
    """
    options = content.options
    android: dict[str, Any] = {
        "ttl": f"{min(content.remaining_ttl(now), FCM_MAX_TTL_SECONDS)}s",
        "priority": "HIGH" if content.priority == "high" else "NORMAL",
    }
    if content.collapse_key:
        android["collapse_key"] = content.collapse_key
    message: dict[str, Any] = {}
    if not options.silent:
        notification: dict[str, Any] = {"title": content.title, "body": content.body if body is None else body}
        if options.image:
            notification["image"] = options.image
        message["notification"] = notification
        android_notification: dict[str, Any] = {}
        for key, value in (
            ("sound", content.sound or None), ("notification_count", content.badge), ("tag", options.group),
            ("click_action", options.category),
            ("notification_priority", FCM_NOTIFICATION_PRIORITY.get(options.interruption_level or "")),
            ("title_loc_key", options.title_loc_key), ("title_loc_args", list(options.title_loc_args) or None),
            ("body_loc_key", options.body_loc_key), ("body_loc_args", list(options.body_loc_args) or None),
        ):
            if value is not None:
                android_notification[key] = value
        if android_notification:
            android["notification"] = android_notification
    message["android"] = android
    data = fcm_data(content)
    if data:
        message["data"] = data
    return merge(message, options.fcm)


def fcm_payload(content: Message, now: datetime, body: str | None = None) -> bytes:
    """Compact JSON of :func:`fcm_message`: the bytes measured against FCM's 4096."""
    return compact_json(fcm_message(content, now, body))


def fcm_with_token(payload: bytes, token: str) -> bytes:
    """The ``message`` sent: the measured ``payload`` object with the device token added as its target."""
    return b'{"token":' + json.dumps(token).encode("ascii") + b"," + payload[1:]


# -- what every platform can carry -----------------------------------------------------------


def builder(platform: str, message: Message, now: datetime | None = None) -> Callable[[str], bytes]:
    """``body -> payload bytes`` for ``platform``, as its adapter builds them (FCM's needs ``now``: android.ttl)."""
    if platform == WEB:
        return lambda body: webpush_payload(message, body)
    if platform == IOS:
        return lambda body: apns_payload(message, body)
    if platform == ANDROID:
        if now is None:
            raise ValueError("an FCM payload holds the TTL left: give the time of the push")
        at = now
        return lambda body: fcm_payload(message, at, body)
    raise ValueError(f"unknown platform {platform!r}")


def fit(platform: str, message: Message, now: datetime | None = None) -> tuple[bytes, bool]:
    """The payload for ``platform`` within its limit, the body cut if needed: (bytes, truncated).

    Raises :class:`shared.payloads.PayloadTooLarge` when even the shortest body does not fit.
    """
    return fit_body(builder(platform, message, now), message.body, LIMITS[platform])


@dataclass(frozen=True)
class Refusal:
    """Why ``platform`` cannot carry a message."""

    platform: str
    reason: str


def refusals(message: Message, platforms: Iterable[str], now: datetime) -> list[Refusal]:
    """For each of ``platforms`` that cannot carry ``message`` whatever the truncation: why not.

    One encoding per platform: the message with the shortest body the adapter
    can end up sending, an ellipsis alone (what the truncation rule reaches), or
    the body itself when that is shorter still; if that fits, the adapter's
    :func:`fit` finds a payload within the limit.
    """
    found = []
    body = message.body if len(message.body) <= len(ELLIPSIS.encode()) and \
        len(compact_json(message.body)) < len(compact_json(ELLIPSIS)) else ELLIPSIS
    for platform in platforms:
        if platform == WEB and message.silent:
            continue  # never pushed to a browser (shared.option_rules: refused when the only target)
        if platform == ANDROID:
            reserved = fcm_reserved_keys(message.data or {})
            if reserved:
                found.append(Refusal(platform, f"{VENDORS[platform]} reserves the data keys {', '.join(sorted(reserved))} "
                                               f"(from, message_type, collapse_key and keys starting with google or gcm)"))
                continue
        limit = LIMITS[platform]
        smallest = len(builder(platform, message, now)(body))
        if smallest > limit:
            found.append(Refusal(platform, f"{VENDORS[platform]} carries at most {limit} bytes and this message takes "
                                           f"{smallest} with its body cut to {body!r} (title, data and url are never cut)"))
    return found


__all__ = [
    "ANDROID",
    "FCM_NOTIFICATION_PRIORITY",
    "FCM_RESERVED_KEYS",
    "FCM_RESERVED_PREFIXES",
    "IOS",
    "LIMITS",
    "PLATFORMS",
    "SILENT_WEB",
    "WEB",
    "WEBPUSH_URGENCY",
    "NotDeliverable",
    "PayloadTooLarge",
    "Refusal",
    "apns_message",
    "apns_payload",
    "apns_priority",
    "apns_push_type",
    "builder",
    "fcm_data",
    "fcm_message",
    "fcm_payload",
    "fcm_reserved_keys",
    "fcm_with_token",
    "fit",
    "refusals",
    "webpush_document",
    "webpush_payload",
    "webpush_urgency",
]
