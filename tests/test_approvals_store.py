"""bastion.approvals: requests, approvals and grants in the audit database, audited, race-free and durable."""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.approvals import ApprovalRefused, Approvals, Change, UnknownRequest
from bastion.audit import AuditStore
from policies import approvals as ap
from policies.approvals import RequestKind, State
from policies.model import ApprovalRule, Approvers, Identity

T0 = 1_000_000.0
RULE = ApprovalRule(approvers=Approvers(users=("lead",), groups=("dba-leads",)), max_duration=7200.0)
TWO = dataclasses.replace(RULE, min_approvals=2)
LEAD = Identity("lead")
CAROL = Identity("carol", frozenset({"dba-leads"}))
DAVE = Identity("dave", frozenset({"dba-leads"}))
ALICE = Identity("alice", frozenset({"dba", "dba-leads"}))
UPDATE = b"UPDATE accounts SET balance = 0 WHERE id = 7"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "audit.db"


@pytest.fixture
def store(db: Path) -> Iterator[AuditStore]:
    s = AuditStore(db)
    yield s
    s.close()


@pytest.fixture
def approvals(store: AuditStore) -> Approvals:
    return Approvals(store)


def file(approvals: Approvals, rule: ApprovalRule = RULE, now: float = T0, **kw: object) -> ap.Request:
    fields: dict[str, object] = {"requester": "alice", "target": "pg-prod", "kind": RequestKind.ACCESS,
                                 "reason": "INC-42", "policy": "dba-prod"}
    fields.update(kw)
    return approvals.file_request(rule, now=now, **fields)  # type: ignore[arg-type]


def kinds(store: AuditStore) -> list[str]:
    return [e.kind for e in store.events()]


def test_filed_request_is_stored_audited_and_listed(approvals: Approvals, store: AuditStore) -> None:
    r = file(approvals, duration=1800.0)
    assert approvals.get(r.id) == r and r.id.startswith("r-")
    [event] = store.events(kinds=("request.filed",))
    assert (event.user, event.target, event.rule, event.outcome) == ("alice", "pg-prod", "dba-prod", "pending")
    assert event.detail["request"] == r.id and event.detail["reason"] == "INC-42"
    assert event.detail["approvers"] == {"users": ["lead"], "groups": ["dba-leads"]}
    assert approvals.list_for(ALICE, T0 + 1).mine == [r]
    assert approvals.list_for(ALICE, T0 + 1).to_decide == []  # alice is an approver, but not of her own request
    assert approvals.list_for(CAROL, T0 + 1).to_decide == [r]
    assert approvals.list_for(Identity("mallory"), T0 + 1).to_decide == []
    assert approvals.list_for(CAROL, T0 + 3600).to_decide == []  # expired by then


def test_refused_filing_is_audited(approvals: Approvals, store: AuditStore) -> None:
    with pytest.raises(ApprovalRefused, match="requires a reason") as e:
        file(approvals, reason="")
    assert isinstance(e.value.error, ap.ReasonRequired) and e.value.exit_code == 3
    assert kinds(store) == ["request.refused"]
    with pytest.raises(UnknownRequest):
        approvals.get("r-nope")


def test_self_approval_is_refused_and_audited(approvals: Approvals, store: AuditStore) -> None:
    r = file(approvals)
    with pytest.raises(ApprovalRefused, match="no self-approval") as e:
        approvals.approve(r.id, ALICE, T0 + 1)
    assert isinstance(e.value.error, ap.SelfApproval)
    assert approvals.get(r.id).state is State.PENDING and approvals.grant_of(r.id) is None
    refused = store.events(kinds=("request.refused",))[-1]
    assert refused.user == "alice" and refused.detail["request"] == r.id


