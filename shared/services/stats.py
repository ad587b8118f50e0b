"""Read-only figures for operators: what the status page at ``/admin`` shows.

Plain functions over a session, so the page (and anything else: a CLI, a
report) reads the same numbers without SQL of its own. Each figure is one
grouped query over every app, not one query per app, so the page costs the
same few statements however many apps there are; only the recent
notifications are read per app (a short indexed scan each).

Time windows are bounded by ``notifications.created_at`` (indexed per app)
so no figure scans the whole history: deliveries are counted for
notifications created in the last day.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Integer, case, cast, func, select
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.sql.elements import ColumnElement

from shared.models import (
    OPEN_DELIVERY_STATUSES,
    App,
    Delivery,
    DeliveryStatus,
    Device,
    Notification,
    NotificationStatus,
)
from shared.platforms import PLATFORMS
from shared.services.outcome_stats import ReceiptRates, WebhookStatus, receipt_rates, webhook_status

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
#: The vendor behind each platform, as the page names them.
VENDORS = {name: spec.vendor for name, spec in PLATFORMS.items()}
_FINAL_DELIVERY_STATUSES = tuple(s.value for s in DeliveryStatus if s not in OPEN_DELIVERY_STATUSES)


class QuotaReader(Protocol):
    """What the overview needs of :class:`shared.guards.DailyQuota`: today's count, read only."""

    def used(self, app_id: uuid.UUID, now: datetime) -> int: ...


@dataclass(frozen=True)
class StatusCounts:
    """Notifications created in the last hour and the last day, per status."""

    last_hour: dict[str, int] = field(default_factory=dict)
    last_day: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PlatformDevices:
    active: int = 0
    disabled: int = 0


@dataclass(frozen=True)
class VendorRate:
    """One vendor's deliveries finished in the last ``minutes``: sent per minute, and every final outcome."""

    vendor: str
    sent_per_minute: list[int]  # oldest minute first; the last entry is the current minute
    outcomes: dict[str, int]

    @property
    def finished(self) -> int:
        return sum(self.outcomes.values())

    @property
    def success_rate(self) -> float | None:
        """Share of finished deliveries that were sent (None: nothing finished)."""
        return self.outcomes.get(DeliveryStatus.SENT.value, 0) / self.finished if self.finished else None


@dataclass(frozen=True)
class QuotaUsage:
    used: int
    limit: int


@dataclass
class AppStatus:
    """Everything the status page shows for one app."""

    app_id: uuid.UUID
    name: str
    notifications: StatusCounts
    devices: dict[str, PlatformDevices]
    quota: QuotaUsage
    rates: list[VendorRate]
    recent: list[Notification]
    webhook: WebhookStatus | None = None
    receipts: ReceiptRates = field(default_factory=ReceiptRates)


def notification_status_order() -> list[str]:
    """Notification statuses in lifecycle order (the page's row order)."""
    return [status.value for status in NotificationStatus]


def notification_counts(session: Session, now: datetime) -> dict[uuid.UUID, StatusCounts]:
    """Per app: notifications created in the last hour and the last day, by status."""
    hour_ago = now - HOUR
    rows = session.execute(
        select(
            Notification.app_id,
            Notification.status,
            func.count(),
            func.sum(case((Notification.created_at >= hour_ago, 1), else_=0)),
        )
        .where(Notification.created_at >= now - DAY)
        .group_by(Notification.app_id, Notification.status)
    )
    counts: dict[uuid.UUID, StatusCounts] = defaultdict(StatusCounts)
    for app_id, status, day, hour in rows:
        entry = counts[app_id]
        entry.last_day[status] = int(day)
        if hour:
            entry.last_hour[status] = int(hour)
    return dict(counts)


def devices_by_platform(session: Session) -> dict[uuid.UUID, dict[str, PlatformDevices]]:
    """Per app and platform: active and disabled devices."""
    rows = session.execute(
        select(
            Device.app_id,
            Device.platform,
            func.sum(case((Device.disabled_at.is_(None), 1), else_=0)),
            func.sum(case((Device.disabled_at.is_not(None), 1), else_=0)),
        ).group_by(Device.app_id, Device.platform)
    )
    result: dict[uuid.UUID, dict[str, PlatformDevices]] = defaultdict(dict)
    for app_id, platform, active, disabled in rows:
        result[app_id][platform] = PlatformDevices(active=int(active or 0), disabled=int(disabled or 0))
    return dict(result)


