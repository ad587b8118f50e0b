"""Worker entry module: ``celery -A workers.main worker`` (and ``beat``).

The only worker-side module that builds anything at import: the Celery app from
the environment's settings.
"""

from pathlib import Path
from typing import Any

from celery import Task
from celery.signals import (
    celeryd_init,
    task_postrun,
    task_prerun,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from broker.celery_app import make_celery
from shared import crypto
from shared.config import Settings
from shared.logging import configure_logging
from workers import metrics as worker_metrics
from workers.logs import quiet_periodic_task_runs
from workers.outbox_pump import OutboxPumpStep
from workers.runtime import close_runtimes

settings = Settings.from_env()
configure_logging(settings.log_level, settings.log_format)
crypto.configure(settings)  # fail at boot, not at the first task, when keys are missing
app = make_celery(settings)
app.autodiscover_tasks(["workers"], related_name="tasks", force=True)
app.steps["consumer"].add(OutboxPumpStep)  # fans out what the API accepted (shared/outbox.py)
quiet_periodic_task_runs(app.conf.beat_schedule)  # Celery's lines about each beat run at DEBUG (workers/logs.py)


@worker_process_shutdown.connect
def _close_vendor_connections(**_kwargs: Any) -> None:
    close_runtimes()


# Metrics and request ids (workers/metrics.py, docs/operations.md).
_metrics_dir: list[Path | None] = []


@celeryd_init.connect
def _claim_metrics_dir(**_kwargs: Any) -> None:
    _metrics_dir.append(worker_metrics.worker_starting(settings))


@worker_ready.connect
def _serve_metrics(**_kwargs: Any) -> None:
    worker_metrics.worker_ready(settings)


@worker_shutdown.connect
def _release_metrics_dir(**_kwargs: Any) -> None:
    worker_metrics.worker_stopping(_metrics_dir[0] if _metrics_dir else None)


@worker_process_shutdown.connect
def _pool_process_exiting(pid: int | None = None, **_kwargs: Any) -> None:
    if pid is not None:
        worker_metrics.pool_process_exiting(pid)


@task_prerun.connect
def _task_request_ids(task_id: str, task: Task, **_kwargs: Any) -> None:
    worker_metrics.task_starting(task_id, task)


@task_postrun.connect
def _task_request_ids_done(task_id: str, **_kwargs: Any) -> None:
    worker_metrics.task_finished(task_id)
