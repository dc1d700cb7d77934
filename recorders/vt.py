"""The VT emulator the recorders share: pyte, with the quirks fixed that would make replay
depend on history, and an exact redraw of its state as escape sequences.

Malformed control sequences are ignored instead of aborting the rest of an event
(:func:`new_stream`); :class:`Terminal` erases, moves lines and resizes as a terminal
does; :func:`render_screen` turns a screen back into the sequences that recreate it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast

import pyte
from pyte import charsets, graphics, modes
from pyte.screens import Char, Margins
from wcwidth import wcwidth

__all__ = ["Terminal", "new_stream", "render_screen", "row_text"]

log = logging.getLogger(__name__)

# What a buggy program may send and pyte 0.8.2 then raises on: wrong CSI arity (TypeError),
# an unknown erase mode (UnboundLocalError, a NameError), VPA in origin mode (AssertionError).
_MALFORMED = (TypeError, ValueError, LookupError, ArithmeticError, AssertionError, NameError)


def _tolerant(name: str, handler: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except _MALFORMED as e:
            log.debug("ignored malformed control sequence %s%r: %s", name, args, e)
            return None

    return call


class _Listener:
    """The screen's handlers as a pyte stream sees them, each ignoring malformed sequences."""

    def __init__(self, screen: pyte.Screen) -> None:
        for name in pyte.Stream.events:
            handler = getattr(screen, name)
            # draw() takes any text; keep it a direct call, it is the hot path.
            setattr(self, name, handler if name == "draw" else _tolerant(name, handler))


def new_stream(screen: pyte.Screen) -> pyte.Stream:
    """A pyte stream feeding ``screen`` that skips malformed control sequences instead of raising."""
    stream = pyte.Stream()
    stream.attach(cast(pyte.Screen, _Listener(screen)))
    return stream


