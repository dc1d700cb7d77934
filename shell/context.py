"""What the shell needs from the bastion, as a protocol: the shell never imports ``bastion``."""

from __future__ import annotations

import asyncio
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
    remote: bool = False  # ``code`` is the target's own exit status (an SSH shell or command), not the bastion's


@dataclass(frozen=True)
class RequestView:
    """A just-in-time request as its requester or an approver may see it."""

    id: str
    kind: str                    # access | statement | transfer
    requester: str
    target: str
    reason: str
    state: str                   # pending | approved | denied | expired | cancelled
    created: float               # epoch seconds
    expires: float               # when a pending request expires
    duration: float              # seconds of access asked (access requests)
    approvers: str               # who may approve, for people: "group sre; user bob"
    needed: int                  # approvals needed
    approved_by: tuple[str, ...] = ()
    statement: str | None = None  # held statements: the exact text
    decided_by: str | None = None
    decision_reason: str | None = None
    grant: str | None = None     # the grant an approved access request gave
    grant_ends: float | None = None
    break_glass: bool = False


class ShellContext(Protocol):
    """The session a command runs in."""

    identity: Identity
    bastion_name: str
    certificate_expires: float  # epoch seconds
    certificate_serial: int
    interactive: bool                 # a person at a terminal (a PTY), not a one-shot command
    notices: asyncio.Queue[str]       # lines for this person: requests they may approve, decisions on theirs

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

    async def run_remote(self, name: str, command: str) -> ConnectOutcome:
        """Run ``command`` on an SSH target if policy allows it.

        Its output streams straight to the user as it comes (and stdin to it); the
        outcome's code is the command's exit status (``remote``), or why it did not run.
        """
        ...

    async def stdin(self) -> str:
        """Everything the client sends on stdin, until it closes it (one-shot commands)."""
        ...

    # -- just-in-time access ------------------------------------------------------------------

    async def request_access(self, target: str, reason: str, duration: float | None = None, *,
                             break_glass: bool = False) -> RequestView | ConnectOutcome:
        """File a request for access to ``target`` (or, with ``break_glass``, grant it now, flagged)."""
        ...

    def requests(self) -> tuple[list[RequestView], list[RequestView]]:
        """(mine, newest first; the pending ones I may decide)."""
        ...

    async def decide(self, request_id: str, *, approve: bool, text: str) -> RequestView | ConnectOutcome:
        """Approve (``text`` is an optional comment) or deny (``text`` is the required reason) a request."""
        ...

    async def cancel_request(self, request_id: str) -> RequestView | ConnectOutcome:
        """Withdraw my own pending request."""
        ...

    async def revoke_grant(self, grant_id: str, reason: str) -> ConnectOutcome:
        """End a grant early: mine, or one I could have approved."""
        ...

    async def wait_request(self, request_id: str, timeout: float | None = None) -> RequestView:
        """Return once the request is decided (or expires), or when ``timeout`` passes (still pending)."""
        ...
