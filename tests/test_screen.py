"""What was on screen: plain lines and keyframes (recorders/screen.py, recorders/vt.py)."""

from __future__ import annotations

import io
import itertools
from pathlib import Path
from typing import Any

import pyte
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recorders.asciicast import Event, Header, Writer, iter_events, iter_events_with_offsets, parse_resize
from recorders.screen import keyframes, plain_lines
from recorders.vt import Terminal, new_stream, render_screen

# Real prompt_toolkit 3.0.53 output: a PromptSession with the shell's coloured prompt on a
# 40x6 Vt100_Output (PROMPT_TOOLKIT_NO_CPR=1), fed one key at a time through a pipe input.
PROMPT = ("\x1b[0;38;5;81;1malice\x1b[0;38;5;244m@\x1b[0;38;5;114;1mlocalhost\x1b[0m>")
SHOW_PROMPT = ("\x1b[?2004h\x1b[?25l\x1b[0m\x1b[?7l\x1b[0m\x1b[J" + PROMPT
               + "\x1b[16D\x1b[17C\x1b[?7h\x1b[0m\x1b[?12l\x1b[?25h")
FIRST_PROMPT = "\x1b[?12l\x1b[?25h\x1b[?2004h\x1b[?1l" + SHOW_PROMPT[len("\x1b[?2004h"):]


def echo(key: str) -> str:
    """What prompt_toolkit writes when one key is typed at the end of the line."""
    return f"\x1b[?25l\x1b[?7l\x1b[0m{key}\x1b[?7h\x1b[0m\x1b[?12l\x1b[?25h"


BACKSPACE = "\x1b[?25l\x1b[?7l\x08\x1b[0m\x1b[K\x1b[?7h\x1b[0m\x1b[?12l\x1b[?25h"


def accept(line: str) -> str:
    """The redraw prompt_toolkit writes on Enter: the whole line, then CR LF."""
    back = f"\x1b[{17 + len(line)}D"
    return (f"\x1b[?25l\x1b[?7l{back}\x1b[0m\x1b[J{PROMPT} {line}{back}\x1b[0m\r\n\x1b[J"
            "\x1b[?7h\x1b[0m\x1b[?12l\x1b[?25h\x1b[?2004l")


def session() -> list[Event]:
    """whoami; whoamx<BS>i; clear; ls (7 lines on a 6-row screen), one key every 0.25 s."""
    out: list[tuple[float, str]] = []
    t = 0.0

    def emit(data: str, dt: float = 0.25) -> None:
        nonlocal t
        t += dt
        out.append((t, data))

    emit(FIRST_PROMPT)
    for line, keys in (("whoami", "whoami"), ("whoami", "whoamx\bi"), ("clear", "clear"), ("ls", "ls")):
        for k in keys:
            emit(BACKSPACE if k == "\b" else echo(k))
        emit(accept(line))
        if line == "whoami":
            emit("alice\r\n", 0.5)
        elif line == "clear":
            emit("\x1b[2J\x1b[0;0H", 0.1)
        else:
            emit("one\r\ntwo\r\nthree\r\nfour\r\nfive\r\nsix\r\nseven\r\n", 0.5)
        if line != "ls":
            emit(SHOW_PROMPT, 0.1)
    return [Event(round(t, 6), "o", d) for t, d in out]


def test_prompt_toolkit_session_lines() -> None:
    events = session()
    enter = [e.time for e in events if e.data.endswith("\x1b[?2004l")]
    outputs = [e.time for e in events if e.data.startswith(("alice\r", "one"))]
    assert list(plain_lines(events, 40, 6)) == [
        (enter[0], "alice@localhost> whoami"),     # echoed char by char: once, at Enter
        (outputs[0], "alice"),
        (enter[1], "alice@localhost> whoami"),     # the typo fixed with backspace is not seen
        (outputs[1], "alice"),
        (enter[2], "alice@localhost> clear"),
        (enter[3], "alice@localhost> ls"),         # the clear screen repeated nothing
        *[(outputs[2], w) for w in ("one", "two", "three", "four", "five", "six", "seven")],
    ]


