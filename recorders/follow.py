"""``recorder watch``: follow a cast that is still being written, like ``tail -f``.

Only complete lines are parsed: the writer appends whole lines, but a reader
can catch one half-flushed. Once the recording is no longer live, the file is
read one last time (the writer flushes before the index row changes), then
the iterator ends.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from . import asciicast

_CHUNK = 1 << 20


def follow(path: Path, live: Callable[[], bool], *, poll: float = 0.2,
           sleep: Callable[[float], None] = time.sleep) -> Iterator[asciicast.Event]:
    """Every event of the cast at ``path``, then each new one as it is appended, until ``live()`` is false."""
    with open(path, "rb") as f:
        buf = b""
        while not buf.endswith(b"\n"):  # the header: written (and flushed) at once, but be patient
            more = f.readline()
            if not more and not live():
                return
            buf += more
            if not more:
                sleep(poll)
        buf = b""
        ending = False
        while True:
            chunk = f.read(_CHUNK)
            if chunk:
                buf += chunk
                cut = buf.rfind(b"\n") + 1
                if cut:
                    yield from asciicast.iter_events(io.BytesIO(buf[:cut]), start_offset=0)
                    buf = buf[cut:]
                continue
            if ending:
                return
            if not live():
                ending = True  # read once more: what was flushed just before the row changed
                continue
            sleep(poll)
