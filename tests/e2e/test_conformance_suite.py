"""The official MCP conformance suite, in server mode, against examples/conformance_server.py.

``@modelcontextprotocol/conformance`` (npm; pinned, with a Node.js >= 22 binary, in
tests/conformance/package-lock.json: ``.ci/run`` installs them and tests/node_tools.py finds the
Node) drives ``python -m datapulse --app examples/conformance_server.py:server`` on a loopback
port: every scenario at each revision the suite knows (2025-03-26, 2025-06-18 and 2025-11-25 with
the initialize handshake, 2026-07-28 per request; one suite run each, ``--suite all
--spec-version REV``) and the off-timeline extension scenarios one by one. The suite's own
results (a checks.json per scenario) are read back: every scenario passes (no check with status
FAILURE) except those in KNOWN_FAILURES, each with the reason it cannot pass yet. A known
failure that passes fails the test as well, so the list only ever shrinks. WARNINGs (SHOULDs) are
printed, not failed.

Auth: the suite has no way to send a header, and every datapulse endpoint wants ``Authorization:
Bearer``. AUTH_PRELOAD, loaded with ``node --import``, adds that header (when absent) to each
request the suite sends to the server's origin: through undici's global dispatcher, which the
suite's ``fetch`` and ``undici.request`` use, and through ``node:http``'s ``request``. Nothing
else on the wire changes, and nothing goes anywhere but 127.0.0.1.

By hand (a server started as in examples/conformance_server.py's docstring, token ``t``)::

    cd tests/conformance && MCP_AUTH_ORIGIN=http://127.0.0.1:8000 MCP_AUTH_HEADER='Bearer t' \\
      MCP_AUTH_PACKAGE=$PWD/node_modules/@modelcontextprotocol/conformance \\
      node --import ./auth.mjs node_modules/.bin/conformance server \\
      --url http://127.0.0.1:8000/mcp --suite all --spec-version 2026-07-28
    # (auth.mjs: AUTH_PRELOAD below, saved to a file; node: `python -m tests.node_tools`)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from tests import node_tools
from tests.helpers import TOKEN, read_stderr_until

ROOT = node_tools.ROOT
PACKAGE_DIR = node_tools.CONFORMANCE_DIR
SUITE_DIR = PACKAGE_DIR / "node_modules" / "@modelcontextprotocol" / "conformance"
CLI = SUITE_DIR / "dist" / "index.js"
APP = ROOT / "examples" / "conformance_server.py"

# The revisions the pinned suite knows (test_the_suite_knows_these_revisions holds it to that);
# "extensions" stands for its off-timeline scenarios (tasks, skills), run at the draft's wire.
REVISIONS = ("2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28")
EXTENSIONS = "extensions"
HANDSHAKE = ("2025-06-18", "2025-11-25")  # the dated revisions with more than the lifecycle

SCENARIO_TIMEOUT_MS = 20_000  # the suite's own bound on one scenario (its default is 30 s)
RUN_TIMEOUT_S = 180  # one suite run: every scenario of a revision (about 5 s today)
TEST_TIMEOUT_S = 300  # per test, with the first one's `npm ci` when .ci/run has not run it

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)


# (revision, scenario) excuses the whole scenario; (revision, "scenario:check-id") one check
# of it (every occurrence of that id), so the scenario's other checks still count.
KNOWN_FAILURES: dict[tuple[str, str], str] = {}

AUTH_PRELOAD = r"""
// Loaded with `node --import` into the conformance CLI, which cannot send headers of its own:
// adds `authorization: $MCP_AUTH_HEADER` to each request for $MCP_AUTH_ORIGIN that has none.
import http from 'node:http';
import { createRequire } from 'node:module';

const origin = new URL(process.env.MCP_AUTH_ORIGIN).origin;
const value = process.env.MCP_AUTH_HEADER;
// The suite's own undici: its global dispatcher is the one fetch() and undici.request() use.
const undici = createRequire(process.env.MCP_AUTH_PACKAGE + '/')('undici');

function hasAuth(headers) {
  if (Array.isArray(headers)) {
    for (let i = 0; i < headers.length; i += 2) {
      if (String(headers[i]).toLowerCase() === 'authorization') return true;
    }
    return false;
  }
  return Object.keys(headers ?? {}).some((k) => k.toLowerCase() === 'authorization');
}

function withAuth(headers) {
  if (hasAuth(headers)) return headers;
  if (Array.isArray(headers)) return [...headers, 'authorization', value];
  return { ...(headers ?? {}), authorization: value };
}

