"""The capacity model of docs/scaling.md, computed from a pipeline benchmark's results: `python -m bench capacity`.

Reads ``bench/results/latest.json`` (``make bench`` or ``make bench ARGS=--storage-only``) and prints,
for 1 million deliveries a day, 10 million an hour and 100 million an hour: API, worker and
PostgreSQL cores, PostgreSQL storage and WAL per day, connections, and what saturates first.
Every assumption is a named constant below and is printed with the table.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEVICES_PER_USER = 2  # the benchmark's bulk and single sends: 2 devices per user
UTILISATION = 0.7  # plan cores to run at 70 % at the rate below
PEAK_TO_AVERAGE_DAY = 4.0  # a day's traffic comes in bursts: plan "per day" loads for 4× the average rate
RETENTION_DAYS = 30  # PUSHQ_RETENTION_DAYS
API_CONNECTIONS_PER_CORE = 8  # a gunicorn process per core with 8 threads, one connection each
WORKER_CONNECTIONS_PER_CORE = 1  # a prefork child per core, one session at a time
PG_MAX_CORES = 64  # one large PostgreSQL primary
PG_MAX_WAL_BYTES_PER_S = 200 * 2**20  # sustained WAL it can write, replicate and archive
LOADS = (("1 M deliveries/day", 1_000_000 / 86_400 * PEAK_TO_AVERAGE_DAY, 1_000_000),
         ("10 M deliveries/hour", 10_000_000 / 3600, 240_000_000),
         ("100 M deliveries/hour", 100_000_000 / 3600, 2_400_000_000))


@dataclass(frozen=True)
class PerDelivery:
    """What one delivery costs, from the benchmark (seconds of CPU, bytes)."""

    label: str
    api_cpu: float  # API CPU per delivery (per accepted notification / devices per user)
    worker_cpu: float
    postgres_cpu: float
    bytes_at_rest: float
    wal_bytes: float
    transactions: float

    @staticmethod
    def from_results(result: dict[str, Any], key: str, label: str) -> PerDelivery:
        cost = result["details"][key]
        worker = cost.get("worker_cpu_per_delivery_s") or result["details"].get("web", {}).get("worker_cpu_per_delivery_s")
        if worker is None:
            raise SystemExit(f"{key}: no worker CPU per delivery in these results; run the benchmark again")
        return PerDelivery(label, cost["api_cpu_per_accept_s"] / DEVICES_PER_USER, worker,
                           cost["postgres_cpu_per_delivery_s"], cost["bytes_per_delivery"], cost["wal_bytes_per_delivery"],
                           cost["transactions_per_delivery"])


def plan(cost: PerDelivery, rate: float, per_day: float) -> dict[str, Any]:
    """Cores, storage, WAL and connections for ``rate`` deliveries/s (``per_day`` deliveries a day)."""
    api = math.ceil(rate * cost.api_cpu / UTILISATION)
    workers = math.ceil(rate * cost.worker_cpu / UTILISATION)
    postgres = rate * cost.postgres_cpu / UTILISATION
    wal_rate = rate * cost.wal_bytes
    limits = {"PostgreSQL CPU": PG_MAX_CORES / (cost.postgres_cpu / UTILISATION),
              "PostgreSQL WAL": PG_MAX_WAL_BYTES_PER_S / max(cost.wal_bytes, 1e-9)}
    first = min(limits, key=lambda k: limits[k])
    return {"rate": rate, "api_cores": api, "worker_cores": workers, "postgres_cores": postgres,
            "storage_bytes": per_day * cost.bytes_at_rest * RETENTION_DAYS, "wal_bytes_per_day": per_day * cost.wal_bytes,
            "wal_rate": wal_rate, "transactions_per_s": rate * cost.transactions,
            "connections_direct": api * API_CONNECTIONS_PER_CORE + workers * WORKER_CONNECTIONS_PER_CORE + 1,
            "connections_server": max(4, math.ceil(postgres * 2)),
            "first_limit": first, "first_limit_rate": limits[first]}


def _size(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,.0f} B"


def table(result: dict[str, Any]) -> str:
    lines = [f"Inputs: `{result['mode']}` run of {result['when']} (load average at start "
             f"{result['machine'].get('load_average_at_start')} on {result['machine']['cores']} cores).", ""]
    for key, label in (("bulk_storage", "bulk sends"), ("single_storage", "single sends")):
        cost = PerDelivery.from_results(result, key, label)
        lines += [f"**{label}** — per delivery: API {cost.api_cpu * 1e6:,.0f} µs, worker {cost.worker_cpu * 1e6:,.0f} µs, "
                  f"PostgreSQL {cost.postgres_cpu * 1e6:,.0f} µs CPU; {cost.bytes_at_rest:,.0f} B at rest, "
                  f"{cost.wal_bytes:,.0f} B WAL, {cost.transactions:.3f} transactions", "",
                  "| load | deliveries/s planned | API cores | worker cores | PostgreSQL cores | storage "
                  f"({RETENTION_DAYS} days) | WAL/day | connections direct / behind PgBouncer | saturates first |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for name, rate, per_day in LOADS:
            p = plan(cost, rate, per_day)
            lines.append(f"| {name} | {rate:,.0f} | {p['api_cores']} | {p['worker_cores']} | {p['postgres_cores']:,.1f} | "
                         f"{_size(p['storage_bytes'])} | {_size(p['wal_bytes_per_day'])} | "
                         f"{p['connections_direct']:,} / {p['connections_server']} | {p['first_limit']} at "
                         f"{p['first_limit_rate']:,.0f}/s{' (**exceeded**)' if rate > p['first_limit_rate'] else ''} |")
        lines.append("")
    lines.append(check(result))
    lines.append("")
    lines.append(f"Assumptions: {DEVICES_PER_USER} devices per user; cores at {UTILISATION:.0%}; a day's load planned "
                 f"at {PEAK_TO_AVERAGE_DAY:g}× its average rate (hourly loads as given); {RETENTION_DAYS} days retained; "
                 f"{API_CONNECTIONS_PER_CORE} connections per API core, {WORKER_CONNECTIONS_PER_CORE} per worker core; "
                 f"one PostgreSQL primary of {PG_MAX_CORES} cores writing at most {_size(PG_MAX_WAL_BYTES_PER_S)}/s of WAL.")
    return "\n".join(lines)


def check(result: dict[str, Any]) -> str:
    """The model against the run it came from: everything shares the benchmark's cores, so at most
    cores ÷ (API + worker + PostgreSQL CPU per delivery) deliveries/s; the run's bulk phase measured its rate."""
    cost = PerDelivery.from_results(result, "bulk_storage", "bulk sends")
    measured = result["details"]["bulk_storage"].get("deliveries_per_s") or result["details"].get("web", {}).get(
        "deliveries_per_s")
    cores = result["machine"]["cores"]
    predicted = cores / (cost.api_cpu + cost.worker_cpu + cost.postgres_cpu)
    seen = "not recorded" if measured is None else f"{measured:,.0f}/s ({measured / predicted:.0%} of it)"
    return (f"Check against the run: on its {cores} cores the model allows at most {predicted:,.0f} bulk deliveries/s "
            f"(every core busy with the API, the worker and PostgreSQL only); the run measured {seen}. "
            "The rest of the machine's load (stand-ins, Redis, the load client, other work) takes the difference.")


def run(path: Path) -> None:
    print(table(json.loads(path.read_text())))
