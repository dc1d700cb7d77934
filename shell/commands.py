"""The shell's commands, registered with a decorator.

Help text, completion and dispatch all come from one table. Each command is a
coroutine ``(ctx, args) -> Result``; the caller decides how to show the result
(text for people, JSON for ``--json``), so the interactive shell and one-shot
``ssh bastion COMMAND`` behave the same.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from . import render
from .context import ConnectOutcome, ShellContext

# Exit codes of one-shot commands (documented in docs/shell.md).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DENIED = 3
EXIT_APPROVAL = 4
EXIT_UNAVAILABLE = 5


@dataclass(frozen=True)
class Result:
    """What a command produced: an exit code, text for people, data for ``--json``."""

    code: int = EXIT_OK
    text: str = ""
    data: Any = None
    error: str = ""
    leave: bool = False  # the shell should end (``exit``)


@dataclass(frozen=True)
class Args:
    """A command's parsed arguments."""

    positional: tuple[str, ...] = ()
    json: bool = False


Handler = Callable[[ShellContext, Args], Awaitable[Result]]


@dataclass(frozen=True)
class Command:
    """One registered command."""

    name: str
    usage: str
    summary: str
    handler: Handler
    max_args: int = 0
    min_args: int = 0
    json: bool = False  # accepts --json
    completes_targets: bool = False
    aliases: tuple[str, ...] = field(default=())
    raw: bool = False  # the handler parses its own options
    options: tuple[str, ...] = ()  # offered by completion


COMMANDS: dict[str, Command] = {}


def command(
    name: str, usage: str, summary: str, *, min_args: int = 0, max_args: int = 0,
    json: bool = False, completes_targets: bool = False, aliases: tuple[str, ...] = (), raw: bool = False,
    options: tuple[str, ...] = (),
) -> Callable[[Handler], Handler]:
    """Register a shell command."""

    def register(handler: Handler) -> Handler:
        cmd = Command(name, usage, summary, handler, max_args, min_args, json, completes_targets, aliases, raw,
                      options)
        for key in (name, *aliases):
            COMMANDS[key] = cmd
        return handler

    return register


def commands() -> list[Command]:
    """The registered commands, each once, in name order."""
    return sorted({c.name: c for c in COMMANDS.values()}.values(), key=lambda c: c.name)


def parse(line: str) -> tuple[Command, Args] | Result | None:
    """Parse one input line: a command and its args, a usage error, or None for a blank line."""
    try:
        words = shlex.split(line)
    except ValueError as e:
        return Result(EXIT_USAGE, error=f"cannot parse the line: {e}")
    if not words:
        return None
    cmd = COMMANDS.get(words[0])
    if cmd is None:
        return Result(EXIT_USAGE, error=f"unknown command {words[0]!r}; type `help` to see the commands")
    if cmd.raw:  # the handler gets the rest of the line verbatim: SQL keeps its quotes and spacing
        rest = line[re.match(r"\s*\S+", line).end():]  # type: ignore[union-attr]
        return cmd, Args((rest,))
    as_json = "--json" in words[1:]
    positional = tuple(w for w in words[1:] if w != "--json")
    if as_json and not cmd.json:
        return Result(EXIT_USAGE, error=f"{cmd.name} has no --json option; usage: {cmd.usage}")
    unknown = [w for w in positional if w.startswith("--")]
    if unknown:
        return Result(EXIT_USAGE, error=f"unknown option {unknown[0]}; usage: {cmd.usage}")
    if not cmd.min_args <= len(positional) <= cmd.max_args:
        return Result(EXIT_USAGE, error=f"usage: {cmd.usage}")
    return cmd, Args(positional, as_json)


async def run_line(ctx: ShellContext, line: str) -> Result | None:
    """Parse and run one line. None for a blank line."""
    parsed = parse(line)
    if parsed is None or isinstance(parsed, Result):
        return parsed
    cmd, args = parsed
    return await cmd.handler(ctx, args)


# -- the commands --------------------------------------------------------------


@command("help", "help [COMMAND]", "Show the commands, or one command's usage.", max_args=1, aliases=("?",))
async def _help(ctx: ShellContext, args: Args) -> Result:
    if args.positional:
        cmd = COMMANDS.get(args.positional[0])
        if cmd is None:
            return Result(EXIT_USAGE, error=f"unknown command {args.positional[0]!r}")
        return Result(text=f"{cmd.usage}\n  {cmd.summary}\n")
    rows = [(c.usage, c.summary) for c in commands()]
    return Result(text=render.table(("COMMAND", "WHAT IT DOES"), rows))


@command("targets", "targets [--json]", "List the targets you may reach, with kind, labels and access.", json=True)
async def _targets(ctx: ShellContext, args: Args) -> Result:
    views = ctx.targets()
    data = [{"name": t.name, "kind": t.kind, "labels": t.labels, "access": t.access,
             "description": t.description} for t in views]
    rows = [(t.name, t.kind, t.access, render.labels(t.labels), t.description) for t in views]
    return Result(text=render.table(("NAME", "KIND", "ACCESS", "LABELS", "DESCRIPTION"), rows), data=data)


