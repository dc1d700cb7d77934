"""SSH targets: the bastion's own login to the host, and the byte relay of one session channel.

No standing key exists between the bastion and a host. For each session the
bastion makes a fresh key pair and signs it with its target CA, which the host's
sshd trusts through ``TrustedUserCAKeys``: valid for a minute (backdated 30 s for
clock skew), for the target's login only, allowing a PTY and nothing else. A
private key from the config is the fallback for hosts that cannot trust a CA.

The host is verified against the pinned key or host CA of its config, never
against a known_hosts file on the machine, and never trusted on first use.

Decisions, documented:

- Key and certificate live in this process only: they are never written to a
  file, a log, an audit record or a recording, and ``repr`` leaves them out.
- No agent, X11 or port forwarding is asked for upstream; the user's
  environment is not passed on either.
- A session the remote side ended with a signal exits 255, as OpenSSH's
  client does.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from .base import ProxyError

log = logging.getLogger(__name__)

CERT_LIFETIME = 60.0   # seconds the upstream certificate is valid after it is made
CLOCK_SKEW = 30.0      # seconds it is backdated, for a host whose clock runs behind
CONNECT_TIMEOUT = 15.0
EXIT_SIGNALLED = 255   # what OpenSSH's client returns when the remote command died of a signal
HIGH_WATER = 1024 * 1024  # bytes queued for the user before the host is asked to wait
# The bastion is the client here, so its order decides: AES-GCM first (one AES-NI call per packet, several
# times cheaper in asyncssh than chacha20-poly1305), the others for hosts configured without it.
ENCRYPTION_ALGS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
                   "aes256-ctr", "aes192-ctr", "aes128-ctr"]
MAX_PACKET = 256 * 1024  # what the host may send per SSH packet: a 224 KiB SFTP read reply fits in one


class HostKeyRefused(ProxyError):
    """The host's key matched neither the pinned key nor the host CA."""


class UpstreamRefused(ProxyError):
    """The host did not accept the bastion's certificate or key."""


@dataclass(frozen=True)
class SshUpstream:
    """How the bastion reaches one SSH target and recognises it: a pinned key or a host CA, never neither."""

    host: str
    port: int
    login: str
    name: str = ""
    host_key: asyncssh.SSHKey | None = None
    host_ca: asyncssh.SSHKey | None = None

    def __post_init__(self) -> None:
        if (self.host_key is None) == (self.host_ca is None):
            raise ProxyError(f"target {self.label}: expected exactly one of a pinned host key or a host CA")

    @property
    def label(self) -> str:
        """How messages name this target: its name, else host:port."""
        return self.name or f"{self.host}:{self.port}"

    def known_hosts(self) -> tuple[list[asyncssh.SSHKey], list[asyncssh.SSHKey], list[asyncssh.SSHKey]]:
        """asyncssh's in-memory known_hosts: (trusted host keys, trusted host CAs, revoked)."""
        return ([self.host_key] if self.host_key else [], [self.host_ca] if self.host_ca else [], [])


@dataclass(frozen=True)
class Credential:
    """What the bastion logs in upstream with. Never shown: repr() leaves both out."""

    key: asyncssh.SSHKey = field(repr=False)
    cert: asyncssh.SSHCertificate | None = field(default=None, repr=False)


def sign_session_certificate(target_ca: asyncssh.SSHKey, login: str, key_id: str, now: float) -> Credential:
    """A fresh key pair and a user certificate for it: principal ``login``, one minute, PTY only."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    cert = target_ca.generate_user_certificate(
        key, key_id, serial=secrets.randbits(63), principals=[login],
        valid_after=int(now - CLOCK_SKEW), valid_before=int(now + CERT_LIFETIME),
        permit_x11_forwarding=False, permit_agent_forwarding=False, permit_port_forwarding=False,
        permit_pty=True, permit_user_rc=False)
    return Credential(key, cert)


async def open_connection(upstream: SshUpstream, credential: Credential) -> asyncssh.SSHClientConnection:
    """Log in to the target; raises HostKeyRefused, UpstreamRefused or ProxyError with a message to show."""
    keys: list[Any] = [(credential.key, credential.cert) if credential.cert is not None else credential.key]
    try:
        return await asyncssh.connect(
            upstream.host, upstream.port, username=upstream.login, config=[], known_hosts=upstream.known_hosts(),
            client_keys=keys, encryption_algs=ENCRYPTION_ALGS, max_pktsize=MAX_PACKET,
            agent_path=None, agent_forwarding=False, x509_trusted_certs=None,
            password_auth=False, kbdint_auth=False, gss_auth=False, host_based_auth=False,
            preferred_auth="publickey", connect_timeout=CONNECT_TIMEOUT, login_timeout=CONNECT_TIMEOUT)
    except asyncssh.HostKeyNotVerifiable as e:
        trust = "the pinned host_key" if upstream.host_key is not None else "a certificate from its host_ca"
        raise HostKeyRefused(
            f"refusing to connect to {upstream.label}: its host key is not {trust} in bastion.yaml "
            f"({e.reason}); the host may have been reinstalled, or something is in the way. "
            "The bastion never trusts a host key on first use.") from None
    except asyncssh.PermissionDenied:
        how = "certificate" if credential.cert is not None else "identity key"
        raise UpstreamRefused(
            f"{upstream.label} refused the bastion's {how} for {upstream.login}: its sshd must trust the "
            "target CA (TrustedUserCAKeys, see `bastion target-ca`) and accept the principal "
            f"{upstream.login}") from None
    except (OSError, asyncssh.Error) as e:  # TimeoutError is an OSError
        reason = getattr(e, "strerror", None) or getattr(e, "reason", None) or type(e).__name__
        raise ProxyError(f"cannot reach target {upstream.label}: {reason}") from None


@dataclass(frozen=True)
class Terminal:
    """The user's terminal, passed upstream with a PTY request."""

    term: str
    columns: int
    rows: int
    # RFC 4254's encoded terminal modes (opcode -> value) from the user's client: erase, intr, and the like
    # must mean on the target what they mean at the user's keyboard, as through an OpenSSH jump host.
    modes: Mapping[int, int] = field(default_factory=dict)


