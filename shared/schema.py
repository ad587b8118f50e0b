"""Applying the schema: ``alembic upgrade head`` from code (the CLI, ``pushq run``, the tests, the benchmarks)."""

from __future__ import annotations

from pathlib import Path


def migrate(database_url: str) -> None:
    """alembic upgrade head against ``database_url``.

    Lives here, not in the CLI, because tests and benchmarks migrate their own
    databases without importing any command-line code.
    """
    from alembic import command
    from alembic.config import Config

    config = Config(str(Path(__file__).resolve().parent.parent / "alembic.ini"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")
