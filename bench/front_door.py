"""The front door: what accepting a send costs (`python -m bench pipeline` runs it with the other phases).

Figures (issue 15, docs/benchmarks.md):

* API CPU per single ``POST /push/send``: user+system seconds of the gunicorn
  master and its workers over N sequential sends, divided by N;
* the framework floor: the same N requests to a bare Flask app
  (bench/floor_app.py) served by the Procfile's own ``web:`` command; the ratio
  of the two, and of the API's CPU to the worker's CPU per Web Push delivery;
* single sends open loop at 200/s while the worker delivers a bulk alongside
  (p50, p99, missed);
* the knee: rates stepped up until p99 crosses 50 ms;
* bulk and batch of 500 accepted (medians);
* accept-to-first-push at 200/s: from a notification's acceptance
  (``created_at``) to its first delivery recorded sent, p50 and p99.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from bench.pipeline import (
    BODY,
    BULK_SIZE,
    DATA,
    TITLE,
    Context,
    Figure,
    add_users,
    create_tenant,
    db_now,
    http_client,
    open_loop_singles,
    post_ok,
    send_bulks,
    service_headers,
    tree_cpu,
    wait_notifications_settled,
    web_tokens,
)
from bench.procs import Child, free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
KNEE_P99_SECONDS = 0.050
KNEE_RATES = (100, 200, 300, 400, 500, 600, 800)


def procfile_web_argv(app: str, port: int) -> list[str]:
    """The Procfile's ``web:`` command for ``app`` on ``port``, with its defaults for the other variables."""
    line = next(entry.split(":", 1)[1].strip() for entry in (ROOT / "Procfile").read_text().splitlines()
                if entry.startswith("web:"))
    for name, value in (("PORT", str(port)), ("WEB_CONCURRENCY", "2"), ("WEB_THREADS", "8")):
        start = line.find("${" + name + ":-")
        if start >= 0:
            line = line[:start] + value + line[line.index("}", start) + 1:]
    argv = [app if word == "api.wsgi:app" else word for word in shlex.split(line)]
    if argv[0] == "gunicorn":
        argv = [sys.executable, "-m", "gunicorn", *argv[1:]]
    return argv


def start_web(ctx: Context, name: str, app: str) -> tuple[Child, str]:
    port = free_port()
    child = ctx.procs.start(name, procfile_web_argv(app, port))
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        child.check_alive()
        try:
            return httpx.get(f"{url}/healthz", timeout=2, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(f"{name} to answer /healthz", healthy, 60, 0.2, on_timeout=child.log_tail)
    return child, url


def cpu_per_request(pid: int, url: str, path: str, bodies: list[dict], headers: dict[str, str], count: int) -> float:
    """CPU seconds of the server's process tree per sequential request (after a warm-up of 50)."""
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as http:
        for i in range(50):
            post_ok(http, path, bodies[i % len(bodies)], headers)
        before = tree_cpu(pid)
        for i in range(count):
            post_ok(http, path, bodies[i % len(bodies)], headers)
        return (tree_cpu(pid) - before) / count


def first_push_latencies(ctx: Context, app_id: Any, since: Any) -> tuple[float, float, int]:
    """(p50, p99 seconds, notifications) from acceptance to the first delivery recorded sent."""
    with ctx.engine.connect() as connection:
        row = connection.execute(text(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x), percentile_cont(0.99) WITHIN GROUP (ORDER BY x), "
            "count(*) FROM (SELECT extract(epoch FROM min(d.sent_at) - n.created_at) AS x FROM notifications n "
            "JOIN deliveries d ON d.notification_id = n.id AND d.status = 'sent' "
            "WHERE n.app_id = :app AND n.created_at >= :since GROUP BY n.id) t"), {"app": app_id, "since": since}).one()
    return float(row[0] or "nan"), float(row[1] or "nan"), int(row[2])


