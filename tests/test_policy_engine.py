"""The policy engine: default deny, deny wins, allow beats approval, forwarding is opt-in."""

from __future__ import annotations

from policies.engine import NO_MATCH_RULE, decide, may_forward_anywhere, visible_targets
from policies.model import Access, Effect, Identity, Policy, Subjects, Target, TargetSelector

PG = Target("pg-prod", "postgres", {"env": "prod"})
DEMO = Target("pg-demo", "postgres", {"env": "demo"})
WEB = Target("web-1", "ssh", {"env": "prod"})
ALICE = Identity("alice", frozenset({"dev"}))
BOB = Identity("bob", frozenset({"sre"}))


def policy(name: str, access: Access, *, groups: tuple[str, ...] = (), users: tuple[str, ...] = (),
           names: tuple[str, ...] = (), labels: tuple[tuple[str, str], ...] = (),
           kinds: tuple[str, ...] = (), forward: bool = False) -> Policy:
    return Policy(name, Subjects(users, groups), TargetSelector(names, kinds, labels), access, forward)


POLICIES = (
    policy("dev-demo", Access.ALLOW, groups=("dev",), labels=(("env", "demo"),)),
    policy("dev-prod", Access.APPROVAL, groups=("dev",), labels=(("env", "prod"),)),
    policy("sre-all", Access.ALLOW, groups=("sre",), names=("*",), forward=True),
    policy("no-web-for-alice", Access.DENY, users=("alice",), kinds=("ssh",)),
)


def test_default_deny() -> None:
    d = decide(POLICIES, Identity("eve"), PG, "connect", 0)
    assert d.effect is Effect.DENY and d.rule == NO_MATCH_RULE and "eve" in d.reason


def test_allow_and_approval() -> None:
    assert decide(POLICIES, ALICE, DEMO, "connect", 0).effect is Effect.ALLOW
    d = decide(POLICIES, ALICE, PG, "connect", 0)
    assert (d.effect, d.rule) == (Effect.APPROVAL, "dev-prod")


def test_deny_wins_over_other_matches() -> None:
    d = decide(POLICIES, ALICE, WEB, "connect", 0)
    assert (d.effect, d.rule) == (Effect.DENY, "no-web-for-alice")


def test_allow_beats_approval() -> None:
    both = (*POLICIES, policy("alice-pg", Access.ALLOW, users=("alice",), names=("pg-*",)))
    assert decide(both, ALICE, PG, "connect", 0).rule == "alice-pg"


def test_forwarding_needs_the_flag() -> None:
    assert decide(POLICIES, ALICE, DEMO, "forward", 0).effect is Effect.DENY
    assert decide(POLICIES, BOB, PG, "forward", 0).effect is Effect.ALLOW
    assert not may_forward_anywhere(POLICIES, ALICE)
    assert may_forward_anywhere(POLICIES, BOB)


def test_reaching_an_ssh_target_needs_the_flag_too_for_proxyjump() -> None:
    dave = Identity("dave", frozenset({"dev"}))
    assert not may_forward_anywhere(POLICIES, dave, [PG, DEMO])  # databases only: no direct-tcpip needed
    assert may_forward_anywhere(POLICIES, dave, [PG, DEMO, WEB])  # dev-prod reaches web-1 (with approval)
    # alice's policies match web-1 too, but a deny policy contributes nothing; the channel is still decided.
    assert may_forward_anywhere(POLICIES, ALICE, [WEB])
    assert decide(POLICIES, ALICE, WEB, "connect", 0).effect is Effect.DENY
    assert not may_forward_anywhere(POLICIES, Identity("eve"), [WEB])


def test_visible_targets_hide_denied_ones() -> None:
    shown = visible_targets(POLICIES, ALICE, [WEB, PG, DEMO], 0)
    assert [(t.name, d.effect) for t, d in shown] == [("pg-demo", Effect.ALLOW), ("pg-prod", Effect.APPROVAL)]
