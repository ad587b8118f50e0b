"""What a delivery costs the database: bytes at rest, WAL, transactions and row writes, and retention.

Used by the pipeline benchmark (``bench/pipeline.py``):

* :func:`measured` wraps a phase: ``VACUUM ANALYZE`` and the size (heap + indexes + TOAST,
  ``pg_total_relation_size``) of every table of the benchmark's database before and after,
  ``pg_current_wal_lsn()`` before and after, and the database's committed transactions and
  rows inserted/updated/deleted (``pg_stat_database``) and the CPU of the PostgreSQL backends
  serving the database (``psutil``, PostgreSQL on this machine), each divided by the phase's deliveries.
  The size delta includes the free space updates leave behind (a delivery is inserted, then
  updated at claim and at outcome), as the table will hold it at rest.
* :func:`retention_cost` removes one day of old notifications two ways on the same rows:
  housekeeping's batched ``DELETE`` (the code production runs) and ``DROP TABLE`` of a day
  partition of a partitioned copy, with the time, statements and WAL of each.

WAL is cluster-wide: on a PostgreSQL other databases write to at the same time, the WAL
figures include their writes (a shared machine's figure is an upper bound).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psutil
from sqlalchemy import text
from sqlalchemy.engine import Engine

T = TypeVar("T")

APPLICATION_NAME = "pushq-bench"  # the benchmark's own connections (bench/pipeline.py's engine)
# Emptied before a measured phase, so its rows do not fill free space earlier phases left (CASCADE: deliveries
# and whatever else hangs off a notification).
GROWING = "notifications"

_SIZES = """
SELECT c.relname, pg_total_relation_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind = 'r'
"""
_COUNTERS = """
SELECT pg_current_wal_lsn()::text, xact_commit, tup_inserted, tup_updated, tup_deleted
FROM pg_stat_database WHERE datname = current_database()
"""


def table_sizes(engine: Engine) -> dict[str, int]:
    """Every table's heap + indexes + TOAST bytes after ``VACUUM ANALYZE`` (partitions count as tables)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE"))
        return {name: int(size) for name, size in connection.execute(text(_SIZES)).all()}


def counters(engine: Engine) -> dict[str, Any]:
    """WAL position and the database's transaction and row-write counters."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        # Statistics reach pg_stat_database when a backend flushes them (at most once a second).
        connection.execute(text("SELECT pg_stat_clear_snapshot()"))
        lsn, commits, inserted, updated, deleted = connection.execute(text(_COUNTERS)).one()
    return {"lsn": lsn, "commits": commits, "inserted": inserted, "updated": updated, "deleted": deleted}


def backend_cpu(engine: Engine) -> dict[int, float]:
    """User+system CPU seconds of each PostgreSQL backend serving the benchmark's database (on this machine)."""
    with engine.connect() as connection:
        # Not the benchmark's own connections (its polling for outcomes is not pushq's work).
        pids = connection.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name <> :bench"
        ), {"bench": APPLICATION_NAME}).scalars().all()
    cpu = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        cpu[pid] = times.user + times.system
    return cpu


