"""policies.approvals: who may approve, when a request is approved, expiry, held statements, break-glass."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.config import load_config
from bastion.errors import ConfigError
from policies import approvals as ap
from policies.approvals import RequestKind, State
from policies.model import ApprovalRule, Approvers, Identity

T0 = 1_000_000.0
RULE = ApprovalRule(approvers=Approvers(users=("lead",), groups=("dba-leads",)), min_approvals=1,
                    max_duration=7200.0, reason_required=True, request_ttl=3600.0)
TWO = dataclasses.replace(RULE, min_approvals=2)
LEAD = Identity("lead")
CAROL = Identity("carol", frozenset({"dba-leads"}))
DAVE = Identity("dave", frozenset({"dba-leads", "dba"}))
ALICE = Identity("alice", frozenset({"dba", "dba-leads"}))  # the requester, who is also an approver by group
MALLORY = Identity("mallory", frozenset({"dba"}))
UPDATE = b"UPDATE accounts SET balance = 0 WHERE id = 7"


def request(rule: ApprovalRule = RULE, **overrides: object) -> ap.Request:
    fields: dict[str, object] = {"id": "r-1", "kind": RequestKind.ACCESS, "requester": "alice", "target": "pg-prod",
                                 "reason": "INC-42 fix the ledger", "now": T0, "policy": "dba-prod"}
    fields.update(overrides)
    return ap.new_request(rule, **fields)  # type: ignore[arg-type]


def approved_statement(text: bytes = UPDATE) -> ap.Request:
    return ap.approve(RULE, request(kind=RequestKind.STATEMENT, statement=text, duration=600.0), LEAD, T0 + 5)


# -- filing ---------------------------------------------------------------------------------


def test_new_request_is_pending_with_expiry_and_clamped_duration() -> None:
    r = request(duration=99_999.0)
    assert r.state is State.PENDING
    assert r.expires == T0 + 3600.0
    assert r.duration == 7200.0  # clamped to max_duration
    assert request(duration=1800.0).duration == 1800.0
    assert request().duration == 7200.0  # nothing asked: the maximum


def test_default_request_ttl_is_one_hour() -> None:
    assert ApprovalRule().request_ttl == 3600.0
    assert request(ApprovalRule(approvers=Approvers(users=("lead",)))).expires == T0 + 3600.0


@pytest.mark.parametrize("reason", ["", "   "])
def test_reason_required(reason: str) -> None:
    with pytest.raises(ap.ReasonRequired, match="requires a reason"):
        request(reason=reason)
    optional = dataclasses.replace(RULE, reason_required=False)
    assert request(optional, reason=reason).reason == ""


def test_bad_durations_and_statements_are_refused() -> None:
    with pytest.raises(ap.ApprovalError, match="positive"):
        request(duration=0.0)
    with pytest.raises(ap.ApprovalError, match="exactly the statement"):
        request(kind=RequestKind.STATEMENT)
    with pytest.raises(ap.ApprovalError, match="exactly the statement"):
        request(statement=UPDATE)
    with pytest.raises(ap.ApprovalError, match="empty"):
        request(kind=RequestKind.STATEMENT, statement=b"  ")


# -- approving ---------------------------------------------------------------------------------


def test_self_approval_is_refused_even_for_an_approver() -> None:
    r = request()
    assert not ap.may_approve(RULE, r, ALICE)
    with pytest.raises(ap.SelfApproval, match="no self-approval"):
        ap.approve(RULE, r, ALICE, T0 + 1)
    with pytest.raises(ap.SelfApproval):
        ap.deny(RULE, r, ALICE, T0 + 1, "no")


def test_approvers_by_user_and_by_group() -> None:
    r = request()
    assert ap.may_approve(RULE, r, LEAD) and ap.may_approve(RULE, r, CAROL)
    assert not ap.may_approve(RULE, r, MALLORY)
    with pytest.raises(ap.NotAnApprover, match="mallory is not an approver for pg-prod"):
        ap.approve(RULE, r, MALLORY, T0 + 1)


def test_one_approval_approves_when_n_is_one() -> None:
    r = ap.approve(RULE, request(), CAROL, T0 + 10, comment=" ok ")
    assert r.state is State.APPROVED
    assert r.decided_by == "carol" and r.decided_at == T0 + 10
    assert r.votes == (ap.Vote("carol", T0 + 10, "ok"),)


def test_n_two_needs_two_distinct_approvers() -> None:
    r = ap.approve(TWO, request(TWO), CAROL, T0 + 1)
    assert r.state is State.PENDING and not ap.is_satisfied(TWO, r)
    with pytest.raises(ap.AlreadyVoted, match="carol already approved"):
        ap.approve(TWO, r, CAROL, T0 + 2)
    r = ap.approve(TWO, r, DAVE, T0 + 3)
    assert r.state is State.APPROVED and r.approvers == {"carol", "dave"}


def test_a_decided_request_cannot_be_decided_again() -> None:
    approved = ap.approve(RULE, request(), CAROL, T0 + 1)
    with pytest.raises(ap.IllegalTransition, match="already approved"):
        ap.approve(RULE, approved, DAVE, T0 + 2)
    with pytest.raises(ap.IllegalTransition, match="already approved"):
        ap.deny(RULE, approved, DAVE, T0 + 2, "too late")
    denied = ap.deny(RULE, request(), CAROL, T0 + 1, "not during the freeze")
    with pytest.raises(ap.IllegalTransition, match="already denied"):
        ap.approve(RULE, denied, DAVE, T0 + 2)
    with pytest.raises(ap.IllegalTransition, match="already denied"):
        ap.cancel(denied, "alice", T0 + 2)


def test_denial_carries_its_reason_and_needs_one() -> None:
    with pytest.raises(ap.ReasonRequired):
        ap.deny(RULE, request(), CAROL, T0 + 1, " ")
    r = ap.deny(RULE, request(), CAROL, T0 + 1, " not during the freeze ")
    assert (r.state, r.decided_by, r.decision_reason) == (State.DENIED, "carol", "not during the freeze")


def test_expired_pending_request_cannot_be_approved() -> None:
    r = request()
    assert not ap.is_expired(r, T0 + 3599.9) and ap.is_expired(r, T0 + 3600.0)
    with pytest.raises(ap.RequestExpired, match="expired while pending"):
        ap.approve(RULE, r, CAROL, T0 + 3600.0)
    with pytest.raises(ap.IllegalTransition, match="does not expire before"):
        ap.expire(r, T0 + 10)
    expired = ap.expire(r, T0 + 4000)
    assert expired.state is State.EXPIRED and not ap.is_expired(expired, T0 + 9999)
    with pytest.raises(ap.IllegalTransition, match="already expired"):
        ap.approve(RULE, expired, CAROL, T0 + 4001)


def test_only_the_requester_cancels() -> None:
    with pytest.raises(ap.NotAnApprover, match="only alice"):
        ap.cancel(request(), "carol", T0 + 1)
    r = ap.cancel(request(), "alice", T0 + 1)
    assert r.state is State.CANCELLED and r.decision_reason == "cancelled by the requester"


@given(
    n=st.integers(min_value=1, max_value=4),
    steps=st.lists(st.tuples(st.sampled_from(["alice", "lead", "carol", "dave", "erin", "mallory"]),
                             st.booleans()), max_size=14),
)
@settings(max_examples=300, deadline=None)
def test_approved_only_with_n_distinct_non_requester_approvers(n: int, steps: list[tuple[str, bool]]) -> None:
    """Whatever order of approvals, repeats and denials, approval needs N distinct approvers, none the requester."""
    rule = dataclasses.replace(RULE, approvers=Approvers(users=("alice", "lead", "carol", "dave", "erin")),
                               min_approvals=n)
    r = request(rule)
    for i, (who, approving) in enumerate(steps):
        before = r
        try:
            if approving:
                r = ap.approve(rule, r, Identity(who), T0 + i)
            else:
                r = ap.deny(rule, r, Identity(who), T0 + i, "no")
        except ap.ApprovalError:
            assert r is before
        if before.state is not State.PENDING:
            assert r is before  # a final state is never left
        voters = {v.approver for v in r.votes}
        assert "alice" not in voters and "mallory" not in voters
        assert len(voters) == len(r.votes)  # nobody counted twice
        if r.state is State.APPROVED:
            assert len(voters) >= n and r.decided_by in voters
        if r.state is State.PENDING:
            assert len(voters) < n


# -- held statements ---------------------------------------------------------------------------------


def test_statement_approval_covers_only_the_byte_identical_text() -> None:
    r = approved_statement()
    assert r.state is State.APPROVED and r.window_ends == T0 + 5 + 600.0
    for other in (UPDATE + b" ", UPDATE.lower(), b"UPDATE accounts SET balance = 0 WHERE id = 8", UPDATE + b";"):
        with pytest.raises(ap.NotCovered, match="different statement"):
            ap.consume(r, "alice", "pg-prod", other, T0 + 6)
    with pytest.raises(ap.NotCovered, match="filed by alice for pg-prod"):
        ap.consume(r, "mallory", "pg-prod", UPDATE, T0 + 6)
    with pytest.raises(ap.NotCovered, match="filed by alice for pg-prod"):
        ap.consume(r, "alice", "pg-staging", UPDATE, T0 + 6)
    used = ap.consume(r, "alice", "pg-prod", UPDATE, T0 + 6)
    assert used.consumed_at == T0 + 6


def test_statement_approval_runs_once_and_lapses() -> None:
    used = ap.consume(approved_statement(), "alice", "pg-prod", UPDATE, T0 + 6)
    with pytest.raises(ap.NotCovered, match="already used"):
        ap.consume(used, "alice", "pg-prod", UPDATE, T0 + 7)
    with pytest.raises(ap.NotCovered, match="lapsed"):
        ap.consume(approved_statement(), "alice", "pg-prod", UPDATE, T0 + 5 + 600.0)


def test_pending_or_denied_statement_is_not_covered() -> None:
    pending = request(kind=RequestKind.STATEMENT, statement=UPDATE)
    assert ap.statement_problem(pending, "alice", "pg-prod", UPDATE, T0) == "request r-1 is pending, not approved"
    denied = ap.deny(RULE, pending, LEAD, T0 + 1, "use a transaction")
    with pytest.raises(ap.NotCovered, match="denied"):
        ap.consume(denied, "alice", "pg-prod", UPDATE, T0 + 2)


def test_a_statement_approval_grants_no_access() -> None:
    with pytest.raises(ap.IllegalTransition, match="grants no access"):
        ap.grant_for(approved_statement(), id="g-1", now=T0 + 6)


# -- grants ------------------------------------------------------------------------------------------


def test_grant_is_time_boxed_and_revocable() -> None:
    r = ap.approve(RULE, request(duration=1800.0), CAROL, T0 + 10)
    g = ap.grant_for(r, id="g-1", now=T0 + 10)
    assert (g.user, g.target, g.starts, g.ends) == ("alice", "pg-prod", T0 + 10, T0 + 1810)
    assert not g.active(T0 + 9) and g.active(T0 + 10) and g.active(T0 + 1809.9) and not g.active(T0 + 1810)
    revoked = ap.revoke(g, "carol", T0 + 20)
    assert not revoked.active(T0 + 21) and revoked.revoke_reason == "revoked by carol"
    with pytest.raises(ap.IllegalTransition, match="already revoked"):
        ap.revoke(revoked, "lead", T0 + 22)
    with pytest.raises(ap.IllegalTransition, match="already ended"):
        ap.revoke(g, "lead", T0 + 1810)
    with pytest.raises(ap.IllegalTransition, match="pending"):
        ap.grant_for(request(), id="g-2", now=T0)


# -- break-glass ---------------------------------------------------------------------------------------


def test_break_glass_needs_the_rule_and_a_reason() -> None:
    with pytest.raises(ap.BreakGlassNotAllowed, match="does not allow break-glass"):
        ap.break_glass(RULE, id="r-9", kind=RequestKind.ACCESS, requester="alice", target="pg-prod",
                       reason="outage", now=T0)
    glass = dataclasses.replace(RULE, break_glass=True, reason_required=False)
    with pytest.raises(ap.ReasonRequired, match="always needs a reason"):
        ap.break_glass(glass, id="r-9", kind=RequestKind.ACCESS, requester="alice", target="pg-prod",
                       reason=" ", now=T0)
    with pytest.raises(ap.BreakGlassNotAllowed, match="not a single held statement"):
        ap.break_glass(glass, id="r-9", kind=RequestKind.STATEMENT, requester="alice", target="pg-prod",
                       reason="outage", now=T0)
    r = ap.break_glass(glass, id="r-9", kind=RequestKind.ACCESS, requester="alice", target="pg-prod",
                       reason="outage INC-7", now=T0, duration=99_999.0)
    assert r.break_glass and r.state is State.APPROVED and r.decided_by == "alice" and r.votes == ()
    assert ap.grant_for(r, id="g-9", now=T0).ends == T0 + 7200.0  # still clamped to max_duration


# -- configuration ---------------------------------------------------------------------------------------

CONFIG = """\
listen: {ssh: "127.0.0.1:2222", http: "127.0.0.1:8080"}
state_dir: /var/lib/bastion
identity:
  oidc: {issuer: "https://idp.example.com", client_id: bastion}
policies:
  - name: dba-prod
    subjects: {groups: [dba]}
    targets: {names: ["*"]}
    access: approval
    approval: {approvers: {groups: [dba-leads]}, request_ttl: 15m%s}
"""


def test_break_glass_loads_from_config(tmp_path: Path) -> None:
    path = tmp_path / "bastion.yaml"
    path.write_text(CONFIG % ", break_glass: true")
    rule = load_config(path).policies[0].approval
    assert rule is not None and rule.break_glass and rule.request_ttl == 900.0
    path.write_text(CONFIG % "")
    rule = load_config(path).policies[0].approval
    assert rule is not None and not rule.break_glass
    path.write_text(CONFIG % ", break_glass: maybe")
    with pytest.raises(ConfigError, match=r"policies\[0\]\.approval\.break_glass"):
        load_config(path)
