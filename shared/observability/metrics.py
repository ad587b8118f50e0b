"""Prometheus metrics of every pushq process, added up across processes (docs/operations.md).

Why files: gunicorn serves with several worker processes and Celery runs tasks
in prefork children, and a scrape reaches only one process. prometheus_client's
multiprocess mode has every process write its samples to memory-mapped files
in ``PROMETHEUS_MULTIPROC_DIR``; whoever serves ``/metrics`` adds them up.

pushq gives each *process group* (a gunicorn master and its workers, a Celery
worker and its pool children) its own subdirectory ``<kind>-<pid>`` of
``PUSHQ_METRICS_DIR``: created empty when the group starts, removed when it
stops, or by the next group to start when its owner died. ``GET /metrics`` on
any API process merges every subdirectory: all pushq processes of a host share
one directory and one scrape shows them all.

prometheus_client chooses multiprocess mode when it is first imported, so no
pushq module imports it at module level: :func:`claim_group_dir` sets the
environment, :func:`metrics` imports on first use.
"""

from __future__ import annotations

import atexit
import bisect
import glob
import hmac
import logging
import os
import re
import shutil
import socket
import socketserver
import sys
import tempfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

from shared.config import Settings

log = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"
_GROUP = re.compile(r"^[a-z]+-(\d+)$")

# Seconds. HTTP answers are milliseconds; deliveries wait in queues, and retries wait minutes.
HTTP_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DELIVERY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0)

# A retry's free-text reason, reduced to a few values a label can hold (first match wins).
RETRY_REASONS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("throttled", re.compile(r"\b429\b|QUOTA_EXCEEDED|TooManyRequests", re.I)),
    ("auth", re.compile(r"\b401\b|ProviderToken|token endpoint", re.I)),
    ("timeout", re.compile(r"timed out|timeout", re.I)),
    ("vendor_error", re.compile(r"\b5\d\d\b|\b408\b|UNAVAILABLE|INTERNAL|ServiceUnavailable|Shutdown", re.I)),
    ("egress", re.compile(r"^egress refused", re.I)),  # a push service's name resolved to no public address
    ("connection", re.compile(r"connect|connection", re.I)),
    ("client_error", re.compile(r"client error|unexpected error", re.I)),
)


def retry_reason(reason: str | None) -> str:
    """The label for a retry: throttled, auth, timeout, vendor_error, egress, connection, client_error or other."""
    for label, pattern in RETRY_REASONS:
        if reason and pattern.search(reason):
            return label
    return "other"


def base_dir(settings: Settings) -> Path:
    """The host's metrics directory: PUSHQ_METRICS_DIR, by default under the temporary directory."""
    if settings.metrics_dir:
        return Path(settings.metrics_dir)
    return Path(tempfile.gettempdir()) / f"pushq-metrics-{os.getuid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_dead_groups(base: Path) -> None:
    """Drop what groups whose owner died (SIGKILL, a crash) left behind: their counts would stay forever."""
    for entry in base.iterdir():
        match = _GROUP.match(entry.name)
        if match and entry.is_dir() and not _alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


def claim_group_dir(settings: Settings, kind: str) -> Path:
    """Create this process group's empty metrics directory and point prometheus_client at it.

    Called by the group's first process (gunicorn master, Celery worker main
    process) before it forks, and before prometheus_client is imported there.
    """
    base = base_dir(settings)
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    _remove_dead_groups(base)
    path = base / f"{kind}-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700)
    os.environ[ENV] = str(path)
    if "prometheus_client" in sys.modules and not _multiprocess_enabled():
        log.warning("prometheus_client was imported before %s was set: this process's metrics are not shared", ENV)
    return path


def join_group_dir(settings: Settings, kind: str) -> Path:
    """The group directory this process writes to: the one its parent claimed, else a new one of its own.

    The API calls this when it is built: under pushq's gunicorn hooks the master
    has claimed a directory; otherwise (another server, tests) the process
    claims one and removes it at exit.
    """
    inherited = os.environ.get(ENV)
    base = base_dir(settings).resolve()
    if inherited and Path(inherited).is_dir() and Path(inherited).resolve().parent == base:
        return Path(inherited)
    path = claim_group_dir(settings, kind)
    atexit.register(release_group_dir, path)
    return path


def release_group_dir(path: Path | str) -> None:
    """Remove a group's directory when the group stops (its counts end with it: a counter reset)."""
    shutil.rmtree(path, ignore_errors=True)


def process_exited(pid: int) -> None:
    """Drop a dead process's live gauges (gunicorn child_exit, Celery worker_process_shutdown)."""
    path = os.environ.get(ENV)
    if path and os.path.isdir(path):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)


def _multiprocess_enabled() -> bool:
    from prometheus_client import values

    return values.ValueClass is not values.MutexValue


