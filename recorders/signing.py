"""The audit key and what it signs: a recording's id, hash, size and end time.

The signature covers the index row, not the file: the file is bound to the row
by its sha256 and size, so editing either side breaks one of the two checks.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import RecorderError

DOMAIN = b"bastion-recording-v1\n"
_CHUNK = 1 << 20


def signed_message(session_id: str, sha256: str, size: int, ended: float) -> bytes:
    """The exact bytes the audit key signs for one recording."""
    return DOMAIN + f"{session_id}\n{sha256}\n{size}\n{ended:.6f}".encode()


def sign(key: Ed25519PrivateKey, session_id: str, sha256: str, size: int, ended: float) -> str:
    """A hex Ed25519 signature over :func:`signed_message`."""
    return key.sign(signed_message(session_id, sha256, size, ended)).hex()


def signature_ok(key: Ed25519PublicKey, signature: str, session_id: str, sha256: str, size: int,
                 ended: float) -> bool:
    """Whether ``signature`` (hex) was made by ``key`` over these values."""
    try:
        key.verify(bytes.fromhex(signature), signed_message(session_id, sha256, size, ended))
    except (InvalidSignature, ValueError):
        return False
    return True


def file_digest(path: Path) -> tuple[str, int]:
    """The sha256 (hex) and size of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The audit signing key from an OpenSSH private key file (``<state>/keys/audit_key``)."""
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except OSError as e:
        raise RecorderError(f"cannot read signing key {path}: {e.strerror}") from e
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise RecorderError(f"cannot load signing key {path}: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise RecorderError(f"signing key {path} is not an Ed25519 key")
    return key


def load_verify_key(path: Path) -> Ed25519PublicKey:
    """The audit public key from an OpenSSH public key file (``<state>/keys/audit_key.pub``)."""
    try:
        key = serialization.load_ssh_public_key(path.read_bytes())
    except OSError as e:
        raise RecorderError(f"cannot read public key {path}: {e.strerror}") from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise RecorderError(f"cannot load public key {path}: {e}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise RecorderError(f"public key {path} is not an Ed25519 key")
    return key
