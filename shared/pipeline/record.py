"""Step 3, outcomes: a chunk's vendor answers written in one statement, under the claim that pushed.

Dead devices are disabled in one statement and the notifications' statuses
refreshed (:mod:`shared.pipeline.status`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, literal, text, tuple_, update
from sqlalchemy.orm import Session

from shared.db import rows_affected
from shared.models import Delivery, DeliveryStatus, Device
from shared.outcomes import MAX_REASON_CHARS, MAX_VENDOR_ID_CHARS, Outcome, OutcomeKind, clean_text
from shared.pipeline.status import refresh_statuses
from shared.pipeline.values import ClaimedDelivery, RetryPolicy
from shared.services import webhooks

log = logging.getLogger(__name__)


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

