"""One file crossing the gateway: streamed, hashed as it passes, size-capped, optionally quarantined.

Nothing here holds a whole file: an upload's chunks go to the host as they
arrive (a few writes in flight, as OpenSSH's own clients pipeline them), a
download's are read a few blocks ahead. The sha256 is of the bytes in file
order; a client that writes out of order beyond a small window, or back over
what it wrote, is refused, because the bastion could no longer say what it let
through.

The event loop's thread is the bastion's bottleneck while a file streams (it
decrypts and encrypts every byte, on both hops), so this module keeps work off
it: the sha256 runs on a thread of its own (hashlib releases the GIL), and the
host sees a few large SFTP requests rather than one per 32 KiB client chunk,
because each request and each SSH packet costs the loop the same Python work
whatever its size.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import os
import shutil
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import asyncssh

from policies.model import ApprovalRule
from policies.transfer import Direction, TransferSpec

log = logging.getLogger(__name__)

REORDER_WINDOW = 8 * 1024 * 1024  # bytes of out-of-order chunks held for hashing
HASH_BATCH = 4 * 1024 * 1024      # in-order bytes handed to the hashing thread at once
HASH_BEHIND = 8 * 1024 * 1024     # bytes the hashing thread may lag before the transfer waits for it
UPSTREAM_BLOCK = 224 * 1024       # bytes per SFTP request to the host: under OpenSSH's 255 KiB read/write limit
WRITES_IN_FLIGHT = 8              # upstream writes not yet acknowledged
READ_AHEAD = 4                    # upstream blocks read before the client asks for them
NO_HOLE = 1 << 62                 # where a relayed file's first hole is, for a sparse-file query: nowhere

# How a download's host file is opened: asyncssh's parallel reader would split each block, reassemble it in a
# bytearray and copy it out again; the blocks are already sized for one request each.
READ_BLOCK_SIZE = 0

_hashing: ThreadPoolExecutor | None = None


def _hasher() -> ThreadPoolExecutor:
    """One thread hashes for every transfer: it runs jobs in the order they came, so each file's bytes stay in order."""
    global _hashing
    if _hashing is None:
        _hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bastion-sha256")
    return _hashing


def _update(digest: hashlib._Hash, chunks: list[bytes]) -> None:
    # One update for the batch: hashlib lets go of the GIL while it hashes, and each time this thread wants it
    # back it may wait for the event loop's switch interval (5 ms), so it asks as few times as it can.
    digest.update(chunks[0] if len(chunks) == 1 else b"".join(chunks))


