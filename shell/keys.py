"""Keys in the SQL console: when Enter submits, and keys read while no prompt runs.

While a statement executes or the pager waits, no prompt-toolkit application reads
the input; :class:`KeyReader` does, so that Ctrl-C can cancel, and hands every other
key on to the next prompt as typeahead.
"""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from types import TracebackType

from prompt_toolkit.application.current import get_app
from prompt_toolkit.filters import Condition, completion_is_selected
from prompt_toolkit.input import Input
from prompt_toolkit.input.typeahead import get_typeahead, store_typeahead
from prompt_toolkit.key_binding import KeyBindings, KeyPress, KeyPressEvent
from prompt_toolkit.keys import Keys

from .sql_input import submits


def multiline_until_complete(dialect: str) -> Condition:
    """Enter inserts a newline until the input is a whole statement (``;``) or a meta-command."""
    return Condition(lambda: not submits(get_app().current_buffer.text, dialect))


def sql_bindings() -> KeyBindings:
    """The console's own key bindings."""
    bindings = KeyBindings()

    @bindings.add("enter", filter=completion_is_selected)
    def _take_completion(event: KeyPressEvent) -> None:
        """Enter on a selected completion keeps it, without submitting."""
        event.current_buffer.complete_state = None

    return bindings


class KeyReader:
    """Reads keys from the session's input outside a prompt; unread keys go back as typeahead."""

    def __init__(self, source: Input) -> None:
        self._input = source
        self._queue: asyncio.Queue[KeyPress] = asyncio.Queue()
        self._kept: list[KeyPress] = []
        self._stack = ExitStack()

    def __enter__(self) -> KeyReader:
        for key in get_typeahead(self._input):
            self._queue.put_nowait(key)
        self._stack.enter_context(self._input.raw_mode())
        self._stack.enter_context(self._input.attach(self._ready))
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stack.close()
        rest = self._kept
        while not self._queue.empty():
            rest.append(self._queue.get_nowait())
        if rest:
            store_typeahead(self._input, rest)

    def _ready(self) -> None:
        for key in [*self._input.read_keys(), *self._input.flush_keys()]:
            self._queue.put_nowait(key)
        if self._input.closed:
            self._queue.put_nowait(KeyPress(Keys.ControlD, ""))  # the pager stops; the next prompt ends

    async def get(self) -> KeyPress:
        """The next key typed."""
        return await self._queue.get()

    def keep(self, key: KeyPress) -> None:
        """Hand a key to the next prompt instead."""
        self._kept.append(key)
