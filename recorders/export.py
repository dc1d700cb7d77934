"""``recorder export``: a cast that asciinema 2.x plays, or the plain transcript.

asciinema 2.4 plays every event code we write (it shows ``o``, skips ``i`` and
``r`` in raw playback, and pauses on ``m`` when asked), so no code is dropped.
What it cannot take is a malformed line (it crashes) or a blank line (it stops
there), so the copy leaves out both, and a last line cut by a crash.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import BinaryIO, TextIO

from . import sidecars

log = logging.getLogger(__name__)


def _playable(line: bytes) -> bool:
    """An event line asciinema 2.4 can read: ``[number, string, string]``."""
    try:
        event = json.loads(line)
    except ValueError:
        return False
    return (isinstance(event, list) and len(event) == 3 and isinstance(event[0], int | float)
            and not isinstance(event[0], bool) and isinstance(event[1], str) and isinstance(event[2], str))


def export_cast(cast: Path, out: BinaryIO) -> int:
    """Copy ``cast`` to ``out`` line by line, leaving out what asciinema 2.4 cannot read; return lines dropped."""
    dropped = 0
    with open(cast, "rb") as f:
        header = f.readline()
        if not header.endswith(b"\n"):
            header += b"\n"
        out.write(header)
        for line in f:
            if not line.endswith(b"\n"):
                dropped += 1  # cut by a crash mid-line
                break
            if line.strip() and _playable(line):
                out.write(line)
            else:
                dropped += 1
    if dropped:
        log.warning("export of %s left out %d unreadable line(s)", cast, dropped)
    return dropped


def export_text(cast: Path, out: TextIO, *, persist: bool = True) -> None:
    """Write the plain transcript of ``cast``: one screen line per line."""
    for _, text in sidecars.transcript(cast, persist=persist):
        out.write(text + "\n")
