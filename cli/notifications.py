"""``pushq notifications``: look at one notification across apps, and send its failed deliveries again."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import click

from cli.common import CONTEXT_SETTINGS, cli_session, dispatcher, load_settings, service_errors
from shared.clock import utcnow
from shared.models import Notification


@click.group(context_settings=CONTEXT_SETTINGS)
def notifications() -> None:
    """Notifications of any app: show one with its deliveries, re-drive its failed ones."""


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def notification_document(notification: Notification) -> dict[str, Any]:
    """The notification and one line per delivery, as an operator reads them (no device tokens)."""
    return {
        "id": str(notification.id), "app_id": str(notification.app_id), "user_id": str(notification.user_id),
        "status": notification.status, "title": notification.title, "priority": notification.priority,
        "ttl": notification.ttl, "created_at": _iso(notification.created_at), "send_at": _iso(notification.send_at),
        "expires_at": _iso(notification.expires_at), "fanned_out_at": _iso(notification.fanned_out_at),
        "request_id": notification.request_id, "truncated": notification.truncated,
        "deliveries": [
            {"id": str(d.id), "device_id": str(d.device_id), "platform": d.platform, "status": d.status,
             "attempts": d.attempts, "last_error": d.last_error, "vendor_message_id": d.vendor_message_id,
             "next_attempt_at": _iso(d.next_attempt_at), "sent_at": _iso(d.sent_at), "updated_at": _iso(d.updated_at)}
            for d in notification.deliveries
        ],
    }


@notifications.command("show")
@click.argument("notification_id", type=click.UUID)
@service_errors
def show_command(notification_id: uuid.UUID) -> None:
    """Print NOTIFICATION_ID (of any app) with every delivery's status, attempts and last error, as JSON."""
    from shared.services.operations import notification_with_deliveries

    with cli_session() as session:
        document = notification_document(notification_with_deliveries(session, notification_id))
    click.echo(json.dumps(document, indent=2))


@notifications.command("redrive")
@click.argument("notification_id", type=click.UUID)
@service_errors
def redrive_command(notification_id: uuid.UUID) -> None:
    """Send NOTIFICATION_ID's failed and expired deliveries again, with fresh attempts.

    Only while the notification has not expired (its TTL). Rejected and
    dead-token deliveries are the vendor's final answer and stay as they are.
    Needs REDIS_URL (the workers' broker): the deliveries are enqueued after the
    commit, and the sweep picks them up should that enqueue be lost.
    """
    from shared.services.operations import redrive

    settings = load_settings()
    enqueue = dispatcher(settings)
    with cli_session(settings) as session:
        from shared.db import after_commit

        chunks = redrive(session, notification_id, utcnow(), settings.delivery_chunk_size)
        after_commit(session, lambda: enqueue.enqueue_chunks(chunks))
    click.echo(f"re-driven {sum(len(chunk.delivery_ids) for chunk in chunks)} deliveries")
