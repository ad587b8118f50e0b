"""Idempotent sends: the first successful response to an ``Idempotency-Key`` is replayed for a day.

The key's row is inserted in the same transaction as the notifications. A
second request with the same key blocks on that insert (the unique key) until
the first commits, then reads its stored response; if the first rolled back,
the second simply proceeds. So two racing requests send once.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from shared.db import rows_affected
from shared.db_upsert import insert_ignore
from shared.errors import ServiceError
from shared.message import compact_json
from shared.models import IdempotencyKey

MAX_KEY_LENGTH = 255


class IdempotencyKeyReused(ServiceError):
    status, code, message = 422, "idempotency_key_reused", "Idempotency-Key was used with a different request"


class IdempotencyKeyInProgress(ServiceError):
    status, code, message = 409, "idempotency_key_in_progress", "A request with this Idempotency-Key is still in progress"


class InvalidIdempotencyKey(ServiceError):
    status, code, message = 400, "invalid_idempotency_key", "Idempotency-Key must be 1-255 printable ASCII characters"


@dataclass(frozen=True)
class StoredResponse:
    status_code: int
    body: dict[str, Any]


def request_fingerprint(method: str, path: str, body: Any) -> str:
    return hashlib.sha256(compact_json([method, path, body], sort_keys=True)).hexdigest()


def begin(
    session: Session, app_id: uuid.UUID, key: str, fingerprint: str, now: datetime, ttl_seconds: int
) -> StoredResponse | None:
    """Claim ``key`` for this request, or return the response it already produced.

    Raises IdempotencyKeyReused when the key was used for a different request.
    """
    if not key or len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise InvalidIdempotencyKey()
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.app_id == app_id,
            IdempotencyKey.key == key,
            IdempotencyKey.created_at < now - timedelta(seconds=ttl_seconds),
        )
    )
    row = {"app_id": app_id, "key": key, "request_hash": fingerprint, "created_at": now}
    inserted = rows_affected(session.execute(insert_ignore(session, IdempotencyKey, [row], ["app_id", "key"])))
    if inserted:
        return None
    existing = session.scalars(
        select(IdempotencyKey).where(IdempotencyKey.app_id == app_id, IdempotencyKey.key == key)
    ).one()
    if existing.request_hash != fingerprint:
        raise IdempotencyKeyReused()
    if existing.status_code is None or existing.response is None:
        # Committed before its response (POST /v1/push/send commits, then waits on the workers).
        raise IdempotencyKeyInProgress()
    return StoredResponse(existing.status_code, existing.response)


def finish(session: Session, app_id: uuid.UUID, key: str, status_code: int, body: dict[str, Any]) -> None:
    """Store the response to replay; committed with the request's own work."""
    session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.app_id == app_id, IdempotencyKey.key == key)
        .values(status_code=status_code, response=body)
    )


def purge_expired(session: Session, now: datetime, ttl_seconds: int) -> int:
    """Delete keys past their replay window (run by the scheduler's sweep)."""
    result = session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < now - timedelta(seconds=ttl_seconds)))
    return rows_affected(result)
