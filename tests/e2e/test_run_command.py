"""`pushq run` with nothing configured (SQLite + embedded Redis), then `pushq demo` against it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psutil

from tests.support.helpers import wait_for

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_run_starts_everything_and_demo_delivers(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "JWT_", "PUSHQ_"))}
    env["PYTHONWARNINGS"] = "ignore"
    port = free_port()
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log:
        service = subprocess.Popen([str(BIN / "pushq"), "run", "--port", str(port)], cwd=tmp_path, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        try:
            def healthy():
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2, trust_env=False).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(healthy, timeout=60, interval=0.3)
            # The demo is a development tool of the checkout (the stand-ins are not installed): run as
            # `make demo` runs it, from the directory `pushq run` started in (its var/ development keys).
            demo = subprocess.run([sys.executable, "-m", "standins.demo", "--api", f"http://127.0.0.1:{port}"],
                                  cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                                  timeout=90)
            assert demo.returncode == 0, demo.stdout + demo.stderr + log_path.read_text()[-3000:]
            result = json.loads(demo.stdout)
            assert result["notification"]["status"] == "delivered"
            (received,) = result["push_service_received_decrypted"]
            assert received.pop("receipt").startswith("r1.")  # the service worker's receipt token
            assert received == {"title": "Hello from pushq", "body": "This came through the queue, encrypted end to end.",
                                "data": {"route": "/demo"}}
            assert (tmp_path / "pushq.sqlite3").exists()
        finally:
            service.send_signal(signal.SIGINT)
            assert service.wait(timeout=30) == 0


def _pushq_run_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "JWT_", "PUSHQ_"))}
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _running(pids: set[int], directory: Path) -> list[str]:
    """Processes among ``pids``, or working in ``directory`` (the embedded Redis daemon), that still run."""
    left = []
    for process in psutil.process_iter(["pid", "cwd", "status", "cmdline"]):
        info = process.info
        if info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if info["pid"] in pids or (info["cwd"] and Path(info["cwd"]).is_relative_to(directory)):
            left.append(f"{info['pid']} {' '.join(info['cmdline'] or [])[:120]}")
    return left


def test_ctrl_c_stops_every_process_of_pushq_run_twenty_times_in_a_row(tmp_path: Path):
    """Ctrl-C as a terminal sends it: SIGINT to pushq run's whole process group, once it serves.

    Every time, pushq run exits 0 and no process it started (gunicorn's master and workers,
    Celery's worker and pool, the beat, the embedded Redis) is left running.
    """
    env = _pushq_run_env()
    for attempt in range(20):
        port = free_port()
        log_path = tmp_path / f"run-{attempt}.log"
        with open(log_path, "w") as log:
            service = subprocess.Popen([str(BIN / "pushq"), "run", "--port", str(port), "--concurrency", "1"],
                                       cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # its own group, as a shell job is
            try:
                def serving() -> bool:
                    try:
                        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2,
                                         trust_env=False).status_code == 200
                    except httpx.HTTPError:
                        return False

                wait_for(serving, timeout=60, interval=0.1, detail=lambda: log_path.read_text()[-3000:])
                started = {p.pid for p in psutil.Process(service.pid).children(recursive=True)}
                assert len(started) >= 4, started  # gunicorn + its workers, the worker, the beat
                os.killpg(service.pid, signal.SIGINT)
                assert service.wait(timeout=60) == 0, log_path.read_text()[-3000:]
                left = wait_for(lambda: not _running(started | {service.pid}, tmp_path) or None, timeout=5,
                                what="every process to be gone",
                                detail=lambda: "\n".join([*_running(started, tmp_path), log_path.read_text()[-3000:]]))
                assert left
            finally:
                if service.poll() is None:
                    os.killpg(service.pid, signal.SIGKILL)
                    service.wait()
        assert "killing its process group" not in log_path.read_text(), log_path.read_text()[-3000:]


def test_cli_help_lists_commands():
    result = subprocess.run([str(BIN / "pushq"), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for command in ("run", "create-app", "enroll", "token", "migrate"):
        assert command in result.stdout
