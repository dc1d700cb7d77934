"""What the daemon's parts share: config, keys, audit store, and live-session accounting."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from policies.engine import Decision, visible_targets
from policies.model import Identity, Target

from .audit import AuditStore
from .config import Config
from .keys import Keys

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
