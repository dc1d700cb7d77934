"""The shell's command table: parsing, usage errors, and the output of each command."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from policies.model import Identity
from shell.commands import COMMANDS, EXIT_DENIED, EXIT_OK, EXIT_USAGE, commands, parse, run_line
from shell.context import ConnectOutcome, RequestView, ShellContext, TargetView
from shell.sql import SqlResult


class FakeContext:
    """A hand-written ShellContext: the commands are pure over it. Subclasses script the parts a test needs."""

    identity = Identity("alice", frozenset({"dev", "ops"}))
    bastion_name = "bastion.test"
    certificate_expires = 1_800_003_600.0
    certificate_serial = 99
    interactive = False

    def __init__(self) -> None:
        self.notices: asyncio.Queue[str] = asyncio.Queue()

    def now(self) -> float:
        return 1_800_000_000.0

    def targets(self) -> list[TargetView]:
        return [TargetView("pg-demo", "postgres", "allow", {"env": "demo"}, "demo db"),
                TargetView("pg-prod", "postgres", "approval", {"env": "prod"})]

    async def connect(self, name: str) -> ConnectOutcome:
        return ConnectOutcome(EXIT_DENIED, f"denied: {name}")

    async def run_sql(self, name: str, sql: str) -> list[SqlResult] | ConnectOutcome:
        return ConnectOutcome(EXIT_DENIED, f"denied: {name}")

    async def run_remote(self, name: str, command: str) -> ConnectOutcome:
        return ConnectOutcome(EXIT_DENIED, f"denied: {name}")

    async def stdin(self) -> str:
        return ""

    async def request_access(self, target: str, reason: str, duration: float | None = None, *,
                             break_glass: bool = False) -> RequestView | ConnectOutcome:
        return ConnectOutcome(EXIT_DENIED, f"no approval policy covers {target}")

    def requests(self) -> tuple[list[RequestView], list[RequestView]]:
        return [], []

    async def decide(self, request_id: str, *, approve: bool, text: str) -> RequestView | ConnectOutcome:
        return ConnectOutcome(EXIT_USAGE, f"no request {request_id}")

    async def cancel_request(self, request_id: str) -> RequestView | ConnectOutcome:
        return ConnectOutcome(EXIT_USAGE, f"no request {request_id}")

    async def revoke_grant(self, grant_id: str, reason: str) -> ConnectOutcome:
        return ConnectOutcome(EXIT_USAGE, f"no grant {grant_id}")

    async def wait_request(self, request_id: str, timeout: float | None = None) -> RequestView:
        raise AssertionError("this test does not wait for a request")


def run(line: str):  # type: ignore[no-untyped-def]
    return asyncio.run(run_line(FakeContext(), line))


def test_the_fake_is_a_shell_context() -> None:
    ctx: ShellContext = FakeContext()  # mypy checks the protocol where this file is type-checked
    assert ctx.interactive is False and ctx.notices.empty()


def test_every_command_has_usage_and_summary() -> None:
    for cmd in commands():
        assert cmd.usage.startswith(cmd.name) and cmd.summary.endswith(".")


def test_every_command_is_documented() -> None:
    reference = (Path(__file__).parent.parent / "docs" / "shell.md").read_text()
    for cmd in commands():
        assert f"| `{cmd.name}" in reference, f"{cmd.name} is not in docs/shell.md's command table"


def test_help_lists_every_command() -> None:
    text = run("help").text
    for cmd in commands():
        assert cmd.usage in text


def test_targets_json_and_text() -> None:
    result = run("targets --json")
    assert result.code == EXIT_OK
    assert [t["name"] for t in result.data] == ["pg-demo", "pg-prod"]
    assert result.data[1] == {"name": "pg-prod", "kind": "postgres", "labels": {"env": "prod"},
                              "access": "approval", "description": ""}
    assert "pg-demo  postgres  allow     env=demo  demo db" in run("targets").text


def test_whoami() -> None:
    result = run("whoami --json")
    assert result.data["user"] == "alice" and result.data["groups"] == ["dev", "ops"]
    assert result.data["certificate"] == {"serial": 99, "valid_before": "2027-01-15T09:00:00Z",
                                          "seconds_left": 3600}
    assert "1h00m left" in run("whoami").text


@pytest.mark.parametrize(("line", "message"), [
    ("rm -rf /", "unknown command 'rm'"),
    ("targets --all", "unknown option --all"),
    ("connect", "usage: connect TARGET"),
    ("connect a b", "usage: connect TARGET"),
    ("help --json", "has no --json option"),
    ("whoami 'unbalanced", "cannot parse"),
])
def test_usage_errors(line: str, message: str) -> None:
    result = run(line)
    assert result.code == EXIT_USAGE and message in result.error


def test_connect_passes_the_context_outcome() -> None:
    result = run("connect pg-prod")
    assert (result.code, result.error) == (EXIT_DENIED, "denied: pg-prod")


def test_blank_line_and_exit() -> None:
    assert parse("   ") is None
    assert run("exit").leave and COMMANDS["quit"] is COMMANDS["exit"]


class SqlContext(FakeContext):
    """Remembers the SQL the `sql` command passes on."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    async def run_sql(self, name: str, sql: str):  # type: ignore[no-untyped-def]
        self.seen.append((name, sql))
        return []

    async def stdin(self) -> str:
        return "select 2"


@pytest.mark.parametrize(("line", "target", "sql"), [
    ("sql pg select 'a  b' from t", "pg", "select 'a  b' from t"),          # quotes and spacing kept
    ('sql pg "select 1"', "pg", "select 1"),                                # one quoted word: unwrapped
    ("sql --format json pg select 1", "pg", "select 1"),
    ("sql pg --format csv select \"Col\" from t", "pg", 'select "Col" from t'),
    ("sql pg", "pg", "select 2"),                                           # from stdin
])
def test_sql_command_passes_sql_verbatim(line: str, target: str, sql: str) -> None:
    ctx = SqlContext()
    result = asyncio.run(run_line(ctx, line))
    assert result is not None and result.code == EXIT_OK
    assert ctx.seen == [(target, sql)]


@pytest.mark.parametrize("line", ["sql", "sql --format xml pg select 1", "sql --bogus pg select 1"])
def test_sql_command_usage_errors(line: str) -> None:
    result = asyncio.run(run_line(SqlContext(), line))
    assert result is not None and result.code == EXIT_USAGE
