"""``pushq tokens`` (also ``pushq token``): development tokens signed with the configured key."""

from __future__ import annotations

import uuid
from typing import IO

import click

from cli.common import CONTEXT_SETTINGS, load_settings


@click.group(context_settings=CONTEXT_SETTINGS)
def tokens() -> None:
    """Mint development tokens signed with JWT_SECRET (or --private-key)."""


@tokens.command("user")
@click.argument("user_id", type=click.UUID)
@click.option("--lifetime", default=3600, show_default=True, help="Seconds until exp.")
@click.option("--private-key", type=click.File(), help="PEM private key for RS*/ES* deployments.")
def token_user(user_id: uuid.UUID, lifetime: int, private_key: IO[str] | None) -> None:
    """A user token (sub = USER_ID) for device registration."""
    from shared.token_signing import mint_token

    settings = load_settings()
    click.echo(mint_token(settings, subject=str(user_id), lifetime_seconds=lifetime,
                          private_key=private_key.read() if private_key else None))


@tokens.command("service")
@click.argument("app_id", type=click.UUID)
@click.option("--scope", "scopes", multiple=True, default=["push:send"], show_default=True, help="Repeatable.")
@click.option("--client-id", default="pushq-cli", show_default=True, help="The token's sub.")
@click.option("--lifetime", default=3600, show_default=True, help="Seconds until exp.")
@click.option("--private-key", type=click.File(), help="PEM private key for RS*/ES* deployments.")
def token_service(app_id: uuid.UUID, scopes: tuple[str, ...], client_id: str, lifetime: int,
                  private_key: IO[str] | None) -> None:
    """A service (client-credentials) token acting for APP_ID, with the service-token claim."""
    from shared.token_signing import mint_token

    settings = load_settings()
    click.echo(mint_token(settings, subject=client_id, app_id=app_id, scopes=scopes, lifetime_seconds=lifetime,
                          private_key=private_key.read() if private_key else None))
