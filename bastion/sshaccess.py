"""The bastion's side of one use of an SSH target: how to reach and recognise it, what to log in with, the audit.

The session (``session.py``) decides policy, and ``session_ssh.py`` wires the
user's channel to a :class:`~bastion.proxies.ssh.Relay`; this module turns the
target's config into an upstream, signs the per-session certificate with the
target CA, and writes the audit events of the SSH path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncssh

from policies.model import Identity

from .config import TargetConfig
from .errors import BastionError
from .proxies.base import ProxyError
from .proxies.ssh import Credential, HostKeyRefused, SshUpstream, open_connection, sign_session_certificate

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)


class TargetUnavailable(ProxyError):
    """The target's config lacks what connecting needs."""


def upstream_for(target: TargetConfig) -> SshUpstream:
    """How to reach and recognise an SSH target; a ProxyError naming what its config lacks."""
    if target.login is None:
        raise TargetUnavailable(f"{target.name} is not available: bastion.yaml names no login for it "
                         f"(targets.{target.name}.login)")
    if target.host_key is None and target.host_ca is None:
        raise TargetUnavailable(f"{target.name} is not available: bastion.yaml pins no host_key and names no host_ca "
                         "for it, and the bastion never trusts a host key on first use")
    return SshUpstream(
        target.address.host, target.address.port, target.login, target.name,
        host_key=asyncssh.import_public_key(target.host_key) if target.host_key else None,
        host_ca=asyncssh.import_public_key(target.host_ca) if target.host_ca else None)


@dataclass
class SshAccess:
    """What one session needs to reach an SSH target."""

    runtime: Runtime
    identity: Identity
    target: TargetConfig
    session: str
    source: str
    mark: Callable[[str], None] | None = None
    grant: str | None = None  # the approved grant this access runs under, if its policy needs one

    def credential(self) -> Credential:
        """The configured identity key, else a fresh one-minute certificate from the target CA."""
        if self.target.identity is not None:
            try:
                return Credential(asyncssh.import_private_key(self.target.identity.resolve()))
            except (asyncssh.KeyImportError, ValueError) as e:  # the message never quotes the key
                raise BastionError(f"{self.target.name}: the identity {self.target.identity.describe()} is not "
                                   f"an unencrypted private key: {type(e).__name__}") from None
        assert self.target.login is not None  # upstream_for checked it
        key_id = f"bastion:{self.identity.user}:{self.session}:{self.target.name}"
        return sign_session_certificate(self.runtime.keys.target_ca, self.target.login, key_id,
                                        self.runtime.clock())

    async def connect(self) -> asyncssh.SSHClientConnection:
        """Log in to the target. Raises BastionError with a message to show; a refusal is audited."""
        try:
            upstream = upstream_for(self.target)
            return await open_connection(upstream, self.credential())
        except BastionError as e:
            outcome = "deny" if isinstance(e, HostKeyRefused) else "error"
            self.runtime.store.append("ssh.refused", user=self.identity.user, source=self.source,
                                      target=self.target.name, session=self.session, outcome=outcome,
                                      reason=str(e))
            if self.mark is not None:
                self.mark(f"ssh {self.target.name}: {e}")
            log.warning("ssh to %s for %s refused: %s", self.target.name, self.identity.user, e)
            raise

    def ended(self, command: str | None, status: int, duration: float) -> None:
        """Audit the end of a shell (``command`` None) or of one ``run``."""
        kind = "ssh.session" if command is None else "ssh.run"
        detail: dict[str, Any] = {} if command is None else {"command": command[:4096]}
        self.runtime.store.append(kind, user=self.identity.user, source=self.source, target=self.target.name,
                                  session=self.session, outcome=str(status), exit_status=status,
                                  duration=round(duration, 3), grant=self.grant, **detail)
        if self.mark is not None:
            self.mark(f"{'connect' if command is None else 'run'} {self.target.name}: exit status {status}")
