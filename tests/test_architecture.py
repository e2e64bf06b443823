"""The package's import graph: no cycles (imports inside functions included).

A cycle hidden in a function-level import (``modelio`` <-> ``bmz`` until issue 26) works until
someone moves the import to the top, then breaks at import time; and it means neither module
can be understood, tested or replaced without the other. The graph is read from the source
(ast), so nothing is imported and every ``from . import x`` counts, wherever it is written.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "napari_shiftseg"


def _modules(root: Path = ROOT) -> dict[str, Path]:
    mods = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _targets(module: str, path: Path, node: ast.ImportFrom, mods) -> set[str]:
    """Package modules an ``from ... import ...`` statement of ``module`` loads."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    if node.level:
        base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
    elif node.module and node.module.split(".")[0] == "napari_shiftseg":
        base = node.module
    else:
        return set()
    found = {base} | {f"{base}.{alias.name}" for alias in node.names}
    # A module's own parent packages are loaded before it anyway: not an edge of a cycle.
    return {t for t in found if t in mods and t != module and not module.startswith(t + ".")}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    mods = _modules(root)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                graph[module] |= _targets(module, path, node, mods)
            elif isinstance(node, ast.Import):
                graph[module] |= {a.name for a in node.names if a.name in mods and a.name != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_detector_finds_a_cycle_through_a_function_level_import(tmp_path):
    package = tmp_path / "napari_shiftseg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("def f():\n    from .a import g\n")
    (package / "c.py").write_text("from .a import b\n")
    assert cycles(import_graph(package)) == [["napari_shiftseg.a", "napari_shiftseg.b"]]


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 40
    assert graph["napari_shiftseg.network.modelio"] >= {"napari_shiftseg.network.bmz", "napari_shiftseg.network.model"}
    assert cycles(graph) == []


@pytest.mark.parametrize("module", ["napari_shiftseg.network.model", "napari_shiftseg.network.bmz"])
def test_model_files_import_downwards(module):
    """The model and the package format never reach back to the safetensors file module."""
    assert "napari_shiftseg.network.modelio" not in import_graph()[module]


#: The layers, bottom up (docs/ARCHITECTURE.md). A module imports only from its own subpackage
#: and from lower layers; the napari layer, the CLI and the paper reproductions sit on top.
LAYERS = {"util": 0, "files": 1, "imaging": 2, "synthetic": 3, "network": 4, "inference": 5, "training": 6}
TOP = 7


def layer(module: str) -> tuple[int, str]:
    parts = module.split(".")
    package = parts[1] if len(parts) > 1 and parts[1] in LAYERS else ""  # cli, _widgets, ...: top
    return LAYERS.get(package, TOP), package


def upward_imports(graph) -> list[str]:
    found = []
    for module, targets in graph.items():
        rank, package = layer(module)
        for target in targets:
            target_rank, target_package = layer(target)
            if target_rank > rank or (target_rank == rank < TOP and target_package != package):
                found.append(f"{module} -> {target}")
    return sorted(found)


def test_the_layer_check_finds_an_upward_import(tmp_path):
    package = tmp_path / "napari_shiftseg"
    for sub in ("", "util", "network"):
        (package / sub).mkdir(exist_ok=True)
        (package / sub / "__init__.py").write_text("")
    (package / "network" / "unet.py").write_text("from ..util import v\n")
    (package / "util" / "v.py").write_text("def f():\n    from ..network import unet\n")
    assert upward_imports(import_graph(package)) == ["napari_shiftseg.util.v -> napari_shiftseg.network",
                                                     "napari_shiftseg.util.v -> napari_shiftseg.network.unet"]


def test_imports_flow_down_the_layers():
    graph = import_graph()
    assert {layer(m)[1] for m in graph} >= set(LAYERS)  # every layer exists
    assert upward_imports(graph) == []


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_each_layer_says_what_it_is(package):
    init = ROOT / package / "__init__.py"
    assert len(ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or "") > 150
