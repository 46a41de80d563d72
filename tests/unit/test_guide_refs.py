"""docs/sse-internals.md names real code: every reference in it must resolve.

The guide walks a stream through the code by name, in two greppable forms:

* ``datapulse/live/stream.py:LogStream.offer``: a module path and a qualified name in it (a
  function, a class, a method, a module-level or class-level constant);
* ``tests/unit/test_log_stream.py::test_name``: a test function in a test file.

Code moves; a guide that names what is no longer there teaches the wrong thing. This test parses
the guide, resolves each reference with ``ast`` (nothing is imported, so no module runs) and
names every one that does not resolve. Bare file paths (``datapulse/net/body.py``) must exist.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "sse-internals.md"

# Not preceded by a path character, so ``x/datapulse/a.py`` is not read as ``datapulse/a.py``.
CODE_REF = re.compile(r"(?<![\w/.])(datapulse/[\w/]+\.py):([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")
TEST_REF = re.compile(r"(?<![\w/.])(tests/[\w/]+\.py)::([A-Za-z_]\w*)")
ANY_PATH = re.compile(r"(?<![\w/.])((?:datapulse|tests)/[\w/]+\.py)")

MIN_CODE_REFS = 40
MIN_TEST_REFS = 25

Scope = ast.Module | ast.ClassDef


def _assigned_names(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def _members(scope: Scope) -> dict[str, ast.AST]:
    """What a module or class body defines by name (imports do not count: they live
    elsewhere, and the guide should point where they do)."""
    found: dict[str, ast.AST] = {}
    for node in scope.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found[node.name] = node
        for name in _assigned_names(node):
            found[name] = node
    return found


@cache
def _parse(path: str) -> ast.Module | None:
    file = ROOT / path
    if not file.is_file():
        return None
    return ast.parse(file.read_text(encoding="utf-8"), filename=path)


def resolve_code(path: str, qualname: str) -> str | None:
    """None if ``qualname`` is defined in ``path``; else why not."""
    tree = _parse(path)
    if tree is None:
        return f"{path}: no such file"
    scope: ast.AST = tree
    for depth, part in enumerate(qualname.split(".")):
        if not isinstance(scope, ast.Module | ast.ClassDef):
            return f"{path}:{qualname}: {'.'.join(qualname.split('.')[:depth])} is not a class"
        found = _members(scope).get(part)
        if found is None:
            return f"{path}:{qualname}: {part!r} is not defined there"
        scope = found
    return None


def resolve_test(path: str, name: str) -> str | None:
    """None if ``path`` defines a test function ``name`` (module level or in a class)."""
    tree = _parse(path)
    if tree is None:
        return f"{path}: no such file"
    scopes: list[Scope] = [tree, *(n for n in tree.body if isinstance(n, ast.ClassDef))]
    for scope in scopes:
        node = _members(scope).get(name)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return None
    return f"{path}::{name}: no such test function"


def broken_references(text: str) -> tuple[list[str], int, int]:
    """(what does not resolve, code references, test references) in ``text``."""
    problems: list[str] = []
    code = [(m.group(1), m.group(2)) for m in CODE_REF.finditer(text)]
    tests = [(m.group(1), m.group(2)) for m in TEST_REF.finditer(text)]
    for path, qualname in dict.fromkeys(code):
        if (problem := resolve_code(path, qualname)) is not None:
            problems.append(problem)
    for path, name in dict.fromkeys(tests):
        if (problem := resolve_test(path, name)) is not None:
            problems.append(problem)
    for path in dict.fromkeys(m.group(1) for m in ANY_PATH.finditer(text)):
        if not (ROOT / path).is_file():
            problems.append(f"{path}: no such file")
    return list(dict.fromkeys(problems)), len(code), len(tests)


def test_every_reference_in_the_guide_resolves() -> None:
    problems, code, tests = broken_references(GUIDE.read_text(encoding="utf-8"))
    assert not problems, "docs/sse-internals.md names what does not exist:\n" + "\n".join(problems)
    # A guide that lost its references would pass the check above vacuously.
    assert code >= MIN_CODE_REFS, f"only {code} code references"
    assert tests >= MIN_TEST_REFS, f"only {tests} test references"


def test_the_guide_has_its_diagrams() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    assert "```mermaid\nsequenceDiagram" in text
    assert "```mermaid\nstateDiagram-v2" in text


def test_the_checker_names_what_does_not_exist() -> None:
    text = (
        "`datapulse/live/stream.py:LogStream.offer` is real; "
        "`datapulse/live/stream.py:SSE_HEADERS` is a constant; "
        "`datapulse/live/stream.py:LogStream.no_such_method`, "
        "`datapulse/live/stream.py:SSE_HEADERS.x`, "
        "`datapulse/live/nowhere.py:Thing`, "
        "`tests/unit/test_log_stream.py::test_no_such_test` are not; "
        "`tests/unit/test_guide_refs.py::test_the_checker_names_what_does_not_exist` is."
    )
    problems, code, tests = broken_references(text)
    assert (code, tests) == (5, 2)
    assert problems == [
        "datapulse/live/stream.py:LogStream.no_such_method: 'no_such_method' is not defined there",
        "datapulse/live/stream.py:SSE_HEADERS.x: SSE_HEADERS is not a class",
        "datapulse/live/nowhere.py: no such file",
        "tests/unit/test_log_stream.py::test_no_such_test: no such test function",
    ]
