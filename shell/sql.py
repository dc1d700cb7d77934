"""The SQL console in the bastion shell (``connect TARGET``), and the types it shares with the bastion.

The console talks to the database only through a :class:`SqlConnection` that
the bastion implements over its own wire-protocol proxy, so every statement,
including the catalog queries behind completion and the meta-commands, is
inspected, masked and audited there. Nothing here touches a file or runs a
program: the meta-commands that would (``\\!``, ``\\copy``, ``\\i``, ``\\o``,
``\\e``, ``\\g FILE``...) say so and do nothing.

SQLSTATEs with a meaning of their own (see :func:`exit_code`):

- ``42501``: denied by policy (exit code 3);
- ``BH001``: held for review, waiting for an approver (exit code 4);
- ``57014``: cancelled (Ctrl-C); an ordinary SQL error otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from prompt_toolkit import PromptSession, print_formatted_text
from prompt_toolkit.application.current import get_app_session
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import History
from prompt_toolkit.keys import Keys
from prompt_toolkit.lexers import PygmentsLexer
from prompt_toolkit.styles import Style, merge_styles, style_from_pygments_cls
from pygments.lexers import MySqlLexer, PostgresLexer
from pygments.styles import get_style_by_name

from . import sqlrender, waiting
from .access import decision, held_request, stopped
from .app import server_app_settings
from .commands import EXIT_APPROVAL, EXIT_DENIED, EXIT_ERROR, EXIT_OK
from .context import RequestView
from .keys import KeyReader, multiline_until_complete, sql_bindings
from .sql_complete import Catalog, SqlCompleter, catalog_sql, parse_catalog
from .sql_input import parse_meta, split_meta
from .sql_meta import FORBIDDEN_HINT, META, Settings, forbidden
from .sqlrender import Line, Note

log = logging.getLogger(__name__)

WaitRequest = Callable[[str, float | None], Awaitable[RequestView]]

SQLSTATE_DENIED = "42501"  # insufficient_privilege: the proxy's answer to a statement policy denies
SQLSTATE_HELD = "BH001"  # the bastion's own class "BH": held for review, waiting for an approver
SQLSTATE_CANCELED = "57014"  # query_canceled


@dataclass(frozen=True)
class SqlResult:
    """One statement's outcome, as the proxy returned it (values already masked)."""

    columns: tuple[str, ...]  # empty for commands without rows
    rows: list[tuple[str | None, ...]]  # text values; None = NULL
    status: str  # command tag, e.g. "SELECT 3", "UPDATE 1"; "" shows no row-count footer
    error: str | None = None  # message of a failed statement
    sqlstate: str | None = None
    masked_columns: frozenset[int] = frozenset()  # indexes where masking changed at least one value
    duration: float = 0.0  # seconds
    notices: tuple[str, ...] = ()  # notice messages, without the severity
    request: str | None = None  # held: the id of the request an approver decides

    @property
    def denied(self) -> bool:
        """Whether policy refused this statement."""
        return self.sqlstate == SQLSTATE_DENIED

    @property
    def held(self) -> bool:
        """Whether this statement waits for an approver."""
        return self.sqlstate == SQLSTATE_HELD


class SqlConnection(Protocol):
    """A database session through the bastion's proxy."""

    dialect: str  # "postgres" or "mysql"
    target: str  # the target's name, for the prompt

    async def execute(self, sql: str) -> list[SqlResult]:
        """Run SQL (one or more statements): one result per statement, SQL errors and denials included.

        Raises only ConnectionError (an OSError) when the session to the target is gone.
        """
        ...

    async def cancel(self) -> None:
        """Cancel the statement that is running."""
        ...

    async def close(self) -> None:
        """End the database session."""
        ...


def exit_code(results: list[SqlResult]) -> int:
    """The exec exit code: 3 if policy denied any statement, 4 if one is held, 1 on a SQL error, else 0."""
    if any(r.denied for r in results):
        return EXIT_DENIED
    if any(r.held for r in results):
        return EXIT_APPROVAL
    if any(r.error is not None for r in results):
        return EXIT_ERROR
    return EXIT_OK