def test_unfinished_prompt_comes_out_at_the_end() -> None:
    events = [*session(), Event(30.0, "o", SHOW_PROMPT), Event(31.0, "i", "x")]
    assert list(plain_lines(events, 40, 6))[-1] == (31.0, "alice@localhost>")


@pytest.mark.parametrize(("events", "expected"), [
    pytest.param([(1, "progress 10%"), (2, "\rprogress 100%"), (3, "\x1b[2J\x1b[H"), (4, "next\r\n")],
                 [(3, "progress 100%"), (4, "next")], id="carriage return, then clear screen completes the line"),
    pytest.param([(1, "\x1b[31mred\x1b[0m \x1b[1;7mbold reverse\x1b[0m   \r\n")],
                 [(1, "red bold reverse")], id="colours stripped, trailing spaces too"),
    pytest.param([(1, "ok\r\nok\r\n"), (2, "\r\n\r\n"), (3, "ok\r\n")],
                 [(1, "ok"), (1, "ok"), (3, "ok")], id="same text on another row is repeated, blank lines skipped"),
    pytest.param([(1, "abc\x08\x08X\r\n")], [(1, "aXc")], id="backspace"),
    pytest.param([(1, "日本語 ok\r\n")], [(1, "日本語 ok")], id="wide characters"),
    pytest.param([(1, "before\x1b[1;2;3;4A\x1b[5K\x1b[7Jafter\r\n")], [(1, "beforeafter")],
                 id="malformed control sequences do not lose the rest of the event"),
    pytest.param([(1, "one\x1b[?6h\x1b[2dtwo\r\n")], [(1, "two"), (1, "one")],  # "one" is never left by LF
                 id="line position in origin mode without margins (pyte asserts)"),
    pytest.param([(1, "\x1b[2;4r\x1b[4;1Ha\r\nb\r\nc\r\n\x1b[r")], [(1, "a"), (1, "b"), (1, "c")],
                 id="scrolling inside margins"),
    pytest.param([(1, "\x1b[H\x1b[2L"), (2, "\x1b[3;1Hkeep\x1b[1;1H\x1b[M")], [(2, "keep")],
                 id="line insert and delete"),
])
def test_plain_lines(events: list[tuple[float, str]], expected: list[tuple[float, str]]) -> None:
    assert list(plain_lines([Event(float(t), "o", d) for t, d in events], 20, 4)) == expected


def test_resize_keeps_the_cursor_row_and_does_not_repeat() -> None:
    events = [
        Event(1.0, "o", "a\r\nb\r\nc\r\nd\r\ne"),
        Event(2.0, "r", "80x3"),          # drops a and b from the top: the cursor stays on "e"
        Event(2.5, "r", "junk"),          # malformed: ignored
        Event(3.0, "o", "!\r\nf\r\n"),
    ]
    assert list(plain_lines(events, 80, 5)) == [(1.0, "a"), (1.0, "b"), (1.0, "c"), (1.0, "d"),
                                               (3.0, "e!"), (3.0, "f")]


def test_resize_drops_rows_below_the_cursor_first() -> None:
    events = [Event(1.0, "o", "\x1b[4;1Hbottom\x1b[1;1Htop"), Event(2.0, "r", "10x2"), Event(3.0, "i", "q")]
    assert list(plain_lines(events, 20, 4)) == [(2.0, "bottom"), (3.0, "top")]


def test_width_resize_truncates() -> None:
    events = [Event(1.0, "o", "0123456789"), Event(2.0, "r", "4x3"), Event(3.0, "o", "\r\n")]
    assert list(plain_lines(events, 20, 3)) == [(3.0, "0123")]


# -- keyframes ---------------------------------------------------------------------------

