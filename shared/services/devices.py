"""Device registration and removal."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, or_, select, update
from sqlalchemy.orm import Session

from shared.clock import utcnow
from shared.db_upsert import dialect_insert
from shared.errors import AppNotFound, DeviceNotFound
from shared.guards import RegistrationLimiter
from shared.models import Device, Enrollment
from shared.pagination import Page, keyset_page
from shared.services import webhooks
from shared.tokens import canonical_token

UNREGISTERED = "unregistered"
REPLACED_DEVICE_LIMIT = "replaced: device limit"


@dataclass(frozen=True)
class Registration:
    device_id: uuid.UUID
    created: bool


def register_device(
    session: Session,
    *,
    app_id: uuid.UUID,
    user_id: uuid.UUID,
    platform: str,
    push_token: str,
    allow_http_endpoints: bool = False,
    extra_push_hosts: Iterable[str] = (),
    max_devices: int | None = None,
    limiter: RegistrationLimiter | None = None,
) -> Registration:
    """Register (or refresh) a device; deduplicated on (app_id, token_hash).

    Only a user enrolled in the app may register into it: anyone else gets
    :class:`AppNotFound`, the same answer as for an app that does not exist, so
    the check tells nothing about which apps exist (OWASP API1). A Web Push
    endpoint must pass the egress rules (``allow_http_endpoints`` and
    ``extra_push_hosts`` are PUSHQ_ALLOW_HTTP_ENDPOINTS and PUSHQ_WEBPUSH_EXTRA_HOSTS).

    One atomic INSERT ... ON CONFLICT DO UPDATE, so two registrations of the same
    token racing each other both get the same device id. Re-registering refreshes
    ``last_seen_at``, re-enables a disabled device, stores the newest token form
    (refreshed Web Push keys) and moves the device to the registering user: only
    someone presenting the token itself can move a device. The conflict target
    includes ``app_id``, so a token registered into another app is another device,
    never this one moved.

    A move to another user or a re-enable moves the device's ``generation`` on, in
    the same statement: deliveries fanned out to what the device was before (the
    previous owner's messages, or messages of before it was disabled) are then
    closed unpushed at their claim. The same user registering the same token again
    (a refresh, or refreshed Web Push keys of the same subscription) keeps the
    generation, so that user's pending messages still go out, with the newest keys.

    ``max_devices`` (PUSHQ_MAX_DEVICES_PER_USER; None: no cap) bounds the user's
    active devices in the app: beyond it the least recently seen ones are disabled
    (OWASP API4: a user cannot make one send fan out without bound).
    """
    _lock_enrollment(session, app_id, user_id)
    token, token_hash = canonical_token(
        platform, push_token, allow_http=allow_http_endpoints, extra_hosts=extra_push_hosts
    )
    now = utcnow()
    if limiter is not None:
        limiter.hit(user_id, now)  # re-registering counts too
    new_id = uuid.uuid4()
    insert = dialect_insert(session, Device).values(
        id=new_id,
        app_id=app_id,
        user_id=user_id,
        platform=platform,
        token=token,
        token_hash=token_hash,
        created_at=now,
        last_seen_at=now,
    )
    upsert = insert.on_conflict_do_update(
        index_elements=["app_id", "token_hash"],
        set_={
            "last_seen_at": now,
            "user_id": insert.excluded.user_id,
            "token": insert.excluded.token,
            "platform": insert.excluded.platform,
            "disabled_at": None,
            "disabled_reason": None,
            # Every value here is computed from the row as it was before this statement.
            "generation": case(
                (or_(Device.user_id != insert.excluded.user_id, Device.disabled_at.is_not(None)),
                 Device.generation + 1),
                else_=Device.generation,
            ),
        },
    ).returning(Device.id)
    device_id = session.execute(upsert).scalar_one()
    if max_devices is not None:
        disable_devices_over_limit(session, app_id, user_id, keep=device_id, max_devices=max_devices, now=now)
    return Registration(device_id=device_id, created=device_id == new_id)


def _lock_enrollment(session: Session, app_id: uuid.UUID, user_id: uuid.UUID) -> None:
    """The user's enrollment in the app, locked until commit; :class:`AppNotFound` without one.

    The row lock serializes one user's registrations into one app (PostgreSQL;
    SQLite serializes writers anyway), so the device cap counts exactly even
    when registrations race.
    """
    enrolled = session.scalars(
        select(Enrollment.user_id)
        .where(Enrollment.app_id == app_id, Enrollment.user_id == user_id)
        .with_for_update()
    ).one_or_none()  # an enrollment implies its app (foreign key, deleted with the app)
    if enrolled is None:
        raise AppNotFound()


def disable_devices_over_limit(
    session: Session, app_id: uuid.UUID, user_id: uuid.UUID, *, keep: uuid.UUID, max_devices: int, now: datetime
) -> list[uuid.UUID]:
    """Disable the user's least recently seen active devices beyond ``max_devices`` (``keep`` stays); their ids."""
    others = session.scalars(
        select(Device.id)
        .where(Device.app_id == app_id, Device.user_id == user_id, Device.disabled_at.is_(None), Device.id != keep)
        .order_by(Device.last_seen_at.desc(), Device.id.desc())
    ).all()
    excess = list(others[max(max_devices - 1, 0):])
    if excess:
        disabled = session.execute(
            update(Device)
            .where(Device.id.in_(excess))
            .values(disabled_at=now, disabled_reason=REPLACED_DEVICE_LIMIT)
            .returning(Device.id, Device.platform, webhooks.has_webhook(Device.app_id))
            .execution_options(synchronize_session=False)
        ).all()
        webhooks.emit_devices_disabled(
            session, [(device_id, app_id, user_id, platform, webhooks.DEVICE_LIMIT, REPLACED_DEVICE_LIMIT)
                      for device_id, platform, subscribed in disabled if subscribed],
            now, subscribed={app_id},
        )
    return excess


def unregister_device(
    session: Session, device_id: uuid.UUID, *, app_id: uuid.UUID | None = None, user_id: uuid.UUID | None = None
) -> None:
    """Disable a device on behalf of its app (service caller) or its owner (user caller).

    A device of another app or user, or one already unregistered, is reported as
    not found: the caller learns nothing about devices it does not own.
    """
    query = select(Device).where(Device.id == device_id).with_for_update()
    if app_id is not None:
        query = query.where(Device.app_id == app_id)
    if user_id is not None:
        query = query.where(Device.user_id == user_id)
    device = session.scalars(query).one_or_none()
    if device is None or device.disabled_reason == UNREGISTERED:
        raise DeviceNotFound()
    device.disabled_at = utcnow()
    device.disabled_reason = UNREGISTERED


def list_devices(
    session: Session, app_id: uuid.UUID, *, limit: int, after: uuid.UUID | None = None, user_id: uuid.UUID | None = None
) -> Page[Device]:
    """The app's devices (never their tokens), ordered by id; optionally one user's."""
    query = select(Device).where(Device.app_id == app_id)
    if user_id is not None:
        query = query.where(Device.user_id == user_id)
    return keyset_page(session, query, Device.id, limit, after)
