"""The SSH server's algorithms pass ssh-audit, and OpenSSH still connects with its defaults."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from oidc_issuer import OidcIssuer
from peers import BIN, Bastion, Client

SSH_AUDIT = BIN / "ssh-audit"


@pytest.mark.skipif(not SSH_AUDIT.exists(), reason="ssh-audit is a test dependency; `make test` installs it")
def test_ssh_audit_reports_no_failing_algorithm(bastion: Bastion) -> None:
    result = subprocess.run([str(SSH_AUDIT), "-j", "-p", str(bastion.ssh_port), "127.0.0.1"],
                            capture_output=True, text=True, timeout=60)
    report = json.loads(result.stdout)
    failing = [(section, entry["algorithm"], entry["notes"]["fail"])
               for section in ("kex", "key", "enc", "mac")
               for entry in report[section] if entry.get("notes", {}).get("fail")]
    assert failing == []
    assert report["cves"] == []
    assert {e["algorithm"] for e in report["key"]} == {"ssh-ed25519", "ssh-ed25519-cert-v01@openssh.com"}
    assert "kex-strict-s-v00@openssh.com" in {e["algorithm"] for e in report["kex"]}  # Terrapin counter-measure


def test_openssh_defaults_connect_and_see_the_host_certificate(client: Client, oidc_issuer: OidcIssuer) -> None:
    client.certify(oidc_issuer, "alice", ["dev"])
    result = client.ssh("alice", "whoami", extra=("-v",))
    assert result.returncode == 0
    assert "Server host certificate: ssh-ed25519-cert-v01@openssh.com" in result.stderr
    assert "Host '[127.0.0.1]:" in result.stderr
    assert "is known and matches the ED25519-CERT host certificate" in result.stderr


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen is not installed")
def test_key_files_are_private(bastion: Bastion) -> None:
    keys = bastion.state / "keys"
    for name in ("user_ca", "host_ca", "host_key", "audit_key"):
        assert (keys / name).stat().st_mode & 0o777 == 0o600, name
    assert (keys.stat().st_mode & 0o777) == 0o700
    assert (bastion.state.stat().st_mode & 0o777) == 0o700
    cert = subprocess.run(["ssh-keygen", "-L", "-f", str(keys / "host_key-cert.pub")], capture_output=True, text=True)
    assert "host certificate" in cert.stdout and "localhost" in cert.stdout


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    from peers import bastion_cli

    first = bastion_cli("init", "--dir", str(tmp_path / "b"))
    assert first.returncode == 0
    before = (tmp_path / "b" / "state" / "keys" / "user_ca").read_bytes()
    second = bastion_cli("init", "--dir", str(tmp_path / "b"))
    assert second.returncode == 2 and "refusing to overwrite" in second.stderr
    assert (tmp_path / "b" / "state" / "keys" / "user_ca").read_bytes() == before
    (tmp_path / "b" / "bastion.yaml").unlink()
    third = bastion_cli("init", "--dir", str(tmp_path / "b"))
    assert third.returncode == 2 and "refusing to overwrite existing key" in third.stderr
