"""asciicast v2: writer, reader and strict validator (recorders/asciicast.py)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recorders.asciicast import (
    REDACTED,
    Event,
    Header,
    Problem,
    Writer,
    iter_events,
    iter_events_with_offsets,
    read_header,
    validate,
)
from recorders.errors import CastError, RecorderError

ASCIINEMA = Path(sys.executable).with_name("asciinema")


class Clock:
    """A settable clock for the writer."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def write_cast(path: Path, steps: list[tuple[float, str, object]], header: Header | None = None) -> None:
    """Write a cast with Writer: each step is (time, method name, argument or None)."""
    clock = Clock(0.0)
    with open(path, "wb") as f:
        w = Writer(f, header or Header(width=80, height=24), clock=clock)
        for t, method, arg in steps:
            clock.now = t
            fn = getattr(w, method)
            if arg is None:
                fn()
            elif isinstance(arg, tuple):
                fn(*arg)
            else:
                fn(arg)
        w.close()


def test_writer_round_trip(tmp_path: Path) -> None:
    env = {"TERM": "xterm-256color", "SHELL": "/bin/bash", "PGPASSWORD": "s3cret"}
    header = Header(width=100, height=30, timestamp=1764412800, idle_time_limit=2.5, command="sql pg-prod",
                    title="alice on pg-prod", env=env)
    path = tmp_path / "a.cast"
    write_cast(path, [
        (0.1234567, "output", b"hello\r\n"),
        (0.5, "input", b"w"),
        (0.4, "output", b"late clock"),          # the clock went back: clamped to 0.5
        (1.0000004, "input_redacted", None),
        (2.0, "resize", (120, 40)),
        (3.0, "marker", "connect pg-prod"),
    ], header)

    assert read_header(path) == header
    assert read_header(path).env == {"TERM": "xterm-256color", "SHELL": "/bin/bash"}
    assert "s3cret" not in path.read_text()
    assert list(iter_events(path)) == [
        Event(0.123457, "o", "hello\r\n"),
        Event(0.5, "i", "w"),
        Event(0.5, "o", "late clock"),
        Event(1.0, "i", REDACTED),
        Event(2.0, "r", "120x40"),
        Event(3.0, "m", "connect pg-prod"),
    ]
    assert validate(path) == []


def test_header_to_json_omits_none_and_empty_env() -> None:
    assert json.loads(Header(width=80, height=24).to_json()) == {"version": 2, "width": 80, "height": 24}
    assert "\n" not in Header(width=80, height=24, title="a\nb").to_json()


def test_header_from_dict_rejects_what_the_spec_forbids() -> None:
    with pytest.raises(CastError, match="width must be a positive integer"):
        Header.from_dict({"version": 2, "width": 0, "height": 24})
    with pytest.raises(CastError, match="unknown version 3"):
        Header.from_dict({"version": 3, "width": 80, "height": 24})
    assert Header.from_dict({"version": 2, "width": 80, "height": 24, "theme": {}, "duration": 1.5}).width == 80


def test_utf8_split_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "u.cast"
    emoji = "😀".encode()
    assert len(emoji) == 4
    write_cast(path, [
        (1.0, "output", "é".encode()[:1]),
        (1.5, "input", b"x"),                    # input has its own decoder: no interference
        (2.0, "output", "é".encode()[1:] + b"!"),
        (3.0, "output", emoji[:1]),
        (4.0, "output", emoji[1:]),
        (5.0, "output", b"bad \xff byte"),
        (6.0, "output", b"\xe2\x82"),            # cut euro sign, pending at close
    ])
    assert list(iter_events(path)) == [
        Event(1.5, "i", "x"),
        Event(2.0, "o", "é!"),
        Event(4.0, "o", "😀"),
        Event(5.0, "o", "bad \ufffd byte"),
        Event(6.0, "o", "\ufffd"),               # emitted by close()
    ]
    assert "😀" in path.read_text(encoding="utf-8")  # ensure_ascii=False: written as UTF-8, not \\u escapes


