"""The rooms stay what they say: which package may import which.

* shared/ is the domain: no import cycles, no way out to the edges, no framework.
* broker/ (queue names, Celery app, dispatcher) sits under both the API and the
  workers, so the API never imports workers/ and the workers never import api/.
* standins/ (the vendors' stand-ins) is a development tool: only the CLI (``pushq
  run``), the tests and the benchmarks may import it.

Reads every module with ``ast`` (function-level imports included, since those are
how a cycle or a forbidden edge hides) rather than importing it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE_THE_DOMAIN = ("api", "workers", "broker", "standins", "cli", "bench", "tests")
# The web and task frameworks and the vendor wire libraries belong to the edges, never to the domain.
FRAMEWORKS = ("flask", "werkzeug", "jinja2", "marshmallow", "apispec", "gunicorn", "click", "celery", "kombu",
              "aiohttp", "aioapns", "h2", "h11", "pywebpush")
PACKAGES = ("api", "workers", "broker", "shared", "cli", "standins", "bench", "tests")
# (importer, imported): edges no module may have.
FORBIDDEN = {
    ("api", "workers"), ("workers", "api"),
    ("broker", "api"), ("broker", "workers"), ("broker", "cli"),
    *((package, "standins") for package in ("api", "workers", "broker", "shared")),
}
MAY_IMPORT_STANDINS = ("cli", "tests", "bench", "standins")


def modules_of(package: str) -> dict[str, Path]:
    modules = {}
    for path in (ROOT / package).rglob("*.py"):
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


def shared_modules() -> dict[str, Path]:
    return modules_of("shared")


def package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def graph() -> dict[str, set[str]]:
    modules = shared_modules()
    edges = {}
    for name, path in modules.items():
        package = package_of(name, path)
        edges[name] = {target for target in imports_of(path, package) if target in modules and target != name}
    return edges


def test_no_module_under_shared_imports_the_edges():
    for name, path in shared_modules().items():
        package = name.rpartition(".")[0]
        leaks = sorted(t for t in imports_of(path, package) if t.split(".")[0] in OUTSIDE_THE_DOMAIN)
        assert leaks == [], f"{name} imports {leaks}"


def test_shared_imports_no_framework():
    for name, path in shared_modules().items():
        frameworks = sorted(t for t in imports_of(path, package_of(name, path)) if t.split(".")[0] in FRAMEWORKS)
        assert frameworks == [], f"{name} imports {frameworks}"


def test_api_and_workers_stay_apart_and_standins_stay_dev_only():
    found = []
    for package in PACKAGES:
        for name, path in modules_of(package).items():
            for target in imports_of(path, package_of(name, path)):
                edge = (package, target.split(".")[0])
                if edge in FORBIDDEN or (edge[1] == "standins" and package not in MAY_IMPORT_STANDINS):
                    found.append(f"{name} imports {target}")
    assert sorted(set(found)) == []


def test_the_rules_see_a_forbidden_edge(tmp_path):
    """The checker itself: a function-level import of workers from an api-like module is found."""
    module = tmp_path / "views.py"
    module.write_text("def f():\n    from workers.tasks import deliver\n    from . import errors\n")
    found = imports_of(module, "api")
    assert "workers.tasks" in found and "api.errors" in found


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
