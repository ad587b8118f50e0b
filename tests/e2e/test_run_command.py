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
            assert result["push_service_received_decrypted"] == [
                {"title": "Hello from pushq", "body": "This came through the queue, encrypted end to end.",
                 "data": {"route": "/demo"}}
            ]
            assert (tmp_path / "pushq.sqlite3").exists()
        finally:
            service.send_signal(signal.SIGINT)
            assert service.wait(timeout=30) == 0


def test_cli_help_lists_commands():
    result = subprocess.run([str(BIN / "pushq"), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for command in ("run", "create-app", "enroll", "token", "migrate"):
        assert command in result.stdout
