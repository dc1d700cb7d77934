"""Read the fields of an OpenSSH certificate (PROTOCOL.certkeys) from its wire blob.

asyncssh validates certificates but keeps serial, key id, type and validity
private, and says nothing about *why* one was refused. The server parses the
blob itself so it can refuse with a reason and find the issuance record.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass

from .errors import CertificateError

USER_CERT = 1
HOST_CERT = 2
FOREVER = 0xFFFFFFFFFFFFFFFF

# How many length-prefixed public-key fields follow the nonce, per certificate type.
_KEY_FIELDS = {
    "ssh-ed25519-cert-v01@openssh.com": 1,
    "ssh-ed448-cert-v01@openssh.com": 1,
    "ssh-rsa-cert-v01@openssh.com": 2,
    "ecdsa-sha2-nistp256-cert-v01@openssh.com": 2,
    "ecdsa-sha2-nistp384-cert-v01@openssh.com": 2,
    "ecdsa-sha2-nistp521-cert-v01@openssh.com": 2,
    "sk-ssh-ed25519-cert-v01@openssh.com": 2,
    "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com": 3,
    "ssh-dss-cert-v01@openssh.com": 4,
}
MAX_BLOB = 16 * 1024  # a real certificate is well under 2 KiB


@dataclass(frozen=True)
class CertInfo:
    """The fields of an OpenSSH certificate that policy needs."""

    algorithm: str
    serial: int
    cert_type: int
    key_id: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    critical_options: dict[str, bytes]
    extensions: tuple[str, ...]
    signature_key: bytes
    sha256: str  # hex digest of the whole blob: how an issuance record is found

    @property
    def source_addresses(self) -> tuple[str, ...]:
        """The ``source-address`` critical option, split, or () when absent."""
        raw = self.critical_options.get("source-address")
        if raw is None:
            return ()
        value, _ = _read_string(raw, 0)
        return tuple(a.strip() for a in value.decode().split(",") if a.strip())


def fingerprint(key_blob: bytes) -> str:
    """The OpenSSH ``SHA256:…`` fingerprint of a public key's wire blob."""
    digest = base64.b64encode(hashlib.sha256(key_blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def _read_string(data: bytes, offset: int) -> tuple[bytes, int]:
    if offset + 4 > len(data):
        raise CertificateError("malformed certificate: truncated length")
    (length,) = struct.unpack_from(">I", data, offset)
    start, end = offset + 4, offset + 4 + length
    if end > len(data):
        raise CertificateError("malformed certificate: field runs past the end")
    return data[start:end], end


def _read_uint(data: bytes, offset: int, fmt: str) -> tuple[int, int]:
    size = struct.calcsize(fmt)
    if offset + size > len(data):
        raise CertificateError("malformed certificate: truncated integer")
    return struct.unpack_from(fmt, data, offset)[0], offset + size


def _read_list(blob: bytes) -> list[bytes]:
    items, offset = [], 0
    while offset < len(blob):
        item, offset = _read_string(blob, offset)
        items.append(item)
    return items


def _read_options(blob: bytes) -> dict[str, bytes]:
    options, offset = {}, 0
    while offset < len(blob):
        name, offset = _read_string(blob, offset)
        value, offset = _read_string(blob, offset)
        options[name.decode(errors="replace")] = value
    return options


def parse_certificate(blob: bytes) -> CertInfo:
    """Parse an OpenSSH certificate blob. Raises CertificateError on anything malformed."""
    if len(blob) > MAX_BLOB:
        raise CertificateError("malformed certificate: too large")
    try:
        raw_alg, offset = _read_string(blob, 0)
        algorithm = raw_alg.decode("ascii")
        fields = _KEY_FIELDS.get(algorithm)
        if fields is None:
            raise CertificateError(f"unsupported certificate type {algorithm!r}")
        _nonce, offset = _read_string(blob, offset)
        for _ in range(fields):
            _, offset = _read_string(blob, offset)
        serial, offset = _read_uint(blob, offset, ">Q")
        cert_type, offset = _read_uint(blob, offset, ">I")
        key_id, offset = _read_string(blob, offset)
        principals, offset = _read_string(blob, offset)
        valid_after, offset = _read_uint(blob, offset, ">Q")
        valid_before, offset = _read_uint(blob, offset, ">Q")
        critical, offset = _read_string(blob, offset)
        extensions, offset = _read_string(blob, offset)
        _reserved, offset = _read_string(blob, offset)
        signature_key, offset = _read_string(blob, offset)
        _signature, offset = _read_string(blob, offset)
        if offset != len(blob):
            raise CertificateError("malformed certificate: trailing bytes")
        return CertInfo(
            algorithm=algorithm,
            serial=serial,
            cert_type=cert_type,
            key_id=key_id.decode(errors="replace"),
            principals=tuple(p.decode(errors="replace") for p in _read_list(principals)),
            valid_after=valid_after,
            valid_before=valid_before,
            critical_options=_read_options(critical),
            extensions=tuple(_read_options(extensions)),
            signature_key=signature_key,
            sha256=hashlib.sha256(blob).hexdigest(),
        )
    except UnicodeDecodeError as e:
        raise CertificateError("malformed certificate: bad text field") from e