def _epoch_minute(session: Session, column: ColumnElement[Any]) -> ColumnElement[Any]:
    """Minutes since the epoch of a timestamp column, computed by the database (PostgreSQL or SQLite)."""
    if session.get_bind().dialect.name == "postgresql":
        return func.floor(func.extract("epoch", column) / 60)
    return cast(func.strftime("%s", column), Integer) // 60


def delivery_rates(session: Session, now: datetime, minutes: int = 60) -> dict[uuid.UUID, list[VendorRate]]:
    """Per app and vendor: deliveries finished in the last ``minutes``, per minute and by outcome.

    A delivery counts at ``sent_at`` when sent, else at its last update (when it
    failed, expired…); only deliveries of notifications created in the last day
    are looked at (retries end well within that).
    """
    finished_at = func.coalesce(Delivery.sent_at, Delivery.updated_at)
    since = now - timedelta(minutes=minutes)
    minute = _epoch_minute(session, finished_at)
    rows = session.execute(
        select(Notification.app_id, Delivery.platform, Delivery.status, minute, func.count())
        .join(Notification, Notification.id == Delivery.notification_id)
        .where(
            Notification.created_at >= now - DAY,
            Delivery.status.in_(_FINAL_DELIVERY_STATUSES),
            finished_at >= since,
        )
        .group_by(Notification.app_id, Delivery.platform, Delivery.status, minute)
    )
    last_minute = int(now.timestamp() // 60)
    per_minute: dict[tuple[uuid.UUID, str], list[int]] = {}
    outcomes: dict[tuple[uuid.UUID, str], dict[str, int]] = {}
    for app_id, platform, status, epoch_minute, count in rows:
        key = (app_id, platform)
        series = per_minute.setdefault(key, [0] * minutes)
        tally = outcomes.setdefault(key, {})
        tally[status] = tally.get(status, 0) + int(count)
        index = minutes - 1 - (last_minute - int(epoch_minute))
        if status == DeliveryStatus.SENT.value and 0 <= index < minutes:
            series[index] += int(count)
    result: dict[uuid.UUID, list[VendorRate]] = defaultdict(list)
    for (app_id, platform), series in sorted(per_minute.items(), key=lambda item: (str(item[0][0]), item[0][1])):
        result[app_id].append(VendorRate(VENDORS.get(platform, platform), series, outcomes[(app_id, platform)]))
    return dict(result)


def recent_notifications(session: Session, app_id: uuid.UUID, limit: int = 10) -> list[Notification]:
    """The app's newest notifications with their deliveries (one outcome per device)."""
    return list(
        session.scalars(
            select(Notification)
            .where(Notification.app_id == app_id)
            .order_by(Notification.created_at.desc(), Notification.id.desc())
            .limit(limit)
            .options(selectinload(Notification.deliveries))
        )
    )


def app_overview(
    session: Session, quota: QuotaReader, default_daily_quota: int, now: datetime, *, recent: int = 10
) -> list[AppStatus]:
    """Every app's figures, by app name; reads only (no credential is decrypted: apps are read by column)."""
    counts = notification_counts(session, now)
    devices = devices_by_platform(session)
    rates = delivery_rates(session, now)
    webhooks, receipts = webhook_status(session), receipt_rates(session, now)
    apps = session.execute(select(App.id, App.name, App.daily_quota).order_by(App.name, App.id)).all()
    return [
        AppStatus(
            app_id=app_id,
            name=name,
            notifications=counts.get(app_id, StatusCounts()),
            devices=devices.get(app_id, {}),
            quota=QuotaUsage(used=quota.used(app_id, now), limit=default_daily_quota if daily_quota is None else daily_quota),
            rates=rates.get(app_id, []),
            recent=recent_notifications(session, app_id, recent),
            webhook=webhooks.get(app_id),
            receipts=receipts.get(app_id, ReceiptRates()),
        )
        for app_id, name, daily_quota in apps
    ]
