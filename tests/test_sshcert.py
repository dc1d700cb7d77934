"""The OpenSSH certificate parser: real certificates round-trip, hostile bytes are refused cleanly."""

from __future__ import annotations

import struct

import asyncssh
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.errors import CertificateError
from bastion.server import check_certificate
from bastion.sshcert import HOST_CERT, USER_CERT, fingerprint, parse_certificate

CA = asyncssh.generate_private_key("ssh-ed25519")
USER = asyncssh.generate_private_key("ssh-ed25519")
NOW = 1_800_000_000


def user_cert(**kw: object) -> bytes:
    args: dict[str, object] = {"principals": ["alice"], "valid_after": NOW - 10, "valid_before": NOW + 3600,
                               "serial": 42}
    args.update(kw)
    return CA.generate_user_certificate(USER, "kid-1", **args).public_data  # type: ignore[arg-type]


@pytest.mark.parametrize("alg", ["ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"])
def test_parses_fields_of_real_certificates(alg: str) -> None:
    key = asyncssh.generate_private_key(alg, **({"key_size": 3072} if alg == "ssh-rsa" else {}))
    blob = CA.generate_user_certificate(
        key, "kid-7", serial=7, principals=["alice", "ops"], valid_after=NOW, valid_before=NOW + 60,
        source_address=["10.0.0.0/8", "127.0.0.1/32"], permit_port_forwarding=False).public_data
    info = parse_certificate(blob)
    assert (info.serial, info.key_id, info.cert_type) == (7, "kid-7", USER_CERT)
    assert info.principals == ("alice", "ops")
    assert (info.valid_after, info.valid_before) == (NOW, NOW + 60)
    assert info.source_addresses == ("10.0.0.0/8", "127.0.0.1/32")
    assert "permit-pty" in info.extensions and "permit-port-forwarding" not in info.extensions
    assert info.signature_key == CA.public_data


def test_fingerprint_matches_openssh_and_asyncssh() -> None:
    assert fingerprint(USER.public_data) == USER.get_fingerprint("sha256")


def test_host_certificate_type() -> None:
    blob = CA.generate_host_certificate(USER, "host", principals=["h"]).public_data
    assert parse_certificate(blob).cert_type == HOST_CERT


def test_plain_key_is_not_a_certificate() -> None:
    with pytest.raises(CertificateError, match="unsupported certificate type"):
        parse_certificate(USER.public_data)


def test_truncated_and_padded_blobs_are_refused() -> None:
    blob = user_cert()
    for cut in (3, 20, len(blob) // 2, len(blob) - 1):
        with pytest.raises(CertificateError):
            parse_certificate(blob[:cut])
    with pytest.raises(CertificateError, match="trailing"):
        parse_certificate(blob + b"\0")


def test_length_pointing_past_the_end() -> None:
    blob = bytearray(user_cert())
    struct.pack_into(">I", blob, 0, 0xFFFFFFF0)
    with pytest.raises(CertificateError):
        parse_certificate(bytes(blob))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_never_crash(data: bytes) -> None:
    try:
        parse_certificate(data)
    except CertificateError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_fuzz_single_byte_flips_of_a_real_certificate(position: int, value: int) -> None:
    blob = bytearray(user_cert())
    blob[position % len(blob)] = value
    try:
        info = parse_certificate(bytes(blob))
    except CertificateError:
        return
    assert isinstance(info.principals, tuple)


# -- the login checks built on it ---------------------------------------------------


def reason(blob: bytes, user: str = "alice", peer: str = "127.0.0.1", now: int = NOW) -> str | None:
    return check_certificate(parse_certificate(blob), user, peer, CA.public_data, now)


def test_valid_certificate_passes() -> None:
    assert reason(user_cert()) is None


@pytest.mark.parametrize(("blob", "kwargs", "expected"), [
    (lambda: user_cert(valid_before=NOW - 1), {}, "expired at"),
    (lambda: user_cert(valid_after=NOW + 100), {}, "not valid before"),
    (lambda: user_cert(), {"user": "bob"}, "is for alice, not bob"),
    (lambda: user_cert(principals=[]), {}, "names no principal"),
    (lambda: user_cert(source_address=["10.1.0.0/16"]), {}, "may not be used from 127.0.0.1"),
    (lambda: CA.generate_host_certificate(USER, "h", principals=["alice"]).public_data, {}, "host certificate"),
    (lambda: asyncssh.generate_private_key("ssh-ed25519").generate_user_certificate(
        USER, "x", principals=["alice"]).public_data, {}, "not signed by this bastion"),
    (lambda: user_cert(force_command="id"), {}, "unsupported critical option force-command"),
])
def test_refusal_reasons(blob, kwargs, expected) -> None:  # type: ignore[no-untyped-def]
    found = reason(blob(), **kwargs)
    assert found is not None and expected in found