def backend_cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU the backends used between two samples; a backend started in between counts whole (pools keep
    theirs, so the few that end in between are the figure's error, an underestimate)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def wal_bytes(engine: Engine, before: str, after: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_wal_lsn_diff(:a, :b)"), {"a": after, "b": before}).scalar_one())


def measured(engine: Engine, phase: Callable[[], T], deliveries: int) -> tuple[T, dict[str, Any]]:
    """Run ``phase`` (which makes ``deliveries`` deliveries final) and what it cost the database, per delivery.

    The growing tables are emptied first: rows written into the free space an earlier phase's updates
    left would look free.
    """
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {GROWING} CASCADE"))
    sizes0 = table_sizes(engine)
    c0, cpu0 = counters(engine), backend_cpu(engine)
    result = phase()
    c1, cpu1 = counters(engine), backend_cpu(engine)
    time.sleep(1.1)  # the last backends' statistics are flushed
    c1_late = counters(engine)
    sizes1 = table_sizes(engine)
    grown = {name: sizes1.get(name, 0) - sizes0.get(name, 0) for name in sizes1}
    grown = {name: delta for name, delta in sorted(grown.items(), key=lambda kv: -kv[1]) if delta}
    wal = wal_bytes(engine, c0["lsn"], c1["lsn"])
    per = float(max(deliveries, 1))
    cost = {
        "deliveries": deliveries,
        "bytes_per_delivery": sum(grown.values()) / per,
        "bytes_per_delivery_by_table": {name: delta / per for name, delta in grown.items()},
        "wal_bytes_per_delivery": wal / per,
        "transactions_per_delivery": (c1_late["commits"] - c0["commits"]) / per,
        "rows_written_per_delivery": sum(c1_late[k] - c0[k] for k in ("inserted", "updated", "deleted")) / per,
        "postgres_cpu_per_delivery_s": backend_cpu_used(cpu0, cpu1) / per,
    }
    return result, cost


def describe(label: str, cost: dict[str, Any]) -> str:
    tables = ", ".join(f"{name} {value:,.0f}" for name, value in cost["bytes_per_delivery_by_table"].items())
    return (f"{label}: {cost['bytes_per_delivery']:,.0f} bytes/delivery at rest ({tables}), "
            f"WAL {cost['wal_bytes_per_delivery']:,.0f} bytes/delivery, "
            f"PostgreSQL CPU {cost['postgres_cpu_per_delivery_s'] * 1e6:,.0f} µs/delivery, "
            f"{cost['transactions_per_delivery']:.2f} transactions and {cost['rows_written_per_delivery']:.2f} "
            "row writes per delivery")


# -- retention: one day of old notifications, batched DELETE vs DROP of a day partition -------------


def _make_old_day(engine: Engine, app_id: uuid.UUID, device_ids: tuple[uuid.UUID, uuid.UUID], deliveries: int,
                  day: datetime) -> None:
    """``deliveries`` final deliveries (two per notification) of notifications created during ``day``."""
    notifications = deliveries // 2
    with engine.begin() as connection:
        connection.execute(text("""
            INSERT INTO notifications (id, app_id, user_id, title, body, data, ttl, priority, truncated,
                                       notify_outcomes, expires_at, status, created_at, updated_at, fanned_out_at)
            SELECT gen_random_uuid(), :app, gen_random_uuid(), 'Your shift starts in 30 min',
                   'Open GymOps to view details.', '{"route": "/schedule"}', 3600, 'normal', false, false,
                   :day + (i * interval '86399 seconds' / :n) + interval '1 hour', 'delivered',
                   :day + (i * interval '86399 seconds' / :n), :day + (i * interval '86399 seconds' / :n),
                   :day + (i * interval '86399 seconds' / :n)
            FROM generate_series(0, :n - 1) AS i
        """), {"app": app_id, "day": day, "n": notifications})
        connection.execute(text("""
            INSERT INTO deliveries (id, notification_id, device_id, platform, device_generation, status, attempts,
                                    vendor_message_id, sent_at, created_at, updated_at)
            SELECT gen_random_uuid(), n.id, d.device_id, 'web', 0, 'sent', 1,
                   'https://push.example.net/m/' || md5(n.id::text || d.device_id::text),
                   n.created_at, n.created_at, n.created_at
            FROM notifications n CROSS JOIN (VALUES (CAST(:d1 AS uuid)), (CAST(:d2 AS uuid))) AS d(device_id)
            WHERE n.app_id = :app AND n.created_at >= :day AND n.created_at < :day + interval '1 day'
        """), {"app": app_id, "day": day, "d1": device_ids[0], "d2": device_ids[1]})


def _partitioned_copy(engine: Engine, day: datetime) -> None:
    """``retention_bench_{notifications,deliveries}`` partitioned by day on ``created_at``, with the day's rows."""
    with engine.begin() as connection:
        for table in ("notifications", "deliveries"):
            copy = f"retention_bench_{table}"
            connection.execute(text(f"DROP TABLE IF EXISTS {copy} CASCADE"))
            connection.execute(text(f"CREATE TABLE {copy} (LIKE {table} INCLUDING DEFAULTS) "
                                    "PARTITION BY RANGE (created_at)"))
            connection.execute(text(f"ALTER TABLE {copy} ADD PRIMARY KEY (id, created_at)"))
            connection.execute(text(f"CREATE TABLE {copy}_day PARTITION OF {copy} "
                                    "FOR VALUES FROM (:start) TO (:end)"), {"start": day, "end": day + timedelta(days=1)})
        # The same secondary indexes the real tables have.
        connection.execute(text("CREATE INDEX ON retention_bench_notifications (status, created_at)"))
        connection.execute(text("CREATE INDEX ON retention_bench_notifications (app_id, created_at)"))
        connection.execute(text("CREATE INDEX ON retention_bench_notifications (status, send_at)"))
        connection.execute(text("CREATE INDEX ON retention_bench_deliveries (notification_id, device_id)"))
        connection.execute(text("CREATE INDEX ON retention_bench_deliveries (status, next_attempt_at)"))
        window = {"start": day, "end": day + timedelta(days=1)}
        connection.execute(text("INSERT INTO retention_bench_notifications SELECT * FROM notifications "
                                "WHERE created_at >= :start AND created_at < :end"), window)
        connection.execute(text("INSERT INTO retention_bench_deliveries SELECT d.* FROM deliveries d "
                                "WHERE d.created_at >= :start AND d.created_at < :end"), window)


def retention_cost(engine: Engine, session_factory: Any, app_id: uuid.UUID,
                   device_ids: tuple[uuid.UUID, uuid.UUID], deliveries: int, retention_days: int = 30) -> dict[str, Any]:
    """One day of ``deliveries`` past retention, removed by housekeeping's batched DELETE and by a partition DROP."""
    from shared.services.housekeeping import delete_old_notifications, in_batches

    now = datetime.now(UTC)
    day = (now - timedelta(days=retention_days + 2)).replace(hour=0, minute=0, second=0, microsecond=0)
    t0 = time.perf_counter()
    _make_old_day(engine, app_id, device_ids, deliveries, day)
    _partitioned_copy(engine, day)
    setup_seconds = time.perf_counter() - t0
    table_sizes(engine)  # vacuumed and analysed, as a day's rows are by the time they expire

    batch_size = 1000  # PUSHQ_HOUSEKEEPING_BATCH_SIZE's default
    c0, t0 = counters(engine), time.perf_counter()
    removed, batches = in_batches(session_factory, lambda s: delete_old_notifications(s, now, retention_days, batch_size),
                                  batch_size, None)
    delete_seconds, c1 = time.perf_counter() - t0, counters(engine)

    c2, t0 = counters(engine), time.perf_counter()
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE retention_bench_deliveries_day"))
        connection.execute(text("DROP TABLE retention_bench_notifications_day"))
    drop_seconds, c3 = time.perf_counter() - t0, counters(engine)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE retention_bench_deliveries, retention_bench_notifications"))
    return {
        "deliveries": deliveries, "notifications_removed": removed, "setup_seconds": setup_seconds,
        "delete": {"seconds": delete_seconds, "statements": batches, "wal_bytes": wal_bytes(engine, c0["lsn"], c1["lsn"])},
        "drop": {"seconds": drop_seconds, "statements": 2, "wal_bytes": wal_bytes(engine, c2["lsn"], c3["lsn"])},
    }
