"""Derived files next to a cast: a plain transcript (``.txt``) and a keyframe index (``.idx``).

They make ``recorder grep`` and ``play --from`` fast. Each records, in its first
line, the sha256 of the cast it was built from, and is rebuilt when the cast's
sha256 differs. They are never trusted for verification: the cast is the evidence.

``<id>.txt``: a header line, then one ``TIME<TAB>TEXT`` line per completed screen line.
``<id>.idx``: a JSON header line, then one JSON keyframe per line.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from . import asciicast, screen
from .signing import file_digest

log = logging.getLogger(__name__)

TRANSCRIPT_TAG = "# bastion-transcript-v1 sha256="
INDEX_FORMAT = "bastion-keyframes-v1"


def transcript_path(cast: Path) -> Path:
    """Where the plain transcript of ``cast`` lives."""
    return cast.with_suffix(".txt")


def index_path(cast: Path) -> Path:
    """Where the keyframe index of ``cast`` lives."""
    return cast.with_suffix(".idx")


def compute_transcript(cast: Path) -> Iterator[tuple[float, str]]:
    """The completed screen lines of ``cast`` with their times, rendered from the cast itself."""
    header = asciicast.read_header(cast)
    with open(cast, "rb") as f:
        yield from screen.plain_lines(asciicast.iter_events(f), header.width, header.height)


def _write_atomically(path: Path, lines: Iterable[str]) -> None:
    """Write ``lines`` to ``path`` (0600) through a temporary file, so readers never see half a sidecar."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(lines)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def build_transcript(cast: Path, sha256: str | None = None) -> Path:
    """Write ``<id>.txt`` for ``cast`` and return its path."""
    digest = sha256 or file_digest(cast)[0]
    path = transcript_path(cast)
    body = (f"{t:.6f}\t{text}\n" for t, text in compute_transcript(cast))
    _write_atomically(path, _prepend(f"{TRANSCRIPT_TAG}{digest}\n", body))
    log.debug("built transcript %s", path)
    return path


def build_index(cast: Path, sha256: str | None = None) -> Path:
    """Write ``<id>.idx`` for ``cast`` and return its path."""
    digest = sha256 or file_digest(cast)[0]
    path = index_path(cast)
    head = json.dumps({"format": INDEX_FORMAT, "sha256": digest}) + "\n"
    body = (json.dumps({"time": k.time, "offset": k.offset, "width": k.width, "height": k.height,
                        "ansi": k.ansi}, ensure_ascii=False) + "\n" for k in screen.keyframes(cast))
    _write_atomically(path, _prepend(head, body))
    log.debug("built keyframe index %s", path)
    return path


def build(cast: Path) -> None:
    """Build both sidecars of ``cast``."""
    digest = file_digest(cast)[0]
    build_transcript(cast, digest)
    build_index(cast, digest)


def remove(cast: Path) -> None:
    """Delete the sidecars of ``cast`` if they exist."""
    for path in (transcript_path(cast), index_path(cast)):
        path.unlink(missing_ok=True)


def _prepend(first: str, rest: Iterable[str]) -> Iterator[str]:
    yield first
    yield from rest


def _first_line(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline()
    except FileNotFoundError:
        return None


def _transcript_fresh(path: Path, digest: str) -> bool:
    return _first_line(path) == f"{TRANSCRIPT_TAG}{digest}\n"


def _index_fresh(path: Path, digest: str) -> bool:
    line = _first_line(path)
    try:
        head = json.loads(line) if line else None
    except ValueError:
        return False
    return isinstance(head, dict) and head.get("format") == INDEX_FORMAT and head.get("sha256") == digest


def fresh_transcript(cast: Path, *, persist: bool = True, sealed_sha256: str | None = None) -> Path | None:
    """The ``.txt`` of ``cast`` once it is fresh (rebuilt if stale), or None if stale and not ``persist``.

    ``sealed_sha256``, the hash the store recorded at close, spares hashing the
    whole cast again; sidecars are search aids, and `verify` checks the cast itself.
    """
    path = transcript_path(cast)
    digest = sealed_sha256 or file_digest(cast)[0]
    if _transcript_fresh(path, digest):
        return path
    if not persist:
        return None
    return build_transcript(cast, digest)


def transcript(cast: Path, *, persist: bool = True) -> Iterator[tuple[float, str]]:
    """The transcript of ``cast``: from a fresh ``.txt``, else rebuilt (and written when ``persist``)."""
    path = fresh_transcript(cast, persist=persist)
    yield from compute_transcript(cast) if path is None else read_transcript(path)


def read_transcript(path: Path) -> Iterator[tuple[float, str]]:
    """The ``(time, text)`` lines of a ``.txt`` sidecar, skipping its header line."""
    with open(path, encoding="utf-8", newline="\n") as f:
        f.readline()
        yield from parse_transcript(f)


def parse_transcript(lines: Iterable[str]) -> Iterator[tuple[float, str]]:
    """``(time, text)`` from ``TIME<TAB>TEXT`` lines (with or without their newline)."""
    for line in lines:
        stamp, _, text = line.partition("\t")
        yield float(stamp), text[:-1] if text.endswith("\n") else text


def keyframe_index(cast: Path, *, persist: bool = True, sealed_sha256: str | None = None) -> list[screen.Keyframe]:
    """The keyframes of ``cast``: from a fresh ``.idx``, else rebuilt (and written when ``persist``)."""
    path = index_path(cast)
    digest = sealed_sha256 or file_digest(cast)[0]
    if not _index_fresh(path, digest):
        if not persist:
            return list(screen.keyframes(cast))
        build_index(cast, digest)
    frames = []
    with open(path, encoding="utf-8") as f:
        f.readline()
        for line in f:
            d = json.loads(line)
            frames.append(screen.Keyframe(d["time"], d["offset"], d["width"], d["height"], d["ansi"]))
    return frames


def keyframe_before(frames: list[screen.Keyframe], t: float) -> screen.Keyframe | None:
    """The last keyframe at or before ``t``, if any."""
    best = None
    for frame in frames:
        if frame.time > t:
            break
        best = frame
    return best
