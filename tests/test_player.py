"""Replay timing and the terminal player (recorders/player.py)."""

from __future__ import annotations

import io
import os
import pty
import re
import termios
from collections.abc import Sequence
from pathlib import Path

import pytest

from recorders.asciicast import Event, Header, Writer, iter_events
from recorders.errors import RecorderError
from recorders.player import (
    Player,
    adjust_speed,
    cap_idle,
    from_time,
    marker_time,
    markers,
    parse_offset,
    resize_sequence,
    terminal_keys,
)
from recorders.screen import Keyframe, keyframes
from recorders.vt import Terminal, new_stream


def evs(*times: float, code: str = "o") -> list[Event]:
    return [Event(t, code, str(i)) for i, t in enumerate(times)]


def times(events: list[Event]) -> list[float]:
    return [pytest.approx(e.time) for e in events]


@pytest.mark.parametrize(("given", "limit", "expected"), [
    ([1, 2, 3], None, [1, 2, 3]),
    ([1, 2, 3], 0, [1, 2, 3]),
    ([0.5, 10, 10.5], 2, [0.5, 2.5, 3]),
    ([5, 6, 20, 21], 2, [2, 3, 5, 6]),          # the first gap, from 0, is capped too
    ([1, 1, 1], 0.5, [0.5, 0.5, 0.5]),
    ([], 2, []),
])
def test_cap_idle(given: list[float], limit: float | None, expected: list[float]) -> None:
    assert [e.time for e in cap_idle(evs(*given), limit)] == times(evs(*expected))


@pytest.mark.parametrize(("given", "speed", "expected"), [
    ([1, 2, 4], 2, [0.5, 1, 2]),
    ([1, 2, 4], 0.5, [2, 4, 8]),
    ([3], 1, [3]),
])
def test_adjust_speed(given: list[float], speed: float, expected: list[float]) -> None:
    assert [e.time for e in adjust_speed(evs(*given), speed)] == times(evs(*expected))


@pytest.mark.parametrize("speed", [0, -1, float("nan")])
def test_adjust_speed_rejects_non_positive(speed: float) -> None:
    with pytest.raises(ValueError, match="speed must be positive"):
        list(adjust_speed(evs(1), speed))


@pytest.mark.parametrize(("given", "start", "expected"), [
    ([1, 2, 3], 0, [1, 2, 3]),
    ([1, 2, 3], 2, [0, 1]),
    ([1, 2, 3], 1.5, [0.5, 1.5]),             # the rest of the pause before the next event is kept
    ([1, 2, 3], 5, []),
])
def test_from_time(given: list[float], start: float, expected: list[float]) -> None:
    out = list(from_time(evs(*given), start))
    assert [e.time for e in out] == times(evs(*expected))
    assert [e.data for e in out] == [e.data for e in evs(*given) if e.time >= start]


def test_idle_cap_after_seek_caps_the_first_wait() -> None:
    assert [e.time for e in cap_idle(from_time(evs(1, 30, 31), 2), 1)] == [1, 2]


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90), ("90.5", 90.5), ("0", 0), (" 45 ", 45), ("1m30s", 90), ("2h", 7200), ("1h2m3s", 3723),
    ("1:30", 90), ("0:05", 5), ("01:02:03", 3723), ("1:02:03.5", 3723.5), ("90:00", 5400),
])
def test_parse_offset(text: str, seconds: float) -> None:
    assert parse_offset(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "-5", "1:", ":30", "1:60", "1:60:00", "1:2:3:4", "nan", "inf", "1m30"])
def test_parse_offset_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        parse_offset(text)


def test_markers_and_marker_time() -> None:
    events = [Event(1, "o", "a"), Event(2, "m", "first"), Event(3, "o", "b"), Event(4.5, "m", "")]
    assert markers(events) == [(2, "first"), (4.5, "")]
    assert marker_time(events, 2) == 4.5
    with pytest.raises(RecorderError, match="no marker 3: the recording has 2"):
        marker_time(events, 3)
    with pytest.raises(RecorderError, match="no marker 0"):
        marker_time(events, 0)


# -- the player, on a fake clock ---------------------------------------------------------


class FakeTerminal(io.StringIO):
    """A terminal for the player: a clock, a sleep, scripted keys, and what was written when."""

    def __init__(self, keys: Sequence[tuple[float, str]] = ()) -> None:
        super().__init__()
        self.now = 0.0
        self.keys = list(keys)
        self.writes: list[tuple[float, str]] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def read_key(self, timeout: float | None) -> str | None:
        if self.keys and (timeout is None or self.keys[0][0] <= self.now + timeout):
            at, key = self.keys.pop(0)
            self.now = max(self.now, at)
            return key
        if timeout is None:
            raise AssertionError("the player waits for a key that never comes")
        self.now += timeout
        return None

    def write(self, s: str) -> int:
        self.writes.append((self.now, s))
        return super().write(s)

    def shown_at(self, data: str) -> float | None:
        return next((t for t, s in self.writes if data in s), None)

    def player(self, with_keys: bool = True) -> Player:
        return Player(self, self.read_key if with_keys else None, clock=self.clock, sleep=self.sleep)


