"""Everything that must not get in is refused with a clear message and an audit event."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import asyncssh
import paramiko
import pytest
import requests
from oidc_issuer import OidcIssuer
from peers import Bastion, Client

NOW = int(time.time())
HINT = "Run `bastion login`"


def forged(bastion: Bastion, client: Client, signer: asyncssh.SSHKey | None = None, *,
           host: bool = False, **kw: object) -> None:
    """Install a certificate for the client's key made by the test, not through the bastion."""
    key = client.make_key()
    ca = signer or bastion.user_ca()
    args: dict[str, object] = {"principals": ["alice"], "valid_after": NOW - 60, "valid_before": NOW + 3600}
    args.update(kw)
    if host:
        cert = ca.generate_host_certificate(key, "forged", **args)  # type: ignore[arg-type]
    else:
        cert = ca.generate_user_certificate(key, "forged", **args)  # type: ignore[arg-type]
    client.install_cert(cert)


@pytest.mark.parametrize(("case", "make", "message"), [
    ("expired", lambda b, c: forged(b, c, valid_before=NOW - 10), "the certificate expired at"),
    ("not yet valid", lambda b, c: forged(b, c, valid_after=NOW + 3600, valid_before=NOW + 7200),
     "the certificate is not valid before"),
    ("unknown CA", lambda b, c: forged(b, c, asyncssh.generate_private_key("ssh-ed25519")),
     "the certificate is not signed by this bastion's user CA"),
    ("wrong principal", lambda b, c: forged(b, c, principals=["mallory"]),
     "the certificate is for mallory, not alice"),
    ("source address", lambda b, c: forged(b, c, source_address=["192.0.2.0/24"]),
     "the certificate may not be used from 127.0.0.1"),
    ("not issued here", lambda b, c: forged(b, c), "the certificate was not issued by this bastion"),
    ("plain key", lambda b, c: c.make_key(), "plain public keys are not accepted"),
])
def test_certificate_refusals(bastion: Bastion, client: Client, case: str, make, message: str) -> None:  # type: ignore[no-untyped-def]
    make(bastion, client)
    client.known_hosts.write_text(_known_hosts(bastion) + "\n")
    result = client.ssh("alice", "whoami")
    assert result.returncode == 255, case
    assert f"bastion: {message}" in result.stderr and HINT in result.stderr
    assert "Permission denied (publickey)" in result.stderr
    event = bastion.wait_event("connection.refused", lambda e: message in (e.detail.get("reason") or ""))
    assert event.source == "127.0.0.1" and event.outcome == "refused"


def test_host_certificate_offered_as_user_certificate(bastion: Bastion) -> None:
    """OpenSSH will not even offer a host certificate, so a second client implementation does."""
    import asyncio

    key = asyncssh.generate_private_key("ssh-ed25519")
    cert = bastion.user_ca().generate_host_certificate(key, "forged", principals=["alice"])
    banners: list[str] = []

    class Client(asyncssh.SSHClient):
        def auth_banner_received(self, msg: str, lang: str) -> None:
            banners.append(msg)

    async def attempt() -> None:
        async with asyncssh.connect("127.0.0.1", bastion.ssh_port, username="alice", known_hosts=None,
                                    client_keys=[(key, cert)], client_factory=Client,
                                    agent_path=None, password=None):
            pass

    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(attempt())
    assert any("a host certificate cannot be used to log in" in b for b in banners)
    bastion.wait_event("connection.refused", lambda e: "host certificate" in (e.detail.get("reason") or ""))


def test_revoked_certificate_is_refused(bastion: Bastion, client: Client, oidc_issuer: OidcIssuer) -> None:
    client.certify(oidc_issuer, "alice", ["dev"])
    assert client.ssh("alice", "whoami").returncode == 0
    serial = bastion.wait_event("certificate.issued", lambda e: e.user == "alice").detail["serial"]
    bastion.revoke(serial)
    result = client.ssh("alice", "whoami")
    assert result.returncode == 255
    assert f"the certificate (serial {serial}) has been revoked" in result.stderr
    bastion.wait_event("connection.refused", lambda e: "revoked" in (e.detail.get("reason") or ""))


