"""The target CA and SSH targets: keys on disk, the per-session certificate, and the ssh keys of bastion.yaml."""

from __future__ import annotations

import textwrap
from pathlib import Path

import asyncssh
import pytest

from bastion.config import load_config
from bastion.errors import ConfigError
from bastion.keys import KeyPaths, create_keys, ensure_target_ca, load_keys, target_ca_line
from bastion.proxies.base import ProxyError
from bastion.proxies.ssh import CERT_LIFETIME, CLOCK_SKEW, Credential, SshUpstream, sign_session_certificate
from bastion.sshcert import USER_CERT, parse_certificate

NOW = 1_800_000_000.0


def _line(key: asyncssh.SSHKey) -> str:
    return bytes(key.export_public_key()).decode().strip()


def test_the_session_certificate_is_one_minute_one_login_pty_only() -> None:
    ca = asyncssh.generate_private_key("ssh-ed25519")
    credential = sign_session_certificate(ca, "deploy", "bastion:alice:s1:web-1", NOW)
    assert credential.cert is not None
    info = parse_certificate(credential.cert.public_data)
    assert info.cert_type == USER_CERT
    assert info.principals == ("deploy",)
    assert (info.valid_after, info.valid_before) == (int(NOW - CLOCK_SKEW), int(NOW + CERT_LIFETIME))
    assert info.valid_before - info.valid_after == 90
    assert info.extensions == ("permit-pty",) and info.critical_options == {}
    assert info.key_id == "bastion:alice:s1:web-1"
    assert info.signature_key == ca.public_data
    assert credential.cert.key.public_data == credential.key.public_data  # certifies the fresh key


def test_every_session_gets_a_fresh_key_and_serial() -> None:
    ca = asyncssh.generate_private_key("ssh-ed25519")
    one, two = (sign_session_certificate(ca, "deploy", "k", NOW) for _ in range(2))
    assert one.key.public_data != two.key.public_data
    assert one.cert is not None and two.cert is not None
    assert parse_certificate(one.cert.public_data).serial != parse_certificate(two.cert.public_data).serial


def test_a_credential_never_shows_its_key() -> None:
    credential = sign_session_certificate(asyncssh.generate_private_key("ssh-ed25519"), "deploy", "k", NOW)
    assert repr(credential) == "Credential()"
    assert repr(Credential(credential.key)) == "Credential()"


def test_an_upstream_needs_exactly_one_way_to_recognise_the_host() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519").convert_to_public()
    with pytest.raises(ProxyError, match="exactly one"):
        SshUpstream("h", 22, "deploy", "web-1")
    with pytest.raises(ProxyError, match="exactly one"):
        SshUpstream("h", 22, "deploy", "web-1", host_key=key, host_ca=key)
    assert SshUpstream("h", 22, "deploy", "web-1", host_ca=key).known_hosts() == ([], [key], [])


def test_init_writes_the_target_ca_0600(tmp_path: Path) -> None:
    paths = create_keys(tmp_path / "state", ("localhost",))
    assert paths.target_ca.stat().st_mode & 0o777 == 0o600
    keys = load_keys(tmp_path / "state", ("localhost",))
    assert _line(keys.target_ca) == target_ca_line(tmp_path / "state")
    assert target_ca_line(tmp_path / "state") == paths.target_ca.with_suffix(".pub").read_text().strip()


def test_an_older_state_directory_gets_a_target_ca_on_first_load(tmp_path: Path) -> None:
    state = tmp_path / "state"
    paths = create_keys(state, ("localhost",))
    paths.target_ca.unlink()
    Path(f"{paths.target_ca}.pub").unlink()
    keys = load_keys(state, ("localhost",))
    assert paths.target_ca.stat().st_mode & 0o777 == 0o600
    assert _line(keys.target_ca) == target_ca_line(state)
    assert ensure_target_ca(state) is False  # made once, then kept


def test_no_target_ca_without_a_state_directory(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="bastion init"):
        ensure_target_ca(tmp_path / "nothing")
    assert not KeyPaths(tmp_path / "nothing").target_ca.exists()


BASE = textwrap.dedent("""\
    listen: {ssh: "127.0.0.1:2222", http: "127.0.0.1:8080"}
    state_dir: state
    identity: {oidc: {issuer: "https://idp.example.com", client_id: bastion}}
    targets:
    """)


def _load(tmp_path: Path, targets: str) -> object:
    path = tmp_path / "bastion.yaml"
    path.write_text(BASE + textwrap.indent(textwrap.dedent(targets), "  "))
    return load_config(path)


def test_ssh_target_keys_load_normalised(tmp_path: Path) -> None:
    host = asyncssh.generate_private_key("ssh-ed25519")
    ca = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "ca.pub").write_text(f"# the host CA\n{_line(ca)} ops@example\n")
    (tmp_path / "id").write_text("x")
    (tmp_path / "id").chmod(0o600)
    config = _load(tmp_path, f"""\
        web-1: {{kind: ssh, address: "10.0.0.1:22", login: deploy, host_key: "{_line(host)} a comment"}}
        web-2: {{kind: ssh, address: "10.0.0.2:22", login: deploy, host_ca: {{file: ca.pub}}, identity: {{file: id}}}}
        """)
    targets = config.targets  # type: ignore[attr-defined]
    assert (targets["web-1"].login, targets["web-1"].host_key, targets["web-1"].host_ca) == \
        ("deploy", _line(host), None)
    assert targets["web-2"].host_ca == _line(ca)
    assert targets["web-2"].identity.file == tmp_path / "id"


@pytest.mark.parametrize(("targets", "line", "key", "expected"), [
    ('pg: {kind: postgres, address: "h:5432", login: deploy}\n', 5, "targets.pg.login", "only ssh targets"),
    ('web: {kind: ssh, address: "h:22", host_key: "ssh-ed25519 AAAAnope"}\n', 5, "targets.web.host_key",
     "OpenSSH format"),
    ('web:\n  kind: ssh\n  address: "h:22"\n  host_key: {file: missing.pub}\n', 8, "targets.web.host_key",
     "cannot read public key file"),
    ('web: {kind: ssh, address: "h:22", login: deploy, host_key: "@K@", host_ca: "@K@"}\n', 5,
     "targets.web.host_ca", "not both"),
    ('web: {kind: ssh, address: "h:22", identity: "-----BEGIN"}\n', 5, "targets.web.identity", "not inline"),
    ('web: {kind: ssh, address: "h:22", hostkey: "x"}\n', 5, "targets.web.hostkey", "unknown key"),
])
def test_ssh_target_errors_name_file_line_and_key(tmp_path: Path, targets: str, line: int, key: str,
                                                  expected: str) -> None:
    targets = targets.replace("@K@", _line(asyncssh.generate_private_key("ssh-ed25519")))
    with pytest.raises(ConfigError) as raised:
        _load(tmp_path, targets)
    message = str(raised.value)
    assert f"bastion.yaml:{line}: {key}:" in message and expected in message, message
