"""Dependencies point one way: no import cycles, no import from a lower layer into a higher one.

Every ``import`` / ``from ... import`` statement of every module under ``tru_dist/`` is read
with :mod:`ast` — including the ones inside functions (lazy imports are dependencies too).
Two rules:

* no cycle between modules (a strongly connected component of the import graph with more
  than one module fails, and the message names it);
* the layers below, bottom to top: a module may import its own layer or lower ones, never a
  higher one (e.g. nothing below ``distributed`` imports it; ``comm`` and the other
  ground-floor modules import nothing above them). A new top-level module or package must
  be placed here.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tru_dist"

#: bottom to top; units are top-level modules or packages of tru_dist
LAYERS: list[set[str]] = [
    {"tru_dist", "errors", "timing", "crashpoints", "io_utils", "comm", "device", "logs", "_callable"},
    {"config"},
    {"data"},
    {"graph"},
    {"models"},
    {"train"},
    {"unlearn"},
    {"audit", "report"},
    {"compare"},
    {"distributed"},  # runs train / unlearn / compare on W workers
    {"tune", "bench", "bench_dist", "bench_sequential", "bench_scale", "bench_pool", "demo"},
    {"api", "gpu_check"},  # the Python API (over distributed.commands) and the GPU check over it
    {"cli", "__main__"},
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """{module: modules of tru_dist it imports anywhere in its body}."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    head = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(head + ([node.module] if node.module else []))
                # ``from pkg import mod`` depends on pkg.mod (a module) or on pkg (a name in it)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                if target.split(".")[0] == "tru_dist" and (found := resolve(target)) and found != module:
                    graph[module].add(found)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_the_parser_sees_lazy_and_relative_imports(tmp_path):
    graph = import_graph()
    # lazy imports inside functions count (cli imports every command's module lazily)
    assert "tru_dist.distributed.commands" in graph["tru_dist.cli"]
    # ``from tru_dist import comm as collectives`` is an edge to the module, not to the package
    assert "tru_dist.comm" in graph["tru_dist.train.trainer"]
    assert "tru_dist" not in graph["tru_dist.train.trainer"]
    # and a planted cycle is found
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_between_modules():
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles (break each with a lower module both sides use): " + "; ".join(
        " -> ".join(c) for c in cycles)


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in import_graph()}
    missing = sorted(units - set(LAYER))
    assert not missing, f"place {missing} in LAYERS of tests/test_layering.py"


def test_no_import_points_up_a_layer():
    graph = import_graph()
    bad = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                 if LAYER.get(_unit(a), 99) < LAYER.get(_unit(b), 99))
    assert not bad, "imports from a lower layer into a higher one: " + ", ".join(bad)


def test_the_ground_floor_imports_nothing_above_it():
    graph = import_graph()
    assert graph["tru_dist.comm"] == set()
    for module in ("tru_dist.errors", "tru_dist.timing", "tru_dist.crashpoints", "tru_dist.io_utils"):
        assert {_unit(t) for t in graph[module]} <= LAYERS[0], module
