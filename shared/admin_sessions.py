"""Status-page login sessions, kept server-side in Redis so that logging out (or a new admin token) ends them.

A session is a random id (256 bits) in the browser's cookie; Redis holds, under
the id's SHA-256 (a copy of the keys leaks no usable cookie), the fingerprint
of the admin token it was opened with, for at most the session's lifetime. A
session is valid while its key exists and its fingerprint is the current
token's: logging out deletes the key, and changing ``PUSHQ_ADMIN_TOKEN`` ends
every session opened under the old token, wherever its cookie was copied.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import redis

_PREFIX = "pushq:admin-session:"
_FINGERPRINT_PURPOSE = b"pushq admin session v2"


def token_fingerprint(token: str) -> str:
    """A value that changes with the admin token and does not reveal it (an HMAC under the token)."""
    return hmac.new(token.encode(), _FINGERPRINT_PURPOSE, hashlib.sha256).hexdigest()


def _key(session_id: str) -> str:
    return _PREFIX + hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()


class AdminSessions:
    """Open, check and end status-page sessions (every API process shares them through Redis)."""

    def __init__(self, client: redis.Redis, lifetime_seconds: int) -> None:
        self._client = client
        self.lifetime_seconds = lifetime_seconds

    def open(self, token: str) -> str:
        """A new session under ``token``; returns its id (the cookie's value)."""
        session_id = secrets.token_urlsafe(32)
        self._client.set(_key(session_id), token_fingerprint(token), ex=self.lifetime_seconds)
        return session_id

    def valid(self, session_id: str, token: str) -> bool:
        """Whether the session exists and was opened under the current ``token``."""
        if not session_id or len(session_id) > 128:
            return False
        stored = self._client.get(_key(session_id))
        if stored is None:
            return False
        stored_bytes = stored.encode() if isinstance(stored, str) else bytes(stored)
        if not hmac.compare_digest(stored_bytes, token_fingerprint(token).encode()):
            self._client.delete(_key(session_id))  # opened under an earlier token: gone for good
            return False
        return True

    def end(self, session_id: str) -> None:
        """Log out: the session stops working everywhere, whoever holds a copy of the cookie."""
        if session_id and len(session_id) <= 128:
            self._client.delete(_key(session_id))
