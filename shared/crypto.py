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
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Text, Update, bindparam, select, type_coerce, update
from sqlalchemy.orm import Session
from sqlalchemy.schema import Column, Table
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


class EncryptedText(TypeDecorator):
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


# -- rotation ------------------------------------------------------------------------


@dataclass
class RotationReport:
    """What :func:`rotate` changed: per ``table.column``, and device token hashes."""

    reencrypted: dict[str, int] = field(default_factory=dict)  # moved to the primary key
    encrypted_plaintext: dict[str, int] = field(default_factory=dict)  # written before encryption at rest
    unchanged: dict[str, int] = field(default_factory=dict)  # already under the primary key
    rehashed_devices: int = 0
    duplicate_devices_disabled: int = 0


def looks_encrypted(value: str) -> bool:
    """Whether a stored value has the shape of a Fernet token (a plaintext token, PEM or JSON never has)."""
    try:
        raw = base64.b64decode(value.encode("ascii"), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return False
    return len(raw) >= _MIN_FERNET_BYTES and raw[0] == _FERNET_VERSION


def encrypted_columns() -> dict[Table, list[Column]]:
    """Every table of the schema with its EncryptedText columns."""
    from shared.models import Base

    found: dict[Table, list[Column]] = {}
    for table in Base.metadata.sorted_tables:
        columns = [column for column in table.columns if isinstance(column.type, EncryptedText)]
        if columns:
            found[table] = columns
    return found


def rotate(session: Session, batch_size: int = 500) -> RotationReport:
    """Re-encrypt every encrypted column with the primary key, then re-hash device tokens.

    Rows are read raw (bypassing :class:`EncryptedText`), locked and rewritten in
    batches, each committed on its own: safe while the service runs (every value
    stays readable with the configured keys throughout) and safe to run again
    (values already under the primary key are skipped). Values written before
    encryption at rest existed are encrypted; devices whose ``token_hash`` is not
    the HMAC with the current PUSHQ_TOKEN_HASH_KEY are re-hashed.
    """
    ring = keyring()
    report = RotationReport()
    for table, columns in encrypted_columns().items():
        for column in columns:
            name = f"{table.name}.{column.name}"
            report.reencrypted[name] = report.encrypted_plaintext[name] = report.unchanged[name] = 0
        statement = _raw_update(table, columns)
        for rows in _batches(session, table, columns, batch_size):
            changes = []
            for row_id, *values in rows:
                new_values: dict[str, Any] = {}
                changed = False
                for column, value in zip(columns, values):
                    name = f"{table.name}.{column.name}"
                    new_values[f"new_{column.name}"] = value
                    if value is None:
                        continue
                    if looks_encrypted(value):
                        if ring.is_primary(value):
                            report.unchanged[name] += 1
                            continue
                        new_values[f"new_{column.name}"] = ring.rotate(value)
                        report.reencrypted[name] += 1
                    else:
                        new_values[f"new_{column.name}"] = ring.encrypt(value)
                        report.encrypted_plaintext[name] += 1
                    changed = True
                if changed:
                    changes.append({"row_id": row_id, **new_values})
            if changes:
                session.execute(statement, changes)
            session.commit()
    _rehash_device_tokens(session, ring, batch_size, report)
    return report


def _primary_key(table: Table) -> Column:
    (pk,) = table.primary_key.columns  # every table with secrets has a single-column id
    return pk


def _batches(session: Session, table: Table, columns: list[Column], batch_size: int) -> Iterator[list[Any]]:
    """Rows ``(id, raw values...)`` in primary key order, a locked batch at a time."""
    pk = _primary_key(table)
    raw = [type_coerce(column, Text).label(column.name) for column in columns]
    last = None
    while True:
        query = select(pk, *raw).order_by(pk).limit(batch_size).with_for_update()
        if last is not None:
            query = query.where(pk > last)
        rows = session.execute(query).all()
        if not rows:
            return
        last = rows[-1][0]
        yield rows


def _raw_update(table: Table, columns: list[Column]) -> Update:
    """UPDATE writing already-encrypted values as they are (typed Text, not EncryptedText)."""
    pk = _primary_key(table)
    return (
        update(table)
        .where(pk == bindparam("row_id"))
        .values({column.name: bindparam(f"new_{column.name}", type_=Text) for column in columns})
    )


def _rehash_device_tokens(session: Session, ring: Keyring, batch_size: int, report: RotationReport) -> None:
    """Give every device the token hash of the current key (a new PUSHQ_TOKEN_HASH_KEY, or the
    unkeyed hashes of before). A device re-registered meanwhile under the new hash already has a
    row: the stale duplicate is disabled instead, so the user is never pushed twice."""
    from shared.models import Device, utcnow
    from shared.tokens import device_token_hash

    table = Device.__table__
    pk = table.c.id
    last = None
    while True:
        query = (
            select(pk, table.c.app_id, table.c.platform, table.c.token, table.c.token_hash, table.c.disabled_at)
            .order_by(pk)
            .limit(batch_size)
            .with_for_update()
        )
        if last is not None:
            query = query.where(pk > last)
        rows = session.execute(query).all()
        if not rows:
            return
        last = rows[-1][0]
        for device_id, app_id, platform, token, current, disabled_at in rows:
            wanted = device_token_hash(platform, token)
            if hmac.compare_digest(wanted, current):
                continue
            taken = session.execute(
                select(pk).where(table.c.app_id == app_id, table.c.token_hash == wanted, pk != device_id)
            ).first()
            if taken is None:
                session.execute(update(table).where(pk == device_id).values(token_hash=wanted))
                report.rehashed_devices += 1
            elif disabled_at is None:
                session.execute(
                    update(table)
                    .where(pk == device_id)
                    .values(disabled_at=utcnow(), disabled_reason="duplicate of a device registered since")
                )
                report.duplicate_devices_disabled += 1
        session.commit()
