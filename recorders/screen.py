"""What was on screen: plain-text lines and seek keyframes, from a cast's 'o' stream.

Both run the cast through :class:`~recorders.vt.Terminal` (pyte, with its quirks fixed).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyte
from pyte.screens import Margins

from .asciicast import Event, iter_events_with_offsets, parse_resize, read_header
from .vt import Terminal, new_stream, render_screen, row_text

__all__ = ["Keyframe", "keyframes", "plain_lines"]


class _LineScreen(Terminal):
    """A screen that collects each row's text as the row is completed (see plain_lines)."""

    def __init__(self, columns: int, lines: int) -> None:
        self.completed: list[str] = []
        self._said: list[str | None] = [None] * lines  # what was last yielded, per row
        super().__init__(columns, lines)

    def _complete(self, y: int) -> None:
        text = row_text(self, y)
        if text and text != self._said[y]:
            self.completed.append(text)
            self._said[y] = text

    def complete_all(self) -> None:
        """Complete every row still on screen (at the end, or before it is wiped)."""
        for y in range(self.lines):
            self._complete(y)

    def _shift_up(self, top: int, bottom: int, count: int) -> None:
        said = self._said
        said[top:bottom + 1] = said[top + count:bottom + 1] + [None] * min(count, bottom + 1 - top)

    def _shift_down(self, top: int, bottom: int, count: int) -> None:
        said = self._said
        kept = said[top:max(top, bottom + 1 - count)]
        said[top:bottom + 1] = [None] * (bottom + 1 - top - len(kept)) + kept

    def _region(self) -> Margins:
        return self.margins or Margins(0, self.lines - 1)

    def linefeed(self) -> None:
        self._complete(self.cursor.y)
        super().linefeed()

    def index(self) -> None:
        top, bottom = self._region()
        if self.cursor.y == bottom:
            self._complete(top)
            self._shift_up(top, bottom, 1)
        super().index()

    def reverse_index(self) -> None:
        top, bottom = self._region()
        if self.cursor.y == top:
            self._complete(bottom)
            self._shift_down(top, bottom, 1)
        super().reverse_index()

    def insert_lines(self, count: int | None = None) -> None:
        count = count or 1
        top, bottom = self._region()
        y = self.cursor.y
        if top <= y <= bottom:
            for gone in range(max(y, bottom + 1 - count), bottom + 1):
                self._complete(gone)
            self._shift_down(y, bottom, count)
        super().insert_lines(count)

    def delete_lines(self, count: int | None = None) -> None:
        count = count or 1
        top, bottom = self._region()
        y = self.cursor.y
        if top <= y <= bottom:
            for gone in range(y, min(y + count, bottom + 1)):
                self._complete(gone)
            self._shift_up(y, bottom, count)
        super().delete_lines(count)

    def erase_in_display(self, how: int = 0, *args: Any, **kwargs: Any) -> None:
        if how in (2, 3):
            self.complete_all()
            self._said = [None] * self.lines
        super().erase_in_display(how, *args, **kwargs)

    def reset(self) -> None:
        if hasattr(self, "_said"):  # pyte calls reset() from __init__, before ours runs
            self.complete_all()
            self._said = [None] * self.lines
        super().reset()

    def resize(self, lines: int | None = None, columns: int | None = None) -> None:
        rows = lines or self.lines
        if rows < self.lines:
            drop = self.resize_drop(rows)
            for y in [*range(drop), *range(drop + rows, self.lines)]:
                self._complete(y)  # rows leaving the screen
            self._said = self._said[drop:drop + rows]
        super().resize(lines, columns)
        self._said = (self._said + [None] * self.lines)[: self.lines]


def _apply(screen: pyte.Screen, stream: pyte.Stream, ev: Event) -> bool:
    """Apply one event to the screen; False for events that do not touch it ('i', 'm', unknown)."""
    if ev.code == "o":
        stream.feed(ev.data)
        return True
    if ev.code == "r":
        size = parse_resize(ev.data)
        if size is not None:
            screen.resize(lines=size[1], columns=size[0])
        return True
    return False


def plain_lines(events: Iterable[Event], width: int, height: int) -> Iterator[tuple[float, str]]:
    """Each screen line as (time, text) when it is completed, for transcripts and grep.

    A row is completed when the cursor leaves it by a line feed, when it scrolls off or is
    wiped by a clear screen, and at the end (the rows still on screen). Its time is that of
    the event that completed it. Blank rows are skipped, and a row is not repeated while
    it still reads what was last yielded for it (prompt redraws). A soft-wrapped long line
    comes out as one line per screen row.
    """
    screen = _LineScreen(width, height)
    stream = new_stream(screen)
    last = 0.0
    for ev in events:
        last = ev.time
        if _apply(screen, stream, ev) and screen.completed:
            done, screen.completed = screen.completed, []
            for text in done:
                yield ev.time, text
    screen.complete_all()
    for text in screen.completed:
        yield last, text


@dataclass(frozen=True)
class Keyframe:
    """The screen at ``time``, as escape sequences that redraw it; ``offset`` is where replay resumes.

    ``offset`` is the byte offset in the cast of the first event after the keyframe.
    """

    time: float
    offset: int
    width: int
    height: int
    ansi: str


def keyframes(source: Path | str, *, every: float = 5.0, max_bytes: int = 4 << 20) -> Iterator[Keyframe]:
    """Keyframes for seeking: one at least every ``every`` seconds or ``max_bytes`` of cast, whichever first."""
    header = read_header(source)
    screen = Terminal(header.width, header.height)
    stream = new_stream(screen)
    prev_time = 0.0
    since_time = 0.0
    since_offset: int | None = None
    for offset, ev in iter_events_with_offsets(source):
        if since_offset is None:
            since_offset = offset
        if ev.time - since_time >= every or offset - since_offset >= max_bytes:
            yield Keyframe(prev_time, offset, screen.columns, screen.lines, render_screen(screen))
            since_time, since_offset = ev.time, offset
        _apply(screen, stream, ev)
        prev_time = ev.time
