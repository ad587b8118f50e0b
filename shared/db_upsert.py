"""Dialect-aware INSERT ... ON CONFLICT, for PostgreSQL (production, tests) and SQLite (make run)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def dialect_insert(session: Session, model: type) -> Any:
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(model)
    if name == "sqlite":
        return sqlite.insert(model)
    raise NotImplementedError(f"unsupported database dialect {name}")


def insert_ignore(session: Session, model: type, rows: list[dict[str, Any]], conflict: Sequence[str]) -> Any:
    """INSERT rows, skipping those that collide on the ``conflict`` columns."""
    return dialect_insert(session, model).values(rows).on_conflict_do_nothing(index_elements=list(conflict))
