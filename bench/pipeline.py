"""The whole pipeline on loopback, measured next to a plain pywebpush loop: `python -m bench pipeline`.

Everything runs as in production, each in its own process group: gunicorn (2
workers) serving ``api.wsgi:app``, one Celery worker (prefork, concurrency 2,
every queue) and beat, PostgreSQL and Redis as configured, and the Web Push,
APNs and FCM stand-ins. The benchmark talks to the service only over HTTP and,
to set up users and devices quickly, through the service layer
(``create_app``, ``enroll``, ``register_device``, credentials setters).

Figures (see docs/benchmarks.md):

* baseline — a plain ``pywebpush.webpush()`` loop to the same Web Push stand-in:
  CPU per message (``time.process_time``) and messages/s; and encryption alone.
* end to end — N Web Push deliveries (users × 2 devices, bulks of 500) from
  the first request to the last outcome recorded: deliveries/s and worker CPU
  per delivery (utime+stime of the Celery worker and all its children, before
  and after); the same for APNs and FCM.
* accept — latency of a bulk of 500 and of single sends at a fixed rate
  (open loop: latency counts from when the request was due, so a stalled
  server cannot hide its backlog).
* fan-out — one bulk of 500 users × 2 devices until all 1,000 outcomes are final.
* memory — RSS of the worker's pool processes before and after many deliveries.

Nothing here is imported by the service; importing this module starts nothing.
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

from bench import storage
from bench.broadcast import phase_broadcast
from bench.launch import (
    ApnsKey,
    ApnsService,
    FcmService,
    WebPushService,
    new_apns_key,
    start_apns,
    start_fcm,
    start_webpush,
)
from bench.procs import BenchError, Child, Processes, free_port, install_signal_handlers, wait_until
from broker.queues import ALL_QUEUES

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_DATABASE_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
QUEUES = ",".join(ALL_QUEUES)
OPEN_STATUSES = ("pending", "sending", "retrying")
BULK_SIZE = 500
TITLE = "Your shift starts in 30 min"
BODY = "Open GymOps to view details."
DATA = {"route": "/schedule"}

# Secrets of the benchmark deployment: fixed, like the test suite's (tests/conftest.py TEST_ENV).
SERVICE_ENV = {
    "JWT_SECRET": "bench-secret-not-for-production-0123456789",
    "JWT_ALGORITHMS": "HS256",
    "JWT_ISSUER": "pushq-bench",
    "JWT_AUDIENCE": "pushq",
    "PUSHQ_ALLOW_HTTP_ENDPOINTS": "1",
    "PUSHQ_ENCRYPTION_KEYS": "udalwLV3Xwyir7WlZRUceIgPv7dzPe1gowd4EZC3FAM=",
    "PUSHQ_TOKEN_HASH_KEY": "bench-token-hash-key-not-for-production-0123456789",
    "PUSHQ_VENDOR_CONNECT_TIMEOUT": "5",
    "PUSHQ_VENDOR_READ_TIMEOUT": "10",
    "PUSHQ_LOG_LEVEL": "INFO",
    # Production-like scheduling (unlike the tests' 0.5 s sweeps): a backlog is not re-enqueued.
    "PUSHQ_SWEEP_INTERVAL": "30",
    "PUSHQ_SWEEP_AFTER_SECONDS": "60",
    # The benchmark sends far more than a day's default quota per app.
    "PUSHQ_DEFAULT_DAILY_QUOTA": "1000000000",
}


@dataclass(frozen=True)
class Scale:
    """How much each phase does; ``quick`` keeps the whole run under 2 minutes."""

    name: str
    baseline_messages: int
    web_users: int  # × 2 devices each
    mobile_users: int  # per vendor, × 2 devices each
    bulk_samples: int
    single_seconds: float
    single_rate: float
    fanout_runs: int
    memory_deliveries: int
    drain_timeout: float
    storage_single_users: int = 2500  # × 2 devices: single sends whose database cost is measured
    retention_deliveries: int = 1_000_000  # one day of them, removed by DELETE and by DROP
    broadcast_users: int = 100_000  # × 1 Web Push device: one broadcast to all of them

    @staticmethod
    def full() -> Scale:
        return Scale("full", 2000, 10_000, 1000, 20, 30.0, 200.0, 3, 100_000, 900.0)

    @staticmethod
    def quick() -> Scale:
        return Scale("quick", 500, 1000, 200, 5, 5.0, 200.0, 1, 10_000, 120.0, 500, 100_000, 2000)


@dataclass
class Figure:
    """One row of the table: a measured value against its target."""

    name: str
    unit: str
    samples: list[float]
    target: float | None  # None: informational
    comparison: str = "<="  # how median must relate to target
    target_text: str = ""
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def ratio(self) -> float | None:
        if self.target is None or not self.target:
            return None
        return self.median / self.target

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.median <= self.target if self.comparison == "<=" else self.median >= self.target

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "unit": self.unit, "median": self.median, "samples": self.samples,
                "target": self.target, "comparison": self.comparison, "target_text": self.target_text,
                "ratio": self.ratio, "met": self.met, "note": self.note}


@dataclass
class Context:
    """What the phases share: processes, database, settings and the stand-ins."""

    scale: Scale
    procs: Processes
    work_dir: Path
    env: dict[str, str]
    settings: Any
    engine: Engine
    session_factory: Any
    webpush: WebPushService
    apns: ApnsService
    apns_key: ApnsKey
    fcm: FcmService
    api_url: str = ""
    api: Child | None = None
    worker: Child | None = None
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def progress(self, message: str) -> None:
        ctx_print(message)


# -- environment ----------------------------------------------------------------


def bench_urls() -> tuple[str, str]:
    return os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL), os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL)


def check_disposable(database_url: str, redis_url: str) -> None:
    """Refuse to empty a database or Redis db that does not look like the benchmark's own.

    The benchmark truncates every table and flushes the Redis db it is given;
    pointing BENCH_DATABASE_URL at a real database by mistake must not wipe it.
    """
    if os.environ.get("BENCH_ALLOW_ANY_DATABASE") == "1":
        return
    name = make_url(database_url).database or ""
    if "bench" not in name:
        raise BenchError(f"refusing to empty database {name!r}: its name must contain 'bench' "
                         "(or set BENCH_ALLOW_ANY_DATABASE=1)")
    if redis_url.rstrip("/").rsplit("/", 1)[-1] in ("0", "15"):
        raise BenchError(f"refusing to flush {redis_url}: db 0 and 15 are the service's and the tests' "
                         "(or set BENCH_ALLOW_ANY_DATABASE=1)")


def prepare_database(database_url: str) -> None:
    """Create the database if missing, drop and recreate its schema, then ``alembic upgrade head``."""
    import psycopg2
    from psycopg2 import sql

    from shared.schema import migrate

    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise BenchError(f"the benchmark needs PostgreSQL, not {url.get_backend_name()}")
    admin = psycopg2.connect(host=url.host or "127.0.0.1", port=url.port or 5432, user=url.username or "postgres",
                             password=url.password, dbname="postgres", connect_timeout=10)
    try:
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,))
            if cursor.fetchone() is None:
                cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(url.database)))
    finally:
        admin.close()
    from shared.db import make_engine

    # A fresh schema every run (like the test suite's): a disposable database, and a migration
    # edited during development is applied as it now reads rather than skipped as already applied.
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()
    try:
        migrate(database_url)
    except Exception as exc:
        raise BenchError(f"alembic upgrade head failed on {url.database}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:500]}") from exc


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    # Other work on the machine (a test suite, another benchmark) skews every figure: record it.
    return {"cores": os.cpu_count(), "cpu": model, "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


# -- process accounting -----------------------------------------------------------


def tree_cpu(pid: int) -> float:
    """User+system seconds of a process and all its children, living or reaped."""
    try:
        root = psutil.Process(pid)
        times = root.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in root.children(recursive=True):
            try:
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
            except psutil.NoSuchProcess:
                pass
        return total
    except psutil.NoSuchProcess:
        raise BenchError(f"process {pid} is gone") from None


def pool_rss(pid: int) -> dict[int, int]:
    """RSS in bytes of each child (the prefork pool processes) of the worker."""
    out = {}
    for child in psutil.Process(pid).children(recursive=True):
        try:
            out[child.pid] = child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return out


# -- setup through the service layer -------------------------------------------------


def create_tenant(ctx: Context, name: str, *, apns: bool = False, fcm: bool = False) -> tuple[uuid.UUID, str]:
    """An app (with vendor credentials the stand-ins trust); returns (id, VAPID public key)."""
    from shared.db import session_scope
    from shared.services.apps import create_app, set_apns_credentials, set_fcm_credentials

    with session_scope(ctx.session_factory) as session:
        app = create_app(session, name, "mailto:bench@example.com")
        app_id, public_key = app.id, app.vapid_public_key
        if apns:
            set_apns_credentials(session, app_id, private_key_pem=ctx.apns_key.pem, key_id=ctx.apns_key.key_id,
                                 team_id=ctx.apns_key.team_id, bundle_id="com.example.app", use_sandbox=True)
        if fcm:
            extra = {}
            if "fcm_base_url" in inspect.signature(set_fcm_credentials).parameters:
                # Newer service layers accept a token_uri only at Google or under PUSHQ_FCM_BASE_URL.
                extra["fcm_base_url"] = ctx.settings.fcm_base_url
            set_fcm_credentials(session, app_id, json.dumps(ctx.fcm.service_account), **extra)
    return app_id, public_key


def add_users(ctx: Context, app_id: uuid.UUID, users: int, platform_name: str | None,
              tokens: Callable[[int], list[str]] | None = None) -> list[uuid.UUID]:
    """Enroll ``users`` users, each with two devices of ``platform_name`` (None: no devices)."""
    from shared.db import session_scope
    from shared.services.devices import register_device
    from shared.services.enrollments import enroll

    user_ids = [uuid.uuid4() for _ in range(users)]
    for start in range(0, users, 1000):
        with session_scope(ctx.session_factory) as session:
            enroll(session, app_id, user_ids[start:start + 1000])
    if platform_name is None or tokens is None:
        return user_ids
    for start in range(0, users, 250):
        batch = user_ids[start:start + 250]
        batch_tokens = tokens(2 * len(batch))
        with session_scope(ctx.session_factory) as session:
            for i, user_id in enumerate(batch):
                for token in batch_tokens[2 * i:2 * i + 2]:
                    register_device(session, app_id=app_id, user_id=user_id, platform=platform_name,
                                    push_token=token, allow_http_endpoints=True)
    return user_ids


def web_tokens(ctx: Context, public_key: str) -> Callable[[int], list[str]]:
    return lambda n: [json.dumps(s) for s in ctx.webpush.subscriptions(n, public_key)]


def apns_tokens(n: int) -> list[str]:
    return [uuid.uuid4().hex + uuid.uuid4().hex for _ in range(n)]


def fcm_tokens(n: int) -> list[str]:
    return [f"bench:{uuid.uuid4().hex}{uuid.uuid4().hex}-{uuid.uuid4().hex[:12]}" for _ in range(n)]


# -- the HTTP side -------------------------------------------------------------------


def service_headers(ctx: Context, app_id: uuid.UUID) -> dict[str, str]:
    from shared.token_signing import mint_token

    token = mint_token(ctx.settings, subject="bench", app_id=app_id, scopes=("push:send",), lifetime_seconds=6 * 3600)
    return {"Authorization": f"Bearer {token}"}


def http_client(ctx: Context) -> httpx.Client:
    return httpx.Client(base_url=ctx.api_url, timeout=30.0, trust_env=False)


def post_ok(http: httpx.Client, path: str, body: dict, headers: dict[str, str]) -> httpx.Response:
    response = http.post(path, json=body, headers=headers)
    if response.status_code != 200:
        raise BenchError(f"POST {path} answered {response.status_code}: {response.text[:500]}")
    return response


def send_bulks(ctx: Context, http: httpx.Client, headers: dict[str, str], user_ids: list[uuid.UUID]) -> None:
    for start in range(0, len(user_ids), BULK_SIZE):
        post_ok(http, "/push/send/bulk", {"user_ids": [str(u) for u in user_ids[start:start + BULK_SIZE]],
                                          "title": TITLE, "body": BODY, "data": DATA}, headers)


# -- waiting for outcomes --------------------------------------------------------------


def db_now(ctx: Context) -> datetime:
    """The service stamps rows with Python's UTC clock; the same clock marks phase starts."""
    return datetime.now(UTC)


