"""What the daemon's parts share: config, keys, audit store, and live-session accounting."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from policies.engine import Decision, visible_targets
from policies.model import Identity, Target

from .audit import AuditStore
from .config import Config
from .keys import Keys

if TYPE_CHECKING:
    from policies.model import ApprovalRule
    from recorders.store import RecordingStore
    from recorders.tap import SessionTap

    from .approvals import Approvals, Change
    from .server import ConnectionHandler
    from .webhooks import WebhookNotifier

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """The services one bastion process runs with. Built once by the daemon."""

    config: Config
    keys: Keys
    store: AuditStore
    clock: Callable[[], float] = time.time
    sessions_per_user: Counter[str] = field(default_factory=Counter)
    connections_per_source: Counter[str] = field(default_factory=Counter)
    ssh_port: int = 0  # the bound port, set by the daemon once listening (config may say 0)
    recordings: RecordingStore | None = None
    approvals: Approvals | None = None           # requests, grants, held statements (set by the daemon)
    notifier: WebhookNotifier | None = None      # approval webhooks, when configured
    taps: set[SessionTap] = field(default_factory=set)  # open recordings, flushed every second
    connections: set[ConnectionHandler] = field(default_factory=set)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    # Uses of a grant (a console, a one-shot command, a forward), each with how to end it.
    grant_uses: dict[str, set[Callable[[str], None]]] = field(default_factory=dict)
    notice_boards: set[Callable[[Change, ApprovalRule | None], None]] = field(default_factory=set)

    def hold_grant(self, grant_id: str, end: Callable[[str], None]) -> Callable[[], None]:
        """Register a use of a grant, ended with a message when the grant does; returns its release."""
        self.grant_uses.setdefault(grant_id, set()).add(end)

        def release() -> None:
            uses = self.grant_uses.get(grant_id)
            if uses is not None:
                uses.discard(end)
                if not uses:
                    del self.grant_uses[grant_id]

        return release

    def background(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        """Run ``coro`` as a task the daemon waits for on shutdown; failures are logged, never lost."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self.tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("%s failed", what, exc_info=t.exception())

        task.add_done_callback(done)

    def targets(self) -> list[Target]:
        """Every configured target, as policy sees it (no credentials)."""
        return [t.target for t in self.config.targets.values()]

    def visible_targets(self, identity: Identity) -> list[tuple[Target, Decision]]:
        """The targets policy shows this identity, with the connect decision for each."""
        return visible_targets(self.config.policies, identity, self.targets(), self.clock())

    @property
    def live_connections(self) -> int:
        """How many SSH connections are open now."""
        return sum(self.connections_per_source.values())

    def open_connection(self, source: str) -> bool:
        """Count a new connection from ``source``; False when over the per-source limit."""
        self.connections_per_source[source] += 1
        return self.connections_per_source[source] <= self.config.limits.connections_per_source

    def close_connection(self, source: str) -> None:
        """Release what :meth:`open_connection` counted."""
        self.connections_per_source[source] -= 1
        if self.connections_per_source[source] <= 0:
            del self.connections_per_source[source]

    def open_session(self, user: str) -> bool:
        """Count a new session for ``user``; False when the per-user limit is reached."""
        if self.sessions_per_user[user] >= self.config.limits.sessions_per_user:
            return False
        self.sessions_per_user[user] += 1
        return True

    def close_session(self, user: str) -> None:
        """Release a session slot taken by :meth:`open_session`."""
        self.sessions_per_user[user] -= 1
        if self.sessions_per_user[user] <= 0:
            del self.sessions_per_user[user]
