"""The recording store: files, index rows, signatures, recovery after a crash, prefixes, retention."""

from __future__ import annotations

import json
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlite_utils
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.audit import AuditStore
from recorders import sidecars
from recorders.asciicast import Header, iter_events, validate
from recorders.errors import NotFound, RecorderError
from recorders.signing import load_signing_key, load_verify_key, signature_ok
from recorders.store import INTERRUPTED_MARKER, STILL_LIVE, RecordingStore

T0 = 1_780_000_000.0  # 2026-05-28 UTC
DAY = 86400.0


class Clock:
    """A hand-driven clock for the store (wall) and its writers (monotonic)."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db(tmp_path: Path) -> sqlite_utils.Database:
    return sqlite_utils.Database(tmp_path / "audit.db")


@pytest.fixture
def store(tmp_path: Path, db: sqlite_utils.Database, key: Ed25519PrivateKey, clock: Clock) -> RecordingStore:
    return RecordingStore(tmp_path / "recordings", db, signing_key=key, clock=clock, monotonic=clock)


def record(store: RecordingStore, clock: Clock, session_id: str, *, user: str = "alice", target: str = "pg-prod",
           close: bool = True) -> None:
    """A short shell session: a prompt, `echo hello` typed and echoed, its output."""
    rec = store.open(session_id, user=user, target=target, header=Header(80, 24, title="t"), started=clock.t)
    w = rec.writer
    w.output(b"$ ")
    for ch in b"echo hello":
        clock.t += 0.1
        w.input(bytes([ch]))
        w.output(bytes([ch]))
    clock.t += 0.2
    w.input(b"\r")
    w.output(b"\r\nhello\r\n$ ")
    w.resize(100, 30)
    clock.t += 1
    w.marker("target connected")
    if close:
        rec.close(reason="user logged out")
    else:
        w.flush()


def test_open_close_writes_file_row_and_signature(store: RecordingStore, clock: Clock, key: Ed25519PrivateKey,
                                                  tmp_path: Path) -> None:
    record(store, clock, "s-0001")
    info = store.get("s-0001")
    path = store.path(info)
    assert path == tmp_path / "recordings" / "2026" / "05" / "28" / "s-0001.cast"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for d in (path.parent, path.parent.parent, path.parent.parent.parent, tmp_path / "recordings"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert (info.status, info.user, info.target, info.title) == ("closed", "alice", "pg-prod", "t")
    assert info.bytes == path.stat().st_size and info.ended == pytest.approx(clock.t)
    assert signature_ok(key.public_key(), info.signature or "", info.session_id, info.sha256 or "",
                        info.bytes or 0, info.ended or 0)
    assert store.verify(info) == []
    assert validate(path) == []
    events = list(iter_events(path))
    assert events[-1].code == "m" and events[-1].data == "session ended: user logged out"
    assert sidecars.transcript_path(path).exists() and sidecars.index_path(path).exists()
    assert any("hello" == text for _, text in sidecars.read_transcript(sidecars.transcript_path(path)))


def test_close_is_idempotent(store: RecordingStore, clock: Clock) -> None:
    rec = store.open("s-idem", user="bob", target=None, header=Header(80, 24), started=clock.t)
    rec.writer.output(b"hi\r\n")
    first = rec.close()
    clock.t += 60
    assert rec.close() == first
    assert store.get("s-idem") == first


def test_open_refuses_unsafe_ids_and_duplicates(store: RecordingStore, clock: Clock) -> None:
    for bad in ("../escape", "", ".hidden", "a/b"):
        with pytest.raises(RecorderError):
            store.open(bad, user="u", target=None, header=Header(80, 24))
    record(store, clock, "dup")
    with pytest.raises(RecorderError, match="already exists"):
        store.open("dup", user="u", target=None, header=Header(80, 24), started=T0)


@pytest.mark.parametrize("damage, expected", [
    ("flip", "hash mismatch"),
    ("truncate", "size mismatch"),
])
def test_verify_catches_a_damaged_file(store: RecordingStore, clock: Clock, damage: str, expected: str) -> None:
    record(store, clock, "s-bad")
    info = store.get("s-bad")
    path = store.path(info)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        del data[-10:]
    path.write_bytes(bytes(data))
    problems = store.verify(info)
    assert any(expected in p for p in problems), problems


def test_verify_catches_a_signature_from_another_key(tmp_path: Path, db: sqlite_utils.Database,
                                                     clock: Clock, key: Ed25519PrivateKey) -> None:
    forger = RecordingStore(tmp_path / "recordings", db, signing_key=Ed25519PrivateKey.generate(),
                            clock=clock, monotonic=clock)
    record(forger, clock, "s-forged")
    auditor = RecordingStore(tmp_path / "recordings", db, verify_key=key.public_key())
    problems = auditor.verify(auditor.get("s-forged"))
    assert problems == ["bad signature: not made by the audit key over this index row"]


def test_verify_catches_an_edited_index_row(store: RecordingStore, clock: Clock, db: sqlite_utils.Database) -> None:
    record(store, clock, "s-row")
    db.table("recordings").update("s-row", {"ended": T0 + 999})
    assert any("bad signature" in p for p in store.verify(store.get("s-row")))


def test_unsigned_and_live_recordings(tmp_path: Path, db: sqlite_utils.Database, clock: Clock) -> None:
    unsigned = RecordingStore(tmp_path / "recordings", db, clock=clock, monotonic=clock)
    record(unsigned, clock, "s-unsigned")
    assert unsigned.verify(unsigned.get("s-unsigned")) == ["not signed"]
    record(unsigned, clock, "s-live", close=False)
    assert unsigned.verify(unsigned.get("s-live")) == [STILL_LIVE]


def test_recover_marks_a_file_cut_mid_line_interrupted_and_it_verifies(
        tmp_path: Path, db: sqlite_utils.Database, clock: Clock, key: Ed25519PrivateKey) -> None:
    crashed = RecordingStore(tmp_path / "recordings", db, signing_key=key, clock=clock, monotonic=clock)
    record(crashed, clock, "s-crash", close=False)
    path = crashed.path(crashed.get("s-crash"))
    last = list(iter_events(path))[-1].time
    with open(path, "ab") as f:
        f.write(b'[12.5, "o", "half a li')  # the kill came mid-write
    clock.t += 3600  # the daemon comes back an hour later
    restarted = RecordingStore(tmp_path / "recordings", db, signing_key=key, clock=clock, monotonic=clock)
    assert restarted.recover() == ["s-crash"]
    info = restarted.get("s-crash")
    assert info.status == "interrupted"
    assert info.ended == pytest.approx(T0 + last)
    events = list(iter_events(path))
    assert events[-1] == (last, "m", INTERRUPTED_MARKER)
    assert b"half a li" not in path.read_bytes()
    assert restarted.verify(info) == []
    assert restarted.recover() == []


def test_recover_of_a_file_with_only_a_header(store: RecordingStore, clock: Clock) -> None:
    store.open("s-empty", user="u", target=None, header=Header(80, 24), started=clock.t)
    assert store.recover() == ["s-empty"]
    info = store.get("s-empty")
    events = list(iter_events(store.path(info)))
    assert events == [(0.0, "m", INTERRUPTED_MARKER)] and store.verify(info) == []


def test_get_resolves_unique_prefixes(store: RecordingStore, clock: Clock) -> None:
    for sid in ("abc111", "abc222", "abd333"):
        record(store, clock, sid)
    assert store.get("abd").session_id == "abd333"
    assert store.get("abc111").session_id == "abc111"
    with pytest.raises(NotFound, match=r"'abc' is ambiguous: it matches .*abc111.*abc222|abc222.*abc111"):
        store.get("abc")
    with pytest.raises(NotFound, match="no recording matches 'zzz'"):
        store.get("zzz")
    with pytest.raises(NotFound):
        store.get("")
    with pytest.raises(NotFound):
        store.get("a%")  # LIKE wildcards are not wildcards here


def test_list_filters_newest_first(store: RecordingStore, clock: Clock) -> None:
    record(store, clock, "old", user="alice", target="pg")
    clock.t += DAY
    record(store, clock, "mid", user="bob", target="pg")
    clock.t += DAY
    record(store, clock, "new", user="alice", target="k8s", close=False)
    assert [i.session_id for i in store.list()] == ["new", "mid", "old"]
    assert [i.session_id for i in store.list(user="alice")] == ["new", "old"]
    assert [i.session_id for i in store.list(target="pg", since=T0 + DAY / 2)] == ["mid"]
    assert [i.session_id for i in store.list(until=T0 + DAY / 2)] == ["old"]
    assert [i.session_id for i in store.list(status="live")] == ["new"]


def test_prune_skips_holds_and_live(store: RecordingStore, clock: Clock, tmp_path: Path) -> None:
    record(store, clock, "old-closed")
    record(store, clock, "old-held")
    record(store, clock, "old-live", close=False)
    store.hold("old-held", "litigation #12")
    clock.t += 100 * DAY
    record(store, clock, "recent")
    doomed_path = store.path(store.get("old-closed"))
    assert [i.session_id for i in store.prune(90 * DAY, dry_run=True)] == ["old-closed"]
    assert doomed_path.exists()
    assert [i.session_id for i in store.prune(90 * DAY)] == ["old-closed"]
    assert not doomed_path.exists() and not sidecars.transcript_path(doomed_path).exists()
    assert not sidecars.index_path(doomed_path).exists()
    tombstone = store.get("old-closed")
    assert (tombstone.status, tombstone.pruned_at) == ("pruned", clock.t)
    assert tombstone.sha256 and tombstone.signature  # what was deleted stays provable
    assert {i.session_id for i in store.list() if i.status != "pruned"} == {"old-held", "old-live", "recent"}
    assert store.prune(90 * DAY) == []  # a tombstone is not pruned twice
    held = store.get("old-held")
    assert (held.hold, held.hold_reason) == (1, "litigation #12")
    store.release("old-held")
    assert [i.session_id for i in store.prune(90 * DAY)] == ["old-held"]
    with pytest.raises(RecorderError, match="reason"):
        store.hold("recent", " ")


def test_timeline_reads_the_sessions_audit_events(tmp_path: Path, key: Ed25519PrivateKey, clock: Clock) -> None:
    audit = AuditStore(tmp_path / "audit.db")
    try:
        store = RecordingStore(tmp_path / "recordings", audit.db, signing_key=key, clock=clock, monotonic=clock)
        audit.append("session.start", user="alice", session="s-tl", outcome="allow", ts=T0 - 1)
        audit.append("sql.statement", user="alice", session="s-tl", target="pg", outcome="deny",
                     rule="no-drop", ts=T0 + 5, statement="DROP TABLE x")
        audit.append("session.start", user="bob", session="other", ts=T0 + 2)
        record(store, clock, "s-tl")
        timeline = store.timeline(store.get("s-tl"))
        assert [e["kind"] for e in timeline] == ["session.start", "sql.statement"]
        assert timeline[1]["detail"] == {"statement": "DROP TABLE x"} and timeline[1]["rule"] == "no-drop"
        assert audit.verify_chain().ok  # our table sits beside the chain without touching it
    finally:
        audit.close()


def test_sidecars_are_rebuilt_when_the_cast_changes(store: RecordingStore, clock: Clock) -> None:
    record(store, clock, "s-side")
    path = store.path(store.get("s-side"))
    txt = sidecars.transcript_path(path)
    txt.write_text(txt.read_text().splitlines()[0] + "\n0.000000\tforged line\n")
    assert [t for _, t in sidecars.transcript(path)] == ["forged line"]  # fresh by its recorded hash
    with open(path, "ab") as f:
        f.write((json.dumps([9.0, "o", "more output\r\n"]) + "\n").encode())
    texts = [t for _, t in sidecars.transcript(path)]
    assert "forged line" not in texts and "$ more output" in texts and "hello" in texts
    idx = sidecars.index_path(path)
    idx.write_text("not json\n")
    assert isinstance(sidecars.keyframe_index(path), list)
    assert json.loads(idx.read_text().splitlines()[0])["format"] == sidecars.INDEX_FORMAT


def test_openssh_key_files_load(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    private = tmp_path / "audit_key"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    public = tmp_path / "audit_key.pub"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH))
    loaded = load_signing_key(private)
    assert loaded.public_key().public_bytes_raw() == load_verify_key(public).public_bytes_raw()
    with pytest.raises(RecorderError, match="cannot"):
        load_verify_key(tmp_path / "missing.pub")
    private.write_text("garbage")
    with pytest.raises(RecorderError, match="cannot load"):
        load_signing_key(private)


@pytest.mark.parametrize("mode", ["background", "lazy"])
def test_sidecars_off_the_close_path(tmp_path: Path, db: sqlite_utils.Database, clock: Clock,
                                     key: Ed25519PrivateKey, mode: str) -> None:
    store = RecordingStore(tmp_path / "recordings", db, signing_key=key, clock=clock, monotonic=clock,
                           sidecars_at_close=mode)  # type: ignore[arg-type]
    record(store, clock, "s-mode")
    store.wait_for_sidecars(10)
    path = store.path(store.get("s-mode"))
    assert sidecars.transcript_path(path).exists() == (mode == "background")
    assert "hello" in [t for _, t in sidecars.transcript(path)]  # lazily built when missing
    assert sidecars.transcript_path(path).exists()


def test_close_and_recover_from_worker_threads(tmp_path: Path, key: Ed25519PrivateKey, clock: Clock) -> None:
    """The daemon seals in asyncio.to_thread; the audit store's connection stays on its own thread."""
    audit = AuditStore(tmp_path / "audit.db")
    try:
        store = RecordingStore(tmp_path / "recordings", audit.db, signing_key=key, clock=clock, monotonic=clock)
        record(store, clock, "s-thread", close=False)
        rec = store.open("s-thread-2", user="u", target=None, header=Header(80, 24), started=clock.t)
        rec.writer.output(b"hello\r\n")
        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(rec.close).result().status == "closed"
            assert pool.submit(store.recover).result() == ["s-thread"]
        assert store.get("s-thread").status == "interrupted" and store.verify(store.get("s-thread-2")) == []
        audit.append("after", session="s-thread")  # the owner's connection is still fine
        assert audit.verify_chain().ok
    finally:
        audit.close()
