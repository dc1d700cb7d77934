"""The asyncssh server: certificate-only authentication, limits, and one identity per connection.

asyncssh checks a certificate's CA, type, validity, principal and
source-address itself, but silently: a refused login would leave the user and
the auditor guessing. So every offered key is first checked here, in the same
order, with a reason that goes to the client as an auth banner and to the
audit store; only then does asyncssh run its own checks and the signature.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncssh

from policies.engine import decide
from policies.model import Effect, Identity

from . import ssh_packets
from .audit import Issuance
from .errors import CertificateError
from .runtime import Runtime
from .sqlaccess import SqlAccess
from .sshcert import USER_CERT, CertInfo, fingerprint, parse_certificate

log = logging.getLogger(__name__)

# Hardened algorithm lists: ssh-audit reports no failure for any of them, and
# OpenSSH 9.x clients share at least one of each with their defaults.
# ssh-audit warns that curve25519 is not post-quantum; OpenSSH before 9.9 has nothing better
# that asyncssh offers without liboqs, and newer clients pick mlkem768x25519 first.
KEX_ALGS = ["mlkem768x25519-sha256", "curve25519-sha256", "curve25519-sha256@libssh.org"]
# AES-GCM only: the client picks the first cipher of its own list that the server offers, and OpenSSH
# lists chacha20-poly1305 and AES-CTR before AES-GCM. asyncssh's AES-GCM is one AES-NI call per packet,
# 3-4x cheaper than its chacha20-poly1305, and the bastion's event loop pays for every byte twice (client
# hop and target hop). Every maintained client has AES-GCM (OpenSSH since 6.2, PuTTY 0.76, paramiko).
ENCRYPTION_ALGS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]
MAC_ALGS = ["hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com",
            "umac-128-etm@openssh.com"]
# The largest SSH packet a client may send on a channel. OpenSSH sends packets as large as the server allows;
# an SFTP write of 32 KiB and its header then fit in one packet instead of two, which halves the bastion's
# per-packet work on uploads. OpenSSH's own limit for a session channel is 32 KiB; 256 KiB is its transport max.
CHANNEL_MAX_PACKET = 256 * 1024
SIGNATURE_ALGS = ["ssh-ed25519", "sk-ssh-ed25519@openssh.com", "ecdsa-sha2-nistp256",
                  "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
                  "sk-ecdsa-sha2-nistp256@openssh.com", "rsa-sha2-512", "rsa-sha2-256"]

DISCONNECT_GRACE = 0.5  # seconds between ending the sessions and dropping the connection
LOGIN_HINT = "Run `bastion login` to get a short-lived certificate, then connect again."


@dataclass(frozen=True)
class Authenticated:
    """Who a connection is, once its certificate has been accepted."""

    identity: Identity
    issuance: Issuance
    cert: CertInfo


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def check_certificate(
    cert: CertInfo, username: str, peer: str, user_ca: bytes, now: float,
) -> str | None:
    """Why this certificate may not log in as ``username`` from ``peer``, or None if it may."""
    if cert.signature_key != user_ca:
        return "the certificate is not signed by this bastion's user CA"
    if cert.cert_type != USER_CERT:
        return "a host certificate cannot be used to log in"
    if now < cert.valid_after:
        return f"the certificate is not valid before {_utc(cert.valid_after)}"
    if now >= cert.valid_before:
        return f"the certificate expired at {_utc(cert.valid_before)}"
    if not cert.principals:
        return "the certificate names no principal"  # would otherwise be valid for ANY user
    if username not in cert.principals:
        return f"the certificate is for {', '.join(cert.principals)}, not {username}"
    if cert.source_addresses and not _address_allowed(peer, cert.source_addresses):
        return f"the certificate may not be used from {peer}"
    for option in cert.critical_options:
        if option != "source-address":
            return f"the certificate has an unsupported critical option {option}"
    return None


def _address_allowed(peer: str, allowed: tuple[str, ...]) -> bool:
    try:
        address = ipaddress.ip_address(peer)
        return any(address in ipaddress.ip_network(net, strict=False) for net in allowed)
    except ValueError:
        return False  # an unparsable rule or peer never matches: fail closed


class ContextLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A child logger that prefixes each message with its connection, as asyncssh does."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[conn={self.extra['conn'] if self.extra else '?'}] {msg}", kwargs


class ConnectionHandler(asyncssh.SSHServer):
    """One per SSH connection: authenticates it and tracks its identity."""

    login_hint = LOGIN_HINT  # what a refused login is told to do next

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.conn_id = secrets.token_hex(6)
        self.log = ContextLog(log, {"conn": self.conn_id})
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer = "?"
        self.auth: Authenticated | None = None
        self.refusals: list[str] = []
        self._attempts = 0
        self._expiry: asyncio.TimerHandle | None = None
        self._closing_reason: tuple[str, str] | None = None  # (outcome, reason) set by us
        self.session_listeners: set[Callable[[str], None]] = set()  # each ends one session

    # -- connection lifecycle ------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.peer = str(conn.get_extra_info("peername", ("?", 0))[0])
        self.runtime.connections.add(self)
        self.runtime.store.connection_opened(self.conn_id, self.peer, self.runtime.clock())
        self._install_key_check(conn)
        if not self.runtime.open_connection(self.peer):
            self._refuse(f"too many connections from {self.peer}")
            self._closing_reason = ("refused", f"too many connections from {self.peer}")
            conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, f"too many connections from {self.peer}")

    def _install_key_check(self, conn: asyncssh.SSHServerConnection) -> None:
        """Wrap the instance's key check: the one place where the certificate blob is visible.

        Installed first, so that no key is ever checked without it.
        """
        original = conn.validate_public_key

        async def validate(username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
            try:
                return await self._validate_key(original, username, key_data, msg, signature)
            except Exception:
                # A bug here must refuse the key, visibly, not drop the connection silently.
                self.log.exception("key validation failed")
                self._refuse("internal error while checking the key")
                return False

        conn.validate_public_key = validate  # type: ignore[method-assign]

    def connection_lost(self, exc: Exception | None) -> None:
        self.runtime.close_connection(self.peer)
        self.runtime.connections.discard(self)
        if self._expiry:
            self._expiry.cancel()
        now = self.runtime.clock()
        user = self.auth.identity.user if self.auth else None
        reason: str | None
        if self.auth is None:
            reason = "; ".join(dict.fromkeys(self.refusals)) or "no certificate was offered"
            outcome = "refused"
        elif self._closing_reason:
            outcome, reason = self._closing_reason
        else:
            outcome, reason = ("closed", str(exc) if exc else None)
        self.runtime.store.connection_closed(self.conn_id, outcome, reason, now, user)
        self.runtime.store.append(
            f"connection.{outcome}", user=user, source=self.peer, session=self.conn_id,
            outcome=outcome, reason=reason,
        )
        self.log.info("connection %s from %s: %s%s", outcome, self.peer, user or "-",
                      f" ({reason})" if reason else "")

    # -- authentication ------------------------------------------------------

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return key.public_data == self.runtime.keys.user_ca.public_data

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return False  # plain keys never log in; _validate_key has already said why

    async def _validate_key(
        self, original: Any, username: str, key_data: bytes, msg: bytes, signature: bytes,
    ) -> bool:
        self._attempts += 1
        if self._attempts > self.runtime.config.limits.auth_attempts:
            self._refuse("too many authentication attempts")
            assert self.conn is not None
            self.conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
                                 "too many authentication attempts")
            return False
        try:
            cert = parse_certificate(key_data)
        except CertificateError:
            self._refuse_plain_key(key_data)
            return False
        reason = self._certificate_problem(cert, username)
        issuance = None
        if reason is None:
            issuance = self.runtime.store.issuance_by_cert(cert.sha256)
            if issuance is None:
                reason = "the certificate was not issued by this bastion"
            elif self.runtime.store.is_revoked(cert.serial):
                reason = f"the certificate (serial {cert.serial}) has been revoked"
        if reason is not None:
            self._refuse(f"{reason}. {self.login_hint}")
            return False
        accepted = bool(await original(username, key_data, msg, signature))
        if accepted and signature and issuance is not None:
            identity = Identity(issuance.username, frozenset(issuance.groups))
            self.auth = Authenticated(identity, issuance, cert)
        return accepted

    def _certificate_problem(self, cert: CertInfo, username: str) -> str | None:
        """Why this certificate may not log in here as ``username``, or None if it may."""
        return check_certificate(cert, username, self.peer, self.runtime.keys.user_ca.public_data,
                                 self.runtime.clock())

    def _refuse_plain_key(self, key_data: bytes) -> None:
        reason = "plain public keys are not accepted"
        # OpenSSH offers a key before its certificate: when we certified this key, the
        # certificate is probably next, so a hint now would only confuse a good login.
        if self.runtime.store.knows_key(fingerprint(key_data)):
            self.refusals.append(reason)
            return
        self._refuse(f"{reason}. {self.login_hint}")

    def _refuse(self, reason: str) -> None:
        if reason in self.refusals:
            return
        self.refusals.append(reason)
        self.log.info("refused key from %s: %s", self.peer, reason)
        if self.conn is not None:
            try:
                self.conn.send_auth_banner(f"bastion: {reason}\r\n")
            except (asyncssh.Error, OSError):
                pass  # the banner is a courtesy; the refusal stands and is audited either way

    def auth_completed(self) -> None:
        assert self.auth is not None and self.conn is not None
        auth = self.auth
        self.runtime.store.connection_authenticated(self.conn_id, auth.identity.user, auth.cert.serial)
        self.runtime.store.append(
            "connection.authenticated", user=auth.identity.user, source=self.peer,
            session=self.conn_id, outcome="allow", serial=auth.cert.serial,
            key_id=auth.cert.key_id, groups=sorted(auth.identity.groups),
        )
        remaining = auth.cert.valid_before - self.runtime.clock()
        self._expiry = asyncio.get_running_loop().call_later(max(remaining, 0), self._certificate_expired)

    def _certificate_expired(self) -> None:
        assert self.auth is not None and self.conn is not None
        reason = f"certificate expired at {_utc(self.auth.cert.valid_before)}"
        self.end("expired", reason, user_message=f"your {reason}. {LOGIN_HINT}")

    @property
    def closing_reason(self) -> tuple[str, str] | None:
        """(outcome, reason) once the bastion has decided to end this connection."""
        return self._closing_reason

    def end(self, outcome: str, reason: str, *, user_message: str) -> None:
        """End every session on this connection with a message, then disconnect it.

        Sessions are closed first because OpenSSH exits on a disconnect without
        printing channel output it has already received.
        """
        self._closing_reason = (outcome, reason)
        for end_session in list(self.session_listeners):
            end_session(user_message)
        assert self.conn is not None
        conn = self.conn
        asyncio.get_running_loop().call_later(
            DISCONNECT_GRACE, conn.disconnect, asyncssh.DISC_BY_APPLICATION, reason)

    # -- forwarding: refused explicitly, so the invariant does not rest on library defaults --

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> Any:
        """A direct-tcpip channel to a target name: a postgres target's proxy (`ssh -L`), or an SSH
        target's connection terminated by the bastion itself (`ssh -J`, see bastion/proxyjump.py).
        """
        from .proxyjump import jump_problem, open_jump  # proxyjump builds on this module

        target = self.runtime.config.targets.get(dest_host)
        user = self.auth.identity.user if self.auth else None
        if self.auth is None or target is None or target.kind not in ("postgres", "ssh"):
            reason = (f"{dest_host} is not a target that can be forwarded to; use a target name from "
                      "`targets` as the destination, e.g. ssh -L 15432:pg-demo:5432, or ssh -J for SSH targets")
            return self._refuse_forward(user, dest_host, dest_port, "no-target", reason)
        jump = target.kind == "ssh"
        if jump:
            problem = jump_problem(target, dest_port)
            if problem is not None:  # never passed through blind
                return self._refuse_forward(user, dest_host, dest_port, "proxyjump", problem)
        decision = decide(self.runtime.config.policies, self.auth.identity, target.target,
                          "connect" if jump else "forward", self.runtime.clock())
        grant = None
        if decision.effect is Effect.APPROVAL and decision.policy is not None and self.runtime.approvals:
            found = self.runtime.approvals.active_grant(self.auth.identity.user, target.name, self.runtime.clock())
            grant = found.id if found is not None else None
            if grant is None:
                return self._refuse_forward(user, dest_host, dest_port, decision.rule,
                                            f"{decision.reason}; ask for it with `ssh bastion request "
                                            f"{target.name} --reason ...`")
        elif decision.effect is not Effect.ALLOW or decision.policy is None:
            return self._refuse_forward(user, dest_host, dest_port, decision.rule, decision.reason)
        session_id = secrets.token_hex(8)
        self.runtime.store.append("forward.opened", user=user, source=self.peer, target=target.name,
                                  session=session_id, rule=decision.rule, outcome="allow",
                                  connection=self.conn_id, grant=grant, mode="proxyjump" if jump else "forward")
        if jump:
            return open_jump(self, target, session_id)  # an SSH server connection, run over the channel
        assert decision.policy is not None
        access = SqlAccess(self.runtime, self.auth.identity, target, decision.policy, session_id, self.peer,
                           grant=grant)
        return access.forward_channel()

    def _refuse_forward(self, user: str | None, host: str, port: int, rule: str, reason: str) -> Any:
        self.runtime.store.append("forward.refused", user=user, source=self.peer, session=self.conn_id,
                                  rule=rule, outcome="deny", destination=f"{host}:{port}", reason=reason)
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, reason)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False  # remote forwarding would open listeners on the bastion: never

    def unix_connection_requested(self, dest_path: str) -> bool:
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        return False

    def session_requested(self) -> asyncssh.SSHServerSession:
        from .session import BastionSession  # session imports this module's types

        assert self.auth is not None
        return BastionSession(self)


def server_options(runtime: Runtime) -> dict[str, Any]:
    """The keyword arguments that make asyncssh.create_server hardened and certificate-only."""
    keys = runtime.keys
    return {
        "server_host_keys": [(keys.host_key, keys.host_cert)],
        "kex_algs": KEX_ALGS,
        "encryption_algs": ENCRYPTION_ALGS,
        "mac_algs": MAC_ALGS,
        "signature_algs": SIGNATURE_ALGS,
        "compression_algs": ["none"],
        "max_pktsize": CHANNEL_MAX_PACKET,
        "login_timeout": runtime.config.limits.login_timeout,
        "keepalive_interval": 30,
        "keepalive_count_max": 3,
        "encoding": None,
        "line_editor": False,
        # No sftp_factory and no allow_scp here: with either set, asyncssh opens its own stream session
        # instead of asking session_requested, so SFTP and scp would bypass BastionSession (its recording,
        # limits and audit). BastionSession accepts the sftp subsystem and `scp` commands itself and hands
        # them to the gateway in bastion/transfer.py, which runs asyncssh's SFTP/SCP server code.
        "allow_scp": False,
        "agent_forwarding": False,
        "x11_forwarding": False,
        "server_version": "bastion",
    }


async def start_ssh_server(runtime: Runtime) -> asyncssh.SSHAcceptor:
    """Listen for SSH on the configured address."""
    ssh_packets.install()  # for every connection of the daemon: users', jump hosts' and the upstream ones
    listen = runtime.config.listen.ssh
    return await asyncssh.create_server(lambda: ConnectionHandler(runtime), listen.host, listen.port,
                                        **server_options(runtime))
