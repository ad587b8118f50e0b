"""Outcome webhooks: an app's endpoint and secrets, and the outbox events other rules emit.

Events are rows of ``webhook_events`` written in the caller's transaction, next to
the state change they report (an outbox): the change and its event commit
together or not at all, and the workers deliver committed events later
(``shared/webhook_outbox.py``). An app without an endpoint gets no rows.

Event types and their ``data`` (docs/api.md "Outcome webhooks"):

* ``notification.completed``: a notification reached a final status, with every
  delivery's outcome (:func:`emit_notifications_completed`);
* ``device.disabled``: a device will no longer be pushed to, and why
  (:data:`DEVICE_DISABLED_REASONS`);
* ``broadcast.completed``: a broadcast's fan-out and deliveries are final (emitted
  by the broadcast rules through :func:`emit_event`).
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from shared.clock import utcnow
from shared.egress import EndpointRefused, check_webhook_url
from shared.errors import InvalidPageCursor, ServiceError
from shared.models import Delivery, Notification, WebhookEndpoint, WebhookEvent, WebhookEventStatus
from shared.pagination import InvalidCursor, Page, newest_first_page

NOTIFICATION_COMPLETED = "notification.completed"
DEVICE_DISABLED = "device.disabled"
BROADCAST_COMPLETED = "broadcast.completed"
EVENT_TYPES = (NOTIFICATION_COMPLETED, DEVICE_DISABLED, BROADCAST_COMPLETED)

# device.disabled reasons: the vendor declared the token dead; the user registered more devices
# than PUSHQ_MAX_DEVICES_PER_USER; the endpoint no longer passes the egress rules.
DEAD_TOKEN, DEVICE_LIMIT, EGRESS_REFUSED = "dead_token", "device_limit", "egress_refused"
DEVICE_DISABLED_REASONS = (DEAD_TOKEN, DEVICE_LIMIT, EGRESS_REFUSED)

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


class WebhookNotConfigured(ServiceError):
    status, code, message = 404, "webhook_not_configured", "No webhook endpoint is configured for this app"


class WebhookUrlRefused(ServiceError):
    status, code, message = 400, "webhook_url_refused", "Webhook URL refused by the egress rules"


def event_wire_id(event_id: uuid.UUID) -> str:
    """The id receivers see (payload ``id``, ``webhook-id`` of a single event): stable across attempts."""
    return f"msg_{event_id.hex}"


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


@dataclass(frozen=True)
class WebhookConfig:
    """An endpoint as the API and CLI show it; ``secret`` only right after it was made."""

    url: str
    created_at: datetime
    updated_at: datetime
    previous_secret_expires_at: datetime | None
    last_attempt_at: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    events: Mapping[str, int]  # events per status
    secret: str | None = None


def _config(session: Session, endpoint: WebhookEndpoint, now: datetime, secret: str | None = None) -> WebhookConfig:
    counts = dict(session.execute(
        select(WebhookEvent.status, func.count()).where(WebhookEvent.app_id == endpoint.app_id)
        .group_by(WebhookEvent.status)
    ).all())
    expires = endpoint.previous_secret_expires_at
    return WebhookConfig(
        url=endpoint.url, created_at=endpoint.created_at, updated_at=endpoint.updated_at,
        previous_secret_expires_at=expires if endpoint.previous_secret and expires and expires > now else None,
        last_attempt_at=endpoint.last_attempt_at, last_success_at=endpoint.last_success_at,
        last_error=endpoint.last_error,
        events={status.value: counts.get(status.value, 0) for status in WebhookEventStatus},
        secret=secret,
    )


def set_endpoint(
    session: Session, app_id: uuid.UUID, url: str, *, allow_http_loopback: bool, now: datetime | None = None
) -> WebhookConfig:
    """Create or change an app's webhook URL. A new endpoint gets a secret, shown in this answer only."""
    now = now or utcnow()
    try:
        check_webhook_url(url, allow_http_loopback=allow_http_loopback)
    except EndpointRefused as exc:
        raise WebhookUrlRefused(f"Webhook URL refused by the egress rules: {exc.reason}") from None
    endpoint = session.get(WebhookEndpoint, app_id, with_for_update=True)
    secret = None
    if endpoint is None:
        secret = new_secret()
        endpoint = WebhookEndpoint(app_id=app_id, url=url, secret=secret, created_at=now, updated_at=now)
        session.add(endpoint)
    else:
        endpoint.url, endpoint.updated_at = url, now
    session.flush()
    return _config(session, endpoint, now, secret)


def get_endpoint(session: Session, app_id: uuid.UUID, now: datetime | None = None) -> WebhookConfig:
    endpoint = session.get(WebhookEndpoint, app_id)
    if endpoint is None:
        raise WebhookNotConfigured()
    return _config(session, endpoint, now or utcnow())


def rotate_secret(session: Session, app_id: uuid.UUID, overlap: timedelta, now: datetime | None = None) -> WebhookConfig:
    """A new secret, returned once; the current one keeps signing too (a second signature) for ``overlap``."""
    now = now or utcnow()
    endpoint = session.get(WebhookEndpoint, app_id, with_for_update=True)
    if endpoint is None:
        raise WebhookNotConfigured()
    secret = new_secret()
    endpoint.previous_secret, endpoint.previous_secret_expires_at = endpoint.secret, now + overlap
    endpoint.secret, endpoint.updated_at = secret, now
    session.flush()
    return _config(session, endpoint, now, secret)


def delete_endpoint(session: Session, app_id: uuid.UUID) -> None:
    """Remove the endpoint and every event not yet delivered to it (they have nowhere to go)."""
    if session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.app_id == app_id)).rowcount == 0:  # type: ignore[attr-defined]
        raise WebhookNotConfigured()
    session.execute(delete(WebhookEvent).where(WebhookEvent.app_id == app_id,
                                               WebhookEvent.status == WebhookEventStatus.PENDING.value))


