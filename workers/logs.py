"""Celery's per-run log lines about the scheduler's periodic tasks, at DEBUG.

The beat sends ``release-scheduled`` every second (and the sweep, housekeeping …
every interval); Celery logs three INFO lines for each run ("Sending due task",
"received", "succeeded"; and "Discarding revoked task" when a busy worker reaches a run past its
``expires``, which is by design: the next tick replaces it), which would bury the requests and deliveries an operator
wants to see. Those lines are logged at DEBUG instead; the tasks themselves log at
INFO when they did something (released, re-enqueued, deleted) and at DEBUG when not.
Failures keep their level.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

# The loggers Celery writes those lines to (worker: received, succeeded and expired runs discarded; beat: sending).
CELERY_RUN_LOGGERS = ("celery.worker.strategy", "celery.app.trace", "celery.worker.request", "celery.beat")


class PeriodicTaskRuns(logging.Filter):
    """Turns Celery's INFO lines about runs of ``task_names`` into DEBUG lines (dropped below DEBUG)."""

    def __init__(self, task_names: Iterable[str]) -> None:
        super().__init__()
        self.task_names = frozenset(task_names)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or self._task_name(record) not in self.task_names:
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)

    @staticmethod
    def _task_name(record: logging.LogRecord) -> str | None:
        data: Any = getattr(record, "data", None)  # the worker's lines: extra={"data": {"name": …}}
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            return str(data["name"])
        args = record.args
        if record.name == "celery.beat" and isinstance(args, tuple) and len(args) == 2:  # "Sending due task %s (%s)"
            return str(args[1])
        if record.name == "celery.worker.request" and isinstance(args, tuple) and len(args) == 2 \
                and str(record.msg).startswith("Discarding revoked task"):  # "Discarding revoked task: %s[%s]"
            return str(args[0])
        return None


def quiet_periodic_task_runs(beat_schedule: dict[str, dict[str, Any]]) -> None:
    """Install :class:`PeriodicTaskRuns` for every task of the beat schedule (whatever it holds)."""
    runs = PeriodicTaskRuns(entry["task"] for entry in beat_schedule.values())
    for name in CELERY_RUN_LOGGERS:
        logger = logging.getLogger(name)
        for existing in [f for f in logger.filters if isinstance(f, PeriodicTaskRuns)]:
            logger.removeFilter(existing)
        logger.addFilter(runs)
