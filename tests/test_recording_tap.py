"""The recording tap: keystrokes are kept when echoed, redacted when not, and stay in order."""

from __future__ import annotations

import io
import json

from recorders.asciicast import REDACTED, Header, Writer
from recorders.tap import SessionTap


class Clock:
    """A hand-turned clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(redact: bool = True) -> tuple[SessionTap, io.BytesIO, Clock]:
    clock = Clock()
    buffer = io.BytesIO()
    writer = Writer(buffer, Header(width=80, height=24), clock=clock)
    return SessionTap(writer, redact_echo_off=redact, clock=clock, echo_window=0.5), buffer, clock


def events(buffer: io.BytesIO) -> list[tuple[str, str]]:
    lines = buffer.getvalue().decode().splitlines()[1:]
    return [(e[1], e[2]) for e in map(json.loads, lines)]


def test_echoed_keystrokes_are_recorded_as_typed() -> None:
    tap, buffer, clock = make()
    for ch in "who":
        tap.input(ch.encode())
        clock.now += 0.01
        tap.output(b"\x1b[0;38;5;81m" + ch.encode() + b"\x1b[0m")  # echo with highlighting around it
    tap.input(b"\r")
    tap.close()
    assert events(buffer) == [("i", "w"), ("o", "\x1b[0;38;5;81mw\x1b[0m"), ("i", "h"),
                              ("o", "\x1b[0;38;5;81mh\x1b[0m"), ("i", "o"), ("o", "\x1b[0;38;5;81mo\x1b[0m"),
                              ("i", "\r")]


def test_unechoed_keystrokes_become_one_redaction_marker() -> None:
    tap, buffer, clock = make()
    tap.output(b"Password: ")
    for ch in "hunter2":
        tap.input(ch.encode())
        clock.now += 0.1
        tap.tick()
    tap.input(b"\r")
    clock.now += 1
    tap.tick()
    tap.output(b"\r\nok\r\n")
    tap.close()
    recorded = events(buffer)
    assert recorded == [("o", "Password: "), ("i", REDACTED), ("i", "\r"), ("o", "\r\nok\r\n")]
    assert "hunter2" not in buffer.getvalue().decode() and "h" not in [d for c, d in recorded if c == "i"]


def test_masked_echo_does_not_reveal_the_keystrokes() -> None:
    tap, buffer, clock = make()
    for ch in "pw":
        tap.input(ch.encode())
        tap.output(b"*")
        clock.now += 1
        tap.tick()
    tap.close()
    assert ("i", "p") not in events(buffer) and ("i", "w") not in events(buffer)
    assert [d for c, d in events(buffer) if c == "i"] == [REDACTED, REDACTED]


def test_control_keys_keep_their_place_behind_held_keystrokes() -> None:
    tap, buffer, _ = make()
    tap.input(b"a")
    tap.input(b"\x03")  # Ctrl-C right behind, before the echo of "a"
    tap.output(b"a")
    tap.close()
    assert events(buffer) == [("i", "a"), ("i", "\x03"), ("o", "a")]


def test_paste_is_kept_when_echoed_in_one_piece() -> None:
    tap, buffer, _ = make()
    tap.input(b"targets --json\r")
    tap.output(b"targets --json\r\n")
    tap.close()
    assert events(buffer)[0] == ("i", "targets --json\r")


def test_redaction_off_records_everything_at_once() -> None:
    tap, buffer, _ = make(redact=False)
    tap.input(b"secret")
    tap.close()
    assert events(buffer) == [("i", "secret")]


def test_close_redacts_what_is_still_held() -> None:
    tap, buffer, _ = make()
    tap.input(b"s3cr3t")
    tap.close()
    assert events(buffer) == [("i", REDACTED)]


def test_sessions_without_a_pty_record_newlines_as_the_terminal_showed_them() -> None:
    clock = Clock()
    buffer = io.BytesIO()
    tap = SessionTap(Writer(buffer, Header(width=80, height=24), clock=clock), onlcr=True, clock=clock)
    tap.output(b"a\nb\r\nc\n")
    tap.close()
    assert events(buffer) == [("o", "a\r\nb\r\nc\r\n")]


def test_markers_and_resizes_pass_through() -> None:
    tap, buffer, _ = make()
    tap.resize(120, 40)
    tap.marker("connect pg-demo: allow by dev-demo")
    tap.close()
    assert events(buffer) == [("r", "120x40"), ("m", "connect pg-demo: allow by dev-demo")]
