"""Receipt tokens: what a Web Push payload carries so pushq's service worker can report displayed/clicked.

A token names one delivery and is signed by pushq: ``r1.<delivery id>.<mac>``,
both parts base64url, the MAC the first 16 bytes of HMAC-SHA256 over the
delivery id with the receipt key (``PUSHQ_RECEIPT_KEY``, or one derived from
``PUSHQ_TOKEN_HASH_KEY``). It grants nothing but marking that delivery
displayed or clicked: no user token ever reaches the service worker, a token
cannot be made for another delivery without the key, and it means nothing to
any other system. Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import uuid

PREFIX = "r1"
MAC_BYTES = 16
# ',"receipt":"' + a token (2 + 1 + 22 + 1 + 22 characters) + '"': the room a Web Push payload keeps for it.
TOKEN_CHARS = len(PREFIX) + 1 + 22 + 1 + 22
PAYLOAD_RESERVE_BYTES = len(',"receipt":""') + TOKEN_CHARS
RECEIPT_EVENTS = ("displayed", "clicked")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def derive_key(receipt_key: str | None, token_hash_key: str | None) -> bytes:
    """The receipt key: PUSHQ_RECEIPT_KEY, else one derived from PUSHQ_TOKEN_HASH_KEY (never that key itself)."""
    if receipt_key:
        return receipt_key.encode()
    if not token_hash_key:
        raise ValueError("receipt tokens need PUSHQ_RECEIPT_KEY or PUSHQ_TOKEN_HASH_KEY")
    return hmac.new(token_hash_key.encode(), b"pushq receipt tokens v1", hashlib.sha256).digest()


class ReceiptTokens:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, delivery_id: uuid.UUID) -> bytes:
        return hmac.new(self._key, b"receipt:" + delivery_id.bytes, hashlib.sha256).digest()[:MAC_BYTES]

    def token(self, delivery_id: uuid.UUID) -> str:
        return f"{PREFIX}.{_b64(delivery_id.bytes)}.{_b64(self._mac(delivery_id))}"

    def delivery_id(self, token: str) -> uuid.UUID | None:
        """The delivery a token names, or None when it is not a token pushq signed (constant-time check)."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != PREFIX or len(token) != TOKEN_CHARS:
            return None
        try:
            raw_id = base64.urlsafe_b64decode(parts[1] + "==")
            mac = base64.urlsafe_b64decode(parts[2] + "==")
            delivery_id = uuid.UUID(bytes=raw_id)
        except (ValueError, binascii.Error):
            return None
        return delivery_id if hmac.compare_digest(mac, self._mac(delivery_id)) else None
