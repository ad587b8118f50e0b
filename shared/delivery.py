"""The delivery pipeline's rules: batched fan-out, chunk claims, outcomes, status.

Plain functions over a session, so they are testable without Celery. The worker
tasks call them in this order, each step in its own transaction, and each step
costs a constant number of SQL statements whatever the number of rows:

1. :func:`fan_out` turns a batch of notifications (a whole bulk request) into
   delivery rows and groups them into chunks per platform and app, across
   notifications and users.
2. :func:`claim_chunk` claims a chunk with one statement that also returns all
   an adapter needs (message, token); the claim commits *before* anything is
   pushed, so a redelivered task finds the deliveries claimed and never pushes
   them twice.
3. the vendor adapter pushes; :func:`record_outcomes` writes every outcome of
   the chunk in one statement, only under the claim that pushed, disables dead
   devices in one statement and refreshes the notifications' statuses.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, case, exists, func, literal, or_, select, text, tuple_, update
from sqlalchemy.orm import Session, aliased

from shared.broadcast_status import complete_broadcasts
from shared.db import rows_affected
from shared.db_upsert import dialect_insert
from shared.message import Message
from shared.models import (
    App,
    Delivery,
    DeliveryStatus,
    Device,
    Notification,
    NotificationStatus,
)
from shared.outcomes import MAX_REASON_CHARS, MAX_VENDOR_ID_CHARS, Outcome, OutcomeKind, clamp_delay, clean_text
from shared.services import webhooks
from shared.statuses import OPEN

log = logging.getLogger(__name__)

_MESSAGE_COLUMNS = [getattr(Notification, name) for name in Message.columns()]


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_seconds: float = 2.0
    max_seconds: float = 600.0

    def delay(self, attempts: int, retry_after: float | None, rng: random.Random | None = None) -> float:
        """Exponential backoff with full jitter, capped; ``retry_after`` is a floor."""
        ceiling = min(self.max_seconds, self.base_seconds * (2 ** min(max(attempts - 1, 0), 64)))
        jittered = (rng or random).uniform(0, ceiling)
        return max(jittered, clamp_delay(retry_after) or 0.0)


@dataclass(frozen=True)
class Chunk:
    """Deliveries of one platform and one app, pushed by one task."""

    platform: str
    delivery_ids: list[uuid.UUID]


def chunked(rows: Iterable[tuple[str, uuid.UUID, uuid.UUID]], size: int) -> list[Chunk]:
    """Group (platform, app_id, delivery_id) rows into chunks of at most ``size`` per platform and app."""
    groups: dict[tuple[str, uuid.UUID], list[uuid.UUID]] = defaultdict(list)
    for platform, app_id, delivery_id in rows:
        groups[(platform, app_id)].append(delivery_id)
    return [
        Chunk(platform, ids[start : start + size])
        for (platform, _), ids in groups.items()
        for start in range(0, len(ids), size)
    ]


def fan_out(
    session: Session,
    notification_ids: Sequence[uuid.UUID],
    now: datetime,
    supported_platforms: Collection[str],
    chunk_size: int,
) -> list[Chunk]:
    """Create the deliveries of a batch of notifications; return the pending ones in chunks.

    Three statements for the whole batch: lock the notifications (in id order,
    so concurrent fan-outs cannot deadlock), insert a delivery for every active
    device of their users (joined in the database), set every status. Safe to run twice (a
    redelivered task): a notification already fanned out is not fanned out
    again, and its still-pending deliveries are returned so their enqueue is
    retried.
    """
    ids = sorted(set(notification_ids))
    if not ids:
        return []
    notifications = session.execute(
        select(Notification.id, Notification.app_id, Notification.user_id, Notification.platform,
               Notification.expires_at, Notification.ttl, Notification.fanned_out_at)
        # A scheduled send is fanned out only once the scheduler has released it (never before
        # its send_at), a cancelled one never, whatever task names it.
        .where(Notification.id.in_(ids),
               Notification.status.not_in([NotificationStatus.SCHEDULED.value, NotificationStatus.CANCELLED.value]))
        .order_by(Notification.id)
        .with_for_update()
    ).all()
    fresh = [n for n in notifications if n.fanned_out_at is None]
    done_before = [n.id for n in notifications if n.fanned_out_at is not None]

    pending: list[tuple[str, uuid.UUID, uuid.UUID]] = []
    status_of: dict[uuid.UUID, str] = {
        n.id: NotificationStatus.NO_DEVICES.value if _live(n.expires_at, n.ttl, now) else NotificationStatus.EXPIRED.value
        for n in fresh
    }
    if fresh:
        app_of = {n.id: n.app_id for n in fresh}
        # Devices are joined and deliveries created inside the database: one statement,
        # and no device row travels to Python. A notification whose ttl ran out while it
        # waited in pushq's queue gets its deliveries too, closed "expired" with the reason.
        for delivery_id, notification_id, platform, status in session.execute(
            _insert_deliveries(session, [n.id for n in fresh], now, supported_platforms)
        ):
            if status == DeliveryStatus.PENDING.value:
                status_of[notification_id] = NotificationStatus.SENDING.value
                pending.append((platform, app_of[notification_id], delivery_id))
            elif status_of[notification_id] == NotificationStatus.NO_DEVICES.value:
                status_of[notification_id] = NotificationStatus.FAILED.value  # only unsupported platforms
    if fresh:
        by_status: dict[str, list[uuid.UUID]] = defaultdict(list)
        for notification_id, status in status_of.items():
            by_status[status].append(notification_id)
        session.execute(
            update(Notification)
            .where(Notification.id.in_(list(status_of)))
            .values(
                status=case(*((Notification.id.in_(group), status) for status, group in by_status.items())),
                fanned_out_at=now,
                updated_at=now,
            )
        )
        final_at_fan_out = [(n.id, n.app_id, n.user_id, status_of[n.id]) for n in fresh
                            if status_of[n.id] != NotificationStatus.SENDING.value]
        if final_at_fan_out:  # no device, expired in the queue, or only unsupported platforms
            subscribed = webhooks.subscribed_apps(session, {app for _, app, _, _ in final_at_fan_out})
            webhooks.emit_notifications_completed(
                session, [n for n in final_at_fan_out if n[1] in subscribed], now)
    if done_before:  # a redelivered fan-out: enqueue again what still waits
        pending.extend(
            session.execute(
                select(Delivery.platform, Notification.app_id, Delivery.id)
                .join(Notification, Notification.id == Delivery.notification_id)
                .where(Delivery.notification_id.in_(done_before), Delivery.status == DeliveryStatus.PENDING.value)
                .order_by(Delivery.created_at)
            ).all()
        )
    return chunked(pending, chunk_size)


EXPIRED_IN_QUEUE = "ttl ran out in pushq's queue, before fan-out"


def _live(expires_at: datetime, ttl: int, now: datetime) -> bool:
    """Whether a notification may still be pushed at ``now``.

    A ttl of 0 means what it means to the vendors: deliver now or drop it. Its
    ``expires_at`` is its acceptance, so it is pushed once, as soon as a worker
    reaches it, with a TTL of 0, and never retried (:func:`outcome_values`).
    """
    return ttl == 0 or expires_at > now


def _insert_deliveries(
    session: Session, notification_ids: list[uuid.UUID], now: datetime, supported_platforms: Collection[str]
) -> Any:
    """INSERT ... SELECT one delivery per (notification, active device of its user), RETURNING them.

    Each delivery keeps the device's generation: it is pushed only while the device
    is still what it was now (see :func:`claim_chunk`).
    """
    supported = Device.platform.in_(sorted(supported_platforms))
    # The SQL form of _live(), with the same ``now``.
    expired = and_(Notification.ttl > 0, Notification.expires_at <= literal(now, Notification.expires_at.type))
    if session.get_bind().dialect.name == "postgresql":
        new_id: Any = func.gen_random_uuid()
    else:  # SQLite keeps UUIDs as 32 hex characters
        new_id = func.lower(func.hex(func.randomblob(16)))
    rows = (
        select(
            new_id,
            Notification.id,
            Device.id,
            Device.platform,
            Device.generation,
            case((expired, DeliveryStatus.EXPIRED.value), (supported, DeliveryStatus.PENDING.value),
                 else_=DeliveryStatus.UNSUPPORTED.value),
            case((expired, EXPIRED_IN_QUEUE), (supported, None), else_="platform not supported"),
            literal(0),
            literal(now, Delivery.created_at.type),
            literal(now, Delivery.updated_at.type),
        )
        .join(
            Device,
            and_(
                Device.app_id == Notification.app_id,
                Device.user_id == Notification.user_id,
                Device.disabled_at.is_(None),
                or_(Notification.platform.is_(None), Notification.platform == Device.platform),
            ),
        )
        .where(Notification.id.in_(notification_ids))
        .order_by(Notification.id, Device.created_at, Device.id)
    )
    columns = ["id", "notification_id", "device_id", "platform", "device_generation", "status", "last_error",
               "attempts", "created_at", "updated_at"]
    return (
        dialect_insert(session, Delivery)
        .from_select(columns, rows)
        .on_conflict_do_nothing(index_elements=["notification_id", "device_id"])
        .returning(Delivery.id, Delivery.notification_id, Delivery.platform, Delivery.status)
    )


@dataclass(frozen=True)
class ClaimedDelivery:
    """What an adapter needs to push one delivery; plain data, detached from the session."""

    delivery_id: uuid.UUID
    device_id: uuid.UUID
    token: str
    token_hash: str
    platform: str
    attempts: int
    notification_id: uuid.UUID
    app_id: uuid.UUID
    message: Message
    notify_outcomes: bool = False  # a caller waits for this notification's first outcomes
    request_id: str | None = None  # the X-Request-Id that created the notification, for log lines


@dataclass(frozen=True)
class Claim:
    """The deliveries one task holds, under one claim token."""

    token: uuid.UUID
    deliveries: list[ClaimedDelivery]
    # Each app's credentials version (apps.updated_at), for the workers' credential cache.
    app_versions: dict[uuid.UUID, datetime] = field(default_factory=dict)
    closed: int = 0  # deliveries closed at claim time (expired, device gone, attempts exhausted)

    def by_app(self) -> dict[uuid.UUID, list[ClaimedDelivery]]:
        groups: dict[uuid.UUID, list[ClaimedDelivery]] = defaultdict(list)
        for delivery in self.deliveries:
            groups[delivery.app_id].append(delivery)
        return dict(groups)


DEVICE_OTHER_OWNER = "device registered by another user since fan-out: not pushed"
DEVICE_RE_REGISTERED = "device registered again since fan-out (re-enabled or moved between users): not pushed"


def claim_chunk(
    session: Session, delivery_ids: Sequence[uuid.UUID], now: datetime, lease_seconds: int, max_attempts: int
) -> Claim:
    """Atomically claim the open deliveries among ``delivery_ids`` with one statement.

    Claimable: pending; retrying whose ``next_attempt_at`` is due; sending whose
    lease ran out (its worker died). In the same UPDATE, deliveries that must not
    be pushed are closed instead: the notification expired (a ttl-0 one only once
    it was attempted), the device was disabled or unregistered after fan-out, the
    device is no longer what it was at fan-out (it now belongs to another user, or
    was registered again after being disabled: a message goes only to the person
    it was meant for), or the attempts are used up. Of two workers holding the
    same ids only one gets each delivery. On PostgreSQL the UPDATE also returns
    the message, token and credentials version; elsewhere (SQLite, for ``make
    run``) one SELECT follows.
    """
    token = uuid.uuid4()
    if not delivery_ids:
        return Claim(token, [])
    lease_cutoff = now - timedelta(seconds=lease_seconds)
    expired = and_(Notification.expires_at <= now, or_(Notification.ttl > 0, Delivery.attempts > 0))
    device_gone = Device.disabled_at.is_not(None)
    # A broadcast's delivery names its recipient; any other delivery is for its notification's user.
    other_owner = Device.user_id != func.coalesce(Delivery.user_id, Notification.user_id)
    re_registered = Delivery.device_generation != Device.generation
    exhausted = Delivery.attempts >= max_attempts
    pushable = and_(~expired, ~device_gone, ~other_owner, ~re_registered, ~exhausted)
    statement = (
        update(Delivery)
        .where(
            # One typed array parameter, not one coerced bind per id.
            Delivery.id.in_(bindparam("ids", list(delivery_ids), expanding=True, type_=Delivery.id.type)),
            or_(
                Delivery.status == DeliveryStatus.PENDING.value,
                and_(
                    Delivery.status == DeliveryStatus.RETRYING.value,
                    or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
                ),
                and_(Delivery.status == DeliveryStatus.SENDING.value, Delivery.claimed_at < lease_cutoff),
            ),
            Notification.id == Delivery.notification_id,
            Device.id == Delivery.device_id,
        )
        .values(
            status=case(
                (expired, DeliveryStatus.EXPIRED.value),
                (or_(device_gone, other_owner, re_registered), DeliveryStatus.REJECTED.value),
                (exhausted, DeliveryStatus.FAILED.value),
                else_=DeliveryStatus.SENDING.value,
            ),
            last_error=case(
                (expired, "ttl expired before delivery"),
                (device_gone, "device disabled before the push"),
                (other_owner, DEVICE_OTHER_OWNER),
                (re_registered, DEVICE_RE_REGISTERED),
                (exhausted, f"gave up: {max_attempts} attempts used"),
                else_=Delivery.last_error,
            ),
            attempts=case((pushable, Delivery.attempts + 1), else_=Delivery.attempts),
            claimed_at=case((pushable, now), else_=None),
            claim_token=case((pushable, literal(token, Delivery.claim_token.type)), else_=None),
            next_attempt_at=None,
            updated_at=now,
        )
    )
    base = (Delivery.id, Delivery.status, Delivery.device_id, Delivery.platform, Delivery.attempts,
            Delivery.notification_id, Notification.request_id)
    if session.get_bind().dialect.name == "postgresql":
        rows = session.execute(
            statement.returning(*base, Device.token, Device.token_hash, Notification.app_id,
                                Notification.notify_outcomes, App.updated_at.label("app_version"), *_MESSAGE_COLUMNS)
            .where(App.id == Notification.app_id)
        ).mappings().all()
    else:
        claimed = session.execute(statement.returning(Delivery.id)).scalars().all()
        rows = session.execute(
            select(*base, Device.token, Device.token_hash, Notification.app_id,
                   Notification.notify_outcomes, App.updated_at.label("app_version"), *_MESSAGE_COLUMNS)
            .join(Notification, Notification.id == Delivery.notification_id)
            .join(Device, Device.id == Delivery.device_id)
            .join(App, App.id == Notification.app_id)
            .where(Delivery.id.in_(claimed))
        ).mappings().all() if claimed else []
    deliveries, closed_notifications, versions = [], set(), {}
    for row in rows:
        if row["status"] != DeliveryStatus.SENDING.value:
            closed_notifications.add(row["notification_id"])
            continue
        versions[row["app_id"]] = row["app_version"]
        deliveries.append(
            ClaimedDelivery(
                delivery_id=row["id"], device_id=row["device_id"], token=row["token"], token_hash=row["token_hash"],
                platform=row["platform"], attempts=row["attempts"], notification_id=row["notification_id"],
                app_id=row["app_id"], message=Message.from_row(row), notify_outcomes=row["notify_outcomes"],
                request_id=row["request_id"],
            )
        )
    if closed_notifications:
        refresh_statuses(session, closed_notifications, now)
    return Claim(token, deliveries, versions, len(rows) - len(deliveries))


def _values_by_id(ids: Sequence[uuid.UUID], values: Sequence[Any], column: Any) -> Any:
    """A CASE choosing, per delivery id, its own value: lets one UPDATE write a whole chunk."""
    distinct = {value for value in values if value is not None}
    if not distinct:
        return None
    if len(distinct) == 1 and None not in values:
        return distinct.pop()
    return case(*((Delivery.id == i, literal(v, column.type)) for i, v in zip(ids, values) if v is not None))


def outcome_values(
    claimed: ClaimedDelivery, outcome: Outcome, now: datetime, policy: RetryPolicy
) -> dict[str, Any]:
    """What one outcome writes into its delivery row.

    Its text is cleaned again here (an Outcome cleans itself, but this is the last
    step before PostgreSQL, which refuses NUL and invalid UTF-8 for the whole chunk).
    """
    reason = clean_text(outcome.reason, MAX_REASON_CHARS)
    if outcome.kind is OutcomeKind.SENT:
        return {"status": DeliveryStatus.SENT.value,
                "vendor_message_id": clean_text(outcome.vendor_message_id, MAX_VENDOR_ID_CHARS),
                "sent_at": now, "last_error": None, "next_attempt_at": None}
    if outcome.kind is OutcomeKind.DEAD_TOKEN:
        return {"status": DeliveryStatus.DEAD_TOKEN.value, "last_error": reason}
    if outcome.kind is OutcomeKind.REJECTED:
        return {"status": DeliveryStatus.REJECTED.value, "last_error": reason}
    if claimed.message.ttl == 0:  # "now or never": the one attempt was it
        return {"status": DeliveryStatus.EXPIRED.value,
                "last_error": clean_text(f"ttl 0, not retried: {reason}", MAX_REASON_CHARS)}
    if claimed.attempts >= policy.max_attempts:
        return {"status": DeliveryStatus.FAILED.value,
                "last_error": clean_text(f"gave up after {claimed.attempts} attempts: {reason}", MAX_REASON_CHARS)}
    due = now + timedelta(seconds=policy.delay(claimed.attempts, outcome.retry_after))
    if due >= claimed.message.expires_at:
        return {"status": DeliveryStatus.EXPIRED.value,
                "last_error": clean_text(f"ttl expires before retry: {reason}", MAX_REASON_CHARS)}
    return {"status": DeliveryStatus.RETRYING.value, "last_error": reason, "next_attempt_at": due}


def _row_values(claimed: ClaimedDelivery, outcome: Outcome, now: datetime, policy: RetryPolicy) -> dict[str, Any]:
    """:func:`outcome_values`, and if one outcome cannot be turned into a row, a plainer row for it:
    one bad value never stops the chunk's other outcomes from being written."""
    try:
        return outcome_values(claimed, outcome, now, policy)
    except Exception as exc:
        log.exception("outcome of delivery %s cannot be recorded as it is; recording its kind only",
                      claimed.delivery_id)
        reason = f"vendor answer not recordable ({type(exc).__name__})"
    try:
        return outcome_values(claimed, Outcome(outcome.kind, reason=reason), now, policy)
    except Exception:
        log.exception("outcome of delivery %s cannot be recorded; recording a retry", claimed.delivery_id)
        return {"status": DeliveryStatus.RETRYING.value, "last_error": reason,
                "next_attempt_at": now + timedelta(seconds=policy.max_seconds)}