render = sqlrender.render

STYLE = Style.from_dict({
    "prompt.user": "#5fd7ff bold",
    "prompt.at": "#808080",
    "prompt.host": "#87d787 bold",
    "continuation": "#808080",
    "bottom-toolbar": "noreverse bg:#303030 #d0d0d0",
    "sql.header": "bold",
    "sql.null": "#808080 italic",
    "sql.masked": "#d787ff",
    "sql.footer": "#d787ff",
    "sql.status": "#808080",
    "sql.timing": "#808080",
    "sql.title": "bold",
    "sql.notice": "#ffd75f",
    "sql.error": "#ff5f5f",
    "sql.denied": "#ff5f5f bold",
    "sql.held": "#ffaf00 bold",
    "sql.hint": "#d0d0d0",
    "pager": "reverse",
})
MORE = "-- more (space/q) --"
CANCEL_AGAIN = "cancelling the statement... (Ctrl-C again abandons it and leaves the console)"


def build_session(conn: SqlConnection, user: str, history: History, settings: Settings,
                  completer: SqlCompleter) -> PromptSession[str]:
    """The console's PromptSession: every prompt-toolkit concern is wired here."""
    lexer = MySqlLexer if conn.dialect == "mysql" else PostgresLexer
    style = merge_styles([style_from_pygments_cls(get_style_by_name("monokai")), STYLE])
    prompt = FormattedText([("class:prompt.user", user), ("class:prompt.at", "@"),
                            ("class:prompt.host", conn.target), ("", "> ")])
    width = len(f"{user}@{conn.target}> ")

    def toolbar() -> FormattedText:
        return FormattedText([("class:bottom-toolbar",
                               f" {user}@{conn.target} [{conn.dialect}]  \\x {settings.vertical}  "
                               f"\\timing {'on' if settings.timing else 'off'}  \\? help  Tab completes  "
                               "Ctrl-D back to the bastion shell ")])

    session: PromptSession[str] = PromptSession(
        message=prompt, prompt_continuation=lambda w, n, soft: [("class:continuation", "-> ".rjust(width))],
        bottom_toolbar=toolbar, completer=completer, complete_while_typing=False, history=history,
        lexer=PygmentsLexer(lexer), style=style, key_bindings=sql_bindings(),
        multiline=multiline_until_complete(conn.dialect), enable_history_search=True,
        # Nothing may run a program or stop the daemon's process from a user's keys.
        enable_system_prompt=False, enable_open_in_editor=False, enable_suspend=False,
    )
    server_app_settings(session)
    return session


