"""``pushq apps``: create, list and show apps, set a daily quota, rotate the VAPID key."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import click

from cli.common import CONTEXT_SETTINGS, cli_session, load_settings, service_errors
from shared.clock import utcnow
from shared.config import Settings
from shared.models import App


@click.group(context_settings=CONTEXT_SETTINGS)
def apps() -> None:
    """Apps (tenants): their keys, credentials and daily quota."""


@apps.command("create")
@click.argument("name")
@click.option("--vapid-subject", default="mailto:push@example.com", show_default=True,
              help="Contact sent to push services in the VAPID JWT (mailto: or https:).")
@service_errors
def create_app_command(name: str, vapid_subject: str) -> None:
    """Create an app (tenant) with a fresh VAPID key pair; prints its id and public key."""
    from shared.services.apps import create_app

    with cli_session() as session:
        app = create_app(session, name, vapid_subject)
        click.echo(json.dumps({"app_id": str(app.id), "vapid_public_key": app.vapid_public_key}))


def quota_used_today(settings: Settings, app_ids: list[uuid.UUID], now: datetime) -> dict[uuid.UUID, int | None]:
    """Each app's notifications taken today (UTC) from Redis; None when Redis is not configured or answers not."""
    if not settings.redis_url:
        return dict.fromkeys(app_ids)
    import redis

    from shared.guards import DailyQuota

    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        counter = DailyQuota(client)
        return {app_id: counter.used(app_id, now) for app_id in app_ids}
    except redis.RedisError as exc:
        click.echo(f"pushq: Redis did not answer ({type(exc).__name__}); quota used today unknown", err=True)
        return dict.fromkeys(app_ids)
    finally:
        client.close()


def app_summary(app: App, settings: Settings, used: int | None) -> dict[str, Any]:
    """What an operator sees of an app: never a private key."""
    return {
        "app_id": str(app.id),
        "name": app.name,
        "created_at": app.created_at.isoformat(),
        "daily_quota": app.daily_quota if app.daily_quota is not None else settings.default_daily_quota,
        "daily_quota_is_default": app.daily_quota is None,
        "apns_critical_alerts": app.apns_critical_alerts,
        "quota_used_today": used,
        "web": {"vapid_public_key": app.vapid_public_key, "vapid_subject": app.vapid_subject},
        "apns": {"bundle_id": app.apns_bundle_id, "key_id": app.apns_key_id, "team_id": app.apns_team_id,
                 "sandbox": app.apns_use_sandbox} if app.apns_key_id else None,
        "fcm": {"project_id": app.fcm_project_id} if app.fcm_project_id else None,
    }


@apps.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
def list_command(as_json: bool) -> None:
    """List every app with its daily quota and how much of it is used today (UTC)."""
    from shared.services.apps import list_apps

    settings = load_settings()
    with cli_session(settings) as session:
        found = list_apps(session)
        used = quota_used_today(settings, [app.id for app in found], utcnow())
        summaries = [app_summary(app, settings, used[app.id]) for app in found]
    if as_json:
        click.echo(json.dumps(summaries, indent=2))
        return
    click.echo(f"{'app_id':36}  {'quota used today':>22}  platforms  name")
    for summary in summaries:
        quota = f"{'?' if summary['quota_used_today'] is None else summary['quota_used_today']}/{summary['daily_quota']}"
        platforms = ",".join(p for p in ("web", "apns", "fcm") if summary[p])
        click.echo(f"{summary['app_id']:36}  {quota:>22}  {platforms:9}  {summary['name']}")


@apps.command("show")
@click.argument("app_id", type=click.UUID)
@service_errors
def show_command(app_id: uuid.UUID) -> None:
    """Show one app as JSON: quota and today's use, public VAPID key, which vendors are configured."""
    from shared.services.apps import get_app

    settings = load_settings()
    with cli_session(settings) as session:
        app = get_app(session, app_id)
        summary = app_summary(app, settings, quota_used_today(settings, [app.id], utcnow())[app.id])
    click.echo(json.dumps(summary, indent=2))


@apps.command("set-quota")
@click.argument("app_id", type=click.UUID)
@click.argument("daily_quota", type=click.IntRange(min=0), required=False)
@click.option("--default", "use_default", is_flag=True, help="Use PUSHQ_DEFAULT_DAILY_QUOTA again.")
@service_errors
def set_quota_command(app_id: uuid.UUID, daily_quota: int | None, use_default: bool) -> None:
    """Set APP_ID's notifications per UTC day to DAILY_QUOTA (or --default).

    Takes effect with the next send; what was used today still counts.
    """
    from shared.services.apps import set_daily_quota

    if (daily_quota is None) == (not use_default):
        raise click.UsageError("give either DAILY_QUOTA or --default")
    with cli_session() as session:
        app = set_daily_quota(session, app_id, None if use_default else daily_quota)
        click.echo(f"daily quota of {app.id}: {'default' if app.daily_quota is None else app.daily_quota}")


@apps.command("set-critical-alerts")
@click.argument("app_id", type=click.UUID)
@click.argument("state", type=click.Choice(["on", "off"]))
@service_errors
def set_critical_alerts_command(app_id: uuid.UUID, state: str) -> None:
    """Say whether Apple granted APP_ID the critical-alerts entitlement (STATE on/off).

    Sends with interruption_level "critical" to iOS are refused (400) unless it is on.
    """
    from shared.services.apps import set_apns_critical_alerts

    with cli_session() as session:
        app = set_apns_critical_alerts(session, app_id, state == "on")
        click.echo(f"critical alerts of {app.id}: {'on' if app.apns_critical_alerts else 'off'}")


@apps.command("rotate-vapid")
@click.argument("app_id", type=click.UUID)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@service_errors
def rotate_vapid_command(app_id: uuid.UUID, yes: bool) -> None:
    """Give APP_ID a new VAPID key pair; prints the new public key.

    WARNING: every browser subscription was made with the old public key, and
    push services refuse pushes signed with another: until each browser
    subscribes again with the new key (applicationServerKey) and registers the new
    subscription, Web Push to it fails (deliveries end `rejected`).
    """
    from shared.services.apps import rotate_vapid_key

    warning = ("Rotating the VAPID key breaks every existing browser subscription of this app: browsers must "
               "resubscribe with the new public key and register again.")
    click.echo(f"WARNING: {warning}", err=True)
    if not yes:
        click.confirm("Rotate the key?", abort=True, err=True)
    with cli_session() as session:
        app = rotate_vapid_key(session, app_id)
        click.echo(json.dumps({"app_id": str(app.id), "vapid_public_key": app.vapid_public_key}))
