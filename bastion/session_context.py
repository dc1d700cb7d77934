"""The shell's view of one session: :class:`shell.context.ShellContext`, backed by the runtime.

Policy decisions for ``connect``, ``sql`` and ``run``, the SQL and SSH paths they
open, and the just-in-time requests (delegated to :mod:`bastion.session_requests`).
The session's channel mechanics stay in :mod:`bastion.session`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from policies.engine import Decision, decide
from policies.model import ApprovalRule, Effect
from shell.commands import EXIT_APPROVAL, EXIT_DENIED, EXIT_ERROR, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, Result
from shell.context import ConnectOutcome, TargetView
from shell.sql import SqlResult, run_console

from .config import TargetConfig
from .errors import BastionError
from .proxies.pgclient import PgClient
from .session_requests import SessionRequests, notice_for
from .session_ssh import relay_ssh
from .sqlaccess import SqlAccess
from .sshaccess import SshAccess

if TYPE_CHECKING:
    from .session import BastionSession

log = logging.getLogger(__name__)


class SessionContext:
    """The :class:`shell.context.ShellContext` of one session, backed by the runtime."""

    def __init__(self, session: BastionSession) -> None:
        self._session = session
        self._runtime = session.runtime
        self.identity = session.auth.identity
        self.bastion_name = self._runtime.config.host_names[0]
        self.certificate_expires = float(session.auth.cert.valid_before)
        self.certificate_serial = session.auth.cert.serial
        assert session.chan is not None
        self.interactive = session.chan.get_terminal_type() is not None
        self.notices: asyncio.Queue[str] = asyncio.Queue(maxsize=100)
        self._requests = SessionRequests(self._runtime, self.identity, session.session_id, session.mark)
        self.request_access = self._requests.request_access
        self.requests = self._requests.requests
        self.decide = self._requests.decide
        self.cancel_request = self._requests.cancel_request
        self.revoke_grant = self._requests.revoke_grant
        self.wait_request = self._requests.wait_request

    def post_notice(self, change: Any, rule: ApprovalRule | None) -> None:
        """Queue the line this person should see about a request change, if any (oldest dropped when full)."""
        line = notice_for(change, self.identity, rule)
        if line is None:
            return
        if self.notices.full():
            self.notices.get_nowait()
        self.notices.put_nowait(line)

    def now(self) -> float:
        return self._runtime.clock()

    def targets(self) -> list[TargetView]:
        configured = self._runtime.config.targets
        return [TargetView(t.name, t.kind, d.effect.value, dict(t.labels), configured[t.name].description)
                for t, d in self._runtime.visible_targets(self.identity)]

    def _decide(self, name: str, action: str) -> tuple[TargetConfig, Decision, str | None] | ConnectOutcome:
        """Ask policy whether this identity may reach ``name``; audited and marked either way.

        Allowed: the target, the decision and the grant it runs under (None when the policy needs none).
        """
        configured = self._runtime.config.targets.get(name)
        if configured is None:
            return ConnectOutcome(EXIT_USAGE, f"no target named {name!r}; `targets` lists yours")
        decision = decide(self._runtime.config.policies, self.identity, configured.target, "connect", self.now())
        self._runtime.store.append(
            "target.connect", user=self.identity.user, source=self._session.handler.peer,
            target=name, session=self._session.session_id, rule=decision.rule,
            outcome=decision.effect.value, reason=decision.reason, action=action)
        self._session.mark(f"{action} {name}: {decision.effect.value} by {decision.rule}")
        if decision.effect is Effect.DENY:
            # Same answer as for a name that does not exist would leak less, but people need the rule.
            return ConnectOutcome(EXIT_DENIED, f"denied: {decision.reason}")
        grant = None
        if decision.effect is Effect.APPROVAL:
            grant = self._requests.active_grant(name)
            if grant is None:
                return ConnectOutcome(EXIT_APPROVAL, f"{decision.reason}; ask for it with "
                                      f"`request {name} --reason \"...\"`")
            self._session.mark(f"{action} {name} under grant {grant}")
        return configured, decision, grant

    def _access(self, name: str, action: str) -> SqlAccess | ConnectOutcome:
        """A SQL target's access if policy allows ``action``, else why not."""
        decided = self._decide(name, action)
        if isinstance(decided, ConnectOutcome):
            return decided
        configured, decision, grant = decided
        if configured.kind != "postgres" or decision.policy is None:
            return ConnectOutcome(EXIT_UNAVAILABLE, f"{configured.kind} targets are not available in this "
                                  f"version of the bastion yet ({name} is allowed by policy {decision.rule})")
        return SqlAccess(self._runtime, self.identity, configured, decision.policy, self._session.session_id,
                         self._session.handler.peer, mark=self._session.mark, grant=grant)

    def _hold(self, grant: str | None) -> Callable[[], None]:
        """While a use of a grant runs, the grant's end ends this session, saying why."""
        if grant is None:
            return lambda: None
        return self._runtime.hold_grant(grant, self._session.end)

    async def _client(self, name: str, action: str) -> tuple[PgClient, Callable[[], None]] | ConnectOutcome:
        """A connected client for ``name`` if policy allows ``action`` (and the grant's release), else why not."""
        access = self._access(name, action)
        if isinstance(access, ConnectOutcome):
            return access
        try:
            client = await access.console_client()
        except BastionError as e:
            return ConnectOutcome(EXIT_ERROR, str(e))
        return client, self._hold(access.grant)

    async def connect(self, name: str) -> ConnectOutcome:
        if self._kind(name) == "ssh":
            return await self._ssh(name, None)
        opened = await self._client(name, "connect")
        if isinstance(opened, ConnectOutcome):
            return opened
        client, release = opened
        user = self.identity.user
        try:
            await run_console(client, user=user, history=self._session.history(f"{user}@{name}.sql"),
                              size=self._session.size_pair,
                              on_statement=lambda text: self._session.mark(f"sql {name}: {text[:200]}"),
                              wait_request=self.wait_request, clock=self.now)
        finally:
            release()
            await client.close()
        return ConnectOutcome(EXIT_OK, f"left {name}; back in the bastion shell\n")

    async def run_sql(self, name: str, sql: str) -> list[SqlResult] | ConnectOutcome:
        opened = await self._client(name, "sql")
        if isinstance(opened, ConnectOutcome):
            return opened
        client, release = opened
        try:
            return await client.execute(sql)
        except ConnectionError as e:
            return ConnectOutcome(EXIT_ERROR, str(e))
        finally:
            release()
            await client.close()

    async def run_remote(self, name: str, command: str) -> ConnectOutcome:
        kind = self._kind(name)
        if kind is not None and kind != "ssh":
            return ConnectOutcome(EXIT_USAGE, f"{name} is a {kind} target; `run` runs commands on ssh targets")
        return await self._ssh(name, command)

    def _kind(self, name: str) -> str | None:
        configured = self._runtime.config.targets.get(name)
        return None if configured is None else configured.kind

    async def _ssh(self, name: str, command: str | None) -> ConnectOutcome:
        """A shell (``command`` None) or one command on an SSH target, relayed through this session."""
        decided = self._decide(name, "connect" if command is None else "run")
        if isinstance(decided, ConnectOutcome):
            return decided
        session = self._session
        access = SshAccess(self._runtime, self.identity, decided[0], session.session_id, session.handler.peer,
                           mark=session.mark, grant=decided[2])
        return await relay_ssh(session, access, command, self._hold, self.now)

    async def stdin(self) -> str:
        return await self._session.stdin_text()

    def record(self, line: str, result: Result) -> None:
        """Write the audit event for one shell command."""
        self._runtime.store.append(
            "shell.command", user=self.identity.user, source=self._session.handler.peer,
            session=self._session.session_id, outcome=str(result.code), command=line[:1024])
