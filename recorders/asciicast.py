"""asciicast v2: the header, an incremental writer, a tolerant reader and a strict validator.

The format is newline-delimited JSON: one header object, then one ``[time, code, data]``
array per line. See docs/asciicast-v2.md for what we write and what the validator forbids.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from .castlines import REDACTED, LineEncoder
from .errors import CastError, RecorderError

__all__ = [
    "REDACTED",
    "Event",
    "Header",
    "Problem",
    "Writer",
    "header_line",
    "iter_events",
    "iter_events_with_offsets",
    "parse_resize",
    "read_header",
    "validate",
]

FLUSH_BYTES = 256 * 1024  # the writer also flushes whenever this much is buffered: writes stay small

KEPT_ENV = ("TERM", "SHELL")
_RESIZE = re.compile(r"([1-9][0-9]{0,5})x([1-9][0-9]{0,5})")


@dataclass(frozen=True)
class Header:
    """The first line of a cast: terminal size and metadata."""

    width: int
    height: int
    timestamp: int | None = None
    idle_time_limit: float | None = None
    command: str | None = None
    title: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    version: int = 2

    def __post_init__(self) -> None:
        # Only TERM and SHELL are kept: anything else in a session's environment may be a secret.
        object.__setattr__(self, "env", {k: self.env[k] for k in KEPT_ENV if k in self.env})

    def to_json(self) -> str:
        """The header as one JSON line (no newline), without the fields that are None or empty."""
        d: dict[str, Any] = {"version": self.version, "width": self.width, "height": self.height}
        for name in ("timestamp", "idle_time_limit", "command", "title"):
            value = getattr(self, name)
            if value is not None:
                d[name] = value
        if self.env:
            d["env"] = self.env
        return json.dumps(d, ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Header:
        """Build a header from a parsed first line; raises CastError on what the spec forbids."""
        problems = _header_problems(d)
        if problems:
            raise CastError("; ".join(problems))
        env = d.get("env") or {}
        return cls(
            width=d["width"], height=d["height"], timestamp=d.get("timestamp"),
            idle_time_limit=d.get("idle_time_limit"), command=d.get("command"), title=d.get("title"),
            env=dict(env), version=d["version"],
        )


class Event(NamedTuple):
    """One event: seconds since the start, a code ("o", "i", "r", "m" or unknown) and its data."""

    time: float
    code: str
    data: str


@dataclass(frozen=True)
class Problem:
    """One thing the validator found wrong, by 1-based line number."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _header_problems(d: object) -> list[str]:
    """What the asciicast v2 spec forbids in a parsed header, as messages (empty if none)."""
    if not isinstance(d, dict):
        return ["header is not a JSON object"]
    out: list[str] = []
    if "version" not in d:
        out.append("header has no version")
    elif d["version"] != 2 or not _is_int(d["version"]):
        out.append(f"unknown version {d['version']!r} (expected 2)")
    for key in ("width", "height"):
        if key not in d:
            out.append(f"header has no {key}")
        elif not _is_int(d[key]) or d[key] <= 0:
            out.append(f"{key} must be a positive integer, not {d[key]!r}")
    if d.get("timestamp") is not None and not _is_int(d["timestamp"]):
        out.append(f"timestamp must be an integer, not {d['timestamp']!r}")
    for key in ("idle_time_limit", "duration"):
        if d.get(key) is not None and not (_is_number(d[key]) and d[key] >= 0):
            out.append(f"{key} must be a non-negative number, not {d[key]!r}")
    for key in ("command", "title"):
        if d.get(key) is not None and not isinstance(d[key], str):
            out.append(f"{key} must be a string, not {d[key]!r}")
    env = d.get("env")
    if env is not None and not (
        isinstance(env, dict) and all(isinstance(v, str) for v in env.values())
    ):
        out.append("env must be an object of strings")
    return out


def parse_resize(data: str) -> tuple[int, int] | None:
    """(cols, rows) from an 'r' event's "COLSxROWS", or None if it is malformed."""
    m = _RESIZE.fullmatch(data)
    return (int(m[1]), int(m[2])) if m else None


