"""Keyset pagination: stable pages under concurrent inserts, O(page) per request."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None  # the key of the last item, when more follow


def keyset_page(
    session: Session, query: Select[Any], key: InstrumentedAttribute[Any], limit: int, after: Any = None
) -> Page[Any]:
    """The ``limit`` rows of ``query`` after key ``after``, ordered by ``key``."""
    query = query.order_by(key).limit(limit + 1)
    if after is not None:
        query = query.where(key > after)
    items = list(session.scalars(query))
    next_cursor = str(getattr(items[limit - 1], key.key)) if len(items) > limit else None
    return Page(items=items[:limit], next_cursor=next_cursor)


class InvalidCursor(ValueError):
    """A cursor that this API did not hand out."""


def newest_first_page(
    session: Session, query: Select[Any], created: InstrumentedAttribute[Any], key: InstrumentedAttribute[Any], limit: int,
    cursor: str | None = None,
) -> Page[Any]:
    """Rows newest first, keyset-paginated on (created, key); the cursor is opaque to clients."""
    query = query.order_by(created.desc(), key.desc()).limit(limit + 1)
    if cursor is not None:
        try:
            moment_text, _, key_text = base64.urlsafe_b64decode(cursor.encode() + b"==").decode().partition("|")
            moment, last_key = datetime.fromisoformat(moment_text), uuid.UUID(key_text)
        except (ValueError, UnicodeDecodeError):
            raise InvalidCursor(cursor) from None
        query = query.where(tuple_(created, key) < tuple_(moment, last_key))
    items = list(session.scalars(query))
    next_cursor = None
    if len(items) > limit:
        last = items[limit - 1]
        raw = f"{getattr(last, created.key).isoformat()}|{getattr(last, key.key)}"
        next_cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
    return Page(items=items[:limit], next_cursor=next_cursor)
