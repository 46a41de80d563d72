"""The Dockerfile keeps its promises (docs/deploy.md), checked without a Docker engine.

The file is parsed here (continuation lines joined, comments dropped, one instruction per entry)
and each property has a checker that returns what is wrong, so that a failure names the problem:
a slim official Python base on a pinned tag; the package installed from the source tree; a
non-root USER in force before the process starts; a HEALTHCHECK on /healthz with the standard
library (slim images have no curl), which is also run here against a stub server; an exec-form
``python -m datapulse``; EXPOSE 8000; STOPSIGNAL SIGTERM; no secret baked in; and every ENV
name either a real setting's environment variable or one of a few interpreter variables.

The last tests feed the checkers broken Dockerfiles, so that a checker which stopped seeing its
problem would fail too.
"""

from __future__ import annotations

import http.server
import json
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from datapulse.config import config_from_env, settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"

# ENV names allowed besides the settings': the interpreter's and pip's own switches.
RUNTIME_ENV = {
    "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE",
    "PIP_DISABLE_PIP_VERSION_CHECK",
    "PIP_NO_CACHE_DIR",
}
# python:3.11-slim, python:3.12.7-slim-bookworm, optionally @sha256:<digest>.
SLIM_PYTHON = re.compile(
    r"^(?:docker\.io/(?:library/)?)?python:3\.(?:1[1-9]|[2-9]\d)(?:\.\d+)?-slim(?:-[a-z]+)?"
    r"(?:@sha256:[0-9a-f]{64})?$"
)
PYTHONS = {"python", "python3", "/usr/local/bin/python", "/usr/local/bin/python3"}
SECRET_ENVS = {"LOCAL_BEARER_TOKEN"}


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper-cased: FROM, RUN, ENV, ...
    args: str  # the rest of the (joined) line
    line: int  # where it starts, 1-based

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, or None for the shell form."""
        try:
            value = json.loads(self.args)
        except ValueError:
            return None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        return None


def parse(text: str) -> list[Instruction]:
    """Dockerfile instructions with ``\\`` continuations joined and comment lines dropped (also
    those inside a continued instruction, as Docker does). Heredocs are not supported."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        continued = stripped.endswith("\\")
        pending.append(stripped[:-1].strip() if continued else stripped)
        if not continued:
            keyword, _, args = " ".join(pending).partition(" ")
            instructions.append(Instruction(keyword.upper(), args.strip(), start))
            pending = []
    if pending:
        keyword, _, args = " ".join(pending).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    return instructions


def env_pairs(instruction: Instruction) -> list[tuple[str, str]]:
    """``ENV A=1 B="x y"`` and the legacy ``ENV A 1`` (one pair, the rest is the value)."""
    words = shlex.split(instruction.args)
    if words and "=" not in words[0]:
        return [(words[0], " ".join(words[1:]))]
    return [(name, value) for name, _, value in (word.partition("=") for word in words)]