class Writer:
    """Incremental writer: events are encoded into an in-memory buffer (cheap, for the hot path); flush() writes them.

    The writer does not own ``file``: close() flushes it but leaves it open. The daemon
    writes through :class:`recorders.remote.RemoteWriter` instead, in a child process.
    """

    def __init__(self, file: BinaryIO, header: Header, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._file = file
        self._clock = clock
        self._start = clock()
        self._encoder = LineEncoder(self._start)
        self._lines: list[bytes] = []
        self._closed = False
        self.failed: str | None = None
        self.on_failure: Callable[[str], None] | None = None
        line = header_line(header)
        file.write(line)
        file.flush()
        self.bytes_written = len(line)
        self.pending = 0
        self._buffered = 0  # bytes held in _lines

    @property
    def elapsed(self) -> float:
        """Seconds since t=0 (the writer's construction)."""
        return self._clock() - self._start

    def _add(self, line: bytes) -> None:
        if not line:
            return
        self._lines.append(line)
        self.pending += 1
        self._buffered += len(line)
        if self._buffered >= FLUSH_BYTES:  # a bounded write now beats a huge one at the next tick
            self.flush()

    def _check(self) -> None:
        if self._closed:
            raise RecorderError("the cast writer is closed")

    def output(self, data: bytes, *, onlcr: bool = False) -> None:
        """Record terminal output ('o'); a UTF-8 sequence split across calls is joined; ``onlcr``: LF shown as CRLF."""
        self._check()
        self._add(self._encoder.output(data, self._clock(), onlcr=onlcr))

    def input(self, data: bytes) -> None:
        """Record keystrokes ('i'), with a decoder of their own."""
        self._check()
        self._add(self._encoder.input(data, self._clock()))

    def input_redacted(self) -> None:
        """Record that keystrokes were typed with echo off, without them."""
        self._check()
        self._add(self._encoder.text("i", REDACTED, self._clock()))

    def resize(self, cols: int, rows: int) -> None:
        """Record a terminal resize ('r' "COLSxROWS")."""
        self._check()
        self._add(self._encoder.text("r", f"{cols}x{rows}", self._clock()))

    def marker(self, label: str) -> None:
        """Record a marker ('m') and flush, so that markers reach the disk promptly."""
        self._check()
        self._add(self._encoder.text("m", label, self._clock()))
        self.flush()

    def flush(self) -> None:
        """Write the buffered lines to the file and flush it (no fsync); an OSError also marks the writer failed."""
        try:
            if self._lines:
                data = b"".join(self._lines)
                self._lines.clear()
                self.pending = 0
                self._buffered = 0
                self._file.write(data)
                self.bytes_written += len(data)
            self._file.flush()
        except OSError as e:
            if self.failed is None:
                self.failed = f"cannot write the recording: {e.strerror or e}"
                if self.on_failure is not None:
                    self.on_failure(self.failed)
            raise

    def close(self) -> None:
        """Emit any pending partial UTF-8 (as replacement characters) and flush; idempotent."""
        if self._closed:
            return
        self._add(self._encoder.final(self._clock()))
        self._closed = True
        self.flush()


def header_line(header: Header) -> bytes:
    """The first line of a cast file, newline included."""
    return (header.to_json() + "\n").encode("utf-8")


def _reject_constant(name: str) -> None:
    raise ValueError(f"bad JSON: {name} is not a JSON number")


def _loads(line: bytes) -> Any:
    """JSON from one line's bytes: strict UTF-8, no NaN/Infinity; ValueError otherwise."""
    try:
        return json.loads(line.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as e:
        raise ValueError("invalid UTF-8") from e
    except RecursionError as e:  # absurdly deep nesting is just bad JSON to us
        raise ValueError("bad JSON: nested too deeply") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"bad JSON: {e.msg} at column {e.colno}") from e


def _event(obj: Any) -> Event | str:
    """An Event from a parsed line, or what is wrong with it."""
    if not isinstance(obj, list) or len(obj) != 3:
        return "event is not a 3-element array"
    t, code, data = obj
    if not _is_number(t) or t < 0:
        return f"time must be a non-negative number, not {t!r}"
    if not isinstance(code, str):
        return f"code must be a string, not {code!r}"
    if not isinstance(data, str):
        return f"data must be a string, not {data!r}"
    return Event(float(t), code, data)


@contextmanager
def _opened(source: Path | str | BinaryIO) -> Iterator[BinaryIO]:
    if isinstance(source, str | Path):
        with open(source, "rb") as f:
            yield f
    else:
        yield source


def read_header(path: Path | str) -> Header:
    """The header of the cast at ``path``; raises CastError if it is missing or invalid."""
    with open(path, "rb") as f:
        line = f.readline()
    if not line.strip():
        raise CastError(f"{path}: line 1: no header")
    try:
        obj = _loads(line)
    except ValueError as e:
        raise CastError(f"{path}: line 1: {e}") from e
    if not isinstance(obj, dict):
        raise CastError(f"{path}: line 1: header is not a JSON object")
    try:
        return Header.from_dict(obj)
    except CastError as e:
        raise CastError(f"{path}: line 1: {e}") from e


def iter_events_with_offsets(
    source: Path | str | BinaryIO, *, start_offset: int | None = None
) -> Iterator[tuple[int, Event]]:
    """Each event with the byte offset of its line (for indexes); see iter_events."""
    with _opened(source) as f:
        if start_offset is None:
            offset = len(f.readline())
            lineno = 1
        else:
            f.seek(start_offset)
            offset = start_offset
            lineno = 0

        def where() -> str:
            return f"line {lineno}" if start_offset is None else f"line {lineno} after byte offset {start_offset}"

        for line in f:
            lineno += 1
            truncated = not line.endswith(b"\n")
            try:
                obj = _loads(line)
            except ValueError as e:
                if truncated:
                    return  # cut mid-write: replay up to the cut
                raise CastError(f"{where()}: {'blank line' if not line.strip() else e}") from e
            ev = _event(obj)
            if isinstance(ev, str):
                if truncated:
                    return
                raise CastError(f"{where()}: {ev}")
            yield offset, ev
            offset += len(line)


def iter_events(source: Path | str | BinaryIO, *, start_offset: int | None = None) -> Iterator[Event]:
    """The events of a cast, after its header (or from ``start_offset``).

    Stops quietly at a truncated final line, so a file cut mid-write replays up to the cut;
    raises CastError("line n: …") on a malformed complete line.
    """
    for _, ev in iter_events_with_offsets(source, start_offset=start_offset):
        yield ev


def validate(path: Path | str) -> list[Problem]:
    """Everything the asciicast v2 spec (and our stricter reading of it) forbids, by line number."""
    problems: list[Problem] = []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    # split() leaves a last element: b"" when the file ends with "\n", the cut line otherwise.
    tail = lines.pop()
    if not lines and not tail:
        return [Problem(1, "empty file (no header)")]
    prev = 0.0
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            problems.append(Problem(n, "blank line"))
            continue
        try:
            obj = _loads(line)
        except ValueError as e:
            problems.append(Problem(n, str(e)))
            continue
        if n == 1:
            problems.extend(Problem(1, m) for m in _header_problems(obj))
            continue
        ev = _event(obj)
        if isinstance(ev, str):
            problems.append(Problem(n, ev))
            continue
        if ev.time < prev:
            problems.append(Problem(n, f"time goes backwards ({ev.time} after {prev})"))
        prev = max(prev, ev.time)
        if ev.code == "r" and parse_resize(ev.data) is None:
            problems.append(Problem(n, f"'r' data must be COLSxROWS with positive integers, not {ev.data!r}"))
    if tail:
        problems.append(Problem(len(lines) + 1, "truncated last line (no newline at the end)"))
    return problems