PIECES = [
    "hello", "wörld", "日本", "x" * 30, "e\u0301", "\r\n", "\n", "\r", "\b", "\t",
    "\x1b[2J", "\x1b[K", "\x1b[1K", "\x1b[2K", "\x1b[J", "\x1b[1J", "\x1b[2X", "\x1b[3P", "\x1b[2@",
    "\x1b[31m", "\x1b[1;44m", "\x1b[0m", "\x1b[38;5;200m", "\x1b[48;2;10;20;30m", "\x1b[7m", "\x1b[3;4;9m",
    "\x1b[5m", "\x1b[92m", "\x1b[103m", "\x1b[22;27m",
    "\x1b[H", "\x1b[5;10H", "\x1b[A", "\x1b[3B", "\x1b[C", "\x1b[4D", "\x1b[10G", "\x1b[3d",
    "\x1b[2;5r", "\x1b[r", "\x1bM", "\x1bD", "\x1bE", "\x1b[2L", "\x1b[M",
    "\x1b[?25l", "\x1b[?25h", "\x1b[?7l", "\x1b[?7h", "\x1b[4h", "\x1b[4l", "\x1b[?6h", "\x1b[?6l",
    "\x1b[20h", "\x1b[20l", "\x1b]2;title\x07", "\x1b[?1049h", "\x1b[?2004h", "\x1b7", "\x1bH", "\x1b[g", "\x1b[3g",
]


def replay(screen: pyte.Screen, stream: pyte.Stream, events: Any) -> None:
    """Apply 'o' and 'r' events to a screen, as a player on a terminal that obeys resizes."""
    for ev in events:
        if ev.code == "o":
            stream.feed(ev.data)
        elif ev.code == "r" and (size := parse_resize(ev.data)):
            screen.resize(lines=size[1], columns=size[0])


def state(s: pyte.Screen) -> tuple[Any, ...]:
    """Everything about a screen that later output can depend on."""
    saved = s.savepoints[-1] if s.savepoints else None
    return (
        [[s.buffer[y][x] for x in range(s.columns)] for y in range(s.lines)],
        s.cursor.x, s.cursor.y, s.cursor.attrs, s.cursor.hidden, s.margins, sorted(s.mode),
        s.columns, s.lines, sorted(s.tabstops), s.title,
        saved and (saved.cursor.x, saved.cursor.y, saved.cursor.attrs, saved.cursor.hidden, saved.origin, saved.wrap),
    )


def write(path: Path, width: int, height: int, steps: list[tuple[float, str]]) -> None:
    """A cast of output events ('r:COLSxROWS' steps are resizes), times from the deltas."""
    now = [0.0]
    buf = io.BytesIO()
    w = Writer(buf, Header(width=width, height=height), clock=lambda: now[0])
    for dt, data in steps:
        now[0] += dt
        if data.startswith("r:"):
            cols, rows = data[2:].split("x")
            w.resize(int(cols), int(rows))
        else:
            w.output(data.encode())
    w.close()
    path.write_bytes(buf.getvalue())


