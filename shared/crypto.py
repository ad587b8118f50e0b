"""Secrets at rest: push tokens and vendor credentials are stored encrypted.

One keyring per process, configured once at startup from Settings
(:func:`configure`): the API factory, the worker runtime and the CLI do it.

* ``PUSHQ_ENCRYPTION_KEYS``: Fernet keys (AES-128-CBC + HMAC-SHA256, random IV),
  comma-separated. The first encrypts, every one decrypts
  (:class:`cryptography.fernet.MultiFernet`), so a key is rotated by putting a new
  one first, running :func:`rotate` (``pushq rotate-keys``), then dropping the old.
* ``PUSHQ_TOKEN_HASH_KEY``: the HMAC-SHA256 key of :func:`token_hash`, the lookup
  value devices are deduplicated on, so a token is never stored in clear (and an
  unkeyed hash of a guessable token would be as good as the token).

Columns typed :class:`EncryptedText` are encrypted on the way into the database
and decrypted on the way out; the schema sees plain ``Text``. Fernet is
randomized: an encrypted column can never be compared in SQL, look rows up by
their keyed hash instead.

Nothing here ever puts a key, a plaintext or a ciphertext into an exception
message or a log line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Text
from sqlalchemy.types import TypeDecorator

from shared.config import ConfigError, Settings

MIN_TOKEN_HASH_KEY_BYTES = 32
GENERATE_KEY_HINT = (
    "generate one with: python -c \"from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())\""
)
# A Fernet token is url-safe base64 of version byte 0x80, an 8-byte timestamp, a
# 16-byte IV, at least one 16-byte AES block and a 32-byte HMAC.
_FERNET_VERSION = 0x80
_MIN_FERNET_BYTES = 1 + 8 + 16 + 16 + 32


class UndecryptableValue(ConfigError):
    """A stored value none of the configured keys decrypts (a key it needs was removed)."""


class Keyring:
    """The Fernet keys and the token hash key of this process."""

    def __init__(self, encryption_keys: Sequence[str], token_hash_key: str | None) -> None:
        if not encryption_keys:
            raise ConfigError(
                "PUSHQ_ENCRYPTION_KEYS is not set: push tokens and vendor credentials are encrypted at rest "
                f"and need at least one Fernet key; {GENERATE_KEY_HINT}"
            )
        fernets = []
        for position, key in enumerate(encryption_keys, start=1):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError, binascii.Error):
                # Never echo the key: it may be a real key with a typo.
                raise ConfigError(
                    f"PUSHQ_ENCRYPTION_KEYS: key {position} of {len(encryption_keys)} is not a Fernet key "
                    f"(32 url-safe base64-encoded bytes); {GENERATE_KEY_HINT}"
                ) from None
        if not token_hash_key:
            raise ConfigError(
                "PUSHQ_TOKEN_HASH_KEY is not set: devices are looked up by an HMAC of their token "
                f"and need a secret key of at least {MIN_TOKEN_HASH_KEY_BYTES} bytes "
                "(e.g. python -c \"import secrets; print(secrets.token_urlsafe(32))\")"
            )
        if len(token_hash_key.encode()) < MIN_TOKEN_HASH_KEY_BYTES:
            raise ConfigError(f"PUSHQ_TOKEN_HASH_KEY must be at least {MIN_TOKEN_HASH_KEY_BYTES} bytes")
        self._primary = fernets[0]
        self._fernet = MultiFernet(fernets)
        self._hash_key = token_hash_key.encode()
        self.key_count = len(fernets)

    def __repr__(self) -> str:
        return f"<Keyring {self.key_count} encryption key(s)>"

    def encrypt(self, value: str) -> str:
        return self._fernet.encrypt(value.encode("utf-8")).decode("ascii")

    def decrypt(self, value: str) -> str:
        try:
            return self._fernet.decrypt(value.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeEncodeError):
            raise UndecryptableValue(
                "a value stored encrypted cannot be decrypted with any key in PUSHQ_ENCRYPTION_KEYS "
                "(keep the key it was written with in the list until `pushq rotate-keys` has run)"
            ) from None

    def is_primary(self, value: str) -> bool:
        """Whether ``value`` is already encrypted with the first (current) key."""
        try:
            self._primary.decrypt(value.encode("ascii"))
        except (InvalidToken, UnicodeEncodeError):
            return False
        return True

    def rotate(self, value: str) -> str:
        """``value`` re-encrypted with the first key (it may be encrypted with any configured key)."""
        try:
            return self._fernet.rotate(value.encode("ascii")).decode("ascii")
        except (InvalidToken, UnicodeEncodeError):
            raise UndecryptableValue(
                "a stored value cannot be decrypted with any key in PUSHQ_ENCRYPTION_KEYS; "
                "add the key it was written with (after the new one) and run rotate-keys again"
            ) from None

    def token_hash(self, value: str) -> str:
        return hmac.new(self._hash_key, value.encode("utf-8"), hashlib.sha256).hexdigest()


_keyring: Keyring | None = None


def configure(settings: Settings) -> Keyring:
    """Install the process-wide keyring from ``settings``; ConfigError if the keys are missing or malformed."""
    global _keyring
    _keyring = Keyring(settings.encryption_keys, settings.token_hash_key)
    return _keyring


def keyring() -> Keyring:
    if _keyring is None:
        raise ConfigError(
            "encryption at rest is not configured in this process: call shared.crypto.configure(settings) "
            "at startup (PUSHQ_ENCRYPTION_KEYS, PUSHQ_TOKEN_HASH_KEY)"
        )
    return _keyring


def encrypt(value: str) -> str:
    """``value`` encrypted with the primary key (a Fernet token, ASCII)."""
    return keyring().encrypt(value)


def decrypt(value: str) -> str:
    """The plaintext of a value :func:`encrypt` produced with any configured key."""
    return keyring().decrypt(value)


def token_hash(value: str) -> str:
    """Hex HMAC-SHA256 of ``value`` with PUSHQ_TOKEN_HASH_KEY (64 characters)."""
    return keyring().token_hash(value)


class EncryptedText(TypeDecorator[str]):
    """Text stored encrypted with the process keyring; the database column is plain TEXT.

    Never compare such a column in SQL (every encryption differs); look rows up
    by a keyed hash stored next to it.
    """

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise TypeError(f"EncryptedText stores str, not {type(value).__name__}")
        return encrypt(value)

    def process_result_value(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else decrypt(value)


def looks_encrypted(value: str) -> bool:
    """Whether a stored value has the shape of a Fernet token (a plaintext token, PEM or JSON never has)."""
    try:
        raw = base64.b64decode(value.encode("ascii"), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return False
    return len(raw) >= _MIN_FERNET_BYTES and raw[0] == _FERNET_VERSION
