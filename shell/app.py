"""The interactive bastion shell: prompt, highlighting, completion, toolbar, history.

:func:`interact` runs inside a prompt_toolkit app session whose input and
output the caller has bound to the SSH channel; it knows nothing of SSH.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable

from prompt_toolkit import PromptSession, print_formatted_text
from prompt_toolkit.application.current import get_app_session
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import History
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.lexers import PygmentsLexer
from prompt_toolkit.styles import BaseStyle, Style, merge_styles, style_from_pygments_cls
from pygments.styles import get_style_by_name

from . import render
from .commands import COMMANDS, Result, commands, run_line
from .context import ShellContext
from .lexer import command_lexer
from .render import clean

STYLE = Style.from_dict({
    "prompt.user": "#5fd7ff bold",
    "prompt.at": "#808080",
    "prompt.host": "#87d787 bold",
    "error": "#ff5f5f",
    "notice": "#ffd75f bold",
    "bottom-toolbar": "noreverse bg:#303030 #d0d0d0",
})


class ShellCompleter(Completer):
    """Completes command names, a command's options, then target names for commands that take one."""

    def __init__(self, ctx: ShellContext) -> None:
        self.ctx = ctx

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        before = document.text_before_cursor
        words = before.split()
        if not words or (len(words) == 1 and not before.endswith(" ")):
            prefix = words[0] if words else ""
            for candidate in commands():
                if candidate.name.startswith(prefix):
                    yield Completion(candidate.name, -len(prefix), display_meta=candidate.summary)
            return
        cmd = COMMANDS.get(words[0])
        if cmd is None:
            return
        prefix = "" if before.endswith(" ") else words[-1]
        if prefix.startswith("-"):
            for option in cmd.options:
                if option.startswith(prefix):
                    yield Completion(option, -len(prefix))
            return
        if not cmd.completes_targets:
            return
        if len(words) - (0 if before.endswith(" ") else 1) != 1:
            return  # the target is the first argument
        for target in self.ctx.targets():
            if target.name.startswith(prefix):
                yield Completion(target.name, -len(prefix), display_meta=f"{target.kind}, {target.access}")


def _prompt(ctx: ShellContext) -> FormattedText:
    return FormattedText([("class:prompt.user", ctx.identity.user), ("class:prompt.at", "@"),
                          ("class:prompt.host", ctx.bastion_name), ("", "> ")])


def _toolbar(ctx: ShellContext) -> Callable[[], FormattedText]:
    def text() -> FormattedText:
        left = render.duration(ctx.certificate_expires - ctx.now())
        groups = ",".join(sorted(ctx.identity.groups)) or "-"
        return FormattedText([("class:bottom-toolbar",
                               f" {ctx.identity.user} [{groups}]  certificate: {left} left  "
                               "Tab completes  Ctrl-D leaves ")])
    return text


@functools.cache
def _shared_style() -> BaseStyle:
    """One merged style for every session: parsing it per session cost ~190 KiB each."""
    return merge_styles([style_from_pygments_cls(get_style_by_name("monokai")), STYLE])


@functools.cache
def _shared_lexer() -> PygmentsLexer:
    return PygmentsLexer(command_lexer(sorted(COMMANDS)))


def server_app_settings(session: PromptSession[str]) -> None:
    """Tune an Application for a server that runs many of them on one event loop.

    Window changes arrive from SSH, so polling the size is waste (2000 wake-ups a
    second with 1000 shells); and postponing redraws while other callbacks are
    ready, right for one local terminal, delays every echo in a busy server.
    """
    session.app.terminal_size_polling_interval = None
    session.app.max_render_postpone_time = None


def build_session(ctx: ShellContext, history: History) -> PromptSession[str]:
    """The PromptSession for one shell: every prompt-toolkit concern is wired here."""
    session: PromptSession[str] = PromptSession(
        message=lambda: _prompt(ctx), bottom_toolbar=_toolbar(ctx), completer=ShellCompleter(ctx),
        complete_while_typing=False, history=history, lexer=_shared_lexer(), style=_shared_style(),
        key_bindings=KeyBindings(), enable_history_search=True, refresh_interval=30,
        # Nothing may run a program or stop the daemon's process from a user's keys.
        enable_system_prompt=False, enable_open_in_editor=False, enable_suspend=False,
    )
    server_app_settings(session)
    return session


def show(result: Result) -> None:
    """Print a command's result in the current app session."""
    if result.text:
        print_formatted_text(result.text, end="")
    if result.error:
        print_formatted_text(FormattedText([("class:error", result.error + "\n")]), end="", style=STYLE)


NOTICE_POLL = 0.25  # seconds between looks for a prompt, while a notice waits to be shown


def _prompt_running() -> bool:
    app = get_app_session().app
    return app is not None and app.is_running


async def relay_notices(notices: asyncio.Queue[str]) -> None:
    """Print each notice above the running prompt (the shell's or the console's), until cancelled.

    While no prompt runs (a command, a statement, the pager, a countdown) a notice waits,
    so it never lands in the middle of a status line or a table.
    """
    while True:
        line = await notices.get()
        while not _prompt_running():
            await asyncio.sleep(NOTICE_POLL)
        # With an app running, this prints above it and redraws the prompt (run_in_terminal).
        print_formatted_text(FormattedText([("class:notice", clean(line.rstrip("\n")) + "\n")]), end="",
                             style=STYLE)


async def interact(ctx: ShellContext, history: History, record: Callable[[str, Result], None]) -> None:
    """Run the shell until ``exit``, Ctrl-D or the channel closes."""
    session = build_session(ctx, history)
    print_formatted_text(
        f"Welcome to {ctx.bastion_name}, {ctx.identity.user}. Type `help` for the commands, "
        "`targets` to see where you can go.")
    notices = asyncio.ensure_future(relay_notices(ctx.notices))
    try:
        await _loop(ctx, session, record)
    finally:
        notices.cancel()


async def _loop(ctx: ShellContext, session: PromptSession[str], record: Callable[[str, Result], None]) -> None:
    while True:
        try:
            # The defaults would install a loop-wide exception handler and take SIGINT from the daemon.
            line = await session.prompt_async(set_exception_handler=False, handle_sigint=False)
        except KeyboardInterrupt:
            continue
        except EOFError:
            break
        result = await run_line(ctx, line)
        if result is None:
            continue
        record(line, result)
        show(result)
        if result.leave:
            break