def test_password_is_never_offered_or_accepted(bastion: Bastion, client: Client) -> None:
    client.make_key()
    client.known_hosts.write_text(_known_hosts(bastion) + "\n")
    result = client.ssh("alice", "whoami", extra=("-o", "PreferredAuthentications=password,keyboard-interactive"))
    assert result.returncode == 255 and "Permission denied (publickey)" in result.stderr
    transport = paramiko.Transport(("127.0.0.1", bastion.ssh_port))
    try:
        transport.start_client(timeout=10)
        with pytest.raises(paramiko.BadAuthenticationType) as refused:
            transport.auth_password("alice", "hunter2")
        assert refused.value.allowed_types == ["publickey"]
    finally:
        transport.close()
    bastion.wait_event("connection.refused", lambda e: e.detail.get("reason") == "no certificate was offered")


def test_too_many_keys_are_cut_off(tmp_path: Path, make_bastion: Callable[..., Bastion]) -> None:
    b = make_bastion(limits="{auth_attempts: 3}")
    client = Client(tmp_path / "home", b)
    keys = []
    for i in range(6):
        key = asyncssh.generate_private_key("ssh-ed25519")
        path = tmp_path / f"k{i}"
        key.write_private_key(str(path))
        path.chmod(0o600)
        keys += ["-i", str(path)]
    client.make_key()
    client.known_hosts.write_text(_known_hosts(b) + "\n")
    result = client.ssh("alice", "whoami", extra=tuple(keys))
    assert result.returncode == 255
    assert "too many authentication attempts" in result.stderr
    b.wait_event("connection.refused", lambda e: "too many authentication attempts" in e.detail["reason"])
    assert b.alive()


def test_sessions_per_user_limit(tmp_path: Path, make_bastion: Callable[..., Bastion],
                                 oidc_issuer: OidcIssuer) -> None:
    import pexpect

    b = make_bastion(limits="{sessions_per_user: 1}")
    client = Client(tmp_path / "home", b)
    client.certify(oidc_issuer, "alice", ["dev"])
    args = client.ssh_args("alice", "-tt", "-o", "SetEnv=PROMPT_TOOLKIT_NO_CPR=1")
    held = pexpect.spawn(args[0], args[1:], env=client.env(), encoding="utf-8", timeout=15)
    held.expect("localhost")
    second = client.ssh("alice", "whoami")
    assert second.returncode == 1 and "alice already has 1 open sessions" in second.stderr
    held.sendline("exit")
    held.expect(pexpect.EOF)
    deadline = time.monotonic() + 5
    while client.ssh("alice", "whoami").returncode != 0:
        assert time.monotonic() < deadline, "the slot was never released"
        time.sleep(0.1)


def test_session_ends_when_the_certificate_expires(tmp_path: Path, make_bastion: Callable[..., Bastion],
                                                   oidc_issuer: OidcIssuer) -> None:
    import pexpect

    b = make_bastion(certificates="{default_ttl: 3s, max_ttl: 3s}")
    client = Client(tmp_path / "home", b)
    client.certify(oidc_issuer, "alice", ["dev"])
    args = client.ssh_args("alice", "-tt", "-o", "SetEnv=PROMPT_TOOLKIT_NO_CPR=1")
    term = pexpect.spawn(args[0], args[1:], env=client.env(), encoding="utf-8", timeout=15)
    term.expect("localhost")
    term.expect("your certificate expired at")
    term.expect(pexpect.EOF)
    term.close()
    assert term.exitstatus == 255
    event = b.wait_event("connection.expired")
    assert event.user == "alice" and "certificate expired at" in event.detail["reason"]


# -- ID tokens at the certificate exchange ---------------------------------------------


