"""The SQL console (shell/sql.py), driven for real in a prompt-toolkit app session.

Keys go in through a pipe input, the screen comes out of a Vt100_Output into a
buffer. The database side is a small hand-written SqlConnection that follows the
protocol the bastion's proxy implements: one result per statement, SQL errors as
results, cancel() ends the running statement with SQLSTATE 57014.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from prompt_toolkit.application.current import create_app_session, get_app_session
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.data_structures import Size
from prompt_toolkit.document import Document
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output.vt100 import Vt100_Output

from shell import waiting
from shell.context import RequestView
from shell.sql import MORE, SQLSTATE_CANCELED, SQLSTATE_DENIED, SQLSTATE_HELD, SqlResult, run_console
from shell.sql_complete import SqlCompleter, catalog_sql, parse_catalog
from shell.sql_input import parse_meta, split_meta, submits
from shell.sql_meta import pattern_regexes

CATALOG = [
    SqlResult(("nspname",), [("public",), ("billing",)], "SELECT 2"),
    SqlResult(("table_schema", "table_name", "column_name"),
              [("public", "customers", "id"), ("public", "customers", "email"), ("public", "orders", "id"),
               ("public", "orders", "customer_id"), ("billing", "invoices", "total")], "SELECT 5"),
    SqlResult(("s",), [("public",)], "SELECT 1"),
]
CANCELED = SqlResult((), [], "", error="canceling statement due to user request", sqlstate=SQLSTATE_CANCELED)
HELD = SqlResult((), [], "", error='rule "dba-prod": UPDATE needs review', sqlstate=SQLSTATE_HELD, request="r-2")


class FakeConnection:
    """A SqlConnection with canned answers; it records what it was sent."""

    dialect = "postgres"
    target = "pg-demo"

    def __init__(self, *, catalog: list[SqlResult] = CATALOG, honours_cancel: bool = True) -> None:
        self.sent: list[str] = []
        self.cancels = 0
        self.closed = False
        self.running = asyncio.Event()
        self._stop = asyncio.Event()
        self._catalog = catalog
        self._honours_cancel = honours_cancel

    async def execute(self, sql: str) -> list[SqlResult]:
        self.sent.append(sql)
        if sql == catalog_sql("postgres"):
            return self._catalog
        if "pg_sleep" in sql:
            self.running.set()
            await self._stop.wait()
            return [CANCELED]
        if sql.lower().startswith("update"):  # held the first time; once approved, it runs
            return [HELD] if self.sent.count(sql) == 1 else [SqlResult((), [], "UPDATE 1")]
        if sql.lower().startswith("delete"):
            return [SqlResult((), [], "", error='rule "no-bulk-delete": DELETE without WHERE is denied',
                              sqlstate=SQLSTATE_DENIED)]
        if sql == "crash;":
            raise ConnectionError("upstream closed")
        if "to_regclass(E'customers')" in sql:
            return [SqlResult(("nspname", "relname", "relkind"), [("public", "customers", "Table")], "SELECT 1"),
                    SqlResult(("Column", "Type", "Nullable", "Default"),
                              [("id", "integer", "not null", None), ("email", "text", "", None)], "SELECT 2"),
                    SqlResult(("relname", "def"), [("customers_pkey", "PRIMARY KEY, btree (id)")], "SELECT 1")]
        if "to_regclass" in sql:
            return [SqlResult(("nspname", "relname", "relkind"), [], "SELECT 0"),
                    SqlResult(("Column", "Type", "Nullable", "Default"), [], "SELECT 0"),
                    SqlResult(("relname", "def"), [], "SELECT 0")]
        if "current_setting('server_version')" in sql:
            return [SqlResult(("current_database", "current_user", "current_setting"),
                              [("app", "bastion_ro", "16.4")], "SELECT 1")]
        if m := re.search(r"generate_series\(1, *(\d+)\)", sql):
            return [SqlResult(("n",), [(str(i),) for i in range(1, int(m[1]) + 1)], f"SELECT {m[1]}")]
        if "pg_catalog.pg_class" in sql:
            return [SqlResult(("Schema", "Name", "Type", "Owner"), [("public", "customers", "table", "app")],
                              "SELECT 1")]
        return [SqlResult(("id", "email"), [("1", "a***@example.com")], "SELECT 1",
                          masked_columns=frozenset({1}), duration=0.0042)]

    async def cancel(self) -> None:
        self.cancels += 1
        if self._honours_cancel:
            self._stop.set()

    async def close(self) -> None:
        self.closed = True

    @property
    def user_sql(self) -> list[str]:
        """What was sent besides the completion catalog."""
        return [s for s in self.sent if s != catalog_sql("postgres")]


T0 = 1_800_000_000.0
T = TypeVar("T")


class Reviewer:
    """Stands in for ShellContext.wait_request: r-2 stays pending until the test decides it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float | None]] = []
        self.release = asyncio.Event()
        self.state, self.by, self.why = "pending", "", ""
        self.cancelled = False

    def view(self) -> RequestView:
        return RequestView(id="r-2", kind="statement", requester="alice", target="pg-demo", reason="review",
                           state=self.state, created=T0, expires=T0 + 90, duration=600.0, approvers="user carol",
                           needed=1, approved_by=(self.by,) if self.state == "approved" else (),
                           decided_by=self.by or None, decision_reason=self.why or None)

    def decide(self, state: str, by: str, why: str = "") -> None:
        self.state, self.by, self.why = state, by, why
        self.release.set()

    async def __call__(self, request_id: str, timeout: float | None = None) -> RequestView:
        self.calls.append((request_id, timeout))
        if timeout != 0:
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        return self.view()


