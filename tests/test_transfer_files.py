"""The gateway's per-file pieces: the hash of chunks that arrive out of order, and the quarantine's expiry."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from bastion.transfer_files import OrderedHash, Quarantine, QuarantineCopy

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
