"""A session's shell or one command on an SSH target: the user's channel relayed to the host.

:class:`~bastion.session.SessionContext` decides policy and builds the
:class:`~bastion.sshaccess.SshAccess` it allows; :func:`relay_ssh` logs in with
it, wires the user's channel to a :class:`~bastion.proxies.ssh.Relay` until the
host is done, audits the end and says how it went as a
:class:`~shell.context.ConnectOutcome`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

import asyncssh

from shell.commands import EXIT_ERROR, EXIT_UNAVAILABLE
from shell.context import ConnectOutcome

from .errors import BastionError
from .proxies.ssh import Relay, Terminal
from .sshaccess import SshAccess, TargetUnavailable


class RelayedChannel(Protocol):
    """What a relay needs of the user's session channel (:class:`~bastion.session.BastionSession` has it)."""

    def send(self, data: bytes, *, stderr: bool = False) -> None: ...

    def backlog(self) -> int: ...

    def pause_input(self, paused: bool) -> None: ...

    def divert_input(self, sink: Relay) -> AbstractContextManager[None]: ...

    def terminal(self) -> Terminal | None: ...


async def relay_ssh(session: RelayedChannel, access: SshAccess, command: str | None,
                    hold: Callable[[str | None], Callable[[], None]], clock: Callable[[], float]) -> ConnectOutcome:
    """A shell (``command`` None) or one command on ``access``'s target, relayed through ``session``.

    ``hold`` registers the use of the access's grant and returns its release.
    """
    name = access.target.name
    relay = Relay(lambda data, stderr: session.send(data, stderr=stderr), session.backlog, session.pause_input)
    started = clock()
    release = hold(access.grant)
    try:
        with session.divert_input(relay):  # keys typed while connecting go to the host too
            conn = await access.connect()
            try:
                await relay.start(conn, command, session.terminal())
                status = await relay.wait()
            finally:
                relay.close()
                conn.close()
    except BastionError as e:
        return ConnectOutcome(EXIT_UNAVAILABLE if isinstance(e, TargetUnavailable) else EXIT_ERROR, str(e))
    except (asyncssh.Error, OSError) as e:
        return ConnectOutcome(EXIT_ERROR, f"{name}: the connection failed: {e}")
    finally:
        release()
    access.ended(command, status, clock() - started)
    if command is not None:
        return ConnectOutcome(status, "", remote=True)
    told = f" (the remote shell exited with {status})" if status else ""
    return ConnectOutcome(status, f"left {name}{told}; back in the bastion shell\n", remote=True)