def delivery_state(ctx: Context, app_id: uuid.UUID, since: datetime) -> tuple[int, int, int, float | None]:
    """(queued notifications, open deliveries, all deliveries, epoch of the last delivery update) of a phase."""
    with ctx.engine.connect() as connection:
        queued = connection.execute(text(
            "SELECT count(*) FROM notifications WHERE app_id = :app AND created_at >= :since AND status = 'queued'"
        ), {"app": app_id, "since": since}).scalar_one()
        row = connection.execute(text(
            "SELECT count(*) FILTER (WHERE d.status IN ('pending', 'sending', 'retrying')), count(*), "
            "extract(epoch FROM max(d.updated_at)) "
            "FROM deliveries d JOIN notifications n ON n.id = d.notification_id "
            "WHERE n.app_id = :app AND n.created_at >= :since"
        ), {"app": app_id, "since": since}).one()
    return queued, row[0], row[1], float(row[2]) if row[2] is not None else None


def outcome_counts(ctx: Context, app_id: uuid.UUID, since: datetime) -> dict[str, int]:
    with ctx.engine.connect() as connection:
        rows = connection.execute(text(
            "SELECT d.status, count(*) FROM deliveries d JOIN notifications n ON n.id = d.notification_id "
            "WHERE n.app_id = :app AND n.created_at >= :since GROUP BY d.status"
        ), {"app": app_id, "since": since}).all()
    return dict(rows)