step_st = st.tuples(
    st.floats(min_value=0.01, max_value=1.0),
    st.one_of(
        st.lists(st.sampled_from(PIECES), min_size=1, max_size=6).map("".join),
        st.tuples(st.integers(5, 50), st.integers(2, 10)).map(lambda s: f"r:{s[0]}x{s[1]}"),
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([(20, 5), (40, 8)]), st.lists(step_st, min_size=1, max_size=40))
def test_replay_from_any_keyframe_equals_replay_from_zero(tmp_path: Path, size: tuple[int, int],
                                                          steps: list[tuple[float, str]]) -> None:
    path = tmp_path / "k.cast"
    write(path, *size, steps)
    frames = list(keyframes(path, every=1.0))
    full = Terminal(*size)
    stream = new_stream(full)
    at_frame: dict[int, tuple[Any, ...]] = {}
    offsets = {k.offset for k in frames}
    for offset, ev in iter_events_with_offsets(path):
        if offset in offsets:
            at_frame[offset] = state(full)
        replay(full, stream, [ev])
    final = state(full)
    for k in frames:
        screen = Terminal(k.width, k.height)
        s = new_stream(screen)
        s.feed(k.ansi)
        assert state(screen) == at_frame[k.offset]
        replay(screen, s, iter_events(path, start_offset=k.offset))
        assert state(screen) == final


def test_keyframe_spacing_by_time_and_by_bytes(tmp_path: Path) -> None:
    path = tmp_path / "s.cast"
    write(path, 80, 24, [(0.5, f"line {i}\r\n") for i in range(40)])   # an event every 0.5 s, up to 20 s
    offsets = {off: ev for off, ev in iter_events_with_offsets(path)}
    frames = list(keyframes(path, every=5.0))
    assert [k.time for k in frames] == [4.5, 9.5, 14.5, 19.5]
    assert all(offsets[k.offset].time == k.time + 0.5 for k in frames)  # offset: the next event's line
    line = len(path.read_bytes().splitlines()[-1]) + 1
    by_bytes = list(keyframes(path, every=1000, max_bytes=200))
    gaps = [b.offset - a.offset for a, b in itertools.pairwise(by_bytes)]
    assert len(by_bytes) == 4 and all(200 <= g < 200 + line for g in gaps)


def test_keyframe_redraws_on_a_plain_pyte_screen(tmp_path: Path) -> None:
    path = tmp_path / "p.cast"
    write(path, 30, 5, [(1.0, "\x1b[1;31mred\x1b[0m plain\r\n\x1b[48;5;22m日本\x1b[0m"), (6.0, "\x1b[3;3Hend")])
    (frame,) = keyframes(path, every=5.0)
    screen = pyte.Screen(30, 5)           # not our Terminal: the redraw is ordinary escape codes
    pyte.Stream(screen).feed(frame.ansi)
    assert screen.display[:2] == ["red plain".ljust(30), "日本".ljust(28)]
    assert screen.buffer[0][0].fg == "red" and screen.buffer[0][0].bold
    assert screen.buffer[1][0].bg == pyte.graphics.FG_BG_256[22]
    assert (screen.cursor.x, screen.cursor.y) == (4, 1)


def test_keyframe_keeps_saved_cursor_and_margins(tmp_path: Path) -> None:
    path = tmp_path / "c.cast"
    write(path, 20, 6, [(1.0, "\x1b[3;4H\x1b[32m\x1b7\x1b[0m\x1b[2;5r\x1b[6;1Hx"), (5.0, "\x1b8saved\x1bD\x1bD\x1bD")])
    (frame,) = keyframes(path, every=2.0)
    full, kf = Terminal(20, 6), Terminal(20, 6)
    replay(full, new_stream(full), iter_events(path))
    s = new_stream(kf)
    s.feed(frame.ansi)
    replay(kf, s, iter_events(path, start_offset=frame.offset))
    assert kf.display == full.display
    assert full.display[1].startswith("   saved")  # restored into the margins, scrolled up once there
    assert kf.buffer[1][3].fg == "green"


def render_of(text: str, width: int = 20, height: int = 4) -> str:
    screen = Terminal(width, height)
    new_stream(screen).feed(text)
    return render_screen(screen)


def test_render_screen_skips_blank_rows() -> None:
    assert "\x1b[2H" not in render_of("a\r\n\r\nc")
    assert "\x1b[3H" in render_of("a\r\n\r\nc")


class PyteDraw(Terminal):
    """Our terminal, but drawing text the way pyte does, character by character."""

    draw = pyte.Screen.draw


text_st = st.lists(st.one_of(st.sampled_from(PIECES), st.text(alphabet=st.characters(max_codepoint=0x7f), max_size=50),
                             st.text(max_size=10)), max_size=30).map("".join)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([(20, 5), (40, 8), (7, 3)]), text_st)
def test_fast_ascii_drawing_matches_pyte(size: tuple[int, int], text: str) -> None:
    ours, theirs = Terminal(*size), PyteDraw(*size)
    new_stream(ours).feed(text)
    new_stream(theirs).feed(text)
    assert state(ours) == state(theirs)
