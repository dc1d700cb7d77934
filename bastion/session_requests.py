"""The just-in-time side of a shell session: requests, decisions, grants, and waiting for them.

:class:`SessionRequests` implements the request members of
:class:`shell.context.ShellContext` over :class:`~bastion.approvals.Approvals`.
The shell gets views and exit codes, never the bastion's exceptions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from policies import approvals as decide
from policies.approvals import Request, RequestKind, State
from policies.engine import decide as decide_access
from policies.model import ApprovalRule, Effect, Identity
from shell.commands import EXIT_DENIED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from shell.context import ConnectOutcome, RequestView

from .approvals import ApprovalRefused, Approvals, Change, UnknownRequest
from .approvals_view import load

if TYPE_CHECKING:
    from .runtime import Runtime

UNAVAILABLE = ConnectOutcome(EXIT_UNAVAILABLE, "access requests are not available on this bastion")


def approvers_text(rule: ApprovalRule | None) -> str:
    """Who may approve, for people: ``group sre; user bob``."""
    if rule is None:
        return "-"
    parts = [f"group {g}" for g in rule.approvers.groups] + [f"user {u}" for u in rule.approvers.users]
    return "; ".join(parts) or "-"


def view(request: Request, rule: ApprovalRule | None, approvals: Approvals, now: float) -> RequestView:
    """A request as the shell shows it."""
    grant = approvals.grant_of(request.id)
    state = State.EXPIRED.value if decide.is_expired(request, now) else request.state.value
    return RequestView(
        id=request.id, kind=request.kind.value, requester=request.requester, target=request.target,
        reason=request.reason, state=state, created=request.created, expires=request.expires,
        duration=request.duration, approvers=approvers_text(rule),
        needed=max(1, rule.min_approvals) if rule is not None else 1,
        approved_by=tuple(sorted(request.approvers)),
        statement=None if request.statement is None else request.statement.decode("utf-8", "replace"),
        decided_by=request.decided_by, decision_reason=request.decision_reason or None,
        grant=grant.id if grant is not None else None, grant_ends=grant.ends if grant is not None else None,
        break_glass=request.break_glass)


def notice_for(change: Change, identity: Identity, rule: ApprovalRule | None) -> str | None:
    """The line this person should see about a change, if any: a request to decide, or news of their own."""
    request = change.request
    if change.kind in ("request.filed", "breakglass.used") and rule is not None \
            and decide.may_approve(rule, request, identity):
        what = "statement" if request.kind is RequestKind.STATEMENT else f"{request.kind.value} to {request.target}"
        if change.kind == "breakglass.used":
            return f"BREAK-GLASS: {request.requester} granted themselves {what}: {request.reason}"
        return (f"request {request.id}: {request.requester} asks for {what} ({request.reason}); "
                f"`approve {request.id}` or `deny {request.id} --reason ...`")
    if request.requester == identity.user and change.kind in (
            "request.approved", "request.denied", "request.expired", "grant.revoked", "grant.expired"):
        if change.kind == "request.approved" and request.state is not State.APPROVED:
            return f"request {request.id}: {len(request.approvers)} approval(s) so far"
        tail = f": {request.decision_reason}" if request.decision_reason else ""
        return f"request {request.id} {change.kind.split('.', 1)[1]}{tail}"
    return None


class SessionRequests:
    """Requests and grants for one session's identity."""

    def __init__(self, runtime: Runtime, identity: Identity, session: str,
                 mark: Callable[[str], None]) -> None:
        self._runtime = runtime
        self._identity = identity
        self._session = session
        self._mark = mark

    @property
    def _approvals(self) -> Approvals | None:
        return self._runtime.approvals

    def _now(self) -> float:
        return self._runtime.clock()

    async def request_access(self, target: str, reason: str, duration: float | None = None, *,
                             break_glass: bool = False) -> RequestView | ConnectOutcome:
        approvals = self._approvals
        if approvals is None:
            return UNAVAILABLE
        configured = self._runtime.config.targets.get(target)
        if configured is None:
            return ConnectOutcome(EXIT_USAGE, f"no target named {target!r}; `targets` lists yours")
        decision = decide_access(self._runtime.config.policies, self._identity, configured.target, "connect",
                                 self._now())
        if decision.effect is Effect.ALLOW:
            return ConnectOutcome(EXIT_USAGE, f"{target} needs no request: {decision.reason}; `connect {target}`")
        if decision.effect is not Effect.APPROVAL or decision.policy is None or decision.policy.approval is None:
            return ConnectOutcome(EXIT_DENIED, f"denied: {decision.reason}")
        rule, now = decision.policy.approval, self._now()
        try:
            if break_glass:
                request, _ = approvals.break_glass(rule, requester=self._identity.user, target=target,
                                                   reason=reason, now=now, duration=duration,
                                                   policy=decision.rule, session=self._session)
                self._mark(f"BREAK-GLASS access to {target}: {reason}")
            else:
                request = approvals.file_request(rule, requester=self._identity.user, target=target,
                                                 kind=RequestKind.ACCESS, reason=reason, now=now,
                                                 duration=duration, policy=decision.rule, session=self._session)
                self._mark(f"request {request.id} filed for {target}")
        except ApprovalRefused as e:
            return ConnectOutcome(EXIT_DENIED, str(e))
        return view(request, rule, approvals, now)

    def requests(self) -> tuple[list[RequestView], list[RequestView]]:
        approvals = self._approvals
        if approvals is None:
            return [], []
        now = self._now()
        listing = approvals.list_for(self._identity, now)
        mine = [view(r, rule, approvals, now) for r, rule in
                (load(approvals, r.id) for r in listing.mine)]
        to_decide = [view(r, rule, approvals, now) for r, rule in
                     (load(approvals, r.id) for r in listing.to_decide)]
        return mine, to_decide

    async def decide(self, request_id: str, *, approve: bool, text: str) -> RequestView | ConnectOutcome:
        approvals = self._approvals
        if approvals is None:
            return UNAVAILABLE
        now = self._now()
        try:
            if approve:
                request = approvals.approve(request_id, self._identity, now, text)
            else:
                request = approvals.deny(request_id, self._identity, text, now)
            _, rule = load(approvals, request_id)
        except UnknownRequest as e:
            return ConnectOutcome(EXIT_USAGE, str(e))
        except ApprovalRefused as e:
            return ConnectOutcome(EXIT_DENIED, str(e))
        self._mark(f"{'approved' if approve else 'denied'} request {request_id}")
        return view(request, rule, approvals, now)

    async def cancel_request(self, request_id: str) -> RequestView | ConnectOutcome:
        approvals = self._approvals
        if approvals is None:
            return UNAVAILABLE
        now = self._now()
        try:
            request = approvals.cancel(request_id, self._identity.user, now)
            _, rule = load(approvals, request_id)
        except UnknownRequest as e:
            return ConnectOutcome(EXIT_USAGE, str(e))
        except ApprovalRefused as e:
            return ConnectOutcome(EXIT_DENIED, str(e))
        return view(request, rule, approvals, now)

    async def revoke_grant(self, grant_id: str, reason: str) -> ConnectOutcome:
        approvals = self._approvals
        if approvals is None:
            return UNAVAILABLE
        try:
            grant = approvals.grant(grant_id)
            request, rule = load(approvals, grant.request_id)
        except UnknownRequest as e:
            return ConnectOutcome(EXIT_USAGE, str(e))
        # The holder may give a grant back; otherwise only someone who could have approved it may end it.
        if grant.user != self._identity.user and decide.approver_problem(rule, request, self._identity) is not None:
            return ConnectOutcome(EXIT_DENIED, f"{self._identity.user} may not revoke grant {grant_id}: "
                                               "only its holder or an approver of its policy may")
        try:
            approvals.revoke_grant(grant_id, self._identity.user, self._now(), reason)
        except ApprovalRefused as e:
            return ConnectOutcome(EXIT_DENIED, str(e))
        return ConnectOutcome(EXIT_OK, f"grant {grant_id} revoked; sessions under it end within seconds\n")

    async def wait_request(self, request_id: str, timeout: float | None = None) -> RequestView:
        approvals = self._approvals
        if approvals is None:
            raise UnknownRequest("access requests are not available on this bastion")
        request = await approvals.wait(request_id, timeout)
        _, rule = load(approvals, request_id)
        return view(request, rule, approvals, self._now())

    def active_grant(self, target: str) -> str | None:
        """The id of this identity's live grant for ``target``, if any."""
        approvals = self._approvals
        if approvals is None:
            return None
        grant = approvals.active_grant(self._identity.user, target, self._now())
        return grant.id if grant is not None else None
