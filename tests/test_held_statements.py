"""Held statements at the policy side of the SQL path: file once, run once on approval, report a denial.

The inspector is the one the proxy uses, over a real audit store and approvals
service; the wire side (BH001 with the request id) is covered end to end in
tests/e2e/test_approvals.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.approvals import Approvals
from bastion.audit import AuditStore
from bastion.config import load_config
from bastion.proxies.base import StatementVerdict
from bastion.sqlaccess import MAX_NAMED, PolicyInspector
from policies.approvals import State
from policies.model import Identity, StatementEffect

CONFIG = """\
listen: {ssh: "127.0.0.1:2222", http: "127.0.0.1:8080"}
state_dir: state
identity:
  oidc: {issuer: "https://idp.example.com", client_id: bastion}
targets:
  pg-prod: {kind: postgres, address: "db1:5432"}
policies:
  - name: dev-prod
    subjects: {groups: [dev]}
    targets: {names: [pg-prod]}
    access: allow
    approval: {approvers: {groups: [dba]}, request_ttl: 10m}
    guardrails:
      - {effect: review, statements: [update, delete]}
"""
UPDATE = "UPDATE accounts SET frozen = true WHERE id = 7"
ALICE = Identity("alice", frozenset({"dev"}))
BOB = Identity("bob", frozenset({"dba"}))


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(tmp_path: Path) -> tuple[PolicyInspector, Approvals, AuditStore, Clock]:
    path = tmp_path / "bastion.yaml"
    path.write_text(textwrap.dedent(CONFIG))
    config = load_config(path)
    store = AuditStore(tmp_path / "audit.db")
    clock = Clock()
    approvals = Approvals(store, clock=clock)
    inspector = PolicyInspector(config=config, store=store, identity=ALICE, target="pg-prod",
                                policy=config.policies[0], session="s1", source="127.0.0.1",
                                approvals=approvals, clock=clock)
    return inspector, approvals, store, clock


def test_a_held_statement_files_one_request_and_runs_once_after_approval(world) -> None:  # type: ignore[no-untyped-def]
    inspector, approvals, store, clock = world
    held = inspector.check(UPDATE)
    assert held.effect is StatementEffect.REVIEW and held.request is not None
    assert inspector.check(UPDATE).request == held.request  # the retry points at the same request
    request = approvals.get(held.request)
    assert request.statement == UPDATE.encode() and request.state is State.PENDING

    approvals.approve(held.request, BOB, clock.now)
    run = inspector.check(UPDATE)
    assert run.allowed and run.request == held.request and "bob" in run.reason
    again = inspector.check(UPDATE)  # used: the next one is a new request
    assert again.effect is StatementEffect.REVIEW and again.request not in (None, held.request)
    kinds = [e.kind for e in store.events()]
    assert kinds.count("request.filed") == 2 and kinds.count("statement.consumed") == 1


def test_an_approval_covers_only_the_byte_identical_statement(world) -> None:  # type: ignore[no-untyped-def]
    inspector, approvals, _, clock = world
    held = inspector.check(UPDATE)
    approvals.approve(held.request, BOB, clock.now)
    for other in (UPDATE + " ", UPDATE.replace("7", "8"), UPDATE.lower()):
        verdict = inspector.check(other)
        assert verdict.effect is StatementEffect.REVIEW and verdict.request != held.request
    assert inspector.check(UPDATE).allowed


def test_a_denial_is_reported_once_with_the_reason(world) -> None:  # type: ignore[no-untyped-def]
    inspector, approvals, _, clock = world
    held = inspector.check(UPDATE)
    approvals.deny(held.request, BOB, "not during business hours", clock.now)
    told = inspector.check(UPDATE)
    assert told.effect is StatementEffect.DENY
    assert f"request {held.request} was denied by bob: not during business hours" in told.reason
    assert inspector.check(UPDATE).request not in (None, held.request)


def test_an_expired_request_is_reported_and_cannot_be_approved(world) -> None:  # type: ignore[no-untyped-def]
    inspector, approvals, _, clock = world
    held = inspector.check(UPDATE)
    clock.now += 11 * 60
    approvals.expire_due(clock.now)
    assert "was expired" in inspector.check(UPDATE).reason
    with pytest.raises(Exception, match="expired"):
        approvals.approve(held.request, BOB, clock.now)


def test_parameters_cannot_ride_on_an_approval(world) -> None:  # type: ignore[no-untyped-def]
    inspector, approvals, _, _ = world
    verdict = inspector.check("UPDATE accounts SET frozen = true WHERE id = $1", extended=True)
    assert verdict.effect is StatementEffect.REVIEW and verdict.request is None
    assert "cannot take bound parameters" in verdict.reason
    assert approvals.list_for(BOB, 1_800_000_000.0).to_decide == []
    # The same text without parameters, sent through Parse, is held like any other.
    assert inspector.check(UPDATE, extended=True).request is not None


def test_without_approvals_review_is_refused_without_a_request(tmp_path: Path) -> None:
    path = tmp_path / "bastion.yaml"
    path.write_text(textwrap.dedent(CONFIG))
    config = load_config(path)
    inspector = PolicyInspector(config=config, store=AuditStore(tmp_path / "audit.db"), identity=ALICE,
                                target="pg-prod", policy=config.policies[0], session="s1", source="127.0.0.1")
    verdict = inspector.check(UPDATE)
    assert verdict.effect is StatementEffect.REVIEW and verdict.request is None
    assert "approvals are not available" in verdict.reason


@contextlib.contextmanager
def audit_trail_down(store: AuditStore) -> Iterator[None]:
    """Inside: a batch is queued and cannot be written (another writer holds the database); after: written.

    Needs a running event loop, as the data path has: deferred events then wait for their batch.
    """
    store.defer("sql.statement", sql="SELECT 1")
    store._conn.execute("PRAGMA busy_timeout = 50")
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(Exception, match="cannot write"):
            store.flush()
        yield
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    store.flush()


def test_nothing_runs_while_the_audit_trail_cannot_be_written(world) -> None:  # type: ignore[no-untyped-def]
    inspector, _, store, _ = world

    async def main() -> None:
        with audit_trail_down(store):
            refused = inspector.check("SELECT 1")
            assert refused.effect is StatementEffect.DENY and "audit trail cannot be written" in refused.reason
        assert inspector.check("SELECT 1").allowed

    asyncio.run(main())


def test_sql_that_defines_or_drops_prepared_names_says_which(world) -> None:  # type: ignore[no-untyped-def]
    # The proxy forgets what it knew by these names: the server's now mean something else, or nothing.
    inspector = world[0]
    assert inspector.check("PREPARE a AS SELECT 1").redefines == {"a"}
    assert inspector.check("DEALLOCATE b; DEALLOCATE PREPARE c").redefines == {"b", "c"}
    assert inspector.check('PREPARE "MiXed" AS SELECT 1').redefines == {"MiXed"}
    for everything in ("DEALLOCATE ALL", "DISCARD ALL"):
        assert inspector.check(everything).redefines is None
    assert inspector.check("SELECT 1").redefines == frozenset()


def test_a_held_query_cannot_be_declared_as_a_cursor(world) -> None:  # type: ignore[no-untyped-def]
    # FETCH ABSOLUTE on a (by default scrollable) cursor runs its query again: one approval, many runs.
    inspector, _, store, _ = world
    verdict = inspector.check("DECLARE c CURSOR FOR WITH d AS (DELETE FROM accounts WHERE id = 7 RETURNING *) "
                              "SELECT * FROM d")
    assert verdict.effect is StatementEffect.DENY and "cannot be a cursor" in verdict.reason
    assert not [e for e in store.events() if e.kind == "request.filed"]  # no request to approve


def test_sql_execute_runs_only_a_body_the_inspector_is_sure_of(world) -> None:  # type: ignore[no-untyped-def]
    # The inspector learns a PREPARE when it judges it, not when the server runs it: a second PREPARE of a
    # name (which the server refuses while the first exists), or a protocol Parse or Close of the name,
    # leaves it unsure which body EXECUTE would run, so EXECUTE is opaque from then on.
    inspector = world[0]
    assert inspector.check("PREPARE a AS SELECT 1").allowed
    assert inspector.check("EXECUTE a").allowed
    assert inspector.check("PREPARE a AS SELECT 2").allowed  # the server may refuse it: a exists
    assert not inspector.check("EXECUTE a").allowed
    assert inspector.check("SELECT 1/0; DEALLOCATE a").allowed  # the DEALLOCATE may never run
    assert inspector.check("PREPARE a AS SELECT 3").allowed
    assert not inspector.check("EXECUTE a").allowed
    assert inspector.check("PREPARE b AS SELECT 1").allowed
    inspector.forget("b")  # a protocol Parse or Close named b went to the server
    assert not inspector.check("EXECUTE b").allowed


def test_an_approved_execute_covers_the_body_it_ran_and_no_other(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "again.yaml").write_text(textwrap.dedent(CONFIG))
    config = load_config(tmp_path / "again.yaml")
    # The approval names what EXECUTE x runs in this session; in another, x may be something broader.
    inspector, approvals, store, clock = world
    narrow = "PREPARE x AS UPDATE accounts SET frozen = true WHERE id = 7"
    wide = "PREPARE x AS UPDATE accounts SET frozen = true WHERE id > 0"

    def approved(who: PolicyInspector, sql: str) -> StatementVerdict:
        held = who.check(sql)
        assert held.request is not None
        approvals.approve(held.request, BOB, clock.now)
        return who.check(sql)

    assert approved(inspector, narrow).allowed
    held = inspector.check("EXECUTE x")
    assert held.effect is StatementEffect.REVIEW and held.request is not None
    assert narrow in approvals.get(held.request).statement.decode()  # the reviewer reads the body
    approvals.approve(held.request, BOB, clock.now)
    other = PolicyInspector(config=config, store=store, identity=ALICE, target="pg-prod",
                            policy=config.policies[0], session="s2", source="127.0.0.1", approvals=approvals,
                            clock=clock)
    assert approved(other, wide).allowed
    elsewhere = other.check("EXECUTE x")
    assert elsewhere.effect is StatementEffect.REVIEW and elsewhere.request not in (None, held.request)
    assert inspector.check("EXECUTE x").allowed  # where it was approved, it runs (once)


def test_a_connection_that_names_very_many_statements_keeps_a_bounded_set(world) -> None:  # type: ignore[no-untyped-def]
    inspector = world[0]
    for n in range(MAX_NAMED + 1):
        inspector.forget(f"_pg3_{n}")
    assert len(inspector._named) <= MAX_NAMED
    assert inspector.check("PREPARE fresh AS SELECT 1").allowed
    assert not inspector.check("EXECUTE fresh").allowed  # past the bound, every name counts as used
