"""ProxyJump (``ssh -J alice@bastion alice@web-1``): the bastion terminates the inner SSH connection itself.

OpenSSH opens a direct-tcpip channel to ``web-1:22`` through the bastion and
runs a second handshake over it. Nothing is passed through: the channel is
answered by an in-process asyncssh server connection (asyncssh connections are
protocols that run over any transport, a channel included), which

- presents a host certificate for the target's name, signed by the bastion's
  host CA, so the ``@cert-authority`` line ``bastion login`` installs verifies it;
- accepts exactly the certificate the outer connection logged in with (same
  blob, so same serial, key and principal), checked again as at the bastion's
  own door, and proven by a signature of the key it certifies;
- serves each session (shell with or without a PTY, exec) as ``connect web-1``
  and ``run web-1 -- CMD`` do: policy, grant, the per-session target-CA
  certificate upstream, the relay, the recording and the audit are theirs.

The inner connection belongs to the outer one: its sessions end when the
outer's certificate expires, is revoked or the bastion shuts down, and it ends
with the outer channel. Policy is asked when the channel opens and again for
each session, which holds its grant (if its policy needs one) as ``connect`` does. Decisions, documented:

- Host keys for targets live in this process's memory, made on first use: the
  client trusts the host CA, never the key, so a new key per process costs
  nothing and keeps one more private key off the disk.
- The inner username must be the certificate's principal, the bastion
  username: ``ssh -J alice@bastion alice@web-1``. The bastion logs in upstream
  as the target's configured ``login``.
- SFTP and scp (``scp -O`` too) on the inner connection go to the file gateway
  rooted at the target: the client's ``/tmp/x`` is the gateway's ``/web-1/tmp/x``,
  with its transfer policy, hashing, size caps, approvals and audit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import asyncssh

from shell.commands import EXIT_ERROR

from .ca import covers_target_name
from .config import TargetConfig
from .errors import BastionError
from .keys import HOST_CERT_LIFETIME, sign_host_certificate
from .proxies.ssh import HIGH_WATER
from .server import ConnectionHandler, ContextLog, server_options
from .session import BastionSession, InputSink
from .session_context import SessionContext
from .sshaccess import upstream_for
from .sshcert import CertInfo

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)

SSH_PORT = 22
RESIGN_BEFORE = 86400.0  # re-sign a target's host certificate when it has less than a day left

_host_keys: dict[tuple[bytes, tuple[str, ...]], tuple[asyncssh.SSHKey, asyncssh.SSHCertificate, float]] = {}


def jump_problem(target: TargetConfig, port: int) -> str | None:
    """Why a direct-tcpip channel to this SSH target cannot be terminated by the bastion, or None."""
    if port not in (SSH_PORT, target.address.port):
        return (f"{target.name} port {port}: the bastion terminates SSH to its SSH targets (ssh -J, port "
                f"{SSH_PORT}) and passes no other port through")
    if not covers_target_name(target.name):
        return (f"{target.name} cannot be reached with ssh -J: the host CA entry that `bastion login` installs "
                "covers target names without dots or colons only, so your ssh could not verify it")
    try:
        upstream_for(target)
    except BastionError as e:
        return str(e)
    return None


def host_key_for(runtime: Runtime, target: TargetConfig) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]:
    """This process's host key for ``target`` and its certificate from the host CA (name and address host)."""
    principals = tuple(dict.fromkeys((target.name, target.address.host)))
    index = (runtime.keys.host_ca.public_data, principals)
    now = runtime.clock()
    cached = _host_keys.get(index)
    if cached is None or cached[2] - now < RESIGN_BEFORE:
        key = cached[0] if cached is not None else asyncssh.generate_private_key("ssh-ed25519")
        cert = sign_host_certificate(runtime.keys.host_ca, key, principals, now)
        cached = _host_keys[index] = (key, cert, now + HOST_CERT_LIFETIME)
    return cached[0], cached[1]


def open_jump(outer: ConnectionHandler, target: TargetConfig, forward_id: str) -> asyncssh.SSHServerConnection:
    """The server connection that answers one ``ssh -J`` channel; asyncssh runs it over the channel."""
    handler = JumpHandler(outer, target, forward_id)
    options = asyncssh.SSHServerConnectionOptions(**{
        **server_options(outer.runtime), "config": [],
        "server_host_keys": [host_key_for(outer.runtime, target)], "server_factory": lambda: handler})
    return asyncssh.SSHServerConnection(asyncio.get_running_loop(), options)


