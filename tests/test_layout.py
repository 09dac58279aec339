"""The package's imports run one way: no module imports another that (directly or not) imports it back,
and no module imports from a layer above its own. Read from the source with `ast`; nothing is imported.

The layers, lowest first (a module may import its own layer and the ones below it):
- foundation: errors, credentials, db, sessions, the model, ... what every stage shares;
- merge: the store's side of the data path (layout, staging, diff, apply, ledger, locks);
- ingest and cdc: the sources (source check, snapshot; change data capture's slot and changes), which
  write into the store's staging;
- consumers and observe: what reads the store and the runs;
- engine: the batch pipeline; commands (the other commands) and group (several stores in one run) on it;
  cli and demo: the entry points.
The simulator stands apart: it may import the foundation only, and only the entry points import it.
A source dialect (a package under ingest/) never imports another: what they share is in ingest/ itself.
Every import counts, also one inside a function or under `TYPE_CHECKING`: each would close a circle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = "datasurface"
ROOT = Path(__file__).resolve().parent.parent / "src" / PACKAGE

# `__init__`: the package itself (its version)
FOUNDATION = ("__init__", "errors", "faults", "interrupts", "credentials", "pgtypes", "mysqldb", "db", "sessions",
              "localpg", "localmysql", "model", "pipe")
LAYERS: tuple[tuple[str, ...], ...] = (
    FOUNDATION,
    ("merge",),
    ("ingest", "cdc"),
    ("consumers", "observe"),
    ("engine",),
    ("commands", "group"),
    ("cli", "demo"),
)
SIMULATOR = "simulator"
ENTRY_POINTS = LAYERS[-1]


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The package's modules `name` imports, anywhere in its file."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[:len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from a import b` imports module a.b when there is one, else a name of module a
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a name: the module that holds it
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: set(imported(name, path, known)) for name, path in known.items()}


def top(name: str) -> str:
    """`merge` for datasurface.merge.diff, `__init__` for the package itself."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(name: str) -> int | None:
    for rank, tops in enumerate(LAYERS):
        if top(name) in tops:
            return rank
    return None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def dialect(name: str) -> str | None:
    """`mysql` for datasurface.ingest.mysql.check: the source dialect a module belongs to, if any."""
    parts = name.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "ingest" and (ROOT / "ingest" / parts[2]).is_dir() else None


def wrong_way(edges: dict[str, set[str]]) -> list[str]:
    """Every import that runs up the layers, from one source dialect into another, or into or out of the
    simulator where it may not."""
    problems = []
    for source, targets in sorted(edges.items()):
        for target in sorted(targets):
            if dialect(source) and dialect(target) and dialect(source) != dialect(target):
                problems.append(f"{source} imports {target}, another source dialect")
            if top(target) == SIMULATOR:
                if top(source) not in (SIMULATOR, *ENTRY_POINTS):
                    problems.append(f"{source} imports the simulator ({target})")
                continue
            if top(source) == SIMULATOR:
                if top(target) not in FOUNDATION:
                    problems.append(f"{source} (simulator) imports {target}, beyond the foundation")
                continue
            rank, target_rank = layer(source), layer(target)
            if rank is None or target_rank is None:
                problems.append(f"{source} -> {target}: a module of no layer (add its package to LAYERS)")
            elif target_rank > rank:
                problems.append(f"{source} imports {target}, a layer above its own")
    return problems


def test_the_graph_sees_the_package() -> None:
    edges = graph()
    assert "datasurface.merge.diff" in edges["datasurface.engine"]
    assert "datasurface.merge.layout" in edges["datasurface.merge.diff"]
    assert len(edges) > 40


def test_no_import_circle() -> None:
    found = cycles(graph())
    assert not found, "modules that import each other:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_import_runs_up() -> None:
    found = wrong_way(graph())
    assert not found, "imports against the layers (see this file's docstring):\n" + "\n".join(found)


@pytest.mark.parametrize(("edges", "expected"), [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set(), "c": {"d"}, "d": {"c"}}, [["c", "d"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_cycles_finds_circles(edges: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert cycles(edges) == expected


def test_wrong_way_finds_backward_imports() -> None:
    edges = {
        "datasurface.merge.diff": {"datasurface.ingest.sources", "datasurface.errors"},
        "datasurface.ingest.sources": {"datasurface.merge.layout"},
        "datasurface.simulator.target": {"datasurface.engine", "datasurface.model"},
        "datasurface.observe.runs": {"datasurface.simulator.runner"},
        "datasurface.cli.app": {"datasurface.simulator.runner", "datasurface.engine"},
        "datasurface.ingest.mysql.check": {"datasurface.ingest.postgres.check", "datasurface.ingest.check"},
    }
    assert wrong_way(edges) == [
        "datasurface.ingest.mysql.check imports datasurface.ingest.postgres.check, another source dialect",
        "datasurface.merge.diff imports datasurface.ingest.sources, a layer above its own",
        "datasurface.observe.runs imports the simulator (datasurface.simulator.runner)",
        "datasurface.simulator.target (simulator) imports datasurface.engine, beyond the foundation",
    ]


def test_relative_and_function_level_imports_count(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    source = tmp_path / "pkg" / "a.py"
    source.write_text("from . import b\n\ndef f():\n    from pkg.c import thing\n")
    known = {"pkg": tmp_path / "pkg" / "__init__.py", "pkg.a": source, "pkg.b": tmp_path / "pkg" / "b.py",
             "pkg.c": tmp_path / "pkg" / "c.py"}
    assert sorted(imported("pkg.a", source, known)) == ["pkg.b", "pkg.c"]
