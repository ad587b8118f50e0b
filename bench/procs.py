"""Child processes for the benchmarks: each in its own process group, all stopped on exit.

A benchmark starts a dozen processes (stand-ins, gunicorn and its workers, a
Celery worker and its pool, beat). Left behind, any of them would skew the next
run or hold a port, so every process is started as the leader of a new session
(``start_new_session=True``) and :meth:`Processes.stop_all` signals the whole
group: SIGTERM, a grace period, then SIGKILL. :class:`Processes` is a context
manager, and :func:`install_signal_handlers` turns SIGTERM/SIGHUP into
``SystemExit`` so the ``finally`` blocks run on those too (Ctrl-C already
raises ``KeyboardInterrupt``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class BenchError(RuntimeError):
    """A benchmark step failed; the message says which and where its log is."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(what: str, predicate: Callable[[], object], timeout: float, interval: float = 0.05,
               on_timeout: Callable[[], str] | None = None) -> object:
    """Poll ``predicate`` until truthy; a :class:`BenchError` naming ``what`` after ``timeout`` s.

    Every wait of the benchmarks goes through here so none can hang forever.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = on_timeout() if on_timeout else ""
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}" + (f"\n{detail}" if detail else ""))
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


@dataclass
class Child:
    """One started process: its name, Popen object and log file."""

    name: str
    process: subprocess.Popen
    log_path: Path
    _log_file: object = field(repr=False, default=None)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return f"--- last lines of {self.log_path} ---\n" + self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return f"(no log at {self.log_path})"

    def check_alive(self) -> None:
        """Raise a :class:`BenchError` with the log's tail if the process has exited."""
        code = self.process.poll()
        if code is not None:
            raise BenchError(f"{self.name} exited with status {code}\n{self.log_tail()}")


class Processes:
    """The set of processes a benchmark started; stops them all, in reverse order."""

    def __init__(self, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.env = env if env is not None else dict(os.environ)
        self.children: list[Child] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None) -> Child:
        """Start ``argv`` in a new process group with stdout+stderr to ``<log_dir>/<name>.log``."""
        log_path = self.log_dir / f"{name}.log"
        log_file = open(log_path, "wb")  # noqa: SIM115 - closed in stop_all
        try:
            process = subprocess.Popen(
                list(argv), cwd=ROOT, env=env if env is not None else self.env, stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            )
        except BaseException:
            log_file.close()
            raise
        child = Child(name, process, log_path, log_file)
        self.children.append(child)
        return child

    def stop(self, child: Child, grace: float = 15.0) -> None:
        """SIGTERM the child's process group, wait up to ``grace`` s, then SIGKILL it."""
        process = child.process
        try:
            pgid = os.getpgid(process.pid)
        except ProcessLookupError:
            pgid = None
        if process.poll() is None and pgid is not None:
            _signal_group(pgid, signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        if pgid is not None:
            # Whatever is left in the group (the leader, or children it orphaned).
            _signal_group(pgid, signal.SIGKILL)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            print(f"warning: {child.name} (pid {process.pid}) did not exit after SIGKILL", file=sys.stderr)
        if child._log_file is not None:
            child._log_file.close()  # type: ignore[attr-defined]
            child._log_file = None
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        """Stop every child, newest first (the API and workers before the stand-ins they call)."""
        for child in reversed(list(self.children)):
            try:
                self.stop(child)
            except Exception as exc:
                print(f"warning: could not stop {child.name}: {exc}", file=sys.stderr)

    def check_alive(self) -> None:
        for child in self.children:
            child.check_alive()

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()

    def __iter__(self) -> Iterator[Child]:
        return iter(self.children)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def install_signal_handlers() -> None:
    """Make SIGTERM and SIGHUP raise ``SystemExit`` so cleanup in ``finally`` blocks runs."""

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGHUP, _exit)
