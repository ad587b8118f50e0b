"""A PgBouncer of a test's own (Debian's ``pgbouncer``) in transaction pooling, in front of the test PostgreSQL.

Transaction pooling hands a server connection to a client for one transaction only, so
anything that keeps state in a session (a session advisory lock, ``LISTEN``, a server-side
prepared statement, a temporary table, a ``SET`` without ``LOCAL``) breaks behind it. The
e2e core scenario and the fault suite's PostgreSQL scenario run through one to show pushq
keeps none. Its pool is deliberately small, so clients really do share server connections.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import psycopg2
from sqlalchemy.engine import make_url

from tests.support.faults import Proc, free_port, port_open, wait_until

# Fewer server connections than the worker's processes + beat + API threads: they must take turns.
SERVER_POOL_SIZE = 4


def available() -> bool:
    return shutil.which("pgbouncer") is not None


class PgBouncer:
    """pgbouncer on a free loopback port, its config, auth file and log in ``directory``."""

    def __init__(self, database_url: str, directory: Path, *, pool_size: int = SERVER_POOL_SIZE) -> None:
        self.upstream = make_url(database_url)
        self.directory = directory
        self.port = free_port()
        self.pool_size = pool_size
        self.proc: Proc | None = None

    def url(self, database_url: str) -> str:
        """``database_url`` rewritten to reach its database through this PgBouncer."""
        return make_url(database_url).set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    def _write_config(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        user = self.upstream.username or "postgres"
        password = self.upstream.password or ""
        (self.directory / "users.txt").write_text(f'"{user}" "{password}"\n')
        config = self.directory / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host={self.upstream.host or '127.0.0.1'} port={self.upstream.port or 5432}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.directory / 'users.txt'}\nadmin_users = {user}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\nmin_pool_size = 0\nreserve_pool_size = 0\n"
            "max_client_conn = 400\n"
            # A server connection killed under it is replaced; a client waits at most this long for one.
            "query_wait_timeout = 60\nserver_login_retry = 1\n"
        )
        return config

    def start(self) -> PgBouncer:
        config = self._write_config()
        argv = ["pgbouncer", str(config)]
        if os.geteuid() == 0:  # pgbouncer refuses to run as root (it reads its config before switching user)
            argv[1:1] = ["-u", "postgres"]
        self.proc = Proc(f"pgbouncer-{self.port}", argv, dict(os.environ), self.directory)
        wait_until("pgbouncer listening", lambda: port_open(self.port) or not self.proc.alive(), 20,
                   detail=self.proc.tail)
        assert self.proc.alive(), self.proc.tail()
        return self

    def served(self, database: str) -> tuple[int, int]:
        """(transactions, server connections opened) PgBouncer counted for ``database`` (its admin console)."""
        connection = psycopg2.connect(host="127.0.0.1", port=self.port, dbname="pgbouncer",
                                      user=self.upstream.username or "postgres")
        try:
            connection.autocommit = True  # the console takes no transactions
            with connection.cursor() as cursor:
                cursor.execute("SHOW STATS")
                columns = [c.name for c in cursor.description]
                stats = next(dict(zip(columns, row)) for row in cursor.fetchall() if row[0] == database)
                cursor.execute("SHOW SERVERS")
                columns = [c.name for c in cursor.description]
                servers = [dict(zip(columns, row)) for row in cursor.fetchall()]
        finally:
            connection.close()
        return int(stats["total_xact_count"]), len([s for s in servers if s["database"] == database])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(grace=5)
            self.proc = None
