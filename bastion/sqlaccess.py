"""The bastion's policy side of a SQL session: what the wire proxy asks before and after each statement.

One :class:`PolicyInspector` per client connection. It judges each message
with the guardrails of the policy that granted access, masks results with that
policy's masking rules, and writes one audit event per statement (and a marker
in the session's recording when a statement is refused).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from policies.guardrails import DEFAULT_RULE, Verdict, evaluate
from policies.masking import Column as MaskColumn
from policies.masking import ColumnPlan, Masker
from policies.model import Identity, Policy, StatementEffect
from policies.pgtypes import mask_binary
from policies.sql import SqlError, Statement, classify, resolve_execute

from .audit import AuditStore
from .config import Config
from .proxies.base import Column, RowMasker, StatementEvent, StatementVerdict

MAX_AUDITED_SQL = 8192
REVIEW_UNAVAILABLE = "held statements need the approvals feature, which is not available yet; the statement was not run"


@dataclass
class _PlanMasker:
    """A :class:`RowMasker` for one result shape."""

    masker: Masker
    plan: ColumnPlan

    def text_row(self, values: list[bytes | None]) -> list[bytes | None]:
        masked, _ = self.masker.mask_row_text(self.plan, values)
        return masked

    def binary_value(self, index: int, type_oid: int, value: bytes) -> bytes | None:
        return mask_binary(type_oid, value, self.masker, self.plan, index)

    def free_text(self, text: str) -> str:
        return self.masker.mask_free_text(text)


def masker_for_policy(config: Config, policy: Policy) -> Masker | None:
    """The Masker of a policy's masking rules, or None when it has none."""
    if not policy.masking:
        return None
    secret = config.masking.hash_key
    # Without hash rules the key is never used; the loader requires one when a rule hashes.
    key = hashlib.sha256(secret.resolve().encode()).digest() if secret else secrets.token_bytes(32)
    return Masker(policy.masking, hash_key=key, custom_detectors=config.masking.detectors)


class PolicyInspector:
    """Guardrails, masking and audit for one SQL client connection."""

    def __init__(self, *, config: Config, store: AuditStore, identity: Identity, target: str, policy: Policy,
                 session: str, source: str, mark: Callable[[str], None] | None = None,
                 on_event: Callable[[StatementEvent], None] | None = None) -> None:
        self._store = store
        self._identity = identity
        self._target = target
        self._policy = policy
        self._session = session
        self._source = source
        self._mark = mark
        self._on_event = on_event
        self._masker = masker_for_policy(config, policy)
        self._prepared: dict[str, Statement] = {}
        self.masked_columns: set[str] = set()  # names of columns masked since the last reset (for the console)

    # -- Inspector ----------------------------------------------------------------

    def check(self, sql: str) -> StatementVerdict:
        """Judge one Query or Parse message (several statements in it are judged together)."""
        try:
            statements = [resolve_execute(s, self._prepared) for s in classify(sql)]
        except SqlError as e:
            return StatementVerdict(StatementEffect.DENY, "unparsable",
                                    f"the SQL could not be parsed, so it is not allowed ({e}); check the syntax")
        verdict = evaluate(self._policy.guardrails, statements)
        if verdict.effect is StatementEffect.ALLOW:
            self._track_prepared(statements)
        return _as_statement_verdict(verdict)

    def masker_for(self, columns: Sequence[Column]) -> RowMasker | None:
        """A masker for this result shape, or None when nothing in it is masked."""
        if self._masker is None:
            return None
        if not columns:
            return _PlanMasker(self._masker, self._masker.plan([]))
        plan = self._masker.plan([MaskColumn(table, name) for table, name, _ in columns])
        if plan.empty:
            return None
        self.masked_columns.update(columns[i][1] for i in plan.masked_columns)
        return _PlanMasker(self._masker, plan)

    def audit(self, event: StatementEvent) -> None:
        """One audit event per statement; refusals also go into the recording."""
        verdict = event.verdict
        self._store.append(
            "sql.statement", user=self._identity.user, source=self._source, target=self._target,
            session=self._session, rule=verdict.rule, outcome=verdict.effect.value,
            sql=event.sql[:MAX_AUDITED_SQL], params=list(event.params), rows=event.rows,
            duration=round(event.duration, 6), error=event.error,
            reason=None if verdict.allowed else verdict.reason)
        if not verdict.allowed and self._mark is not None:
            self._mark(f"statement {verdict.effect.value} by {verdict.rule} on {self._target}")
        if self._on_event is not None:
            self._on_event(event)

    # -- prepared statements ------------------------------------------------------------

    def _track_prepared(self, statements: list[Statement]) -> None:
        # Recorded when allowed, not when the server confirms: a failed re-PREPARE
        # of an allowed body leaves the name mapped to an allowed body, never to a worse one.
        for statement in statements:
            if statement.deallocates_all:
                self._prepared.clear()
            for name in statement.deallocates:
                self._prepared.pop(name, None)
            if statement.prepares and statement.prepared is not None:
                self._prepared[statement.prepares] = statement.prepared


def _as_statement_verdict(verdict: Verdict) -> StatementVerdict:
    if verdict.effect is StatementEffect.REVIEW:
        return StatementVerdict(StatementEffect.REVIEW, verdict.rule, f"{verdict.reason}; {REVIEW_UNAVAILABLE}")
    return StatementVerdict(verdict.effect, verdict.rule or DEFAULT_RULE, verdict.reason)
