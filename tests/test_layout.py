"""Structural promises: the sans-IO core stays pure; README documents every setting."""

from __future__ import annotations

import ast
from pathlib import Path

from datapulse.config import settings

ROOT = Path(__file__).parent.parent
FORBIDDEN = {"trio", "h11", "httpx", "socket", "trio_websocket", "anyio", "asyncio"}


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
