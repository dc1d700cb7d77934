"""The gateway's per-file pieces: the hash of chunks that arrive out of order, and the quarantine's expiry."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from bastion import transfer_files
from bastion.transfer_files import UPSTREAM_BLOCK, OrderedHash, Quarantine, QuarantineCopy, Stream
from policies.transfer import Direction

DAY = 86400.0


def chunks(data: bytes, size: int) -> list[tuple[int, bytes]]:
    return [(i, data[i:i + size]) for i in range(0, len(data), size)]


@given(st.binary(min_size=1, max_size=4000), st.integers(1, 300), st.randoms(use_true_random=False))
def test_chunks_shuffled_within_the_window_hash_like_the_file(data: bytes, size: int, rnd: object) -> None:
    parts = chunks(data, size)
    window = [parts[i:i + 4] for i in range(0, len(parts), 4)]
    for group in window:
        rnd.shuffle(group)  # type: ignore[attr-defined]
    digest = OrderedHash(window=len(data))
    for group in window:
        for offset, chunk in group:
            assert digest.feed(offset, chunk)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert digest.size == len(data)


def test_a_rewrite_or_a_gap_leaves_no_digest() -> None:
    rewritten = OrderedHash()
    assert rewritten.feed(0, b"abcd")
    assert not rewritten.feed(2, b"XY")  # back over what was hashed: the bastion can no longer say what went
    assert rewritten.hexdigest() is None
    gap = OrderedHash()
    assert gap.feed(4, b"efgh")
    assert gap.hexdigest() is None and gap.size == 8


def test_a_full_reorder_window_stops_hashing() -> None:
    digest = OrderedHash(window=4)
    assert digest.feed(10, b"abcd")
    assert not digest.feed(20, b"e")
    assert digest.hexdigest() is None


def test_quarantine_copies_are_private_and_purged_after_their_days(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "q")
    now = time.time()
    copy = QuarantineCopy(quarantine.path_for(now, 2, "s-1-upload-a.csv"))
    copy.write(3, b"def")
    copy.write(0, b"abc")
    kept = copy.close(complete=True)
    assert kept.read_bytes() == b"abcdef" and kept.stat().st_mode & 0o777 == 0o600
    assert kept.parent.stat().st_mode & 0o777 == 0o700
    partial = QuarantineCopy(quarantine.path_for(now, 2, "s-2-upload-b.csv")).close(complete=False)
    assert partial.name.endswith(".partial")
    (tmp_path / "q" / "notes").mkdir()
    assert quarantine.purge(now + 1 * DAY) == 0 and kept.exists()
    assert quarantine.purge(now + 2 * DAY) == 1 and not kept.exists()
    assert (tmp_path / "q" / "notes").is_dir()  # not a date: not ours to remove
    assert os.listdir(tmp_path / "q") == ["notes"]


class HostFile:
    """The host's side of one open file, as the gateway sees it (asyncssh's SFTPClientFile: read, write, close).

    Reads are filled as asyncssh's client fills them: whole, or short at the end of the file only.
    """

    def __init__(self, content: bytes = b"") -> None:
        self.content = bytearray(content)
        self.reads: list[tuple[int, int]] = []
        self.writes: list[tuple[int, int]] = []

    async def read(self, size: int, offset: int) -> bytes:
        self.reads.append((offset, size))
        await asyncio.sleep(0)
        return bytes(self.content[offset:offset + size])

    async def write(self, data: bytes, offset: int) -> None:
        self.writes.append((offset, len(data)))
        await asyncio.sleep(0)
        if len(self.content) < offset:
            self.content.extend(bytes(offset - len(self.content)))
        self.content[offset:offset + len(data)] = data

    async def close(self) -> None:
        pass


def stream(direction: Direction, host: HostFile) -> Stream:
    return Stream(direction, "web-1", "/f", time.monotonic(), None, host)  # type: ignore[arg-type]


def download(host: HostFile, request: int = 255 * 1024) -> bytes:
    """The whole file, read front to back in ``request``-byte reads, as a client does; every answer is whole."""
    size = len(host.content)

    async def run() -> bytes:
        down = stream(Direction.DOWNLOAD, host)
        got, offset = [], 0
        while piece := await down.read(offset, request):
            assert len(piece) == min(request, size - offset)  # never short before the end: no re-requests
            got.append(piece)
            offset += len(piece)
        await down.close_upstream()
        return b"".join(got)

    return asyncio.run(run())


@settings(deadline=None, max_examples=40)
@given(st.integers(0, 3 * UPSTREAM_BLOCK + 5000), st.integers(512, 300_000))
def test_reads_front_to_back_return_the_file_whole_from_a_few_large_host_reads(size: int, request: int) -> None:
    content = os.urandom(size)
    host = HostFile(content)
    assert download(host, request) == content
    whole = [offset for offset, length in host.reads if length == UPSTREAM_BLOCK]
    assert all(offset % UPSTREAM_BLOCK == 0 for offset in whole)
    assert len(whole) <= size // UPSTREAM_BLOCK + 2 + transfer_files.READ_AHEAD  # read ahead, not per request
    assert len(host.reads) - len(whole) <= 2  # only the end of the file is asked for again


def test_a_host_that_answers_short_is_asked_for_the_rest() -> None:
    content = os.urandom(3 * UPSTREAM_BLOCK + 99)

    class Capped(HostFile):
        async def read(self, size: int, offset: int) -> bytes:
            return await super().read(min(size, 64 * 1024), offset)  # a host whose read limit is 64 KiB

    assert download(Capped(content)) == content  # short answers are not the end of the file


def test_a_read_that_jumps_starts_over_from_where_the_client_is() -> None:
    content = os.urandom(2 * UPSTREAM_BLOCK)
    host = HostFile(content)

    async def scenario() -> tuple[bytes, bytes, bytes]:
        down = stream(Direction.DOWNLOAD, host)
        first = await down.read(0, 1000)
        later = await down.read(UPSTREAM_BLOCK + 77, 5000)  # forward, inside what was read ahead
        back = await down.read(10, 20)  # backwards: read again from there
        await down.close_upstream()
        return first, later, back

    first, later, back = asyncio.run(scenario())
    assert first == content[:1000] and later == content[UPSTREAM_BLOCK + 77:UPSTREAM_BLOCK + 5077]
    assert back == content[10:30]
    assert host.reads[-1][0] == 10 or (10, UPSTREAM_BLOCK) in host.reads


@settings(deadline=None, max_examples=40)
@given(st.integers(1, 3 * UPSTREAM_BLOCK), st.integers(512, 70_000))
def test_writes_reach_the_host_gathered_into_blocks_and_hashed(size: int, chunk: int) -> None:
    content = os.urandom(size)
    host = HostFile()

    async def upload() -> str | None:
        up = stream(Direction.UPLOAD, host)
        for offset in range(0, size, chunk):
            await up.write(offset, content[offset:offset + chunk])
        await up.flush()
        assert up.hash is not None
        return up.hash.hexdigest()

    assert asyncio.run(upload()) == hashlib.sha256(content).hexdigest()
    assert bytes(host.content) == content
    pieces = -(-size // chunk)
    assert len(host.writes) <= min(pieces, size // UPSTREAM_BLOCK + 1)  # one host write per block, not per chunk


def test_the_hash_runs_off_the_loop_in_batches_and_waits_for_them(monkeypatch: object) -> None:
    monkeypatch.setattr(transfer_files, "HASH_BATCH", 1000)  # type: ignore[attr-defined]
    monkeypatch.setattr(transfer_files, "HASH_BEHIND", 3000)  # type: ignore[attr-defined]
    data = os.urandom(50_000)

    async def scenario() -> str | None:
        digest = OrderedHash()
        for offset in range(0, len(data), 700):
            assert digest.feed(offset, data[offset:offset + 700])
            await digest.caught_up()
            assert digest._jobs_bytes <= 3000  # never more than HASH_BEHIND waits on the thread
        await digest.settled()
        assert not digest._jobs
        return digest.hexdigest()

    assert asyncio.run(scenario()) == hashlib.sha256(data).hexdigest()


class FailingHost(HostFile):
    """A host whose disk fills up on the second write."""

    async def write(self, data: bytes, offset: int) -> None:
        if self.writes:
            self.writes.append((offset, len(data)))
            raise OSError(28, "No space left on device")
        await super().write(data, offset)


def test_a_failed_host_write_fails_every_flush_after_it() -> None:
    host = FailingHost()

    async def scenario() -> list[str]:
        up = stream(Direction.UPLOAD, host)
        failures = []
        for offset in range(0, 3 * UPSTREAM_BLOCK, 64 * 1024):
            try:
                await up.write(offset, bytes(64 * 1024))
            except OSError as e:
                failures.append(f"write: {e.strerror}")
                break
        for _ in range(2):  # e.g. fsetstat, then close: the hole in the host's file is never forgotten
            try:
                await up.flush()
            except OSError as e:
                failures.append(f"flush: {e.strerror}")
        return failures

    failures = asyncio.run(scenario())
    assert failures[-2:] == ["flush: No space left on device"] * 2


def test_a_host_that_answers_long_cannot_shift_the_blocks() -> None:
    content = os.urandom(2 * UPSTREAM_BLOCK + 5)

    class Long(HostFile):
        async def read(self, size: int, offset: int) -> bytes:
            return await super().read(size + 1000, offset)  # more than asked for

    assert download(Long(content)) == content


def test_a_failing_close_is_reported_only_where_it_matters() -> None:
    class Quota(HostFile):
        async def close(self) -> None:
            raise OSError(122, "Disk quota exceeded")  # a deferred write error, reported at close

    async def scenario() -> str:
        await stream(Direction.UPLOAD, Quota()).close_upstream()  # after a failure: ignored, it is reported
        try:
            await stream(Direction.UPLOAD, Quota()).close_upstream(strict=True)  # a finished upload: not ignored
        except OSError as e:
            return str(e.strerror)
        return "no error"

    assert asyncio.run(scenario()) == "Disk quota exceeded"


@settings(deadline=None, max_examples=60)
@given(st.integers(0, 3 * UPSTREAM_BLOCK), st.lists(st.tuples(st.integers(0, 4 * UPSTREAM_BLOCK),
                                                              st.integers(0, 2 * UPSTREAM_BLOCK)), max_size=12))
def test_any_read_anywhere_returns_exactly_the_bytes_there(size: int, reads: list[tuple[int, int]]) -> None:
    content = os.urandom(size)
    host = HostFile(content)

    async def scenario() -> list[tuple[int, int, bytes]]:
        down = stream(Direction.DOWNLOAD, host)
        got = [(offset, length, await down.read(offset, length)) for offset, length in reads]
        await down.close_upstream()
        return got

    for offset, length, piece in asyncio.run(scenario()):
        assert piece == content[offset:offset + length]  # whole, from any offset, after any jump; empty at the end
    assert len({offset for offset, _ in host.reads}) <= 2 * len(reads) * (2 + transfer_files.READ_AHEAD + 2)