EVENTS = [Event(1.0, "o", "A"), Event(2.0, "o", "B"), Event(3.0, "m", "mark"), Event(4.0, "o", "C"),
          Event(14.0, "o", "D")]


def test_real_timing_without_keys() -> None:
    term = FakeTerminal()
    assert term.player(with_keys=False).play(EVENTS) is True
    assert [term.shown_at(x) for x in "ABCD"] == [1, 2, 4, 14]
    assert term.getvalue() == "ABCD"


def test_speed_and_idle_cap() -> None:
    term = FakeTerminal()
    term.player().play(EVENTS, speed=2, idle_time_limit=2)
    # capped first (14 -> 6), then halved
    assert [term.shown_at(x) for x in "ABCD"] == pytest.approx([0.5, 1, 2, 3])


def test_pause_and_resume() -> None:
    term = FakeTerminal([(1.5, " "), (10.0, " ")])
    term.player().play(EVENTS)
    assert [term.shown_at(x) for x in "ABC"] == pytest.approx([1, 10.5, 12.5])


def test_step_while_paused() -> None:
    term = FakeTerminal([(0.5, " "), (2.0, "."), (3.0, "."), (3.5, "."), (4.0, " ")])
    term.player().play(EVENTS)
    # A, B and the marker come one per step; playing resumes from the marker's time (3)
    assert [term.shown_at(x) for x in "AB"] == [2.0, 3.0]
    assert term.shown_at("C") == pytest.approx(5.0)


def test_step_is_ignored_while_playing() -> None:
    term = FakeTerminal([(0.5, ".")])
    term.player().play(EVENTS)
    assert term.shown_at("A") == pytest.approx(1.0)


def test_faster_and_slower() -> None:
    term = FakeTerminal([(1.0, ">"), (1.5, ">"), (2.0, "<")])
    player = term.player()
    player.play(EVENTS[:4])
    # at 1.0 -> x2 (recording 1.0); at 1.5 (recording 2.0, B due) -> x4; at 2.0 (recording 4.0) -> x2
    assert term.shown_at("B") == pytest.approx(1.5)
    assert term.shown_at("C") == pytest.approx(2.0)
    assert player.speed == 2


def test_jump_to_next_marker() -> None:
    events = [*EVENTS, Event(20.0, "m", "second"), Event(25.0, "o", "E")]
    term = FakeTerminal([(0.5, "m"), (5.0, "m")])
    term.player().play(events)
    assert term.shown_at("A") == term.shown_at("B") == 0.5   # drawn at once on the jump
    assert term.shown_at("C") == pytest.approx(1.5)          # 1 s after the marker at 3
    assert term.shown_at("D") == 5.0                          # drawn on the second jump, to "second" at 20
    assert term.shown_at("E") == pytest.approx(10.0)          # 5 s after it
    assert term.getvalue() == "ABCDE"


def test_jump_without_markers_goes_to_the_end() -> None:
    term = FakeTerminal([(0.5, "m")])
    assert term.player().play([Event(1, "o", "x"), Event(50, "o", "y")]) is True
    assert term.shown_at("y") == 0.5


def test_quit() -> None:
    term = FakeTerminal([(2.5, "q")])
    assert term.player().play(EVENTS) is False
    assert term.getvalue() == "AB"
    assert term.now == 2.5


def test_resize_sequence_and_unknown_codes() -> None:
    term = FakeTerminal()
    term.player().play([Event(1, "o", "a"), Event(2, "r", "100x30"), Event(3, "r", "bad"), Event(4, "x", "?"),
                        Event(5, "i", "typed"), Event(6, "o", "b")])
    assert term.getvalue() == "a\x1b[8;30;100tb"
    assert resize_sequence(100, 30) == "\x1b[8;30;100t"


# -- seeking ----------------------------------------------------------------------------

RESIZE = re.compile(r"\x1b\[8;(\d+);(\d+)t")


def screen_of(output: str, cols: int, rows: int) -> Terminal:
    """What a terminal that obeys the resize sequence shows after ``output``."""
    screen = Terminal(cols, rows)
    stream = new_stream(screen)
    pos = 0
    for m in RESIZE.finditer(output):
        stream.feed(output[pos:m.start()])
        screen.resize(lines=int(m[1]), columns=int(m[2]))
        pos = m.end()
    stream.feed(output[pos:])
    return screen


def cells(screen: Terminal) -> list[list[object]]:
    return [[screen.buffer[y][x] for x in range(screen.columns)] for y in range(screen.lines)]


