"""Requests and grants as the admin CLI and the HTTP API show them.

JSON shapes shared by ``bastion requests --json`` and ``/v1/requests``, and
the reads both need beyond :class:`~bastion.approvals.Approvals`: a request
together with the approval rule it was filed under (to say how many approvals
it needs, and who may see it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from policies.approvals import Grant, Request, State, is_expired
from policies.model import ApprovalRule

from .approvals import Approvals, UnknownRequest
from .approvals_db import Rows


def statement_text(request: Request) -> str | None:
    """A held statement's text (undecodable bytes replaced), or None for other requests."""
    return None if request.statement is None else request.statement.decode("utf-8", "replace")


def shown_state(request: Request, now: float) -> str:
    """The request's state, ``expired`` for a pending one whose time has passed (not yet marked)."""
    return State.EXPIRED.value if is_expired(request, now) else request.state.value


def request_json(request: Request, rule: ApprovalRule | None, now: float) -> dict[str, Any]:
    """A request as a JSON object; the statement's full text is there, since approvers decide on it."""
    return {
        "id": request.id, "kind": request.kind.value, "state": shown_state(request, now),
        "requester": request.requester, "target": request.target, "policy": request.policy,
        "reason": request.reason, "duration": request.duration, "created": request.created,
        "expires": request.expires, "statement": statement_text(request),
        "approvals": [{"approver": v.approver, "at": v.at, "comment": v.comment} for v in request.votes],
        "needed": None if rule is None else max(1, rule.min_approvals),
        "decided_at": request.decided_at, "decided_by": request.decided_by,
        "decision_reason": request.decision_reason or None, "break_glass": request.break_glass,
    }


def grant_json(grant: Grant, now: float) -> dict[str, Any]:
    """A grant as a JSON object."""
    return {
        "id": grant.id, "request": grant.request_id, "kind": grant.kind.value, "user": grant.user,
        "target": grant.target, "starts": grant.starts, "ends": grant.ends, "active": grant.active(now),
        "break_glass": grant.break_glass, "revoked_at": grant.revoked_at, "revoked_by": grant.revoked_by,
        "revoke_reason": grant.revoke_reason or None,
    }


def load(approvals: Approvals, request_id: str) -> tuple[Request, ApprovalRule]:
    """The request with this id and the rule it was filed under; UnknownRequest when there is none."""
    found = Rows(approvals.store.db.conn).requests("id = ?", (request_id,))
    if not found:
        raise UnknownRequest(f"no request {request_id}")
    return found[0]


def find(approvals: Approvals, *, pending_at: float | None = None,
         requester: str | None = None) -> list[tuple[Request, ApprovalRule]]:
    """Requests, oldest first, each with its rule: all, or only those still pending at a time, or one user's."""
    where, args = ["1"], []
    if pending_at is not None:
        where.append("state = ? AND expires > ?")
        args += [State.PENDING.value, pending_at]
    if requester is not None:
        where.append("requester = ?")
        args.append(requester)
    return Rows(approvals.store.db.conn).requests(" AND ".join(where), args)


def rules_of(approvals: Approvals, requests: Iterable[Request]) -> dict[str, ApprovalRule]:
    """The rule each of these requests was filed under, by request id."""
    ids = [r.id for r in requests]
    if not ids:
        return {}
    marks = ", ".join("?" * len(ids))
    return {r.id: rule for r, rule in Rows(approvals.store.db.conn).requests(f"id IN ({marks})", ids)}