Write = Callable[[bytes, bool], None]
"""How relayed output reaches the user: (data, is_stderr)."""


class _Channel(asyncssh.SSHClientSession):  # type: ignore[misc]
    """The upstream end of one relayed session."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    def data_received(self, data: bytes, datatype: Any) -> None:
        self._relay.output(data, datatype == asyncssh.EXTENDED_DATA_STDERR)

    def connection_lost(self, exc: Exception | None) -> None:
        self._relay.closed.set()

    def pause_writing(self) -> None:
        self._relay.pause_input(True)  # the host reads stdin slower than the user sends it

    def resume_writing(self) -> None:
        self._relay.pause_input(False)


class Relay:
    """One upstream session channel bridged to the user: a shell or a command, with or without a PTY.

    The bastion feeds it the user's input (:meth:`data`, :meth:`eof`,
    :meth:`resize`; what arrives before :meth:`start` waits for it) and gets the
    output through ``write``. Neither side may fill the bastion's memory:
    ``backlog`` tells how many bytes still wait for the user, and over
    :data:`HIGH_WATER` the host is asked to wait; ``pause_input(True)`` asks the
    user to wait while the host reads slower than they send.
    """

    def __init__(self, write: Write, backlog: Callable[[], int] = lambda: 0,
                 pause_input: Callable[[bool], None] = lambda paused: None) -> None:
        self._write = write
        self._backlog = backlog
        self.pause_input = pause_input
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None
        self._early: list[bytes | None] = []  # input before the channel opened; None is EOF
        self._draining: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    async def start(self, conn: asyncssh.SSHClientConnection, command: str | None,
                    terminal: Terminal | None) -> None:
        """Open the session upstream: a shell (``command`` None) or one command; a PTY when ``terminal``."""
        pty: dict[str, Any] = {"request_pty": False}
        if terminal is not None:
            pty = {"request_pty": "force", "term_type": terminal.term,
                   "term_size": (terminal.columns, terminal.rows), "term_modes": dict(terminal.modes)}
        self._chan, _ = await conn.create_session(lambda: _Channel(self), command, encoding=None, **pty)
        early, self._early = self._early, []
        if sum(len(item or b"") for item in early) > HIGH_WATER:
            self.pause_input(False)  # paused while connecting; the host's own flow control takes over
        for item in early:
            if item is None:
                self.eof()
            else:
                self.data(item)

    def output(self, data: bytes, stderr: bool) -> None:
        """Upstream output: to the user, then wait for them if too much is queued."""
        self._write(data, stderr)
        if self._chan is not None and self._draining is None and self._backlog() > HIGH_WATER:
            self._chan.pause_reading()
            self._draining = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._backlog() > HIGH_WATER // 4 and not self.closed.is_set():
                await asyncio.sleep(0.01)
        finally:
            self._draining = None
            if self._chan is not None:
                self._chan.resume_reading()

    # -- the user's side ---------------------------------------------------------

    def data(self, data: bytes) -> None:
        """A keystroke or stdin from the user."""
        if self._chan is None:
            self._early.append(data)
            if sum(len(item or b"") for item in self._early) > HIGH_WATER:
                self.pause_input(True)  # until the host is there to take it
        elif not self._chan.is_closing():
            self._chan.write(data)

    def eof(self) -> None:
        """The user closed stdin."""
        if self._chan is None:
            self._early.append(None)
        elif not self._chan.is_closing() and self._chan.can_write_eof():
            self._chan.write_eof()

    def resize(self, columns: int, rows: int) -> None:
        """The user's window changed."""
        if self._chan is not None and not self._chan.is_closing():
            self._chan.change_terminal_size(columns, rows)

    async def wait(self) -> int:
        """Wait for the remote side to finish; its exit status (255 after a signal or none at all)."""
        await self.closed.wait()
        if self._draining is not None:
            self._draining.cancel()
        status = self._chan.get_exit_status() if self._chan is not None else None
        return EXIT_SIGNALLED if status is None or status < 0 else status

    def close(self) -> None:
        """End the upstream session now (the bastion's side is leaving)."""
        if self._chan is not None:
            self._chan.close()
