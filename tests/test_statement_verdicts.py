"""The inspector keeps a connection's verdicts by statement shape: a kept verdict must be the one it would give.

On the SQL data path the inspector judges ``SELECT … WHERE id = 42`` once per
shape and answers the next ``… id = 43`` from what it kept. These tests hold that
to the guardrail corpus (every bypass shape included): an inspector warmed with
other literals decides exactly as a fresh one; reviews, which depend on the
text and on approvals, are never kept; and a kept allow does not outlive an
audit trail that cannot be written.
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest
from test_held_statements import audit_trail_down
from test_sql_guardrails import ALLOWED, DENIED, REVIEWED
from test_sql_shapes import _scannable, mirror, other_literals

from bastion.approvals import Approvals
from bastion.audit import AuditStore
from bastion.config import load_config
from bastion.sqlaccess import PolicyInspector
from policies.model import Identity, StatementEffect

# The guardrails of test_sql_guardrails.POLICY, as a bastion.yaml says them.
CONFIG = """\
listen: {ssh: "127.0.0.1:2222", http: "127.0.0.1:8080"}
state_dir: state
identity:
  oidc: {issuer: "https://idp.example.com", client_id: bastion}
targets:
  pg-prod: {kind: postgres, address: "db1:5432"}
policies:
  - name: p
    subjects: {groups: [dev]}
    targets: {names: [pg-prod]}
    access: allow
    approval: {approvers: {groups: [dba]}, request_ttl: 10m}
    guardrails:
      - {effect: deny, statements: [drop, truncate, alter_system, copy_program, copy_file, set_role,
                                    set_session_authorization, do, dangerous_function]}
      - {effect: deny, statements: [update, delete], without_where: true}
      - {effect: review, statements: [insert, update, delete, merge], tables: [customers, "billing.inv*"]}
      - {effect: allow, statements: [select]}
"""
ALICE = Identity("alice", frozenset({"dev"}))
CORPUS = [sql for sql, _ in DENIED] + [sql for sql, _ in REVIEWED] + ALLOWED


def inspector(tmp_path: Path, *, approvals: bool = False) -> PolicyInspector:
    """The proxy's inspector over a real audit store; without ``approvals``, a review is refused as unavailable."""
    path = tmp_path / "bastion.yaml"
    path.write_text(textwrap.dedent(CONFIG))
    config = load_config(path)
    store = AuditStore(tmp_path / "audit.db")
    return PolicyInspector(config=config, store=store, identity=ALICE, target="pg-prod", policy=config.policies[0],
                           session="s1", source="127.0.0.1", approvals=Approvals(store) if approvals else None)


@pytest.mark.parametrize("sql", CORPUS, ids=[s[:60] for s in CORPUS])
def test_a_warm_inspector_decides_like_a_fresh_one(tmp_path: Path, sql: str) -> None:
    (tmp_path / "warm").mkdir()
    (tmp_path / "fresh").mkdir()
    warm, fresh = inspector(tmp_path / "warm"), inspector(tmp_path / "fresh")
    warm.check(other_literals(sql))
    expected = fresh.check(sql)
    for _ in range(2):  # the second time from what the first kept, when its shape allows that
        got = warm.check(sql)
        assert (got.effect, got.rule, got.reason) == (expected.effect, expected.rule, expected.reason)


REFUSED = [(sql, StatementEffect.DENY) for sql, _ in DENIED if _scannable(sql)] + \
    [(sql, StatementEffect.REVIEW) for sql, _ in REVIEWED if _scannable(sql)]


@pytest.mark.parametrize(("sql", "effect"), REFUSED, ids=[s[:60] for s, _ in REFUSED])
def test_a_harmless_look_alike_never_lends_its_verdict(tmp_path: Path, sql: str, effect: StatementEffect) -> None:
    # A SELECT with the same token lengths, both behind a comment of multi-byte characters: when
    # character positions were read as byte offsets, the two shared a shape and the refusal became an allow.
    look_alike, refused = mirror(sql)
    judge = inspector(tmp_path)
    judge.check(look_alike)
    assert judge.check(refused).effect is effect


def test_repeated_shapes_are_judged_once(tmp_path: Path) -> None:
    judge = inspector(tmp_path)
    first = judge.check("SELECT abalance FROM pgbench_accounts WHERE aid = 1")
    assert first.allowed
    assert all(judge.check(f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid}") is first
               for aid in range(2, 50))
    denied = judge.check("DELETE FROM orders WHERE 1 = 1")  # no column in the WHERE: as good as none
    assert denied.effect is StatementEffect.DENY
    assert judge.check("DELETE FROM orders WHERE 2 = 2") is denied  # a refusal is kept too


def test_each_held_text_files_its_own_request(tmp_path: Path) -> None:
    judge = inspector(tmp_path, approvals=True)
    seven = judge.check("UPDATE customers SET frozen = true WHERE id = 7")
    eight = judge.check("UPDATE customers SET frozen = true WHERE id = 8")
    assert seven.effect is eight.effect is StatementEffect.REVIEW
    assert seven.request is not None and eight.request is not None and seven.request != eight.request
    again = judge.check("UPDATE customers SET frozen = true WHERE id = 7")
    assert again.request == seven.request and "waits for an approver" in again.reason


def test_a_kept_allow_does_not_outlive_a_failing_audit_trail(tmp_path: Path) -> None:
    judge = inspector(tmp_path)
    store = judge._store

    async def main() -> None:
        assert judge.check("SELECT * FROM orders WHERE id = 1").allowed
        with audit_trail_down(store):
            refused = judge.check("SELECT * FROM orders WHERE id = 2")
            assert refused.effect is StatementEffect.DENY and "audit trail cannot be written" in refused.reason
        assert judge.check("SELECT * FROM orders WHERE id = 3").allowed

    asyncio.run(main())