def test_flush_behaviour(tmp_path: Path) -> None:
    path = tmp_path / "f.cast"
    clock = Clock()
    with open(path, "wb") as f:
        w = Writer(f, Header(width=80, height=24), clock=clock)
        header_size = path.stat().st_size
        assert header_size == w.bytes_written > 0           # the header is on disk at once
        assert path.read_text().endswith("}\n")
        clock.now += 0.25
        assert w.elapsed == pytest.approx(0.25)
        w.output(b"one")
        w.output(b"")                                       # nothing decoded: nothing buffered
        w.input(b"two")
        assert w.pending == 2
        assert path.stat().st_size == header_size            # nothing more until flush
        w.flush()
        assert w.pending == 0
        assert path.stat().st_size == w.bytes_written > header_size
        w.output(b"three")
        w.marker("m1")                                       # a marker flushes
        assert path.stat().st_size == w.bytes_written
        assert w.pending == 0
        w.close()
        w.close()                                            # idempotent
        size = path.stat().st_size
        with pytest.raises(RecorderError, match="closed"):
            w.output(b"after close")
    assert path.stat().st_size == size
    assert [e.data for e in iter_events(path)] == ["one", "two", "three", "m1"]


def test_truncated_file_replays_up_to_the_cut(tmp_path: Path) -> None:
    path = tmp_path / "t.cast"
    write_cast(path, [(1.0, "output", b"first"), (2.0, "output", b"second"), (3.0, "output", "thïrd ok".encode())])
    data = path.read_bytes()
    for cut in (len(data) - 2, len(data) - 5, data.index("ï".encode()) + 1):
        cut_path = tmp_path / f"cut{cut}.cast"
        cut_path.write_bytes(data[:cut])
        assert [e.data for e in iter_events(cut_path)] == ["first", "second"]
        problems = validate(cut_path)
        assert problems == [Problem(4, "truncated last line (no newline at the end)")]
    # cut exactly before the final newline: the last event is complete and still read
    (tmp_path / "nonl.cast").write_bytes(data[:-1])
    assert [e.data for e in iter_events(tmp_path / "nonl.cast")][-1] == "thïrd ok"


def test_reader_raises_on_malformed_complete_line(tmp_path: Path) -> None:
    path = tmp_path / "m.cast"
    path.write_text('{"version": 2, "width": 80, "height": 24}\n[1, "o", "ok"]\n[2, "o"]\n[3, "o", "x"]\n')
    events = iter_events(path)
    assert next(events) == Event(1.0, "o", "ok")
    with pytest.raises(CastError, match=r"^line 3: event is not a 3-element array"):
        next(events)


def test_offsets_point_at_event_lines_and_resume(tmp_path: Path) -> None:
    path = tmp_path / "o.cast"
    write_cast(path, [(float(i), "output", f"ëvent {i}\r\n".encode()) for i in range(1, 6)])
    data = path.read_bytes()
    pairs = list(iter_events_with_offsets(path))
    assert len(pairs) == 5
    for offset, ev in pairs:
        line = data[offset:data.index(b"\n", offset)]
        assert json.loads(line) == [ev.time, ev.code, ev.data]
    third = pairs[2][0]
    assert [e.data for e in iter_events(path, start_offset=third)] == [e.data for _, e in pairs[2:]]
    with open(path, "rb") as f:                      # a binary file object works as a source too
        assert list(iter_events(f)) == [e for _, e in pairs]


HEADER = '{"version": 2, "width": 80, "height": 24}'

