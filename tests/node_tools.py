"""Node.js for the tests that drive npm packages (the MCP conformance suite, SDK interop).

Each such test keeps its npm packages in a folder of its own with a ``package.json`` and a
committed ``package-lock.json`` (``tests/conformance/`` is one); ``node_modules/`` is gitignored.

* ``ensure_node_modules(package_dir)``: ``npm ci`` there when ``node_modules`` is missing or was
  installed from another lockfile (a stamp file records the lockfile's hash); otherwise nothing.
  ``.ci/run`` calls it before the tests, and the tests call it again (a no-op then).
* ``find_node(package_dir)``: a Node.js binary at least ``MIN_NODE_MAJOR`` (the suite needs 22):
  the system's ``node`` if new enough, else the one a ``node-linux-<arch>`` package installed in
  ``package_dir`` (``tests/conformance/package.json`` pins one as an optional dependency, so
  only the machine's architecture is installed).

Run as a script, ``python -m tests.node_tools [DIR...]`` installs each DIR (default:
``tests/conformance``) and prints the Node.js it would use.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFORMANCE_DIR = ROOT / "tests" / "conformance"
MIN_NODE_MAJOR = 22
STAMP = ".datapulse-lock-sha256"  # inside node_modules: the lockfile it was installed from
NPM_CI_TIMEOUT_S = 600

_ARCH = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}


def node_major(binary: str | os.PathLike[str]) -> int | None:
    """The major version of a ``node`` binary, or None if it does not run."""
    try:
        out = subprocess.run(
            [os.fspath(binary), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"v(\d+)\.", out.strip())
    return int(match.group(1)) if match else None


def bundled_node(package_dir: Path) -> Path:
    """Where a ``node-linux-<arch>`` package in ``package_dir`` puts its binary."""
    arch = _ARCH.get(platform.machine().lower(), platform.machine().lower())
    return package_dir / "node_modules" / f"node-linux-{arch}" / "bin" / "node"


def find_node(package_dir: Path = CONFORMANCE_DIR, minimum: int = MIN_NODE_MAJOR) -> Path | None:
    """A Node.js binary of at least version ``minimum``: the system's, else ``package_dir``'s."""
    system = shutil.which("node")
    if system is not None and (node_major(system) or 0) >= minimum:
        return Path(system)
    bundled = bundled_node(package_dir)
    if bundled.is_file() and (node_major(bundled) or 0) >= minimum:
        return bundled
    return None


def lock_digest(package_dir: Path) -> str:
    return hashlib.sha256((package_dir / "package-lock.json").read_bytes()).hexdigest()


def installed(package_dir: Path) -> bool:
    """``node_modules`` exists and was installed from the current ``package-lock.json``."""
    stamp = package_dir / "node_modules" / STAMP
    try:
        return stamp.read_text().strip() == lock_digest(package_dir)
    except FileNotFoundError:
        return False


def ensure_node_modules(package_dir: Path = CONFORMANCE_DIR) -> None:
    """``npm ci`` in ``package_dir`` unless its ``node_modules`` matches its lockfile already.

    Raises ``RuntimeError`` (with npm's output) when npm is missing or the install fails.
    """
    package_dir = Path(package_dir)
    if installed(package_dir):
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            f"npm is not installed, so {package_dir}/node_modules cannot be installed "
            "(.ci/run installs Debian's nodejs and npm)"
        )
    # --no-audit/--no-fund: no requests beyond the package downloads themselves.
    proc = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=package_dir,
        capture_output=True,
        text=True,
        timeout=NPM_CI_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"npm ci in {package_dir} failed:\n{proc.stdout}\n{proc.stderr}")
    (package_dir / "node_modules" / STAMP).write_text(lock_digest(package_dir) + "\n")


def main(argv: list[str]) -> int:
    for name in argv or [os.fspath(CONFORMANCE_DIR)]:
        package_dir = Path(name).resolve()
        ensure_node_modules(package_dir)
        node = find_node(package_dir)
        if node is None:
            print(f"{package_dir}: no Node.js >= {MIN_NODE_MAJOR} found", file=sys.stderr)
            return 1
        print(f"{package_dir}: node_modules up to date; node {node} (v{node_major(node)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