@pytest.fixture
def cast(tmp_path: Path) -> Path:
    """A 30 s recording: coloured output, cursor moves, a clear, a resize and markers."""
    path = tmp_path / "seek.cast"
    now = [0.0]
    with open(path, "wb") as f:
        w = Writer(f, Header(width=40, height=8), clock=lambda: now[0])
        for i in range(60):
            now[0] = i * 0.5
            if i == 4:
                w.output(b"EARLY")
            elif i == 6:
                w.output(b"\x1b[2J\x1b[H")
            elif i == 30:
                w.resize(50, 10)
            elif i % 10 == 5:
                w.marker(f"chapter {i // 10}")
            else:
                w.output(f"\x1b[3{i % 8}mline {i}\x1b[0m \x1b[1m{'*' * (i % 7)}\x1b[0m\r\n".encode())
                if i % 9 == 0:
                    w.output(b"\x1b[2;10Hpatched\x1b[8;1H")
        w.close()
    return path


@pytest.mark.parametrize("start", [0.0, 3.2, 11.3, 14.9, 15.0, 22.75, 29.9])
def test_seek_with_and_without_keyframe_shows_the_same(cast: Path, start: float) -> None:
    frames = list(keyframes(cast, every=2.0))
    frame = max((k for k in frames if k.time <= start), key=lambda k: k.time, default=None)
    plain, seeking = FakeTerminal(), FakeTerminal()
    plain.player().play(iter_events(cast), start=start, size=(40, 8))
    if frame is None:
        seeking.player().play(iter_events(cast), start=start, size=(40, 8))
    else:
        seeking.player().play(iter_events(cast, start_offset=frame.offset), start=start, keyframe=frame, size=(40, 8))
    a, b = screen_of(plain.getvalue(), 40, 8), screen_of(seeking.getvalue(), 40, 8)
    assert a.display == b.display
    assert (a.cursor.x, a.cursor.y, a.columns, a.lines) == (0, 9, 50, 10)
    assert (b.cursor.x, b.cursor.y, b.columns, b.lines) == (0, 9, 50, 10)
    assert cells(a) == cells(b)
    # the seek itself takes no time; what follows plays in real time from `start`
    last = "line 59"
    assert plain.shown_at(last) == seeking.shown_at(last) == pytest.approx(max(0.0, 29.5 - start))
    if start > 3:
        assert "EARLY" in plain.getvalue()   # written at 2.0, cleared at 3.0: only a replay from 0 writes it
        assert ("EARLY" in seeking.getvalue()) is (frame is None or frame.time < 2.0)


def test_seek_lands_on_the_screen_at_that_time(cast: Path) -> None:
    term = FakeTerminal([(0.0, "q")])
    frame = next(k for k in keyframes(cast, every=2.0) if k.time >= 10)
    term.player().play(iter_events(cast, start_offset=frame.offset), start=12.2, keyframe=frame, size=(40, 8))
    shown = screen_of(term.getvalue(), 40, 8)
    upto = Terminal(40, 8)
    stream = new_stream(upto)
    for ev in iter_events(cast):
        if ev.time < 12.2 and ev.code == "o":
            stream.feed(ev.data)
    assert shown.display == upto.display
    assert cells(shown) == cells(upto)                   # colours and bold too
    assert "line 24" in "".join(shown.display) and "line 26" not in "".join(shown.display)


def test_keyframe_after_start_is_refused(cast: Path) -> None:
    frame = Keyframe(5.0, 0, 40, 8, "")
    with pytest.raises(ValueError, match="after the start"):
        FakeTerminal().player().play([], start=1.0, keyframe=frame)


def test_from_marker(cast: Path) -> None:
    start = marker_time(iter_events(cast), 2)
    assert start == 7.5
    term = FakeTerminal()
    term.player().play(iter_events(cast), start=start)
    assert term.shown_at("line 14") == 0.0 and term.shown_at("line 16") == pytest.approx(0.5)


# -- a real terminal -------------------------------------------------------------------


def test_terminal_keys_on_a_pty() -> None:
    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        with os.fdopen(os.dup(slave), "r") as stdin, terminal_keys(stdin) as read_key:
            assert read_key is not None
            assert not termios.tcgetattr(slave)[3] & termios.ICANON   # raw: no line editing
            assert read_key(0.01) is None
            os.write(master, b" q")
            assert read_key(1.0) == " "
            assert read_key(1.0) == "q"
        assert termios.tcgetattr(slave) == before                      # restored
    finally:
        os.close(master)
        os.close(slave)


def test_terminal_keys_without_a_tty(tmp_path: Path) -> None:
    path = tmp_path / "stdin"
    path.write_text("")
    with open(path) as stdin, terminal_keys(stdin) as read_key:
        assert read_key is None
