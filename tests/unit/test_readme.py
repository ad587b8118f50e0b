"""README.md stays true: every setting is documented and the two commands are shown."""

from __future__ import annotations

from pathlib import Path

from shared.config import documented_variables

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_environment_variable_is_documented():
    missing = [name for name, _default in documented_variables() if f"`{name}`" not in README]
    assert missing == []


def test_the_two_commands_come_first():
    assert README.index("make run") < README.index("## Configuration")
    assert README.index("make test") < README.index("## Configuration")