Script = Callable[["Terminal"], Awaitable[None]]


class Terminal:
    """The pipe the keys go into and the screen text that came out."""

    def __init__(self, pipe: PipeInput, screen: io.StringIO) -> None:
        self.pipe = pipe
        self._screen = screen

    @property
    def text(self) -> str:
        """Everything written so far, escape sequences removed."""
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", self._screen.getvalue()).replace("\r", "")

    async def until(self, condition: Callable[[], bool], what: str = "") -> None:
        deadline = asyncio.get_running_loop().time() + 10
        while asyncio.get_running_loop().time() < deadline:
            if condition():
                return
            await asyncio.sleep(0.001)
        raise AssertionError(f"timed out waiting for {what or condition}; screen:\n{self.text}")

    async def prompt(self) -> None:
        """Wait until a prompt is up and reading keys."""
        await self.until(lambda: (app := get_app_session().app) is not None and app.is_running, "a prompt")

    async def type(self, keys: str) -> None:
        """Type at the next prompt."""
        await self.prompt()
        self.pipe.send_text(keys)


def buffer() -> str:
    """The text being edited at the running prompt."""
    app = get_app_session().app
    return "" if app is None else app.current_buffer.text


def in_terminal(run_it: Callable[[], Awaitable[T]], script: Script,
                size: tuple[int, int] = (80, 24)) -> tuple[T, str]:
    """Run ``run_it`` in a prompt-toolkit app session with ``script`` typing into it; its value and the screen."""

    async def main() -> tuple[T, str]:
        screen = io.StringIO()
        with create_pipe_input() as pipe:
            output = Vt100_Output(screen, lambda: Size(rows=size[1], columns=size[0]), term="xterm",
                                  enable_cpr=False)
            with create_app_session(input=pipe, output=output):
                term = Terminal(pipe, screen)
                task = asyncio.ensure_future(run_it())
                await script(term)
                value = await asyncio.wait_for(task, 10)
        return value, term.text

    return asyncio.run(main())


def drive(script: Script, conn: FakeConnection | None = None, size: tuple[int, int] = (80, 24),
          statements: list[str] | None = None, reviewer: Reviewer | None = None) -> tuple[FakeConnection, str]:
    """Run the console with a script typing into it; the connection and the screen text."""
    db = conn or FakeConnection()
    _, screen = in_terminal(lambda: run_console(
        db, user="alice", history=InMemoryHistory(), size=lambda: size,
        on_statement=None if statements is None else statements.append, wait_request=reviewer,
        clock=lambda: T0), script, size)
    return db, screen


def typing(*inputs: str) -> Script:
    async def script(term: Terminal) -> None:
        for keys in inputs:
            await term.type(keys)
    return script


def test_prompt_and_a_multi_line_statement_is_sent_only_at_the_semicolon() -> None:
    async def script(term: Terminal) -> None:
        await term.type("select id,\r")
        await term.until(lambda: "-> " in term.text, "the continuation prompt")
        term.pipe.send_text("email\rfrom customers\r")
        await term.until(lambda: buffer() == "select id,\nemail\nfrom customers\n")
        assert conn.user_sql == []  # Enter without ; only added lines
        term.pipe.send_text(";\r")
        await term.until(lambda: "(1 row)" in term.text)
        await term.type("\\q\r")

    conn = FakeConnection()
    statements: list[str] = []
    drive(script, conn, statements=statements)
    assert conn.user_sql == ["select id,\nemail\nfrom customers\n;"]
    assert statements == ["select id,\nemail\nfrom customers\n;", "\\q"]
    assert conn.sent[0] == catalog_sql("postgres")  # completion's catalog, through the connection
    assert not conn.closed  # the caller owns the connection