_OUTCOME_COLUMNS = ("status", "vendor_message_id", "sent_at", "last_error", "next_attempt_at")

# PostgreSQL: the whole chunk's outcomes as parallel arrays, one fixed statement
# (no per-row SQL to build or compile, whatever the chunk's size or mix of outcomes).
_WRITE_OUTCOMES_PG = text("""
UPDATE deliveries AS d
SET status = v.status, vendor_message_id = v.vendor_message_id, sent_at = v.sent_at,
    last_error = v.last_error, next_attempt_at = v.next_attempt_at,
    claimed_at = NULL, claim_token = NULL, updated_at = :now
FROM unnest(CAST(:ids AS uuid[]), CAST(:status AS varchar[]), CAST(:vendor_message_id AS text[]),
            CAST(:sent_at AS timestamptz[]), CAST(:last_error AS text[]), CAST(:next_attempt_at AS timestamptz[]))
     AS v(id, status, vendor_message_id, sent_at, last_error, next_attempt_at)
WHERE d.id = v.id AND d.claim_token = CAST(:token AS uuid) AND d.status = 'sending'
""")


def _write_outcomes_portable(
    session: Session, claim_token: uuid.UUID, rows: Sequence[tuple[uuid.UUID, dict[str, Any]]], now: datetime
) -> int:
    """The same single UPDATE for other databases (SQLite, ``make run``): a CASE per column keyed by id."""
    ids = [delivery_id for delivery_id, _ in rows]
    values: dict[str, Any] = {"updated_at": now, "claimed_at": None, "claim_token": None}
    for name in _OUTCOME_COLUMNS:
        values[name] = _values_by_id(ids, [row.get(name) for _, row in rows], getattr(Delivery, name))
    return rows_affected(session.execute(
        update(Delivery)
        .where(Delivery.id.in_(ids), Delivery.claim_token == claim_token,
               Delivery.status == DeliveryStatus.SENDING.value)
        .values(**values)
        .execution_options(synchronize_session=False)
    ))


