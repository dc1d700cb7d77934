"""Waiting for an approver at the terminal: who was asked, a live countdown, Ctrl-C stops waiting.

Used by ``connect`` on an approval target, by ``sql --wait`` in the shell and by the
SQL console for a held statement. Nothing else reads the input while we wait, so a
:class:`KeyReader` does: Ctrl-C (or a closed input) ends the wait, every other key is
kept for the next prompt. The countdown is one status line rewritten in place with a
carriage return, which any terminal at the end of an SSH channel understands.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from prompt_toolkit import PromptSession, print_formatted_text
from prompt_toolkit.application.current import get_app_session
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.key_binding import KeyPress
from prompt_toolkit.keys import Keys
from prompt_toolkit.output import Output
from prompt_toolkit.styles import Style

from . import render
from .access import asked
from .app import server_app_settings
from .context import RequestView
from .keys import KeyReader

WaitRequest = Callable[[str, float | None], Awaitable[RequestView]]

PENDING = "pending"
TICK = 1.0  # seconds between countdown redraws
RETRY = 1.0  # seconds before asking again when a waiter came back early with the request still pending

STYLE = Style.from_dict({
    "wait.asked": "#5fd7ff",
    "wait.status": "#ffaf00",
    "wait.approved": "#87d787 bold",
    "wait.refused": "#ff5f5f bold",
    "wait.hint": "#d0d0d0",
    "wait.question": "bold",
})


def say(text: str, style: str = "") -> None:
    """Print one line in the current app session."""
    print_formatted_text(FormattedText([(style, text + "\n")]), end="", style=STYLE)


async def ask(question: str) -> str | None:
    """One line of input at a prompt of its own; None when the person gives up (Ctrl-C, Ctrl-D)."""
    session: PromptSession[str] = PromptSession(
        message=FormattedText([("class:wait.question", question)]), style=STYLE,
        enable_system_prompt=False, enable_open_in_editor=False, enable_suspend=False)
    server_app_settings(session)
    try:
        return await session.prompt_async(handle_sigint=False, set_exception_handler=False)
    except (KeyboardInterrupt, EOFError):
        return None


async def wait_for(view: RequestView, wait: WaitRequest, now: Callable[[], float],
                   timeout: float | None = None) -> RequestView | None:
    """Wait for the decision on ``view`` with a countdown.

    The decided request; the still pending one when ``timeout`` passes; None when the
    person stops waiting (Ctrl-C, or the input closed), which leaves the request pending.
    """
    app_session = get_app_session()
    output = app_session.output
    say(asked(view), "class:wait.asked")
    end = view.expires if timeout is None else min(view.expires, now() + timeout)
    decided = asyncio.ensure_future(_decided(view, wait, timeout))
    key: asyncio.Future[KeyPress] | None = None
    try:
        with KeyReader(app_session.input) as keys:
            while True:
                _status(output, f"waiting for approval: {render.countdown(end - now())} left "
                                "(Ctrl-C stops waiting)")
                if key is None:
                    key = asyncio.ensure_future(keys.get())
                await asyncio.wait((decided, key), timeout=TICK, return_when=asyncio.FIRST_COMPLETED)
                if decided.done():
                    _status(output, "")
                    if key.done():
                        keys.keep(key.result())
                    return decided.result()
                if key.done():
                    pressed = key.result()
                    key = None
                    if pressed.key in (Keys.ControlC, Keys.ControlD):
                        _status(output, "")
                        return None
                    keys.keep(pressed)
    finally:
        for task in (decided, key):
            if task is not None and not task.done():
                task.cancel()


async def _decided(view: RequestView, wait: WaitRequest, timeout: float | None) -> RequestView:
    if timeout is not None:
        return await wait(view.id, timeout)
    while True:
        view = await wait(view.id, None)
        if view.state != PENDING:
            return view
        await asyncio.sleep(RETRY)  # returned early: ask again, without spinning


def _status(output: Output, text: str) -> None:
    """Rewrite the status line in place (an empty text clears it)."""
    output.write_raw("\r")
    output.erase_end_of_line()
    if text:
        width = max(output.get_size().columns - 1, 10)
        print_formatted_text(FormattedText([("class:wait.status", text[:width])]), end="", style=STYLE,
                             output=output)
    output.flush()
