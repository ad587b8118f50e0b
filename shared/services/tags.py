"""User tags: the labels broadcasts select segments of an app's enrolled users by.

Bounded so that a segment query stays an index lookup and a caller cannot grow a
user without limit: at most :data:`MAX_TAGS_PER_USER` tags per user and app, each
1-:data:`MAX_TAG_CHARS` characters of letters, digits and ``_ - . : /``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from shared.errors import EnrollmentNotFound, ServiceError
from shared.models import Enrollment, UserTag
from shared.services.enrollments import not_enrolled

MAX_TAGS_PER_USER = 32
MAX_TAG_CHARS = 64
TAG_PATTERN = r"^[A-Za-z0-9_.:/-]{1,64}$"
_TAG = re.compile(TAG_PATTERN)


class InvalidTags(ServiceError):
    status, code, message = 400, "validation_error", "Invalid request"


def check_tags(tags: Sequence[str], field_name: str = "tags") -> list[str]:
    """The tags, each once and in the order given; :class:`InvalidTags` when one is malformed or too many."""
    bad = [tag for tag in tags if not isinstance(tag, str) or not _TAG.match(tag)]
    if bad:
        raise InvalidTags(fields={field_name: [f"Each tag is 1-{MAX_TAG_CHARS} characters of A-Z a-z 0-9 _ - . : /."]})
    distinct = list(dict.fromkeys(tags))
    if len(distinct) > MAX_TAGS_PER_USER:
        raise InvalidTags(fields={field_name: [f"At most {MAX_TAGS_PER_USER} tags."]})
    return distinct


def get_tags(session: Session, app_id: uuid.UUID, user_id: uuid.UUID) -> list[str]:
    """An enrolled user's tags, sorted; :class:`EnrollmentNotFound` for a user not enrolled."""
    if session.get(Enrollment, (app_id, user_id)) is None:
        raise EnrollmentNotFound()
    return list(session.scalars(
        select(UserTag.tag).where(UserTag.app_id == app_id, UserTag.user_id == user_id).order_by(UserTag.tag)
    ))


def set_tags(session: Session, app_id: uuid.UUID, user_id: uuid.UUID, tags: Sequence[str]) -> list[str]:
    """Replace an enrolled user's tags (an empty list removes them all); returns them sorted."""
    if session.get(Enrollment, (app_id, user_id)) is None:
        raise EnrollmentNotFound()
    replace_tags(session, app_id, {user_id: tags})
    return sorted(set(tags))


def replace_tags(session: Session, app_id: uuid.UUID, tags_by_user: Mapping[uuid.UUID, Iterable[str]]) -> int:
    """Replace the tags of many enrolled users at once (CSV imports): two statements; returns the tags written.

    Every user must be enrolled (:class:`EnrollmentNotFound` names the missing ones)
    and every tag list valid, or nothing is written.
    """
    checked = {user_id: check_tags(list(tags)) for user_id, tags in tags_by_user.items()}
    if not checked:
        return 0
    missing = not_enrolled(session, app_id, list(checked))
    if missing:
        raise EnrollmentNotFound(user_ids=[str(user_id) for user_id in missing])
    session.execute(delete(UserTag).where(UserTag.app_id == app_id, UserTag.user_id.in_(list(checked))))
    rows = [{"app_id": app_id, "user_id": user_id, "tag": tag} for user_id, tags in checked.items() for tag in tags]
    if rows:
        session.execute(insert(UserTag), rows)
    return len(rows)