class JumpHandler(ConnectionHandler):
    """The inner connection of one ``ssh -J``: the outer connection's certificate, one target."""

    def __init__(self, outer: ConnectionHandler, target: TargetConfig, forward_id: str) -> None:
        super().__init__(outer.runtime)
        assert outer.auth is not None
        self.outer = outer
        self.outer_cert: CertInfo = outer.auth.cert
        self.target = target
        self.conn_id = forward_id
        self.log = ContextLog(log, {"conn": f"{outer.conn_id}/{forward_id}"})
        self.peer = outer.peer  # the channel has no address of its own; certificate rules apply to the real one
        # Shared: whatever ends the outer connection's sessions (expiry, revocation, shutdown) ends these too.
        self.session_listeners = outer.session_listeners
        self.login_hint = (f"ssh -J logs in to {target.name} with the certificate of your bastion login, as "
                           f"your bastion user: ssh -J {outer.auth.identity.user}@BASTION "
                           f"{outer.auth.identity.user}@{target.name}")

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        # No connection accounting of its own: the outer connection is the one counted, limited and ended.
        self.conn = conn
        self._install_key_check(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        user = self.outer.auth.identity.user if self.outer.auth is not None else None
        if self.auth is None:
            outcome, reason = "refused", "; ".join(dict.fromkeys(self.refusals)) or "no login on the inner connection"
        else:
            outcome, reason = "closed", None
        self.runtime.store.append("forward.closed", user=user, source=self.peer, target=self.target.name,
                                  session=self.conn_id, outcome=outcome, reason=reason, mode="proxyjump")
        self.log.info("proxyjump to %s %s%s", self.target.name, outcome, f" ({reason})" if reason else "")

    def _certificate_problem(self, cert: CertInfo, username: str) -> str | None:
        if cert.sha256 != self.outer_cert.sha256:
            return (f"this is not the certificate your bastion connection logged in with "
                    f"(serial {self.outer_cert.serial})")
        return super()._certificate_problem(cert, username)

    def auth_completed(self) -> None:
        assert self.auth is not None
        # No expiry timer of its own: the outer connection's, for the same certificate, ends these sessions.
        self.runtime.store.append("proxyjump.authenticated", user=self.auth.identity.user, source=self.peer,
                                  target=self.target.name, session=self.conn_id, outcome="allow",
                                  serial=self.auth.cert.serial, connection=self.outer.conn_id)

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> Any:
        user = self.auth.identity.user if self.auth else None
        return self._refuse_forward(user, dest_host, dest_port, "proxyjump",
                                    f"no forwarding inside the ssh -J connection to {self.target.name}")

    def session_requested(self) -> asyncssh.SSHServerSession:
        assert self.auth is not None
        return JumpSession(self)


class JumpSession(BastionSession):
    """A session on the inner connection: ``connect`` or ``run`` on the target, recorded and audited as theirs."""

    handler: JumpHandler

    def __init__(self, handler: JumpHandler) -> None:
        super().__init__(handler)
        self._typed_ahead = bytearray()  # a shell's keystrokes before the relay is there
        # sftp and scp see the target's own paths; the gateway applies its policy, hashing and audit as to /NAME/...
        self.transfer_root = handler.target.name

    def data_received(self, data: bytes, datatype: Any) -> None:
        super().data_received(data, datatype)  # recorded; a command's stdin is kept there
        if self._sink is not None or self.transfer is not None or self.unrecordable is not None:
            return
        if self.command is None:
            self._typed_ahead += data
        if len(self._typed_ahead) + len(self._stdin) > HIGH_WATER:
            self.pause_input(True)  # until the relay takes over (it resumes once the host is there)

    @contextlib.contextmanager
    def divert_input(self, sink: InputSink) -> Iterator[None]:
        with super().divert_input(sink):
            if self._typed_ahead:
                sink.data(bytes(self._typed_ahead))
                self._typed_ahead.clear()
            yield

    async def _run_shell(self) -> None:
        await self._relay(None)

    async def _run_exec(self) -> None:
        await self._relay(self.command)

    async def _relay(self, command: str | None) -> None:
        name = self.handler.target.name
        self.mark(f"ssh -J {name}")
        ctx = SessionContext(self)
        try:
            outcome = await (ctx.connect(name) if command is None else ctx.run_remote(name, command))
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug ends this one session with a clear error; the daemon and other sessions carry on.
            log.exception("ssh -J session %s to %s failed", self.session_id, name)
            self._finish("bastion: internal error; the bastion's log has the details\r\n", EXIT_ERROR)
            return
        if outcome.remote:
            self._finish("", outcome.code)  # the target's own status; the bastion adds nothing to its output
        else:
            self._finish(f"bastion: {outcome.message.rstrip()}\r\n", outcome.code)

    def _start_transfer(self) -> None:
        self.mark(f"{'sftp' if self.command is None else 'scp'} through ssh -J {self.handler.target.name}")
        super()._start_transfer()