def test_two_approvals_needed_and_then_a_grant(approvals: Approvals, store: AuditStore) -> None:
    r = file(approvals, TWO, duration=1800.0)
    partial = approvals.approve(r.id, CAROL, T0 + 1, comment="looks fine")
    assert partial.state is State.PENDING and approvals.grant_of(r.id) is None
    assert approvals.active_grant("alice", "pg-prod", T0 + 2) is None
    with pytest.raises(ApprovalRefused, match="carol already approved"):
        approvals.approve(r.id, CAROL, T0 + 2)
    assert approvals.list_for(CAROL, T0 + 2).to_decide == []  # already voted
    assert approvals.list_for(DAVE, T0 + 2).to_decide == [partial]
    done = approvals.approve(r.id, DAVE, T0 + 3)
    assert done.state is State.APPROVED and done.approvers == {"carol", "dave"}
    grant = approvals.grant_of(r.id)
    assert grant is not None and (grant.user, grant.starts, grant.ends) == ("alice", T0 + 3, T0 + 1803)
    assert approvals.active_grant("alice", "pg-prod", T0 + 100) == grant
    assert approvals.active_grant("alice", "pg-prod", T0 + 1803) is None
    assert approvals.active_grant("bob", "pg-prod", T0 + 100) is None
    assert approvals.active_grant("alice", "pg-prod", T0 + 100, RequestKind.TRANSFER) is None
    votes = store.events(kinds=("request.approved",))
    assert [(e.user, e.outcome, e.detail["approvals"]) for e in votes] == [("carol", "partial", 1),
                                                                          ("dave", "approved", 2)]
    created = store.events(kinds=("grant.created",))[-1]
    assert created.user == "alice" and created.detail["approved_by"] == ["carol", "dave"]


def test_expired_pending_request_cannot_be_approved(approvals: Approvals, store: AuditStore) -> None:
    r = file(approvals)
    with pytest.raises(ApprovalRefused, match="expired while pending") as e:
        approvals.approve(r.id, CAROL, r.expires + 1)
    assert isinstance(e.value.error, ap.RequestExpired)
    assert approvals.get(r.id).state is State.EXPIRED  # expired on the spot, and stays so
    assert approvals.grant_of(r.id) is None
    assert kinds(store)[-2:] == ["request.expired", "request.refused"]
    with pytest.raises(ApprovalRefused, match="already expired"):
        approvals.approve(r.id, CAROL, r.expires + 2)


def test_expire_due_expires_requests_and_logs_grant_ends_once(approvals: Approvals, store: AuditStore) -> None:
    stale, fresh = file(approvals), file(approvals, now=T0 + 3000)
    granted = file(approvals, duration=600.0)
    approvals.approve(granted.id, LEAD, T0 + 10)
    result = approvals.expire_due(T0 + 3600)
    assert [r.id for r in result.requests] == [stale.id]
    assert [g.request_id for g in result.grants] == [granted.id]
    assert approvals.get(stale.id).state is State.EXPIRED and approvals.get(fresh.id).state is State.PENDING
    assert approvals.expire_due(T0 + 3601) == type(result)()  # nothing twice
    assert Counter(kinds(store))["request.expired"] == 1 and Counter(kinds(store))["grant.expired"] == 1


def test_denial_reaches_the_requester_with_its_reason(approvals: Approvals, store: AuditStore) -> None:
    r = file(approvals)
    with pytest.raises(ApprovalRefused, match="needs a reason"):
        approvals.deny(r.id, CAROL, "", T0 + 1)
    denied = approvals.deny(r.id, CAROL, "not during the freeze", T0 + 2)
    seen = approvals.list_for(ALICE, T0 + 3).mine[0]
    assert seen == denied and (seen.state, seen.decision_reason) == (State.DENIED, "not during the freeze")
    event = store.events(kinds=("request.denied",))[-1]
    assert (event.user, event.detail["requester"], event.detail["reason"]) == ("carol", "alice",
                                                                               "not during the freeze")
    with pytest.raises(ApprovalRefused, match="already denied"):
        approvals.approve(r.id, LEAD, T0 + 4)


def test_cancel(approvals: Approvals, store: AuditStore) -> None:
    r = file(approvals)
    with pytest.raises(ApprovalRefused, match="only alice"):
        approvals.cancel(r.id, "carol", T0 + 1)
    assert approvals.cancel(r.id, "alice", T0 + 2, "gave up waiting").state is State.CANCELLED
    assert store.events(kinds=("request.cancelled",))[-1].detail["reason"] == "gave up waiting"


