"""The key files in ``<state>/keys``: user CA, host CA, host key and certificate, audit key, target CA.

Every private key is written 0600 and never overwritten: losing a CA key by
accident would lock every user out, so refusing is the only safe default.

The target CA signs the bastion's own one-minute certificates for SSH targets
(whose sshd trusts it through ``TrustedUserCAKeys``). A state directory made
before it existed gets one on the next load; ``bastion target-ca`` prints it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from .errors import StateError

log = logging.getLogger(__name__)

HOST_CERT_LIFETIME = 90 * 86400.0


@dataclass(frozen=True)
class KeyPaths:
    """Where each key lives inside a state directory."""

    state_dir: Path

    @property
    def keys(self) -> Path:
        return self.state_dir / "keys"

    @property
    def user_ca(self) -> Path:
        return self.keys / "user_ca"

    @property
    def host_ca(self) -> Path:
        return self.keys / "host_ca"

    @property
    def host_key(self) -> Path:
        return self.keys / "host_key"

    @property
    def host_cert(self) -> Path:
        return self.keys / "host_key-cert.pub"

    @property
    def audit_key(self) -> Path:
        return self.keys / "audit_key"

    @property
    def target_ca(self) -> Path:
        return self.keys / "target_ca"

    def private_keys(self) -> tuple[Path, ...]:
        """The private key files, in creation order."""
        return (self.user_ca, self.host_ca, self.host_key, self.audit_key, self.target_ca)


@dataclass(frozen=True)
class Keys:
    """The loaded keys the daemon runs with."""

    user_ca: asyncssh.SSHKey
    host_ca: asyncssh.SSHKey
    host_key: asyncssh.SSHKey
    host_cert: asyncssh.SSHCertificate
    target_ca: asyncssh.SSHKey  # signs the bastion's certificates for SSH targets


def _write_private(path: Path, key: asyncssh.SSHKey) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key("openssh"))
    path.with_name(path.name + ".pub").write_bytes(key.export_public_key("openssh"))


def sign_host_certificate(
    host_ca: asyncssh.SSHKey, host_key: asyncssh.SSHKey, host_names: tuple[str, ...],
    now: float | None = None,
) -> asyncssh.SSHCertificate:
    """A host certificate for ``host_key`` naming ``host_names``, valid for 90 days."""
    issued = time.time() if now is None else now
    return host_ca.generate_host_certificate(
        host_key, "bastion-host", principals=list(host_names),
        valid_after=int(issued) - 300, valid_before=int(issued + HOST_CERT_LIFETIME),
    )


def create_keys(state_dir: Path, host_names: tuple[str, ...]) -> KeyPaths:
    """Generate every key of a new bastion. Refuses if any of them already exists."""
    paths = KeyPaths(state_dir)
    existing = [p for p in (*paths.private_keys(), paths.host_cert) if p.exists()]
    if existing:
        raise StateError(f"refusing to overwrite existing key {existing[0]}")
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(state_dir, 0o700)
    paths.keys.mkdir(exist_ok=True, mode=0o700)
    os.chmod(paths.keys, 0o700)
    generated = {p: asyncssh.generate_private_key("ssh-ed25519", comment=p.name) for p in paths.private_keys()}
    for path, key in generated.items():
        _write_private(path, key)
    cert = sign_host_certificate(generated[paths.host_ca], generated[paths.host_key], host_names)
    cert.write_certificate(str(paths.host_cert))
    return paths


def ensure_target_ca(state_dir: Path) -> bool:
    """Create the target CA of a state directory made before it existed; True when it was created now."""
    paths = KeyPaths(state_dir)
    if paths.target_ca.exists():
        return False
    if not paths.keys.is_dir():
        raise StateError(f"no keys in {paths.keys}; run `bastion init` first")
    try:
        _write_private(paths.target_ca, asyncssh.generate_private_key("ssh-ed25519", comment="target_ca"))
    except FileExistsError:
        return False  # another process made it between the check and the write: use theirs
    log.warning("created the target CA %s; SSH targets trust it through TrustedUserCAKeys "
                "(`bastion target-ca` prints the line)", paths.target_ca)
    return True


def target_ca_line(state_dir: Path) -> str:
    """The target CA's public key, one OpenSSH line, as a target's ``TrustedUserCAKeys`` file holds it."""
    ensure_target_ca(state_dir)
    key = _read_key(KeyPaths(state_dir).target_ca)
    return key.export_public_key("openssh").decode().strip()


def _read_key(path: Path) -> asyncssh.SSHKey:
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise StateError(f"cannot read key {path}: {e.strerror}; run `bastion init` first") from e
    if mode & 0o077:
        raise StateError(f"key {path} is readable by group or others; chmod 600 {path}")
    try:
        return asyncssh.read_private_key(str(path))
    except (OSError, asyncssh.KeyImportError) as e:
        raise StateError(f"cannot load key {path}: {e}") from e


def load_keys(state_dir: Path, host_names: tuple[str, ...]) -> Keys:
    """Load the keys and re-sign the host certificate for the configured host names."""
    paths = KeyPaths(state_dir)
    user_ca, host_ca, host_key = (_read_key(p) for p in (paths.user_ca, paths.host_ca, paths.host_key))
    ensure_target_ca(state_dir)
    target_ca = _read_key(paths.target_ca)
    # Re-signed at every start, so a change of host_names or an old certificate needs no manual step.
    cert = sign_host_certificate(host_ca, host_key, host_names)
    tmp = paths.host_cert.with_suffix(".tmp")
    cert.write_certificate(str(tmp))
    os.replace(tmp, paths.host_cert)
    return Keys(user_ca, host_ca, host_key, cert, target_ca)


def load_audit_key(state_dir: Path) -> asyncssh.SSHKey:
    """The Ed25519 key that signs recordings and audit exports."""
    return _read_key(KeyPaths(state_dir).audit_key)
