"""Structural promises: the sans-IO core stays pure, the layers import downwards only and no
module imports itself back through others; README documents every setting.

The import graph is read with ``ast`` from every ``datapulse/**/*.py`` (nothing is imported), and
every import counts: module level, inside functions, under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from datapulse.config import settings

ROOT = Path(__file__).parents[2]
PACKAGE = ROOT / "datapulse"
FORBIDDEN = {"trio", "h11", "httpx", "socket", "trio_websocket", "anyio", "asyncio"}

# The layer of each first path component under datapulse/ (a module or a package, so store.py
# becoming store/ keeps its rank). A module imports only modules of its own rank or lower.
RANKS = {
    "errors": 0,
    "metrics": 0,
    "config": 0,
    "version": 0,
    "logs": 0,
    "core": 1,
    "tools": 2,
    "features": 2,
    "auth": 2,
    "protocol": 3,
    "store": 3,
    "net": 4,
    "live": 5,
    "transports": 6,
    "server": 7,
    "app": 7,
    "workers": 7,
    "__init__": 8,
    "__main__": 8,
}
# What core/ may import of ours besides other core modules.
CORE_MAY_IMPORT = {"datapulse.errors", "datapulse.config"}


@dataclass(frozen=True)
class Import:
    """One datapulse module importing another: where, and the statement as written."""

    source: str
    target: str
    path: Path
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.text}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _component(module: str) -> str:
    """``datapulse.core.mcp`` -> ``core``; the package itself is its ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _resolve(name: str) -> str | None:
    """The datapulse module ``name`` is, or is in (``datapulse.x.Name`` -> ``datapulse.x``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports_of(module: str, path: Path) -> Iterator[Import]:
    source = path.read_text()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            # `from datapulse.x import y` imports the submodule y when there is one.
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        text = ast.get_source_segment(source, node) or ""
        for name in targets:
            if name == "datapulse" or name.startswith("datapulse."):
                target = _resolve(name)
                if target is not None and target != module:
                    yield Import(module, target, path, node.lineno, " ".join(text.split()))


IMPORTS = [imp for module, path in MODULES.items() for imp in _imports_of(module, path)]


def test_core_imports_no_io_library() -> None:
    for path in sorted((ROOT / "datapulse" / "core").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_core_imports_only_errors_and_config_of_ours() -> None:
    """core/ is the ground floor: everything else may build on it, it builds on nothing of ours."""
    bad = [
        str(imp)
        for imp in IMPORTS
        if _component(imp.source) == "core"
        and _component(imp.target) != "core"
        and imp.target not in CORE_MAY_IMPORT
    ]
    assert not bad, "core/ imports datapulse modules above it:\n" + "\n".join(bad)


def test_every_module_has_a_layer() -> None:
    unknown = sorted(
        {str(MODULES[m].relative_to(ROOT)) for m in MODULES if _component(m) not in RANKS}
    )
    assert not unknown, f"give these a rank in RANKS: {unknown}"


@pytest.mark.parametrize("component", sorted({_component(m) for m in MODULES} & set(RANKS)))
def test_layers_import_downwards(component: str) -> None:
    bad = [
        f"{imp} (rank {RANKS[_component(imp.source)]} imports rank {RANKS[_component(imp.target)]})"
        for imp in IMPORTS
        if _component(imp.source) == component
        and _component(imp.target) in RANKS
        and RANKS[_component(imp.target)] > RANKS[component]
    ]
    assert not bad, "imports from a higher layer:\n" + "\n".join(bad)


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit to think about)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
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
                components.append(sorted(component))
    return components


def _cycle_in(members: list[str], edges: dict[tuple[str, str], Import]) -> list[Import]:
    """One import cycle through the component's first member, as the imports that make it."""
    inside = set(members)
    start = members[0]
    paths: dict[str, list[Import]] = {start: []}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for (src, dst), imp in sorted(edges.items()):
            if src != node or dst not in inside:
                continue
            if dst == start:
                return [*paths[node], imp]
            if dst not in paths:
                paths[dst] = [*paths[node], imp]
                queue.append(dst)
    raise AssertionError(f"no cycle found in {members}")  # pragma: no cover


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    edges: dict[tuple[str, str], Import] = {}
    for imp in IMPORTS:
        graph[imp.source].add(imp.target)
        edges.setdefault((imp.source, imp.target), imp)
    cycles = [c for c in _strongly_connected(graph) if len(c) > 1]
    report = [
        f"among {', '.join(cycle)}, for example:\n"
        + "\n".join(f"    {imp}" for imp in _cycle_in(cycle, edges))
        for cycle in cycles
    ]
    assert not cycles, "import cycles:\n" + "\n".join(report)


def test_readme_lists_every_setting() -> None:
    from datapulse.config import settings_table

    readme = (ROOT / "README.md").read_text()
    assert settings_table() in readme, "regenerate the README table from settings_table()"
    for f in settings():
        assert f"`{f.metadata['flag']}`" in readme, f.metadata["flag"]
        assert f"`{f.metadata['env']}`" in readme, f.metadata["env"]


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    head = readme[:1500]
    assert "python -m datapulse" in head
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = "python -m pip install -e '.[test]' && python -m pytest"
    assert test_command in head
    assert test_command in ci
