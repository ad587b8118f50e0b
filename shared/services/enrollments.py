"""Enrollment: which users of an app may be sent to."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from shared.clock import utcnow
from shared.db import rows_affected
from shared.db_upsert import insert_ignore
from shared.errors import EnrollmentNotFound
from shared.models import Enrollment
from shared.pagination import Page, keyset_page


def enroll(session: Session, app_id: uuid.UUID, user_ids: Iterable[uuid.UUID]) -> int:
    """Enroll users (idempotent); returns how many were not enrolled before."""
    rows = [{"app_id": app_id, "user_id": user_id, "created_at": utcnow()} for user_id in dict.fromkeys(user_ids)]
    if not rows:
        return 0
    result = session.execute(insert_ignore(session, Enrollment, rows, ["app_id", "user_id"]))
    return rows_affected(result)


def unenroll(session: Session, app_id: uuid.UUID, user_id: uuid.UUID) -> None:
    result = session.execute(
        delete(Enrollment).where(Enrollment.app_id == app_id, Enrollment.user_id == user_id)
    )
    if not rows_affected(result):
        raise EnrollmentNotFound()


def get_enrollment(session: Session, app_id: uuid.UUID, user_id: uuid.UUID) -> Enrollment:
    enrollment = session.get(Enrollment, (app_id, user_id))
    if enrollment is None:
        raise EnrollmentNotFound()
    return enrollment


def not_enrolled(session: Session, app_id: uuid.UUID, user_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """The subset of ``user_ids`` not enrolled in the app, in the order given."""
    wanted = set(user_ids)
    enrolled = set(
        session.scalars(
            select(Enrollment.user_id).where(Enrollment.app_id == app_id, Enrollment.user_id.in_(wanted))
        )
    )
    return [user_id for user_id in dict.fromkeys(user_ids) if user_id not in enrolled]


def list_enrollments(session: Session, app_id: uuid.UUID, limit: int, after: uuid.UUID | None = None) -> Page[Enrollment]:
    """Enrollments ordered by user id, keyset-paginated (stable under inserts)."""
    return keyset_page(session, select(Enrollment).where(Enrollment.app_id == app_id), Enrollment.user_id, limit, after)
