"""Guardrails: allow, review or deny each SQL statement by kind, relation and WHERE clause.

The semantics, for one message (one or more statements):

1. A guardrail *matches* a statement when every criterion it gives holds:
   ``statements`` (one of these kinds occurs anywhere in the statement),
   ``tables`` (a relation matches one of the globs, see
   :func:`relation_matches`) and ``without_where`` (an UPDATE/DELETE lacks a
   WHERE). Criteria given together must hold *for the same action*:
   ``{statements: [delete], tables: [users]}`` matches a DELETE from users, not a
   DELETE from orders that reads users in a subquery.
2. Every matching guardrail contributes its effect; **deny beats review beats
   allow**. Among equals, the first in the policy is cited.
3. A statement that no guardrail matches gets ``default`` (allow, unless the
   caller says otherwise).
4. *Opaque* kinds, whose effect cannot be seen from the text (``do``,
   ``execute`` of a statement the session was not seen preparing,
   ``dangerous_function``, ``other``), get ``opaque`` (deny) unless a matching
   guardrail names that kind in its ``statements``; then those guardrails
   decide (``{effect: review, statements: [do]}`` holds DO blocks for review).
5. The message's verdict is the strictest over its statements (the first
   statement among equals).
6. SQL that does not parse is denied with rule ``unparsable`` by
   :func:`decide_sql`: fail closed.

Reasons name the rule and say what to do: "ask for review", "add a WHERE
clause", "ask an administrator". Pure: no sockets, files or clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from .model import Guardrail, StatementEffect
from .sql import OPAQUE_KINDS, SqlError, Statement, classify, is_dangerous
from .sql_walk import ALL_RELATIONS

UNPARSABLE_RULE = "unparsable"
OPAQUE_RULE = "opaque"
DEFAULT_RULE = "default"
EMPTY_RULE = "empty"

SEVERITY = {StatementEffect.ALLOW: 0, StatementEffect.REVIEW: 1, StatementEffect.DENY: 2}  # larger is stricter
_LABELS = {
    "copy_to": "COPY … TO", "copy_from": "COPY … FROM", "copy_program": "COPY … PROGRAM",
    "copy_file": "COPY to or from a server file", "do": "a DO block",
    "execute": "EXECUTE of a statement not PREPAREd (once) in SQL in this session",
    "explain_analyze": "EXPLAIN ANALYZE", "other": "this kind of statement", "cursor": "a cursor command",
}


@dataclass(frozen=True)
class Verdict:
    """What happens to a message: the effect, the rule that decided it, why, and which statement."""

    effect: StatementEffect
    rule: str
    reason: str
    statement: Statement | None = None

    @property
    def severity(self) -> int:
        """0 allow, 1 review, 2 deny: larger is stricter."""
        return SEVERITY[self.effect]


def relation_matches(pattern: str, relation: str) -> bool:
    """True when a table glob matches a relation as written, case-insensitively.

    ``orders`` matches ``orders`` and ``shop.orders``; ``shop.orders`` matches
    ``shop.orders`` and also a bare ``orders``, because ``search_path`` may
    resolve it to that schema (a false match is safer than a missed one).
    ``shop.*`` as a *relation* (from DROP SCHEMA shop) matches every pattern
    that may name a table in shop; ``*`` (DROP DATABASE, DROP OWNED) matches all.
    """
    pattern, relation = pattern.lower(), relation.lower()
    parts = relation.split(".")
    if parts[-1] == ALL_RELATIONS:  # DROP SCHEMA s ("s.*") or DROP DATABASE/OWNED ("*"): every table in it
        return len(parts) == 1 or "." not in pattern or fnmatchcase(parts[-2], pattern.rsplit(".", 2)[-2])
    if any(fnmatchcase(".".join(parts[i:]), pattern) for i in range(len(parts))):
        return True
    return len(parts) == 1 and "." in pattern and fnmatchcase(parts[0], pattern.rsplit(".", 1)[1])


def _actions(guardrail: Guardrail, statement: Statement) -> list[tuple[str, str]]:
    """The (kind, relation) pairs of the statement that satisfy the guardrail's criteria together."""
    pairs = statement.unfiltered if guardrail.without_where else statement.targets
    return sorted(
        (kind, table) for kind, table in pairs
        if (not guardrail.statements or kind in guardrail.statements)
        and (not guardrail.tables or any(relation_matches(p, table) for p in guardrail.tables))
    )