def record_outcomes(
    session: Session,
    claim_token: uuid.UUID,
    results: Sequence[tuple[ClaimedDelivery, Outcome]],
    now: datetime,
    policy: RetryPolicy,
) -> int:
    """Write a chunk's outcomes; returns how many were written.

    One UPDATE for every delivery of the chunk, conditional on the claim token,
    so a worker whose lease ran out and whose deliveries were claimed again
    cannot overwrite the newer claim's outcome. Dead devices are disabled in one
    statement (only if their token is still the one that failed), then the
    notifications' statuses are refreshed.
    """
    if not results:
        return 0
    results = [(claimed, outcome if isinstance(outcome, Outcome) else Outcome.retry("the adapter gave no outcome"))
               for claimed, outcome in results]
    rows = [(claimed.delivery_id, _row_values(claimed, outcome, now, policy)) for claimed, outcome in results]
    if session.get_bind().dialect.name == "postgresql":
        written_count = rows_affected(session.execute(
            _WRITE_OUTCOMES_PG,
            {"now": now, "token": str(claim_token), "ids": [str(delivery_id) for delivery_id, _ in rows],
             **{name: [values.get(name) for _, values in rows] for name in _OUTCOME_COLUMNS}},
        ))
    else:
        written_count = _write_outcomes_portable(session, claim_token, rows, now)
    dead = [(claimed, outcome) for claimed, outcome in results if outcome.disable_device]
    if dead:
        disable_devices(session, [(c.device_id, c.token_hash, clean_text(o.reason, MAX_REASON_CHARS) or "dead token")
                                  for c, o in dead], now,
                        kinds={c.device_id: webhooks.DEAD_TOKEN if o.kind == OutcomeKind.DEAD_TOKEN
                               else webhooks.EGRESS_REFUSED for c, o in dead})
    truncated = {claimed.notification_id for claimed, outcome in results if outcome.truncated}
    refresh_statuses(session, {claimed.notification_id for claimed, _ in results}, now, truncated=truncated)
    return written_count