def test_prompt_names_user_and_target_and_results_show_masking() -> None:
    _, screen = drive(typing("select * from customers;\r", "\\q\r"))
    assert "alice@pg-demo> select * from customers;" in screen
    assert " id |      email\n----+------------------\n  1 | a***@example.com\n(1 row)\n" in screen
    assert "1 column masked: email" in screen


def test_x_toggles_vertical_and_timing_adds_a_time_line() -> None:
    _, screen = drive(typing("\\x\r", "\\timing\r", "select 1;\r", "\\x\r", "\\timing off\r", "select 1;\r", "\\q\r"))
    assert "Expanded display is on." in screen and "Timing is on." in screen
    first, second = screen.split("Expanded display is off.")
    assert "-[ RECORD 1 ]" in first and "email | a***@example.com" in first and "Time: 4.200 ms" in first
    assert "-[ RECORD" not in second and "Time:" not in second and " id |" in second


def test_dt_runs_a_catalog_query_through_the_connection() -> None:
    conn, screen = drive(typing("\\dt\r", "\\dt billing.inv*\r", "\\q\r"))
    plain, pattern = conn.user_sql
    assert "FROM pg_catalog.pg_class c" in plain and "c.relkind IN ('r', 'p')" in plain
    assert "pg_catalog.pg_table_is_visible(c.oid)" in plain
    assert "n.nspname ~ E'^(billing)$' AND c.relname ~ E'^(inv.*)$'" in pattern
    assert "pg_table_is_visible" not in pattern  # a named schema need not be on the search path
    assert "List of tables" in screen and "public | customers | table | app" in screen


@pytest.mark.parametrize("line", [
    "\\! ls", "\\!cat /etc/passwd", "\\copy customers to '/tmp/x.csv'", "\\i /etc/passwd", "\\ir x.sql",
    "\\o /tmp/out", "\\e", "\\w /tmp/q.sql", "\\lo_import /etc/shadow", "select 1 \\g /tmp/out",
    "select 1 \\g |sh", "\\cd /", "\\setenv PAGER sh", "\\password", "\\c other",
])
def test_meta_commands_that_touch_the_bastion_are_refused(line: str) -> None:
    conn, screen = drive(typing(line + "\r", "\\q\r"))
    assert "is not available on the bastion" in screen
    assert conn.user_sql == []  # nothing reached the database either


def test_g_runs_the_statement_and_unknown_meta_commands_say_so() -> None:
    conn, screen = drive(typing("select 42 \\gx\r", "\\zz\r", "\\q\r"))
    assert conn.user_sql == ["select 42"]
    assert "-[ RECORD 1 ]" in screen and "invalid command \\zz" in screen


def test_ctrl_c_while_a_statement_runs_cancels_it() -> None:
    async def script(term: Terminal) -> None:
        await term.type("select pg_sleep(60);\r")
        await conn.running.wait()
        term.pipe.send_text("\x03")
        await term.until(lambda: "canceling statement due to user request" in term.text)
        await term.type("\\q\r")

    conn = FakeConnection()
    _, screen = drive(script, conn)
    assert conn.cancels == 1
    assert "ERROR: canceling statement due to user request" in screen
    assert screen.rstrip().endswith("alice@pg-demo> \\q")  # back at the prompt, then left


def test_a_second_ctrl_c_abandons_a_statement_the_server_does_not_cancel() -> None:
    async def script(term: Terminal) -> None:
        await term.type("select pg_sleep(60);\r")
        await conn.running.wait()
        term.pipe.send_text("\x03")
        await term.until(lambda: conn.cancels == 1 and "Ctrl-C again" in term.text)
        term.pipe.send_text("\x03")

    conn = FakeConnection(honours_cancel=False)
    _, screen = drive(script, conn)
    assert conn.cancels == 1 and "statement abandoned; leaving the console" in screen


def test_denials_are_marked_as_policy_decisions() -> None:
    _, screen = drive(typing("delete from customers;\r", "\\q\r"))
    assert 'denied by policy: rule "no-bulk-delete": DELETE without WHERE is denied' in screen
    assert "The statement did not run." in screen and "ERROR" not in screen


