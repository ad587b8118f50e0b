"""The rooms stay what they say: shared/ is the domain, with no import cycles and no way out.

Reads every module under shared/ with ``ast`` (function-level imports included,
since those are how a cycle hides) rather than importing it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE_THE_DOMAIN = ("api", "workers", "standins", "cli", "bench", "tests")


def shared_modules() -> dict[str, Path]:
    modules = {}
    for path in (ROOT / "shared").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def imports_of(path: Path, package: str) -> set[str]:
    """Every module ``path`` imports, absolute, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    modules = shared_modules()
    edges = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges[name] = {target for target in imports_of(path, package) if target in modules and target != name}
    return edges


def test_no_module_under_shared_imports_the_edges():
    for name, path in shared_modules().items():
        package = name.rpartition(".")[0]
        leaks = sorted(t for t in imports_of(path, package) if t.split(".")[0] in OUTSIDE_THE_DOMAIN)
        assert leaks == [], f"{name} imports {leaks}"


def test_no_import_cycle_in_shared():
    edges = graph()
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges[module]):
            if state.get(target) == "open":
                cycle = [*trail[trail.index(target):], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*trail, target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
