"""Worker-side observability: delivery metrics per chunk, request ids per task, the metrics directory.

Recording happens once per chunk, with counts (a counter increment per outcome
kind present, one histogram update per bucket used), so a delivery costs no
metric call of its own. The hooks are connected to Celery's signals in
``workers/main.py``.
"""

from __future__ import annotations

import contextvars
import logging
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from broker.queues import PLATFORM_QUEUES
from shared.clock import utcnow
from shared.config import Settings
from shared.observability.context import reset_request_ids, set_request_ids, task_request_ids
from shared.observability.metrics import (
    claim_group_dir,
    host_registry,
    metrics,
    observe_many,
    process_exited,
    release_group_dir,
    retry_reason,
    serve_metrics,
)
from shared.outcomes import Outcome, OutcomeKind
from shared.pipeline.values import ClaimedDelivery

log = logging.getLogger(__name__)

_late_answers_seen: dict[int, int] = {}  # per adapter object: its late_answers already counted
_task_tokens: dict[str, contextvars.Token[tuple[str, ...]]] = {}


def record_chunk(
    platform: str, results: Sequence[tuple[ClaimedDelivery, Outcome]], closed_at_claim: int, adapter: Any,
    now: datetime | None = None,
) -> None:
    """Count one chunk's outcomes, retries by reason and accept-to-answer latencies, by vendor."""
    vendor = PLATFORM_QUEUES.get(platform, platform)
    m = metrics()
    if closed_at_claim:
        m.closed_at_claim.labels(vendor).inc(closed_at_claim)
    if results:
        kinds = Counter(outcome.kind for _, outcome in results)
        for kind, count in kinds.items():
            m.deliveries.labels(vendor, kind.value).inc(count)
        if kinds.get(OutcomeKind.RETRY):
            retries = Counter(retry_reason(o.reason) for _, o in results if o.kind is OutcomeKind.RETRY)
            for reason, count in retries.items():
                m.retries.labels(vendor, reason).inc(count)
        # Accepted (released, for a scheduled send) at expiry - TTL; in float seconds (datetime arithmetic per delivery costs more than the rest).
        answered = (now or utcnow()).timestamp()
        observe_many(m.latency.labels(vendor),
                     [answered - d.message.expires_at.timestamp() + d.message.ttl for d, _ in results])
    late = getattr(adapter, "late_answers", None)  # the APNs adapter counts answers that came too late
    if isinstance(late, int):
        seen = _late_answers_seen.get(id(adapter), 0)
        if late > seen:
            m.late_answers.labels(vendor).inc(late - seen)
        _late_answers_seen[id(adapter)] = late


# ------------------------------------------------------------------ Celery signal hooks


def task_starting(task_id: str, task: Any) -> None:
    """task_prerun: log lines of the task carry the request ids its message headers name."""
    _task_tokens[task_id] = set_request_ids(task_request_ids(task.request))


def task_finished(task_id: str) -> None:
    """task_postrun: back to no request ids."""
    token = _task_tokens.pop(task_id, None)
    if token is not None:
        try:
            reset_request_ids(token)
        except ValueError:
            set_request_ids(())


def worker_starting(settings: Settings) -> Path:
    """celeryd_init (main process, before the pool forks): this worker's empty metrics directory."""
    return claim_group_dir(settings, "worker")


def worker_ready(settings: Settings) -> None:
    """worker_ready: serve the host's metrics on PUSHQ_WORKER_METRICS_HOST:PUSHQ_WORKER_METRICS_PORT, when a
    port is set (hosts without the API): loopback unless configured otherwise, and behind PUSHQ_METRICS_TOKEN
    when that is set, like the API's /metrics."""
    if not settings.worker_metrics_port:
        return
    host, port = settings.worker_metrics_host, settings.worker_metrics_port
    try:
        serve_metrics(host_registry(settings), host, port, settings.metrics_token)
    except OSError as exc:  # another worker of this host serves them already
        log.warning("metrics port %s:%d not opened: %s", host, port, exc)
    else:
        log.info("serving this host's metrics on %s:%d%s", host, port,
                 " (bearer token required)" if settings.metrics_token else "")


def worker_stopping(path: Path | None) -> None:
    """worker_shutdown: the worker's counts end with it."""
    if path is not None:
        release_group_dir(path)


def pool_process_exiting(pid: int) -> None:
    """worker_process_shutdown: drop the child's live gauges."""
    try:
        process_exited(pid)
    except Exception:
        log.debug("could not mark process %d dead for metrics", pid, exc_info=True)
