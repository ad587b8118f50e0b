"""``pushq data``: the schema, and purging old data by age."""

from __future__ import annotations

import json

import click

from cli.common import CONTEXT_SETTINGS, load_settings
from shared.clock import utcnow
from shared.schema import migrate


@click.group(context_settings=CONTEXT_SETTINGS)
def data() -> None:
    """The database: migrations and purges."""


@data.command("migrate")
def migrate_command() -> None:
    """Apply database migrations (alembic upgrade head) to DATABASE_URL."""
    settings = load_settings()
    migrate(settings.database_url)
    click.echo("migrated")


@data.command("purge")
@click.option("--older-than-days", type=click.IntRange(min=1), required=True,
              help="Delete final notifications created more than this many days ago.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Notifications deleted per statement (each in its own transaction).")
def purge_command(older_than_days: int, batch_size: int) -> None:
    """Delete notifications older than --older-than-days, with their deliveries, now.

    Only final ones (delivered, partially_delivered, failed, expired,
    no_devices, cancelled): scheduled, queued and sending notifications stay.
    Runs in small batches until nothing is left; the scheduler does the same
    every PUSHQ_HOUSEKEEPING_INTERVAL with PUSHQ_RETENTION_DAYS.
    """
    from shared.db import make_engine, make_session_factory
    from shared.services.housekeeping import delete_old_notifications, in_batches

    settings = load_settings()
    engine = make_engine(settings.database_url)
    now = utcnow()
    try:
        deleted, batches = in_batches(
            make_session_factory(engine),
            lambda session: delete_old_notifications(session, now, older_than_days, batch_size),
            batch_size, None,
        )
    finally:
        engine.dispose()
    click.echo(json.dumps({"notifications_deleted": deleted, "batches": batches}))