class Metrics:
    """Every metric pushq records (names and labels: docs/operations.md).

    Built once per process on first use; not registered anywhere: in
    multiprocess mode the samples live in files and :func:`host_registry` reads them.
    """

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.http_requests = Counter(
            "pushq_http_requests_total", "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"], registry=None,
        )
        self.http_duration = Histogram(
            "pushq_http_request_duration_seconds", "Time to answer an HTTP request, by route template and method.",
            ["route", "method"], buckets=HTTP_BUCKETS, registry=None,
        )
        self.accepted = Counter(
            "pushq_notifications_accepted_total", "Notifications accepted (committed), by send endpoint.",
            ["endpoint"], registry=None,
        )
        self.quota_refusals = Counter(
            "pushq_quota_refusals_total", "Send requests refused with 429 Daily quota exceeded, by endpoint.",
            ["endpoint"], registry=None,
        )
        self.deliveries = Counter(
            "pushq_deliveries_total", "Pushes answered, by vendor and outcome (sent, retry, dead_token, rejected).",
            ["vendor", "outcome"], registry=None,
        )
        self.closed_at_claim = Counter(
            "pushq_deliveries_closed_at_claim_total",
            "Deliveries closed without a push (expired, device disabled, attempts used up), by vendor.",
            ["vendor"], registry=None,
        )
        self.latency = Histogram(
            "pushq_delivery_latency_seconds", "From a notification's acceptance to the vendor's answer, by vendor.",
            ["vendor"], buckets=DELIVERY_BUCKETS, registry=None,
        )
        self.retries = Counter(
            "pushq_delivery_retries_total", "Pushes that must be tried again, by vendor and reason.",
            ["vendor", "reason"], registry=None,
        )
        self.late_answers = Counter(
            "pushq_vendor_late_answers_total",
            "Vendor answers that came after pushq had given up waiting (the push was reported retry), by vendor.",
            ["vendor"], registry=None,
        )


_metrics: Metrics | None = None
_metrics_lock = threading.Lock()


def metrics() -> Metrics:
    """This process's metrics (imports prometheus_client on first use)."""
    global _metrics
    if _metrics is None:
        with _metrics_lock:
            if _metrics is None:
                _metrics = Metrics()
    return _metrics


def observe_many(histogram: Any, values: Sequence[float]) -> None:
    """Observe many values at two file writes per bucket used, not two per value.

    A chunk of deliveries is recorded at once; prometheus_client has no bulk
    observe, so this counts per bucket and adds, falling back to ``observe``
    should its internals change.
    """
    bounds, buckets, total = getattr(histogram, "_upper_bounds", None), getattr(histogram, "_buckets", None), \
        getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(value)
        return
    counts = [0] * len(buckets)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1
    for index, count in enumerate(counts):
        if count:
            buckets[index].inc(count)
    total.inc(sum(values))


class _HostCollector:
    """Adds up the samples every process group of the host wrote under the base directory."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def collect(self) -> Iterable[Any]:
        from prometheus_client.multiprocess import MultiProcessCollector

        for _ in range(3):  # a group that stops during the scrape takes its files along
            files = glob.glob(str(self.base / "*" / "*.db"))
            try:
                return cast(Iterable[Any], MultiProcessCollector.merge(files, accumulate=True))
            except FileNotFoundError:
                continue
        return []


class _OwnCollector:
    """This process's metrics, when they are not in files (prometheus_client was imported too early)."""

    def collect(self) -> Iterable[Any]:
        for metric in vars(metrics()).values():
            yield from metric.collect()


def host_registry(settings: Settings, *collectors: Any) -> Any:
    """A registry with every pushq process's metrics on this host, plus ``collectors`` (read at scrape time)."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_HostCollector(base_dir(settings)))
    if not _multiprocess_enabled():
        registry.register(_OwnCollector())
    for collector in collectors:
        registry.register(collector)
    return registry


def metrics_authorized(authorization: str | None, token: str | None) -> bool:
    """Whether a scrape may read the metrics: always without PUSHQ_METRICS_TOKEN, else only with
    ``Authorization: Bearer <token>`` (compared in constant time)."""
    if not token:
        return True
    return hmac.compare_digest((authorization or "").encode("utf-8", "replace"), f"Bearer {token}".encode())


def serve_metrics(registry: Any, host: str, port: int, token: str | None) -> Any:
    """Serve ``registry`` at ``http://host:port/`` (any path) from a daemon thread, honouring ``token``.

    For hosts that run workers without the API (PUSHQ_WORKER_METRICS_PORT). Returns
    the server (``shutdown()`` stops it); OSError when the port is taken.
    """
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import make_wsgi_app

    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if not metrics_authorized(environ.get("HTTP_AUTHORIZATION"), token):
            start_response("401 Unauthorized", [("Content-Type", "application/json"),
                                                ("WWW-Authenticate", 'Bearer realm="metrics"')])
            return [b'{"error":"invalid_token","message":"Invalid token"}']
        return cast(Iterable[bytes], metrics_app(environ, start_response))

    class ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = make_server(host, port, app, server_class=ThreadingServer, handler_class=QuietHandler)
    threading.Thread(target=server.serve_forever, name="pushq-metrics", daemon=True).start()
    return server


def exposition(registry: Any) -> tuple[bytes, str]:
    """The registry in the Prometheus text format, with its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(registry), CONTENT_TYPE_LATEST