def _public_pem(issuer: OidcIssuer) -> bytes:
    """The issuer's RSA public key as PEM, taken from its JWKS as an attacker would."""
    from cryptography.hazmat.primitives import serialization
    from jwt.algorithms import RSAAlgorithm

    jwk = requests.get(f"{issuer.issuer}/jwks", timeout=5).json()["keys"][0]
    public = RSAAlgorithm.from_jwk(jwk)
    return public.public_bytes(serialization.Encoding.PEM,  # type: ignore[union-attr]
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def _token_cases(issuer: OidcIssuer) -> dict[str, tuple[str, str]]:
    from cryptography.hazmat.primitives.asymmetric import rsa

    claims = issuer.standard_claims("alice", ["dev"])
    now = int(time.time())
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {
        "alg none": (issuer.mint_id_token(claims, alg="none"), "algorithm"),
        "HS256 with the RSA public key": (issuer.mint_id_token(claims, alg="HS256", key=_public_pem(issuer)),
                                          "algorithm"),
        "unknown kid": (issuer.mint_id_token(claims, kid="no-such-kid"), "kid"),
        "wrong iss": (issuer.mint_id_token({**claims, "iss": "https://evil.example"}), "issuer"),
        "wrong aud": (issuer.mint_id_token({**claims, "aud": "someone-else"}), "audience"),
        "expired": (issuer.mint_id_token({**claims, "exp": now - 3600, "iat": now - 7200}), "expired"),
        "iat in the future": (issuer.mint_id_token({**claims, "iat": now + 3600}), "future"),
        "nbf in the future": (issuer.mint_id_token({**claims, "nbf": now + 3600}), "not valid before"),
        "bad signature": (issuer.mint_id_token(claims, key=other_key), "signature"),
        "missing sub": (issuer.mint_id_token({k: v for k, v in claims.items() if k != "sub"}), "sub"),
    }


def test_hostile_id_tokens_are_refused_and_audited(bastion: Bastion, client: Client,
                                                   oidc_issuer: OidcIssuer) -> None:
    key = client.make_key().export_public_key().decode()
    cases = _token_cases(oidc_issuer)
    assert len(cases) == 10
    issued_before = len(bastion.events("certificate.issued"))
    for case, (token, expected) in cases.items():
        r = requests.post(f"{bastion.url}/v1/certificates", json={"public_key": key, "id_token": token}, timeout=10)
        assert r.status_code == 401, (case, r.text)
        reason = r.json()["error"]
        assert expected in reason.lower(), (case, reason)
        assert token.split(".")[1] not in r.text, case
        event = bastion.wait_event("certificate.refused", lambda e, reason=reason: e.detail.get("reason") == reason)
        assert token.split(".")[1] not in str(event.detail), case
    assert len(bastion.events("certificate.issued")) == issued_before  # not one slipped through


def test_ca_never_signs_above_max_ttl(bastion: Bastion, client: Client, oidc_issuer: OidcIssuer) -> None:
    from peers import cert_blob

    from bastion.sshcert import parse_certificate

    before = time.time()
    body = client.certify(oidc_issuer, "alice", ["dev"], ttl=10**9)
    info = parse_certificate(cert_blob(body["certificate"]))
    assert info.valid_before <= before + 8 * 3600 + 2
    assert info.principals == ("alice",)


def _known_hosts(bastion: Bastion) -> str:
    from bastion.ca import known_hosts_line

    return known_hosts_line(bastion.host_ca(), ("localhost", "127.0.0.1"), bastion.ssh_port)


def test_revoking_a_certificate_ends_its_live_session(client: Client, bastion: Bastion,
                                                      oidc_issuer: OidcIssuer) -> None:
    import pexpect

    client.certify(oidc_issuer, "rita", ["dev"])
    args = client.ssh_args("rita", "-tt", "-o", "SetEnv=PROMPT_TOOLKIT_NO_CPR=1")
    term = pexpect.spawn(args[0], args[1:], env=client.env(), encoding="utf-8", timeout=15)
    term.expect("localhost")
    serial = bastion.wait_event("certificate.issued", lambda e: e.user == "rita").detail["serial"]
    started = time.monotonic()
    bastion.revoke(serial)
    term.expect("your certificate has been revoked", timeout=10)
    term.expect(pexpect.EOF)
    assert time.monotonic() - started < 5
    event = bastion.wait_event("connection.revoked", lambda e: e.user == "rita")
    assert f"serial {serial} was revoked" in event.detail["reason"]