def disable_devices(
    session: Session, devices: Sequence[tuple[uuid.UUID, str, str]], now: datetime,
    *, kinds: Mapping[uuid.UUID, str] | None = None,
) -> int:
    """Disable devices whose tokens a vendor declared dead, in one statement.

    Each is conditional on the token still being the one that failed: a device
    re-registered meanwhile with a new token stays active. Each device disabled
    emits ``device.disabled`` (reason from ``kinds``, default dead token) to its
    app's webhook, if it has one.
    """
    if not devices:
        return 0
    disabled = session.execute(
        update(Device)
        .where(
            tuple_(Device.id, Device.token_hash).in_([(device_id, token_hash) for device_id, token_hash, _ in devices]),
            Device.disabled_at.is_(None),
        )
        .values(disabled_at=now, disabled_reason=case(*((Device.id == device_id, reason) for device_id, _, reason in devices)))
        .returning(Device.id, Device.app_id, Device.user_id, Device.platform, Device.disabled_reason,
                   webhooks.has_webhook(Device.app_id))
        .execution_options(synchronize_session=False)
    ).all()
    kinds = kinds or {}
    webhooks.emit_devices_disabled(
        session, [(row[0], row[1], row[2], row[3], kinds.get(row[0], webhooks.DEAD_TOKEN), row[4])
                  for row in disabled if row[5]],
        now, subscribed={row[1] for row in disabled if row[5]},
    )
    return len(disabled)