def subscribed_apps(session: Session, app_ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
    """Which of ``app_ids`` have a webhook endpoint (one query)."""
    if not app_ids:
        return set()
    return set(session.scalars(select(WebhookEndpoint.app_id).where(WebhookEndpoint.app_id.in_(sorted(set(app_ids))))))


def has_webhook(app_id_column: Any) -> Any:
    """A correlated SQL expression, true when the row's app has an endpoint: for a RETURNING clause,
    so rules that already write a row learn without another statement whether to emit."""
    return select(WebhookEndpoint.app_id).where(WebhookEndpoint.app_id == app_id_column).exists()


def emit_events(
    session: Session,
    events: Sequence[tuple[uuid.UUID, str, Mapping[str, Any]]],
    now: datetime | None = None,
    *,
    subscribed: Collection[uuid.UUID] | None = None,
) -> int:
    """Write events ``(app_id, event_type, data)`` to the outbox, in the caller's transaction.

    Only for apps with an endpoint (``subscribed`` when the caller already knows
    which, else one query). One INSERT for all; returns how many were written.
    The workers deliver them once the caller commits; a rolled-back transaction
    emits nothing.
    """
    if not events:
        return 0
    now = now or utcnow()
    wanted = set(subscribed) if subscribed is not None else subscribed_apps(session, {app for app, _, _ in events})
    rows = [
        {"id": uuid.uuid4(), "app_id": app_id, "event_type": event_type, "payload": dict(data),
         "status": WebhookEventStatus.PENDING.value, "attempts": 0, "next_attempt_at": now, "created_at": now}
        for app_id, event_type, data in events if app_id in wanted
    ]
    if rows:
        session.execute(insert(WebhookEvent), rows)
    return len(rows)


def emit_event(
    session: Session, app_id: uuid.UUID, event_type: str, data: Mapping[str, Any], now: datetime | None = None
) -> bool:
    """Write one event (see :func:`emit_events`) in the caller's transaction; False when the app has no endpoint.

    For example ``emit_event(session, app_id, "broadcast.completed", {"broadcast_id": ..., "counts": {...}})``.
    """
    return emit_events(session, [(app_id, event_type, data)], now) == 1


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def emit_notifications_completed(
    session: Session, notifications: Sequence[tuple[uuid.UUID, uuid.UUID, uuid.UUID, str]], now: datetime
) -> int:
    """``notification.completed`` for ``(notification_id, app_id, user_id, status)`` of subscribed apps.

    One query for the deliveries' outcomes (at most a user's devices each), one INSERT.
    """
    if not notifications:
        return 0
    by_notification: dict[uuid.UUID, list[dict[str, Any]]] = {n[0]: [] for n in notifications}
    for row in session.execute(
        select(Delivery.id, Delivery.notification_id, Delivery.device_id, Delivery.platform, Delivery.status,
               Delivery.attempts, Delivery.last_error, Delivery.sent_at)
        .where(Delivery.notification_id.in_(sorted(by_notification)))
        .order_by(Delivery.notification_id, Delivery.created_at)
    ):
        by_notification[row.notification_id].append({
            "delivery_id": str(row.id), "device_id": str(row.device_id), "platform": row.platform,
            "status": row.status, "attempts": row.attempts, "error": row.last_error, "sent_at": _iso(row.sent_at),
        })
    return emit_events(session, [
        (app_id, NOTIFICATION_COMPLETED, {
            "notification_id": str(notification_id), "user_id": str(user_id), "status": status,
            "completed_at": now.isoformat(), "deliveries": by_notification[notification_id],
        })
        for notification_id, app_id, user_id, status in notifications
    ], now, subscribed={app_id for _, app_id, _, _ in notifications})


def emit_devices_disabled(
    session: Session, devices: Sequence[tuple[uuid.UUID, uuid.UUID, uuid.UUID, str, str, str | None]],
    now: datetime, *, subscribed: Collection[uuid.UUID] | None = None,
) -> int:
    """``device.disabled`` for ``(device_id, app_id, user_id, platform, reason, detail)``."""
    return emit_events(session, [
        (app_id, DEVICE_DISABLED, {
            "device_id": str(device_id), "user_id": str(user_id), "platform": platform, "reason": reason,
            "detail": detail, "disabled_at": now.isoformat(),
        })
        for device_id, app_id, user_id, platform, reason, detail in devices
    ], now, subscribed=subscribed)


def completed_notification_rows(
    session: Session, notification_ids: Collection[uuid.UUID]
) -> list[tuple[uuid.UUID, uuid.UUID, uuid.UUID, str]]:
    """(id, app_id, user_id, status) of notifications, for :func:`emit_notifications_completed`."""
    return [tuple(row) for row in session.execute(  # type: ignore[misc]
        select(Notification.id, Notification.app_id, Notification.user_id, Notification.status)
        .where(Notification.id.in_(sorted(set(notification_ids))))
    )]


def list_events(
    session: Session, app_id: uuid.UUID, *, limit: int, cursor: str | None = None, status: str | None = None
) -> Page[WebhookEvent]:
    """The app's webhook events, newest first, with attempts and last error (optionally in one status)."""
    query = select(WebhookEvent).where(WebhookEvent.app_id == app_id)
    if status is not None:
        query = query.where(WebhookEvent.status == status)
    try:
        return newest_first_page(session, query, WebhookEvent.created_at, WebhookEvent.id, limit, cursor)
    except InvalidCursor:
        raise InvalidPageCursor() from None
