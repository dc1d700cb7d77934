"""The user CA: bounded TTLs, one principal, unique serials, no dangerous extensions."""

from __future__ import annotations

import asyncssh
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.ca import CertificateAuthority, effective_ttl, known_hosts_line, parse_user_key
from bastion.config import CertificatePolicy
from bastion.errors import CertificateError
from bastion.sshcert import parse_certificate

POLICY = CertificatePolicy(default_ttl=3600, max_ttl=8 * 3600)
CA = CertificateAuthority(asyncssh.generate_private_key("ssh-ed25519"), POLICY)
KEY = asyncssh.generate_private_key("ssh-ed25519").convert_to_public()
NOW = 1_800_000_000.0


@given(st.one_of(st.none(), st.floats(min_value=-1e12, max_value=1e12, allow_nan=False)))
def test_ttl_never_above_max_whatever_is_requested(requested: float | None) -> None:
    ttl = effective_ttl(POLICY, requested)
    assert 60 <= ttl <= POLICY.max_ttl
    assert effective_ttl(CertificatePolicy(default_ttl=2, max_ttl=5), requested) <= 5


@pytest.mark.parametrize(("requested", "expected"), [(None, 3600), (600, 600), (10**9, 8 * 3600), (1, 60)])
def test_signed_validity_matches_effective_ttl(requested: float | None, expected: float) -> None:
    issued = CA.sign_user(KEY, "alice", now=NOW, ttl=requested)
    info = parse_certificate(_blob(issued.certificate))
    assert info.valid_before == int(NOW + expected)
    assert info.valid_after <= NOW
    assert info.principals == ("alice",)
    assert info.serial == issued.serial and info.key_id == issued.key_id
    assert info.sha256 == issued.sha256


def test_extensions_are_minimal() -> None:
    info = parse_certificate(_blob(CA.sign_user(KEY, "alice", now=NOW).certificate))
    assert set(info.extensions) == {"permit-pty"}
    info = parse_certificate(_blob(CA.sign_user(KEY, "alice", now=NOW, permit_port_forwarding=True).certificate))
    assert set(info.extensions) == {"permit-pty", "permit-port-forwarding"}


def test_serials_are_unique() -> None:
    serials = {CA.sign_user(KEY, "alice", now=NOW).serial for _ in range(200)}
    assert len(serials) == 200 and 0 not in serials


def test_refuses_empty_principal() -> None:
    with pytest.raises(CertificateError, match="without a principal"):
        CA.sign_user(KEY, "", now=NOW)


@pytest.mark.parametrize(("line", "expected"), [
    ("not a key", "not an OpenSSH public key"),
    ("x" * 20000, "too large"),
])
def test_bad_public_keys(line: str, expected: str) -> None:
    with pytest.raises(CertificateError, match=expected):
        parse_user_key(line)


def test_small_rsa_key_refused() -> None:
    small = asyncssh.generate_private_key("ssh-rsa", key_size=2048).export_public_key().decode()
    with pytest.raises(CertificateError, match="3072"):
        parse_user_key(small)


def test_known_hosts_line_brackets_non_default_ports() -> None:
    host_ca = asyncssh.generate_private_key("ssh-ed25519")
    line = known_hosts_line(host_ca, ("localhost", "127.0.0.1"), 2222)
    assert line.startswith("@cert-authority [localhost]:2222,[127.0.0.1]:2222 ssh-ed25519 ")
    assert known_hosts_line(host_ca, ("bastion",), 22).startswith("@cert-authority bastion ssh-ed25519 ")


def _blob(line: str) -> bytes:
    import base64

    return base64.b64decode(line.split()[1])
