"""Worker health for orchestrators: ``pushq worker-ping`` (or ``python -m workers.health``).

A liveness probe for a Celery worker must ask the worker itself, not the
broker: ``celery inspect ping`` sends a broadcast over the broker and waits for
replies. This wraps it in a command with an exit code (0: the named worker, or
any worker, answered; 1: none did), so a container's health check can be
``pushq worker-ping --name webpush@$HOSTNAME``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # the CLI imports this module; Celery is loaded only when the command runs
    from celery import Celery


def ping_workers(celery: Celery, timeout: float = 5.0, name: str | None = None) -> list[str]:
    """Names of the workers that answered a ping within ``timeout`` s (only ``name`` when given)."""
    replies = celery.control.ping(destination=[name] if name else None, timeout=timeout) or []
    return sorted(worker for reply in replies for worker, answer in reply.items() if answer.get("ok") == "pong")


@click.command("worker-ping")
@click.option("--name", help="The worker's node name (celery -n …, e.g. webpush@host); default: any worker.")
@click.option("--timeout", default=5.0, show_default=True, help="Seconds to wait for replies.")
def worker_ping(name: str | None, timeout: float) -> None:
    """Health check for a Celery worker: exit 0 if it answers a ping over the broker, 1 otherwise."""
    from broker.celery_app import make_celery
    from shared.config import Settings

    celery = make_celery(Settings.from_env())
    try:
        answered = ping_workers(celery, timeout, name)
    except Exception as exc:
        click.echo(f"no answer: broker unreachable ({type(exc).__name__}: {exc})", err=True)
        sys.exit(1)
    if not answered:
        click.echo(f"no answer from {name or 'any worker'} within {timeout:g} s", err=True)
        sys.exit(1)
    click.echo(" ".join(answered))


if __name__ == "__main__":
    worker_ping(prog_name="python -m workers.health")