def wait_final(ctx: Context, what: str, app_id: uuid.UUID, since: datetime, expected: int, timeout: float,
               interval: float) -> float:
    """Wait until the phase's ``expected`` deliveries all exist and none is open; returns the end (epoch s).

    The end is the last delivery's ``updated_at`` when it is plausible (the
    moment the last outcome was written), else the poll that saw it.
    """
    last_seen: list[Any] = [None]

    def done() -> bool:
        ctx.procs.check_alive()
        state = delivery_state(ctx, app_id, since)
        last_seen[0] = state
        queued, open_, total, _ = state
        return queued == 0 and open_ == 0 and total >= expected

    def explain() -> str:
        queued, open_, total, _ = last_seen[0] or (None, None, None, None)
        tail = ctx.worker.log_tail(2500) if ctx.worker else ""
        return (f"{what}: {total} of {expected} deliveries exist, {open_} still open, "
                f"{queued} notifications not fanned out; outcomes so far {outcome_counts(ctx, app_id, since)}\n{tail}")

    wait_until(what, done, timeout, interval, on_timeout=explain)
    seen_at = time.time()
    last_update = last_seen[0][3]
    if last_update is not None and since.timestamp() < last_update <= seen_at + 1.0:
        return min(last_update, seen_at)
    return seen_at


def wait_notifications_settled(ctx: Context, app_id: uuid.UUID, since: datetime, timeout: float) -> None:
    """Wait until no notification of the phase is still queued (for sends to users without devices)."""

    def done() -> bool:
        ctx.procs.check_alive()
        queued, open_, _total, _ = delivery_state(ctx, app_id, since)
        return queued == 0 and open_ == 0

    wait_until("the accepted notifications to be fanned out", done, timeout, 0.2,
               on_timeout=lambda: ctx.worker.log_tail(2500) if ctx.worker else "")


# -- processes ----------------------------------------------------------------------------


