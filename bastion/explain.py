"""``bastion policy explain``: what the policy would do with some SQL, for a user on a target, and why.

It answers as the proxy would: first the connect decision of the policy engine
(a user who may not connect is denied, whatever the SQL), then the guardrails
of the policy that grants access. Exit codes: 0 allow, 3 deny, 4 review; with
``--each`` (one statement per line), the strictest.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from policies.engine import Decision, decide
from policies.guardrails import SEVERITY, Verdict, decide_sql
from policies.model import Effect, Identity, StatementEffect
from policies.sql import Statement

from .config import Config, config_path, load_config
from .errors import BastionError

EXIT_CODES = {StatementEffect.ALLOW: 0, StatementEffect.DENY: 3, StatementEffect.REVIEW: 4}
SQL_TARGET_KINDS = ("postgres",)


@dataclass(frozen=True)
class Explanation:
    """The decision on one piece of SQL: effect, deciding rule, why, and what was seen."""

    sql: str
    effect: StatementEffect
    rule: str
    reason: str
    connect: Decision
    statement: Statement | None = None   # the statement that decided, when the SQL parsed

    @property
    def exit_code(self) -> int:
        """0 allow, 3 deny, 4 review."""
        return EXIT_CODES[self.effect]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (``--json``)."""
        s = self.statement
        return {
            "sql": self.sql,
            "effect": self.effect.value,
            "rule": self.rule,
            "reason": self.reason,
            "exit_code": self.exit_code,
            "connect": {"effect": self.connect.effect.value, "rule": self.connect.rule,
                        "reason": self.connect.reason},
            "statement": None if s is None else {
                "text": s.text, "kind": s.kind, "kinds": sorted(s.kinds), "tables": sorted(s.tables),
                "functions": sorted(s.functions), "without_where": s.without_where, "read_only": s.read_only,
            },
        }


def explain(
    config: Config, user: str, groups: Iterable[str], target: str, sql: str, *, now: float | None = None
) -> Explanation:
    """Decide ``sql`` sent by ``user`` (in ``groups``) to ``target``, as the proxy would."""
    configured = config.targets.get(target)
    if configured is None:
        known = ", ".join(sorted(config.targets)) or "none"
        raise BastionError(f"unknown target {target!r} (configured: {known})")
    if configured.kind not in SQL_TARGET_KINDS:
        raise BastionError(f"{target} is a target of kind {configured.kind}; SQL guardrails apply to: "
                           f"{', '.join(SQL_TARGET_KINDS)}")
    identity = Identity(user, frozenset(groups))
    connect = decide(config.policies, identity, configured.target, "connect", time.time() if now is None else now)
    if connect.effect is Effect.DENY or connect.policy is None:
        return Explanation(sql, StatementEffect.DENY, connect.rule, f"{connect.reason}: no statement can run",
                           connect)
    verdict = decide_sql(connect.policy.guardrails, sql)
    if connect.effect is Effect.APPROVAL:
        verdict = _after_approval(connect, verdict)
    return Explanation(sql, verdict.effect, verdict.rule, verdict.reason, connect, verdict.statement)


def _after_approval(connect: Decision, verdict: Verdict) -> Verdict:
    """Connecting needs an approved request: nothing runs before one, so an allow becomes review."""
    if verdict.effect is StatementEffect.DENY:
        return verdict
    if verdict.effect is StatementEffect.REVIEW:
        return Verdict(verdict.effect, verdict.rule, f"{verdict.reason}; connecting also needs an approved "
                       f"request (policy {connect.rule})", verdict.statement)
    return Verdict(StatementEffect.REVIEW, connect.rule, f"{connect.reason}: ask for access; once approved, "
                   f"{verdict.reason}", verdict.statement)


def strictest(explanations: Sequence[Explanation]) -> Explanation:
    """The strictest explanation (deny, then review, then allow); the first among equals."""
    return max(explanations, key=lambda e: SEVERITY[e.effect])


def format_text(explanation: Explanation, *, show_sql: bool = False) -> str:
    """``deny  rule  reason``, and with show_sql the SQL on an indented second line."""
    line = f"{explanation.effect.value:<6}  {explanation.rule}  {explanation.reason}"
    return f"{line}\n        {explanation.sql}" if show_sql else line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``bastion policy explain``, except -c/--config (the CLI adds that one)."""
    parser.add_argument("--user", required=True, help="the username, as in the SSH certificate")
    parser.add_argument("--groups", default="", metavar="G1,G2", help="the user's groups, comma-separated")
    parser.add_argument("--target", required=True, help="a configured target name")
    parser.add_argument("--sql", metavar="SQL", help="the SQL to explain (default: read it from stdin)")
    parser.add_argument("--each", action="store_true",
                        help="one statement per line, each explained; the exit code is the strictest")
    parser.add_argument("--json", action="store_true", help="one JSON object per explanation")


def run_explain(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Run ``bastion policy explain``; returns the exit code (0 allow, 3 deny, 4 review)."""
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    text = args.sql if args.sql is not None else stdin.read()
    pieces = [line for line in text.splitlines() if line.strip()] if args.each else [text]
    if not any(piece.strip() for piece in pieces):
        raise BastionError("no SQL given: pass --sql or write it to stdin")
    config = load_config(config_path(args.config))
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    now = time.time()
    explanations = [explain(config, args.user, groups, args.target, sql, now=now) for sql in pieces]
    for e in explanations:
        print(json.dumps(e.as_dict()) if args.json else format_text(e, show_sql=args.each), file=stdout)
    return strictest(explanations).exit_code
