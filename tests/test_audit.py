"""The audit store: a hash chain that detects edits and deletions, and survives two writers."""

from __future__ import annotations

import itertools
import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from bastion.audit import AuditStore, Issuance


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
