"""The user certificate authority: turns a verified identity into a short-lived certificate."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import asyncssh

from .config import CertificatePolicy
from .errors import CertificateError
from .sshcert import parse_certificate

CLOCK_SKEW = 60  # seconds a certificate is back-dated, for clients whose clock runs behind
ALLOWED_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                     "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com",
                     "sk-ecdsa-sha2-nistp256@openssh.com", "ssh-rsa")
MIN_RSA_BITS = 3072


@dataclass(frozen=True)
class IssuedCertificate:
    """A signed user certificate and the facts the issuance record keeps about it."""

    serial: int
    key_id: str
    principal: str
    valid_after: int
    valid_before: int
    certificate: str  # the OpenSSH one-line form
    sha256: str  # of the certificate blob; the server finds the issuance record by it
    public_key_fingerprint: str


def effective_ttl(policy: CertificatePolicy, requested: float | None) -> float:
    """The TTL to sign: the request or the default, never above max, and at least a minute when max allows."""
    ttl = policy.default_ttl if requested is None else requested
    return max(min(60.0, policy.max_ttl), min(ttl, policy.max_ttl))


def parse_user_key(public_key: str) -> asyncssh.SSHKey:
    """Import a user's OpenSSH public key line, refusing weak or unexpected key types."""
    if len(public_key) > 16384:
        raise CertificateError("public_key is too large")
    try:
        key = asyncssh.import_public_key(public_key.strip())
    except (asyncssh.KeyImportError, ValueError) as e:
        raise CertificateError("public_key is not an OpenSSH public key line") from e
    algorithm = key.get_algorithm()
    if algorithm not in ALLOWED_KEY_TYPES:
        raise CertificateError(f"key type {algorithm} is not accepted; use ssh-ed25519")
    if algorithm == "ssh-rsa" and getattr(key.pyca_key, "key_size", 0) < MIN_RSA_BITS:
        raise CertificateError(f"RSA keys need at least {MIN_RSA_BITS} bits; use ssh-ed25519")
    return key


class CertificateAuthority:
    """Signs user certificates with the user CA key, within the configured TTL bounds."""

    def __init__(self, user_ca: asyncssh.SSHKey, policy: CertificatePolicy) -> None:
        self._ca = user_ca
        self._policy = policy

    @property
    def public_key(self) -> str:
        """The CA's public key line, for ``TrustedUserCAKeys``-style trust."""
        return self._ca.export_public_key("openssh").decode().strip()

    def sign_user(
        self, user_key: asyncssh.SSHKey, principal: str, *, now: float,
        ttl: float | None = None, permit_port_forwarding: bool = False,
    ) -> IssuedCertificate:
        """Sign a user certificate for exactly one principal, valid for the effective TTL."""
        if not principal:
            # An empty principal list is valid for ANY user in OpenSSH and asyncssh.
            raise CertificateError("refusing to sign a certificate without a principal")
        serial = secrets.randbits(63) or 1
        key_id = f"bastion:{principal}:{serial:016x}"
        valid_after = int(now) - CLOCK_SKEW
        valid_before = int(now + effective_ttl(self._policy, ttl))
        cert = self._ca.generate_user_certificate(
            user_key, key_id, serial=serial, principals=[principal],
            valid_after=valid_after, valid_before=valid_before,
            permit_x11_forwarding=False, permit_agent_forwarding=False,
            permit_port_forwarding=permit_port_forwarding, permit_pty=True,
            permit_user_rc=False,
        )
        blob = cert.public_data
        return IssuedCertificate(
            serial=serial, key_id=key_id, principal=principal,
            valid_after=valid_after, valid_before=valid_before,
            certificate=cert.export_certificate("openssh").decode().strip(),
            sha256=parse_certificate(blob).sha256,
            public_key_fingerprint=user_key.get_fingerprint("sha256"),
        )


# The comment that marks the line naming the SSH targets a person may reach with `ssh -J bastion web-1`:
# `bastion login` replaces the line with this mark, whatever names it held before.
JUMP_TARGETS_MARK = "bastion-jump-targets"


def covers_target_name(name: str) -> bool:
    """True when ``name`` can be a jump target: one word (no dot, colon, space or pattern character)."""
    return bool(name) and "." not in name and ":" not in name and not any(c in name for c in " ,!*?[]")


def known_hosts_line(host_ca: asyncssh.SSHKey, host_names: tuple[str, ...], port: int,
                     jump_targets: tuple[str, ...] = ()) -> str:
    """The ``@cert-authority`` lines that make OpenSSH trust the bastion's host certificates.

    The first covers the bastion's own names; the second, when there are any,
    the SSH targets this person may reach with ``ssh -J`` (their host
    certificates are signed by the same CA, see bastion/proxyjump.py), or none.
    Naming them keeps the host CA from vouching for any other host name.
    """
    patterns = ",".join(name if port == 22 else f"[{name}]:{port}" for name in host_names)
    key = " ".join(host_ca.export_public_key("openssh").decode().split()[:2])  # no comment: the mark goes there
    lines = f"@cert-authority {patterns} {key}"
    names = sorted({n for n in jump_targets if covers_target_name(n)})
    # With none, "!*" matches no host: the line still replaces an older list that `bastion login` wrote.
    return f"{lines}\n@cert-authority {','.join(names) or '!*'} {key} {JUMP_TARGETS_MARK}"
