"""Just-in-time access decisions: who may approve, when a request is satisfied, expiry, held statements.

Pure, like the rest of ``policies``: the caller passes the rule, the request as
it stands and ``now``; every function returns a new value or raises an
:class:`ApprovalError` that says, to a person, why not. Storage, ids and the
clock live in ``bastion/approvals.py``.

A request moves ``pending → approved | denied | expired | cancelled`` and never
leaves a final state. It is approved once ``min_approvals`` distinct approvers,
none of them the requester, have approved it. Break-glass is the one way to an
approved request without approvers, and it is flagged as such.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from .model import ApprovalRule, Identity


class RequestKind(StrEnum):
    """What a request asks for."""

    ACCESS = "access"        # a time-boxed grant to connect to a target
    STATEMENT = "statement"  # one held statement, byte for byte, run once
    TRANSFER = "transfer"    # a time-boxed grant to move files to or from a target


class State(StrEnum):
    """Where a request is in its life."""

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


FINAL = frozenset({State.APPROVED, State.DENIED, State.EXPIRED, State.CANCELLED})


class ApprovalError(ValueError):
    """A request, approval or transition was refused; the message says why."""


class ReasonRequired(ApprovalError):
    """The rule (or break-glass, or a denial) needs a reason and none was given."""


class NotAnApprover(ApprovalError):
    """This identity may not decide this request."""


class SelfApproval(NotAnApprover):
    """The requester tried to decide their own request."""


class AlreadyVoted(ApprovalError):
    """This approver already approved this request."""


class IllegalTransition(ApprovalError):
    """The request is not in a state that allows this step."""


class RequestExpired(IllegalTransition):
    """The request was pending past its expiry."""


class NotCovered(ApprovalError):
    """A statement is not the one an approval covers, or the approval is used up or lapsed."""


class BreakGlassNotAllowed(ApprovalError):
    """The rule does not let subjects grant themselves emergency access."""


@dataclass(frozen=True)
class Vote:
    """One approver's approval of a request."""

    approver: str
    at: float
    comment: str = ""


@dataclass(frozen=True)
class Request:
    """A request as it stands: what was asked, by whom, and what has been decided."""

    id: str
    kind: RequestKind
    requester: str
    target: str
    reason: str
    duration: float          # seconds the grant (or the statement's window) lasts once approved; clamped
    created: float
    expires: float           # a pending request past this time is expired
    statement: bytes | None = None
    policy: str = ""
    state: State = State.PENDING
    votes: tuple[Vote, ...] = ()
    decided_at: float | None = None
    decided_by: str | None = None
    decision_reason: str = ""  # the denial's reason, or who cancelled and why
    consumed_at: float | None = None
    break_glass: bool = False

    @property
    def approvers(self) -> frozenset[str]:
        """Distinct approvers so far, the requester never among them."""
        return frozenset(v.approver for v in self.votes if v.approver != self.requester)

    @property
    def window_ends(self) -> float | None:
        """Until when an approved statement may run (None until approved)."""
        return None if self.decided_at is None else self.decided_at + self.duration


def clamp_duration(rule: ApprovalRule, asked: float | None) -> float:
    """The duration a grant gets: what was asked, at most ``max_duration``; the maximum when nothing was asked."""
    if asked is None:
        return rule.max_duration
    if asked <= 0:
        raise ApprovalError(f"the duration must be positive, got {asked:g} s")
    return min(asked, rule.max_duration)


