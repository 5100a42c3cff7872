"""The package's imports run one way: cli -> commands -> training/serve -> distributed -> store
-> build -> models/metrics -> data -> results -> core, with no import circle. Read from the
source (every import, module-level or inside a function), so a new edge against the order
fails here however it is written."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "aigc_cli"

# (layer, rank): a module may import from a lower rank, or from its own layer; layers of the
# same rank (models and metrics; training and serve) do not import each other.
CORE = {"errors", "atomic", "config", "registry", "console", "startup", "noise", "optim"}
LAYERS: dict[str, int] = {
    "core": 0,
    "results": 1,
    "data": 2,
    "models": 3, "metrics": 3,
    "build": 4,
    "store": 5,
    "distributed": 6,
    "training": 7, "serve": 7,
    "commands": 8,
    "cli": 9,
    "api": 10,
    "__init__": 11, "__main__": 11,
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py") if "configs" not in p.parts}


def imports(path: Path, known: set[str]) -> set[str]:
    """The aigc_cli modules `path` imports, anywhere in the file."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("aigc_cli")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aigc_cli"):
            base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in known else base)
    return {m for m in out if m in known}


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return "core" if parts[1] in CORE else parts[1]


def edges_against_order(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in graph.items():
        for dst in targets:
            a, b = layer(src), layer(dst)
            if a == b:
                continue
            if LAYERS[a] <= LAYERS[b]:
                bad.append(f"{src} -> {dst} ({a} may not import {b})")
    return sorted(bad)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def graph_of(extra: dict[str, set[str]] | None = None) -> dict[str, set[str]]:
    mods = modules()
    graph = {m: imports(p, set(mods)) - {m} for m, p in mods.items()}
    for src, targets in (extra or {}).items():
        graph[src] = graph.get(src, set()) | targets
    return graph


def test_every_module_has_a_layer():
    assert {layer(m) for m in modules()} <= set(LAYERS)


def test_imports_run_one_way():
    assert edges_against_order(graph_of()) == []


def test_no_import_circle():
    assert circles(graph_of()) == []


@pytest.mark.parametrize(
    "src, dst",
    [
        ("aigc_cli.models.vae", "aigc_cli.store.runs"),  # a family reading run folders
        ("aigc_cli.store.checkpoint", "aigc_cli.training.loop"),
        ("aigc_cli.metrics.quality", "aigc_cli.models.base"),  # same rank, other layer
        ("aigc_cli.results.images", "aigc_cli.data.base"),
    ],
)
def test_an_edge_against_the_order_is_caught(src, dst):
    """The checks themselves: one added edge against the order fails them."""
    assert edges_against_order(graph_of({src: {dst}}))


def test_a_circle_is_caught():
    assert circles(graph_of({"aigc_cli.store.paths": {"aigc_cli.store.runs"}}))