def test_describe_conninfo_and_refresh() -> None:
    conn, screen = drive(typing("\\d customers\r", "\\d nope\r", "\\conninfo\r", "\\refresh\r", "\\q\r"))
    assert "pg_catalog.to_regclass(E'customers')" in conn.user_sql[0]
    assert ('Table "public.customers"\n Column |  Type   | Nullable | Default\n'
            "--------+---------+----------+---------\n"
            " id     | integer | not null | <null>\n") in screen
    assert 'Indexes:\n    "customers_pkey" PRIMARY KEY, btree (id)' in screen
    assert 'Did not find any relation named "nope".' in screen
    assert ('You are alice, connected to target "pg-demo" through the bastion: database "app" as database user '
            '"bastion_ro", server version 16.4.') in screen
    assert conn.sent.count(catalog_sql("postgres")) == 2 and "Completion refreshed: 3 tables." in screen


def test_a_refused_catalog_leaves_keywords_and_a_lost_connection_ends_the_console() -> None:
    refused = [SqlResult((), [], "", error="catalog reads are denied", sqlstate=SQLSTATE_DENIED)]
    async def script(term: Terminal) -> None:
        await term.type("sel\t")
        await term.until(lambda: buffer() == "select", "the keyword completed")
        term.pipe.send_text(" 1;\r")
        await term.type("crash;\r")

    conn, screen = drive(script, FakeConnection(catalog=refused))
    assert conn.user_sql == ["select 1;", "crash;"]
    assert "the connection to pg-demo was lost; back to the bastion shell" in screen
    assert "upstream closed" not in screen


def test_keys_typed_while_a_statement_runs_reach_the_next_prompt() -> None:
    async def script(term: Terminal) -> None:
        await term.type("select pg_sleep(60);\r")
        await conn.running.wait()
        term.pipe.send_text("\\q")
        await asyncio.sleep(0.005)
        await conn.cancel()  # the server finishes the statement
        await term.type("\r")

    conn = FakeConnection()
    _, screen = drive(script, conn)
    assert "alice@pg-demo> \\q" in screen


def test_ctrl_c_at_the_prompt_clears_the_line_and_ctrl_d_leaves() -> None:
    conn, screen = drive(typing("select 1\x03", "\x04"))
    assert conn.user_sql == []
    assert "Connected to pg-demo (postgres) through the bastion as alice" in screen


def test_completion_offers_tables_fetched_through_the_connection() -> None:
    async def script(term: Terminal) -> None:
        await term.type("select * from cu\t")
        await term.until(lambda: buffer() == "select * from customers")
        term.pipe.send_text(" c where c.em\t")
        await term.until(lambda: buffer().endswith("c.email"))
        term.pipe.send_text(" is null;\r")
        await term.type("\\q\r")

    conn, _ = drive(script)
    assert conn.user_sql == ["select * from customers c where c.email is null;"]


def test_completer_contexts() -> None:
    catalog = parse_catalog(CATALOG)
    completer = SqlCompleter(lambda: catalog, "postgres", ["dt", "d", "x"])

    def offered(text: str, cursor: int | None = None) -> list[str]:
        document = Document(text, len(text) if cursor is None else cursor)
        return [c.text for c in completer.get_completions(document, CompleteEvent(completion_requested=True))]

    assert offered("SELECT * FROM ") == ["customers", "orders", "public", "billing"]
    assert offered("select * from billing.") == ["invoices"]
    assert offered("select o.cu from orders o", cursor=11) == ["customer_id"]  # the alias comes later
    assert offered("select * from orders o where o.cu") == ["customer_id"]
    assert offered("select * from orders where ")[:2] == ["id", "customer_id"]
    assert offered("sel") == ["select"] and offered("SEL") == ["SELECT"]
    assert offered("\\d") == ["\\d", "\\dt"]


def test_the_pager_shows_a_long_result_a_screen_at_a_time() -> None:
    async def script(term: Terminal) -> None:
        def rows() -> list[int]:
            return [int(n) for n in re.findall(r"^ *(\d+)$", term.text.replace(MORE, "\n"), re.M)]

        await term.type("select n from generate_series(1, 40);\r")
        await term.until(lambda: MORE in term.text, "the more prompt")
        assert rows() == list(range(1, 10))  # 12 rows: 2 header lines + 9 rows + the more prompt
        term.pipe.send_text(" ")
        await term.until(lambda: term.text.count(MORE) == 2)
        assert rows() == list(range(1, 21))  # a page is 11 lines
        term.pipe.send_text("\r")  # one more line
        await term.until(lambda: term.text.count(MORE) == 3)
        assert rows() == list(range(1, 22))
        term.pipe.send_text("q")
        await term.type("\\q\r")
        assert rows() == list(range(1, 22))

    _, screen = drive(script, size=(40, 12))
    assert "(40 rows)" not in screen