def new_request(
    rule: ApprovalRule, *, id: str, kind: RequestKind, requester: str, target: str, reason: str,
    now: float, duration: float | None = None, statement: bytes | None = None, policy: str = "",
) -> Request:
    """A pending request, checked against the rule: reason when required, duration clamped, expiry set."""
    reason = reason.strip()
    if rule.reason_required and not reason:
        raise ReasonRequired(f"policy {policy or '?'} requires a reason for requests to {target}")
    if (kind is RequestKind.STATEMENT) != (statement is not None):
        raise ApprovalError("a statement request carries exactly the statement's text; other requests carry none")
    if statement is not None and not statement.strip():
        raise ApprovalError("a held statement cannot be empty")
    return Request(
        id=id, kind=kind, requester=requester, target=target, reason=reason,
        duration=clamp_duration(rule, duration), created=now, expires=now + rule.request_ttl,
        statement=statement, policy=policy,
    )


def is_expired(request: Request, now: float) -> bool:
    """True when the request is pending and its time to be decided has passed."""
    return request.state is State.PENDING and now >= request.expires


def approver_problem(rule: ApprovalRule, request: Request, who: Identity) -> str | None:
    """Why ``who`` may not decide this request, or None when they may."""
    if who.user == request.requester:
        return f"{who.user} filed request {request.id} and cannot decide it (no self-approval)"
    listed = who.user in rule.approvers.users or not who.groups.isdisjoint(rule.approvers.groups)
    if not listed:
        return f"{who.user} is not an approver for {request.target} (policy {request.policy or '?'})"
    return None


def may_approve(rule: ApprovalRule, request: Request, who: Identity) -> bool:
    """True when ``who`` is an approver of this request and not its requester."""
    return approver_problem(rule, request, who) is None


def is_satisfied(rule: ApprovalRule, request: Request) -> bool:
    """True when enough distinct approvers, none of them the requester, have approved."""
    return len(request.approvers) >= max(1, rule.min_approvals)


def _check_open(request: Request, now: float) -> None:
    if request.state is not State.PENDING:
        raise IllegalTransition(f"request {request.id} is already {request.state.value}")
    if is_expired(request, now):
        raise RequestExpired(f"request {request.id} expired while pending and can no longer be decided")


def _check_approver(rule: ApprovalRule, request: Request, who: Identity) -> None:
    problem = approver_problem(rule, request, who)
    if problem is not None:
        raise (SelfApproval if who.user == request.requester else NotAnApprover)(problem)


def approve(rule: ApprovalRule, request: Request, who: Identity, now: float, comment: str = "") -> Request:
    """Add ``who``'s approval; the request becomes approved when the rule is satisfied."""
    _check_open(request, now)
    _check_approver(rule, request, who)
    if who.user in request.approvers:
        raise AlreadyVoted(f"{who.user} already approved request {request.id}")
    voted = replace(request, votes=(*request.votes, Vote(who.user, now, comment.strip())))
    if is_satisfied(rule, voted):
        return replace(voted, state=State.APPROVED, decided_at=now, decided_by=who.user)
    return voted


def deny(rule: ApprovalRule, request: Request, who: Identity, now: float, reason: str) -> Request:
    """Deny the request; the reason is mandatory, because it is what the requester will read."""
    _check_open(request, now)
    _check_approver(rule, request, who)
    if not reason.strip():
        raise ReasonRequired("a denial needs a reason; the requester will see it")
    return replace(request, state=State.DENIED, decided_at=now, decided_by=who.user, decision_reason=reason.strip())


def cancel(request: Request, by: str, now: float, reason: str = "") -> Request:
    """The requester withdraws their own pending request."""
    if by != request.requester:
        raise NotAnApprover(f"only {request.requester} can cancel request {request.id}")
    _check_open(request, now)
    return replace(request, state=State.CANCELLED, decided_at=now, decided_by=by,
                   decision_reason=reason.strip() or "cancelled by the requester")


def expire(request: Request, now: float) -> Request:
    """Mark a pending request past its expiry as expired."""
    if request.state is not State.PENDING:
        raise IllegalTransition(f"request {request.id} is already {request.state.value}")
    if not is_expired(request, now):
        raise IllegalTransition(f"request {request.id} does not expire before {request.expires:.0f}")
    return replace(request, state=State.EXPIRED, decided_at=now, decision_reason="no decision before it expired")


