"""Just-in-time access: requests, approvals, time-boxed grants and held statements, stored and audited.

The decisions are ``policies.approvals``; this module stores their results in
the audit database and writes one audit event per transition. The daemon and
the admin CLI both write here, so every read-decide-write runs inside ``BEGIN
IMMEDIATE``: two approvals, or two uses of one held statement, cannot race.

Each transition's audit event is appended inside the transition's own
transaction, so the two commit together or not at all. A waiter learns of a decision made in this process at
once, and of one made by another process (the admin CLI) within ``poll`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from policies import approvals as decide
from policies.approvals import ApprovalError, Grant, Request, RequestKind, State
from policies.model import ApprovalRule, Identity

from .approvals_db import Rows, grant_row, immediate, insert, migrate, request_row, sha256
from .audit import AuditStore
from .errors import BastionError

log = logging.getLogger(__name__)

POLL = 0.5  # seconds between looks at the database while waiting for another process's decision


class ApprovalRefused(BastionError):
    """A request, approval, denial, cancellation or revocation was refused; ``error`` says which rule refused it."""

    exit_code = 3

    def __init__(self, error: ApprovalError) -> None:
        super().__init__(str(error))
        self.error = error


class UnknownRequest(BastionError):
    """No request or grant has this id."""


@dataclass(frozen=True)
class Change:
    """What a listener hears after a transition commits: the audit kind, the request, the grant if any."""

    kind: str
    request: Request
    grant: Grant | None = None


@dataclass(frozen=True)
class Listing:
    """What ``requests`` shows someone: their own requests, and the pending ones they may decide."""

    mine: list[Request]
    to_decide: list[Request]


@dataclass(frozen=True)
class Expired:
    """What one ``expire_due`` pass ended."""

    requests: list[Request] = field(default_factory=list)
    grants: list[Grant] = field(default_factory=list)


def new_id(prefix: str) -> str:
    """A short random id a person can type: ``r-`` for requests, ``g-`` for grants."""
    return f"{prefix}-{secrets.token_hex(5)}"


class Approvals:
    """Requests, approvals and grants in the audit database, one audit event per transition."""

    def __init__(self, store: AuditStore, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._conn = store.db.conn
        self._rows = Rows(self._conn)
        self._clock = clock  # only wait() reads it: every other method is told the time
        self._listeners: list[Callable[[Change], None]] = []
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        migrate(self._conn)

    # -- listening --------------------------------------------------------------

    def add_listener(self, listener: Callable[[Change], None]) -> None:
        """Call ``listener`` after every transition this process makes (webhooks, shell notification lines)."""
        self._listeners.append(listener)

    def _tell(self, change: Change) -> None:
        for loop, event in self._waiters.get(change.request.id, []):
            loop.call_soon_threadsafe(event.set)
        for listener in self._listeners:
            try:
                listener(change)
            except Exception:  # a broken listener must not undo or hide a committed decision
                log.exception("approvals listener %r failed on %s for request %s",
                              listener, change.kind, change.request.id)

    # -- reading ---------------------------------------------------------------

    def get(self, request_id: str) -> Request:
        """The request with this id."""
        return self._load(request_id)[0]

    def grant(self, grant_id: str) -> Grant:
        """The grant with this id."""
        found = self._rows.grants("id = ?", (grant_id,))
        if not found:
            raise UnknownRequest(f"no grant {grant_id}")
        return found[0]

    def grant_of(self, request_id: str) -> Grant | None:
        """The grant an approved request created, if any."""
        found = self._rows.grants("request_id = ?", (request_id,))
        return found[0] if found else None

    def list_for(self, who: Identity, now: float, *, limit: int = 50) -> Listing:
        """``who``'s own latest requests (newest first), and the live pending ones ``who`` may still approve."""
        mine = [r for r, _ in self._rows.requests(
            "id IN (SELECT id FROM requests WHERE requester = ? ORDER BY created DESC LIMIT ?)", (who.user, limit))]
        pending = self._rows.requests("state = ? AND expires > ?", (State.PENDING.value, now))
        to_decide = [r for r, rule in pending if decide.may_approve(rule, r, who) and who.user not in r.approvers]
        return Listing(mine=mine[::-1], to_decide=to_decide)

    def active_grant(self, user: str, target: str, now: float,
                     kind: RequestKind = RequestKind.ACCESS) -> Grant | None:
        """The live grant that lets ``user`` reach ``target`` now, the one lasting longest; None when there is none."""
        found = self._rows.grants("user = ? AND target = ? AND kind = ? AND revoked_at IS NULL "
                                  "AND starts <= ? AND ends > ?", (user, target, kind.value, now, now))
        return max(found, key=lambda g: g.ends) if found else None

    def grants(self, *, user: str | None = None, active_at: float | None = None) -> list[Grant]:
        """Grants, oldest first: all of them, or one user's, or those live at a time."""
        where: list[str] = ["1"]
        args: list[object] = []
        if user is not None:
            where.append("user = ?")
            args.append(user)
        if active_at is not None:
            where.append("revoked_at IS NULL AND starts <= ? AND ends > ?")
            args += [active_at, active_at]
        return self._rows.grants(" AND ".join(where), args)

    def pending_count(self, now: float) -> int:
        """How many requests wait for a decision and have not expired."""
        row = self._conn.execute("SELECT count(*) FROM requests WHERE state = ? AND expires > ?",
                                 (State.PENDING.value, now)).fetchone()
        return int(row[0])

    def ended_among(self, grant_ids: set[str], now: float) -> set[str]:
        """Which of these grants are over (expired or revoked): one query, for the live-session watchdog."""
        if not grant_ids:
            return set()
        marks = ", ".join("?" * len(grant_ids))
        rows = self._rows.query(f"SELECT id FROM grants WHERE id IN ({marks}) "
                                "AND (revoked_at IS NOT NULL OR ends <= ?)", [*grant_ids, now])
        return {row["id"] for row in rows}

    def latest_statement(self, user: str, target: str, statement: bytes) -> Request | None:
        """The newest request for exactly this statement by this user on this target, whatever its state."""
        found = [r for r, _ in self._rows.requests(
            "requester = ? AND target = ? AND statement_sha256 = ?", (user, target, sha256(statement)))
            if r.statement == statement]
        return found[-1] if found else None

    def break_glass_to_review(self) -> list[Request]:
        """Break-glass uses nobody has reviewed yet, oldest first."""
        return [r for r, _ in self._rows.requests("break_glass = 1 AND reviewed_at IS NULL")]

    def _load(self, request_id: str) -> tuple[Request, ApprovalRule]:
        found = self._rows.requests("id = ?", (request_id,))
        if not found:
            raise UnknownRequest(f"no request {request_id}")
        return found[0]

    # -- filing ------------------------------------------------------------------

    def file_request(
        self, rule: ApprovalRule, *, requester: str, target: str, kind: RequestKind, reason: str, now: float,
        duration: float | None = None, statement: bytes | None = None, policy: str = "", session: str | None = None,
    ) -> Request:
        """File a pending request under ``rule`` (the approval rule of the policy ``decide`` named)."""
        try:
            request = decide.new_request(rule, id=new_id("r"), kind=kind, requester=requester, target=target,
                                         reason=reason, now=now, duration=duration, statement=statement,
                                         policy=policy)
        except ApprovalError as e:
            self.store.append("request.refused", user=requester, target=target, session=session, rule=policy,
                              outcome="deny", ts=now, request_kind=kind.value, reason=str(e))
            raise ApprovalRefused(e) from e
        with immediate(self._conn):
            insert(self._conn, "requests", request_row(request, rule))
            self.store.append(
                "request.filed", user=requester, target=target, session=session, rule=policy, outcome="pending",
                ts=now, request=request.id, request_kind=kind.value, reason=request.reason,
                duration=request.duration, expires=request.expires, statement_sha256=sha256(statement),
                approvers={"users": list(rule.approvers.users), "groups": list(rule.approvers.groups)},
                min_approvals=rule.min_approvals,
            )
        self._tell(Change("request.filed", request))
        return request

    def break_glass(
        self, rule: ApprovalRule, *, requester: str, target: str, reason: str, now: float,
        duration: float | None = None, kind: RequestKind = RequestKind.ACCESS, policy: str = "",
        session: str | None = None,
    ) -> tuple[Request, Grant]:
        """Emergency access the requester grants themselves, where the rule allows it; flagged for review."""
        try:
            request = decide.break_glass(rule, id=new_id("r"), kind=kind, requester=requester, target=target,
                                         reason=reason, now=now, duration=duration, policy=policy)
        except ApprovalError as e:
            self.store.append("breakglass.refused", user=requester, target=target, session=session, rule=policy,
                              outcome="deny", ts=now, reason=str(e))
            raise ApprovalRefused(e) from e
        grant = decide.grant_for(request, id=new_id("g"), now=now)
        with immediate(self._conn):
            insert(self._conn, "requests", request_row(request, rule))
            insert(self._conn, "grants", grant_row(grant))
            self.store.append("breakglass.used", user=requester, target=target, session=session, rule=policy,
                              outcome="allow", ts=now, request=request.id, grant=grant.id, reason=request.reason,
                              ends=grant.ends, flag="BREAK-GLASS: self-granted emergency access, review it")
            self._grant_created(grant, request, session)
        self._tell(Change("breakglass.used", request, grant))
        return request, grant

    # -- deciding -------------------------------------------------------------------

    def approve(self, request_id: str, approver: Identity, now: float, comment: str = "") -> Request:
        """Add ``approver``'s approval; once the rule is satisfied the request is approved and, unless it holds
        a statement, its grant is created."""
        grant = None
        with self._deciding(request_id, approver.user, now) as (request, rule):
            request = decide.approve(rule, request, approver, now, comment)
            vote = request.votes[-1]
            insert(self._conn, "request_votes", {"request_id": request.id, "approver": vote.approver,
                                                 "at": vote.at, "comment": vote.comment})
            self._update(request)
            if request.state is State.APPROVED and request.kind is not RequestKind.STATEMENT:
                grant = decide.grant_for(request, id=new_id("g"), now=now)
                insert(self._conn, "grants", grant_row(grant))
            self.store.append(
                "request.approved", user=approver.user, target=request.target, rule=request.policy,
                outcome="approved" if request.state is State.APPROVED else "partial", ts=now, request=request.id,
                requester=request.requester, approvals=len(request.approvers), needed=rule.min_approvals,
                comment=vote.comment or None,
            )
            if grant is not None:
                self._grant_created(grant, request, None)
        self._tell(Change("request.approved", request, grant))
        return request

    def deny(self, request_id: str, approver: Identity, reason: str, now: float) -> Request:
        """Deny the request with a reason the requester will read."""
        with self._deciding(request_id, approver.user, now) as (request, rule):
            request = decide.deny(rule, request, approver, now, reason)
            self._update(request)
            self.store.append("request.denied", user=approver.user, target=request.target, rule=request.policy,
                              outcome="deny", ts=now, request=request.id, requester=request.requester,
                              reason=request.decision_reason)
        self._tell(Change("request.denied", request))
        return request

    def cancel(self, request_id: str, by: str, now: float, reason: str = "") -> Request:
        """The requester withdraws their pending request (Ctrl-C while waiting, for one)."""
        with self._deciding(request_id, by, now) as (request, _):
            request = decide.cancel(request, by, now, reason)
            self._update(request)
            self.store.append("request.cancelled", user=by, target=request.target, rule=request.policy,
                              outcome="cancelled", ts=now, request=request.id, reason=request.decision_reason)
        self._tell(Change("request.cancelled", request))
        return request

    @contextlib.contextmanager
    def _deciding(self, request_id: str, actor: str, now: float) -> Iterator[tuple[Request, ApprovalRule]]:
        """Hold the write lock while a step loads, decides and stores a request; a refusal is audited and raised.

        A request found past its expiry is expired on the spot, and the step refused.
        """
        expired: Request | None = None
        refused: ApprovalError | None = None
        with immediate(self._conn):
            request, rule = self._load(request_id)
            if decide.is_expired(request, now):
                expired = decide.expire(request, now)
                self._update(expired)
                self._log_expired(expired, now)
            else:
                try:
                    yield request, rule
                except ApprovalError as e:  # nothing was written before the decision refused
                    refused = e
        if expired is not None:
            self._tell(Change("request.expired", expired))
            refused = decide.RequestExpired(f"request {request_id} expired while pending and can no longer be "
                                            "decided")
        if refused is not None:
            self.store.append("request.refused", user=actor, target=request.target, rule=request.policy,
                              outcome="deny", ts=now, request=request_id, reason=str(refused))
            raise ApprovalRefused(refused) from refused

    def _update(self, request: Request) -> None:
        self._conn.execute(
            "UPDATE requests SET state = ?, decided_at = ?, decided_by = ?, decision_reason = ?, consumed_at = ? "
            "WHERE id = ?",
            (request.state.value, request.decided_at, request.decided_by, request.decision_reason,
             request.consumed_at, request.id))

    # -- grants ---------------------------------------------------------------------------

    def revoke_grant(self, grant_id: str, by: str, now: float, reason: str = "") -> Grant:
        """End a grant early; sessions under it are the watchdog's to cut (see ``ended_among``)."""
        with immediate(self._conn):
            try:
                grant = decide.revoke(self.grant(grant_id), by, now, reason)
            except ApprovalError as e:
                raise ApprovalRefused(e) from e
            self._conn.execute("UPDATE grants SET revoked_at = ?, revoked_by = ?, revoke_reason = ?, end_logged = 1 "
                               "WHERE id = ?", (grant.revoked_at, grant.revoked_by, grant.revoke_reason, grant.id))
            self.store.append("grant.revoked", user=by, target=grant.target, rule=grant.policy, outcome="revoke",
                              ts=now, grant=grant.id, request=grant.request_id, holder=grant.user,
                              reason=grant.revoke_reason)
        self._tell(Change("grant.revoked", self.get(grant.request_id), grant))
        return grant

    def _grant_created(self, grant: Grant, request: Request, session: str | None) -> None:
        self.store.append("grant.created", user=grant.user, target=grant.target, session=session, rule=grant.policy,
                          outcome="allow", ts=grant.starts, grant=grant.id, request=request.id,
                          request_kind=grant.kind.value, starts=grant.starts, ends=grant.ends,
                          approved_by=sorted(request.approvers) or None, break_glass=grant.break_glass or None)

    # -- held statements ----------------------------------------------------------------------

    def consume_statement_approval(self, user: str, target: str, statement: bytes, now: float) -> Request | None:
        """Use the approval of exactly this statement (byte-identical, same user and target) once; None when
        there is no such approval left to use."""
        used: Request | None = None
        with immediate(self._conn):
            candidates = self._rows.requests(
                "kind = ? AND state = ? AND consumed_at IS NULL AND requester = ? AND target = ? "
                "AND statement_sha256 = ?",
                (RequestKind.STATEMENT.value, State.APPROVED.value, user, target, sha256(statement)))
            for request, _ in candidates:
                if decide.statement_problem(request, user, target, statement, now) is None:
                    used = decide.consume(request, user, target, statement, now)
                    self._update(used)
                    self.store.append("statement.consumed", user=user, target=target, rule=used.policy,
                                      outcome="allow", ts=now, request=used.id, statement_sha256=sha256(statement),
                                      approved_by=sorted(used.approvers))
                    break
        if used is not None:
            self._tell(Change("statement.consumed", used))
        return used

    # -- expiry and review --------------------------------------------------------------------

    def expire_due(self, now: float) -> Expired:
        """Expire pending requests past their time and log grants that have run out; run it every few seconds."""
        with immediate(self._conn):
            requests = [decide.expire(r, now) for r, _ in self._rows.requests(
                "state = ? AND expires <= ?", (State.PENDING.value, now))]
            for request in requests:
                self._update(request)
            grants = self._rows.grants("end_logged = 0 AND revoked_at IS NULL AND ends <= ?", (now,))
            self._conn.executemany("UPDATE grants SET end_logged = 1 WHERE id = ?", [(g.id,) for g in grants])
            for request in requests:
                self._log_expired(request, now)
            for grant in grants:
                self.store.append("grant.expired", user=grant.user, target=grant.target, rule=grant.policy,
                                  outcome="expired", ts=now, grant=grant.id, request=grant.request_id,
                                  ended=grant.ends)
        for request in requests:
            self._tell(Change("request.expired", request))
        for grant in grants:
            self._tell(Change("grant.expired", self.get(grant.request_id), grant))
        return Expired(requests, grants)

    def _log_expired(self, request: Request, now: float) -> None:
        self.store.append("request.expired", user=request.requester, target=request.target, rule=request.policy,
                          outcome="expired", ts=now, request=request.id, reason=request.decision_reason)

    def review_break_glass(self, request_id: str, reviewer: Identity, now: float, comment: str = "") -> Request:
        """An approver of the rule marks a break-glass use as reviewed (never the one who used it)."""
        with immediate(self._conn):
            request, rule = self._load(request_id)
            problem = (f"request {request_id} was not break-glass" if not request.break_glass
                       else decide.approver_problem(rule, request, reviewer))
            if problem is None:
                self._conn.execute("UPDATE requests SET reviewed_at = ?, reviewed_by = ? WHERE id = ?",
                                   (now, reviewer.user, request_id))
                self.store.append("breakglass.reviewed", user=reviewer.user, target=request.target,
                                  rule=request.policy, outcome="reviewed", ts=now, request=request_id,
                                  requester=request.requester, comment=comment.strip() or None)
        if problem is not None:
            raise ApprovalRefused(ApprovalError(problem))
        return request

    # -- waiting ----------------------------------------------------------------------------------

    async def wait(self, request_id: str, timeout: float | None = None, *, poll: float = POLL) -> Request:
        """The request once it is decided, expired or cancelled; after ``timeout`` seconds, as it stands."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        entry = (loop, asyncio.Event())
        self._waiters.setdefault(request_id, []).append(entry)
        try:
            while True:
                entry[1].clear()
                request = self.get(request_id)
                if decide.is_expired(request, self._clock()):
                    self.expire_due(self._clock())
                    request = self.get(request_id)
                left = poll if deadline is None else min(poll, deadline - loop.time())
                if request.state is not State.PENDING or left <= 0:
                    return request
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(entry[1].wait(), left)
        finally:
            waiters = self._waiters[request_id]
            waiters.remove(entry)
            if not waiters:
                del self._waiters[request_id]
