"""`make test` provisions what it needs itself (scripts/provision), and .ci/run relies on it.

The script runs in its dry-run mode with a PATH that hides a package's command, so it
reports the install it would do without anyone uninstalling a real package.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.harness import ROOT, TEST_DATABASE_URL, TEST_REDIS_URL

PROVISION = ROOT / "scripts" / "provision"


def path_without(tmp_path: Path, *hidden: str) -> str:
    """A PATH of one directory holding a link to every command of today's PATH but ``hidden``."""
    farm = tmp_path / "bin"
    farm.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not directory or not Path(directory).is_dir():
            continue
        for entry in Path(directory).iterdir():
            link = farm / entry.name
            if entry.name in hidden or link.exists() or link.is_symlink():
                continue
            link.symlink_to(entry)
    return str(farm)


def dry_run(path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TEST_DATABASE_URL": TEST_DATABASE_URL, "TEST_REDIS_URL": TEST_REDIS_URL}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(["bash", str(PROVISION), "--dry-run"], env=env, capture_output=True, text=True, timeout=60)


def test_provision_is_silent_when_everything_is_there():
    """`make test` provisioned this run already: a second run has nothing to install, start or create."""
    result = dry_run()
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("hidden", "packages"),
    [
        (("chromium",), "chromium"),
        (("rabbitmq-server", "pgbouncer"), "rabbitmq-server pgbouncer"),
    ],
)
def test_provision_installs_a_missing_package(tmp_path, hidden, packages):
    result = dry_run(path_without(tmp_path, *hidden))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"provision: would install: {packages} (apt-get install)"]


def test_provision_creates_a_missing_test_database():
    env = {**os.environ, "TEST_DATABASE_URL": TEST_DATABASE_URL.rsplit("/", 1)[0] + "/pushq_provision_absent",
           "TEST_REDIS_URL": TEST_REDIS_URL}
    result = subprocess.run(["bash", str(PROVISION), "--dry-run"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["provision: would create database pushq_provision_absent"]


def test_make_test_provisions_before_pytest_and_ci_runs_make_test():
    recipe = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "MAKEFLAGS": ""})
    assert recipe.returncode == 0, recipe.stderr
    lines = recipe.stdout.splitlines()
    provision = lines.index("scripts/provision")
    pytest_line = next(i for i, line in enumerate(lines) if line.split()[0].endswith("/pytest"))
    assert provision < pytest_line, lines
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-2:] == ["make lint", "make test"]
    assert "apt-get" not in ci  # one provisioning step, in scripts/provision