def test_grants_are_revocable(approvals: Approvals, store: AuditStore) -> None:
    r = file(approvals)
    approvals.approve(r.id, LEAD, T0 + 1)
    grant = approvals.active_grant("alice", "pg-prod", T0 + 2)
    assert grant is not None and approvals.ended_among({grant.id}, T0 + 2) == set()
    revoked = approvals.revoke_grant(grant.id, "lead", T0 + 3, "wrong ticket")
    assert revoked.revoked_by == "lead" and approvals.grant(grant.id) == revoked
    assert approvals.active_grant("alice", "pg-prod", T0 + 4) is None
    assert approvals.ended_among({grant.id, "g-other"}, T0 + 4) == {grant.id}
    event = store.events(kinds=("grant.revoked",))[-1]
    assert (event.user, event.detail["holder"], event.detail["reason"]) == ("lead", "alice", "wrong ticket")
    with pytest.raises(ApprovalRefused, match="already revoked"):
        approvals.revoke_grant(grant.id, "lead", T0 + 5)
    assert approvals.expire_due(T0 + 99_999).grants == []  # a revoked grant does not "expire" as well
    with pytest.raises(UnknownRequest):
        approvals.revoke_grant("g-nope", "lead", T0 + 5)


# -- held statements ---------------------------------------------------------------------------------------


def test_held_statement_runs_byte_identical_exactly_once(approvals: Approvals, store: AuditStore) -> None:
    r = file(approvals, kind=RequestKind.STATEMENT, statement=UPDATE, duration=600.0)
    assert approvals.consume_statement_approval("alice", "pg-prod", UPDATE, T0 + 1) is None  # still pending
    approvals.approve(r.id, LEAD, T0 + 2)
    assert approvals.grant_of(r.id) is None  # a statement approval grants no access
    assert approvals.active_grant("alice", "pg-prod", T0 + 3) is None
    for other_user, other_target, other_sql in (("bob", "pg-prod", UPDATE), ("alice", "pg-dev", UPDATE),
                                                ("alice", "pg-prod", UPDATE + b" "),
                                                ("alice", "pg-prod", b"DELETE FROM accounts")):
        assert approvals.consume_statement_approval(other_user, other_target, other_sql, T0 + 3) is None
    used = approvals.consume_statement_approval("alice", "pg-prod", UPDATE, T0 + 4)
    assert used is not None and used.id == r.id and used.consumed_at == T0 + 4
    assert approvals.consume_statement_approval("alice", "pg-prod", UPDATE, T0 + 5) is None
    assert Counter(kinds(store))["statement.consumed"] == 1
    assert approvals.latest_statement("alice", "pg-prod", UPDATE) == used
    assert approvals.latest_statement("alice", "pg-prod", UPDATE + b" ") is None


def test_held_statement_approval_lapses_and_denial_is_found(approvals: Approvals) -> None:
    r = file(approvals, kind=RequestKind.STATEMENT, statement=UPDATE, duration=60.0)
    approvals.approve(r.id, LEAD, T0 + 2)
    assert approvals.consume_statement_approval("alice", "pg-prod", UPDATE, T0 + 62) is None
    denied = file(approvals, kind=RequestKind.STATEMENT, statement=UPDATE, now=T0 + 70)
    approvals.deny(denied.id, LEAD, "wrap it in a transaction", T0 + 71)
    latest = approvals.latest_statement("alice", "pg-prod", UPDATE)
    assert latest is not None and latest.decision_reason == "wrap it in a transaction"


def _consumer(path: str, statements: list[bytes], barrier: threading.Barrier, results: multiprocessing.Queue) -> None:
    approvals = Approvals(AuditStore(Path(path)))
    barrier.wait()
    used = [approvals.consume_statement_approval("alice", "pg-prod", s, T0 + 10) for s in statements]
    results.put([u.id for u in used if u is not None])


