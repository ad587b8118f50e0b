"""``pushq webhooks``: an app's outcome webhook endpoint, its secret, its events and their attempts."""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict
from datetime import timedelta
from typing import Any

import click

from cli.common import CONTEXT_SETTINGS, cli_session, load_settings, service_errors


@click.group(context_settings=CONTEXT_SETTINGS)
def webhooks() -> None:
    """Outcome webhooks (Standard Webhooks): endpoint, secret rotation, events and attempts."""


def _echo(config: Any) -> None:
    values = {key: value.isoformat() if hasattr(value, "isoformat") else value
              for key, value in asdict(config).items() if not (key == "secret" and value is None)}
    click.echo(json.dumps(values, indent=2))


@webhooks.command("set")
@click.argument("app_id", type=click.UUID)
@click.argument("url")
@service_errors
def set_command(app_id: uuid.UUID, url: str) -> None:
    """Set APP_ID's endpoint URL; a new endpoint's secret is printed once."""
    from shared.services.webhooks import set_endpoint

    settings = load_settings()
    with cli_session(settings) as session:
        _echo(set_endpoint(session, app_id, url, allow_http_loopback=settings.allow_http_endpoints))


@webhooks.command("show")
@click.argument("app_id", type=click.UUID)
@service_errors
def show_command(app_id: uuid.UUID) -> None:
    """APP_ID's endpoint: last attempt, last success, last error, events per status."""
    from shared.services.webhooks import get_endpoint

    with cli_session() as session:
        _echo(get_endpoint(session, app_id))


@webhooks.command("rotate-secret")
@click.argument("app_id", type=click.UUID)
@service_errors
def rotate_command(app_id: uuid.UUID) -> None:
    """A new secret (printed once); the previous one signs too for PUSHQ_WEBHOOK_SECRET_OVERLAP_SECONDS."""
    from shared.services.webhooks import rotate_secret

    settings = load_settings()
    with cli_session(settings) as session:
        _echo(rotate_secret(session, app_id, timedelta(seconds=settings.webhook_secret_overlap_seconds)))


@webhooks.command("remove")
@click.argument("app_id", type=click.UUID)
@service_errors
def remove_command(app_id: uuid.UUID) -> None:
    """Remove APP_ID's endpoint and its undelivered events."""
    from shared.services.webhooks import delete_endpoint

    with cli_session() as session:
        delete_endpoint(session, app_id)
    click.echo("removed")


@webhooks.command("events")
@click.argument("app_id", type=click.UUID)
@click.option("--status", type=click.Choice(["pending", "delivered", "failed"]), default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@service_errors
def events_command(app_id: uuid.UUID, status: str | None, limit: int) -> None:
    """APP_ID's newest events with their attempts and last error, one JSON object per line."""
    from shared.services.webhooks import event_wire_id, list_events

    with cli_session() as session:
        for event in list_events(session, app_id, limit=limit, status=status).items:
            click.echo(json.dumps({
                "id": event_wire_id(event.id), "type": event.event_type, "status": event.status,
                "attempts": event.attempts, "last_error": event.last_error,
                "next_attempt_at": event.next_attempt_at.isoformat(),
                "created_at": event.created_at.isoformat(),
            }))