def break_glass(
    rule: ApprovalRule, *, id: str, kind: RequestKind, requester: str, target: str, reason: str,
    now: float, duration: float | None = None, policy: str = "",
) -> Request:
    """Emergency access a subject grants themselves: allowed only where the rule says so, always with a reason.

    The caller has already found, with ``policies.engine.decide``, that this
    requester is a subject of the policy whose rule this is.
    """
    if not rule.break_glass:
        raise BreakGlassNotAllowed(f"policy {policy or '?'} does not allow break-glass access to {target}")
    if kind is RequestKind.STATEMENT:
        raise BreakGlassNotAllowed("break-glass grants access, not a single held statement")
    if not reason.strip():
        raise ReasonRequired("break-glass access always needs a reason; it is flagged for review")
    request = new_request(rule, id=id, kind=kind, requester=requester, target=target, reason=reason,
                          now=now, duration=duration, policy=policy)
    return replace(request, state=State.APPROVED, decided_at=now, decided_by=requester, break_glass=True)


def statement_problem(request: Request, user: str, target: str, statement: bytes, now: float) -> str | None:
    """Why this approval does not let ``user`` run ``statement`` on ``target`` now, or None when it does."""
    if request.kind is not RequestKind.STATEMENT or request.statement is None:
        return f"request {request.id} is not for a statement"
    if request.requester != user or request.target != target:
        return f"request {request.id} was filed by {request.requester} for {request.target}"
    if request.statement != statement:
        return f"request {request.id} covers a different statement (only the byte-identical text runs)"
    if request.state is not State.APPROVED:
        return f"request {request.id} is {request.state.value}, not approved"
    if request.consumed_at is not None:
        return f"request {request.id} was already used (an approved statement runs once)"
    ends = request.window_ends
    if ends is not None and now >= ends:
        return f"the approval of request {request.id} lapsed before the statement was run"
    return None


def consume(request: Request, user: str, target: str, statement: bytes, now: float) -> Request:
    """Use an approved statement request to run exactly that statement, once."""
    problem = statement_problem(request, user, target, statement, now)
    if problem is not None:
        raise NotCovered(problem)
    return replace(request, consumed_at=now)


@dataclass(frozen=True)
class Grant:
    """Time-boxed access that an approved (or break-glass) access or transfer request created."""

    id: str
    request_id: str
    kind: RequestKind
    user: str
    target: str
    starts: float
    ends: float
    policy: str = ""
    break_glass: bool = False
    revoked_at: float | None = None
    revoked_by: str | None = None
    revoke_reason: str = ""

    def active(self, now: float) -> bool:
        """True from its start until its end, unless revoked."""
        return self.revoked_at is None and self.starts <= now < self.ends


def grant_for(request: Request, *, id: str, now: float) -> Grant:
    """The grant an approved access or transfer request gives: from now, for its clamped duration."""
    if request.state is not State.APPROVED:
        raise IllegalTransition(f"request {request.id} is {request.state.value}; only an approved one grants access")
    if request.kind is RequestKind.STATEMENT:
        raise IllegalTransition(f"request {request.id} approves one statement; it grants no access")
    return Grant(id=id, request_id=request.id, kind=request.kind, user=request.requester, target=request.target,
                 starts=now, ends=now + request.duration, policy=request.policy, break_glass=request.break_glass)


def revoke(grant: Grant, by: str, now: float, reason: str = "") -> Grant:
    """End a grant early; the reason (or who revoked it) is what the user it cuts off will read."""
    if grant.revoked_at is not None:
        raise IllegalTransition(f"grant {grant.id} was already revoked by {grant.revoked_by}")
    if now >= grant.ends:
        raise IllegalTransition(f"grant {grant.id} already ended")
    return replace(grant, revoked_at=now, revoked_by=by, revoke_reason=reason.strip() or f"revoked by {by}")
