"""Key rotation: re-encrypt every secret at rest with the primary key, re-hash device tokens.

Run by ``pushq rotate-keys`` while the service runs. Kept out of :mod:`shared.crypto`
(which only encrypts, decrypts and hashes, and imports nothing of the domain) so the
schema can use the crypto type without an import cycle.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Text, Update, bindparam, select, type_coerce, update
from sqlalchemy.orm import Session
from sqlalchemy.schema import Column, Table

from shared import crypto
from shared.clock import utcnow
from shared.models import Base, Device
from shared.tokens import device_token_hash


@dataclass
class RotationReport:
    """What :func:`rotate` changed: per ``table.column``, and device token hashes."""

    reencrypted: dict[str, int] = field(default_factory=dict)  # moved to the primary key
    encrypted_plaintext: dict[str, int] = field(default_factory=dict)  # written before encryption at rest
    unchanged: dict[str, int] = field(default_factory=dict)  # already under the primary key
    rehashed_devices: int = 0
    duplicate_devices_disabled: int = 0


def encrypted_columns() -> dict[Table, list[Column[Any]]]:
    """Every table of the schema with its EncryptedText columns."""
    found: dict[Table, list[Column[Any]]] = {}
    for table in Base.metadata.sorted_tables:
        columns = [column for column in table.columns if isinstance(column.type, crypto.EncryptedText)]
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
    ring = crypto.keyring()
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
                    if crypto.looks_encrypted(value):
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


def _primary_key(table: Table) -> Column[Any]:
    (pk,) = table.primary_key.columns  # every table with secrets has a single-column id
    return pk


def _batches(session: Session, table: Table, columns: list[Column[Any]], batch_size: int) -> Iterator[Sequence[Any]]:
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


def _raw_update(table: Table, columns: list[Column[Any]]) -> Update:
    """UPDATE writing already-encrypted values as they are (typed Text, not EncryptedText)."""
    pk = _primary_key(table)
    return (
        update(table)
        .where(pk == bindparam("row_id"))
        .values({column.name: bindparam(f"new_{column.name}", type_=Text) for column in columns})
    )


def _rehash_device_tokens(session: Session, ring: crypto.Keyring, batch_size: int, report: RotationReport) -> None:
    """Give every device the token hash of the current key (a new PUSHQ_TOKEN_HASH_KEY, or the
    unkeyed hashes of before). A device re-registered meanwhile under the new hash already has a
    row: the stale duplicate is disabled instead, so the user is never pushed twice."""
    table = cast(Table, Device.__table__)
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
