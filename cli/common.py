"""What every ``pushq`` command shares: settings with development defaults, a session, error handling.

Nothing here imports ``api``, ``workers`` or ``standins``: a command that needs
them imports them inside its own body, so ``pushq --help`` and the admin
commands start without the web app, Celery or the vendor stand-ins.
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from cryptography.fernet import Fernet
from sqlalchemy.orm import Session

from shared import crypto
from shared.config import ConfigError, Settings
from shared.db import make_engine, make_session_factory, session_scope
from shared.errors import ServiceError

if TYPE_CHECKING:
    from broker.dispatch import Dispatcher

DEV_DIR = Path("var")
DEV_SECRET_FILE = DEV_DIR / "jwt-dev-secret"
DEV_ENCRYPTION_KEY_FILE = DEV_DIR / "encryption-key"
DEV_TOKEN_HASH_KEY_FILE = DEV_DIR / "token-hash-key"

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

F = TypeVar("F", bound=Callable[..., Any])


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment; what is not configured gets a per-checkout dev value from var/:
    JWT_SECRET (unless a public key is set), PUSHQ_ENCRYPTION_KEYS and PUSHQ_TOKEN_HASH_KEY."""
    env = dict(os.environ)
    if not (env.get("JWT_SECRET") or env.get("JWT_PUBLIC_KEY") or env.get("JWT_JWKS_URL")):
        env["JWT_SECRET"] = dev_secret()
    add_dev_keys(env)
    try:
        return Settings.from_env(env, **overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def configure_crypto(settings: Settings) -> None:
    """Install the encryption keyring (secrets at rest) for this CLI process."""
    try:
        crypto.configure(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def add_dev_keys(env: dict[str, str]) -> None:
    """Encryption and token hash keys for development, generated once per checkout in var/ (mode 0600)."""
    if not env.get("PUSHQ_ENCRYPTION_KEYS"):
        env["PUSHQ_ENCRYPTION_KEYS"] = _dev_key(DEV_ENCRYPTION_KEY_FILE, lambda: Fernet.generate_key().decode())
    if not env.get("PUSHQ_TOKEN_HASH_KEY"):
        env["PUSHQ_TOKEN_HASH_KEY"] = _dev_key(DEV_TOKEN_HASH_KEY_FILE, lambda: secrets.token_urlsafe(32))


def dev_secret() -> str:
    """The development JWT secret of this checkout (var/jwt-dev-secret), created on first use."""
    DEV_DIR.mkdir(exist_ok=True)
    if not DEV_SECRET_FILE.exists():
        DEV_SECRET_FILE.write_text(secrets.token_urlsafe(32))
        DEV_SECRET_FILE.chmod(0o600)
    return DEV_SECRET_FILE.read_text().strip()


def _dev_key(path: Path, generate: Callable[[], str]) -> str:
    DEV_DIR.mkdir(exist_ok=True)
    try:
        # Created 0600 from the start: never readable by others, not even for a moment.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as key_file:
            key_file.write(generate())
        click.echo(f"pushq: generated a development key in {path} (configure your own in production)", err=True)
    return path.read_text().strip()


@contextmanager
def cli_session(settings: Settings | None = None) -> Iterator[Session]:
    """One session for a CLI command, committed at the end (after-commit callbacks run then)."""
    settings = settings or load_settings()
    configure_crypto(settings)
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()


def service_errors(function: F) -> F:
    """Turn a business rule's refusal (not found, invalid value) into a one-line error and exit status 1."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (ServiceError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def dispatcher(settings: Settings) -> Dispatcher:
    """A dispatcher on the configured broker, for commands that enqueue work (imports Celery lazily)."""
    if not (settings.broker_url or settings.redis_url):
        raise click.ClickException("REDIS_URL (or PUSHQ_BROKER_URL) must be set to enqueue work for the workers")
    from broker.celery_app import make_celery
    from broker.dispatch import Dispatcher

    return Dispatcher(make_celery(settings))
