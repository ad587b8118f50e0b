"""``pushq credentials``: vendor credentials per app, and re-encrypting stored secrets."""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import IO

import click

from cli.common import CONTEXT_SETTINGS, cli_session, load_settings, service_errors
from shared import crypto
from shared.services import key_rotation


@click.group(context_settings=CONTEXT_SETTINGS)
def credentials() -> None:
    """APNs and FCM credentials of an app, and key rotation of secrets at rest."""


@credentials.command("set-apns")
@click.argument("app_id", type=click.UUID)
@click.option("--key-file", type=click.File(), required=True, help="The .p8 token-auth key from Apple.")
@click.option("--key-id", required=True, help="The key's 10-character id.")
@click.option("--team-id", required=True, help="Your 10-character Apple team id.")
@click.option("--bundle-id", required=True, help="The app's bundle id (the apns-topic).")
@click.option("--sandbox/--production", default=False, show_default=True,
              help="Which APNs environment the app's device tokens belong to.")
@service_errors
def set_apns_command(app_id: uuid.UUID, key_file: IO[str], key_id: str, team_id: str, bundle_id: str,
                     sandbox: bool) -> None:
    """Give an app its APNs credentials (token-based auth)."""
    from shared.services.apps import set_apns_credentials

    with cli_session() as session:
        set_apns_credentials(session, app_id, private_key_pem=key_file.read(), key_id=key_id, team_id=team_id,
                             bundle_id=bundle_id, use_sandbox=sandbox)
    click.echo("APNs credentials stored")


@credentials.command("set-fcm")
@click.argument("app_id", type=click.UUID)
@click.option("--service-account", type=click.File(), required=True, help="The Firebase service-account JSON key.")
@click.option("--project-id", help="Firebase project id (default: the key's project_id).")
@service_errors
def set_fcm_command(app_id: uuid.UUID, service_account: IO[str], project_id: str | None) -> None:
    """Give an app its FCM HTTP v1 credentials (the key's token_uri must be Google's, or PUSHQ_FCM_BASE_URL/token)."""
    from shared.services.apps import set_fcm_credentials

    settings = load_settings()
    with cli_session(settings) as session:
        set_fcm_credentials(session, app_id, service_account.read(), project_id, fcm_base_url=settings.fcm_base_url)
    click.echo("FCM credentials stored")


@credentials.command("rotate-keys")
@click.option("--batch-size", default=500, show_default=True, help="Rows re-encrypted per transaction.")
def rotate_keys_command(batch_size: int) -> None:
    """Re-encrypt every stored secret with the first key of PUSHQ_ENCRYPTION_KEYS.

    Push tokens and vendor credentials (VAPID, APNs and FCM keys) are stored
    encrypted with Fernet keys: the first key in PUSHQ_ENCRYPTION_KEYS encrypts,
    every listed key decrypts. To rotate:

    \b
    1. Generate a key:
       python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"
    2. Put it first and keep the old keys after it: PUSHQ_ENCRYPTION_KEYS=NEW,OLD.
       Restart the API and the workers with it (new writes use NEW, old values still decrypt).
    3. Run `pushq rotate-keys` with the same setting: every stored value is
       re-encrypted with NEW, in batches, while the service keeps running.
    4. Drop the old keys (PUSHQ_ENCRYPTION_KEYS=NEW) and restart.

    Safe to run again: values already under the first key are skipped. It also
    encrypts values stored before encryption at rest existed (run it once after
    upgrading) and re-hashes device tokens with the current PUSHQ_TOKEN_HASH_KEY
    (a device re-registered meanwhile keeps its new row, the stale one is disabled).
    """
    try:
        with cli_session() as session:
            report = key_rotation.rotate(session, batch_size=batch_size)
    except crypto.UndecryptableValue as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(dataclasses.asdict(report), indent=2))