def disable_device(session: Session, device_id: uuid.UUID, token_hash: str, reason: str, now: datetime) -> bool:
    """Disable one device whose token was declared dead (see :func:`disable_devices`)."""
    return bool(disable_devices(session, [(device_id, token_hash, reason)], now))


def _status_from_deliveries() -> Any:
    """The SQL form of :func:`aggregate_status`, correlated to the notification being updated."""
    d = aliased(Delivery)

    def count_of(*statuses: str) -> Any:
        return func.sum(case((d.status.in_(statuses), 1), else_=0))

    total, sent = func.count(), count_of(DeliveryStatus.SENT.value)
    return (
        select(
            case(
                (count_of(*OPEN) > 0, NotificationStatus.SENDING.value),
                (sent == total, NotificationStatus.DELIVERED.value),
                (sent > 0, NotificationStatus.PARTIALLY_DELIVERED.value),
                (count_of(DeliveryStatus.EXPIRED.value) == total, NotificationStatus.EXPIRED.value),
                else_=NotificationStatus.FAILED.value,
            )
        )
        .where(d.notification_id == Notification.id)
        .scalar_subquery()
    )


def refresh_statuses(
    session: Session, notification_ids: Collection[uuid.UUID], now: datetime, *, truncated: Collection[uuid.UUID] = ()
) -> None:
    """Recompute notification statuses from their deliveries: two statements for any number.

    The notification rows are locked first (in id order, so concurrent workers
    cannot deadlock); the UPDATE that follows runs on a snapshot taken after the
    lock, so it counts every committed outcome of a concurrent worker and the
    last writer always writes the final status. Notifications without
    deliveries keep the status fan-out gave them. Broadcasts among them whose
    last delivery just closed complete (:mod:`shared.broadcast_status`).
    """
    ids = sorted(set(notification_ids))
    if not ids:
        return
    locked = session.execute(
        select(Notification.id, Notification.status, Notification.user_id).where(Notification.id.in_(ids))
        .order_by(Notification.id).with_for_update()
    ).all()
    before: dict[uuid.UUID, str] = {notification_id: status for notification_id, status, _ in locked}
    # A broadcast's message (no user) has no status of its own to recount per chunk (its deliveries
    # may be 100,000): it is checked for completion instead, under the same lock.
    broadcasts = [notification_id for notification_id, _, user_id in locked if user_id is None]
    values: dict[str, Any] = {"status": _status_from_deliveries(), "updated_at": now}
    if truncated:
        values["truncated"] = case((Notification.id.in_(sorted(truncated)), True), else_=Notification.truncated)
    after = session.execute(
        update(Notification)
        .where(Notification.id.in_(ids), Notification.user_id.is_not(None),
               exists().where(Delivery.notification_id == Notification.id))
        .values(**values)
        .returning(Notification.id, Notification.app_id, Notification.user_id, Notification.status,
                   webhooks.has_webhook(Notification.app_id))
        .execution_options(synchronize_session=False)
    ).all()
    # Final now and not before: notification.completed, once, for apps with a webhook (no statement otherwise).
    completed = [(row[0], row[1], row[2], row[3]) for row in after
                 if row[4] and row[3] in FINAL_STATUSES and before.get(row[0]) not in FINAL_STATUSES]
    webhooks.emit_notifications_completed(session, completed, now)
    complete_broadcasts(session, broadcasts, now)


