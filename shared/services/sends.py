"""Accepting send requests: validation rules, notification rows, enqueue after commit."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from shared.clock import utcnow
from shared.db import after_commit, after_rollback
from shared.errors import DataTooLarge, OptionsNotDeliverable, ServiceError, UserNotEnrolled
from shared.guards import QuotaDecision, QuotaPolicy
from shared.message import Message, compact_json
from shared.message_options import NO_OPTIONS, Options
from shared.models import App, Notification, NotificationStatus
from shared.option_rules import needs_critical_entitlement, option_refusals
from shared.services.accept_insert import content_fragment, insert_enrolled, rows_document
from shared.services.enrollments import not_enrolled
from shared.vendor_payloads import PLATFORMS, refusals

MAX_DATA_BYTES = 4096  # the contract's bound on data, whatever the platform
MAX_TITLE_CHARS = 256
MAX_BODY_CHARS = 4096
MAX_RECIPIENTS = 500
MAX_TTL_SECONDS = 28 * 24 * 3600

# Everything but the recipient and data that a payload is built from (the data is compared by identity).
_CONTENT = ("title", "body", "url", "ttl", "priority", "collapse_key", "badge", "sound", "platform", "send_at")

Enqueue = Callable[[Sequence[uuid.UUID]], None]


@dataclass(frozen=True)
class SendRequest:
    user_id: uuid.UUID
    title: str
    body: str
    data: dict[str, Any] = field(default_factory=dict)
    ttl: int | None = None
    priority: str = "normal"
    collapse_key: str | None = None
    badge: int | None = None
    sound: str | None = None
    url: str | None = None
    platform: str | None = None  # restrict the fan-out to one platform
    send_at: datetime | None = None  # fan out no earlier than this (aware); None or past: at once
    options: Options = NO_OPTIONS  # presentation options (shared.message_options)

    def scheduled(self, now: datetime) -> bool:
        """Whether this send waits in the database for its ``send_at``."""
        return self.send_at is not None and self.send_at > now

    def message(self, now: datetime, default_ttl: int) -> Message:
        """The message this request sends, accepted at ``now``: its TTL counts from ``send_at`` when scheduled."""
        content = {name: getattr(self, name) for name in Message.columns() if name not in ("ttl", "expires_at")}
        start = self.send_at if self.send_at is not None and self.scheduled(now) else now
        return Message.accepted(start, default_ttl if self.ttl is None else self.ttl, **content)


@dataclass(frozen=True)
class Accepted:
    notification_ids: list[uuid.UUID]
    quota: QuotaDecision | None = None


def data_size(data: dict[str, Any]) -> int:
    """Bytes of ``data`` as sent: compact UTF-8 JSON, multibyte text counted in bytes."""
    return len(compact_json(data))


def targets(request: SendRequest) -> tuple[str, ...]:
    """The platforms a send can reach: its ``platform`` restriction, else every platform."""
    return (request.platform,) if request.platform else PLATFORMS


def check_payload(
    request: SendRequest, now: datetime, default_ttl: int, critical_allowed: bool = False,
    platforms: Sequence[str] | None = None,
) -> None:
    """Refuse what some targeted platform could not carry, so an accepted send can reach every device.

    The data is bounded by the contract's 4 KB first; then each target's payload
    is built as its adapter builds it (:mod:`shared.vendor_payloads`) and
    measured with the body cut as far as the truncation rule goes. A body that
    is merely long is fine (it is cut with "…" and ``truncated`` flagged); title,
    data and url are never cut, so a message they alone make too big is refused,
    naming the platforms and why. ``platforms`` overrides the targets (a broadcast's filter).
    """
    size = data_size(request.data)
    if size > MAX_DATA_BYTES:
        raise DataTooLarge(reason=f"data is {size} bytes; at most {MAX_DATA_BYTES}")
    message = request.message(now, default_ttl)
    targeted = platforms or targets(request)
    refused = option_refusals(message, targeted, critical_allowed=critical_allowed)
    if refused:
        raise OptionsNotDeliverable(reason="; ".join(f"{r.platform}: {r.reason}" for r in refused),
                                    platforms=[r.platform for r in refused])
    refused = refusals(message, targeted, now)
    if refused:
        raise DataTooLarge(reason="; ".join(f"{r.platform}: {r.reason}" for r in refused),
                           platforms=[r.platform for r in refused])


class SendAtTooFar(ServiceError):
    status, code, message = 400, "validation_error", "Invalid request"


def check_send_at(request: SendRequest, now: datetime) -> None:
    """Refuse a ``send_at`` more than the maximum TTL ahead: nothing waits longer than a message may live."""
    if request.send_at is not None and (request.send_at - now).total_seconds() > MAX_TTL_SECONDS:
        raise SendAtTooFar(fields={"send_at": [f"Must be at most {MAX_TTL_SECONDS} seconds ahead."]})


def create_notifications(
    session: Session,
    app_id: uuid.UUID,
    requests: Sequence[SendRequest],
    *,
    default_ttl: int,
    enqueue: Enqueue,
    require_enrollment: bool = True,
    quota: QuotaPolicy | None = None,
    notify_outcomes: bool = False,
    request_id: str | None = None,
) -> Accepted:
    """Create one notification per request and enqueue their fan-out once committed.

    Either every request is accepted or none is: one user not enrolled, one
    data payload too large, or a daily quota too small for all of them refuses
    the whole call. The quota is taken only once everything else is valid and
    given back if the transaction does not commit. ``request_id`` (the API
    request's X-Request-Id) is stored with each notification for tracing.

    A request with a future ``send_at`` is stored ``scheduled`` and not
    enqueued: the scheduler releases it when due (``shared.services.scheduled``).
    It takes from the quota of the day it was accepted, not of its ``send_at``.
    """
    now = utcnow()
    critical_allowed = False
    if any(needs_critical_entitlement(request.options, targets(request)) for request in requests):
        critical_allowed = bool(session.scalar(select(App.apns_critical_alerts).where(App.id == app_id)))
    # A bulk shares one content, data and options object: build, measure and serialise it once.
    content_keys = [_content_key(request) for request in requests]
    first_of: dict[tuple[Any, ...], SendRequest] = {}
    for request, key in zip(requests, content_keys, strict=True):
        check_send_at(request, now)  # first: a message built from a send_at beyond the maximum may not exist
        if key not in first_of:
            check_payload(request, now, default_ttl, critical_allowed)
            first_of[key] = request
    ids = [uuid.uuid4() for _ in requests]
    statuses = {key: (NotificationStatus.SCHEDULED if request.scheduled(now) else NotificationStatus.QUEUED).value
                for key, request in first_of.items()}
    if require_enrollment and session.get_bind().dialect.name == "postgresql":
        own_limit = _insert_enrolled_postgresql(session, app_id, requests, ids, content_keys, first_of, statuses,
                                                now=now, default_ttl=default_ttl, notify_outcomes=notify_outcomes,
                                                request_id=request_id)
    else:
        own_limit = _insert_portable(session, app_id, requests, ids, content_keys, statuses, now=now,
                                     default_ttl=default_ttl, require_enrollment=require_enrollment,
                                     notify_outcomes=notify_outcomes, request_id=request_id)
    decision = None
    if quota is not None:
        # Taken once the rows are in (a refusal rolls them back with the request): all or nothing.
        limit = own_limit if own_limit is not None else quota.default_limit
        decision = quota.counter.reserve(app_id, len(requests), limit, now)
        after_rollback(session, lambda: quota.counter.refund(app_id, len(requests), now))
    queued = [row_id for row_id, key in zip(ids, content_keys, strict=True)
              if statuses[key] == NotificationStatus.QUEUED.value]
    if queued:
        after_commit(session, lambda: enqueue(queued))  # one signal or fan-out task for the whole request
    return Accepted(ids, decision)


def _content_key(request: SendRequest) -> tuple[Any, ...]:
    """Requests with equal keys share one message (data and options by identity: a bulk's one object each)."""
    return (*(getattr(request, name) for name in _CONTENT), id(request.data), id(request.options))


def _insert_enrolled_postgresql(
    session: Session, app_id: uuid.UUID, requests: Sequence[SendRequest], ids: Sequence[uuid.UUID],
    content_keys: Sequence[tuple[Any, ...]], first_of: dict[tuple[Any, ...], SendRequest], statuses: dict[Any, str],
    *, now: datetime, default_ttl: int, notify_outcomes: bool, request_id: str | None,
) -> int | None:
    """One statement: insert, check enrollment and read the app's own quota (:mod:`accept_insert`)."""
    fragments = {key: content_fragment(statuses[key], request.send_at, request.message(now, default_ttl))
                 for key, request in first_of.items()}
    document = rows_document([(row_id, request.user_id, fragments[key])
                              for row_id, request, key in zip(ids, requests, content_keys, strict=True)])
    inserted, own_limit = insert_enrolled(session, app_id, document, now=now, notify_outcomes=notify_outcomes,
                                          request_id=request_id)
    if inserted != len(requests):  # someone is not enrolled: name them (the request is rolled back)
        missing = not_enrolled(session, app_id, [request.user_id for request in requests])
        raise UserNotEnrolled(user_ids=[str(user_id) for user_id in missing])
    return own_limit


def _insert_portable(
    session: Session, app_id: uuid.UUID, requests: Sequence[SendRequest], ids: Sequence[uuid.UUID],
    content_keys: Sequence[tuple[Any, ...]], statuses: dict[Any, str],
    *, now: datetime, default_ttl: int, require_enrollment: bool, notify_outcomes: bool, request_id: str | None,
) -> int | None:
    """Any database (SQLite for ``make run``): the enrollment check, the app's quota, one multi-row INSERT."""
    missing = not_enrolled(session, app_id, [request.user_id for request in requests]) if require_enrollment else []
    if missing:
        raise UserNotEnrolled(user_ids=[str(user_id) for user_id in missing])
    # Only the quota column: loading the App would decrypt every credential it holds.
    own_limit = session.scalar(select(App.daily_quota).where(App.id == app_id))
    rows = [
        {
            "id": row_id,
            "app_id": app_id,
            "user_id": request.user_id,
            "status": statuses[key],
            "send_at": request.send_at,
            "notify_outcomes": notify_outcomes,
            "request_id": request_id,
            "created_at": now,
            "updated_at": now,
            **request.message(now, default_ttl).as_row(),
        }
        for row_id, request, key in zip(ids, requests, content_keys, strict=True)
    ]
    session.execute(insert(Notification), rows)  # one multi-row INSERT (SQLAlchemy's insertmanyvalues)
    return own_limit
