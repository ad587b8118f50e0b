"""The documentation stays true: every setting is documented, the README is short and leads with the two
commands, and every link between the documents lands on a file and a heading that exist."""

from __future__ import annotations

import re
from pathlib import Path

from shared.config import documented_variables

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").glob("*.md"))
README_MAX_BYTES = 12 * 1024
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file (lower case, punctuation dropped, spaces to dashes)."""
    anchors, fenced = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            heading = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", heading).replace(" ", "-"))
    return anchors


def test_every_environment_variable_is_documented():
    configuration = (ROOT / "docs" / "configuration.md").read_text()
    missing = [name for name, _default in documented_variables() if f"`{name}`" not in configuration]
    assert missing == []


def test_the_readme_is_short_and_shows_the_two_commands_first():
    assert len(README.encode()) <= README_MAX_BYTES
    assert README.index("make run") < README.index("## How it works")
    assert README.index("make test") < README.index("## How it works")


def test_the_readme_links_every_document():
    linked = {target.split("#")[0] for target in _LINK.findall(README)}
    assert {f"docs/{doc.name}" for doc in DOCS} <= linked


def test_every_relative_link_lands():
    broken = []
    for source in [ROOT / "README.md", *DOCS]:
        for target in _LINK.findall(source.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            file_part, _, anchor = target.partition("#")
            path = (source.parent / file_part).resolve() if file_part else source
            if not path.exists():
                broken.append(f"{source.name}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{source.name}: {target} (no such heading)")
    assert broken == []
