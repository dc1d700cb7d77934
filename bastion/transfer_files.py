"""One file crossing the gateway: streamed, hashed as it passes, size-capped, optionally quarantined.

Nothing here holds a whole file: an upload's chunks go to the host as they
arrive (a few writes in flight, as OpenSSH's own clients pipeline them), a
download's are read a few blocks ahead. The sha256 is of the bytes in file
order; a client that writes out of order beyond a small window, or back over
what it wrote, is refused, because the bastion could no longer say what it let
through.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from policies.model import ApprovalRule
from policies.transfer import Direction, TransferSpec

log = logging.getLogger(__name__)

REORDER_WINDOW = 8 * 1024 * 1024  # bytes of out-of-order chunks held for hashing
WRITES_IN_FLIGHT = 16             # upstream writes not yet acknowledged
READ_AHEAD = 8                    # upstream reads started before the client asks


class OrderedHash:
    """The sha256 of a file's bytes, fed as (offset, chunk) pairs that may arrive a little out of order."""

    def __init__(self, window: int = REORDER_WINDOW) -> None:
        self._hash = hashlib.sha256()
        self._window = window
        self._ahead: dict[int, bytes] = {}
        self._ahead_bytes = 0
        self.position = 0   # bytes hashed so far, from offset 0
        self.size = 0       # highest offset + length seen
        self.in_order = True

    def feed(self, offset: int, data: bytes) -> bool:
        """Add a chunk; False (and no digest any more) when it overlaps what came before or the window is full."""
        if not data:
            return self.in_order
        self.size = max(self.size, offset + len(data))
        if not self.in_order:
            return False
        if offset < self.position or offset in self._ahead:
            self.in_order = False
        elif offset > self.position:
            if self._ahead_bytes + len(data) > self._window:
                self.in_order = False
            else:
                self._ahead[offset] = data
                self._ahead_bytes += len(data)
        else:
            self._hash.update(data)
            self.position += len(data)
            while self.position in self._ahead:
                chunk = self._ahead.pop(self.position)
                self._ahead_bytes -= len(chunk)
                self._hash.update(chunk)
                self.position += len(chunk)
        return self.in_order

    def hexdigest(self) -> str | None:
        """The sha256 of bytes 0..size, or None when the chunks did not make one contiguous stream."""
        if not self.in_order or self._ahead or self.position != self.size:
            return None
        return self._hash.hexdigest()