def start_service(ctx: Context) -> None:
    """gunicorn (2 workers, threaded as in the Procfile), one Celery worker (concurrency 2, every queue) and beat."""
    port = free_port()
    ctx.api_url = f"http://127.0.0.1:{port}"
    api = ctx.procs.start("api", [sys.executable, "-m", "gunicorn", "--config", "python:api.gunicorn_conf",
                                  "--workers", "2", "--worker-class", "gthread",
                                  "--threads", "8", "--bind", f"127.0.0.1:{port}", "--timeout", "60", "api.wsgi:app"])

    def healthy() -> bool:
        api.check_alive()
        try:
            return httpx.get(f"{ctx.api_url}/healthz", timeout=2, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until("the API to answer /healthz", healthy, 60, 0.2, on_timeout=api.log_tail)
    ctx.api = api
    worker = ctx.procs.start("worker", [sys.executable, "-m", "celery", "-A", "workers.main", "worker",
                                        "--pool", "prefork", "--concurrency", "2", "-Q", QUEUES, "--loglevel", "INFO",
                                        "-n", f"bench-{os.getpid()}@%h", "--without-gossip", "--without-mingle"])
    ctx.worker = worker
    wait_until("the Celery worker to be ready", lambda: worker.check_alive() or "ready." in _read(worker), 90, 0.2,
               on_timeout=worker.log_tail)
    beat = ctx.procs.start("beat", [sys.executable, "-m", "celery", "-A", "workers.main", "beat", "--loglevel", "INFO",
                                    "-s", str(ctx.work_dir / "celerybeat-schedule")])
    wait_until("beat to start", lambda: beat.check_alive() or "beat: Starting" in _read(beat), 60, 0.2,
               on_timeout=beat.log_tail)


def ctx_print(message: str) -> None:
    print(f"[pipeline {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _read(child: Child) -> str:
    try:
        return child.log_path.read_text(errors="replace")
    except OSError:
        return ""


# -- phases -----------------------------------------------------------------------------------


def phase_baseline(ctx: Context) -> dict[str, float]:
    """A plain pywebpush.webpush() loop and encryption alone, to the same stand-in."""
    from pywebpush import WebPusher, webpush

    from shared.vapid import generate_vapid_key_pair

    n = ctx.scale.baseline_messages
    ctx.progress(f"baseline: plain pywebpush.webpush() loop of {n} messages, then encryption alone")
    subscriptions = ctx.webpush.subscriptions(n)
    keys = generate_vapid_key_pair()
    der_b64 = "".join(line for line in keys.private_pem.splitlines() if "-----" not in line)
    payload = json.dumps({"title": TITLE, "body": BODY, "data": DATA}, separators=(",", ":")).encode()
    # Warm-up (imports, first connection) outside the measurement.
    webpush(subscriptions[0], payload, vapid_private_key=der_b64, vapid_claims={"sub": "mailto:bench@example.com"}, ttl=3600)
    failures = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    for subscription in subscriptions:
        # A fresh claims dict per call: webpush() writes aud/exp into it (vendor-facts.md).
        response = webpush(subscription, payload, vapid_private_key=der_b64,
                           vapid_claims={"sub": "mailto:bench@example.com"}, ttl=3600)
        if response.status_code != 201:
            failures += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if failures:
        raise BenchError(f"the plain pywebpush loop had {failures} failed pushes: the stand-in is not accepting them")
    cpu0 = time.process_time()
    for subscription in subscriptions:
        WebPusher(subscription).encode(payload, "aes128gcm")
    encrypt = time.process_time() - cpu0
    result = {"cpu_per_message_s": cpu / n, "messages_per_s": n / wall, "encrypt_cpu_per_message_s": encrypt / n}
    ctx.details["baseline"] = {"messages": n, **result}
    ctx.progress(f"baseline: {result['cpu_per_message_s'] * 1e6:,.0f} µs CPU/message, "
                 f"{result['messages_per_s']:,.0f} messages/s, encryption {result['encrypt_cpu_per_message_s'] * 1e6:,.0f} µs")
    return result


def run_end_to_end(ctx: Context, label: str, app_id: uuid.UUID, user_ids: list[uuid.UUID], devices_per_user: int,
                   interval: float = 0.2) -> dict[str, Any]:
    """Bulks of 500 to every user; wait for every outcome; deliveries/s and worker CPU per delivery."""
    assert ctx.worker is not None
    expected = len(user_ids) * devices_per_user
    headers = service_headers(ctx, app_id)
    since = db_now(ctx)
    with http_client(ctx) as http:
        cpu0 = tree_cpu(ctx.worker.pid)
        start = time.time()
        send_bulks(ctx, http, headers, user_ids)
        accepted = time.time()
        end = wait_final(ctx, f"{label}: {expected} deliveries to be final", app_id, since, expected,
                         ctx.scale.drain_timeout, interval)
    cpu = tree_cpu(ctx.worker.pid) - cpu0
    outcomes = outcome_counts(ctx, app_id, since)
    seconds = end - start
    result = {"deliveries": expected, "seconds": seconds, "accept_seconds": accepted - start,
              "deliveries_per_s": expected / seconds, "worker_cpu_s": cpu, "worker_cpu_per_delivery_s": cpu / expected,
              "outcomes": outcomes}
    not_sent = {k: v for k, v in outcomes.items() if k != "sent"}
    ctx.progress(f"{label}: {expected} deliveries in {seconds:.2f} s = {result['deliveries_per_s']:,.0f}/s, "
                 f"worker CPU {result['worker_cpu_per_delivery_s'] * 1e6:,.0f} µs/delivery"
                 + (f"; NOT SENT: {not_sent}" if not_sent else ""))
    return result


def phase_accept(ctx: Context) -> tuple[list[float], dict[str, Any]]:
    """Bulk-of-500 latency (sequential requests) and single sends at a fixed rate, open loop."""
    app_id, _ = create_tenant(ctx, "bench accept")
    # Users without devices: acceptance is measured without a delivery backlog competing for the cores.
    user_ids = add_users(ctx, app_id, BULK_SIZE, None)
    headers = service_headers(ctx, app_id)
    since = db_now(ctx)
    body = {"user_ids": [str(u) for u in user_ids], "title": TITLE, "body": BODY, "data": DATA}
    bulk_latencies = []
    ctx.progress(f"accept: {ctx.scale.bulk_samples} bulks of {BULK_SIZE}, one after another")
    with http_client(ctx) as http:
        post_ok(http, "/push/send/bulk", body, headers)  # warm-up: both gunicorn workers' first requests
        post_ok(http, "/push/send/bulk", body, headers)
        wait_notifications_settled(ctx, app_id, since, 60)
        for _ in range(ctx.scale.bulk_samples):
            t0 = time.perf_counter()
            post_ok(http, "/push/send/bulk", body, headers)
            bulk_latencies.append(time.perf_counter() - t0)
            wait_notifications_settled(ctx, app_id, since, 60)  # each bulk meets an idle worker
    ctx.progress(f"accept: bulk of {BULK_SIZE} median {statistics.median(bulk_latencies) * 1e3:.1f} ms; "
                 f"single sends at {ctx.scale.single_rate:.0f}/s for {ctx.scale.single_seconds:.0f} s")
    singles = open_loop_singles(ctx, headers, user_ids, ctx.scale.single_rate, ctx.scale.single_seconds)
    wait_notifications_settled(ctx, app_id, since, 120)
    ctx.progress(f"accept: single send p50 {singles['p50_s'] * 1e3:.1f} ms, p99 {singles['p99_s'] * 1e3:.1f} ms "
                 f"({singles['answered']} answered, {singles['achieved_rate']:.0f}/s achieved"
                 + (f", {singles['missed']} not sent: too far behind schedule" if singles["missed"] else "")
                 + ")")
    return bulk_latencies, singles


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def open_loop_singles(ctx: Context, headers: dict[str, str], user_ids: list[uuid.UUID], rate: float,
                      seconds: float, threads: int = 8) -> dict[str, Any]:
    """POST /push/send at ``rate``/s for ``seconds``: request i is due at start + i/rate, whoever is free sends it.

    Latency is measured from the due time, so a server that falls behind shows
    its queueing in the figures instead of slowing the load down (coordinated
    omission). The phase is bounded: requests not even started within
    ``grace`` seconds after the schedule ends are not sent and count as
    ``missed``, with their lateness at that point as a lower bound of their latency.
    """
    total = int(rate * seconds)
    grace = max(5.0, seconds / 2)
    lock = threading.Lock()
    next_index = [0]
    latencies: list[float] = []
    service_times: list[float] = []
    errors: list[str] = []
    missed = [0]
    bodies = [{"user_id": str(user_ids[i % len(user_ids)]), "title": TITLE, "body": BODY, "data": DATA}
              for i in range(min(total, len(user_ids)))]
    with http_client(ctx) as warm:  # connections and both gunicorn workers warm
        for body in bodies[:10]:
            post_ok(warm, "/push/send", body, headers)
    start = time.perf_counter() + 0.2
    cutoff = start + seconds + grace

    def run() -> None:
        with http_client(ctx) as http:
            while True:
                with lock:
                    i = next_index[0]
                    if i >= total:
                        return
                    next_index[0] += 1
                due = start + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                sent_at = time.perf_counter()
                if sent_at > cutoff:
                    with lock:
                        missed[0] += 1
                        latencies.append(sent_at - due)
                    continue
                try:
                    response = http.post("/push/send", json=bodies[i % len(bodies)], headers=headers)
                    ok = response.status_code == 200
                    detail = f"{response.status_code} {response.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, detail = False, repr(exc)
                finished = time.perf_counter()
                with lock:
                    if ok:
                        latencies.append(finished - due)
                        service_times.append(finished - sent_at)
                    else:
                        errors.append(detail)

    workers = [threading.Thread(target=run, name=f"single-{n}", daemon=True) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        # A request started before the cutoff may take up to the client timeout (30 s).
        worker.join(timeout=max(1.0, cutoff - time.perf_counter() + 35))
    elapsed = time.perf_counter() - start
    if any(worker.is_alive() for worker in workers):
        raise BenchError("single sends did not finish within 35 s of their cutoff")
    if errors:
        raise BenchError(f"{len(errors)} single sends failed, e.g. {errors[0]}")
    answered = len(service_times)
    return {"requests": total, "answered": answered, "missed": missed[0], "errors": len(errors), "rate": rate,
            "seconds": seconds, "achieved_rate": answered / elapsed if elapsed else 0.0,
            "p50_s": percentile(latencies, 50), "p99_s": percentile(latencies, 99), "max_s": max(latencies),
            "service_p50_s": percentile(service_times, 50), "service_p99_s": percentile(service_times, 99)}


def phase_single_storage(ctx: Context) -> dict[str, Any]:
    """Single sends to users with two Web Push devices each: database bytes, WAL and CPU per delivery."""
    assert ctx.worker is not None and ctx.api is not None
    users = ctx.scale.storage_single_users
    app_id, public_key = create_tenant(ctx, "bench singles")
    user_ids = add_users(ctx, app_id, users, "web", web_tokens(ctx, public_key))
    headers = service_headers(ctx, app_id)
    ctx.progress(f"storage: {users:,} single sends to users with 2 Web Push devices each")

    def send(slice_: list[uuid.UUID]) -> None:
        with http_client(ctx) as http:
            for user in slice_:
                post_ok(http, "/push/send", {"user_id": str(user), "title": TITLE, "body": BODY, "data": DATA}, headers)

    def phase() -> dict[str, Any]:
        assert ctx.worker is not None and ctx.api is not None
        since = db_now(ctx)
        api0, worker0 = tree_cpu(ctx.api.pid), tree_cpu(ctx.worker.pid)
        threads = [threading.Thread(target=send, args=(user_ids[n::8],), daemon=True) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # Each single send is its own fan-out task: on a loaded machine they drain slowly.
        wait_final(ctx, f"storage: {2 * users} deliveries of single sends", app_id, since, 2 * users,
                   max(ctx.scale.drain_timeout, 600.0), 0.5)
        return {"api_cpu_per_accept_s": (tree_cpu(ctx.api.pid) - api0) / users,
                "worker_cpu_per_delivery_s": (tree_cpu(ctx.worker.pid) - worker0) / (2 * users)}

    cpu, cost = storage.measured(ctx.engine, phase, 2 * users)
    ctx.progress(storage.describe("single sends", cost))
    with ctx.engine.connect() as connection:
        devices = connection.execute(text("SELECT id FROM devices WHERE app_id = :app AND user_id = :user"),
                                     {"app": app_id, "user": user_ids[0]}).scalars().all()
    return {**cost, **cpu, "app_id": app_id, "device_ids": tuple(devices[:2])}


def phase_retention(ctx: Context, app_id: uuid.UUID, device_ids: tuple[uuid.UUID, uuid.UUID]) -> dict[str, Any]:
    deliveries = ctx.scale.retention_deliveries
    ctx.progress(f"retention: one day of {deliveries:,} deliveries past retention, batched DELETE vs DROP of a day partition")
    result = storage.retention_cost(ctx.engine, ctx.session_factory, app_id, device_ids, deliveries)
    ctx.progress(f"retention: DELETE {result['delete']['seconds']:.1f} s in {result['delete']['statements']} statements, "
                 f"WAL {result['delete']['wal_bytes'] / 2**20:,.0f} MiB; DROP {result['drop']['seconds'] * 1e3:.0f} ms in "
                 f"{result['drop']['statements']} statements, WAL {result['drop']['wal_bytes'] / 2**10:,.0f} KiB "
                 f"(setup {result['setup_seconds']:.0f} s)")
    return result


def phase_fanout(ctx: Context) -> list[float]:
    """One bulk of 500 users × 2 Web Push devices, until all 1,000 outcomes are final (seconds)."""
    app_id, public_key = create_tenant(ctx, "bench fan-out")
    user_ids = add_users(ctx, app_id, BULK_SIZE, "web", web_tokens(ctx, public_key))
    headers = service_headers(ctx, app_id)
    samples = []
    for run in range(ctx.scale.fanout_runs):
        since = db_now(ctx)
        with http_client(ctx) as http:
            start = time.time()
            send_bulks(ctx, http, headers, user_ids)
            end = wait_final(ctx, "fan-out: 1,000 deliveries to be final", app_id, since, 2 * BULK_SIZE, 120, 0.02)
        outcomes = outcome_counts(ctx, app_id, since)
        samples.append(end - start)
        ctx.progress(f"fan-out run {run + 1}/{ctx.scale.fanout_runs}: {2 * BULK_SIZE} outcomes final in "
                     f"{end - start:.2f} s ({outcomes})")
        time.sleep(0.5)
    return samples


def phase_memory(ctx: Context, app_id: uuid.UUID, user_ids: list[uuid.UUID]) -> dict[str, Any]:
    """Pool processes' RSS before and after many Web Push deliveries to the same users."""
    assert ctx.worker is not None
    target = ctx.scale.memory_deliveries
    rounds = max(1, -(-target // (2 * len(user_ids))))
    before = pool_rss(ctx.worker.pid)
    headers = service_headers(ctx, app_id)
    ctx.progress(f"memory: pool RSS {sum(before.values()) / 2**20:.1f} MiB over {len(before)} processes; "
                 f"{rounds} rounds of {2 * len(user_ids)} deliveries ({rounds * 2 * len(user_ids):,} in all)")
    delivered = 0
    t0 = time.time()
    with http_client(ctx) as http:
        for round_no in range(rounds):
            since = db_now(ctx)
            send_bulks(ctx, http, headers, user_ids)
            wait_final(ctx, f"memory round {round_no + 1}", app_id, since, 2 * len(user_ids),
                       ctx.scale.drain_timeout, 1.0)
            delivered += 2 * len(user_ids)
            ctx.progress(f"memory: {delivered:,} deliveries done "
                         f"({delivered / (time.time() - t0):,.0f}/s), pool RSS {sum(pool_rss(ctx.worker.pid).values()) / 2**20:.1f} MiB")
    after = pool_rss(ctx.worker.pid)
    replaced = sorted(set(before) ^ set(after))
    growth = (sum(after.values()) - sum(before.values())) / sum(before.values()) if before else float("nan")
    return {"deliveries": delivered, "rss_before_bytes": before, "rss_after_bytes": after,
            "rss_before_total": sum(before.values()), "rss_after_total": sum(after.values()),
            "growth": growth, "pool_processes_replaced": replaced}


# -- the run ------------------------------------------------------------------------------


def run(quick: bool = False, output: Path | None = None, keep_logs: bool = False,
        storage_only: bool = False) -> dict[str, Any]:
    """Run every phase; print the table and write ``output`` (JSON). Stops everything it started."""
    install_signal_handlers()
    scale = Scale.quick() if quick else Scale.full()
    database_url, redis_url = bench_urls()
    check_disposable(database_url, redis_url)
    info = machine_info()
    began = time.time()
    print(f"pipeline benchmark ({scale.name}) on {info['cores']} cores ({info['cpu'] or 'unknown CPU'}), "
          f"Python {info['python']}; database {make_url(database_url).render_as_string(hide_password=True)}, "
          f"Redis {redis_url}", flush=True)

    log_dir = RESULTS_DIR / "run"
    shutil.rmtree(log_dir, ignore_errors=True)
    work_dir = Path(tempfile.mkdtemp(prefix="pushq-bench-"))
    ok = False
    try:
        with Processes(log_dir) as procs:
            result = _run(scale, procs, work_dir, database_url, redis_url, info, storage_only)
        ok = True
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
        if ok and not keep_logs:
            shutil.rmtree(log_dir, ignore_errors=True)
        elif not ok:
            print(f"process logs kept in {log_dir}", file=sys.stderr)
    result["seconds"] = time.time() - began
    print_table(result)
    output = output or RESULTS_DIR / "latest.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwrote {output} ({result['seconds']:.0f} s in all)")
    return result


def _run(scale: Scale, procs: Processes, work_dir: Path, database_url: str, redis_url: str,
         info: dict[str, Any], storage_only: bool = False) -> dict[str, Any]:
    from shared import crypto
    from shared.config import Settings
    from shared.db import make_engine, make_session_factory

    ctx_print("preparing the database (create if missing, fresh schema, alembic upgrade head) and flushing the Redis db")
    prepare_database(database_url)
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    try:
        client.flushdb()
    finally:
        client.close()

    ctx_print("starting the stand-ins")
    webpush = start_webpush(procs)
    apns_key = new_apns_key()
    apns = start_apns(procs, [apns_key], work_dir)
    fcm = start_fcm(procs, work_dir)
    env = {**os.environ, **SERVICE_ENV, "DATABASE_URL": database_url, "REDIS_URL": redis_url,
           "PUSHQ_APNS_HOST": apns.host, "PUSHQ_APNS_PORT": str(apns.port), "PUSHQ_APNS_CA_FILE": apns.ca_path,
           "PUSHQ_FCM_BASE_URL": fcm.base_url, "PYTHONWARNINGS": "ignore"}
    env.pop("PUSHQ_BROKER_URL", None)
    procs.env = env
    settings = Settings.from_env(env)
    crypto.configure(settings)
    engine = make_engine(database_url, connect_args={"application_name": storage.APPLICATION_NAME})
    try:
        ctx = Context(scale, procs, work_dir, env, settings, engine, make_session_factory(engine),
                      webpush, apns, apns_key, fcm)
        return _storage_phases(ctx, info) if storage_only else _phases(ctx, info)
    finally:
        engine.dispose()


def _storage_phases(ctx: Context, info: dict[str, Any]) -> dict[str, Any]:
    """Only what the database costs (``--storage-only``): bulk and single sends measured, and retention."""
    scale = ctx.scale
    web_app, web_key = create_tenant(ctx, "bench web")
    web_users = add_users(ctx, web_app, scale.web_users, "web", web_tokens(ctx, web_key))
    start_service(ctx)
    warm_app, warm_key = create_tenant(ctx, "bench warm-up")
    run_end_to_end(ctx, "warm-up web", warm_app, add_users(ctx, warm_app, 2, "web", web_tokens(ctx, warm_key)), 2, 0.1)
    bulk_storage = _bulk_storage(ctx, web_app, web_users)[1]
    single_storage = phase_single_storage(ctx)
    retention = phase_retention(ctx, single_storage.pop("app_id"), single_storage.pop("device_ids"))
    ctx.details.update(bulk_storage=bulk_storage, single_storage=single_storage, retention=retention)
    return {"when": datetime.now(UTC).isoformat(timespec="seconds"), "mode": f"{scale.name}, storage only",
            "machine": info, "scale": scale.__dict__,
            "figures": [f.to_json() for f in storage_figures(bulk_storage, single_storage, retention)],
            "details": ctx.details}


def _bulk_storage(ctx: Context, app_id: uuid.UUID, user_ids: list[uuid.UUID]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Web Push end-to-end run (bulks of 500, 2 devices per user) with its database and API cost."""
    assert ctx.api is not None
    api_cpu0 = tree_cpu(ctx.api.pid)
    web, cost = storage.measured(ctx.engine, lambda: run_end_to_end(ctx, "Web Push", app_id, user_ids, 2),
                                 2 * len(user_ids))
    cost["api_cpu_per_accept_s"] = (tree_cpu(ctx.api.pid) - api_cpu0) / len(user_ids)
    cost["worker_cpu_per_delivery_s"] = web["worker_cpu_per_delivery_s"]
    cost["deliveries_per_s"] = web["deliveries_per_s"]
    ctx.progress(storage.describe("bulk sends", cost))
    return web, cost


def _phases(ctx: Context, info: dict[str, Any]) -> dict[str, Any]:
    scale = ctx.scale
    baseline = phase_baseline(ctx)

    ctx.progress(f"setup: apps, {scale.web_users:,} Web Push users and {scale.mobile_users:,} APNs and FCM users "
                 "(2 devices each) through the service layer")
    web_app, web_key = create_tenant(ctx, "bench web")
    web_users = add_users(ctx, web_app, scale.web_users, "web", web_tokens(ctx, web_key))
    apns_app, _ = create_tenant(ctx, "bench apns", apns=True)
    apns_users = add_users(ctx, apns_app, scale.mobile_users, "ios", apns_tokens)
    fcm_app, _ = create_tenant(ctx, "bench fcm", fcm=True)
    fcm_users = add_users(ctx, fcm_app, scale.mobile_users, "android", fcm_tokens)

    ctx.progress("starting gunicorn (2 workers), the Celery worker (concurrency 2) and beat")
    start_service(ctx)
    # Warm the worker's pool (imports, connections) on a tiny send of each kind before measuring.
    warm_app, warm_key = create_tenant(ctx, "bench warm-up", apns=True, fcm=True)
    warm_users = add_users(ctx, warm_app, 2, "web", web_tokens(ctx, warm_key))
    ctx.progress("warm-up: a few deliveries through every queue")
    run_end_to_end(ctx, "warm-up web", warm_app, warm_users, 2, 0.1)

    ctx.progress(f"end to end: {2 * scale.web_users:,} Web Push deliveries (bulks of {BULK_SIZE}, 2 devices per user)")
    web, bulk_storage = _bulk_storage(ctx, web_app, web_users)
    ctx.progress(f"end to end: {2 * scale.mobile_users:,} APNs deliveries")
    apns = run_end_to_end(ctx, "APNs", apns_app, apns_users, 2)
    ctx.progress(f"end to end: {2 * scale.mobile_users:,} FCM deliveries")
    fcm = run_end_to_end(ctx, "FCM", fcm_app, fcm_users, 2)

    bulk_latencies, singles = phase_accept(ctx)
    fanout = phase_fanout(ctx)
    memory = phase_memory(ctx, web_app, web_users)
    single_storage = phase_single_storage(ctx)
    retention = phase_retention(ctx, single_storage.pop("app_id"), single_storage.pop("device_ids"))
    from bench.front_door import phase_front_door

    front_door = phase_front_door(ctx, web_app, web_users, web["worker_cpu_per_delivery_s"])
    broadcast = phase_broadcast(ctx, scale.broadcast_users)
    ctx.details.update(web=web, apns=apns, fcm=fcm, singles=singles, bulk_latencies_s=bulk_latencies,
                       fanout_seconds=fanout, memory=memory, bulk_storage=bulk_storage,
                       single_storage=single_storage, retention=retention, broadcast=broadcast)

    base_cpu, base_rate = baseline["cpu_per_message_s"], baseline["messages_per_s"]
    web_cpu = web["worker_cpu_per_delivery_s"]
    us = 1e6
    figures = [
        Figure("plain pywebpush loop: CPU per message", "µs", [base_cpu * us], None, note="baseline"),
        Figure("plain pywebpush loop: messages/s", "/s", [base_rate], None, note="baseline"),
        Figure("encryption alone per message", "µs", [baseline["encrypt_cpu_per_message_s"] * us], None, note="baseline"),
        Figure(f"Web Push: worker CPU per delivery ({web['deliveries']:,})", "µs", [web_cpu * us],
               0.25 * base_cpu * us, "<=", "≤ 0.25× plain loop CPU/message"),
        Figure(f"Web Push: deliveries/s ({web['deliveries']:,})", "/s", [web["deliveries_per_s"]], 2 * base_rate, ">=",
               "≥ 2× plain loop messages/s"),
        Figure(f"APNs: worker CPU per delivery ({apns['deliveries']:,})", "µs", [apns["worker_cpu_per_delivery_s"] * us],
               2 * web_cpu * us, "<=", "≤ 2× Web Push's"),
        Figure(f"APNs: deliveries/s ({apns['deliveries']:,})", "/s", [apns["deliveries_per_s"]], None),
        Figure(f"FCM: worker CPU per delivery ({fcm['deliveries']:,})", "µs", [fcm["worker_cpu_per_delivery_s"] * us],
               2 * web_cpu * us, "<=", "≤ 2× Web Push's"),
        Figure(f"FCM: deliveries/s ({fcm['deliveries']:,})", "/s", [fcm["deliveries_per_s"]], None),
        Figure(f"accept: bulk of {BULK_SIZE} ({len(bulk_latencies)} requests)", "ms",
               [x * 1e3 for x in bulk_latencies], 60.0, "<=", "< 60 ms median"),
        Figure(f"accept: single send p50 at {singles['rate']:.0f}/s for {singles['seconds']:.0f} s", "ms",
               [singles["p50_s"] * 1e3], None),
        Figure(f"accept: single send p99 at {singles['rate']:.0f}/s for {singles['seconds']:.0f} s", "ms",
               [singles["p99_s"] * 1e3], 15.0, "<=", "< 15 ms",
               note=f"{singles['missed']} of {singles['requests']} not sent (server too far behind)" if singles["missed"] else ""),
        Figure(f"fan-out: {BULK_SIZE} users × 2 devices, all outcomes final ({len(fanout)} runs)", "s", fanout,
               2.0, "<=", "< 2 s"),
        Figure(f"memory: pool RSS growth over {memory['deliveries']:,} deliveries"
               + (" (quick mode: not 100,000)" if ctx.scale.name == "quick" else ""), "%",
               [memory["growth"] * 100], 5.0, "<=", "< 5 %"),
        *storage_figures(bulk_storage, single_storage, retention),
        *front_door,
        *broadcast_figures(broadcast, web, ctx.scale.name == "quick"),
    ]
    return {"when": datetime.now(UTC).isoformat(timespec="seconds"), "mode": ctx.scale.name,
            "machine": info, "scale": ctx.scale.__dict__, "figures": [f.to_json() for f in figures],
            "details": ctx.details}


def broadcast_figures(broadcast: dict[str, Any], web: dict[str, Any], quick: bool) -> list[Figure]:
    """Issue 17's broadcast targets, against the bulk path of the same run."""
    n = f"{broadcast['deliveries']:,}" + (" (quick mode: not 100,000)" if quick else "")
    bulk_per_delivery = web["seconds"] / web["deliveries"]
    return [
        Figure(f"broadcast to {n} users × 1 Web Push device: accepted", "ms", [broadcast["accept_s"] * 1e3], 50.0,
               "<=", "< 50 ms"),
        Figure("broadcast: first push after the accept", "s", [broadcast["first_push_s"]], 1.0, "<=", "< 1 s"),
        Figure("broadcast: time per delivery, all final (÷ the bulk path's in this run)", "×",
               [broadcast["seconds_per_delivery"] / bulk_per_delivery], 1.0, "<=", "≤ 1× bulk",
               note=f"{broadcast['seconds_per_delivery'] * 1e6:,.0f} µs vs {bulk_per_delivery * 1e6:,.0f} µs"),
        Figure("broadcast: worker pool RSS growth", "%", [broadcast["rss_growth"] * 100], 5.0, "<=", "< 5 %"),
        Figure("storage, broadcast: bytes per delivery at rest", "B", [broadcast["storage"]["bytes_per_delivery"]],
               None, note="the message once, no notification row per user"),
    ]


def storage_figures(bulk: dict[str, Any], single: dict[str, Any], retention: dict[str, Any]) -> list[Figure]:
    """The database's cost per delivery (bench/storage.py) and the inputs of the capacity model (docs/scaling.md)."""
    us = 1e6
    rows = []
    for label, cost, target in (("bulk sends", bulk, 250.0), ("single sends", single, 500.0)):
        n = f"{cost['deliveries']:,}"
        rows += [
            Figure(f"storage, {label} ({n}, 2 devices/user): bytes per delivery at rest", "B",
                   [cost["bytes_per_delivery"]], target, "<=", f"≤ {target:.0f} B"),
            Figure(f"storage, {label}: WAL bytes per delivery", "B", [cost["wal_bytes_per_delivery"]], None),
            Figure(f"storage, {label}: transactions per delivery", "", [cost["transactions_per_delivery"]], None),
            Figure(f"storage, {label}: rows written per delivery", "", [cost["rows_written_per_delivery"]], None),
            Figure(f"{label}: API CPU per accepted notification", "µs", [cost["api_cpu_per_accept_s"] * us], None),
            Figure(f"{label}: PostgreSQL CPU per delivery", "µs", [cost["postgres_cpu_per_delivery_s"] * us], None),
        ]
    rows.append(Figure(f"single sends: worker CPU per delivery ({single['deliveries']:,})", "µs",
                       [single["worker_cpu_per_delivery_s"] * us], None))
    n = f"{retention['deliveries']:,}"
    rows += [
        Figure(f"retention of one day of {n} deliveries: batched DELETE ({retention['delete']['statements']} statements)",
               "s", [retention["delete"]["seconds"]], None,
               note=f"WAL {retention['delete']['wal_bytes'] / 2**20:,.0f} MiB"),
        Figure(f"retention of one day of {n} deliveries: DROP of the day partitions ({retention['drop']['statements']} "
               "statements)", "s", [retention["drop"]["seconds"]], None,
               note=f"WAL {retention['drop']['wal_bytes'] / 2**10:,.0f} KiB"),
    ]
    return rows


def _format(value: float, unit: str) -> str:
    if value != value:  # NaN
        return "n/a"
    if unit == "%":
        return f"{value:+.1f} %"
    if unit == "×":
        return f"{value:.2f}×"
    if unit in ("ms", "s"):
        return f"{value:,.2f} {unit}" if value < 100 else f"{value:,.0f} {unit}"
    if unit == "":
        return f"{value:,.2f}"
    return f"{value:,.0f} {unit}" if unit != "/s" else f"{value:,.0f}/s"


def print_table(result: dict[str, Any]) -> None:
    machine = result["machine"]
    print()
    print(f"## pushq pipeline benchmark ({result['mode']}, {result['when']})")
    print()
    print(f"Machine: {machine['cores']} cores ({machine['cpu'] or 'unknown CPU'}), {machine['memory_gib']} GiB, "
          f"Python {machine['python']}, load average {machine.get('load_average_at_start')} at start. "
          "Everything (API, worker, PostgreSQL, Redis, stand-ins, this client) shares these cores.")
    print()
    print("| figure | median | target | ratio | met |")
    print("|---|---:|---|---:|:---:|")
    for figure in result["figures"]:
        target = figure["target"]
        target_text = "—" if target is None else f"{_format(target, figure['unit'])} ({figure['target_text']})"
        ratio = "—" if figure["ratio"] is None else f"{figure['ratio']:.2f}"
        met = {True: "yes", False: "NO", None: ""}[figure["met"]]
        name = figure["name"] + (f" — {figure['note']}" if figure["note"] and figure["note"] != "baseline" else "")
        print(f"| {name} | {_format(figure['median'], figure['unit'])} | {target_text} | {ratio} | {met} |")
    print()
    print("ratio = median / target (for ≥ targets above 1 is good, for ≤ targets below 1 is good).")
    details = result["details"]
    for label in ("web", "apns", "fcm"):
        outcomes = details.get(label, {}).get("outcomes", {})
        not_sent = {k: v for k, v in outcomes.items() if k != "sent"}
        if not_sent:
            print(f"warning: {label} deliveries not sent: {not_sent}")
    replaced = details.get("memory", {}).get("pool_processes_replaced")
    if replaced:
        print(f"warning: pool processes changed during the memory phase (pids {replaced}); RSS compares different processes")

