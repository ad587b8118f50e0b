"""``pushq clients``: OAuth clients for the built-in client-credentials endpoint."""

from __future__ import annotations

import json
import uuid

import click

from cli.common import CONTEXT_SETTINGS, cli_session, service_errors


@click.group(context_settings=CONTEXT_SETTINGS)
def clients() -> None:
    """OAuth clients of apps (POST /oauth/token)."""


@clients.command("create")
@click.argument("app_id", type=click.UUID)
@click.option("--scope", "scopes", multiple=True, default=["push:send"], show_default=True,
              help="A scope the client may request; repeatable.")
@service_errors
def create_client_command(app_id: uuid.UUID, scopes: tuple[str, ...]) -> None:
    """Create an OAuth client of APP_ID for POST /oauth/token (client-credentials grant).

    Prints the client_id and the client_secret. The secret is shown only this once:
    pushq stores a salted hash of it.
    """
    from shared.services.clients import create_client

    with cli_session() as session:
        client_id, secret = create_client(session, app_id, scopes)
    click.echo(json.dumps({"client_id": client_id, "client_secret": secret, "scope": " ".join(dict.fromkeys(scopes))}))
    click.echo("store the client_secret now: it cannot be shown again", err=True)


@clients.command("revoke")
@click.argument("client_id")
@service_errors
def revoke_client_command(client_id: str) -> None:
    """Revoke an OAuth client: no new tokens at once; the API refuses the ones it holds within 60 s.

    The revoked client is deleted by housekeeping after PUSHQ_REVOKED_CLIENT_DAYS.
    """
    from shared.services.clients import revoke_client

    with cli_session() as session:
        revoke_client(session, client_id)
    click.echo("revoked")