VALIDATOR_CASES = [
    # (name, file text, expected (line, message fragment))
    ("empty file", "", (1, "empty file")),
    ("header not json", "{version: 2}\n", (1, "bad JSON")),
    ("header not object", "[2, 80, 24]\n", (1, "header is not a JSON object")),
    ("no version", '{"width": 80, "height": 24}\n', (1, "header has no version")),
    ("unknown version", '{"version": 3, "width": 80, "height": 24}\n', (1, "unknown version 3")),
    ("no width", '{"version": 2, "height": 24}\n', (1, "header has no width")),
    ("zero height", '{"version": 2, "width": 80, "height": 0}\n', (1, "height must be a positive integer")),
    ("float width", '{"version": 2, "width": 80.0, "height": 24}\n', (1, "width must be a positive integer")),
    ("bool width", '{"version": 2, "width": true, "height": 24}\n', (1, "width must be a positive integer")),
    ("float timestamp", '{"version": 2, "width": 80, "height": 24, "timestamp": 1.5}\n', (1, "timestamp")),
    ("env not strings", '{"version": 2, "width": 80, "height": 24, "env": {"TERM": 1}}\n', (1, "env")),
    ("bad json event", HEADER + '\n[1, "o", "a"]\n[2, "o", "b"\n', (3, "bad JSON")),
    ("event object", HEADER + '\n{"t": 1}\n', (2, "not a 3-element array")),
    ("event 4 elements", HEADER + '\n[1, "o", "a", "b"]\n', (2, "not a 3-element array")),
    ("negative time", HEADER + '\n[-1, "o", "a"]\n', (2, "time must be a non-negative number")),
    ("string time", HEADER + '\n["1", "o", "a"]\n', (2, "time must be a non-negative number")),
    ("NaN time", HEADER + '\n[NaN, "o", "a"]\n', (2, "bad JSON")),
    ("backwards", HEADER + '\n[2, "o", "a"]\n[1.5, "o", "b"]\n', (3, "time goes backwards")),
    ("code not string", HEADER + '\n[1, 5, "a"]\n', (2, "code must be a string")),
    ("data not string", HEADER + '\n[1, "o", 5]\n', (2, "data must be a string")),
    ("resize bad", HEADER + '\n[1, "r", "80 by 24"]\n', (2, "'r' data must be COLSxROWS")),
    ("resize zero", HEADER + '\n[1, "r", "0x24"]\n', (2, "'r' data must be COLSxROWS")),
    ("blank line", HEADER + '\n[1, "o", "a"]\n\n[2, "o", "b"]\n', (3, "blank line")),
    ("truncated", HEADER + '\n[1, "o", "a"]\n[2, "o", "b', (3, "truncated last line")),
]


@pytest.mark.parametrize(("name", "text", "expected"), VALIDATOR_CASES, ids=[c[0] for c in VALIDATOR_CASES])
def test_validator_reports_each_forbidden_thing(tmp_path: Path, name: str, text: str,
                                                expected: tuple[int, str]) -> None:
    path = tmp_path / "v.cast"
    path.write_text(text)
    problems = validate(path)
    assert len(problems) == 1, problems
    assert problems[0].line == expected[0]
    assert expected[1] in problems[0].message


def test_validator_invalid_utf8_and_unknown_codes(tmp_path: Path) -> None:
    path = tmp_path / "b.cast"
    path.write_bytes(HEADER.encode() + b'\n[1, "x", "unknown code is fine"]\n[2, "o", "\xff"]\n')
    assert validate(path) == [Problem(3, "invalid UTF-8")]


def test_validator_reports_every_problem_in_order(tmp_path: Path) -> None:
    path = tmp_path / "many.cast"
    path.write_text('{"version": 2, "width": 80}\n[1, "o", "a"]\n[0.5, "o", "b"]\n\n[1, "r", "x"]\n')
    assert [p.line for p in validate(path)] == [1, 3, 4, 5]


events_st = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=5, allow_nan=False),
        st.sampled_from(["output", "input", "input_redacted", "resize", "marker"]),
        st.binary(max_size=12),
        st.text(max_size=8),
        st.integers(min_value=1, max_value=500),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events_st)
