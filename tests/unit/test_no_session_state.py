"""Nothing in pushq keeps state in a database session, so it runs behind PgBouncer in transaction pooling.

Transaction pooling gives a client a server connection for one transaction only: a session advisory
lock, ``LISTEN``, a server-side prepared statement, a temporary table or a plain ``SET`` would stay on
a connection another client gets next. tests/e2e/test_pgbouncer.py and the fault suite's PostgreSQL
scenario show the behaviour; this test keeps the constructs out of the code that runs in production.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ("api", "shared", "workers", "cli", "migrations")
SESSION_STATE = {
    "session advisory lock": re.compile(r"pg_(try_)?advisory_lock(_shared)?\s*\(", re.I),
    # Upper case, as SQL is written here: a CLI help's "listen address" is not one.
    "LISTEN/NOTIFY subscription": re.compile(r"\bLISTEN\s+\w"),
    "server-side prepared statement": re.compile(r"\bPREPARE\s+\w+\s*(\(|AS\b)|prepare_threshold|server_side_cursors", re.I),
    "temporary table": re.compile(r"\bCREATE\s+(GLOBAL\s+|LOCAL\s+)?TEMP(ORARY)?\s+TABLE", re.I),
    "SET without LOCAL": re.compile(r"[\"']\s*SET\s+(?!LOCAL\b)(SESSION\s+)?[a-z_]+\s*(=|TO\b)", re.I),
}


def test_no_production_code_keeps_state_in_a_database_session():
    found = []
    for package in PRODUCTION:
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            for what, pattern in SESSION_STATE.items():
                found += [f"{path.relative_to(ROOT)}: {what}: {m.group(0)!r}" for m in pattern.finditer(text)]
    assert found == []


def test_the_patterns_catch_what_they_name():
    samples = {
        "session advisory lock": "SELECT pg_advisory_lock(1)",
        "LISTEN/NOTIFY subscription": "LISTEN pushq_events",
        "server-side prepared statement": "PREPARE claim AS SELECT 1",
        "temporary table": "CREATE TEMP TABLE t (x int)",
        "SET without LOCAL": "'SET lock_timeout = 5'",
    }
    assert {what: bool(SESSION_STATE[what].search(sample)) for what, sample in samples.items()} == dict.fromkeys(samples, True)
    assert not SESSION_STATE["SET without LOCAL"].search("'SET LOCAL lock_timeout = 5'")
    assert not SESSION_STATE["session advisory lock"].search("pg_try_advisory_xact_lock(:key)")
