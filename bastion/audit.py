"""The audit store: issuances, revocations, connections and hash-chained events.

SQLite in WAL mode through sqlite-utils. Each event carries the hash of the one
before it, so deleting or editing a row breaks the chain and ``bastion audit
verify`` says where. Appends run in ``BEGIN IMMEDIATE`` so that the daemon and
an admin CLI on the same host never fork the chain.

``synchronous=NORMAL`` in WAL mode means a commit does not wait for fsync: a
power loss can lose the last moments, never corrupt the chain.

Events on a session's hot path (one per SQL statement) go through
:meth:`AuditStore.defer`: they are chained and written in batches, at the
latest :data:`FLUSH_DELAY` after the first one, and whenever anything else is
appended, read or the store closes. A failed batch stays queued and makes the
next ``defer`` raise, so a session cannot go on unaudited.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlite_utils

from .errors import AuditError

log = logging.getLogger(__name__)

GENESIS = "0" * 64
SCHEMA_VERSION = 1
FLUSH_DELAY = 0.05      # seconds a deferred event may wait for its batch
BATCH_MAX = 512         # a batch this large is written at once
_GLOB = re.compile(r"[*?\[]")  # a --kind with one of these is a pattern (SQLite GLOB), not an exact kind


@dataclass(frozen=True)
class Event:
    """One audit event as stored."""

    id: int
    ts: float
    kind: str
    user: str | None
    source: str | None
    target: str | None
    session: str | None
    rule: str | None
    outcome: str | None
    detail: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class ChainReport:
    """The result of verifying the event chain."""

    events: int
    broken_at: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.broken_at is None


@dataclass(frozen=True)
class Issuance:
    """What the CA recorded when it signed a certificate."""

    serial: int
    key_id: str
    username: str
    subject: str
    issuer: str
    email: str | None
    groups: tuple[str, ...]
    valid_after: int
    valid_before: int
    client_address: str | None
    cert_sha256: str
    key_fingerprint: str
    issued_at: float = field(default=0.0)


_EVENT_FIELDS = ("ts", "kind", "user", "source", "target", "session", "rule", "outcome", "detail")
_INSERTED = ("id", *_EVENT_FIELDS, "prev_hash", "hash")
_INSERT = f"INSERT INTO events ({', '.join(_INSERTED)}) VALUES ({', '.join('?' * len(_INSERTED))})"


def _encoder(**options: Any) -> Callable[[Any], str]:
    """``json.dumps(obj, **options)`` as a function built once: the same text, at half the cost per call.

    Both on the SQL data path, json.dumps() with options built an encoder per
    call, and ``JSONEncoder.encode`` still builds CPython's C encoder per call;
    this one keeps that C encoder (the very one ``encode`` would use, so the
    chain's canonical form cannot change). No circular check: what is encoded
    here is the bastion's own flat event fields.
    """
    encoder = json.JSONEncoder(check_circular=False, **options)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # an interpreter without the C accelerator: JSONEncoder's own path, same output
        return encoder.encode
    quote = json.encoder.encode_basestring_ascii if encoder.ensure_ascii else json.encoder.encode_basestring
    c_encode = make(None, encoder.default, quote, None, encoder.key_separator, encoder.item_separator,
                    encoder.sort_keys, encoder.skipkeys, encoder.allow_nan)
    return lambda obj: "".join(c_encode(obj, 0))


_canonical = _encoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False)
_detail = _encoder(separators=(",", ":"), sort_keys=True, default=str)


def _event_hash(prev_hash: str, row: dict[str, Any]) -> str:
    canonical = _canonical([prev_hash, row["ts"], row["kind"], row["user"], row["source"], row["target"],
                                   row["session"], row["rule"], row["outcome"], row["detail"]])  # _EVENT_FIELDS
    return hashlib.sha256(canonical.encode()).hexdigest()


class AuditStore:
    """The narrow interface every part of the bastion writes evidence through."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(str(path), isolation_level=None, timeout=10.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as e:
            raise AuditError(f"cannot open audit store {path}: {e}") from e
        self.path = path
        self._conn = conn
        self.db = sqlite_utils.Database(conn)
        self._queue: list[dict[str, Any]] = []   # deferred events, in order, not yet chained
        self._flush_timer: asyncio.TimerHandle | None = None
        self._failure: Exception | None = None   # why the last batch could not be written
        self._migrate()

    def close(self) -> None:
        """Write what is queued, then close the database connection."""
        try:
            self.flush()
        finally:
            self._conn.close()

    def _migrate(self) -> None:
        db = self.db
        db.table("events").create({
            "id": int, "ts": float, "kind": str, "user": str, "source": str, "target": str,
            "session": str, "rule": str, "outcome": str, "detail": str,
            "prev_hash": str, "hash": str,
        }, pk="id", if_not_exists=True)
        db.table("issuances").create({
            "serial": int, "key_id": str, "username": str, "subject": str, "issuer": str,
            "email": str, "groups": str, "valid_after": int, "valid_before": int,
            "client_address": str, "cert_sha256": str, "key_fingerprint": str, "issued_at": float,
        }, pk="serial", if_not_exists=True)
        db.table("revocations").create({
            "serial": int, "revoked_at": float, "revoked_by": str, "reason": str,
        }, pk="serial", if_not_exists=True)
        db.table("connections").create({
            "id": str, "user": str, "source": str, "started": float, "ended": float,
            "outcome": str, "reason": str, "serial": int,
        }, pk="id", if_not_exists=True)
        for table, cols, unique in (
            ("events", ["user"], False), ("events", ["ts"], False), ("events", ["kind"], False),
            ("issuances", ["cert_sha256"], True), ("issuances", ["username"], False),
            ("issuances", ["key_fingerprint"], False),
            ("connections", ["user"], False),
        ):
            db.table(table).create_index(cols, unique=unique, if_not_exists=True)

    # -- events --------------------------------------------------------------

    def append(
        self, kind: str, *, user: str | None = None, source: str | None = None,
        target: str | None = None, session: str | None = None, rule: str | None = None,
        outcome: str | None = None, ts: float | None = None, **detail: Any,
    ) -> Event:
        """Append one event to the chain now (after any deferred ones) and return it as stored."""
        row = _row(kind, user, source, target, session, rule, outcome, ts, detail)
        self.flush()
        self._write([row])
        return _to_event(row)

    def defer(
        self, kind: str, *, user: str | None = None, source: str | None = None,
        target: str | None = None, session: str | None = None, rule: str | None = None,
        outcome: str | None = None, **detail: Any,
    ) -> None:
        """Queue one event for the next batch; raise AuditError while batches cannot be written.

        For the data path: a statement must not wait for a disk transaction of
        its own. The event's time is taken now; its place in the chain when the
        batch is written, in the order events were deferred.
        """
        if self._failure is not None:
            raise AuditError(f"the audit store cannot be written: {self._failure}")
        self._queue.append({"ts": time.time(), "kind": kind, "user": user, "source": source, "target": target,
                            "session": session, "rule": rule, "outcome": outcome, "detail": detail})
        if len(self._queue) >= BATCH_MAX:
            self.flush()
        elif self._flush_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop (a CLI, a test): nothing would flush later
                self.flush()
                return
            self._flush_timer = loop.call_later(FLUSH_DELAY, self._timed_flush)

    @property
    def failure(self) -> Exception | None:
        """Why the last batch could not be written, while that lasts; None when the store takes writes."""
        return self._failure

    def _timed_flush(self) -> None:
        self._flush_timer = None
        try:
            self.flush()
        except AuditError as e:
            log.error("%s; the queued events are kept and retried", e)

    def flush(self) -> None:
        """Write every deferred event, in one transaction; raise AuditError if that fails."""
        if not self._queue or self._conn.in_transaction:
            return  # inside a caller's transaction a rollback would take queued events with it: the timer stays
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        queued = self._queue
        try:
            rows = [_row(q["kind"], q["user"], q["source"], q["target"], q["session"], q["rule"], q["outcome"],
                         q["ts"], q["detail"]) for q in queued]
            self._write(rows)
        except (sqlite3.Error, TypeError, ValueError) as e:
            self._failure = e
            if self._flush_timer is None:
                with contextlib.suppress(RuntimeError):  # retried while a loop runs; else at the next call
                    self._flush_timer = asyncio.get_running_loop().call_later(1.0, self._timed_flush)
            raise AuditError(f"cannot write {len(queued)} audit event(s) to {self.path}: {e}") from e
        del queued[:len(rows)]
        self._failure = None

    def _write(self, rows: list[dict[str, Any]]) -> None:
        """Chain and insert rows in one BEGIN IMMEDIATE transaction; each row gets its id and hashes."""
        with self._immediate():
            last = self._conn.execute("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
            next_id, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
            values = []
            for row in rows:
                row["id"] = next_id
                row["prev_hash"] = prev
                row["hash"] = prev = _event_hash(prev, row)
                values.append([row[c] for c in _INSERTED])
                next_id += 1
            self._conn.executemany(_INSERT, values)

    def events(
        self, *, user: str | None = None, since: float | None = None, kinds: tuple[str, ...] = (),
        session: str | None = None, limit: int | None = None,
    ) -> list[Event]:
        """Events matching every filter given, oldest first; a kind may be a glob such as ``request.*``."""
        self.flush()
        where: list[str] = []
        args: list[Any] = []
        if user is not None:
            where.append("user = ?")
            args.append(user)
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        if kinds:
            # A kind with a glob character (``request.*``) is a pattern; the others match exactly.
            exact = [k for k in kinds if not _GLOB.search(k)]
            patterns = [k for k in kinds if _GLOB.search(k)]
            either = [f"kind IN ({', '.join('?' * len(exact))})"] if exact else []
            either += ["kind GLOB ?"] * len(patterns)
            where.append(f"({' OR '.join(either)})")
            args.extend([*exact, *patterns])
        if session is not None:
            where.append("session = ?")
            args.append(session)
        sql = "SELECT * FROM events" + (f" WHERE {' AND '.join(where)}" if where else "")
        if limit is not None:
            sql = f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT {int(limit)})"
        rows = self.db.query(sql + " ORDER BY id", args)
        return [_to_event(r) for r in rows]

    def verify_chain(self) -> ChainReport:
        """Recompute every event's hash and link; report the first break."""
        self.flush()
        prev, count, expected_id = GENESIS, 0, None
        for row in self.db.query("SELECT * FROM events ORDER BY id"):
            count += 1
            if expected_id is not None and row["id"] != expected_id:
                return ChainReport(count, expected_id, f"event {expected_id} is missing")
            if row["prev_hash"] != prev:
                return ChainReport(count, row["id"], f"event {row['id']} does not link to the event before it")
            if _event_hash(prev, row) != row["hash"]:
                return ChainReport(count, row["id"], f"event {row['id']} was altered (hash mismatch)")
            prev, expected_id = row["hash"], row["id"] + 1
        return ChainReport(count)

    # -- issuances and revocations --------------------------------------------

    def record_issuance(self, issuance: Issuance) -> None:
        """Store what the CA signed."""
        record = {**issuance.__dict__, "groups": json.dumps(list(issuance.groups))}
        self.db.table("issuances").insert(record)

    def issuance_by_cert(self, cert_sha256: str) -> Issuance | None:
        """The issuance record of a certificate blob, or None if this bastion never issued it."""
        rows = list(self.db.query("SELECT * FROM issuances WHERE cert_sha256 = ?", [cert_sha256]))
        return _to_issuance(rows[0]) if rows else None

    def issuance(self, serial: int) -> Issuance | None:
        """The issuance record of a certificate serial, or None if this bastion never issued it."""
        rows = list(self.db.query("SELECT * FROM issuances WHERE serial = ?", [serial]))
        return _to_issuance(rows[0]) if rows else None

    def knows_key(self, fingerprint: str) -> bool:
        """True when this bastion ever certified the public key with this SHA256 fingerprint."""
        rows = self.db.query("SELECT 1 FROM issuances WHERE key_fingerprint = ? LIMIT 1", [fingerprint])
        return bool(list(rows))

    def issuances(self, *, user: str | None = None) -> list[Issuance]:
        """Issuance records, newest first."""
        where = "WHERE username = ?" if user else ""
        rows = self.db.query(f"SELECT * FROM issuances {where} ORDER BY issued_at DESC", [user] if user else [])
        return [_to_issuance(r) for r in rows]

    def revoke(self, serial: int, *, by: str, reason: str, now: float | None = None) -> None:
        """Revoke a certificate serial (idempotent)."""
        self.db.table("revocations").upsert(
            {"serial": serial, "revoked_at": time.time() if now is None else now,
             "revoked_by": by, "reason": reason}, pk="serial")

    def is_revoked(self, serial: int) -> bool:
        """True when the serial is on the revocation list."""
        return bool(list(self.db.query("SELECT 1 FROM revocations WHERE serial = ?", [serial])))

    def revoked_among(self, serials: set[int]) -> set[int]:
        """Which of these serials are revoked (one query, for the live-session watchdog)."""
        if not serials:
            return set()
        marks = ", ".join("?" * len(serials))
        rows = self._conn.execute(f"SELECT serial FROM revocations WHERE serial IN ({marks})", list(serials))
        return {row[0] for row in rows}

    # -- connections ----------------------------------------------------------

    def connection_opened(self, conn_id: str, source: str, now: float) -> None:
        """Record a new TCP connection before authentication."""
        self.db.table("connections").insert({"id": conn_id, "source": source, "started": now, "outcome": "open"})

    def connection_authenticated(self, conn_id: str, user: str, serial: int) -> None:
        """Record who a connection authenticated as."""
        self.db.table("connections").update(conn_id, {"user": user, "serial": serial, "outcome": "authenticated"})

    def connection_closed(self, conn_id: str, outcome: str, reason: str | None, now: float,
                          user: str | None = None) -> None:
        """Record how a connection ended: closed, refused, expired..."""
        updates: dict[str, Any] = {"ended": now, "outcome": outcome, "reason": reason}
        if user is not None:
            updates["user"] = user
        self.db.table("connections").update(conn_id, updates)

    def connections(self, *, user: str | None = None) -> list[dict[str, Any]]:
        """Connection rows, newest first."""
        where = "WHERE user = ?" if user else ""
        return list(self.db.query(f"SELECT * FROM connections {where} ORDER BY started DESC",
                                  [user] if user else []))

    def _immediate(self) -> _Transaction:
        return _Transaction(self._conn)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error; inside a transaction already open, part of it.

    Joining lets a state change (a request approved, say) and its audit event
    commit together, or not at all.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._owner = False

    def __enter__(self) -> None:
        self._owner = not self._conn.in_transaction
        if self._owner:
            self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        if not self._owner:
            return
        if exc_type:
            self._conn.execute("ROLLBACK")
            return
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error:
            # A COMMIT that fails (SQLITE_BUSY) leaves the transaction open: every later write would join it.
            self._conn.execute("ROLLBACK")
            raise


def _row(kind: str, user: str | None, source: str | None, target: str | None, session: str | None,
         rule: str | None, outcome: str | None, ts: float | None, detail: dict[str, Any]) -> dict[str, Any]:
    return {
        "ts": round(time.time() if ts is None else ts, 6), "kind": kind, "user": user,
        "source": source, "target": target, "session": session, "rule": rule, "outcome": outcome,
        "detail": _detail({k: v for k, v in detail.items() if v is not None}),
    }


def _to_event(row: dict[str, Any]) -> Event:
    return Event(
        id=row["id"], ts=row["ts"], kind=row["kind"], user=row["user"], source=row["source"],
        target=row["target"], session=row["session"], rule=row["rule"], outcome=row["outcome"],
        detail=json.loads(row["detail"] or "{}"), prev_hash=row["prev_hash"], hash=row["hash"],
    )


def _to_issuance(row: dict[str, Any]) -> Issuance:
    return Issuance(**{**row, "groups": tuple(json.loads(row["groups"] or "[]"))})


def iter_json(events: list[Event]) -> Iterator[str]:
    """Each event as one line of JSON, for ``bastion audit --json``."""
    for e in events:
        yield json.dumps(e.__dict__, sort_keys=True)
