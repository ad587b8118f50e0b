"""The schema, as SQLAlchemy 2 typed ORM classes.

The database itself is built by Alembic (``migrations/``); a test checks that
these classes and the migrations never drift apart.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from shared.clock import utcnow
from shared.crypto import EncryptedText

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    PostgreSQL keeps the offset; SQLite (``make run``'s default) drops it, and
    comparing its naive values with aware ones would fail in the workers.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given; use shared.clock.utcnow()")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime}


class Platform(str, enum.Enum):
    WEB = "web"
    IOS = "ios"
    ANDROID = "android"


class NotificationStatus(str, enum.Enum):
    QUEUED = "queued"  # accepted, not yet fanned out
    SENDING = "sending"  # fanned out, some deliveries still open
    DELIVERED = "delivered"  # every delivery sent
    PARTIALLY_DELIVERED = "partially_delivered"
    FAILED = "failed"  # no delivery sent
    EXPIRED = "expired"  # ttl ran out before anything was sent
    NO_DEVICES = "no_devices"  # the user had no active device
    SCHEDULED = "scheduled"  # accepted with a send_at in the future; fanned out when due
    CANCELLED = "cancelled"  # a scheduled send cancelled before its time


class DeliveryStatus(str, enum.Enum):
    PENDING = "pending"  # waiting for a worker
    SENDING = "sending"  # claimed by a worker (lease in claimed_at)
    RETRYING = "retrying"  # transient failure; due again at next_attempt_at
    SENT = "sent"
    DEAD_TOKEN = "dead_token"  # vendor said the token is gone; device disabled
    REJECTED = "rejected"  # vendor refused this message for good
    FAILED = "failed"  # attempts exhausted
    EXPIRED = "expired"  # ttl ran out before a successful attempt
    UNSUPPORTED = "unsupported"  # no adapter for the device's platform
    CANCELLED = "cancelled"  # its broadcast was cancelled before it was pushed


OPEN_DELIVERY_STATUSES = (DeliveryStatus.PENDING, DeliveryStatus.SENDING, DeliveryStatus.RETRYING)


def _values(enum_cls: type[enum.Enum]) -> str:
    return ", ".join(f"'{member.value}'" for member in enum_cls)


class App(Base):
    """A tenant: a product whose users receive pushes, with its vendor credentials."""

    __tablename__ = "apps"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200))
    # Web Push VAPID key pair: private key as PEM, public key as the b64url
    # uncompressed point that browsers take as applicationServerKey.
    vapid_private_key: Mapped[str] = mapped_column(EncryptedText)  # encrypted at rest (shared.crypto)
    vapid_public_key: Mapped[str] = mapped_column(String(100))
    vapid_subject: Mapped[str] = mapped_column(String(255))
    apns_team_id: Mapped[str | None] = mapped_column(String(20))
    apns_key_id: Mapped[str | None] = mapped_column(String(20))
    apns_private_key: Mapped[str | None] = mapped_column(EncryptedText)
    apns_bundle_id: Mapped[str | None] = mapped_column(String(255))
    apns_use_sandbox: Mapped[bool] = mapped_column(Boolean, default=False)
    fcm_project_id: Mapped[str | None] = mapped_column(String(255))
    fcm_service_account: Mapped[str | None] = mapped_column(EncryptedText)
    # Notifications per UTC day (one per target user); None: PUSHQ_DEFAULT_DAILY_QUOTA.
    daily_quota: Mapped[int | None] = mapped_column(Integer)
    # Apple's critical-alerts entitlement granted to the app: only then may a send ask for interruption_level critical.
    apns_critical_alerts: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Moves whenever credentials change: workers key their per-process credential cache on it.
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class OAuthClient(Base):
    """A client-credentials client of an app: exchanges id + secret for a service JWT at /oauth/token."""

    __tablename__ = "oauth_clients"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    app_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    secret_hash: Mapped[str] = mapped_column(Text)  # never the secret itself
    scopes: Mapped[str] = mapped_column(String(255))  # space-separated
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()


class IdempotencyKey(Base):
    """The first response to a send made with an ``Idempotency-Key``, replayed for 24 h."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_created_at", "created_at"),)

    app_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer)
    response: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Enrollment(Base):
    """A user of an app: only enrolled users can be sent to."""

    __tablename__ = "enrollments"

    app_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Patient(Base):
    """A patient known to an app, and the person (user) whose devices receive the patient's pushes.

    ``person_id`` is None when the patient is known but its identity mapping was
    removed, so "no such patient" and "no mapping" can be told apart.
    """

    __tablename__ = "patients"

    app_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), primary_key=True)
    patient_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    person_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Device(Base):
    """One push destination of a user in an app (a browser subscription or a device token)."""

    __tablename__ = "devices"
    __table_args__ = (
        UniqueConstraint("app_id", "token_hash"),
        Index("ix_devices_app_id_user_id", "app_id", "user_id"),
        CheckConstraint(f"platform IN ({_values(Platform)})", name="platform"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    app_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    platform: Mapped[str] = mapped_column(String(16))
    token: Mapped[str] = mapped_column(EncryptedText)  # encrypted at rest (shared.crypto)
    token_hash: Mapped[str] = mapped_column(String(64))  # HMAC with PUSHQ_TOKEN_HASH_KEY: the lookup key
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column()
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    # Moves on by one whenever the device changes meaning: registered by another user, or
    # re-enabled after being disabled. A delivery keeps the generation it was fanned out to
    # and is pushed only while the device still has it (shared.pipeline.claim.claim_chunk).
    generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Notification(Base):
    """One message to one user of an app; fanned out to a delivery per active device.

    A broadcast's message is one notification without a user (``user_id`` None): its
    content is stored once and each recipient's delivery names the user it is for.
    """

    __tablename__ = "notifications"
    __table_args__ = (
        # Each index and the queries that read it (a row costs every index's entry: keep only these):
        # retention (services/housekeeping.delete_old_notifications: final status, created_at < cutoff) and the
        # sweep (delivery.stale_queued_notifications: status 'queued', oldest created_at first).
        Index("ix_notifications_status_created_at", "status", "created_at"),
        # An app's notifications newest first (GET /push/notifications, services/notifications: keyset pages).
        Index("ix_notifications_app_id_created_at", "app_id", "created_at"),
        # The scheduler's release of due scheduled sends (services/scheduled: status 'scheduled', send_at <= now).
        Index("ix_notifications_status_send_at", "status", "send_at"),
        CheckConstraint(f"status IN ({_values(NotificationStatus)})", name="status"),
        CheckConstraint("priority IN ('high', 'normal')", name="priority"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    app_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)  # None: a broadcast's message (shared.broadcast_fanout)
    title: Mapped[str] = mapped_column(String(256))
    body: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    ttl: Mapped[int] = mapped_column(Integer)
    priority: Mapped[str] = mapped_column(String(8), default="normal")
    collapse_key: Mapped[str | None] = mapped_column(String(64))
    badge: Mapped[int | None] = mapped_column(Integer)
    sound: Mapped[str | None] = mapped_column(String(255))
    url: Mapped[str | None] = mapped_column(Text)
    # Presentation options (shared.message_options.Options.as_json): NULL when the send used none.
    options: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Fan out only to devices of this platform (None: every platform).
    platform: Mapped[str | None] = mapped_column(String(16))
    # Set when a vendor's size limit forced the body to be shortened.
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    # A caller waits for the first outcomes (POST /v1/push/send): workers announce them on Redis.
    notify_outcomes: Mapped[bool] = mapped_column(Boolean, default=False)
    # The X-Request-Id of the request that created it: carried into task headers and log lines.
    request_id: Mapped[str | None] = mapped_column(String(128))
    # Fan out no earlier than this (None: at once); the scheduler releases it when due.
    send_at: Mapped[datetime | None] = mapped_column()
    expires_at: Mapped[datetime] = mapped_column()
    status: Mapped[str] = mapped_column(String(24), default=NotificationStatus.QUEUED.value)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # Set by the fan-out task; a queued notification without it after a while was
    # never picked up (lost enqueue) and is re-enqueued by the sweeper.
    fanned_out_at: Mapped[datetime | None] = mapped_column()

    deliveries: Mapped[list[Delivery]] = relationship(
        back_populates="notification", order_by="Delivery.created_at", lazy="raise"
    )


class Delivery(Base):
    """One notification to one device, with the outcome of every attempt."""

    __tablename__ = "deliveries"
    __table_args__ = (
        # Fan-out's ON CONFLICT DO NOTHING (running it twice makes no second delivery), a notification's
        # deliveries (GET /push/notifications/<id>, outcome stats) and ON DELETE CASCADE from notifications.
        UniqueConstraint("notification_id", "device_id"),
        # The claim (delivery.claim_chunk: pending, retrying when due, sending past its lease), the retry
        # tick and the sweep's release, and the backlog count (backlog.queued_deliveries: status 'pending').
        Index("ix_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        CheckConstraint(f"status IN ({_values(DeliveryStatus)})", name="status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    notification_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("notifications.id", ondelete="CASCADE"))
    device_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    platform: Mapped[str] = mapped_column(String(16))
    # A broadcast's recipient (the device's user at fan-out); None: the notification's user.
    user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # The device's generation when this delivery was created for the notification's user.
    device_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    vendor_message_id: Mapped[str | None] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column()
    claimed_at: Mapped[datetime | None] = mapped_column()
    # The claim (one per claimed chunk) holding this delivery; outcomes are written only under it.
    claim_token: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    sent_at: Mapped[datetime | None] = mapped_column()
    # Receipts from pushq's service worker (POST /push/receipts): first time shown, first click.
    displayed_at: Mapped[datetime | None] = mapped_column()
    clicked_at: Mapped[datetime | None] = mapped_column()
    clicked_action: Mapped[str | None] = mapped_column(String(64))  # the action button of that first click, if any
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    notification: Mapped[Notification] = relationship(back_populates="deliveries", lazy="raise")


class WebhookEndpoint(Base):
    """An app's outcome webhook: where events go and the Standard Webhooks secret(s) signing them.

    After a rotation the previous secret still signs (a second ``v1,`` signature)
    until ``previous_secret_expires_at``, so receivers can switch without a gap.
    """

    __tablename__ = "webhook_endpoints"

    app_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(EncryptedText)  # whsec_..., encrypted at rest (shared.crypto)
    previous_secret: Mapped[str | None] = mapped_column(EncryptedText)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column()
    last_attempt_at: Mapped[datetime | None] = mapped_column()
    last_success_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class WebhookEventStatus(str, enum.Enum):
    PENDING = "pending"  # waiting for its (next) attempt; claimed while claim_token is set
    DELIVERED = "delivered"  # the endpoint answered 2xx
    FAILED = "failed"  # gave up after PUSHQ_WEBHOOK_MAX_ATTEMPTS attempts


class WebhookEvent(Base):
    """One event for an app's webhook (the outbox): written in the transaction of the change it reports."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        Index("ix_webhook_events_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_webhook_events_app_id_created_at", "app_id", "created_at"),
        CheckConstraint(f"status IN ({_values(WebhookEventStatus)})", name="status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)  # the stable event id
    app_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=WebhookEventStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column()
    claimed_at: Mapped[datetime | None] = mapped_column()
    claim_token: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    last_attempt_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class UserTag(Base):
    """A tag of an enrolled user in an app: broadcasts select segments of users by their tags."""

    __tablename__ = "user_tags"
    __table_args__ = (
        ForeignKeyConstraint(["app_id", "user_id"], ["enrollments.app_id", "enrollments.user_id"], ondelete="CASCADE"),
        Index("ix_user_tags_app_id_tag_user_id", "app_id", "tag", "user_id"),
    )

    app_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)


class BroadcastStatus(str, enum.Enum):
    SCHEDULED = "scheduled"  # waits for its send_at
    SENDING = "sending"  # fanning out and delivering
    COMPLETED = "completed"  # fanned out, every delivery final
    CANCELLED = "cancelled"  # stopped: what was not pushed never will be


class Broadcast(Base):
    """One message to an audience of an app (everyone enrolled, or a tag segment), fanned out in pages.

    The message is one notification without a user (``notification_id``); every
    recipient device gets a delivery of it. The fan-out's keyset cursor over the
    audience's devices is committed with each page's deliveries, so a killed worker's
    successor resumes exactly where the last committed page ended.
    """

    __tablename__ = "broadcasts"
    __table_args__ = (
        Index("ix_broadcasts_app_id_created_at", "app_id", "created_at"),
        Index("ix_broadcasts_status_next_step_at", "status", "next_step_at"),
        CheckConstraint(f"status IN ({_values(BroadcastStatus)})", name="status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    app_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    notification_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("notifications.id", ondelete="CASCADE"), unique=True)
    # The audience: users having every tag of tags_all and at least one of tags_any (None: no condition),
    # devices of these platforms (None: every platform).
    tags_all: Mapped[list[str] | None] = mapped_column(JSON)
    tags_any: Mapped[list[str] | None] = mapped_column(JSON)
    platforms: Mapped[list[str] | None] = mapped_column(JSON)
    rate_per_minute: Mapped[int | None] = mapped_column(Integer)  # deliveries released per minute (None: no limit)
    audience_size: Mapped[int] = mapped_column(Integer)  # users in the audience at accept (what the quota took)
    status: Mapped[str] = mapped_column(String(16))
    send_at: Mapped[datetime | None] = mapped_column()
    request_id: Mapped[str | None] = mapped_column(String(128))
    # The fan-out's progress: the last (user_id, device_id) paged, deliveries created, when done.
    cursor_user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    cursor_device_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    deliveries_created: Mapped[int] = mapped_column(Integer, default=0)
    fanned_out_at: Mapped[datetime | None] = mapped_column()
    # When the next page is due, and the token of the one step task allowed to take it.
    next_step_at: Mapped[datetime | None] = mapped_column()
    step_token: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # Counts per delivery status, frozen when the broadcast ends.
    final_counts: Mapped[dict[str, int] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
