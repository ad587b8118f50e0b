"""What each push platform accepts, in one place: token shapes and payload size limits.

Registration checks tokens against these shapes; the API refuses a send some platform
it targets could not carry, and each adapter fits its payload to its own limit, both
through the payload builders of :mod:`shared.vendor_payloads`.
"""

from __future__ import annotations

import re

# APNs device tokens: 64 hex characters today; Apple allows longer ones to come.
APNS_TOKEN = re.compile(r"[0-9a-fA-F]{64,200}")
# FCM registration tokens: URL-safe characters and colons.
FCM_TOKEN = re.compile(r"[A-Za-z0-9_:\-]{32,4096}")

# Web Push: push services may refuse bodies over 4096 bytes; aes128gcm adds an 86-byte
# header, 1 delimiter byte and a 16-byte tag, which leaves 3993 bytes of plaintext.
WEBPUSH_MAX_PLAINTEXT_BYTES = 4096 - 86 - 1 - 16
APNS_MAX_PAYLOAD_BYTES = 4096  # the JSON payload
FCM_MAX_MESSAGE_BYTES = 4096  # the serialized ``message`` object without its target (the token)
