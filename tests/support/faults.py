"""The fault suite's harness: real processes on loopback, started and killed by PID.

Everything a scenario breaks belongs to the suite: its own database (the test
database's name + ``_fault``), its own redis-server on a free port (no
persistence), its own RabbitMQ node (own node name, ports and data directory
under a temp dir), its own Celery workers and beat. The machine's shared
PostgreSQL, Redis and RabbitMQ are never stopped; only backends of the suite's
own database are terminated. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
TAG_RE = re.compile(r"fault:[a-z0-9-]+:\d+")
OPEN = ("pending", "sending", "retrying")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def wait_until(what: str, predicate: Callable[[], Any], timeout: float, interval: float = 0.1,
               detail: Callable[[], str] | None = None) -> Any:
    return wait_for(predicate, timeout, interval, what=what, detail=detail)


class Proc:
    """A child in its own process group (its session leader), stopped or killed by PID.

    An exit the suite did not cause (through :meth:`stop`, :meth:`kill` or :meth:`terminate`) is a
    death: ``died`` holds its exit code, and the fault report counts it.
    """

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.intended = False  # the suite stopped or killed it
        self.died: int | None = None
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"  # one log per start: waits read only their own
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.process = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, chars: int = 4000) -> str:
        return f"--- {self.log_path} ---\n" + self.log()[-chars:]

    def alive(self) -> bool:
        alive = self.process.poll() is None
        if not alive and not self.intended and self.died is None:
            self.died = self.process.returncode
        return alive

    def terminate(self) -> None:
        """SIGTERM the leader only (as an orchestrator stops a process), meaning to."""
        self.alive()
        self.intended = True
        self.process.send_signal(signal.SIGTERM)

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float) -> bool:
        try:
            self.process.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
        finally:
            if self.process.poll() is not None and not self._log.closed:
                self._log.close()

    def kill(self) -> None:
        """SIGKILL the whole group (the worker and its pool) and reap the leader."""
        self.alive()
        self.intended = True
        self.signal_group(signal.SIGKILL)
        self.wait(10)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the leader, wait, then SIGKILL whatever is left of the group."""
        running = self.alive()
        self.intended = True
        if running:
            self.process.send_signal(signal.SIGTERM)
            self.wait(grace)
        self.signal_group(signal.SIGKILL)
        self.wait(5)