def matches(guardrail: Guardrail, statement: Statement) -> bool:
    """True when every criterion the guardrail gives holds for the statement."""
    if guardrail.without_where or guardrail.tables:
        return bool(_actions(guardrail, statement))
    return not guardrail.statements or not statement.kinds.isdisjoint(guardrail.statements)


def _label(kind: str, statement: Statement) -> str:
    if kind == "dangerous_function":
        names = sorted(f for f in statement.functions if is_dangerous(f))
        return ", ".join(f"{name}()" for name in names) or "a dangerous function"
    return _LABELS.get(kind, kind.upper().replace("_", " "))


def _what(guardrail: Guardrail, statement: Statement) -> str:
    """What the guardrail caught, in words: "DELETE on customers without a WHERE clause"."""
    actions = _actions(guardrail, statement) if guardrail.without_where or guardrail.tables else []
    if actions:
        kinds = sorted({kind for kind, _ in actions})
    elif guardrail.statements:
        kinds = [k for k in guardrail.statements if k in statement.kinds]
    else:
        kinds = [statement.kind]
    what = "/".join(_label(k, statement) for k in kinds)
    if actions:
        what += " on " + ", ".join(sorted({table for _, table in actions}))
    if guardrail.without_where:
        what += " without a WHERE clause"
    return what


def _reason(guardrail: Guardrail, statement: Statement) -> str:
    what, rule = _what(guardrail, statement), guardrail.name or "a guardrail"
    hint = "; add a WHERE clause" if guardrail.without_where else ""
    if guardrail.effect is StatementEffect.DENY:
        return f"{what} is not allowed (rule {rule}){hint or '; ask an administrator if you need it'}"
    if guardrail.effect is StatementEffect.REVIEW:
        return f"{what} needs review (rule {rule}): ask for review{hint and ', or add a WHERE clause'}"
    return f"{what} is allowed (rule {rule})"


def judge(
    guardrails: Sequence[Guardrail], statement: Statement, *,
    default: StatementEffect = StatementEffect.ALLOW, opaque: StatementEffect = StatementEffect.DENY,
) -> Verdict:
    """The verdict for one statement (see the module docstring)."""
    hits = [g for g in guardrails if matches(g, statement)]
    candidates = [Verdict(g.effect, g.name, _reason(g, statement), statement) for g in hits]
    if not hits:
        word = {StatementEffect.ALLOW: "allowed", StatementEffect.REVIEW: "held for review",
                StatementEffect.DENY: "denied"}[default]
        candidates.append(Verdict(default, DEFAULT_RULE, f"no guardrail matches this statement: {word} by default",
                                  statement))
    named = {kind for g in hits for kind in g.statements}
    for kind in sorted((statement.kinds & OPAQUE_KINDS) - named):
        candidates.append(Verdict(
            opaque, OPAQUE_RULE,
            f"{_label(kind, statement)} cannot be inspected, so it is not allowed unless a guardrail names "
            f"{kind!r}; ask an administrator", statement))
    return max(candidates, key=lambda v: v.severity)  # max keeps the first of equals


def evaluate(
    guardrails: Sequence[Guardrail], statements: Sequence[Statement], *,
    default: StatementEffect = StatementEffect.ALLOW, opaque: StatementEffect = StatementEffect.DENY,
) -> Verdict:
    """The verdict for a message: the strictest over its statements."""
    if not statements:
        return Verdict(StatementEffect.ALLOW, EMPTY_RULE, "the message holds no statement")
    verdicts = [judge(guardrails, s, default=default, opaque=opaque) for s in statements]
    worst = max(range(len(verdicts)), key=lambda i: verdicts[i].severity)
    verdict = verdicts[worst]
    if len(statements) > 1:
        verdict = Verdict(verdict.effect, verdict.rule, f"statement {worst + 1} of {len(statements)}: "
                          f"{verdict.reason}", verdict.statement)
    return verdict


def decide_sql(
    guardrails: Sequence[Guardrail], sql: str, *,
    default: StatementEffect = StatementEffect.ALLOW, opaque: StatementEffect = StatementEffect.DENY,
) -> Verdict:
    """Classify and evaluate ``sql``; SQL that does not parse is denied (fail closed)."""
    try:
        statements = classify(sql)
    except SqlError as e:
        return Verdict(StatementEffect.DENY, UNPARSABLE_RULE,
                       f"the SQL could not be parsed, so it is not allowed ({e}); check the syntax")
    return evaluate(guardrails, statements, default=default, opaque=opaque)
