"""gunicorn hooks for the API: ``gunicorn --config python:api.gunicorn_conf … api.wsgi:app`` (the Procfile's web line).

The master claims this server's metrics directory before it forks a worker
(prometheus_client must find ``PROMETHEUS_MULTIPROC_DIR`` set when a worker
first imports it), tells prometheus_client when a worker exits, and removes
the directory when it stops. See shared/observability/metrics.py.
"""

from __future__ import annotations

from typing import Any

from shared.config import Settings
from shared.observability.metrics import claim_group_dir, process_exited, release_group_dir

_claimed: list[Any] = []


def on_starting(server: Any) -> None:
    _claimed.append(claim_group_dir(Settings.from_env(), "web"))


def child_exit(server: Any, worker: Any) -> None:
    process_exited(worker.pid)


def on_exit(server: Any) -> None:
    for path in _claimed:
        release_group_dir(path)
