"""Transfer requests: what an approval of a file transfer covers, exactly, and its single use.

A transfer request is an ordinary request (``RequestKind.TRANSFER``) in
:mod:`bastion.approvals`: filed, approved, denied and audited there, with a
time-boxed grant once approved. What it covers (direction and path; for an
upload also size and sha256) is kept next to it, in ``transfer_requests`` of the
same database, and written into its reason so approvers read exactly what they
approve. An approval is used once: the first transfer that matches claims it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from policies import approvals as decide
from policies.approvals import ReasonRequired, Request, RequestKind, State
from policies.model import ApprovalRule
from policies.transfer import TransferSpec, spec_problem

from .approvals import ApprovalRefused, Approvals
from .approvals_db import immediate

REASON_ENV = "BASTION_REASON"  # the client's reason for a transfer request, sent with SetEnv

SCHEMA = """
CREATE TABLE IF NOT EXISTS transfer_requests (
    request_id TEXT PRIMARY KEY,
    requester TEXT NOT NULL,
    target TEXT NOT NULL,
    direction TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER,
    sha256 TEXT,
    used_at REAL
);
CREATE INDEX IF NOT EXISTS transfer_requests_lookup ON transfer_requests (requester, target, direction, path);
"""


@dataclass(frozen=True)
class Standing:
    """What the store holds for one transfer: an approved, unused request that covers it, or one still pending."""

    approved: tuple[Request, TransferSpec] | None = None
    pending: Request | None = None


class TransferRequests:
    """The transfer side of the approvals store."""

    def __init__(self, approvals: Approvals) -> None:
        self.approvals = approvals
        self._conn: sqlite3.Connection = approvals.store.db.conn
        self._conn.executescript(SCHEMA)

    def standing(self, user: str, target: str, asked: TransferSpec, now: float) -> Standing:
        """The approved unused request covering ``asked`` (grant still live), else a pending one for it."""
        rows = self._conn.execute(
            "SELECT request_id, size, sha256 FROM transfer_requests WHERE requester = ? AND target = ? "
            "AND direction = ? AND path = ? AND used_at IS NULL ORDER BY rowid DESC",
            (user, target, asked.direction.value, asked.path)).fetchall()
        pending = None
        for request_id, size, digest in rows:
            request = self.approvals.get(request_id)
            spec = TransferSpec(asked.direction, asked.path, size, digest)
            if request.state is State.PENDING and not decide.is_expired(request, now):
                pending = pending or request
                continue
            grant = self.approvals.grant_of(request_id)
            if request.state is State.APPROVED and grant is not None and grant.active(now) \
                    and spec_problem(spec, asked) is None:
                return Standing(approved=(request, spec))
        return Standing(pending=pending)

    def claim(self, request_id: str, now: float) -> bool:
        """Use an approval once: True for the first caller, False when it was already used."""
        with immediate(self._conn):
            cursor = self._conn.execute(
                "UPDATE transfer_requests SET used_at = ? WHERE request_id = ? AND used_at IS NULL", (now, request_id))
        return cursor.rowcount == 1

    def file(self, rule: ApprovalRule, *, user: str, target: str, spec: TransferSpec, reason: str, policy: str,
             session: str, now: float) -> Request:
        """File a transfer request whose reason states exactly what it covers; raises ApprovalRefused."""
        if rule.reason_required and not reason.strip():
            raise ApprovalRefused(ReasonRequired(
                f"policy {policy} requires a reason for transfer requests to {target}; give one with "
                f"-o SetEnv={REASON_ENV}=\"why\" (sftp, scp and ssh all take it)"))
        stated = spec.describe() + (f": {reason.strip()}" if reason.strip() else "")
        request = self.approvals.file_request(rule, requester=user, target=target, kind=RequestKind.TRANSFER,
                                              reason=stated, now=now, policy=policy, session=session)
        with immediate(self._conn):
            self._conn.execute(
                "INSERT INTO transfer_requests (request_id, requester, target, direction, path, size, sha256) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (request.id, user, target, spec.direction.value, spec.path, spec.size, spec.sha256))
        return request
