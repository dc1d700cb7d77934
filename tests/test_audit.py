"""The audit store: a hash chain that detects edits and deletions, and survives two writers."""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion import audit
from bastion.audit import BATCH_MAX, FLUSH_DELAY, AuditStore, Issuance
from bastion.errors import AuditError


@pytest.fixture
def store(tmp_path: Path) -> AuditStore:
    return AuditStore(tmp_path / "audit.db")


def fill(store: AuditStore, n: int = 5) -> None:
    for i in range(n):
        store.append("shell.command", user="alice", source="127.0.0.1", session="s1", command=f"cmd {i}")


def test_chain_verifies_and_links(store: AuditStore) -> None:
    fill(store)
    events = store.events()
    assert [e.detail["command"] for e in events] == [f"cmd {i}" for i in range(5)]
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(events))
    assert store.verify_chain().ok and store.verify_chain().events == 5


@pytest.mark.parametrize(("sql", "problem"), [
    ("UPDATE events SET user = 'mallory' WHERE id = 3", "event 3 was altered"),
    ("UPDATE events SET detail = '{}' WHERE id = 1", "event 1 was altered"),
    ("DELETE FROM events WHERE id = 2", "event 2 is missing"),
])
def test_tampering_is_found(store: AuditStore, sql: str, problem: str) -> None:
    fill(store)
    raw = sqlite3.connect(store.path)
    raw.execute(sql)
    raw.commit()
    report = store.verify_chain()
    assert not report.ok and report.problem is not None and problem in report.problem


def test_filters(store: AuditStore) -> None:
    store.append("a", user="alice", ts=100.0)
    store.append("b", user="bob", ts=200.0)
    store.append("a", user="alice", ts=300.0)
    assert [e.ts for e in store.events(user="alice")] == [100.0, 300.0]
    assert [e.kind for e in store.events(since=150.0)] == ["b", "a"]
    assert [e.user for e in store.events(kinds=("b",))] == ["bob"]
    assert [e.ts for e in store.events(limit=2)] == [200.0, 300.0]


def _writer(path: str, n: int) -> None:
    s = AuditStore(Path(path))
    for i in range(n):
        s.append("concurrent", n=i)


def test_two_processes_never_fork_the_chain(tmp_path: Path) -> None:
    path = str(tmp_path / "audit.db")
    AuditStore(Path(path)).close()
    procs = [multiprocessing.Process(target=_writer, args=(path, 100)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    report = AuditStore(Path(path)).verify_chain()
    assert report.ok and report.events == 200


def test_issuance_lookup_and_revocation(store: AuditStore) -> None:
    issuance = Issuance(serial=7, key_id="k", username="alice", subject="sub", issuer="iss",
                        email=None, groups=("dev",), valid_after=1, valid_before=2,
                        client_address="127.0.0.1", cert_sha256="ab" * 32,
                        key_fingerprint="SHA256:abc", issued_at=1.0)
    store.record_issuance(issuance)
    assert store.issuance_by_cert("ab" * 32) == issuance
    assert store.issuance_by_cert("cd" * 32) is None
    assert store.knows_key("SHA256:abc") and not store.knows_key("SHA256:other")
    assert not store.is_revoked(7)
    store.revoke(7, by="admin", reason="lost laptop")
    store.revoke(7, by="admin", reason="again")
    assert store.is_revoked(7)


def other_reader(path: Path) -> list[tuple[int, str]]:
    """What another process would see: a connection of its own."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT id, json_extract(detail, '$.sql') FROM events ORDER BY id").fetchall()
    finally:
        conn.close()


def test_deferred_events_are_written_in_a_batch_soon_and_in_order(store: AuditStore) -> None:
    async def main() -> list[tuple[int, str]]:
        for i in range(20):
            store.defer("sql.statement", user="alice", sql=f"SELECT {i}")
        assert other_reader(store.path) == []  # not yet: they wait for their batch
        await asyncio.sleep(FLUSH_DELAY * 4)
        return other_reader(store.path)

    assert asyncio.run(main()) == [(i + 1, f"SELECT {i}") for i in range(20)]
    assert store.verify_chain().ok


def test_append_and_reads_come_after_what_was_deferred(store: AuditStore) -> None:
    async def main() -> None:
        store.defer("sql.statement", user="alice", sql="SELECT 1")
        store.append("session.end", user="alice")
        assert [e.kind for e in store.events()] == ["sql.statement", "session.end"]

    asyncio.run(main())
    assert store.verify_chain().ok


def test_a_full_batch_and_close_write_without_waiting(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "audit.db")

    async def main() -> None:
        for i in range(BATCH_MAX + 3):
            store.defer("sql.statement", sql=f"SELECT {i}")
        assert len(other_reader(store.path)) == BATCH_MAX

    asyncio.run(main())
    store.close()
    assert len(other_reader(tmp_path / "audit.db")) == BATCH_MAX + 3


def test_without_an_event_loop_defer_writes_at_once(store: AuditStore) -> None:
    store.defer("sql.statement", sql="SELECT 1")
    assert other_reader(store.path) == [(1, "SELECT 1")]


def test_a_batch_that_cannot_be_written_stops_further_statements(store: AuditStore) -> None:
    async def main() -> None:
        store.defer("sql.statement", sql="SELECT 1")
        # Another writer holds the write lock longer than the store's busy timeout.
        store._conn.execute("PRAGMA busy_timeout = 50")
        blocker = sqlite3.connect(store.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(AuditError, match="cannot write 1 audit event"):
            store.flush()
        with pytest.raises(AuditError, match="cannot be written"):
            store.defer("sql.statement", sql="SELECT 2")
        blocker.execute("ROLLBACK")
        blocker.close()
        store.flush()  # the queued event was kept, and goes in now
        store.defer("sql.statement", sql="SELECT 3")
        store.flush()

    asyncio.run(main())
    assert other_reader(store.path) == [(1, "SELECT 1"), (2, "SELECT 3")]
    assert store.verify_chain().ok


def test_events_deferred_during_a_joined_transaction_still_get_their_timer(store: AuditStore) -> None:
    async def main() -> list[tuple[int, str]]:
        store.defer("sql.statement", sql="SELECT 1")
        with store._immediate():  # e.g. an approval's transaction, whose own event joins it
            store.append("request.filed", user="alice")
        await asyncio.sleep(FLUSH_DELAY * 4)  # no other activity: only the timer can write the statement
        return other_reader(store.path)

    rows = asyncio.run(main())
    assert (2, "SELECT 1") in rows or (1, "SELECT 1") in rows


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=16)


@settings(max_examples=500)
@given(_JSON_VALUES)
def test_the_reused_encoders_write_exactly_what_json_dumps_writes(value: object) -> None:
    # The chain's hash covers this text: events written before the encoders were reused must still verify.
    assert audit._canonical(value) == json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    assert audit._detail(value) == json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
