"""The fault suite's harness forgives nothing: a 500 is a failure, not a retry; a death is counted."""

from __future__ import annotations

import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.faults import Loader, Proc, Supervisor
from tests.support.helpers import wait_for


class _Answers(BaseHTTPRequestHandler):
    statuses: list[int] = []
    seen: list[int] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status = self.statuses.pop(0) if self.statuses else 200
        type(self).seen.append(status)
        body = b'{"notification_ids": ["n1"]}' if status == 200 else b'{"error": "x"}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def stub_api():
    _Answers.statuses, _Answers.seen = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_a_503_is_retried_and_a_500_fails_the_load(stub_api):
    _Answers.statuses = [503, 200]
    loader = Loader(stub_api, {}, "t")
    loader.send([uuid.uuid4()], batch=1)
    assert (_Answers.seen, len(loader.accepted), loader.failures) == ([503, 200], 1, [])

    _Answers.statuses, _Answers.seen = [500, 200], []
    failing = Loader(stub_api, {}, "t")
    with pytest.raises(AssertionError, match="500"):
        failing.send([uuid.uuid4()], batch=1)
    assert _Answers.seen == [500]  # not retried
    assert len(failing.failures) == 1 and failing.accepted == {}


def test_a_failure_in_a_sending_thread_is_kept(stub_api):
    _Answers.statuses = [500]
    loader = Loader(stub_api, {}, "t")
    loader.send_in_thread([uuid.uuid4()], batch=1).join(timeout=30)
    assert len(loader.failures) == 1


def test_an_exit_nobody_caused_is_a_death_and_a_stop_is_not(tmp_path: Path):
    dying = Proc("dies", [sys.executable, "-c", "import sys; sys.exit(3)"], {}, tmp_path)
    wait_for(lambda: not dying.alive(), timeout=30)
    assert dying.died == 3
    dying.stop()  # closes its log; still a death
    assert dying.died == 3
    stopped = Proc("stopped", [sys.executable, "-c", "import time; time.sleep(60)"], {}, tmp_path)
    stopped.stop(grace=10)
    assert not stopped.alive() and stopped.died is None


def test_a_supervisor_restarts_and_counts(tmp_path: Path):
    argv = {0: [sys.executable, "-c", "import sys; sys.exit(5)"], 1: [sys.executable, "-c", "import time; time.sleep(60)"]}
    supervisor = Supervisor(lambda n: Proc(f"w{n}", argv[min(n, 1)], {}, tmp_path))
    try:
        wait_for(lambda: len(supervisor.procs) == 2, timeout=30)
    finally:
        supervisor.stop()
    assert supervisor.deaths == [5]
    assert supervisor.procs[0].died == 5 and supervisor.procs[1].died is None
