"""``pushq users``: enrollments, a user's devices, patient identity imports."""

from __future__ import annotations

import json
import uuid

import click

from cli.common import CONTEXT_SETTINGS, cli_session, service_errors


@click.group(context_settings=CONTEXT_SETTINGS)
def users() -> None:
    """Users of apps: enroll them, tag them, list their devices, import patient mappings."""


@users.command("enroll")
@click.argument("app_id", type=click.UUID)
@click.argument("user_ids", type=click.UUID, nargs=-1, required=True)
def enroll_command(app_id: uuid.UUID, user_ids: tuple[uuid.UUID, ...]) -> None:
    """Enroll users in an app so they can be sent to (and may register devices into it)."""
    from shared.services.enrollments import enroll

    with cli_session() as session:
        click.echo(f"enrolled {enroll(session, app_id, user_ids)} new user(s)")


@users.command("unenroll")
@click.argument("app_id", type=click.UUID)
@click.argument("user_id", type=click.UUID)
@service_errors
def unenroll_command(app_id: uuid.UUID, user_id: uuid.UUID) -> None:
    """Remove a user's enrollment in an app (their devices stay; sends to them are refused)."""
    from shared.services.enrollments import unenroll

    with cli_session() as session:
        unenroll(session, app_id, user_id)
        click.echo("unenrolled")


@users.command("devices")
@click.argument("user_id", type=click.UUID)
@click.option("--app", "app_id", type=click.UUID, help="Only this app's devices (default: every app).")
def devices_command(user_id: uuid.UUID, app_id: uuid.UUID | None) -> None:
    """List USER_ID's devices, newest first, as JSON lines: never their push tokens.

    Disabled devices are listed too, with when and why (unregistered, a vendor's
    answer, the device limit, idle).
    """
    from shared.services.operations import user_devices

    with cli_session() as session:
        for device in user_devices(session, user_id, app_id):
            click.echo(json.dumps({
                "device_id": str(device.id), "app_id": str(device.app_id), "platform": device.platform,
                "created_at": device.created_at.isoformat(), "last_seen_at": device.last_seen_at.isoformat(),
                "disabled_at": device.disabled_at.isoformat() if device.disabled_at else None,
                "disabled_reason": device.disabled_reason,
            }))


@users.command("import-patients")
@click.argument("app_id", type=click.UUID)
@click.argument("csv_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--batch-size", default=1000, show_default=True, help="Mappings per database statement.")
@service_errors
def import_patients_command(app_id: uuid.UUID, csv_path: str, batch_size: int) -> None:
    """Create or replace patient identity mappings from a CSV with columns patient_id,person_id.

    The whole file is validated first; nothing is written if any row is bad.
    """
    import csv

    from shared.services.apps import get_app
    from shared.services.patients import bulk_put_mappings

    with open(csv_path, newline="", encoding="utf-8") as csv_file:
        reader = csv.DictReader(csv_file)
        if not reader.fieldnames or not {"patient_id", "person_id"} <= set(reader.fieldnames):
            raise click.UsageError("the CSV needs a header with patient_id and person_id")
        mappings = []
        for line, row in enumerate(reader, start=2):
            try:
                mappings.append((uuid.UUID(row["patient_id"]), uuid.UUID(row["person_id"])))
            except (ValueError, TypeError, AttributeError):
                raise click.UsageError(f"line {line}: patient_id and person_id must be UUIDs") from None
    with cli_session() as session:
        get_app(session, app_id)
        for start in range(0, len(mappings), batch_size):
            bulk_put_mappings(session, app_id, mappings[start : start + batch_size])
    click.echo(f"imported {len(mappings)} mapping(s)")


@users.command("tags")
@click.argument("app_id", type=click.UUID)
@click.argument("user_id", type=click.UUID)
@click.option("--set", "new_tags", multiple=True, help="Replace the user's tags with these (repeat the option).")
@click.option("--clear", is_flag=True, help="Remove every tag of the user.")
@service_errors
def tags_command(app_id: uuid.UUID, user_id: uuid.UUID, new_tags: tuple[str, ...], clear: bool) -> None:
    """Show an enrolled user's tags (one a line), or replace them with --set / --clear.

    At most 32 tags of 1-64 characters (A-Z a-z 0-9 _ - . : /); broadcasts select segments by them.
    """
    from shared.services.tags import get_tags, set_tags

    with cli_session() as session:
        tags = set_tags(session, app_id, user_id, new_tags) if (new_tags or clear) else get_tags(session, app_id, user_id)
    for tag in tags:
        click.echo(tag)


@users.command("import-tags")
@click.argument("app_id", type=click.UUID)
@click.argument("csv_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--batch-size", default=1000, show_default=True, help="Users per database statement.")
@service_errors
def import_tags_command(app_id: uuid.UUID, csv_path: str, batch_size: int) -> None:
    """Replace users' tags from a CSV with columns user_id,tags (tags separated by spaces; empty: none).

    Every user must be enrolled. The whole file is validated first; nothing is written if any row is bad.
    """
    import csv

    from shared.services.apps import get_app
    from shared.services.tags import InvalidTags, check_tags, replace_tags

    tags_by_user: dict[uuid.UUID, list[str]] = {}
    with open(csv_path, newline="", encoding="utf-8") as csv_file:
        reader = csv.DictReader(csv_file)
        if not reader.fieldnames or not {"user_id", "tags"} <= set(reader.fieldnames):
            raise click.UsageError("the CSV needs a header with user_id and tags")
        for line, row in enumerate(reader, start=2):
            try:
                user_id = uuid.UUID(row["user_id"])
            except (ValueError, TypeError, AttributeError):
                raise click.UsageError(f"line {line}: user_id must be a UUID") from None
            try:
                tags_by_user[user_id] = check_tags((row["tags"] or "").split())
            except InvalidTags as exc:
                raise click.UsageError(f"line {line}: {exc.details['fields']['tags'][0]}") from None
    users_in_order = list(tags_by_user)
    with cli_session() as session:
        get_app(session, app_id)
        written = 0
        for start in range(0, len(users_in_order), batch_size):
            batch = {user_id: tags_by_user[user_id] for user_id in users_in_order[start : start + batch_size]}
            written += replace_tags(session, app_id, batch)
    click.echo(f"imported {written} tag(s) of {len(tags_by_user)} user(s)")
