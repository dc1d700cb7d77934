"""The policy schema: who may reach which target, and how.

These types are what config.py builds and what engine.py decides over. They are
plain frozen data, so a decision is a pure function of them.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from enum import StrEnum


class Access(StrEnum):
    """How a policy lets its subjects reach its targets."""

    ALLOW = "allow"
    APPROVAL = "approval"
    DENY = "deny"


class Effect(StrEnum):
    """The outcome of one decision."""

    ALLOW = "allow"
    APPROVAL = "approval"  # allowed once a human approves
    DENY = "deny"


@dataclass(frozen=True)
class Identity:
    """Who is asking: the username from the certificate and the groups from the ID token."""

    user: str
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Target:
    """What a policy can point at: a configured target, seen without its credentials."""

    name: str
    kind: str
    labels: dict[str, str] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash((self.name, self.kind))


@dataclass(frozen=True)
class Subjects:
    """Matches an identity by username or by any of its groups."""

    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    def match(self, identity: Identity) -> bool:
        """True when the identity is one of the users or in one of the groups."""
        return identity.user in self.users or not identity.groups.isdisjoint(self.groups)


@dataclass(frozen=True)
class TargetSelector:
    """Matches targets. Every criterion given must hold; names are shell-style globs."""

    names: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()

    def match(self, target: Target) -> bool:
        """True when the target satisfies every criterion given."""
        if self.names and not any(fnmatch.fnmatchcase(target.name, n) for n in self.names):
            return False
        if self.kinds and target.kind not in self.kinds:
            return False
        return all(target.labels.get(k) == v for k, v in self.labels)


@dataclass(frozen=True)
class Approvers:
    """Who may approve a request."""

    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class ApprovalRule:
    """How a request under an ``approval`` policy is approved."""

    approvers: Approvers = Approvers()
    min_approvals: int = 1
    max_duration: float = 3600.0  # seconds
    reason_required: bool = True
    request_ttl: float = 3600.0  # seconds a pending request lives
    break_glass: bool = False  # a subject may grant themselves emergency access, with a reason (flagged in audit)


class StatementEffect(StrEnum):
    """What a guardrail does to a statement it matches."""

    ALLOW = "allow"
    REVIEW = "review"  # held for a human; until approvals exist it is refused, saying so
    DENY = "deny"


@dataclass(frozen=True)
class Guardrail:
    """One statement rule of a policy. Every criterion given must hold for it to match."""

    effect: StatementEffect
    statements: tuple[str, ...] = ()   # statement kinds (see policies/sql.py KINDS); empty = any
    tables: tuple[str, ...] = ()       # globs over "schema.table" and bare "table"; empty = any
    without_where: bool = False        # only UPDATE/DELETE (anywhere in the statement) lacking a WHERE
    name: str = ""                     # how decisions cite it, e.g. "dba-prod.guardrails[1]"


@dataclass(frozen=True)
class MaskingRule:
    """Which result values to mask, and how."""

    strategy: str = "redact"           # redact | partial | hash
    columns: tuple[str, ...] = ()      # globs over "table.column" ("*.email", "users.ssn")
    detect: tuple[str, ...] = ()       # detector names: built-in or from config
    name: str = ""


@dataclass(frozen=True)
class TransferRule:
    """What a policy lets its subjects move through the SFTP/scp gateway (see policies/transfer.py)."""

    upload: bool = False
    download: bool = False
    allow_paths: tuple[str, ...] = ("/",)        # normalised absolute prefixes, whole components
    deny_paths: tuple[str, ...] = ()             # deny wins over allow
    max_size: int | None = None                  # bytes per file, enforced while streaming
    blocked_extensions: tuple[str, ...] = ()     # lower case, with the dot: ".sh", ".tar.gz"
    approval: bool = False                       # each transfer needs an approved request
    quarantine_days: int | None = None           # keep a copy of each transferred file this long


@dataclass(frozen=True)
class Policy:
    """One rule: these subjects reach these targets with this access mode."""

    name: str
    subjects: Subjects
    targets: TargetSelector
    access: Access
    port_forwarding: bool = False
    approval: ApprovalRule | None = None
    guardrails: tuple[Guardrail, ...] = ()
    masking: tuple[MaskingRule, ...] = ()
    transfer: TransferRule | None = None  # no block: no file transfer under this policy
