"""Replay: pure timing transforms over events, and a terminal player with keys.

The transforms are generators with no clock and no I/O, as in asciinema's ``events.py``.
The :class:`Player` takes its clock, its sleep and its key source as arguments, so a test
drives it with a fake clock and scripted keys.
"""

from __future__ import annotations

import os
import re
import selectors
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import chain
from typing import TextIO

from .asciicast import Event, parse_resize
from .durations import parse_duration
from .errors import RecorderError
from .screen import Keyframe

__all__ = [
    "KeyReader",
    "Player",
    "adjust_speed",
    "cap_idle",
    "from_time",
    "marker_time",
    "markers",
    "parse_offset",
    "resize_sequence",
    "terminal_keys",
]

KeyReader = Callable[[float | None], str | None]
"""Waits up to ``timeout`` seconds (None: for ever) for one key; None if none came."""

_CLOCK = re.compile(r"(?:(\d+):)?(\d+):(\d{1,2}(?:\.\d+)?)")
_QUIT = {"q", "\x03"}  # q, or Ctrl-C in raw mode


def cap_idle(events: Iterable[Event], limit: float | None) -> Iterator[Event]:
    """Shrink every gap longer than ``limit`` seconds (the first one, from 0, too) to ``limit``."""
    if not limit or limit <= 0:
        yield from events
        return
    cut = 0.0
    prev = 0.0
    for ev in events:
        gap = ev.time - prev
        if gap > limit:
            cut += gap - limit
        prev = ev.time
        yield ev._replace(time=ev.time - cut)


def adjust_speed(events: Iterable[Event], speed: float) -> Iterator[Event]:
    """Play ``speed`` times as fast: every time divided by ``speed``."""
    if not speed > 0:
        raise ValueError(f"speed must be positive, not {speed}")
    for ev in events:
        yield ev._replace(time=ev.time / speed)


def from_time(events: Iterable[Event], start: float) -> Iterator[Event]:
    """The events at or after ``start``, with ``start`` as the new 0.

    Events before ``start`` are dropped. What they drew is the caller's business: render
    them instantly first, or draw a keyframe (:meth:`Player.play` does both). The first
    event keeps its distance from ``start``, as in a video seek: a seek into a pause
    waits out the rest of the pause (capped by :func:`cap_idle` when applied after this).
    """
    for ev in events:
        if ev.time >= start:
            yield ev._replace(time=ev.time - start)


def parse_offset(text: str) -> float:
    """Seconds in an offset into a recording: ``90``, ``90.5``, ``1m30s``, ``1:30`` or ``01:02:03``."""
    s = text.strip()
    try:
        seconds = float(s)
    except ValueError:
        m = _CLOCK.fullmatch(s)
        if m:
            h, mins, secs = int(m[1] or 0), int(m[2]), float(m[3])
            if (m[1] is not None and mins >= 60) or secs >= 60:
                raise ValueError(f"{text!r}: minutes and seconds must be below 60") from None
            return h * 3600 + mins * 60 + secs
        try:
            return parse_duration(s)
        except ValueError:
            raise ValueError(
                f"{text!r} is not an offset: use seconds (90), units (1m30s) or a clock (1:30, 01:02:03)"
            ) from None
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"{text!r} is not an offset: it must be zero or more seconds")
    return seconds


def markers(events: Iterable[Event]) -> list[tuple[float, str]]:
    """The markers ('m' events) as (time, label)."""
    return [(ev.time, ev.data) for ev in events if ev.code == "m"]


def marker_time(events: Iterable[Event], n: int) -> float:
    """The time of the ``n``-th marker (1-based), to start playback there."""
    found = markers(events)
    if not 1 <= n <= len(found):
        raise RecorderError(f"no marker {n}: the recording has {len(found)} marker(s)")
    return found[n - 1][0]


def resize_sequence(cols: int, rows: int) -> str:
    """The xterm window-size sequence (CSI 8 ; rows ; cols t); some terminals ignore it."""
    return f"\x1b[8;{rows};{cols}t"