class Terminal(pyte.Screen):
    """pyte's screen with its 0.8.2 quirks fixed where they would make replay depend on history.

    - An erase of the display clears every cell of it, as a terminal does (pyte erases
      only cells it happens to hold); inserting and deleting lines moves blank rows too;
      a cell pyte keeps past the right edge never comes into view.
    - A resize keeps the cursor's row on screen (pyte drops rows from the top regardless),
      keeps the cursor, the saved cursor and the tab stops inside the new size, and never
      shows a cell that was past the old right edge.

    It also draws plain ASCII text several times faster than pyte, with the same result.
    """

    def __init__(self, columns: int, lines: int) -> None:
        self._cells: dict[Char, dict[str, Char]] = {}  # per attributes: each character's cell, made once
        super().__init__(columns, lines)

    def draw(self, data: str) -> None:
        # pyte builds a new cell per character; for printable ASCII in replace mode with
        # the identity charset, reuse cells and fill whole runs up to the right edge.
        if (not (data.isascii() and data.isprintable()) or modes.IRM in self.mode
                or (self.g1_charset if self.charset else self.g0_charset) is not charsets.LAT1_MAP):
            super().draw(data)
            return
        cursor = self.cursor
        attrs = cursor.attrs
        cells = self._cells.get(attrs)
        if cells is None:
            if len(self._cells) > 256:
                self._cells.clear()
            cells = self._cells[attrs] = {}
        columns, i, n = self.columns, 0, len(data)
        while i < n:
            if cursor.x >= columns:
                if modes.DECAWM not in self.mode:
                    super().draw(data[i:])  # each character overwrites the last column
                    return
                self.dirty.add(cursor.y)
                self.carriage_return()
                self.linefeed()
            x = cursor.x
            run = data[i:i + columns - x]
            line = self.buffer[cursor.y]
            for c in run:
                cell = cells.get(c)
                if cell is None:
                    cell = cells[c] = attrs._replace(data=c)
                line[x] = cell
                x += 1
            cursor.x = x
            i += len(run)
        self.dirty.add(cursor.y)

    def erase_in_display(self, how: int = 0, *args: Any, **kwargs: Any) -> None:
        if how in (2, 3):
            rows = range(self.lines)
        elif how == 0:
            rows = range(self.cursor.y + 1, self.lines)
        elif how == 1:
            rows = range(self.cursor.y)
        else:
            return  # not an erase mode; pyte would raise
        self.dirty.update(rows)
        blank = self.cursor.attrs
        for y in rows:
            if blank == self.default_char:
                self.buffer.pop(y, None)
            else:
                self.buffer[y].update(dict.fromkeys(range(self.columns), blank))
        if how in (0, 1):
            self.erase_in_line(how)

    def insert_lines(self, count: int | None = None) -> None:
        # pyte leaves a row in place when the blank row above it moves down onto it.
        count = count or 1
        top, bottom = self.margins or Margins(0, self.lines - 1)
        if top <= self.cursor.y <= bottom:
            self.dirty.update(range(self.cursor.y, self.lines))
            for y in range(bottom, self.cursor.y - 1, -1):
                self._move_row(y, y + count, bottom)
            self.carriage_return()

    def delete_lines(self, count: int | None = None) -> None:
        # pyte leaves a row in place when the blank row below it moves up onto it.
        count = count or 1
        top, bottom = self.margins or Margins(0, self.lines - 1)
        if top <= self.cursor.y <= bottom:
            self.dirty.update(range(self.cursor.y, self.lines))
            for y in range(self.cursor.y, bottom + 1):
                self._move_row(y + count, y, bottom)
            self.carriage_return()

    def _move_row(self, src: int, dst: int, bottom: int) -> None:
        """Row ``src`` becomes row ``dst`` (blank if ``src`` is past ``bottom``); ``src`` is left blank."""
        line = self.buffer.pop(src, None) if src <= bottom else None
        if dst <= bottom:
            if line is None:
                self.buffer.pop(dst, None)
            else:
                self.buffer[dst] = line

    def delete_characters(self, count: int | None = None) -> None:
        # pyte can hold a cell just past the edge (after insert_characters, or erasing at a
        # pending wrap); deleting must not pull it into view.
        self.buffer[self.cursor.y].pop(self.columns, None)
        super().delete_characters(count)

    def cursor_to_line(self, line: int | None = None) -> None:
        # pyte asserts margins in origin mode, after it has moved the cursor off the screen.
        top = self.margins.top if self.margins is not None and modes.DECOM in self.mode else 0
        self.cursor.y = (line or 1) - 1 + top
        self.ensure_vbounds()

    def save_cursor(self) -> None:
        super().save_cursor()
        saved = self.savepoints[-1].cursor  # restoring lands inside the screen anyway
        saved.x = min(saved.x, self.columns - 1)

    def set_tab_stop(self) -> None:
        self.tabstops.add(min(self.cursor.x, self.columns - 1))  # not past the edge, at a pending wrap

    def resize_drop(self, rows: int) -> int:
        """How many rows a shrink to ``rows`` drops from the top: only what keeps the cursor on screen."""
        return max(0, self.cursor.y - (rows - 1))

    def resize(self, lines: int | None = None, columns: int | None = None) -> None:
        rows, cols = lines or self.lines, columns or self.columns
        old_cols = self.columns
        if rows == self.lines and cols == old_cols:
            return
        # Like xterm, not pyte: a shrink drops rows from the bottom, and from the top only as
        # many as keeps the cursor's row on screen.
        drop = self.resize_drop(rows) if rows < self.lines else 0
        kept = {y - drop: line for y, line in self.buffer.items() if drop <= y < drop + rows}
        self.buffer.clear()
        self.buffer.update(kept)
        edge = min(cols, old_cols)
        for line in kept.values():
            for x in [x for x in line if x >= edge]:
                del line[x]
        self.lines, self.columns = rows, cols
        self.margins = None
        self.dirty.update(range(rows))
        for c in [self.cursor, *(saved.cursor for saved in self.savepoints)]:
            c.y = min(max(0, c.y - drop), rows - 1)
            if cols != old_cols:
                c.x = min(c.x, cols - 1)
        if cols != old_cols:
            # Like xterm: stops past the edge go, new columns get the default stop every 8.
            stops = {t for t in self.tabstops if t < edge}
            self.tabstops = stops | set(range(max(8, -(-old_cols // 8) * 8), cols, 8))


def row_text(screen: pyte.Screen, y: int) -> str:
    """The text of one screen row, trailing spaces stripped."""
    line = screen.buffer.get(y)
    if not line:
        return ""
    end = min(max(line) + 1, screen.columns)
    return "".join([line[x].data for x in range(end)]).rstrip()


_FG = {name: code for table in (graphics.FG_ANSI, graphics.FG_AIXTERM) for code, name in table.items()}
_BG = {name: code for table in (graphics.BG_ANSI, graphics.BG_AIXTERM) for code, name in table.items()}
_INDEX_256 = {value: i for i, value in reversed(list(enumerate(graphics.FG_BG_256)))}
_FLAGS = (("bold", 1), ("italics", 3), ("underscore", 4), ("blink", 5), ("reverse", 7), ("strikethrough", 9))
# Modes the redraw sets itself, or leaves alone: DECCOLM is the width, DECSCNM rewrites cells in pyte.
_OWN_MODES = {modes.DECAWM, modes.DECTCEM, modes.DECOM, modes.IRM, modes.LNM, modes.DECCOLM, modes.DECSCNM}
_PREAMBLE = "\x1b[0m\x1b[r\x1b[4l\x1b[20l\x1b[?6l\x1b[?7h\x1b[?25h"
_PLAIN = tuple(Char(" ")[1:])  # the attributes of a blank cell
_WIDE = "\u4e00"  # any two-cell character, to recreate an orphaned right half


def _colour(value: str, names: dict[str, int], extended: int) -> str:
    if value == "default":
        return ""
    if value in names:
        return f";{names[value]}"
    if value in _INDEX_256:
        return f";{extended};5;{_INDEX_256[value]}"
    try:
        r, g, b = (int(value[i:i + 2], 16) for i in (0, 2, 4))
    except ValueError:
        return ""  # a colour pyte made up from out-of-range numbers: drop it
    return f";{extended};2;{r};{g};{b}" if len(value) == 6 else ""


_sgr_cache: dict[tuple[Any, ...], str] = {}


def _sgr(cell: Char) -> str:
    """The SGR sequence that gives a cell's attributes, from a reset."""
    key = tuple(cell[1:])
    seq = _sgr_cache.get(key)
    if seq is None:
        flags = "".join(f";{code}" for name, code in _FLAGS if getattr(cell, name))
        seq = f"\x1b[0{flags}{_colour(cell.fg, _FG, 38)}{_colour(cell.bg, _BG, 48)}m"
        if len(_sgr_cache) > 4096:  # true-colour output can make many; keep the cache small
            _sgr_cache.clear()
        _sgr_cache[key] = seq
    return seq


def _mode(mode: int, on: bool) -> str:
    private = mode >= 32 and mode % 32 == 0  # pyte shifts private (DEC) modes left by 5
    return f"\x1b[{'?' if private else ''}{mode >> 5 if private else mode}{'h' if on else 'l'}"


class _RowWriter:
    """Accumulates the sequences that draw cells on one row, tracking cursor and attributes."""

    def __init__(self, y: int, columns: int) -> None:
        self.out = [f"\x1b[{y + 1}H"]
        self.columns = columns
        self.at = 0  # the cursor's column after what was written so far
        self.attrs: tuple[Any, ...] | None = None
        self.stub_at = -1  # where the last wide character written put its right half

    def put(self, x: int, cell: Char, text: str) -> None:
        if self.at != x:
            if 0 <= self.at < x <= self.at + 4 and self.attrs == _PLAIN:
                self.out.append(" " * (x - self.at))  # a short gap of blanks: cheaper than a move
            else:
                self.out.append(f"\x1b[{x + 1}G")
        key = tuple(cell[1:])
        if key != self.attrs:
            self.out.append(_sgr(cell))
            self.attrs = key
        self.out.append(text)
        wide = wcwidth(text[0]) == 2
        self.stub_at = x + 1 if wide else -1
        self.at = min(x + (2 if wide else 1), self.columns)

    def erase(self, x: int) -> None:
        self.out.append(f"\x1b[{x + 1}G\x1b[0m\x1b[X")
        self.at, self.attrs = x, _PLAIN


def _row(screen: pyte.Screen, y: int) -> list[str]:
    """Escape sequences that redraw one row, cell by cell, with each cell's attributes."""
    line = screen.buffer.get(y)
    blank = screen.default_char
    used = sorted(x for x, c in line.items() if x < screen.columns and c != blank) if line else []
    if not line or not used:
        return []
    w = _RowWriter(y, screen.columns)
    for x in used:
        cell = line[x]
        if cell.data == "":  # the right half of a wide character
            if w.stub_at == x and tuple(cell[1:]) == w.attrs:
                continue  # already drawn with its left half
            if x > 0:
                # Orphaned (its left half was overwritten): a wide character one cell to the
                # left leaves a right half here; then that cell is redrawn.
                w.put(x - 1, cell, _WIDE)
                prev = line[x - 1]
                if prev.data:
                    w.put(x - 1, prev, prev.data)
                elif prev == blank:
                    w.erase(x - 1)
                elif x > 1 and line[x - 2].data:
                    w.put(x - 2, line[x - 2], line[x - 2].data)
            else:
                # At column 0: a wide character there, then delete its left half.
                w.put(0, cell, _WIDE)
                w.out.append("\x1b[1G\x1b[P")
            w.at = -1  # the cursor is somewhere on the left: move explicitly
            continue
        w.put(x, cell, cell.data)
        if w.stub_at == x + 1 < screen.columns and line[x + 1] == blank:
            w.erase(x + 1)  # a wide character whose right half was blanked, or drawn at the old edge
    return w.out


def render_screen(screen: pyte.Screen) -> str:
    """Escape sequences that redraw ``screen`` exactly on a terminal of its size.

    Restores the cells with their colours and attributes, the cursor (position, pending
    wrap, attributes, visibility), scroll margins, tab stops, the saved cursor, the title
    and the modes; replay can then resume right after.
    """
    out = [_PREAMBLE]
    out += [_mode(m, True) for m in sorted(screen.mode - _OWN_MODES)]
    out.append("\x1b[H\x1b[2J")
    for y in range(screen.lines):
        out += _row(screen, y)
    if screen.tabstops != set(range(8, screen.columns, 8)):
        out.append("\x1b[3g")
        out += [f"\x1b[{t + 1}G\x1bH" for t in sorted(screen.tabstops) if t < screen.columns]
    if screen.savepoints:
        saved = screen.savepoints[-1]
        c = saved.cursor
        out += [_mode(modes.DECAWM, saved.wrap), _mode(modes.DECOM, saved.origin),
                f"\x1b[{c.y + 1};{min(c.x, screen.columns - 1) + 1}H", _sgr(c.attrs),
                _mode(modes.DECTCEM, not c.hidden), "\x1b7", _mode(modes.DECOM, False), _mode(modes.DECAWM, True)]
    if screen.title:
        out.append(f"\x1b]2;{screen.title}\x07")
    if screen.icon_name:
        out.append(f"\x1b]1;{screen.icon_name}\x07")
    if screen.margins is not None:
        out.append(f"\x1b[{screen.margins.top + 1};{screen.margins.bottom + 1}r")
    origin = modes.DECOM in screen.mode
    if origin:
        out.append(_mode(modes.DECOM, True))
    cur = screen.cursor
    top = screen.margins.top if origin and screen.margins else 0
    out.append(f"\x1b[{cur.y - top + 1};{min(cur.x, screen.columns - 1) + 1}H")
    if cur.x >= screen.columns:
        # Pending wrap: redraw the last cell, which leaves the cursor past the edge as before.
        last = screen.columns - 1
        cell = screen.buffer[cur.y][last]
        if cell.data == "" and last > 0:
            last, cell = last - 1, screen.buffer[cur.y][last - 1]
        out += [f"\x1b[{last + 1}G", _sgr(cell), cell.data or " "]
    out += [_mode(m, True) for m in (modes.IRM, modes.LNM) if m in screen.mode]
    if modes.DECAWM not in screen.mode:
        out.append(_mode(modes.DECAWM, False))
    out += [_sgr(cur.attrs), _mode(modes.DECTCEM, modes.DECTCEM in screen.mode)]
    return "".join(out)
