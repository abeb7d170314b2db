"""The import graph holds the layers, and a module's layer is its folder: a new file takes the
rules of the folder it is put in, and a new file at the top of the package fails until it is
given a layer here. Read from the source (every import, function-level ones too), so a lazy
import cannot hide a dependency."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "batchgen"

# What each layer may import (its own modules included). Lowest first.
BELOW_PLANNING = {"foundation", "util", "rules"}
MAY_IMPORT = {
    "foundation": {"foundation"},
    "util": {"foundation", "util"},
    "rules": {"foundation", "util", "rules"},
    "planning": BELOW_PLANNING | {"planning"},
    "sending": BELOW_PLANNING | {"planning", "sending"},
    "keeping": BELOW_PLANNING | {"planning", "keeping"},
    "showing": BELOW_PLANNING | {"planning", "keeping", "showing"},
    "top": BELOW_PLANNING | {"planning", "sending", "keeping", "showing", "top", "simulator"},
    "cli": set(),      # filled below: everything
    "simulator": {"simulator"},
}
MAY_IMPORT["cli"] = set(MAY_IMPORT)
FOLDERS = {"util", "rules", "planning", "sending", "keeping", "showing", "cli", "simulator"}
# The modules at the top of the package, each with its layer; any other fails test_every_module_has_a_layer.
TOP = {"batchgen": "top", "batchgen.__main__": "cli", "batchgen.api": "top", "batchgen.commands": "top",
       "batchgen.runner": "top", "batchgen.exceptions": "foundation", "batchgen._version": "foundation"}


def module_name(path: Path, package: Path) -> str:
    parts = ["batchgen", *path.relative_to(package).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str):
    """The folder under batchgen/ that holds the module, or its entry in TOP; None: no layer."""
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and parts[1] in FOLDERS):
        return parts[1] if parts[1] in FOLDERS else None
    return TOP.get(module)


def import_graph(package: Path) -> dict:
    """module -> every batchgen module it imports, anywhere in it. The package itself is left
    out as a target: every import runs it, and its own imports are lazy (checked by running
    them, below)."""
    modules = {module_name(p, package) for p in package.rglob("*.py")}
    graph = {}
    for path in package.rglob("*.py"):
        name = module_name(path, package)
        base_package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = base_package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module
                if target != "batchgen":   # `from batchgen import x` names x, below
                    found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def violations(graph: dict) -> list:
    """(module, its layer, an import its layer may not make, that import's layer)."""
    bad = []
    for module, deps in graph.items():
        layer = layer_of(module)
        for dep in sorted(deps):
            if layer is None or layer_of(dep) not in MAY_IMPORT[layer]:
                bad.append((module, layer, dep, layer_of(dep)))
    return bad


GRAPH = import_graph(PACKAGE)


def reaches(module: str) -> set:
    """Everything `module` imports, directly or through others."""
    seen, todo = set(), [module]
    while todo:
        for dep in GRAPH.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_the_graph_is_read():
    assert "batchgen.sending.client" in GRAPH["batchgen.sending.backends.live"]
    assert "batchgen.rules.models" in GRAPH["batchgen.planning.tasks"]     # `from batchgen.rules import models`
    assert len(GRAPH) > 40


def test_every_module_has_a_layer():
    assert not [m for m in GRAPH if layer_of(m) is None]


def test_every_import_keeps_to_its_layer():
    assert violations(GRAPH) == []


def test_a_new_module_that_imports_upward_fails(tmp_path):
    """A file added to a low folder takes that folder's rules: one importing the runner from
    `util/` is caught, and so is one in the top folder that nobody gave a layer."""
    copy = tmp_path / "batchgen"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "util" / "newthing.py").write_text("from batchgen.runner import run_plan\n")
    (copy / "sending" / "peek.py").write_text("from ..keeping import journal\n")
    (copy / "stray.py").write_text("import os\n")
    found = violations(import_graph(copy))
    assert ("batchgen.util.newthing", "util", "batchgen.runner", "top") in found
    assert ("batchgen.sending.peek", "sending", "batchgen.keeping.journal", "keeping") in found
    assert [m for m in import_graph(copy) if layer_of(m) is None] == ["batchgen.stray"]


def test_nothing_imports_the_cli_and_the_runner_does_not_start_the_simulator():
    for module, deps in GRAPH.items():
        if layer_of(module) != "cli":
            assert not {d for d in deps if layer_of(d) == "cli"}, module
    assert not any(layer_of(m) == "simulator" for m in reaches("batchgen.runner"))
    starters = {m for m, deps in GRAPH.items() if any(layer_of(d) == "simulator" for d in deps)
                and layer_of(m) != "simulator"}
    assert starters <= {"batchgen.commands", "batchgen.cli.simulate"}, starters


@pytest.mark.parametrize("module", ["batchgen.simulator", "batchgen.sending.client"])
def test_importing_the_simulator_or_the_client_loads_no_runner_or_journal(module):
    code = (f"import sys, {module}; "
            "print(sorted(m for m in sys.modules if m in ('batchgen.runner', 'batchgen.keeping.journal', "
            "'batchgen.commands', 'batchgen.keeping.results', 'pandas')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_each_folder_says_what_lives_there_and_what_it_may_import():
    for folder in FOLDERS:
        doc = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text())) or ""
        assert "May import" in doc or "imports nothing" in doc, folder
