"""Request ids: validated at the API, carried through task headers, attached to every log line.

A context variable holds the request ids that apply to what the current thread
(or asyncio task) is doing: the API sets the one of the request it serves, the
worker tasks set those of the notifications they handle. The log formatters in
``shared.logging`` read it, so no call site has to pass ids to ``log.info``.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import uuid
from collections.abc import Iterable, Iterator

MAX_REQUEST_ID_CHARS = 128  # notifications.request_id is String(128)
# Visible ASCII only: no spaces or control characters, so an id never breaks a log line or a header.
_VALID = re.compile(r"[!-~]{1,%d}" % MAX_REQUEST_ID_CHARS)
# Celery message header carrying the request ids of a task's notifications.
TASK_HEADER = "pushq_request_ids"

_current: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("pushq_request_ids", default=())


def accept_request_id(candidate: str | None) -> str:
    """The caller's ``X-Request-Id`` when it is 1-128 visible ASCII characters, else a new one.

    A bad id is replaced rather than refused: tracing must never make a send fail.
    """
    if candidate is not None and _VALID.fullmatch(candidate):
        return candidate
    return uuid.uuid4().hex


def clean_request_ids(values: Iterable[object] | None) -> tuple[str, ...]:
    """Distinct valid ids in first-seen order (task headers come from the broker: trust nothing)."""
    seen: dict[str, None] = {}
    for value in values or ():
        if isinstance(value, str) and _VALID.fullmatch(value):
            seen.setdefault(value, None)
    return tuple(seen)


def current_request_ids() -> tuple[str, ...]:
    """The request ids that apply here (empty outside any request or notification task)."""
    return _current.get()


def set_request_ids(ids: Iterable[str]) -> contextvars.Token[tuple[str, ...]]:
    """Set the ids for what follows; pass the token to :func:`reset_request_ids` when done."""
    return _current.set(clean_request_ids(ids))


def reset_request_ids(token: contextvars.Token[tuple[str, ...]]) -> None:
    _current.reset(token)


@contextlib.contextmanager
def request_ids_context(ids: Iterable[str]) -> Iterator[None]:
    """Log lines within the block carry ``ids``."""
    token = set_request_ids(ids)
    try:
        yield
    finally:
        _current.reset(token)


def task_headers(ids: Iterable[str]) -> dict[str, list[str]] | None:
    """Celery message headers carrying ``ids`` (None when there are none: the message stays as it was)."""
    cleaned = clean_request_ids(ids)
    return {TASK_HEADER: list(cleaned)} if cleaned else None


def task_request_ids(task_request: object) -> tuple[str, ...]:
    """The request ids a running task's message carried (Celery exposes custom headers on ``self.request``)."""
    return clean_request_ids(getattr(task_request, TASK_HEADER, None))