def test_a_short_result_is_not_paged() -> None:
    _, screen = drive(typing("select n from generate_series(1, 5);\r", "\\q\r"), size=(40, 12))
    assert MORE not in screen and "(5 rows)" in screen


def test_where_input_ends() -> None:
    assert not submits("select 1")
    assert submits("select 1;") and submits("select 1; -- done") and submits("  \\dt ")
    assert not submits("select ';'") and not submits("select 1 /* ; */")
    assert not submits("do $$ begin; end")
    assert submits("do $$ begin; end $$;")
    assert not submits("select E'\\';") and submits("select E'\\'';")
    assert submits("exit") and submits("")
    assert split_meta("select 1 \\gx") == ("select 1", "\\gx")
    assert split_meta("select '\\x'") == ("select '\\x'", None)
    assert parse_meta("\\dt+ public.*") == ("dt", "public.*")
    assert parse_meta("\\!ls -l") == ("!", "ls -l")
    assert pattern_regexes('Public."MyTable"*') == ("^(public)$", "^(MyTable.*)$")


UPDATE = "update invoices set total = 0 where id = 42;"


def countdown_shown(text: str) -> bool:
    return "waiting for approval: 1:30 left (Ctrl-C stops waiting)" in text


def test_a_held_statement_waits_with_a_countdown_and_runs_again_once_approved(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waiting, "TICK", 0.02)
    reviewer = Reviewer()

    async def script(term: Terminal) -> None:
        await term.type(UPDATE + "\r")
        await term.until(lambda: countdown_shown(term.text), "the countdown")
        reviewer.decide("approved", "carol")
        await term.until(lambda: "UPDATE 1" in term.text)
        await term.type("\\q\r")

    conn, screen = drive(script, reviewer=reviewer)
    assert conn.user_sql == [UPDATE, UPDATE]  # held, then exactly the same text once more
    assert reviewer.calls == [("r-2", 0), ("r-2", None)]  # who was asked at once, then the wait
    assert 'held for review (request r-2): rule "dba-prod": UPDATE needs review' in screen
    assert "asked: user carol (1 approval needed)" in screen
    assert screen.index("request r-2 was approved by carol; running the statement again") < screen.index("UPDATE 1")


def test_ctrl_c_stops_waiting_for_a_held_statement_and_the_console_goes_on() -> None:
    reviewer = Reviewer()

    async def script(term: Terminal) -> None:
        await term.type(UPDATE + "\r")
        await term.until(lambda: countdown_shown(term.text), "the countdown")
        term.pipe.send_text("\x03")
        await term.until(lambda: "stays pending" in term.text)
        await term.type("select 1;\r")
        await term.until(lambda: "(1 row)" in term.text)
        await term.type("\\q\r")

    conn, screen = drive(script, reviewer=reviewer)
    assert conn.user_sql == [UPDATE, "select 1;"] and conn.cancels == 0  # nothing re-run, nothing cancelled
    assert reviewer.cancelled
    assert "stopped waiting; request r-2 stays pending (`requests` shows it, `cancel r-2` withdraws it)" in screen


def test_a_denied_held_statement_shows_the_reason_and_does_not_run() -> None:
    reviewer = Reviewer()

    async def script(term: Terminal) -> None:
        await term.type(UPDATE + "\r")
        await term.until(lambda: countdown_shown(term.text), "the countdown")
        reviewer.decide("denied", "carol", "use the replica")
        await term.until(lambda: "use the replica" in term.text)
        await term.type("\\q\r")

    conn, screen = drive(script, reviewer=reviewer)
    assert conn.user_sql == [UPDATE]
    assert "request r-2 was denied by carol: use the replica" in screen


def test_without_a_waiter_a_held_statement_is_only_shown() -> None:
    conn, screen = drive(typing(UPDATE + "\r", "\\q\r"))
    assert conn.user_sql == [UPDATE]
    assert "held for review (request r-2)" in screen and "waiting for approval" not in screen
