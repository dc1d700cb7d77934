"""The host admin's `bastion revoke-cert` against a running bastion: live sessions are cut, logins refused."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from oidc_issuer import OidcIssuer
from peers import Bastion, Client, bastion_cli


def test_revoke_cert_by_user_cuts_the_live_session_and_refuses_the_next_login(
    tmp_path: Path, make_bastion: Callable[..., Bastion], oidc_issuer: OidcIssuer,
) -> None:
    import pexpect

    bastion = make_bastion()
    rosa, sam = Client(tmp_path / "rosa", bastion), Client(tmp_path / "sam", bastion)
    rosa.certify(oidc_issuer, "rosa", ["dev"])
    sam.certify(oidc_issuer, "sam", ["dev"])
    args = rosa.ssh_args("rosa", "-tt", "-o", "SetEnv=PROMPT_TOOLKIT_NO_CPR=1")
    term = pexpect.spawn(args[0], args[1:], env=rosa.env(), encoding="utf-8", timeout=15,
                         dimensions=(24, 100))
    term.expect("localhost")
    serial = bastion.wait_event("certificate.issued", lambda e: e.user == "rosa").detail["serial"]

    started = time.monotonic()
    result = bastion_cli("revoke-cert", "-c", str(bastion.config), "--user", "rosa",
                         "--reason", "laptop reported stolen", "--by", "oncall")
    assert result.returncode == 0, result.stderr
    assert f"serial {serial}" in result.stdout and "revoked" in result.stdout
    term.expect("your certificate has been revoked", timeout=10)
    term.expect(pexpect.EOF)
    assert time.monotonic() - started < 5

    cut = bastion.wait_event("connection.revoked", lambda e: e.user == "rosa")
    assert f"serial {serial} was revoked" in cut.detail["reason"]
    revoked = bastion.wait_event("certificate.revoked", lambda e: e.detail.get("holder") == "rosa")
    assert (revoked.user, revoked.detail["serial"], revoked.detail["reason"], revoked.detail["via"]) == (
        "oncall", serial, "laptop reported stolen", "admin-cli")

    again = rosa.ssh("rosa", "whoami")
    assert again.returncode == 255
    assert f"the certificate (serial {serial}) has been revoked" in again.stderr
    other = sam.ssh("sam", "whoami")  # only rosa's certificates were revoked
    assert other.returncode == 0, other.stderr
    assert "sam" in other.stdout
