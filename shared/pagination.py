"""Keyset pagination: stable pages under concurrent inserts, O(page) per request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None  # the key of the last item, when more follow


def keyset_page(session: Session, query: Select, key: InstrumentedAttribute, limit: int, after: Any = None) -> Page:
    """The ``limit`` rows of ``query`` after key ``after``, ordered by ``key``."""
    query = query.order_by(key).limit(limit + 1)
    if after is not None:
        query = query.where(key > after)
    items = list(session.scalars(query))
    next_cursor = str(getattr(items[limit - 1], key.key)) if len(items) > limit else None
    return Page(items=items[:limit], next_cursor=next_cursor)