class Console:
    """One console on one connection: the prompt loop, statements, meta-commands and the pager."""

    def __init__(self, conn: SqlConnection, *, user: str, history: History, size: Callable[[], tuple[int, int]],
                 on_statement: Callable[[str], None] | None = None, wait_request: WaitRequest | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.conn = conn
        self.user = user
        self._wait_request = wait_request
        self._clock = clock
        self.settings = Settings()
        self.catalog = Catalog()
        self._size = size
        self._on_statement = on_statement
        self._last_sql = ""
        self._completer = SqlCompleter(lambda: self.catalog, conn.dialect, sorted(META))
        self._session = build_session(conn, user, history, self.settings, self._completer)

    async def run(self) -> None:
        """Prompt, run, show, until ``\\q``, Ctrl-D or an abandoned statement."""
        self.show([[("", f"Connected to {self.conn.target} ({self.conn.dialect}) through the bastion as "
                             f"{self.user}. Type \\? for help, \\q or Ctrl-D to go back to the bastion shell.")]])
        await self.refresh()
        pending = ""
        while not self.settings.leave:
            try:
                text = await self._session.prompt_async(default=pending, handle_sigint=False,
                                                        set_exception_handler=False)
            except KeyboardInterrupt:
                pending = ""  # Ctrl-C at the prompt clears the line
                continue
            except EOFError:
                break
            pending = ""
            text = text.strip()
            if not text:
                continue
            if self._on_statement is not None:
                self._on_statement(text)
            pending = await self.handle(text)

    async def handle(self, text: str) -> str:
        """Run one submitted input; what is left for the next prompt (psql's query buffer)."""
        if text.rstrip(";").strip().lower() in ("quit", "exit"):
            self.settings.leave = True
            return ""
        sql, meta = split_meta(text, self.conn.dialect)
        if meta is None:
            await self.run_sql(sql)
            return ""
        name, arg = parse_meta(meta)
        if name in ("g", "gx") and not arg:
            query = sql or self._last_sql
            if query:
                await self.run_sql(query, vertical=True if name == "gx" else None)
            return ""
        refusal = forbidden(name, arg)
        command = META.get(name)
        if refusal is not None:
            self.show([[("class:sql.error", f"\\{name} is not available on the bastion: {refusal}")],
                       [("class:sql.hint", FORBIDDEN_HINT)]])
        elif command is None:
            self.show([[("class:sql.error", f"invalid command \\{name}; \\? lists the commands")]])
        elif command.dialects and self.conn.dialect not in command.dialects:
            self.show([[("class:sql.error", f"\\{name} is not available for {self.conn.dialect} targets yet")]])
        else:
            items = await command.handler(self, arg)
            if items:
                await self.output(items)
        return sql

    async def run_sql(self, sql: str, *, vertical: bool | None = None) -> None:
        """Run user SQL and show its results; a held statement waits for its approver, then runs again."""
        self._last_sql = sql
        results = await self.query(sql)
        if results is None:
            return
        await self.output(results, vertical=vertical)
        held = held_request(results)
        if held is not None and self._wait_request is not None and not self.settings.leave \
                and await self._approved(held, self._wait_request):
            results = await self.query(sql)  # byte-identical: the approval covers exactly this text, once
            if results is not None:
                await self.output(results, vertical=vertical)

    async def _approved(self, request_id: str, wait: WaitRequest) -> bool:
        """Wait for the decision on a held statement (Ctrl-C stops waiting); whether it was approved."""
        view: RequestView | None = await wait(request_id, 0)  # at once: who was asked, when it expires
        if view is not None and view.state == waiting.PENDING:
            view = await waiting.wait_for(view, wait, self._clock)
        if view is None or view.state == waiting.PENDING:
            self.show([[("class:sql.hint", stopped(request_id, "run the same statement again once it is "
                                                               "approved"))]])
            return False
        if view.state != "approved":
            self.show([[("class:sql.denied", decision(view))]])
            return False
        self.show([[("class:sql.hint", f"{decision(view)}; running the statement again")]])
        return True

    async def query(self, sql: str) -> list[SqlResult] | None:
        """Execute through the connection; Ctrl-C cancels, a second Ctrl-C abandons (None)."""
        task = asyncio.ensure_future(self.conn.execute(sql))
        try:
            return await self._wait_interruptible(task)
        finally:
            if not task.done():
                task.cancel()

    async def _wait_interruptible(self, task: asyncio.Future[list[SqlResult]]) -> list[SqlResult] | None:
        interrupts = 0
        with KeyReader(get_app_session().input) as keys:
            while True:
                key = asyncio.ensure_future(keys.get())
                await asyncio.wait((task, key), return_when=asyncio.FIRST_COMPLETED)
                if task.done():
                    if key.done():
                        keys.keep(key.result())
                    else:
                        key.cancel()
                    return self._outcome(task)
                if key.result().key != Keys.ControlC:
                    keys.keep(key.result())  # typed ahead: for the next prompt
                    continue
                interrupts += 1
                if interrupts == 1:
                    self.show([[("class:sql.hint", CANCEL_AGAIN)]])
                    await self.conn.cancel()
                    continue
                task.cancel()
                self.show([[("class:sql.error", "statement abandoned; leaving the console, since the "
                                                "connection's state is unknown")]])
                self.settings.leave = True
                return None

    def _outcome(self, task: asyncio.Future[list[SqlResult]]) -> list[SqlResult] | None:
        try:
            return task.result()
        except OSError as e:
            log.warning("console on %s: connection lost: %s", self.conn.target, e)
            self.show([[("class:sql.error", f"the connection to {self.conn.target} was lost; "
                                            "back to the bastion shell")]])
            self.settings.leave = True
            return None

    async def refresh(self) -> int:
        """Fetch schemas, tables and columns for completion; the number of tables known."""
        results = await self.query(catalog_sql(self.conn.dialect))
        if results is not None:
            self.catalog = parse_catalog(results)
        return len(self.catalog.tables)

    def width(self) -> int:
        """The terminal's width in columns."""
        return max(self._size()[0], 20)

    async def output(self, items: Sequence[SqlResult | Note], *, vertical: bool | None = None) -> None:
        """Render results (and notes) for this terminal, through the pager."""
        mode = self.settings.vertical
        lines = sqlrender.lines(
            items, vertical=(mode == "on") if vertical is None else vertical, timing=self.settings.timing,
            max_width=self.width() if mode == "auto" and vertical is None else None)
        await self.page(lines)

    def show(self, lines: list[Line]) -> None:
        """Print lines of styled fragments."""
        fragments: list[tuple[str, str]] = []
        for line in lines:
            fragments.extend(line)
            fragments.append(("", "\n"))
        print_formatted_text(FormattedText(fragments), end="", style=STYLE)

    async def page(self, lines: list[Line]) -> None:
        """Show lines a screen at a time when they do not fit: space for a page, Enter for a line, q to stop."""
        columns, rows = self._size()
        columns, height = max(columns, 20), max(rows - 1, 1)
        heights = [max(1, math.ceil(sqlrender.line_width(line) / columns)) for line in lines]
        if sum(heights) <= height:
            self.show(lines)
            return
        output = get_app_session().output
        i, budget = 0, height
        with KeyReader(get_app_session().input) as keys:
            while i < len(lines):
                start, used = i, 0
                while i < len(lines) and (i == start or used + heights[i] <= budget):
                    used += heights[i]
                    i += 1
                self.show(lines[start:i])
                if i >= len(lines):
                    return
                print_formatted_text(FormattedText([("class:pager", MORE)]), end="", style=STYLE)
                output.flush()
                budget = await _pager_key(keys, height)
                output.write_raw("\r")
                output.erase_end_of_line()
                output.flush()
                if budget == 0:
                    return


async def _pager_key(keys: KeyReader, height: int) -> int:
    """How many screen rows the key at the more-prompt asks for; 0 to stop."""
    while True:
        key = (await keys.get()).key
        if key in (" ", "f", Keys.PageDown):
            return height
        if key in (Keys.ControlM, Keys.ControlJ, "j", Keys.Down):
            return 1
        if key in ("q", "Q", Keys.ControlC, Keys.ControlD, Keys.Escape):
            return 0


async def run_console(conn: SqlConnection, *, user: str, history: History, size: Callable[[], tuple[int, int]],
                      on_statement: Callable[[str], None] | None = None, wait_request: WaitRequest | None = None,
                      clock: Callable[[], float] = time.time) -> None:
    """Run the SQL console on ``conn`` until ``\\q`` or Ctrl-D, in the caller's prompt-toolkit app session.

    ``size()`` gives the terminal's (columns, rows); ``on_statement`` sees each submitted input (SQL
    or meta-command line) before it runs. The caller owns ``conn`` and closes it afterwards.
    With ``wait_request`` (``ShellContext.wait_request``), a held statement waits for its
    decision with a countdown (``clock``, the bastion's, runs it) and runs again once approved;
    without it, the console only shows that the statement is held.
    """
    await Console(conn, user=user, history=history, size=size, on_statement=on_statement,
                  wait_request=wait_request, clock=clock).run()