def phase_front_door(ctx: Context, web_app: Any, web_users: list[Any], worker_cpu_per_delivery: float) -> list[Figure]:
    """Every front-door figure, in this run; returns them as table rows (details go to ctx.details)."""
    quick = ctx.scale.name == "quick"
    count = 300 if quick else 2000
    api = next(child for child in ctx.procs if child.name == "api")
    app_id, _ = create_tenant(ctx, "bench front door")
    users = add_users(ctx, app_id, BULK_SIZE, None)  # no devices: acceptance alone
    headers = service_headers(ctx, app_id)
    singles = [{"user_id": str(u), "title": TITLE, "body": BODY, "data": DATA} for u in users]

    ctx.progress(f"front door: API CPU over {count} sequential single sends, then the framework floor")
    since = db_now(ctx)
    api_cpu = cpu_per_request(api.pid, ctx.api_url, "/push/send", singles, headers, count)
    floor, floor_url = start_web(ctx, "floor", "bench.floor_app:app")
    try:
        floor_cpu = cpu_per_request(floor.pid, floor_url, "/push/send", singles, headers, count)
    finally:
        ctx.procs.stop(floor)
    wait_notifications_settled(ctx, app_id, since, 120)
    ctx.progress(f"front door: API {api_cpu * 1e3:.2f} ms CPU per send, floor {floor_cpu * 1e3:.2f} ms "
                 f"({api_cpu / floor_cpu:.1f}x)")

    samples = 5 if quick else 20
    batch = {"notifications": [{"user_id": str(u), "title": f"{TITLE} #{i}", "body": BODY, "data": {"n": i}}
                               for i, u in enumerate(users)]}
    bulk = {"user_ids": [str(u) for u in users], "title": TITLE, "body": BODY, "data": DATA}
    latencies: dict[str, list[float]] = {"bulk": [], "batch": []}
    with http_client(ctx) as http:
        for kind, path, body in (("bulk", "/push/send/bulk", bulk), ("batch", "/push/send/batch", batch)):
            post_ok(http, path, body, headers)
            for _ in range(samples):
                wait_notifications_settled(ctx, app_id, since, 120)
                t0 = time.perf_counter()
                post_ok(http, path, body, headers)
                latencies[kind].append(time.perf_counter() - t0)
    wait_notifications_settled(ctx, app_id, since, 120)

    seconds = 5.0 if quick else 30.0
    ctx.progress(f"front door: single sends at 200/s for {seconds:.0f} s with a Web Push bulk delivered alongside")
    with http_client(ctx) as http:
        send_bulks(ctx, http, service_headers(ctx, web_app), web_users[:BULK_SIZE * (1 if quick else 4)])
    loaded = open_loop_singles(ctx, headers, users, 200.0, seconds)
    wait_notifications_settled(ctx, app_id, since, 300)

    knee, steps = knee_search(ctx, headers, users, 2.0 if quick else 5.0)
    wait_notifications_settled(ctx, app_id, since, 300)

    ctx.progress("front door: accept-to-first-push at 200/s (users with Web Push devices)")
    push_app, push_key = create_tenant(ctx, "bench first push")
    push_users = add_users(ctx, push_app, 50 if quick else 200, "web", web_tokens(ctx, push_key))
    push_since = db_now(ctx)
    open_loop_singles(ctx, service_headers(ctx, push_app), push_users, 200.0, 3.0 if quick else 10.0)
    wait_notifications_settled(ctx, push_app, push_since, 300)
    push_p50, push_p99, pushed = first_push_latencies(ctx, push_app, push_since)

    ctx.details["front_door"] = {
        "api_cpu_per_send_s": api_cpu, "floor_cpu_per_request_s": floor_cpu, "sequential_sends": count,
        "bulk_latencies_s": latencies["bulk"], "batch_latencies_s": latencies["batch"], "singles_with_bulk": loaded,
        "knee_steps": steps, "knee_rate": knee, "first_push": {"p50_s": push_p50, "p99_s": push_p99, "count": pushed},
    }
    ms = 1e3
    return [
        Figure("front door: API CPU per single send", "ms", [api_cpu * ms], None),
        Figure("front door: framework floor (bare Flask, Procfile web:) CPU per request", "ms", [floor_cpu * ms], None),
        Figure("front door: API CPU per send ÷ floor (same run)", "×", [api_cpu / floor_cpu], 2.0, "<=", "≤ 2× the floor"),
        Figure("front door: API CPU per send ÷ worker CPU per Web Push delivery", "×",
               [api_cpu / worker_cpu_per_delivery], None),
        Figure(f"front door: single sends at 200/s for {seconds:.0f} s with a bulk delivered alongside, p50", "ms",
               [loaded["p50_s"] * ms], None),
        Figure(f"front door: single sends at 200/s for {seconds:.0f} s with a bulk delivered alongside, p99", "ms",
               [loaded["p99_s"] * ms], 15.0, "<=", "< 15 ms, 0 missed",
               note=f"{loaded['missed']} of {loaded['requests']} not sent" if loaded["missed"] else ""),
        Figure("front door: knee (highest rate with p99 ≤ 50 ms)", "/s", [knee], 400.0, ">=", "≥ 400/s"),
        Figure(f"front door: bulk of {BULK_SIZE} accepted ({samples} requests)", "ms",
               [x * ms for x in latencies["bulk"]], 50.0, "<=", "< 50 ms median"),
        Figure(f"front door: batch of {BULK_SIZE} accepted ({samples} requests)", "ms",
               [x * ms for x in latencies["batch"]], 60.0, "<=", "< 60 ms median"),
        Figure(f"front door: accept-to-first-push p50 at 200/s ({pushed} sends)", "ms", [push_p50 * ms], 50.0,
               "<=", "< 50 ms"),
        Figure(f"front door: accept-to-first-push p99 at 200/s ({pushed} sends)", "ms", [push_p99 * ms], 250.0,
               "<=", "< 250 ms"),
    ]


def knee_search(ctx: Context, headers: dict[str, str], users: list[Any], seconds: float) -> tuple[float, list[dict]]:
    """Step the open-loop rate up until p99 crosses 50 ms; returns the last rate under it (0: none) and the steps."""
    passed, steps = 0.0, []
    for rate in KNEE_RATES:
        result = open_loop_singles(ctx, headers, users, float(rate), seconds)
        steps.append({"rate": rate, "p50_s": result["p50_s"], "p99_s": result["p99_s"], "missed": result["missed"]})
        ctx.progress(f"front door: knee search {rate}/s: p99 {result['p99_s'] * 1e3:.1f} ms")
        if result["p99_s"] > KNEE_P99_SECONDS or result["missed"]:
            break
        passed = float(rate)
        time.sleep(1.0)
    return passed, steps
