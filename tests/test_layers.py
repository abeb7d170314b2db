"""The import graph holds the layers: planning, sending and keeping stay apart, the simulator
stands alone, nothing imports the CLI. Read from the source (every import, function-level ones
too), so a lazy import cannot hide a dependency."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "batchgen"

PURE = {"batchgen.exceptions", "batchgen.errors", "batchgen.providers", "batchgen.models", "batchgen._version",
        "batchgen._gc", "batchgen.pricing", "batchgen.logs", "batchgen.fastjson",
        "batchgen.arrowbuf"}
PLANNING = {"batchgen.identity", "batchgen.job", "batchgen.edits", "batchgen.pricing", "batchgen.models", "batchgen.reader", "batchgen.planning", "batchgen.providers"}
SENDING = {"batchgen.client", "batchgen.limits", "batchgen.backends", "batchgen.backends.live",
           "batchgen.backends.batch"}
KEEPING = {"batchgen.journal", "batchgen.store", "batchgen.results", "batchgen.outdir"}
CLI = {"batchgen.cli", "batchgen.cli_simulate", "batchgen.__main__"}
WIRING = {"batchgen.runner", "batchgen.api", "batchgen.python_api"}
SHOWING = {"batchgen.status", "batchgen.report", "batchgen.progress", "batchgen.exports"}


def module_name(path: Path) -> str:
    parts = ["batchgen", *path.relative_to(PACKAGE).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set:
    """Every batchgen module `path` imports, anywhere in it. The package itself is left out:
    every import runs it, and its own imports are lazy (checked by running them, below)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            if target != "batchgen":   # `from . import models` names a module, below
                found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {m for m in found if m in modules and m != name}


GRAPH = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def reaches(module: str) -> set:
    """Everything `module` imports, directly or through others."""
    seen, todo = set(), [module]
    while todo:
        for dep in GRAPH.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def in_simulator(module: str) -> bool:
    return module == "batchgen.simulator" or module.startswith("batchgen.simulator.")


def test_the_graph_is_read():
    assert "batchgen.backends.live" in GRAPH and "batchgen.client" in GRAPH["batchgen.backends.live"]
    assert "batchgen.models" in GRAPH["batchgen.job"]     # `from . import models`


@pytest.mark.parametrize("module", sorted(PLANNING))
def test_planning_imports_nothing_that_sends_or_keeps(module):
    assert not reaches(module) & (SENDING | KEEPING | WIRING), reaches(module) & (SENDING | KEEPING | WIRING)


@pytest.mark.parametrize("module", sorted(SENDING))
def test_sending_imports_nothing_that_keeps(module):
    assert not reaches(module) & (KEEPING | WIRING), reaches(module) & (KEEPING | WIRING)


@pytest.mark.parametrize("module", sorted(KEEPING))
def test_keeping_imports_nothing_that_sends(module):
    bad = {m for m in reaches(module) if m in SENDING | WIRING or in_simulator(m)}
    assert not bad, bad


@pytest.mark.parametrize("module", sorted(SHOWING))
def test_showing_reads_what_is_kept_and_sends_nothing(module):
    allowed = PURE | PLANNING | KEEPING | SHOWING
    assert reaches(module) <= allowed, reaches(module) - allowed


@pytest.mark.parametrize("module", sorted(PURE))
def test_pure_modules_import_only_pure_modules(module):
    assert reaches(module) <= PURE, reaches(module) - PURE


def test_the_simulator_imports_nothing_of_batchgen():
    for module, deps in GRAPH.items():
        if in_simulator(module):
            assert all(in_simulator(d) for d in deps), (module, deps)


def test_nothing_imports_the_cli_and_the_runner_does_not_start_the_simulator():
    for module, deps in GRAPH.items():
        if module not in CLI:
            assert not deps & CLI, (module, deps & CLI)
    assert not any(in_simulator(m) for m in reaches("batchgen.runner"))


@pytest.mark.parametrize("module", ["batchgen.simulator", "batchgen.client"])
def test_importing_the_simulator_or_the_client_loads_no_runner_or_journal(module):
    code = (f"import sys, {module}; "
            "print(sorted(m for m in sys.modules if m in ('batchgen.runner', 'batchgen.journal', "
            "'batchgen.api', 'batchgen.results', 'pandas')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