class Quarantine:
    """Copies of transferred files under ``<state>/quarantine/<expiry date>/``, purged once that date passes."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, now: float, days: int, name: str) -> Path:
        """Where a copy kept ``days`` from ``now`` goes; the directory is made 0700."""
        expires = dt.datetime.fromtimestamp(now, dt.UTC).date() + dt.timedelta(days=days)
        directory = self.root / expires.isoformat()
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return directory / name

    def purge(self, now: float) -> int:
        """Remove the directories whose expiry date has passed; how many were removed."""
        today = dt.datetime.fromtimestamp(now, dt.UTC).date()
        removed = 0
        if not self.root.is_dir():
            return 0
        for entry in self.root.iterdir():
            try:
                expired = dt.date.fromisoformat(entry.name) <= today
            except ValueError:
                continue  # not ours: leave it
            if expired and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        return removed


class QuarantineCopy:
    """One copy being written: chunks at their offsets, renamed into place when the transfer ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._partial = path.with_name(path.name + ".partial")
        self._fd: int | None = os.open(self._partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def write(self, offset: int, data: bytes) -> None:
        """Keep a chunk (page cache: no fsync on the hot path)."""
        if self._fd is not None:
            os.pwrite(self._fd, data, offset)

    def close(self, complete: bool) -> Path:
        """Finish the copy: a complete transfer keeps its name, anything else keeps ``.partial``."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if complete:
            os.replace(self._partial, self.path)
            return self.path
        return self._partial


@dataclass
class Stream:
    """The state of one open file: which way, where, how many bytes, the hash, the cap."""

    direction: Direction
    target: str
    path: str                 # inside the target, normalised
    started: float            # monotonic
    cap: int | None           # bytes: the policy's max_size, or an approved upload's exact size
    upstream: asyncssh.SFTPClientFile | None  # None while an upload is only hashed, to file a request
    rule: str = ""                      # the policy that allowed it
    approved: TransferSpec | None = None  # what an approval it runs under covers exactly
    request: str | None = None          # that approval's request, or the one this transfer filed
    held: ApprovalRule | None = None    # an upload hashed only, to file a request under this rule at close
    copy: QuarantineCopy | None = None
    hash: OrderedHash | None = None
    finished: bool = False
    failure: str | None = None

    def __post_init__(self) -> None:
        self.hash = OrderedHash()
        self._writes: set[asyncio.Task[None]] = set()
        self._reads: dict[int, asyncio.Task[bytes]] = {}
        self._next_read: int | None = None

    @property
    def crossed(self) -> int:
        """Bytes that crossed so far (the highest offset reached)."""
        assert self.hash is not None
        return self.hash.size

    def over_cap(self, offset: int, length: int) -> bool:
        """True when a chunk would take the file past its cap."""
        return self.cap is not None and offset + length > self.cap

    # -- uploads ----------------------------------------------------------------

    async def write(self, offset: int, data: bytes) -> None:
        """Hash and keep a chunk, and send it upstream with a few writes in flight; raises an earlier write's error."""
        assert self.hash is not None
        if not self.hash.feed(offset, data):
            raise asyncssh.SFTPFailure("the bastion hashes uploads as they pass, so it accepts files written front "
                                       "to back only (no resume or rewrite); upload the whole file again")
        if self.copy is not None:
            self.copy.write(offset, data)
        if self.upstream is None:
            return
        self._check_writes()
        while len(self._writes) >= WRITES_IN_FLIGHT:
            await asyncio.wait(self._writes, return_when=asyncio.FIRST_COMPLETED)
            self._check_writes()
        task = asyncio.ensure_future(self._write(offset, data))
        self._writes.add(task)

    async def _write(self, offset: int, data: bytes) -> None:
        assert self.upstream is not None
        await self.upstream.write(data, offset)

    def _check_writes(self) -> None:
        for task in [t for t in self._writes if t.done()]:
            self._writes.discard(task)
            error = task.exception()
            if error is not None:
                raise error

    async def flush(self) -> None:
        """Wait for every write in flight; raises the first failure."""
        if self._writes:
            await asyncio.wait(self._writes)
        self._check_writes()

    # -- downloads --------------------------------------------------------------

    async def read(self, offset: int, size: int) -> bytes:
        """A chunk from upstream, reading ahead while the client reads front to back."""
        assert self.upstream is not None
        task = self._reads.pop(offset, None)
        if task is None:
            self._drop_reads()
            task = asyncio.ensure_future(self.upstream.read(size, offset))
        if self._next_read is None or self._next_read <= offset:
            self._next_read = offset + size
        while len(self._reads) < READ_AHEAD:
            ahead = self._next_read
            self._reads[ahead] = asyncio.ensure_future(self.upstream.read(size, ahead))
            self._next_read = ahead + size
        data = await task
        if len(data) < size:
            self._drop_reads()  # short read: the end, or a client that asks again; nothing ahead is right now
        return data

    def _drop_reads(self) -> None:
        for task in self._reads.values():
            _discard(task)
        self._reads.clear()
        self._next_read = None

    async def close_upstream(self) -> None:
        """Stop what is in flight and close the upstream file (errors are the caller's to report)."""
        self._drop_reads()
        for write in self._writes:
            _discard(write)
        self._writes.clear()
        if self.upstream is not None:
            upstream, self.upstream = self.upstream, None
            with contextlib.suppress(asyncssh.Error, OSError):  # closing after a failure: the failure is reported
                await upstream.close()


def _discard(task: asyncio.Future[object] | asyncio.Task[None] | asyncio.Task[bytes]) -> None:
    """Cancel a read or write nobody will wait for; one that already failed has its error taken, so none is lost
    to the loop's "never retrieved" warning (the transfer reports its own failure)."""
    if task.done():
        if not task.cancelled():
            task.exception()
    else:
        task.cancel()
