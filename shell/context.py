"""What the shell needs from the bastion, as a protocol: the shell never imports ``bastion``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from policies.model import Identity

if TYPE_CHECKING:
    from .sql import SqlResult


@dataclass(frozen=True)
class TargetView:
    """A target as this identity may see it."""

    name: str
    kind: str
    access: str  # "allow" or "approval"
    labels: dict[str, str] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class ConnectOutcome:
    """What ``connect`` led to: an exit code and what to tell the user."""

    code: int
    message: str


class ShellContext(Protocol):
    """The session a command runs in."""

    identity: Identity
    bastion_name: str
    certificate_expires: float  # epoch seconds
    certificate_serial: int

    def targets(self) -> list[TargetView]:
        """The targets policy shows this identity."""
        ...

    async def connect(self, name: str) -> ConnectOutcome:
        """Ask policy, then open the target's console if allowed."""
        ...

    def now(self) -> float:
        """The current time (the bastion's clock)."""
        ...

    async def run_sql(self, name: str, sql: str) -> list[SqlResult] | ConnectOutcome:
        """Run SQL on a target through its proxy; a ConnectOutcome when policy or the target refuses."""
        ...

    async def stdin(self) -> str:
        """Everything the client sends on stdin, until it closes it (one-shot commands)."""
        ...
