"""The platform registry: every push platform pushq speaks, declared once.

Each :class:`PlatformSpec` says what the rest of pushq needs to know about a
platform: its name (stored on devices and deliveries, accepted by the API), the
vendor behind it (as the status page names it), the Celery queue its deliver
tasks go to, where its adapter is built (a ``module:function`` the workers import,
so this module imports no worker code), its payload limit and its token shape.
The API, the workers, the broker's queues, the stats and the status page all read
:data:`PLATFORMS`; adding a platform is one entry here, one adapter, one factory.

Registration checks tokens against these shapes; the API refuses a send some platform
it targets could not carry, and each adapter fits its payload to its own limit, both
through the payload builders of :mod:`shared.vendor_payloads`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# APNs device tokens: 64 hex characters today; Apple allows longer ones to come.
APNS_TOKEN = re.compile(r"[0-9a-fA-F]{64,200}")
# FCM registration tokens: URL-safe characters and colons.
FCM_TOKEN = re.compile(r"[A-Za-z0-9_:\-]{32,4096}")

# Web Push: push services may refuse bodies over 4096 bytes; aes128gcm adds an 86-byte
# header, 1 delimiter byte and a 16-byte tag, which leaves 3993 bytes of plaintext.
WEBPUSH_MAX_PLAINTEXT_BYTES = 4096 - 86 - 1 - 16
APNS_MAX_PAYLOAD_BYTES = 4096  # the JSON payload
FCM_MAX_MESSAGE_BYTES = 4096  # the serialized ``message`` object without its target (the token)


@dataclass(frozen=True)
class PlatformSpec:
    """One push platform, as every part of pushq sees it."""

    name: str  # devices.platform, deliveries.platform, the API's "platform" (shared.models.Platform's values)
    vendor: str  # the push service behind it, as the status page names it
    queue: str  # the Celery queue of its deliver tasks: operators size a worker pool per vendor
    adapter_factory: str  # "module:function" taking Settings and returning the platform's adapter
    max_payload_bytes: int  # what :mod:`shared.vendor_payloads` fits the payload to
    token_pattern: re.Pattern[str] | None  # the device token's shape; None: a Web Push subscription (JSON)


WEB = PlatformSpec("web", "Web Push", "webpush", "workers.adapter_factories:web_push",
                   WEBPUSH_MAX_PLAINTEXT_BYTES, None)
IOS = PlatformSpec("ios", "APNs", "apns", "workers.adapter_factories:apns", APNS_MAX_PAYLOAD_BYTES, APNS_TOKEN)
ANDROID = PlatformSpec("android", "FCM", "fcm", "workers.adapter_factories:fcm", FCM_MAX_MESSAGE_BYTES, FCM_TOKEN)

#: Every platform, by name, in the order pushq lists them.
PLATFORMS: dict[str, PlatformSpec] = {spec.name: spec for spec in (WEB, IOS, ANDROID)}
PLATFORM_NAMES: tuple[str, ...] = tuple(PLATFORMS)
