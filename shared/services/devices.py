"""Device registration and removal."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db_upsert import dialect_insert
from shared.errors import DeviceNotFound
from shared.guards import RegistrationLimiter
from shared.pagination import Page, keyset_page
from shared.models import Device, utcnow
from shared.services.apps import get_app
from shared.tokens import canonical_token

UNREGISTERED = "unregistered"


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
    limiter: RegistrationLimiter | None = None,
) -> Registration:
    """Register (or refresh) a device; deduplicated on (app_id, token_hash).

    One atomic INSERT ... ON CONFLICT DO UPDATE, so two registrations of the same
    token racing each other both get the same device id. Re-registering refreshes
    ``last_seen_at``, re-enables a disabled device, stores the newest token form
    (refreshed Web Push keys) and moves the device to the registering user.
    """
    get_app(session, app_id)
    token, token_hash = canonical_token(platform, push_token, allow_http=allow_http_endpoints)
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
        },
    ).returning(Device.id)
    device_id = session.execute(upsert).scalar_one()
    return Registration(device_id=device_id, created=device_id == new_id)


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
