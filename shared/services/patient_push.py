"""`POST /v1/push/send`: fan a Web Push out to a patient's subscriptions and report first attempts.

The send goes through the same notification pipeline as every other send; this
module only resolves the patient, snapshots which subscriptions will be tried,
and reads back what the push services answered to the first attempt.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.clock import utcnow
from shared.guards import QuotaDecision, QuotaPolicy
from shared.message_options import NO_OPTIONS, Options
from shared.models import Delivery, DeliveryStatus, Device, Platform
from shared.outcome_bus import WAIT_SLOT_GRACE_SECONDS, wait_for_outcomes, wait_slot
from shared.services.patients import resolve_person
from shared.services.sends import Enqueue, SendRequest, create_notifications

log = logging.getLogger(__name__)

SENT, REJECTED, PENDING = "sent", "rejected", "pending"
_PENDING_STATUSES = {DeliveryStatus.PENDING.value, DeliveryStatus.SENDING.value, DeliveryStatus.RETRYING.value}


@dataclass(frozen=True)
class StartedSend:
    app_id: uuid.UUID
    notification_id: uuid.UUID
    patient_id: uuid.UUID
    person_id: uuid.UUID
    subscription_ids: list[uuid.UUID]
    quota: QuotaDecision | None = None
    scheduled: bool = False  # a future send_at: nothing to wait for now


@dataclass(frozen=True)
class SubscriptionResult:
    subscription_id: uuid.UUID
    status: str  # sent | rejected | pending
    vendor_message_id: str  # "" unless sent


def start_patient_send(
    session: Session,
    app_id: uuid.UUID,
    patient_id: uuid.UUID,
    *,
    title: str,
    body: str,
    url: str | None,
    default_ttl: int,
    send_at: datetime | None = None,
    options: Options = NO_OPTIONS,
    enqueue: Enqueue,
    quota: QuotaPolicy | None = None,
    request_id: str | None = None,
) -> StartedSend:
    """Resolve the patient, create a web-only notification for its person, enqueue after commit (or schedule it)."""
    person_id = resolve_person(session, app_id, patient_id)
    subscription_ids = list(
        session.scalars(
            select(Device.id)
            .where(
                Device.app_id == app_id,
                Device.user_id == person_id,
                Device.platform == Platform.WEB.value,
                Device.disabled_at.is_(None),
            )
            .order_by(Device.created_at, Device.id)
        )
    )
    request = SendRequest(user_id=person_id, title=title, body=body, url=url, platform=Platform.WEB.value,
                          send_at=send_at, options=options)
    accepted = create_notifications(
        session,
        app_id,
        [request],
        default_ttl=default_ttl,
        enqueue=enqueue,
        require_enrollment=False,  # the identity mapping is what authorizes this send
        quota=quota,
        notify_outcomes=True,  # this call waits for the first outcomes
        request_id=request_id,
    )
    (notification_id,) = accepted.notification_ids
    return StartedSend(app_id, notification_id, patient_id, person_id, subscription_ids, accepted.quota,
                       scheduled=request.scheduled(utcnow()))


def first_attempt_results(session: Session, started: StartedSend) -> list[SubscriptionResult]:
    """Each subscription's outcome so far: a retry under way or no attempt yet is ``pending``."""
    rows = {
        device_id: (status, vendor_message_id)
        for device_id, status, vendor_message_id in session.execute(
            select(Delivery.device_id, Delivery.status, Delivery.vendor_message_id).where(
                Delivery.notification_id == started.notification_id
            )
        )
    }
    results = []
    for subscription_id in started.subscription_ids:
        status, vendor_message_id = rows.get(subscription_id, (DeliveryStatus.PENDING.value, None))
        if status == DeliveryStatus.SENT.value:
            results.append(SubscriptionResult(subscription_id, SENT, vendor_message_id or ""))
        elif status in _PENDING_STATUSES:
            results.append(SubscriptionResult(subscription_id, PENDING, ""))
        else:
            results.append(SubscriptionResult(subscription_id, REJECTED, ""))
    return results


def wait_for_first_attempts(
    session_factory: sessionmaker[Session],
    bus: redis.Redis,
    started: StartedSend,
    deadline_seconds: float,
    *,
    max_waits_per_app: int,
) -> list[SubscriptionResult]:
    """Each subscription's first answer, waiting for the workers' announcements up to the deadline.

    Beyond ``max_waits_per_app`` concurrent waits of the app the answer comes at
    once, with whatever is known (``pending`` for the rest). Never raises: the send
    is committed when this runs, so if the wait fails (Redis gone, the database
    blipping) the answer is what is known so far, ``pending`` for the rest; a
    caller told otherwise would send again and the patient get it twice.
    """
    results = [SubscriptionResult(subscription_id, PENDING, "") for subscription_id in started.subscription_ids]

    def answered() -> bool:
        nonlocal results
        with session_factory() as session:
            results = first_attempt_results(session, started)
        return all(result.status != PENDING for result in results)

    try:
        with wait_slot(bus, started.app_id, max_waits_per_app, deadline_seconds + WAIT_SLOT_GRACE_SECONDS) as may_wait:
            if may_wait:
                wait_for_outcomes(bus, started.notification_id, answered, deadline_seconds)
            else:
                answered()
    except Exception as exc:
        log.warning("waiting for the first attempts of notification %s failed (%s): answering with what is known",
                    started.notification_id, type(exc).__name__)
        try:
            answered()  # the outcomes are in the database, whatever happened to Redis
        except Exception as again:
            log.warning("cannot read the first attempts of notification %s (%s)", started.notification_id,
                        type(again).__name__)
    return results