FINAL_STATUSES = frozenset(status.value for status in NotificationStatus) - {
    NotificationStatus.QUEUED.value, NotificationStatus.SENDING.value, NotificationStatus.SCHEDULED.value,
    NotificationStatus.CANCELLED.value,
}


def stale_queued_notifications(
    session: Session, now: datetime, older_than_seconds: int, limit: int = 1000, *, lost_before: datetime | None = None
) -> list[uuid.UUID]:
    """Notifications committed but never fanned out (their enqueue was lost)."""
    # The sweep passes its cutoff for the fan-out queue (shared/backlog.py: lost, not merely
    # waiting behind others); each notification returned is stamped, so it counts as enqueued
    # again from now and the next sweep leaves it alone while it waits in the queue.
    cutoff = lost_before if lost_before is not None else now - timedelta(seconds=older_than_seconds)
    ids = list(
        session.scalars(
            select(Notification.id)
            .where(
                Notification.status == NotificationStatus.QUEUED.value,
                Notification.fanned_out_at.is_(None),
                Notification.updated_at < cutoff,
            )
            .order_by(Notification.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    if ids:
        session.execute(update(Notification).where(Notification.id.in_(ids)).values(updated_at=now)
                        .execution_options(synchronize_session=False))
    return ids


# Deliveries released per kind and per run, in chunks: the sweep (per kind) and the retry tick
# never hold more than this many in memory or publish more than this many chunks at once;
# what is beyond it waits for the next run, oldest first.
RELEASE_CHUNKS_PER_RUN = 100


def release_limit(chunk_size: int) -> int:
    """Deliveries one run releases at most, per kind: :data:`RELEASE_CHUNKS_PER_RUN` chunks."""
    return chunk_size * RELEASE_CHUNKS_PER_RUN


def _release(session: Session, due: Any, oldest_first: Any, now: datetime, limit: int) -> list[Any]:
    """Make up to ``limit`` deliveries matching ``due`` pending again, oldest first; their (platform, app_id, id).

    One statement on PostgreSQL. Rows are picked with ``FOR UPDATE SKIP LOCKED``
    (a claim holding them is left to finish) in a materialized CTE, so the LIMIT
    is run once (see :func:`shared.services.scheduled.release_due`); the UPDATE
    re-checks ``due`` and returns each row's app from the joined notification.
    SQLite (``make run``) cannot return a joined column: one SELECT follows there.
    Touching ``updated_at`` marks them enqueued from now.
    """
    picked = (
        select(Delivery.id)
        .where(due)
        .order_by(oldest_first, Delivery.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("due")
        .prefix_with("MATERIALIZED")
    )
    statement = (
        update(Delivery)
        .where(Delivery.id == picked.c.id, due)
        .values(status=DeliveryStatus.PENDING.value, next_attempt_at=None, claimed_at=None, claim_token=None,
                updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if session.get_bind().dialect.name == "postgresql":
        return list(session.execute(
            statement.where(Notification.id == Delivery.notification_id)
            .returning(Delivery.platform, Notification.app_id, Delivery.id)
        ))
    rows = session.execute(statement.returning(Delivery.platform, Delivery.notification_id, Delivery.id)).all()
    if not rows:
        return []
    apps = dict(session.execute(
        select(Notification.id, Notification.app_id).where(Notification.id.in_({r[1] for r in rows}))
    ).all())
    return [(platform, apps[notification_id], delivery_id) for platform, notification_id, delivery_id in rows]


def _due_retries(now: datetime) -> Any:
    return and_(Delivery.status == DeliveryStatus.RETRYING.value, Delivery.next_attempt_at <= now)


def release_due_retries(session: Session, now: datetime, chunk_size: int, limit: int | None = None) -> list[Chunk]:
    """Make retries whose ``next_attempt_at`` has come pending; return them in chunks, to enqueue after commit.

    Run by the scheduler every PUSHQ_SCHEDULE_INTERVAL, so a retry goes out within
    about a second of its time rather than at the next sweep. Only ``retrying``
    rows are touched: a released retry is pending and never released again by this
    tick, however long it then waits in a deep queue. One statement (PostgreSQL), at most
    ``limit`` (default :func:`release_limit`) deliveries, the longest due first,
    along the (status, next_attempt_at) index.
    """
    limit = release_limit(chunk_size) if limit is None else limit
    return chunked(_release(session, _due_retries(now), Delivery.next_attempt_at, now, limit), chunk_size)


def release_due_deliveries(
    session: Session, now: datetime, stale_pending_seconds: int, lease_seconds: int, chunk_size: int,
    *, lost_before: Mapping[str, datetime] | None = None, limit: int | None = None,
) -> list[Chunk]:
    """Make due work pending again and return it in chunks, to be enqueued after commit.

    Due: retries whose time has come (normally released by :func:`release_due_retries`
    already; the sweep is the safety net), pending deliveries whose enqueue was lost
    (untouched for ``stale_pending_seconds``), and claims whose lease ran out
    (their worker died mid-send). Touching ``updated_at`` keeps the next sweep
    from enqueueing the same delivery again while it waits in the queue.
    ``lost_before`` (per platform, from the sweep's look at each queue: see
    shared/backlog.py) narrows "untouched" to "lost": a pending delivery still
    waiting its turn in a deep queue is left alone.

    Each kind releases at most ``limit`` deliveries per run (default
    :func:`release_limit`), the longest due first; the next sweep takes the rest.
    """
    limit = release_limit(chunk_size) if limit is None else limit
    stale_pending: Any = now - timedelta(seconds=stale_pending_seconds)
    if lost_before:
        stale_pending = case(
            *((Delivery.platform == platform, literal(cutoff, Delivery.updated_at.type))
              for platform, cutoff in sorted(lost_before.items())),
            else_=literal(stale_pending, Delivery.updated_at.type),
        )
    # One bounded statement per kind, each ordered by the time it became due.
    due_kinds = (
        (_due_retries(now), Delivery.next_attempt_at),
        (and_(Delivery.status == DeliveryStatus.PENDING.value, Delivery.updated_at < stale_pending),
         Delivery.updated_at),
        (and_(Delivery.status == DeliveryStatus.SENDING.value,
              Delivery.claimed_at < now - timedelta(seconds=lease_seconds)),
         Delivery.claimed_at),
    )
    return chunked([row for due, oldest_first in due_kinds for row in _release(session, due, oldest_first, now, limit)],
                   chunk_size)