@command("whoami", "whoami [--json]", "Show your identity, groups and when your certificate expires.", json=True)
async def _whoami(ctx: ShellContext, args: Args) -> Result:
    groups = sorted(ctx.identity.groups)
    left = ctx.certificate_expires - ctx.now()
    data = {"user": ctx.identity.user, "groups": groups, "bastion": ctx.bastion_name,
            "certificate": {"serial": ctx.certificate_serial,
                            "valid_before": render.iso(ctx.certificate_expires),
                            "seconds_left": int(max(0, left))}}
    text = (f"user:        {ctx.identity.user}\n"
            f"groups:      {', '.join(groups) or '-'}\n"
            f"certificate: serial {ctx.certificate_serial}, valid until "
            f"{render.utc(ctx.certificate_expires)} ({render.duration(left)} left)\n")
    return Result(text=text, data=data)


@command("connect", "connect TARGET", "Open a console on a target, if policy allows it; on an approval "
         "target, offer a request and wait for it.", min_args=1, max_args=1, completes_targets=True)
async def _connect(ctx: ShellContext, args: Args) -> Result:
    outcome = await ctx.connect(args.positional[0])
    if outcome.code == EXIT_OK or outcome.remote:  # a remote shell's own status is never a refusal
        return Result(outcome.code, text=outcome.message)
    if outcome.code == EXIT_APPROVAL:
        return await access.approval_needed(ctx, args.positional[0], outcome)
    return Result(outcome.code, error=outcome.message)


SQL_USAGE = "sql TARGET [--format table|json|csv] [--reason TEXT] [--wait [DURATION]] [SQL]"


def _next_word(text: str) -> tuple[str, str]:
    """The first whitespace-separated word of ``text`` and the rest, verbatim."""
    match = re.match(r"\s*(\S+)\s?", text)
    return (match.group(1), text[match.end():]) if match else ("", "")


def _quoted_word(text: str) -> tuple[str, str]:
    """The first shell word of ``text`` (quotes honoured) and the rest, verbatim."""
    match = re.match(r"""\s*("(?:[^"\\]|\\.)*"|'[^']*'|\S+)\s?""", text)
    if not match:
        return "", ""
    try:
        words = shlex.split(match.group(1))
    except ValueError:
        words = [match.group(1)]
    return (words[0] if words else ""), text[match.end():]


def _sql_text(rest: str) -> str:
    """The SQL: verbatim, or unwrapped when it is one quoted word (`sql pg "select 1"` in the shell)."""
    try:
        words = shlex.split(rest)
    except ValueError:
        return rest
    return words[0] if len(words) == 1 and rest.strip()[:1] in "'\"" else rest


@command("sql", SQL_USAGE, "Run SQL on a target and print the result; without SQL, read it from stdin.",
         completes_targets=True, raw=True, options=("--format", "--wait"))
async def _sql(ctx: ShellContext, args: Args) -> Result:
    from .sql import exit_code  # shell.sql imports this module
    from .sqlrender import diagnostics, render

    rest, fmt, target, reason = args.positional[0], "table", "", ""
    wait, timeout = False, None
    while True:
        word, after = _next_word(rest)
        if word == "--format":
            fmt, rest = _next_word(after)
            if fmt not in ("table", "json", "csv"):
                return Result(EXIT_USAGE, error=f"--format takes table, json or csv; usage: {SQL_USAGE}")
        elif word == "--reason":  # for the access request an approval target needs; quoted in the shell
            reason, rest = _quoted_word(after)
        elif word == "--wait":  # an optional DURATION: the next word, if it reads as one
            wait, rest = True, after
            value, after = _next_word(after)
            try:
                timeout, rest = access.parse_duration(value), after
            except ValueError:
                pass
        elif word.startswith("--"):
            return Result(EXIT_USAGE, error=f"unknown option {word}; usage: {SQL_USAGE}")
        elif word and not target:
            target, rest = word, after
        else:
            break
    if not target:
        return Result(EXIT_USAGE, error=f"usage: {SQL_USAGE}")
    sql = _sql_text(rest) if rest.strip() else await ctx.stdin()
    if not sql.strip():
        return Result(EXIT_USAGE, error="no SQL given, neither as an argument nor on stdin")
    outcome = await ctx.run_sql(target, sql)
    if isinstance(outcome, ConnectOutcome) and outcome.code == EXIT_APPROVAL:
        # An approval target without a grant: ask for access (an agent's tool call may wait for it).
        granted = await access.request_for_sql(ctx, target, reason, wait, timeout)
        if isinstance(granted, Result):
            return granted
        outcome = await ctx.run_sql(target, sql)
    if isinstance(outcome, ConnectOutcome):
        return access.sql_refused(target, outcome)
    held = access.held_request(outcome)
    if held is not None and wait:
        again = await access.wait_and_rerun(ctx, target, sql, held, timeout)
        if isinstance(again, Result):
            return again
        outcome, held = again, access.held_request(again)
    errors = [diagnostics(outcome).rstrip("\n")] if fmt == "csv" else []
    if held is not None:
        errors.append(access.held_hint(held))
    return Result(exit_code(outcome), text=render(outcome, fmt), error="\n".join(e for e in errors if e))


@command("exit", "exit", "Leave the bastion.", aliases=("quit", "logout"))
async def _exit(ctx: ShellContext, args: Args) -> Result:
    return Result(leave=True)


# Last: access's and run's commands register themselves with the table above; connect and sql use access.
from . import access, run  # noqa: E402,F401
