"""The approvals tables in the audit database: schema, and rows to and from ``policies.approvals`` values.

The tables live in the same SQLite file as the audit chain (``audit.db``) and are
created idempotently, so the daemon and the admin CLI can each open it first.
A request keeps a JSON snapshot of the approval rule it was filed under: who
may decide it does not change if the configuration does while it waits, and a
process that has no configuration loaded (the admin CLI) decides it the same way.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from policies.approvals import Grant, Request, RequestKind, State, Vote
from policies.model import ApprovalRule, Approvers

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    requester TEXT NOT NULL,
    target TEXT NOT NULL,
    policy TEXT NOT NULL,
    reason TEXT NOT NULL,
    duration REAL NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    state TEXT NOT NULL,
    statement BLOB,
    statement_sha256 TEXT,
    rule TEXT NOT NULL,
    decided_at REAL,
    decided_by TEXT,
    decision_reason TEXT NOT NULL DEFAULT '',
    consumed_at REAL,
    break_glass INTEGER NOT NULL DEFAULT 0,
    reviewed_at REAL,
    reviewed_by TEXT
);
CREATE INDEX IF NOT EXISTS requests_state ON requests (state, expires);
CREATE INDEX IF NOT EXISTS requests_requester ON requests (requester, created);
CREATE INDEX IF NOT EXISTS requests_statement ON requests (requester, target, statement_sha256);
CREATE TABLE IF NOT EXISTS request_votes (
    request_id TEXT NOT NULL REFERENCES requests (id),
    approver TEXT NOT NULL,
    at REAL NOT NULL,
    comment TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (request_id, approver)
);
CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE REFERENCES requests (id),
    kind TEXT NOT NULL,
    user TEXT NOT NULL,
    target TEXT NOT NULL,
    policy TEXT NOT NULL,
    starts REAL NOT NULL,
    ends REAL NOT NULL,
    break_glass INTEGER NOT NULL DEFAULT 0,
    revoked_at REAL,
    revoked_by TEXT,
    revoke_reason TEXT NOT NULL DEFAULT '',
    end_logged INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS grants_user_target ON grants (user, target, ends);
CREATE INDEX IF NOT EXISTS grants_open ON grants (end_logged, ends);
"""


def migrate(conn: sqlite3.Connection) -> None:
    """Create the approvals tables and indexes when they are missing."""
    with immediate(conn):
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction that takes the lock up front, so two processes' read-then-write cannot interleave.

    The audit events of the step are appended inside it (the store joins an open
    transaction), so a transition and its event commit together.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def sha256(statement: bytes | None) -> str | None:
    """The index key of a held statement's exact bytes."""
    return None if statement is None else hashlib.sha256(statement).hexdigest()


def rule_to_json(rule: ApprovalRule) -> str:
    """The snapshot of a rule stored with each request."""
    return json.dumps(asdict(rule), sort_keys=True)


def rule_from_json(text: str) -> ApprovalRule:
    """The rule a request was filed under."""
    data = json.loads(text)
    approvers = data.pop("approvers")
    return ApprovalRule(approvers=Approvers(users=tuple(approvers["users"]), groups=tuple(approvers["groups"])),
                        **data)


def request_row(request: Request, rule: ApprovalRule) -> dict[str, Any]:
    """A new request as a row of ``requests``."""
    return {
        "id": request.id, "kind": request.kind.value, "requester": request.requester, "target": request.target,
        "policy": request.policy, "reason": request.reason, "duration": request.duration,
        "created": request.created, "expires": request.expires, "state": request.state.value,
        "statement": request.statement, "statement_sha256": sha256(request.statement), "rule": rule_to_json(rule),
        "decided_at": request.decided_at, "decided_by": request.decided_by,
        "decision_reason": request.decision_reason, "consumed_at": request.consumed_at,
        "break_glass": int(request.break_glass),
    }


def grant_row(grant: Grant) -> dict[str, Any]:
    """A new grant as a row of ``grants``."""
    return {**asdict(grant), "kind": grant.kind.value, "break_glass": int(grant.break_glass)}


def insert(conn: sqlite3.Connection, table: str, row: dict[str, Any]) -> None:
    """Insert one row; the table and column names are ours, never a caller's."""
    conn.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))


def to_request(row: sqlite3.Row, votes: list[sqlite3.Row]) -> Request:
    """A ``requests`` row and its votes as a Request."""
    return Request(
        id=row["id"], kind=RequestKind(row["kind"]), requester=row["requester"], target=row["target"],
        reason=row["reason"], duration=row["duration"], created=row["created"], expires=row["expires"],
        statement=row["statement"], policy=row["policy"], state=State(row["state"]),
        votes=tuple(Vote(v["approver"], v["at"], v["comment"]) for v in votes),
        decided_at=row["decided_at"], decided_by=row["decided_by"], decision_reason=row["decision_reason"],
        consumed_at=row["consumed_at"], break_glass=bool(row["break_glass"]),
    )


def to_grant(row: sqlite3.Row) -> Grant:
    """A ``grants`` row as a Grant."""
    return Grant(
        id=row["id"], request_id=row["request_id"], kind=RequestKind(row["kind"]), user=row["user"],
        target=row["target"], starts=row["starts"], ends=row["ends"], policy=row["policy"],
        break_glass=bool(row["break_glass"]), revoked_at=row["revoked_at"], revoked_by=row["revoked_by"],
        revoke_reason=row["revoke_reason"],
    )


class Rows:
    """Reads of the approvals tables through one connection; rows come back as ``sqlite3.Row``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def query(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> list[sqlite3.Row]:
        """All rows of a query."""
        cur = self.conn.cursor()
        cur.row_factory = sqlite3.Row
        return cur.execute(sql, args).fetchall()

    def requests(self, where: str, args: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Request, ApprovalRule]]:
        """Requests matching a WHERE clause, oldest first, each with the rule it was filed under."""
        rows = self.query(f"SELECT * FROM requests WHERE {where} ORDER BY created, id", args)
        if not rows:
            return []
        marks = ", ".join("?" * len(rows))
        votes: dict[str, list[sqlite3.Row]] = {}
        for v in self.query(f"SELECT * FROM request_votes WHERE request_id IN ({marks}) ORDER BY at, approver",
                            [r["id"] for r in rows]):
            votes.setdefault(v["request_id"], []).append(v)
        return [(to_request(r, votes.get(r["id"], [])), rule_from_json(r["rule"])) for r in rows]

    def grants(self, where: str, args: tuple[Any, ...] | list[Any] = ()) -> list[Grant]:
        """Grants matching a WHERE clause, oldest first."""
        return [to_grant(r) for r in self.query(f"SELECT * FROM grants WHERE {where} ORDER BY starts, id", args)]
