"""Access decisions: decide(identity, target, action, now) -> Decision.

Pure: the caller passes the policies and the time. Precedence is the usual one
for access control: an explicit deny wins, then allow, then approval; when no
policy matches, access is denied (default deny).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .model import Access, Effect, Identity, Policy, Target

NO_MATCH_RULE = "default-deny"

# Lower rank wins when several policies match.
_RANK = {Access.DENY: 0, Access.ALLOW: 1, Access.APPROVAL: 2}
_EFFECT = {Access.DENY: Effect.DENY, Access.ALLOW: Effect.ALLOW, Access.APPROVAL: Effect.APPROVAL}


@dataclass(frozen=True)
class Decision:
    """The outcome of one decision: what happens, which rule said so, and why."""

    effect: Effect
    rule: str
    reason: str
    policy: Policy | None = None

    @property
    def allowed(self) -> bool:
        """True only for a plain allow."""
        return self.effect is Effect.ALLOW


def matching(policies: Iterable[Policy], identity: Identity, target: Target) -> list[Policy]:
    """The policies whose subjects include the identity and whose selector includes the target."""
    return [p for p in policies if p.subjects.match(identity) and p.targets.match(target)]


def decide(
    policies: Sequence[Policy], identity: Identity, target: Target, action: str, now: float
) -> Decision:
    """Decide whether ``identity`` may perform ``action`` ("connect", "forward", ...) on ``target``.

    ``now`` is part of the signature so that time-boxed rules stay pure; the
    access modes decided here do not depend on it yet.
    """
    del now  # grants (time-boxed) are decided by the approvals layer
    candidates = matching(policies, identity, target)
    if not candidates:
        return Decision(
            Effect.DENY, NO_MATCH_RULE,
            f"no policy gives {identity.user} access to {target.name}",
        )
    best = min(candidates, key=lambda p: _RANK[p.access])
    if action == "forward" and best.access is not Access.DENY and not best.port_forwarding:
        return Decision(
            Effect.DENY, best.name,
            f"policy {best.name} does not allow port forwarding to {target.name}", best,
        )
    reasons = {
        Access.DENY: f"policy {best.name} denies {identity.user} access to {target.name}",
        Access.ALLOW: f"policy {best.name} allows {identity.user} to {action} {target.name}",
        Access.APPROVAL: f"policy {best.name} requires an approved request to {action} {target.name}",
    }
    return Decision(_EFFECT[best.access], best.name, reasons[best.access], best)


def visible_targets(
    policies: Sequence[Policy], identity: Identity, targets: Iterable[Target], now: float
) -> list[tuple[Target, Decision]]:
    """The targets this identity may see (allow or approval), each with its connect decision."""
    shown = []
    for target in targets:
        decision = decide(policies, identity, target, "connect", now)
        if decision.effect is not Effect.DENY:
            shown.append((target, decision))
    return sorted(shown, key=lambda pair: pair[0].name)


def may_forward_anywhere(policies: Sequence[Policy], identity: Identity, targets: Sequence[Target] = ()) -> bool:
    """True when some policy for this identity could allow a direct-tcpip channel (sets the cert flag).

    That is port forwarding, or reaching an SSH target at all: ``ssh -J`` opens a
    direct-tcpip channel to it. The bastion still decides each channel by policy.
    """
    for p in policies:
        if p.access is Access.DENY or not p.subjects.match(identity):
            continue
        if p.port_forwarding or any(t.kind == "ssh" and p.targets.match(t) for t in targets):
            return True
    return False
