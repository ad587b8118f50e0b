"""Engine and session handling shared by the API, the workers and the CLI.

One session per request and per task: callers open it with :func:`session_scope`
(or the API's request hook), and work that must only happen once the data is
durable (enqueueing a task) is registered with :func:`after_commit`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, Engine, Result, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

T = TypeVar("T")

_AFTER_COMMIT_KEY = "pushq_after_commit"
_AFTER_ROLLBACK_KEY = "pushq_after_rollback"


def rows_affected(result: Result[Any]) -> int:
    """How many rows an INSERT/UPDATE/DELETE touched (``Session.execute`` types its result as a plain Result)."""
    return cast("CursorResult[Any]", result).rowcount or 0


def make_engine(database_url: str, **kwargs: object) -> Engine:
    """An engine with sane pool settings for PostgreSQL and safe defaults for SQLite."""
    kwargs.setdefault("hide_parameters", True)  # statement parameters (tokens, user data) never reach logs
    if database_url.startswith("sqlite"):
        engine = create_engine(database_url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:  # exercised by make run
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    # No pre-ping (a round trip per checkout): a connection PostgreSQL dropped is
    # invalidated when a statement fails on it, and callers retry the transaction
    # (run_in_transaction in the workers, the endpoint wrapper in the API).
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", 5)
        kwargs.setdefault("max_overflow", 10)
    return create_engine(database_url, **kwargs)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the session's current transaction has committed.

    Used to enqueue Celery tasks only for rows that are durable; if the
    transaction rolls back the callback is dropped.
    """
    session.info.setdefault(_AFTER_COMMIT_KEY, []).append(callback)


def after_rollback(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` if the session's current transaction rolls back instead of committing.

    Used to give back what was taken outside the database (a quota reservation).
    """
    session.info.setdefault(_AFTER_ROLLBACK_KEY, []).append(callback)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    session.info.pop(_AFTER_ROLLBACK_KEY, None)
    callbacks = session.info.pop(_AFTER_COMMIT_KEY, [])
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("after-commit callback failed; the sweeper will pick the work up")


@event.listens_for(Session, "after_rollback")
def _run_after_rollback(session: Session) -> None:
    session.info.pop(_AFTER_COMMIT_KEY, None)
    for callback in session.info.pop(_AFTER_ROLLBACK_KEY, []):
        try:
            callback()
        except Exception:
            log.exception("after-rollback callback failed")


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session committed on success and rolled back on error, closed either way."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def run_in_transaction(
    factory: sessionmaker[Session], work: Callable[[Session], T], *, attempts: int = 3, backoff_seconds: float = 0.5
) -> T:
    """Run ``work`` in its own committed transaction, again on a dropped connection.

    For work that is safe to repeat (every statement conditional on the state it
    changes), so a PostgreSQL restart or a killed connection between two steps of
    a delivery costs a short wait instead of a lost outcome.
    """
    for attempt in range(1, attempts + 1):
        try:
            with session_scope(factory) as session:
                return work(session)
        except OperationalError as exc:
            # Only a lost connection is retried; other errors (a lock timeout, bad SQL) are real.
            if attempt == attempts or not exc.connection_invalidated:
                raise
            log.warning("database connection lost (%s); retrying, attempt %d of %d", type(exc.orig).__name__, attempt + 1, attempts)
            time.sleep(backoff_seconds * attempt)
    raise AssertionError("unreachable")
