"""Every ``pushq`` verb through click's CliRunner (``pushq run`` runs as a console script, with the
development demo, in test_run_command.py), and the layering rule: shared/ never imports api, workers, standins or the CLI."""

from __future__ import annotations

import ast
import json
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cli import main
from shared.clock import utcnow
from shared.db import session_scope
from shared.models import App, Delivery, Notification, OAuthClient
from shared.services.apps import set_daily_quota
from tests.support.builders import add_device, add_notification
from tests.support.harness import ROOT, TEST_ENV


def pushq(*args: str, ok: bool = True, input: str | None = None):
    result = CliRunner().invoke(main, list(args), env=TEST_ENV, input=input)
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def every_verb(group=main, prefix=()) -> list[tuple[str, ...]]:
    import click

    verbs = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            verbs += every_verb(command, (*prefix, name))
        else:
            verbs.append((*prefix, name))
    return verbs


@pytest.mark.parametrize("verb", every_verb(), ids=lambda verb: " ".join(verb) or "pushq")
def test_every_verb_has_help(verb):
    result = CliRunner().invoke(main, [*verb, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    description = result.output.split("Options:")[0].split("\n", 2)[-1].strip()
    assert len(description) > 20, f"{verb}: --help does not say what it does"


def test_groups_and_the_old_shortcuts():
    listing = pushq("--help").output
    for group in ("apps", "credentials", "users", "tokens", "clients", "notifications", "data", "run"):
        assert f"  {group} " in listing
    assert "create-app       = pushq apps create" in listing
    assert main.commands["create-app"] is main.commands["apps"].commands["create"]
    assert main.commands["token"] is main.commands["tokens"]


def test_apps_create_list_show_quota_and_rotate(session_factory, redis_client):
    created = json.loads(pushq("apps", "create", "Clinic").output)
    app_id = created["app_id"]
    assert json.loads(pushq("create-app", "Other").output)["app_id"] != app_id  # the old spelling
    redis_client.set(f"pushq:quota:{app_id}:{utcnow():%Y-%m-%d}", 7)
    assert pushq("apps", "set-quota", app_id, "50").output.strip() == f"daily quota of {app_id}: 50"
    listing = pushq("apps", "list").output
    assert app_id in listing and "7/50" in listing and "Clinic" in listing
    (shown,) = [a for a in json.loads(pushq("apps", "list", "--json").output) if a["app_id"] == app_id]
    assert shown == json.loads(pushq("apps", "show", app_id).output)
    assert (shown["quota_used_today"], shown["daily_quota"], shown["daily_quota_is_default"]) == (7, 50, False)
    assert "PRIVATE" not in json.dumps(shown)
    pushq("apps", "set-quota", app_id, "--default")
    assert json.loads(pushq("apps", "show", app_id).output)["daily_quota_is_default"] is True
    assert pushq("apps", "set-quota", app_id, ok=False).exit_code == 2

    refused = pushq("apps", "rotate-vapid", app_id, input="n\n", ok=False)
    assert refused.exit_code == 1 and "browsers must resubscribe" in refused.output
    rotated = pushq("apps", "rotate-vapid", app_id, "--yes")
    assert "browsers must resubscribe" in rotated.stderr
    new_key = json.loads(rotated.stdout)["vapid_public_key"]
    assert new_key != created["vapid_public_key"]
    with session_scope(session_factory) as session:
        assert session.get(App, uuid.UUID(app_id)).vapid_public_key == new_key
    missing = pushq("apps", "show", str(uuid.uuid4()), ok=False)
    assert missing.exit_code == 1 and "App not found" in missing.output


def test_users_enroll_devices_unenroll_and_import(session_factory, tenant, tmp_path):
    user = uuid.uuid4()
    assert pushq("users", "enroll", str(tenant.id), str(user)).output.strip() == "enrolled 1 new user(s)"
    assert pushq("enroll", str(tenant.id), str(user)).output.strip() == "enrolled 0 new user(s)"
    with session_scope(session_factory) as session:
        device = add_device(session, tenant.id, user)
        secret_token = device.token
    (listed,) = [json.loads(line) for line in pushq("users", "devices", str(user)).output.splitlines()]
    assert listed["device_id"] == str(device.id) and listed["disabled_at"] is None
    assert secret_token not in pushq("users", "devices", str(user), "--app", str(tenant.id)).output
    assert pushq("users", "devices", str(user), "--app", str(uuid.uuid4())).output == ""
    assert pushq("users", "unenroll", str(tenant.id), str(user)).output.strip() == "unenrolled"
    csv_file = tmp_path / "patients.csv"
    csv_file.write_text(f"patient_id,person_id\n{uuid.uuid4()},{user}\n")
    assert pushq("users", "import-patients", str(tenant.id), str(csv_file)).output.strip() == "imported 1 mapping(s)"


def test_users_tags_set_show_and_import(tenant, tmp_path):
    users = [uuid.uuid4() for _ in range(3)]
    pushq("users", "enroll", str(tenant.id), *map(str, users))
    app, first = str(tenant.id), str(users[0])
    assert pushq("users", "tags", app, first, "--set", "vip", "--set", "city:paris").output.split() == ["city:paris", "vip"]
    assert pushq("users", "tags", app, first).output.split() == ["city:paris", "vip"]
    assert pushq("users", "tags", app, first, "--clear").output == ""
    assert pushq("users", "tags", app, str(uuid.uuid4()), ok=False).exit_code != 0  # not enrolled
    csv_file = tmp_path / "tags.csv"
    csv_file.write_text("user_id,tags\n" + "".join(f"{user},gym member\n" for user in users))
    assert pushq("users", "import-tags", app, str(csv_file)).output.strip() == "imported 6 tag(s) of 3 user(s)"
    assert pushq("users", "tags", app, str(users[2])).output.split() == ["gym", "member"]
    bad = tmp_path / "bad.csv"
    bad.write_text(f"user_id,tags\n{users[0]},ok\n{users[1]},{'x' * 65}\n")
    refused = pushq("users", "import-tags", app, str(bad), ok=False)
    assert refused.exit_code != 0 and "line 3" in refused.output
    assert pushq("users", "tags", app, first).output.split() == ["gym", "member"]  # nothing written


def test_tokens_clients_and_credentials(tenant, session_factory, tmp_path):
    assert pushq("tokens", "user", str(uuid.uuid4())).output.count(".") == 2
    assert pushq("token", "service", str(tenant.id)).output.count(".") == 2
    client = json.loads(pushq("clients", "create", str(tenant.id)).stdout)
    assert pushq("clients", "revoke", client["client_id"]).output.strip() == "revoked"
    with session_scope(session_factory) as session:
        assert session.get(OAuthClient, client["client_id"]).revoked_at is not None
    assert pushq("revoke-client", "pqc_nope", ok=False).exit_code == 1
    bad_key = tmp_path / "key.p8"
    bad_key.write_text("not a key")
    refused = pushq("credentials", "set-apns", str(tenant.id), "--key-file", str(bad_key), "--key-id", "ABC123DEFG",
                    "--team-id", "TEAM123456", "--bundle-id", "com.example", ok=False)
    assert refused.exit_code == 1 and "not a PEM private key" in refused.output
    refused = pushq("credentials", "set-fcm", str(tenant.id), "--service-account", str(bad_key), ok=False)
    assert refused.exit_code == 1 and "not JSON" in refused.output
    assert "reencrypted" in json.loads(pushq("credentials", "rotate-keys").output)


def test_data_migrate_and_purge(session_factory, tenant):
    assert pushq("data", "migrate").output.strip() == "migrated"
    user = uuid.uuid4()
    with session_scope(session_factory) as session:
        for _ in range(3):
            add_notification(session, tenant.id, user, "delivered", 20)
        young = add_notification(session, tenant.id, user, "failed", 2)
        waiting = add_notification(session, tenant.id, user, "scheduled", 20)
    report = json.loads(pushq("data", "purge", "--older-than-days", "7", "--batch-size", "2").output)
    assert report == {"notifications_deleted": 3, "batches": 2}
    with session_scope(session_factory) as session:
        assert set(session.scalars(select(Notification.id))) == {young, waiting}


class RecordingDispatcher:
    def __init__(self) -> None:
        self.chunks: list = []

    def enqueue_chunks(self, chunks) -> None:
        self.chunks.extend(chunks)


def test_notifications_show_and_redrive(session_factory, tenant, monkeypatch):
    enqueued = RecordingDispatcher()
    monkeypatch.setattr(sys.modules["cli.notifications"], "dispatcher", lambda settings: enqueued)
    user = uuid.uuid4()
    with session_scope(session_factory) as session:
        device = add_device(session, tenant.id, user)
        notification_id = add_notification(session, tenant.id, user, "failed", 0, [device])
        notification = session.get(Notification, notification_id)
        notification.expires_at = utcnow() + timedelta(hours=1)
        delivery = session.scalars(select(Delivery).where(Delivery.notification_id == notification_id)).one()
        delivery.status, delivery.attempts, delivery.last_error = "failed", 3, "gave up after 3 attempts: 503"
        expired_id = add_notification(session, tenant.id, user, "failed", 1)  # its TTL ran out yesterday
    shown = json.loads(pushq("notifications", "show", str(notification_id)).output)
    assert shown["status"] == "failed" and shown["deliveries"][0]["last_error"].startswith("gave up")
    assert "token" not in json.dumps(shown["deliveries"])

    assert pushq("notifications", "redrive", str(notification_id)).output.strip() == "re-driven 1 deliveries"
    with session_scope(session_factory) as session:
        delivery = session.scalars(select(Delivery).where(Delivery.notification_id == notification_id)).one()
        assert (delivery.status, delivery.attempts) == ("pending", 0)
        assert session.get(Notification, notification_id).status == "sending"
    (chunk,) = enqueued.chunks  # one deliver task for the chunk, after the commit
    assert (chunk.platform, chunk.delivery_ids) == ("web", [delivery.id])
    refused = pushq("notifications", "redrive", str(expired_id), ok=False)
    assert refused.exit_code == 1 and "expired" in refused.output
    assert "Notification not found" in pushq("notifications", "show", str(uuid.uuid4()), ok=False).output


def test_quota_set_by_cli_applies_to_sends(api, tenant, session_factory):
    user = uuid.uuid4()
    tenant.enroll(user)
    pushq("apps", "set-quota", str(tenant.id), "1")
    body = {"user_id": str(user), "title": "t", "body": "b", "send_at": (utcnow() + timedelta(hours=1)).isoformat()}
    assert api.post("/push/send", json=body, headers=tenant.service_headers()).status_code == 200
    assert api.post("/push/send", json=body, headers=tenant.service_headers()).status_code == 429
    with session_scope(session_factory) as session:
        set_daily_quota(session, tenant.id, None)


def test_shared_imports_no_edge_package():
    offenders = []
    for path in (ROOT / "shared").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            offenders += [f"{path.relative_to(ROOT)}: {name}" for name in names
                          if name.split(".")[0] in {"api", "workers", "standins", "cli"}]
    assert offenders == []
    assert not Path(ROOT / "shared" / "cli.py").exists()


def test_webhooks_set_show_rotate_events_remove(tenant):
    app_id = str(tenant.id)
    created = json.loads(pushq("webhooks", "set", app_id, "http://127.0.0.1:9/hook").output)
    assert created["secret"].startswith("whsec_")
    assert "refused" in pushq("webhooks", "set", app_id, "https://10.1.2.3/", ok=False).output
    shown = json.loads(pushq("webhooks", "show", app_id).output)
    assert shown["url"] == "http://127.0.0.1:9/hook" and "secret" not in shown and shown["last_error"] is None
    rotated = json.loads(pushq("webhooks", "rotate-secret", app_id).output)
    assert rotated["secret"] != created["secret"] and rotated["previous_secret_expires_at"]
    assert pushq("webhooks", "events", app_id).output == ""
    pushq("webhooks", "remove", app_id)
    assert "No webhook endpoint" in pushq("webhooks", "show", app_id, ok=False).output