def test_writer_output_always_validates(tmp_path: Path, steps: list[tuple[float, str, bytes, str, int]]) -> None:
    clock = Clock(0.0)
    buf = io.BytesIO()
    w = Writer(buf, Header(width=80, height=24, title="t"), clock=clock)
    expected_o = b""
    for delta, method, data, label, n in steps:
        clock.now += delta if n % 7 else -delta  # sometimes the clock steps back
        if method in ("output", "input"):
            getattr(w, method)(data)
            expected_o += data if method == "output" else b""
        elif method == "resize":
            w.resize(n, n % 97 + 1)
        elif method == "marker":
            w.marker(label)
        else:
            w.input_redacted()
        if n % 5 == 0:
            w.flush()
    w.close()
    path = tmp_path / "h.cast"
    path.write_bytes(buf.getvalue())
    assert validate(path) == []
    assert len(buf.getvalue()) == w.bytes_written
    events = list(iter_events(path))
    assert [e.time for e in events] == sorted(e.time for e in events)
    assert all(round(e.time, 6) == e.time for e in events)
    assert "".join(e.data for e in events if e.code == "o") == expected_o.decode("utf-8", "replace")


def _read_all(path: Path) -> None:
    try:
        read_header(path)
    except CastError:
        pass
    try:
        for _ in iter_events(path):
            pass
    except CastError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_validator_or_reader(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "r.cast"
    path.write_bytes(data)
    assert all(isinstance(p, Problem) for p in validate(path))
    _read_all(path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(json_values, min_size=1, max_size=6), st.booleans())
def test_random_json_lines_never_crash_validator_or_reader(tmp_path: Path, values: list[object],
                                                           real_header: bool) -> None:
    lines = [json.dumps(v) for v in values]
    if real_header:
        lines.insert(0, HEADER)
    path = tmp_path / "j.cast"
    path.write_text("\n".join(lines) + "\n")
    problems = validate(path)
    assert all(p.line >= 1 for p in problems)
    _read_all(path)


def test_absurdly_nested_json_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "deep.cast"
    path.write_text(HEADER + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    assert [(p.line, p.message) for p in validate(path)] == [(2, "bad JSON: nested too deeply")]
    with pytest.raises(CastError, match="line 2: bad JSON"):
        list(iter_events(path))


def test_asciinema_cat_plays_what_writer_wrote(tmp_path: Path) -> None:
    if not ASCIINEMA.exists():
        pytest.skip(f"asciinema is not installed next to {sys.executable}")
    path = tmp_path / "cat.cast"
    write_cast(path, [
        (0.1, "output", "\x1b[1;31mhéllo\x1b[0m ".encode()),
        (0.2, "input", b"x"),
        (0.3, "output", "wörld 😀\r\n".encode()),
        (0.4, "resize", (100, 30)),
        (0.5, "marker", "chapter"),
        (0.6, "output", b"bye\r\n"),
    ], Header(width=80, height=24, env={"TERM": "xterm-256color"}))
    assert validate(path) == []
    # a new session has no controlling terminal, so asciinema cannot put one in raw mode
    proc = subprocess.run([str(ASCIINEMA), "cat", str(path)], capture_output=True, timeout=30,
                          start_new_session=True, env={**os.environ, "ASCIINEMA_CONFIG_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == "\x1b[1;31mhéllo\x1b[0m wörld 😀\r\nbye\r\n"


def test_writer_flushes_by_itself_once_a_bounded_amount_is_buffered() -> None:
    import io

    from recorders.asciicast import FLUSH_BYTES, Header, Writer

    buffer = io.BytesIO()
    writer = Writer(buffer, Header(width=80, height=24), clock=lambda: 0.0)
    header_size = len(buffer.getvalue())
    writer.output(b"x" * 1000)
    assert len(buffer.getvalue()) == header_size  # small output waits for the periodic flush
    for _ in range(FLUSH_BYTES // 1000 + 1):
        writer.output(b"x" * 1000)
    assert len(buffer.getvalue()) > header_size + FLUSH_BYTES  # a large output did not wait
    assert writer.pending < FLUSH_BYTES // 1000  # only what came after the last automatic flush
