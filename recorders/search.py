"""``recorder grep``: a regex over the plain transcripts of many recordings.

The transcript holds what was on screen, so typed text is found too: the shell
echoes it. Each match carries the offset to give ``recorder play --from``.

**Where a match lands.** A transcript line carries the time it was completed
(the cursor left it). The offset is that time minus :data:`MARGIN`, rounded
down to a tenth of a second, so ``play --from OFFSET`` starts half a second
before the line is finished: you see it being typed or printed. Starting at
the completion time itself would miss lines that a burst of output scrolls
away in the same instant.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import sidecars
from .store import LIVE, RecordingInfo, RecordingStore

log = logging.getLogger(__name__)

MARGIN = 0.5  # seconds before a line's completion that play --from starts


@dataclass(frozen=True)
class Match:
    """One matching transcript line."""

    session_id: str
    time: float  # when the line was completed, seconds from the start
    line: str

    @property
    def offset(self) -> float:
        """Where to start playing to see the line appear (see the module docstring)."""
        return play_offset(self.time)


@dataclass
class Stats:
    """What a search read and how long it took."""

    recordings: int = 0
    cast_bytes: int = 0
    seconds: float = 0.0

    @property
    def mb_per_second(self) -> float:
        """Throughput over the recordings' (cast) size, in MB/s (10^6 bytes)."""
        return self.cast_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


def play_offset(completed: float) -> float:
    """Where to start playing (in tenths of a second) to see a line completed at ``completed``."""
    return max(0.0, math.floor((completed - MARGIN) * 10) / 10)


def grep(store: RecordingStore, pattern: re.Pattern[str], recordings: Iterable[RecordingInfo],
         stats: Stats | None = None) -> Iterator[Match]:
    """Every transcript line matching ``pattern``, recording by recording; builds missing sidecars."""
    stats = stats if stats is not None else Stats()
    started = time.perf_counter()
    try:
        for info in recordings:
            path = store.path(info)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                log.warning("recording %s has no file at %s; skipped", info.session_id, path)
                continue
            sealed = info.status != LIVE
            txt = sidecars.fresh_transcript(path, persist=sealed, sealed_sha256=info.sha256 if sealed else None)
            if txt is None:
                lines = matching_lines(pattern, sidecars.compute_transcript(path))
            else:
                lines = search_transcript_file(pattern, txt)
            for t, text in lines:
                yield Match(info.session_id, t, text)
            stats.recordings += 1
            stats.cast_bytes += size
    finally:
        stats.seconds += time.perf_counter() - started


def matching_lines(pattern: re.Pattern[str], lines: Iterable[tuple[float, str]]) -> Iterator[tuple[float, str]]:
    """The ``(time, text)`` lines whose text ``pattern`` matches, line by line."""
    search = pattern.search
    return ((t, text) for t, text in lines if search(text))


# What looks past a line's ends, and so could miss inside a whole file: anchors other than $,
# lookarounds. Such patterns take the line-by-line path.
_LINE_BOUND = re.compile(r"\\A|\\Z|(?<!\[)\^|\(\?[=!<]")


def search_transcript_file(pattern: re.Pattern[str], txt: Path) -> Iterator[tuple[float, str]]:
    """Matching lines of a ``.txt`` sidecar, found by searching the whole file at once.

    A search over the whole text (MULTILINE, so ``$`` ends each line) finds the next candidate;
    only the line it starts in is then checked on its own (so a match across lines, or in the
    time column, is not reported), and the search resumes at the next line. No line is missed:
    a search from a line's start finds a match at or before any match within that line.
    """
    with open(txt, encoding="utf-8", newline="\n") as f:
        f.readline()
        body = f.read()
    if _LINE_BOUND.search(pattern.pattern):
        yield from matching_lines(pattern, sidecars.parse_transcript(body.split("\n")[:-1]))
        return
    search, pos, size = pattern.search, 0, len(body)
    candidate = re.compile(pattern.pattern, pattern.flags | re.MULTILINE).search  # $ at each line's end
    while pos < size and (m := candidate(body, pos)) is not None and m.start() < size:
        begin = body.rfind("\n", 0, m.start()) + 1
        end = body.find("\n", m.start())
        end = size if end < 0 else end
        stamp, _, text = body[begin:end].partition("\t")
        if search(text):
            yield float(stamp), text
        pos = end + 1