undici.setGlobalDispatcher(
  new undici.Agent().compose((dispatch) => (opts, handler) => {
    const ours = new URL(String(opts.origin)).origin === origin;
    return dispatch(ours ? { ...opts, headers: withAuth(opts.headers) } : opts, handler);
  })
);

const request = http.request;
http.request = function (...args) {
  const i = typeof args[0] === 'string' || args[0] instanceof URL ? 1 : 0;
  const options = args[i] && typeof args[i] === 'object' ? args[i] : null;
  if (options) {
    const target = `http://${options.hostname ?? options.host}:${options.port ?? 80}`;
    if (new URL(target).origin === origin) {
      args[i] = { ...options, headers: withAuth(options.headers) };
    }
  }
  return request.apply(this, args);
};
"""

_LISTED = re.compile(r"^\s+- (?P<name>\S+) \[(?P<tags>[^\]]*)\]$")
_RESULT_DIR = re.compile(r"^server-(?P<name>.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$")


@dataclass(frozen=True)
class Suite:
    node: Path
    scenarios: dict[str, frozenset[str]]
    """Server scenario -> the revisions it applies at (``extension`` for off-timeline ones)."""

    def at(self, revision: str) -> list[str]:
        tag = "extension" if revision == EXTENSIONS else revision
        return [name for name, tags in self.scenarios.items() if tag in tags]


@pytest.fixture(scope="module")
def suite() -> Suite:
    node_tools.ensure_node_modules(PACKAGE_DIR)  # a no-op once .ci/run has installed it
    node = node_tools.find_node(PACKAGE_DIR)
    assert node is not None, f"no Node.js >= {node_tools.MIN_NODE_MAJOR} (see tests/node_tools.py)"
    listing = subprocess.run(
        [os.fspath(node), os.fspath(CLI), "list", "--server"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=suite_env(),
    ).stdout
    scenarios = {}
    for line in listing.splitlines():
        match = _LISTED.match(line)
        if match:
            scenarios[match["name"]] = frozenset(match["tags"].split(","))
    assert scenarios, listing
    return Suite(node, scenarios)


def suite_env(**extra: str) -> dict[str, str]:
    """A clean environment for node: no proxies, no NODE_OPTIONS, no tokens of ours."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NO_COLOR": "1"}
    env["HOME"] = os.environ.get("HOME", "/tmp")
    env.update(extra)
    return env


def server_command() -> list[str]:
    """The CLI serving examples/conformance_server.py on a port the kernel picks (announced)."""
    app = ["-m", "datapulse", "--app", f"{APP}:server"]
    return [sys.executable, *app, "--host", "127.0.0.1", "--port", "0", "--token", TOKEN]


@asynccontextmanager
async def conformance_server() -> AsyncIterator[tuple[str, list[bytes]]]:
    """examples/conformance_server.py on a free loopback port: its /mcp URL, and its stderr."""
    command = server_command()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATAPULSE_", "JWT_"))}
    env.pop("LOCAL_BEARER_TOKEN", None)
    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(
            lambda task_status=trio.TASK_STATUS_IGNORED: trio.run_process(
                command,
                stderr=subprocess.PIPE,
                cwd=ROOT,
                env=env,
                check=False,
                task_status=task_status,
            )
        )
        announced = await read_stderr_until(proc, b"bearer token", timeout_s=30)
        match = re.search(rb"listening on (http://127\.0\.0\.1:\d+)", announced)
        assert match, announced.decode(errors="replace")
        log = [announced]

        async def drain() -> None:  # keep reading, so the server never blocks on a full pipe
            assert proc.stderr is not None
            while chunk := await proc.stderr.receive_some(65536):
                log.append(chunk)

        nursery.start_soon(drain)
        try:
            yield f"{match[1].decode()}/mcp", log
        finally:
            nursery.cancel_scope.cancel()  # run_process ends the server (SIGTERM, then SIGKILL)


async def run_suite(suite: Suite, url: str, work: Path, *args: str) -> str:
    """One run of the conformance CLI in server mode; its output (results land in work/results)."""
    preload = work / "auth.mjs"
    preload.write_text(AUTH_PRELOAD)
    command = [
        os.fspath(suite.node),
        "--import",
        preload.as_uri(),
        os.fspath(CLI),
        "server",
        "--url",
        url,
        "--output-dir",
        os.fspath(work / "results"),
        "--timeout",
        str(SCENARIO_TIMEOUT_MS),
        *args,
    ]
    env = suite_env(
        MCP_AUTH_ORIGIN=url,
        MCP_AUTH_HEADER=f"Bearer {TOKEN}",
        MCP_AUTH_PACKAGE=os.fspath(SUITE_DIR),
    )
    with trio.fail_after(RUN_TIMEOUT_S):
        done = await trio.run_process(
            command, cwd=work, env=env, capture_stdout=True, capture_stderr=True, check=False
        )
    # Exit 1 just means some check failed: the checks themselves are judged below.
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode in (0, 1), output[-5000:]
    return output