class Player:
    """Plays events on a terminal in real time.

    Keys: space pauses and resumes, ``.`` steps to the next event while paused, ``>`` and
    ``<`` double and halve the speed, ``m`` jumps to the next marker (or the end), ``q``
    quits. 'r' events become :func:`resize_sequence`, which some terminals ignore (and
    many refuse while maximised); the output is then drawn at the terminal's own size.
    """

    def __init__(
        self,
        out: TextIO,
        read_key: KeyReader | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.out = out
        self.read_key = read_key
        self.clock = clock
        self.sleep = sleep
        self.speed = 1.0  # the current speed, after > and <

    def play(
        self,
        events: Iterable[Event],
        *,
        start: float = 0.0,
        keyframe: Keyframe | None = None,
        speed: float = 1.0,
        idle_time_limit: float | None = None,
        size: tuple[int, int] | None = None,
    ) -> bool:
        """Play ``events``; True if played to the end, False if the viewer quit.

        To start at ``start`` seconds, pass the last keyframe at or before it and the events
        from ``keyframe.offset`` on: the keyframe is drawn, the events up to ``start`` are
        written at once, and the rest plays in real time. Without a keyframe everything
        before ``start`` is written at once. ``size`` is the recording's (cols, rows), so
        that a keyframe of another size resizes the terminal.
        """
        if keyframe is not None:
            if keyframe.time > start:
                raise ValueError(f"keyframe at {keyframe.time}s is after the start {start}s")
            if (keyframe.width, keyframe.height) != size:
                self.out.write(resize_sequence(keyframe.width, keyframe.height))
            self.out.write(keyframe.ansi)
        it = iter(events)
        first: Event | None = None
        for ev in it:
            if ev.time >= start:
                first = ev
                break
            self._show(ev)
        self.out.flush()
        if first is None:
            return True
        self.speed = speed
        timed = cap_idle(from_time(chain([first], it), start), idle_time_limit)
        return self._run(iter(adjust_speed(timed, speed)))

    def _show(self, ev: Event) -> None:
        if ev.code == "o":
            self.out.write(ev.data)
        elif ev.code == "r":
            size = parse_resize(ev.data)
            if size is not None:
                self.out.write(resize_sequence(*size))

    def _run(self, events: Iterator[Event]) -> bool:
        """Show each event when due, reacting to keys; ``rate`` is the speed relative to the start."""
        rate = 1.0
        paused = False
        base_t, base_wall = 0.0, self.clock()  # stream time base_t was at wall time base_wall

        def now() -> float:
            return base_t if paused else base_t + (self.clock() - base_wall) * rate

        for ev in events:
            while True:
                if paused:
                    key = self._key(None)
                else:
                    wait = (ev.time - now()) / rate
                    if wait <= 0:
                        break
                    key = self._key(wait)
                if key is None:
                    continue
                if key in _QUIT:
                    self.out.flush()
                    return False
                if key == " ":
                    base_t, base_wall = now(), self.clock()
                    paused = not paused
                elif key == ">" or key == "<":
                    base_t, base_wall = now(), self.clock()
                    rate = rate * 2 if key == ">" else rate / 2
                    self.speed *= 2 if key == ">" else 0.5
                elif key == "." and paused:
                    break
                elif key == "m":
                    ev = self._skip_to_marker(ev, events)
                    base_t, base_wall = ev.time, self.clock()
                    break
            self._show(ev)
            self.out.flush()
            if paused:
                base_t = ev.time
        return True

    def _skip_to_marker(self, ev: Event, events: Iterator[Event]) -> Event:
        """Show everything up to the next marker at once; the marker (or the last event) is returned unshown."""
        while ev.code != "m":
            nxt = next(events, None)
            if nxt is None:
                return ev
            self._show(ev)
            ev = nxt
        return ev

    def _key(self, timeout: float | None) -> str | None:
        if self.read_key is None:
            if timeout is None:
                raise RuntimeError("paused with no key source")  # cannot happen: pausing takes a key
            self.sleep(timeout)
            return None
        return self.read_key(timeout)


@contextmanager
def terminal_keys(stdin: TextIO | None = None) -> Iterator[KeyReader | None]:
    """Single keys from a real terminal in raw mode, restored on exit; None when stdin is not a TTY."""
    fd = (stdin or sys.stdin).fileno()
    if not os.isatty(fd):
        yield None
        return
    saved = termios.tcgetattr(fd)
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)

    def read_key(timeout: float | None) -> str | None:
        if not sel.select(timeout):
            return None
        data = os.read(fd, 1)
        return data.decode("latin-1") if data else "q"  # end of input: nothing more will come

    try:
        tty.setraw(fd)
        yield read_key
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)
        sel.close()