def _all(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    return [i for i in instructions if i.keyword == keyword]


def _process(instructions: list[Instruction]) -> list[Instruction]:
    """The ENTRYPOINT and CMD in force (the last of each, in the final stage)."""
    final = _final_stage(instructions)
    found = [_all(final, "ENTRYPOINT")[-1:], _all(final, "CMD")[-1:]]
    return [i for pair in found for i in pair]


def _final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [n for n, i in enumerate(instructions) if i.keyword == "FROM"]
    return instructions[starts[-1] :] if starts else instructions


def _env(instructions: list[Instruction]) -> dict[str, str]:
    return {k: v for i in _all(instructions, "ENV") for k, v in env_pairs(i)}


# --- the checkers: each returns the problems it finds (empty: fine) --------------------------


def check_base(instructions: list[Instruction]) -> list[str]:
    froms = _all(instructions, "FROM")
    if not froms:
        return ["no FROM"]
    image = froms[-1].args.split()
    image = [w for w in image if not w.startswith("--")]  # --platform=...
    if not image or not SLIM_PYTHON.match(image[0]):
        return [f"line {froms[-1].line}: base {froms[-1].args!r} is not python:3.X[.Y]-slim[-...]"]
    return []


def check_install(instructions: list[Instruction]) -> list[str]:
    for run in _all(_final_stage(instructions), "RUN"):
        if re.search(r"\bpip install\b", run.args) and "--no-cache-dir" in run.args:
            return []
    return ["no `pip install --no-cache-dir <source tree>` in the final stage"]


def check_copied_sources_exist(instructions: list[Instruction]) -> list[str]:
    problems = []
    for copy in _all(instructions, "COPY"):
        words = shlex.split(copy.args)
        if any(w.startswith("--from") for w in words):
            continue  # from another stage or image, not from the build context
        sources = [w for w in words if not w.startswith("--")][:-1]
        for source in sources:
            if not (ROOT / source).exists():
                problems.append(f"line {copy.line}: COPY source {source!r} does not exist")
    return problems


def check_user(instructions: list[Instruction]) -> list[str]:
    final = _final_stage(instructions)
    process = _process(instructions)
    if not process:
        return ["no ENTRYPOINT or CMD"]
    first = min(final.index(i) for i in process)
    users = [i for i in final[:first] if i.keyword == "USER"]
    if not users:
        return ["no USER before ENTRYPOINT/CMD: the server would run as root"]
    user = users[-1].args.split(":", 1)[0].strip()
    if user in {"root", "0"}:
        return [f"line {users[-1].line}: USER {users[-1].args} is root"]
    if any(i.keyword == "USER" for i in final[first:]):
        return ["a USER after ENTRYPOINT/CMD: keep the last USER before them"]
    return []


def check_healthcheck(instructions: list[Instruction]) -> list[str]:
    checks = _all(instructions, "HEALTHCHECK")
    if not checks:
        return ["no HEALTHCHECK"]
    args = checks[-1].args
    problems = []
    for option in ("--interval=", "--timeout=", "--retries="):
        if option not in args:
            problems.append(f"HEALTHCHECK has no {option}")
    command = healthcheck_command(checks[-1])
    if command is None:
        return [*problems, "HEALTHCHECK is not `CMD [...]` in exec form"]
    if "/healthz" not in " ".join(command):
        problems.append("HEALTHCHECK does not request /healthz")
    if command[0] not in PYTHONS:
        problems.append(f"HEALTHCHECK runs {command[0]!r}, not Python (slim images have no curl)")
    return problems


def healthcheck_command(check: Instruction) -> list[str] | None:
    match = re.search(r"\bCMD\s+(\[.*\])\s*$", check.args)
    if match is None:
        return None
    return Instruction("CMD", match.group(1), check.line).exec_form()


def check_entrypoint(instructions: list[Instruction]) -> list[str]:
    process = _process(instructions)
    if not process:
        return ["no ENTRYPOINT or CMD"]
    argv: list[str] = []
    for instruction in process:
        form = instruction.exec_form()
        if form is None:
            return [
                f"line {instruction.line}: {instruction.keyword} is in shell form: a shell would"
                " be PID 1 and SIGTERM would not reach Python"
            ]
        argv += form
    if argv[:3] in ([p, "-m", "datapulse"] for p in PYTHONS) or argv[:1] == ["datapulse"]:
        return []
    return [f"the container runs {argv!r}, not `python -m datapulse`"]


def check_expose(instructions: list[Instruction]) -> list[str]:
    ports = {p.split("/")[0] for i in _all(instructions, "EXPOSE") for p in i.args.split()}
    problems = [] if "8000" in ports else ["no EXPOSE 8000"]
    port = _env(instructions).get("DATAPULSE_PORT", "8000")
    if port != "8000":
        problems.append(f"DATAPULSE_PORT={port} while 8000 is exposed")
    return problems


def check_stopsignal(instructions: list[Instruction]) -> list[str]:
    signals = _all(instructions, "STOPSIGNAL")
    if not signals or signals[-1].args.strip() not in {"SIGTERM", "15"}:
        return ["no STOPSIGNAL SIGTERM (the server drains gracefully on SIGTERM)"]
    return []


def check_no_secrets(instructions: list[Instruction]) -> list[str]:
    problems = []
    for instruction in instructions:
        if instruction.keyword in {"ENV", "ARG"}:
            names = (
                [k for k, _ in env_pairs(instruction)]
                if instruction.keyword == "ENV"
                else [w.split("=", 1)[0] for w in shlex.split(instruction.args)]
            )
            for name in set(names) & SECRET_ENVS:
                problems.append(
                    f"line {instruction.line}: {instruction.keyword} {name} bakes in a secret"
                )
        if re.search(r"(?<![\w-])--token\b", instruction.args):
            problems.append(f"line {instruction.line}: --token on a command line bakes in a secret")
        if re.search(r"\bLOCAL_BEARER_TOKEN=\S", instruction.args) and instruction.keyword not in {
            "ENV",
            "ARG",
        }:
            problems.append(f"line {instruction.line}: a LOCAL_BEARER_TOKEN value is baked in")
    return problems


def check_env(instructions: list[Instruction]) -> list[str]:
    env = _env(instructions)
    known = {f.metadata["env"] for f in settings()}
    problems = [
        f"ENV {name} is neither a setting (datapulse/config.py) nor an interpreter variable"
        for name in env
        if name not in known | RUNTIME_ENV
    ]
    if env.get("PYTHONUNBUFFERED") != "1":
        problems.append("no ENV PYTHONUNBUFFERED=1 (logs would wait for a full buffer)")
    if env.get("DATAPULSE_HOST") != "0.0.0.0":
        problems.append("no ENV DATAPULSE_HOST=0.0.0.0 (a loopback bind is unreachable)")
    try:
        config_from_env({k: v for k, v in env.items() if k in known})
    except ValueError as exc:
        problems.append(f"the ENV settings are not a valid Config: {exc}")
    return problems


CHECKS: list[Callable[[list[Instruction]], list[str]]] = [
    check_base,
    check_install,
    check_copied_sources_exist,
    check_user,
    check_healthcheck,
    check_entrypoint,
    check_expose,
    check_stopsignal,
    check_no_secrets,
    check_env,
]


def problems_in(text: str) -> list[str]:
    instructions = parse(text)
    return [problem for check in CHECKS for problem in check(instructions)]


# --- the repository's Dockerfile -----------------------------------------------------------


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_the_dockerfile_passes(
    instructions: list[Instruction], check: Callable[[list[Instruction]], list[str]]
) -> None:
    assert check(instructions) == []


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200
    host: str | None = None  # when set, any other Host is answered 421 (as --allowed-hosts does)

    def do_GET(self) -> None:
        if self.host is not None and self.headers.get("Host") != self.host:
            self.send_response(421)
        else:
            self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def _probe(instructions: list[Instruction], env: dict[str, str]) -> int:
    """Run the HEALTHCHECK command here (with this interpreter) in ``env``; its exit status."""
    command = healthcheck_command(_all(instructions, "HEALTHCHECK")[-1])
    assert command is not None
    assert command[0] in PYTHONS
    result = subprocess.run(
        [sys.executable, *command[1:]], env=env, capture_output=True, timeout=20, check=False
    )
    return result.returncode


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_the_healthcheck_probes_healthz_on_the_configured_port(
    instructions: list[Instruction], stub: http.server.HTTPServer, status: int, healthy: bool
) -> None:
    _Health.status = status
    try:
        code = _probe(instructions, {"DATAPULSE_PORT": str(stub.server_address[1])})
    finally:
        _Health.status = 200
    assert (code == 0) is healthy


@pytest.mark.parametrize(
    ("allowed", "host"),
    [
        ("mcp.example.com, other.example.com", "mcp.example.com"),
        ("*", "127.0.0.1"),
        ("", "127.0.0.1"),
    ],
)
def test_the_healthcheck_sends_a_host_the_server_answers_to(
    instructions: list[Instruction], stub: http.server.HTTPServer, allowed: str, host: str
) -> None:
    """With DATAPULSE_ALLOWED_HOSTS set the server answers 421 to Host: 127.0.0.1."""
    _Health.host = host
    try:
        env = {"DATAPULSE_PORT": str(stub.server_address[1]), "DATAPULSE_ALLOWED_HOSTS": allowed}
        assert _probe(instructions, env) == 0
    finally:
        _Health.host = None


def test_the_healthcheck_fails_when_nothing_listens(instructions: list[Instruction]) -> None:
    # A port just closed: nothing listens there.
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    port = server.server_address[1]
    server.server_close()
    assert _probe(instructions, {"DATAPULSE_PORT": str(port)}) != 0


def test_dockerignore_keeps_the_context_to_the_build_inputs() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    rules = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "exclude everything first, then re-include the build inputs"
    assert {"!pyproject.toml", "!README.md"} <= set(rules)
    assert any(rule.startswith("!datapulse") for rule in rules)


# --- the checkers see what they are for -----------------------------------------------------


def _without(text: str, keyword: str) -> str:
    return "\n".join(
        line for line in text.splitlines() if not line.strip().upper().startswith(keyword + " ")
    )


@pytest.fixture(scope="module")
def text() -> str:
    return DOCKERFILE.read_text(encoding="utf-8")


def test_parse_joins_continuations_and_drops_comments() -> None:
    parsed = parse("FROM python:3.12-slim\n# note\nENV A=1 \\\n    # inside\n    B=2\nRUN x\n")
    assert [(i.keyword, i.args, i.line) for i in parsed] == [
        ("FROM", "python:3.12-slim", 1),
        ("ENV", "A=1 B=2", 3),
        ("RUN", "x", 6),
    ]
    assert env_pairs(parsed[1]) == [("A", "1"), ("B", "2")]
    assert env_pairs(Instruction("ENV", "A one two", 1)) == [("A", "one two")]


def test_a_dockerfile_without_user_fails(text: str) -> None:
    assert any("no USER" in p for p in problems_in(_without(text, "USER")))


def test_a_root_user_fails(text: str) -> None:
    broken = re.sub(r"^USER .*$", "USER root", text, flags=re.MULTILINE)
    assert any("is root" in p for p in problems_in(broken))


@pytest.mark.parametrize(
    "line",
    [
        "ENV LOCAL_BEARER_TOKEN=s3cret",
        "ENV LOCAL_BEARER_TOKEN s3cret",
        "ARG LOCAL_BEARER_TOKEN=s3cret",
        'CMD ["--token", "s3cret"]',
        "RUN LOCAL_BEARER_TOKEN=s3cret python -c pass",
    ],
)
def test_a_baked_in_token_fails(text: str, line: str) -> None:
    broken = text.replace("EXPOSE 8000", f"{line}\nEXPOSE 8000")
    assert any("secret" in p or "baked" in p for p in problems_in(broken))


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (r"^FROM .*$", "FROM python:3.12", "is not python"),
        (r"^FROM .*$", "FROM python:slim", "is not python"),
        (r"^FROM .*$", "FROM python:latest", "is not python"),
        (r"^ENTRYPOINT .*$", "ENTRYPOINT python -m datapulse", "shell form"),
        (r"^ENTRYPOINT .*$", 'ENTRYPOINT ["python", "-m", "http.server"]', "not `python -m"),
        (r"^EXPOSE .*$", "EXPOSE 8080", "no EXPOSE 8000"),
        (r"^STOPSIGNAL .*$", "STOPSIGNAL SIGKILL", "no STOPSIGNAL SIGTERM"),
        (r"/healthz", "/metrics", "does not request /healthz"),
        (r"--retries=\d+ ", "", "no --retries="),
        (r"^ENV ", "ENV DATAPULSE_NO_SUCH=1 ", "ENV DATAPULSE_NO_SUCH is neither"),
        (r"DATAPULSE_PORT=8000", "DATAPULSE_PORT=nope", "not a valid Config"),
        (r"PYTHONUNBUFFERED=1", "PYTHONUNBUFFERED=0", "PYTHONUNBUFFERED=1"),
    ],
)
def test_each_checker_sees_its_problem(text: str, old: str, new: str, expected: str) -> None:
    broken, count = re.subn(old, new, text, count=1, flags=re.MULTILINE)
    assert count == 1, f"the Dockerfile no longer has {old!r}: update this test"
    found = problems_in(broken)
    assert any(expected in p for p in found), found


def test_the_repository_dockerfile_has_no_problems(text: str) -> None:
    assert problems_in(text) == []