class OrderedHash:
    """The sha256 of a file's bytes, fed as (offset, chunk) pairs that may arrive a little out of order.

    In-order bytes are hashed on the hashing thread, a batch at a time; :meth:`caught_up` lets an async caller
    wait while that thread is far behind, and :meth:`settled` until it is done, before :meth:`hexdigest`.
    """

    def __init__(self, window: int = REORDER_WINDOW) -> None:
        self._hash = hashlib.sha256()
        self._window = window
        self._ahead: dict[int, bytes] = {}
        self._ahead_bytes = 0
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._jobs: deque[tuple[Future[None], int]] = deque()  # batches on the hashing thread, oldest first
        self._jobs_bytes = 0
        self.position = 0   # bytes fed in order so far, from offset 0
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
            self._hash_next(data)
            while self.position in self._ahead:
                chunk = self._ahead.pop(self.position)
                self._ahead_bytes -= len(chunk)
                self._hash_next(chunk)
        return self.in_order

    def _hash_next(self, data: bytes) -> None:
        self.position += len(data)
        self._batch.append(data)
        self._batch_bytes += len(data)
        if self._batch_bytes >= HASH_BATCH:
            self._submit()

    def _submit(self) -> None:
        while self._jobs and self._jobs[0][0].done():
            self._jobs_bytes -= self._jobs.popleft()[1]
        if self._batch:
            job = _hasher().submit(_update, self._hash, self._batch)
            self._jobs.append((job, self._batch_bytes))
            self._jobs_bytes += self._batch_bytes
            self._batch, self._batch_bytes = [], 0

    async def caught_up(self) -> None:
        """Wait while the hashing thread is more than HASH_BEHIND bytes behind (it holds those bytes)."""
        while self._jobs_bytes > HASH_BEHIND:
            await self._oldest_done()

    async def settled(self) -> None:
        """Wait until every byte fed so far is hashed; :meth:`hexdigest` needs it first."""
        self._submit()
        while self._jobs:
            await self._oldest_done()

    async def _oldest_done(self) -> None:
        job, size = self._jobs[0]
        # shield: a cancelled wait must not cancel the batch, or the digest would miss its bytes
        await asyncio.shield(asyncio.wrap_future(job))
        if self._jobs and self._jobs[0][0] is job:
            self._jobs.popleft()
            self._jobs_bytes -= size

    def hexdigest(self) -> str | None:
        """The sha256 of bytes 0..size, or None when the chunks did not make one contiguous stream.

        Call :meth:`settled` first: this never waits for the hashing thread, which other transfers share.
        Bytes not handed to it yet (less than a batch) are hashed here.
        """
        if not self.in_order or self._ahead or self.position != self.size:
            return None
        if self._jobs:
            raise RuntimeError("hexdigest() before settled(): bytes are still being hashed")
        _update(self._hash, self._batch)
        self._batch, self._batch_bytes = [], 0
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
        self._write_error: BaseException | None = None  # the first upstream write that failed: it stays failed
        self._gathered: list[bytes] = []  # contiguous client chunks not yet sent upstream
        self._gathered_at = 0             # their offset
        self._gathered_bytes = 0
        self._blocks: deque[tuple[int, asyncio.Task[bytes]]] = deque()  # upstream reads in file order, from the
        self._next_block = 0                                          # client's offset on; where the next starts
        self._at_end = False                                          # a block came back short: the file ends

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
        """Hash and keep a chunk, and send it upstream in blocks, a few in flight; raises an earlier write's error."""
        assert self.hash is not None
        if not self.hash.feed(offset, data):
            raise asyncssh.SFTPFailure("the bastion hashes uploads as they pass, so it accepts files written front "
                                       "to back only (no resume or rewrite); upload the whole file again")
        await self.hash.caught_up()
        if self.copy is not None:
            self.copy.write(offset, data)
        if self.upstream is None:
            return
        if self._gathered and offset != self._gathered_at + self._gathered_bytes:
            await self._send()  # not contiguous: what was gathered goes first, on its own
        if not self._gathered:
            self._gathered_at = offset
        self._gathered.append(data)
        self._gathered_bytes += len(data)
        if self._gathered_bytes >= UPSTREAM_BLOCK:
            await self._send()

    async def _send(self) -> None:
        """Send the gathered chunks as one upstream write, once fewer than WRITES_IN_FLIGHT are unacknowledged."""
        self._check_writes()
        while len(self._writes) >= WRITES_IN_FLIGHT:
            await asyncio.wait(self._writes, return_when=asyncio.FIRST_COMPLETED)
            self._check_writes()
        chunks, offset = self._gathered, self._gathered_at
        self._gathered, self._gathered_bytes = [], 0
        if not chunks:
            return
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        task = asyncio.ensure_future(self._write(offset, data))
        self._writes.add(task)

    async def _write(self, offset: int, data: bytes) -> None:
        assert self.upstream is not None
        await self.upstream.write(data, offset)

    def _check_writes(self) -> None:
        """Raise the first upstream write's failure, now and every time after: the host's file has a hole."""
        for task in [t for t in self._writes if t.done()]:
            self._writes.discard(task)
            error = task.exception()
            if error is not None and self._write_error is None:
                self._write_error = error
        if self._write_error is not None:
            raise self._write_error

    async def flush(self) -> None:
        """Send what is gathered, wait for every write in flight and for the hash; raises the first failure."""
        assert self.hash is not None
        if self.upstream is not None:
            await self._send()
        if self._writes:
            await asyncio.wait(self._writes)
        await self.hash.settled()
        self._check_writes()

    # -- downloads --------------------------------------------------------------

    async def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` (fewer only at the end of the file), cut from blocks read ahead upstream.

        Clients read front to back in requests of their own size (OpenSSH: 255 KiB), so a request may span
        blocks; it is answered whole, as a short answer would only make the client ask again for the rest.
        """
        self._read_ahead(offset, size)
        parts: list[bytes] = []
        end = offset + size
        for start, task in list(self._blocks):
            if start >= end:
                break
            data = await task
            if end > start and start + len(data) > offset:
                parts.append(data[max(offset - start, 0):end - start])
            if len(data) < UPSTREAM_BLOCK:  # the end of the file: nothing after it is worth reading
                self._end_at(start)
                break
        if self.hash is not None:
            await self.hash.caught_up()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_ahead(self, offset: int, size: int) -> None:
        """Keep the blocks from ``offset`` to READ_AHEAD blocks past ``offset + size`` read or being read."""
        assert self.upstream is not None
        if self._blocks and not self._blocks[0][0] <= offset <= self._next_block:
            self._drop_reads()  # the client jumped: start over from where it is now
        if not self._blocks:
            self._next_block, self._at_end = offset, False
        while self._blocks and self._blocks[0][0] + UPSTREAM_BLOCK <= offset:
            _discard(self._blocks.popleft()[1])  # behind the client: it has moved on
        while not self._at_end and self._next_block < offset + size + READ_AHEAD * UPSTREAM_BLOCK:
            ahead = self._next_block
            self._blocks.append((ahead, asyncio.ensure_future(self._fetch(ahead))))
            self._next_block = ahead + UPSTREAM_BLOCK

    async def _fetch(self, offset: int) -> bytes:
        """One block from the host: whole, or short at the end of the file only.

        The file is opened with asyncssh's parallel reads off (``block_size=0``, see
        :data:`READ_BLOCK_SIZE`): one request per block, and a host that answers a request short (its own
        read limit) is asked again for the rest here.
        """
        assert self.upstream is not None
        data = cast(bytes, await self.upstream.read(UPSTREAM_BLOCK, offset))  # opened with encoding=None
        while data and len(data) < UPSTREAM_BLOCK:
            more = cast(bytes, await self.upstream.read(UPSTREAM_BLOCK - len(data), offset + len(data)))
            if not more:
                break
            data += more
        return data[:UPSTREAM_BLOCK]  # a host that sends more than it was asked for does not shift the blocks

    def _end_at(self, start: int) -> None:
        """The block at ``start`` holds the end of the file: stop reading past it."""
        while self._blocks and self._blocks[-1][0] > start:
            _discard(self._blocks.pop()[1])
        self._next_block, self._at_end = start + UPSTREAM_BLOCK, True

    def _drop_reads(self) -> None:
        for _, task in self._blocks:
            _discard(task)
        self._blocks.clear()
        self._at_end = False

    async def close_upstream(self, *, strict: bool = False) -> None:
        """Stop what is in flight and close the upstream file.

        ``strict``: a failing close raises (a finished upload: the host may report a deferred write error only
        now); otherwise it is ignored (closing after a failure, which is reported already).
        """
        self._drop_reads()
        self._gathered, self._gathered_bytes = [], 0
        for write in self._writes:
            _discard(write)
        self._writes.clear()
        if self.upstream is not None:
            upstream, self.upstream = self.upstream, None
            try:
                await upstream.close()
            except (asyncssh.Error, OSError):
                if strict:
                    raise

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Answer asyncssh's sparse-file query (``ranges@asyncssh.com``): a relayed file is all data, no holes."""
        if whence == os.SEEK_DATA:
            return offset
        if whence == os.SEEK_HOLE:
            return NO_HOLE
        raise asyncssh.SFTPOpUnsupported("a file relayed through the bastion cannot be seeked")


def _discard(task: asyncio.Future[object] | asyncio.Task[None] | asyncio.Task[bytes]) -> None:
    """Cancel a read or write nobody will wait for; one that already failed has its error taken, so none is lost
    to the loop's "never retrieved" warning (the transfer reports its own failure)."""
    if task.done():
        if not task.cancelled():
            task.exception()
    else:
        task.cancel()