def test_two_processes_never_consume_one_approval_twice(db: Path, approvals: Approvals, store: AuditStore) -> None:
    statements = [b"UPDATE t SET x = %d WHERE id = 1" % i for i in range(20)]
    for s in statements:
        approvals.approve(file(approvals, kind=RequestKind.STATEMENT, statement=s).id, LEAD, T0 + 1)
    barrier = multiprocessing.Barrier(2)
    results: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_consumer, args=(str(db), statements, barrier, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    used = [i for ids in got for i in ids]
    assert len(used) == 20 and len(set(used)) == 20  # each approval used exactly once, by one of the two
    assert Counter(kinds(store))["statement.consumed"] == 20
    assert store.verify_chain().ok


def _approver(path: str, request_id: str, who: str, barrier: threading.Barrier,
              results: multiprocessing.Queue) -> None:
    approvals = Approvals(AuditStore(Path(path)))
    barrier.wait()
    try:
        results.put(approvals.approve(request_id, Identity(who, frozenset({"dba-leads"})), T0 + 5).state.value)
    except ApprovalRefused as e:
        results.put(type(e.error).__name__)


def test_two_processes_approving_at_once_make_one_grant(db: Path, approvals: Approvals, store: AuditStore) -> None:
    r = file(approvals)
    barrier = multiprocessing.Barrier(2)
    results: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_approver, args=(str(db), r.id, who, barrier, results))
             for who in ("carol", "dave")]
    for p in procs:
        p.start()
    outcomes = sorted(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    assert outcomes == ["IllegalTransition", "approved"]
    assert len(approvals.grants(user="alice")) == 1
    assert Counter(kinds(store))["grant.created"] == 1


# -- break-glass ---------------------------------------------------------------------------------------------


def test_break_glass_is_flagged_granted_and_listed_for_review(approvals: Approvals, store: AuditStore) -> None:
    with pytest.raises(ApprovalRefused, match="does not allow break-glass"):
        approvals.break_glass(RULE, requester="alice", target="pg-prod", reason="outage", now=T0)
    assert kinds(store) == ["breakglass.refused"]
    heard: list[Change] = []
    approvals.add_listener(heard.append)
    glass = dataclasses.replace(RULE, break_glass=True)
    request, grant = approvals.break_glass(glass, requester="alice", target="pg-prod", reason="INC-7 outage",
                                           now=T0, duration=900.0, policy="dba-prod")
    assert request.break_glass and request.state is State.APPROVED and grant.ends == T0 + 900.0
    assert approvals.active_grant("alice", "pg-prod", T0 + 1) == grant
    used = store.events(kinds=("breakglass.used",))[-1]
    assert used.user == "alice" and "BREAK-GLASS" in used.detail["flag"] and used.detail["reason"] == "INC-7 outage"
    assert [c.kind for c in heard] == ["breakglass.used"] and heard[0].grant == grant
    assert approvals.break_glass_to_review() == [request]
    with pytest.raises(ApprovalRefused, match="no self-approval"):
        approvals.review_break_glass(request.id, ALICE, T0 + 100)
    approvals.review_break_glass(request.id, CAROL, T0 + 100, "justified")
    assert approvals.break_glass_to_review() == []
    assert store.events(kinds=("breakglass.reviewed",))[-1].user == "carol"


# -- durability and the audit chain ----------------------------------------------------------------------


def test_restart_loses_nothing_and_the_chain_verifies(db: Path) -> None:
    first = Approvals(AuditStore(db))
    pending = file(first, TWO)
    first.approve(pending.id, CAROL, T0 + 1)
    granted = file(first)
    first.approve(granted.id, LEAD, T0 + 2)
    held = file(first, kind=RequestKind.STATEMENT, statement=UPDATE)
    first.approve(held.id, LEAD, T0 + 3)
    denied = file(first)
    first.deny(denied.id, LEAD, "no", T0 + 4)
    before = {r.id: first.get(r.id) for r in (pending, granted, held, denied)}
    grants_before = first.grants()
    first.store.close()

    again = Approvals(AuditStore(db))  # a new process: tables exist, the rule comes from the stored snapshot
    assert {i: again.get(i) for i in before} == before
    assert again.grants() == grants_before and len(grants_before) == 1
    assert again.active_grant("alice", "pg-prod", T0 + 10) == grants_before[0]
    assert again.approve(pending.id, DAVE, T0 + 5).state is State.APPROVED  # the second of two approvals
    assert again.consume_statement_approval("alice", "pg-prod", UPDATE, T0 + 6) is not None
    report = again.store.verify_chain()
    assert report.ok and report.events == len(again.store.events()) > 10
    again.store.close()


def test_a_failing_listener_does_not_undo_the_decision(approvals: Approvals, store: AuditStore) -> None:
    def broken(change: Change) -> None:
        raise RuntimeError("listener bug")

    approvals.add_listener(broken)
    r = file(approvals)
    assert approvals.approve(r.id, LEAD, T0 + 1).state is State.APPROVED
    assert approvals.grant_of(r.id) is not None and "grant.created" in kinds(store)


# -- waiting ---------------------------------------------------------------------------------------------------


def test_waiter_hears_an_in_process_decision_at_once(approvals: Approvals) -> None:
    r = file(approvals, now=time.time())

    async def scenario() -> tuple[ap.Request, float]:
        waiting = asyncio.create_task(approvals.wait(r.id, timeout=10, poll=30))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        approvals.approve(r.id, LEAD, time.time())
        decided = await waiting
        return decided, time.monotonic() - started

    decided, took = asyncio.run(scenario())
    assert decided.state is State.APPROVED and took < 0.5  # poll=30: only the notification explains this


def _approve_in_thread(db: Path, request_id: str) -> None:
    other = Approvals(AuditStore(db))  # its own connection, like the admin CLI
    other.approve(request_id, LEAD, time.time())
    other.store.close()


def test_waiter_sees_another_process_decision_within_a_poll(db: Path, approvals: Approvals) -> None:
    r = file(approvals, now=time.time())

    async def scenario() -> tuple[ap.Request, float]:
        waiting = asyncio.create_task(approvals.wait(r.id, timeout=10, poll=0.2))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await asyncio.to_thread(_approve_in_thread, db, r.id)
        decided = await waiting
        return decided, time.monotonic() - started

    decided, took = asyncio.run(scenario())
    assert decided.state is State.APPROVED and took < 1.0


def test_wait_times_out_pending_and_notices_expiry(approvals: Approvals) -> None:
    now = time.time()
    pending = file(approvals, now=now)
    short = file(approvals, dataclasses.replace(RULE, request_ttl=0.3), now=now)

    async def scenario() -> tuple[ap.Request, ap.Request, float]:
        started = time.monotonic()
        timed_out = await approvals.wait(pending.id, timeout=0.2, poll=0.05)
        waited = time.monotonic() - started
        return timed_out, await approvals.wait(short.id, timeout=5, poll=0.05), waited

    timed_out, expired, waited = asyncio.run(scenario())
    assert timed_out.state is State.PENDING and 0.15 < waited < 1.0
    assert expired.state is State.EXPIRED
    assert approvals._waiters == {}  # nothing left behind


def test_a_transition_whose_audit_event_cannot_be_written_does_not_happen(approvals: Approvals,
                                                                          store: AuditStore) -> None:
    request = file(approvals)
    # A real failure inside SQLite: the events table refuses this one kind of event.
    store.db.conn.execute("CREATE TRIGGER no_denials BEFORE INSERT ON events WHEN NEW.kind = 'request.denied' "
                          "BEGIN SELECT RAISE(ABORT, 'audit disk full'); END")
    with pytest.raises(sqlite3.IntegrityError, match="audit disk full"):
        approvals.deny(request.id, LEAD, "no", T0 + 1)
    assert approvals.get(request.id).state is ap.State.PENDING  # the denial rolled back with its event
    store.db.conn.execute("DROP TRIGGER no_denials")
    assert approvals.deny(request.id, LEAD, "no", T0 + 2).state is ap.State.DENIED
    assert kinds(store).count("request.denied") == 1 and store.verify_chain().ok