def read_results(results: Path) -> dict[str, list[dict[str, Any]] | None]:
    """Scenario -> its checks; None for a scenario that ran but wrote none (it crashed)."""
    found: dict[str, list[dict[str, Any]] | None] = {}
    for entry in sorted(results.iterdir()) if results.is_dir() else []:
        match = _RESULT_DIR.match(entry.name)
        if match is None:
            continue
        checks = entry / "checks.json"
        found[match["name"]] = json.loads(checks.read_text()) if checks.is_file() else None
    return found


@dataclass
class Verdict:
    unexpected: list[str]
    stale: list[str]
    excused: list[str]
    warnings: list[str]


def judge(revision: str, results: dict[str, list[dict[str, Any]] | None]) -> Verdict:
    verdict = Verdict([], [], [], [])
    for scenario, checks in sorted(results.items()):
        whole = KNOWN_FAILURES.get((revision, scenario))
        if checks is None:
            failed = [{"id": scenario, "errorMessage": "no checks.json: the scenario crashed"}]
        else:
            failed = [c for c in checks if c.get("status") == "FAILURE"]
            verdict.warnings += [
                f"{scenario}: {c['id']}: {c.get('errorMessage', '')}"
                for c in checks
                if c.get("status") == "WARNING"
            ]
        if whole is not None:
            if failed:
                verdict.excused.append(f"{scenario}: {whole}")
            else:
                verdict.stale.append(f"{scenario} passes now: drop it from KNOWN_FAILURES")
            continue
        failed_ids = {c["id"] for c in failed}
        for check in failed:
            reason = KNOWN_FAILURES.get((revision, f"{scenario}:{check['id']}"))
            if reason is not None:
                verdict.excused.append(f"{scenario}:{check['id']}: {reason}")
            else:
                message = str(check.get("errorMessage", ""))[:500]
                verdict.unexpected.append(f"{scenario}: {check['id']}: {message}")
        for rev, key in KNOWN_FAILURES:
            name, _, check_id = key.partition(":")
            if rev == revision and name == scenario and check_id and check_id not in failed_ids:
                verdict.stale.append(f"{key} passes now: drop it from KNOWN_FAILURES")
    return verdict


def test_the_suite_knows_these_revisions(suite: Suite) -> None:
    """A suite upgrade that adds a revision (or a scenario tag) must extend REVISIONS first."""
    tags = set().union(*suite.scenarios.values())
    assert tags == {*REVISIONS, "extension"}
    pinned = json.loads((PACKAGE_DIR / "package.json").read_text())["dependencies"]
    version = json.loads((SUITE_DIR / "package.json").read_text())["version"]
    assert pinned["@modelcontextprotocol/conformance"] == version
    for revision, key in KNOWN_FAILURES:  # every excuse names a scenario that runs there
        assert key.partition(":")[0] in suite.at(revision), (revision, key)


@pytest.mark.parametrize("revision", [*REVISIONS, EXTENSIONS])
async def test_conformance_suite(suite: Suite, revision: str, tmp_path: Path) -> None:
    expected = suite.at(revision)
    outputs = []
    async with conformance_server() as (url, server_log):
        if revision == EXTENSIONS:
            for scenario in expected:  # off the timeline: only --scenario selects them
                outputs.append(await run_suite(suite, url, tmp_path, "--scenario", scenario))
        else:
            args = ("--suite", "all", "--spec-version", revision)
            outputs.append(await run_suite(suite, url, tmp_path, *args))
    results = read_results(tmp_path / "results")
    output = "\n".join(outputs)
    log = b"".join(server_log).decode(errors="replace")
    assert sorted(results) == sorted(expected), output[-5000:]

    verdict = judge(revision, results)
    print(f"conformance at {revision}: {len(results)} scenarios")
    for title, lines in (("known failures", verdict.excused), ("warnings", verdict.warnings)):
        print(f"{title} ({len(lines)}):", *lines, sep="\n  ")
    problems = verdict.unexpected + verdict.stale
    tails = ["-- suite output (tail) --", output[-4000:], "-- server log (tail) --", log[-3000:]]
    assert not problems, "\n".join([*problems, "", *tails])
