"""The request's one database session: opened on first use, committed or rolled back in one place."""

from __future__ import annotations

import logging

from flask import Response, current_app, g
from sqlalchemy.orm import Session

from api.errors import error_response

log = logging.getLogger(__name__)


def db_session() -> Session:
    """The request's one session; committed or rolled back by :func:`finish_session`."""
    session = g.get("db_session")
    if session is None:
        session = g.db_session = current_app.extensions["pushq"].session_factory()
    return session


def finish_session(response: Response) -> Response:
    """Commit on success (running after-commit enqueues), roll back otherwise."""
    session = g.pop("db_session", None)
    if session is None:
        return response
    try:
        if response.status_code < 400:
            session.commit()
        else:
            session.rollback()
    except Exception:
        log.exception("commit failed")
        session.rollback()
        if not g.get("request_committed"):
            response = error_response(503, "unavailable", "Service temporarily unavailable, try again")
            response.headers["Retry-After"] = "5"
        # else: the view's work was committed before (commit_request_session): "try again" would
        # do it twice. Only what came after (the final answer stored for replay) is lost.
    finally:
        session.close()
    return response


def commit_request_session() -> None:
    """Commit the request's work now (running its after-commit enqueues), for views that then wait on workers."""
    session = g.get("db_session")
    if session is not None:
        session.commit()
        g.request_committed = True


def discard_session(_exc: BaseException | None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.rollback()
        session.close()
