"""The accept path's one statement on PostgreSQL: insert the notifications of enrolled users.

A send used to cost three statements before its commit (the enrollment check,
the app's quota column, the INSERT), each compiled by the ORM. Here one
statement, built once with SQLAlchemy Core, does all three: the rows travel as
one pre-serialised JSON document (``json_to_recordset``), are joined with
``enrollments`` inside the database (a user not enrolled simply yields no row),
and the statement answers how many rows went in and the app's own daily quota.
Its cost grows with the rows, not with Python objects per row: a bulk's shared
content is serialised once and each row adds only its id and user id.

SQLite (``make run``) keeps the portable path in :mod:`shared.services.sends`.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from shared.message import Message
from shared.models import Notification

# Columns every row carries itself; the Message's columns follow (they differ per row only in a batch).
_ROW_COLUMNS = ("id", "user_id", "status", "send_at")
# JSON as PostgreSQL's json parser reads it: compact; non-ASCII as is (the document is UTF-8 text).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)


def row_columns() -> tuple[str, ...]:
    """The notification columns a row of the document carries, in order."""
    return (*_ROW_COLUMNS, *Message.columns())


_COMMON = ("app_id", "notify_outcomes", "request_id", "created_at", "updated_at")


@functools.cache
def scalar_defaults() -> dict[str, Any]:
    """Columns the statement does not name whose model default is a constant (``truncated``, …), with that value."""
    named = {*row_columns(), *_COMMON}
    return {column.name: column.default.arg for column in Notification.__table__.c
            if column.name not in named and column.default is not None and column.default.is_scalar}


@functools.cache
def accept_statement() -> TextClause:
    """``INSERT … SELECT … FROM json_to_recordset(…) JOIN enrollments … `` with the count and the app's quota.

    Built on first use from the table's own column types, so a new message
    column joins the statement without an edit here.
    """
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    table = Notification.__table__
    columns = row_columns()
    record = ", ".join(f"{name} {table.c[name].type.compile(dialect=dialect)}" for name in columns)
    selected = ", ".join(f"r.{name}" for name in columns)
    defaults = scalar_defaults()
    return text(
        "WITH inserted AS ("
        f" INSERT INTO notifications ({', '.join((*columns, *_COMMON, *defaults))})"
        f" SELECT {selected}, e.app_id, :notify_outcomes, :request_id, :now, :now"
        + "".join(f", :default_{name}" for name in defaults) +
        f" FROM json_to_recordset(CAST(:rows AS json)) AS r({record})"
        " JOIN enrollments e ON e.app_id = CAST(:app_id AS uuid) AND e.user_id = r.user_id"
        " RETURNING 1)"
        " SELECT (SELECT count(*) FROM inserted), (SELECT daily_quota FROM apps WHERE id = CAST(:app_id AS uuid))"
    )


def content_fragment(status: str, send_at: datetime | None, message: Message) -> str:
    """The part of a row shared by every recipient of one content: ``"status":…,"send_at":…,<message columns>``."""
    document = _ENCODER.encode({"status": status, "send_at": send_at, **message.as_row()})
    return document[1:-1]  # without the braces: rows are assembled around it


def rows_document(rows: Sequence[tuple[uuid.UUID, uuid.UUID, str]]) -> str:
    """The JSON array of rows from ``(id, user_id, content fragment)``."""
    return "[" + ",".join(f'{{"id":"{row_id}","user_id":"{user_id}",{fragment}}}' for row_id, user_id, fragment in rows) + "]"


def insert_enrolled(
    session: Session,
    app_id: uuid.UUID,
    document: str,
    *,
    now: datetime,
    notify_outcomes: bool,
    request_id: str | None,
) -> tuple[int, int | None]:
    """Insert the document's rows whose user is enrolled; returns (rows inserted, the app's own daily quota)."""
    params: dict[str, Any] = {"rows": document, "app_id": str(app_id), "now": now,
                              "notify_outcomes": notify_outcomes, "request_id": request_id,
                              **{f"default_{name}": value for name, value in scalar_defaults().items()}}
    inserted, own_limit = session.connection().execute(accept_statement(), params).one()
    return int(inserted), own_limit
