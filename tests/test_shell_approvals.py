"""Just-in-time access in the shell (shell/access.py, shell/waiting.py): commands, exit codes, waiting.

The bastion side is a hand-written ShellContext that records what the shell asked
of it. The interactive waits run in a real prompt-toolkit app session: keys go in
through a pipe, the screen comes out of a Vt100_Output, as in test_sql_console.py.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from prompt_toolkit.history import InMemoryHistory
from test_shell_commands import FakeContext
from test_sql_console import Terminal, in_terminal

from shell import waiting
from shell.access import parse_duration
from shell.app import interact
from shell.commands import (
    COMMANDS,
    EXIT_APPROVAL,
    EXIT_DENIED,
    EXIT_OK,
    EXIT_USAGE,
    Result,
    run_line,
)
from shell.context import ConnectOutcome, RequestView
from shell.sql import SQLSTATE_HELD, SqlResult

T0 = 1_800_000_000.0
UPDATE = "update invoices  set total = 0\nwhere id = 42"  # two spaces and a newline: byte-identical matters
HELD = SqlResult((), [], "", error='rule "dba-prod": UPDATE needs review', sqlstate=SQLSTATE_HELD,
                 request="r-2")


def view(request_id: str = "r-1", **changes: Any) -> RequestView:
    fields: dict[str, Any] = {
        "id": request_id, "kind": "access", "requester": "alice", "target": "pg-prod",
        "reason": "fix invoice 42", "state": "pending", "created": T0 - 120, "expires": T0 + 3600,
        "duration": 1800.0, "approvers": "group dba-leads; user carol", "needed": 1}
    fields.update(changes)
    return RequestView(**fields)


APPROVED = view(state="approved", approved_by=("carol",), decided_by="carol", grant="g-1", grant_ends=T0 + 1800)
DENIED = view(state="denied", decided_by="carol", decision_reason="not during the freeze")


class AccessContext(FakeContext):
    """Answers like a bastion with an approval policy on pg-prod; records every call."""

    def __init__(self, *, interactive: bool = False, ticking: bool = False) -> None:
        super().__init__()
        self.interactive = interactive
        self.ticking = ticking  # each now() is a second later: the countdown moves
        self.ticks = 0
        self.filed: list[tuple[str, str, float | None, bool]] = []
        self.decided: list[tuple[str, bool, str]] = []
        self.revoked: list[tuple[str, str]] = []
        self.waits: list[tuple[str, float | None]] = []
        self.sql: list[tuple[str, str]] = []
        self.connects: list[str] = []
        self.release = asyncio.Event()  # set: the decision below is made
        self.decision = APPROVED
        self.wait_cancelled = False
        self.sql_refusal: ConnectOutcome | None = None

    def now(self) -> float:
        if not self.ticking:
            return T0
        self.ticks += 1
        return T0 + self.ticks

    def decide_now(self, decision: RequestView) -> None:
        self.decision = decision
        self.release.set()

    async def connect(self, name: str) -> ConnectOutcome:
        self.connects.append(name)
        if self.release.is_set() and self.decision.state == "approved":
            return ConnectOutcome(EXIT_OK, f"left {name}; back in the bastion shell\n")
        return ConnectOutcome(EXIT_APPROVAL, f'{name} needs an approved request (policy "dba-prod")')

    async def run_sql(self, name: str, sql: str) -> list[SqlResult] | ConnectOutcome:
        self.sql.append((name, sql))
        if self.sql_refusal is not None:
            return self.sql_refusal
        if len(self.sql) == 1:
            return [HELD]
        return [SqlResult((), [], "UPDATE 1")]

    async def request_access(self, target: str, reason: str, duration: float | None = None, *,
                             break_glass: bool = False) -> RequestView | ConnectOutcome:
        self.filed.append((target, reason, duration, break_glass))
        if target == "pg-demo":
            return ConnectOutcome(EXIT_DENIED, "pg-demo needs no request: policy allows it")
        if break_glass:
            return view("r-bg", state="approved", break_glass=True, grant="g-bg", grant_ends=T0 + 1800)
        return view("r-1", duration=duration or 7200.0)

    def requests(self) -> tuple[list[RequestView], list[RequestView]]:
        mine = [view("r-1"),
                view("r-2", kind="statement", reason='rule "dba-prod": UPDATE needs review', statement=UPDATE),
                view("r-3", state="denied", decided_by="carol", decision_reason="not during the freeze"),
                view("r-4", state="approved", approved_by=("carol",), grant="g-4", grant_ends=T0 + 600)]
        theirs = [view("r-9", requester="bob", reason="rotate \x1b[31mkeys\x07", needed=2, approved_by=("dave",))]
        return mine, theirs

    async def decide(self, request_id: str, *, approve: bool, text: str) -> RequestView | ConnectOutcome:
        self.decided.append((request_id, approve, text))
        if request_id == "r-1":
            return ConnectOutcome(EXIT_DENIED, "nobody approves their own request")
        if request_id == "r-9" and not approve:
            return view("r-9", requester="bob", state="denied", decided_by="alice", decision_reason=text)
        if request_id == "r-9":
            return view("r-9", requester="bob", needed=2, approved_by=("alice",))
        if request_id == "r-8":
            return view("r-8", requester="bob", state="approved", approved_by=("alice",), grant="g-8",
                        grant_ends=T0 + 1800)
        if request_id == "r-7":
            return view("r-7", kind="statement", requester="bob", state="approved", approved_by=("alice",),
                        statement=UPDATE)
        return ConnectOutcome(EXIT_USAGE, f"no request {request_id}")

    async def cancel_request(self, request_id: str) -> RequestView | ConnectOutcome:
        return view(request_id, state="cancelled", decided_by="alice", decision_reason="withdrawn")

    async def revoke_grant(self, grant_id: str, reason: str) -> ConnectOutcome:
        self.revoked.append((grant_id, reason))
        if grant_id == "g-1":
            return ConnectOutcome(EXIT_OK, "grant g-1 revoked; sessions under it end within seconds")
        return ConnectOutcome(EXIT_DENIED, f"you may not revoke {grant_id}")

    async def wait_request(self, request_id: str, timeout: float | None = None) -> RequestView:
        self.waits.append((request_id, timeout))
        pending = view(request_id, kind="statement" if request_id == "r-2" else "access")
        if timeout == 0:
            return self.decision if self.release.is_set() else pending
        try:
            if timeout is None:
                await self.release.wait()
            elif not self.release.is_set():
                return pending  # the timeout passed (without making the test wait for it)
        except asyncio.CancelledError:
            self.wait_cancelled = True
            raise
        return self.decision


async def command(ctx: AccessContext, line: str) -> Result:
    """Run one command line; every line here is a command."""
    result = await run_line(ctx, line)
    assert result is not None
    return result


def run(line: str, ctx: AccessContext | None = None) -> Result:
    return asyncio.run(command(ctx or AccessContext(), line))


# -- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("1d", 86400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0m", "30x", "m", "1.5h", "-5m", "30m2h", "select"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("line", "message"), [
    ("request", "usage: request TARGET"),
    ("request a b --reason x", "usage: request TARGET"),
    ("request pg-prod --reason", "--reason needs a value"),
    ("request pg-prod --reason x --for soon", "--for: 'soon' is not a duration"),
    ("request pg-prod --reason x --force", "unknown option --force"),
    ("request pg-prod --break-glass", "--break-glass needs a --reason"),
    ("request pg-prod --reason 'open", "cannot parse"),
    ("approve", "usage: approve ID"),
    ("deny r-9", "a denial needs a --reason"),
    ("deny r-9 --reason '  '", "a denial needs a --reason"),
    ("cancel", "usage: cancel ID"),
    ("revoke", "usage: revoke GRANT"),
    ("revoke g-1 --json", "unknown option --json"),
])
def test_usage_errors_ask_nothing_of_the_bastion(line: str, message: str) -> None:
    ctx = AccessContext()
    result = run(line, ctx)
    assert result.code == EXIT_USAGE and message in result.error
    assert ctx.filed == [] and ctx.decided == [] and ctx.revoked == []


# -- request ------------------------------------------------------------------------------


def test_request_prints_the_id_who_was_asked_and_the_expiry() -> None:
    ctx = AccessContext()
    result = run('request pg-prod --reason "fix invoice 42" --for 30m', ctx)
    assert result.code == EXIT_OK and result.error == ""
    assert ctx.filed == [("pg-prod", "fix invoice 42", 1800.0, False)]
    assert "request r-1 filed: access to pg-prod for 30m" in result.text
    assert "asked: group dba-leads; user carol (1 approval needed)" in result.text
    assert "expires: 2027-01-15 09:00 UTC (in 1h00m) unless decided" in result.text
    assert "`cancel r-1` withdraws it" in result.text


def test_request_json_and_the_reason_option_forms() -> None:
    ctx = AccessContext()
    result = run("request --reason=maintenance pg-prod --json", ctx)
    assert ctx.filed == [("pg-prod", "maintenance", None, False)]  # no --for: the policy's maximum
    assert result.data["id"] == "r-1" and result.data["state"] == "pending"
    assert result.data["expires"] == "2027-01-15T09:00:00Z" and result.data["seconds_left"] == 3600
    assert result.data["approvers"] == "group dba-leads; user carol" and result.data["needed"] == 1


def test_break_glass_grants_at_once_with_a_loud_warning() -> None:
    ctx = AccessContext()
    result = run('request pg-prod --break-glass --reason "prod is down"', ctx)
    assert ctx.filed == [("pg-prod", "prod is down", None, True)]
    assert result.code == EXIT_OK
    assert "grant g-bg: alice may reach pg-prod until 2027-01-15 08:30 UTC" in result.text
    assert result.error.startswith("BREAK-GLASS:") and "reviewed afterwards" in result.error


def test_a_refused_request_passes_the_bastions_code_through() -> None:
    result = run("request pg-demo --reason x")
    assert (result.code, result.error) == (EXIT_DENIED, "pg-demo needs no request: policy allows it")


# -- requests --------------------------------------------------------------------------------


def test_requests_lists_mine_and_the_ones_to_decide() -> None:
    result = run("requests")
    mine, theirs = result.text.split("Waiting for your decision")
    assert mine.startswith("Your requests\nID ")
    assert re.search(r"^r-1 +access +pg-prod +alice +pending +2m +in 1h00m +0/1 +fix invoice 42 +-$", mine, re.M)
    assert "sql: update invoices  set total = 0\\nwhere id = 42" in mine  # one line, newline shown
    assert "denied by carol: not during the freeze" in mine
    assert "grant g-4, ends in 10m" in mine
    assert re.search(r"^r-9 +access +pg-prod +bob +pending .* 1/2 +rotate \\x1b\[31mkeys\\x07", theirs, re.M)
    assert "\x1b" not in result.text and "\x07" not in result.text  # a requester cannot drive my terminal


def test_requests_json() -> None:
    data = run("requests --json").data
    assert [v["id"] for v in data["mine"]] == ["r-1", "r-2", "r-3", "r-4"]
    assert data["mine"][1]["statement"] == UPDATE and data["mine"][1]["kind"] == "statement"
    assert data["mine"][2]["decision_reason"] == "not during the freeze" and data["mine"][2]["seconds_left"] is None
    assert data["mine"][3]["grant"] == "g-4" and data["mine"][3]["grant_ends"] == "2027-01-15T08:10:00Z"
    assert data["to_decide"][0]["requester"] == "bob" and data["to_decide"][0]["approved_by"] == ["dave"]


# -- deciding ------------------------------------------------------------------------------


def test_self_approval_is_refused_with_the_bastions_code() -> None:
    result = run("approve r-1")
    assert (result.code, result.error) == (EXIT_DENIED, "nobody approves their own request")


def test_approve_with_a_comment_that_is_not_enough_yet() -> None:
    ctx = AccessContext()
    result = run('approve r-9 --comment "looks right"', ctx)
    assert ctx.decided == [("r-9", True, "looks right")]
    assert result.code == EXIT_OK
    assert result.text == "r-9: your approval is recorded (1 of 2); 1 more needed\n"


def test_approve_that_creates_a_grant_or_frees_a_statement() -> None:
    grant = run("approve r-8 --json")
    assert "grant g-8: bob may reach pg-prod until 2027-01-15 08:30 UTC" in grant.text
    assert grant.data["grant"] == "g-8"
    statement = run("approve r-7")
    assert "the held statement may now run once, byte for byte, by bob on pg-prod" in statement.text


def test_deny_cancel_and_unknown_ids() -> None:
    ctx = AccessContext()
    denied = run('deny r-9 --reason "use the replica"', ctx)
    assert ctx.decided == [("r-9", False, "use the replica")]
    assert denied.code == EXIT_OK and denied.text == "r-9: denied; bob sees your reason\n"
    assert run("cancel r-5 --json").data["state"] == "cancelled"
    unknown = run("approve r-404")
    assert (unknown.code, unknown.error) == (EXIT_USAGE, "no request r-404")


def test_revoke_passes_the_outcome_through() -> None:
    ctx = AccessContext()
    ok = run('revoke g-1 --reason "done early"', ctx)
    assert ok.code == EXIT_OK and ok.text == "grant g-1 revoked; sessions under it end within seconds\n"
    refused = run("revoke g-2", ctx)
    assert (refused.code, refused.error) == (EXIT_DENIED, "you may not revoke g-2")
    assert ctx.revoked == [("g-1", "done early"), ("g-2", "")]


# -- connect and sql from a script ---------------------------------------------------------------


def test_connect_without_a_terminal_exits_4_with_the_request_hint() -> None:
    ctx = AccessContext()
    result = run("connect pg-prod", ctx)
    assert result.code == EXIT_APPROVAL
    assert result.error == ('pg-prod needs an approved request (policy "dba-prod")\n'
                            'file a request with: request pg-prod --reason "…" [--for 30m]')
    assert ctx.filed == [] and ctx.connects == ["pg-prod"]


def test_sql_on_a_held_statement_exits_4_with_the_request_id() -> None:
    ctx = AccessContext()
    result = run(f"sql pg-prod {UPDATE}", ctx)
    assert result.code == EXIT_APPROVAL and ctx.waits == [] and len(ctx.sql) == 1
    assert "held for review (request r-2)" in result.text
    assert "request r-2" in result.error and "--wait" in result.error


def test_sql_json_names_the_request() -> None:
    result = run(f"sql pg-prod --format json {UPDATE}")
    assert '"request": "r-2"' in result.text and '"sqlstate": "BH001"' in result.text
    assert result.code == EXIT_APPROVAL


@pytest.mark.parametrize(("option", "timeout"), [("--wait", None), ("--wait 10m", 600.0)])
def test_sql_wait_runs_the_byte_identical_sql_once_after_approval(option: str, timeout: float | None) -> None:
    ctx = AccessContext()
    ctx.decide_now(view("r-2", kind="statement", state="approved", approved_by=("carol",)))
    result = run(f"sql pg-prod {option} {UPDATE}", ctx)
    assert ctx.waits == [("r-2", timeout)]
    assert ctx.sql == [("pg-prod", UPDATE), ("pg-prod", UPDATE)]  # the held run, then exactly one more
    assert result.code == EXIT_OK and "UPDATE 1" in result.text and result.error == ""


def test_sql_wait_on_a_denial_exits_3_with_the_reviewers_reason() -> None:
    ctx = AccessContext()
    ctx.decide_now(view("r-2", kind="statement", state="denied", decided_by="carol",
                        decision_reason="not during the freeze"))
    result = run(f"sql --wait pg-prod {UPDATE}", ctx)
    assert result.code == EXIT_DENIED
    assert result.error == "request r-2 was denied by carol: not during the freeze"
    assert len(ctx.sql) == 1  # never run again


def test_sql_wait_that_times_out_exits_4() -> None:
    ctx = AccessContext()
    result = run(f"sql pg-prod --wait 90s {UPDATE}", ctx)
    assert ctx.waits == [("r-2", 90.0)]
    assert result.code == EXIT_APPROVAL and "request r-2 is still pending after 1m" in result.error
    assert len(ctx.sql) == 1


def test_sql_on_an_approval_target_points_at_my_pending_request() -> None:
    ctx = AccessContext()
    ctx.sql_refusal = ConnectOutcome(EXIT_APPROVAL, "pg-prod needs an approved request")
    result = run("sql pg-prod select 1", ctx)
    assert result.code == EXIT_APPROVAL and "request r-1 is pending" in result.error
    assert ctx.filed == []  # r-1 already asks for pg-prod: no second request


class NoRequestYet(AccessContext):
    """No request of mine is pending; the target answers once access is granted."""

    def requests(self) -> tuple[list[RequestView], list[RequestView]]:
        return [], []

    async def run_sql(self, name: str, sql: str) -> list[SqlResult] | ConnectOutcome:
        self.sql.append((name, sql))
        if not (self.waits and self.decision.state == "approved"):  # granted once a wait saw the approval
            return ConnectOutcome(EXIT_APPROVAL, f"{name} needs an approved request")
        return [SqlResult(("n",), [("1",)], "SELECT 1")]


def test_sql_on_an_approval_target_files_a_request_with_its_reason() -> None:
    ctx = NoRequestYet()
    result = run("sql pg-prod --reason 'agent task 7' select 1", ctx)
    assert ctx.filed == [("pg-prod", "agent task 7", None, False)]
    assert result.code == EXIT_APPROVAL and "request r-1 is pending" in result.error
    assert ctx.sql == [("pg-prod", "select 1")]


def test_sql_wait_on_an_approval_target_runs_once_the_grant_exists() -> None:
    ctx = NoRequestYet()
    ctx.decide_now(APPROVED)
    result = run("sql pg-prod --wait 5m --reason ticket select 1", ctx)
    assert result.code == EXIT_OK and "1" in result.text
    assert ctx.waits == [("r-1", 300.0)] and len(ctx.sql) == 2


def test_sql_wait_reports_a_denied_access_request() -> None:
    ctx = NoRequestYet()
    ctx.decide_now(DENIED)
    result = run("sql pg-prod --wait select 1", ctx)
    assert result.code == EXIT_DENIED and "not during the freeze" in result.error
    assert len(ctx.sql) == 1


def test_the_new_commands_complete_targets_and_options() -> None:
    assert COMMANDS["request"].completes_targets and COMMANDS["connect"].completes_targets
    assert "--break-glass" in COMMANDS["request"].options and "--wait" in COMMANDS["sql"].options


# -- at a terminal ---------------------------------------------------------------------------


def countdowns(text: str) -> list[str]:
    return re.findall(r"waiting for approval: ([\d:]+) left \(Ctrl-C stops waiting\)", text)


@pytest.fixture
def fast_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waiting, "TICK", 0.02)


@pytest.mark.usefixtures("fast_ticks")
def test_connect_files_a_request_counts_down_and_connects_once_approved() -> None:
    ctx = AccessContext(interactive=True, ticking=True)

    async def script(term: Terminal) -> None:
        await term.until(lambda: "Reason for a request for pg-prod" in term.text)
        await term.type("fix invoice 42\r")
        await term.until(lambda: "For how long?" in term.text)
        await term.type("soon\r")
        await term.until(lambda: "'soon' is not a duration" in term.text)
        await term.type("30m\r")
        await term.until(lambda: len(set(countdowns(term.text))) >= 3, "a moving countdown")
        ctx.decide_now(APPROVED)

    result, screen = in_terminal(lambda: command(ctx, "connect pg-prod"), script, (100, 24))
    assert ctx.filed == [("pg-prod", "fix invoice 42", 1800.0, False)]
    assert "asked: group dba-leads; user carol (1 approval needed)" in screen
    values = countdowns(screen)
    assert values[0].startswith("59:5") and values[-1] < values[0]  # it counts down from the expiry
    assert "request r-1 was approved by carol; connecting to pg-prod" in screen
    assert ctx.connects == ["pg-prod", "pg-prod"]  # asked, then connected the moment the grant existed
    assert result.code == EXIT_OK and "left pg-prod" in result.text


@pytest.mark.usefixtures("fast_ticks")
def test_ctrl_c_stops_waiting_and_leaves_the_request_pending() -> None:
    ctx = AccessContext(interactive=True)

    async def script(term: Terminal) -> None:
        await term.type("fix invoice 42\r")
        await term.until(lambda: "For how long?" in term.text)
        await term.type("\r")
        await term.until(lambda: bool(countdowns(term.text)), "the countdown")
        term.pipe.send_text("\x03")

    result, _ = in_terminal(lambda: command(ctx, "connect pg-prod"), script)
    assert ctx.filed == [("pg-prod", "fix invoice 42", None, False)]
    assert result.code == EXIT_APPROVAL
    assert "stopped waiting; request r-1 stays pending" in result.error and "`cancel r-1`" in result.error
    assert ctx.wait_cancelled and ctx.connects == ["pg-prod"]


@pytest.mark.usefixtures("fast_ticks")
def test_a_denial_while_waiting_shows_the_reason_and_exits_3() -> None:
    ctx = AccessContext(interactive=True)

    async def script(term: Terminal) -> None:
        await term.type("fix invoice 42\r")
        await term.until(lambda: "For how long?" in term.text)
        await term.type("1h\r")
        await term.until(lambda: bool(countdowns(term.text)), "the countdown")
        ctx.decide_now(DENIED)

    result, _ = in_terminal(lambda: command(ctx, "connect pg-prod"), script)
    assert (result.code, result.error) == (EXIT_DENIED, "request r-1 was denied by carol: not during the freeze")
    assert ctx.connects == ["pg-prod"]


def test_giving_up_at_the_reason_files_nothing() -> None:
    ctx = AccessContext(interactive=True)

    async def script(term: Terminal) -> None:
        await term.type("\x03")

    result, _ = in_terminal(lambda: command(ctx, "connect pg-prod"), script)
    assert result.code == EXIT_APPROVAL and result.error.startswith("no request filed")
    assert ctx.filed == []


@pytest.mark.usefixtures("fast_ticks")
def test_sql_wait_at_a_terminal_counts_down_then_runs_the_statement_again() -> None:
    ctx = AccessContext(interactive=True)

    async def script(term: Terminal) -> None:
        await term.until(lambda: bool(countdowns(term.text)), "the countdown")
        ctx.decide_now(view("r-2", kind="statement", state="approved", approved_by=("carol",)))

    result, screen = in_terminal(lambda: command(ctx, f"sql pg-prod --wait {UPDATE}"), script)
    assert ctx.waits[0] == ("r-2", 0)  # who was asked, at once
    assert "asked: group dba-leads; user carol (1 approval needed)" in screen
    assert ctx.sql == [("pg-prod", UPDATE), ("pg-prod", UPDATE)]
    assert result.code == EXIT_OK and "UPDATE 1" in result.text


# -- notices -----------------------------------------------------------------------------------


class SlowConnect(AccessContext):
    """connect blocks until released: a command that runs while a notice arrives."""

    def __init__(self) -> None:
        super().__init__(interactive=True)
        self.connected = asyncio.Event()
        self.leave = asyncio.Event()

    async def connect(self, name: str) -> ConnectOutcome:
        self.connected.set()
        await self.leave.wait()
        return ConnectOutcome(EXIT_OK, f"left {name}\n")


def test_notices_print_above_the_prompt_and_wait_while_a_command_runs() -> None:
    ctx = SlowConnect()
    recorded: list[str] = []

    async def script(term: Terminal) -> None:
        await term.prompt()
        ctx.notices.put_nowait("bob asks for pg-prod: rotate \x1b[2Jkeys; `approve r-9` or `deny r-9`")
        await term.until(lambda: "bob asks for pg-prod" in term.text, "the first notice")
        await term.type("connect pg-demo\r")
        await ctx.connected.wait()
        ctx.notices.put_nowait("your request r-1 was approved by carol")
        await asyncio.sleep(0.6)  # longer than the relay's poll: it holds the line back meanwhile
        assert "approved by carol" not in term.text
        ctx.leave.set()
        await term.until(lambda: "approved by carol" in term.text, "the second notice")
        await term.type("exit\r")

    async def shell() -> list[asyncio.Task[Any]]:
        await interact(ctx, InMemoryHistory(), lambda line, result: recorded.append(line))
        await asyncio.sleep(0)
        return [t for t in asyncio.all_tasks() if t.get_coro().__name__ == "relay_notices"  # type: ignore[union-attr]
                and not t.done()]

    left, screen = in_terminal(shell, script)
    assert "rotate \\x1b[2Jkeys; `approve r-9` or `deny r-9`" in screen  # escaped, whole, on its own line
    assert screen.index("left pg-demo") < screen.index("your request r-1 was approved by carol")
    assert recorded == ["connect pg-demo", "exit"]
    assert left == []  # the relay task ended with the shell