class RedisServer:
    """A redis-server of the suite's own, on a free port, keeping nothing on disk."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Proc | None = None

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = Proc(f"redis-{self.port}", ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                                 "--save", "", "--appendonly", "no", "--dir", str(self.directory)],
                         dict(os.environ), self.directory)
        wait_until("redis-server", lambda: port_open(self.port), 20, detail=self.proc.tail)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(grace=10)
            self.proc = None


class RabbitNode:
    """A RabbitMQ node of the suite's own: node name, AMQP and distribution ports, data under a temp dir.

    It shares the machine's epmd (a node name is all it registers) and nothing else.
    """

    START_TIMEOUT = 60.0

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"pushqfault{self.port}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.proc: Proc | None = None
        self.start_seconds: list[float] = []

    @staticmethod
    def available() -> bool:
        return Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists()

    def _env(self) -> dict[str, str]:
        d = self.directory
        for sub in ("mnesia", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (d / "env.conf").write_text("")
        (d / "enabled_plugins").write_text("[].\n")
        cookie = d / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(uuid.uuid4().hex)
            cookie.chmod(0o400)
        return {
            **os.environ, "HOME": str(d), "RABBITMQ_CONF_ENV_FILE": str(d / "env.conf"),
            "RABBITMQ_NODENAME": self.node, "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port), "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"), "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"), "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def start(self) -> RabbitNode:
        began = time.monotonic()
        self.proc = Proc(f"rabbit-{self.port}", ["/usr/lib/rabbitmq/bin/rabbitmq-server"], self._env(), self.directory)
        wait_until(f"RabbitMQ node {self.node}", self._answers, self.START_TIMEOUT, 0.3, detail=self.proc.tail)
        self.start_seconds.append(time.monotonic() - began)
        return self

    def _answers(self) -> bool:
        if self.proc is not None and not self.proc.alive():
            raise AssertionError(f"RabbitMQ node exited\n{self.proc.tail()}")
        if not port_open(self.port):
            return False
        import kombu

        try:
            with kombu.Connection(self.url, connect_timeout=2) as connection:
                connection.ensure_connection(max_retries=1)
            return True
        except Exception:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(grace=30)
            self.proc = None


@dataclass
class Population:
    """Users with one device each (so a notification is one delivery), on three vendors."""

    web: list[tuple[uuid.UUID, dict]] = field(default_factory=list)  # (user, subscription)
    ios: list[tuple[uuid.UUID, str]] = field(default_factory=list)
    android: list[tuple[uuid.UUID, str]] = field(default_factory=list)

    def users(self, web: int, ios: int, android: int) -> list[uuid.UUID]:
        assert web <= len(self.web) and ios <= len(self.ios) and android <= len(self.android)
        mixed = [u for u, _ in self.web[:web]] + [u for u, _ in self.ios[:ios]] + [u for u, _ in self.android[:android]]
        # Interleave the platforms so every batch mixes the three vendors.
        return sorted(mixed, key=lambda u: u.int % 997)


class Supervisor:
    """Restarts a worker that exits, as systemd ``Restart=always`` or Kubernetes would; counts the deaths.

    Only for a scenario whose subject is surviving a death through a supervisor (the fault report says so);
    everywhere else a worker's death fails the scenario.
    """

    def __init__(self, start: Callable[[int], Proc]) -> None:
        self._start = start
        self.procs = [start(0)]
        self.deaths: list[int | None] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    @property
    def current(self) -> Proc:
        return self.procs[-1]

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            proc = self.current
            if not proc.alive():
                self.deaths.append(proc.died)
                proc.intended = True  # handled: the supervisor restarts it
                self.procs.append(self._start(len(self.procs)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=90)
        for proc in self.procs:
            proc.stop()


class Loader:
    """Sends through the API like a careful client: batches with an Idempotency-Key, retried on 503 (what
    the README promises while a dependency is away), on 409 (the same key still being processed) or a
    dropped connection until accepted, so nothing is accepted twice and nothing accepted is forgotten.

    Any other answer is a failure, a 500 first of all: it is kept in ``failures`` (the scenario fails on
    it), and the sending stops.
    """

    def __init__(self, base_url: str, headers: dict[str, str], scenario: str) -> None:
        self.base_url, self.headers, self.scenario = base_url, headers, scenario
        self.accepted: dict[str, str] = {}  # tag -> notification id
        self.refusals: Counter = Counter()
        self.failures: list[str] = []
        self.backpressure_headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._counter = 0

    def send(self, users: Iterable[uuid.UUID], batch: int = 100, timeout: float = 90.0, pause: float = 0.0) -> None:
        try:
            self._send(list(users), batch, timeout, pause)
        except AssertionError as exc:
            self.failures.append(str(exc))
            raise

    def send_in_thread(self, users: Iterable[uuid.UUID], **kwargs: Any) -> threading.Thread:
        """:meth:`send` in a thread; a failure is kept in ``failures`` for the scenario to fail on."""
        def run() -> None:
            try:
                self.send(users, **kwargs)
            except AssertionError:
                pass

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    def _send(self, users: list[uuid.UUID], batch: int, timeout: float, pause: float) -> None:
        with httpx.Client(base_url=self.base_url, timeout=15, trust_env=False) as http:
            for start in range(0, len(users), batch):
                items = []
                for user in users[start:start + batch]:
                    with self._lock:
                        self._counter += 1
                        tag = f"fault:{self.scenario}:{self._counter}"
                    items.append((tag, user))
                self._send_batch(http, items, timeout)
                if pause:
                    time.sleep(pause)

    def _send_batch(self, http: httpx.Client, items: list[tuple[str, uuid.UUID]], timeout: float) -> None:
        body = {"notifications": [{"user_id": str(user), "title": "fault", "body": "b", "data": {"fault_tag": tag}}
                                  for tag, user in items]}
        headers = {**self.headers, "Idempotency-Key": uuid.uuid4().hex}
        deadline = time.monotonic() + timeout
        while True:
            try:
                response = http.post("/push/send/batch", json=body, headers=headers)
                if response.status_code == 200:
                    with self._lock:
                        for (tag, _), notification_id in zip(items, response.json()["notification_ids"]):
                            self.accepted[tag] = notification_id
                        delay = {k: v for k, v in response.headers.items() if k.lower().startswith("x-queue-")}
                        if delay:
                            self.backpressure_headers.append(delay)
                    return
                if response.status_code not in (409, 503):
                    raise AssertionError(f"send answered {response.status_code}: {response.text[:300]}")
                self.refusals[response.status_code] += 1
            except httpx.TransportError as exc:
                self.refusals[type(exc).__name__] += 1
            if time.monotonic() > deadline:
                raise AssertionError(f"a batch was not accepted within {timeout:.0f} s: {dict(self.refusals)}")
            time.sleep(0.2)


def received_tags(webpush, apns, fcm, subscriptions: Iterable[dict]) -> Counter:
    """Pushes each tag reached a stand-in with (accepted answers only), over all three vendors."""
    counts: Counter = Counter()

    def count(document: Any) -> None:
        for tag in TAG_RE.findall(json.dumps(document)):
            counts[tag] += 1

    for subscription in subscriptions:
        for message in webpush.messages(subscription):
            # The body carries the tag too; count it once per push.
            count(message.json().get("data"))
    for message in apns.messages():
        count({k: v for k, v in message.payload.items() if k != "aps"})
    for message in fcm.all_messages():
        data = message.message.get("data", {})
        count(data)
    return counts


@dataclass
class Result:
    scenario: str
    broker: str
    accepted: int
    final: int
    duplicates: int
    lost: int
    in_flight_at_kills: int | None = None
    seconds: float = 0.0
    note: str = ""
    failed_sends: int = 0  # answers other than 200/409/503 (a 500 above all)
    worker_deaths: int = 0  # exits nobody caused (a supervised scenario says so in its name and note)

    def row(self) -> str:
        in_flight = "" if self.in_flight_at_kills is None else str(self.in_flight_at_kills)
        return (f"| {self.scenario} | {self.broker} | {self.accepted} | {self.final} | {self.duplicates} | "
                f"{in_flight} | {self.lost} | {self.failed_sends} | {self.worker_deaths} | {self.seconds:.0f} s | "
                f"{self.note} |")


TABLE_HEAD = ("| scenario | broker | accepted | final | duplicates | in flight at kills | lost | failed sends (5xx) "
              "| worker deaths | time | note |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|")


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
