"""A notification's status from its deliveries' statuses: the rule, in Python.

Its SQL form is :func:`shared.pipeline.status._status_from_deliveries`; broadcasts apply
it once, to their final counts (:mod:`shared.broadcast_status`).
"""

from __future__ import annotations

from shared.models import OPEN_DELIVERY_STATUSES, DeliveryStatus, NotificationStatus

OPEN = [status.value for status in OPEN_DELIVERY_STATUSES]


def aggregate_status(counts: dict[str, int]) -> str:
    """A notification's status from its deliveries' status counts (the rule :func:`shared.pipeline.status.refresh_statuses` runs in SQL)."""
    total = sum(counts.values())
    if total == 0:
        return NotificationStatus.NO_DEVICES.value
    if any(counts.get(status, 0) for status in OPEN):
        return NotificationStatus.SENDING.value
    sent = counts.get(DeliveryStatus.SENT.value, 0)
    if sent == total:
        return NotificationStatus.DELIVERED.value
    if sent:
        return NotificationStatus.PARTIALLY_DELIVERED.value
    if counts.get(DeliveryStatus.EXPIRED.value, 0) == total:
        return NotificationStatus.EXPIRED.value
    return NotificationStatus.FAILED.value
