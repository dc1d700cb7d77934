"""Repair of a cast cut by a crash: drop the half-written last line, mark where it stopped.

Reads only the file's tail, so recovering a long recording costs little.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from . import asciicast
from .errors import RecorderError

log = logging.getLogger(__name__)

_TAIL = 1 << 16


def cut_and_mark(path: Path, label: str) -> float | None:
    """Cut a partial last line, then append marker ``label`` at the last event's time; return that time.

    None when not even the header line is complete: there is nothing to append to.
    """
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        start = max(0, size - _TAIL)
        f.seek(start)
        tail = f.read()
        cut = tail.rfind(b"\n")
        while cut < 0 and start > 0:  # a last line longer than the tail: look further back
            start = max(0, start - _TAIL)
            f.seek(start)
            tail = f.read()
            cut = tail.rfind(b"\n")
        end = start + cut + 1
        if end != size:
            f.truncate(end)
            log.warning("cut a partial last line (%d bytes) from %s", size - end, path)
        if end == 0:
            return None  # not even a header line: nothing to append to
        last = _last_time(tail[: cut + 1])
        if last is None:  # no whole event line in the tail: read them all
            last = max((ev.time for ev in _events_quietly(path)), default=0.0)
        f.seek(end)
        f.write((json.dumps([round(last, 6), "m", label], ensure_ascii=False) + "\n").encode())
        return last


def _last_time(complete: bytes) -> float | None:
    """The time of the last event among complete lines: 0.0 when only the header is there, None if unknown."""
    for line in reversed(complete.splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return 0.0
        if isinstance(value, list) and value and isinstance(value[0], int | float):
            return float(value[0])
    return None


def _events_quietly(path: Path) -> Iterator[asciicast.Event]:
    """The events of a damaged cast up to its first malformed line."""
    try:
        yield from asciicast.iter_events(path)
    except RecorderError as e:
        log.warning("%s: %s", path, e)
