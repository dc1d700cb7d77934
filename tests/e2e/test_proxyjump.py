"""ProxyJump: `ssh -J olive@bastion olive@web-1`, terminated by the bastion and proxied with its own login.

The real OpenSSH client runs both hops with StrictHostKeyChecking=yes and only
the known_hosts lines the certificate exchange returns (what `bastion login`
writes); a real sshd is the target and trusts only the bastion's target CA.
`sftp -J` and `scp -J` meet the bastion's file gateway, rooted at the target.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pexpect
import pytest
from oidc_issuer import OidcIssuer
from peers import BIN, Bastion, Client, have, strip_ansi
from sshd_fixtures import Sshd, bastion_with_sshd, wait_recording

from recorders.asciicast import iter_events

pytest_plugins = ["transfer_fixtures"]  # the target sshd serves SFTP


def _files(sshd: Sshd) -> Path:
    return sshd.directory / "files"


def _targets(sshd: Sshd) -> str:
    address = f"127.0.0.1:{sshd.port}"
    pin = f'host_key: "{sshd.host_key_line}"'
    files = _files(sshd)
    return f"""
targets:
  web-1:      {{kind: ssh, address: "{address}", login: {sshd.login}, {pin}, labels: {{env: test}}}}
  web.dotted: {{kind: ssh, address: "{address}", login: {sshd.login}, {pin}, labels: {{env: test}}}}
  web-nologin: {{kind: ssh, address: "{address}", {pin}, labels: {{env: test}}}}
  web-dev:    {{kind: ssh, address: "{address}", login: {sshd.login}, {pin}, labels: {{env: dev}}}}
  web-prod:   {{kind: ssh, address: "{address}", login: {sshd.login}, {pin}, labels: {{env: prod}}}}
policies:
  # No port_forwarding: reaching an SSH target is enough for the certificate to permit -J's channel.
  - name: ops-test
    subjects: {{groups: [ops]}}
    targets: {{labels: {{env: test}}}}
    access: allow
    transfer: {{upload: true, download: true, allow_paths: [{files}], deny_paths: [{files}/secret]}}
  - {{name: dev-dev, subjects: {{groups: [dev]}}, targets: {{labels: {{env: dev}}}}, access: allow}}
  - name: ops-prod
    subjects: {{groups: [ops]}}
    targets: {{labels: {{env: prod}}}}
    access: approval
    approval: {{approvers: {{groups: [sre]}}}}
"""


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory, oidc_issuer: OidcIssuer,
          make_sftpd: Callable[[str], Sshd]) -> Iterator[tuple[Bastion, Sshd]]:
    """A bastion (made by `bastion init`) and an sshd that trusts its target CA and serves SFTP."""
    with bastion_with_sshd(tmp_path_factory.mktemp("proxyjump"), oidc_issuer.issuer, make_sftpd, _targets) as hosts:
        (_files(hosts[1]) / "secret").mkdir(parents=True)
        yield hosts


@pytest.fixture
def bastion(hosts: tuple[Bastion, Sshd]) -> Bastion:
    return hosts[0]


@pytest.fixture
def files(hosts: tuple[Bastion, Sshd]) -> Path:
    """The directory on web-1 that the transfer policy opens (its `secret/` denied)."""
    if not (have("sftp") and have("scp")):
        pytest.skip("the OpenSSH sftp and scp clients are not installed")
    return _files(hosts[1])


class Jumper:
    """A person's machine with an ssh_config: `bastion` is the jump host, both hops strict."""

    def __init__(self, client: Client, user: str, inner_key: Path | None = None) -> None:
        self.client, self.user = client, user
        self.config = client.home / ".ssh" / "config"
        self.config.write_text(textwrap.dedent(f"""\
            Host bastion
              HostName 127.0.0.1
              Port {client.bastion.ssh_port}
              User {user}
              IdentityFile {client.key}
            Host web-* web.*
              IdentityFile {inner_key or client.key}
            Host *
              IdentitiesOnly yes
              UserKnownHostsFile {client.known_hosts}
              GlobalKnownHostsFile /dev/null
              StrictHostKeyChecking yes
              BatchMode yes
              ConnectTimeout 10
              CheckHostIP no
            """))

    def args(self, *extra: str) -> list[str]:
        """`ssh -F CONFIG -J bastion ...`; -F is what OpenSSH passes on to the jump process."""
        return ["ssh", "-F", str(self.config), "-J", "bastion", *extra]

    def ssh(self, target: str, command: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.args(*extra), f"{self.user}@{target}", command], capture_output=True,
                              text=True, timeout=30, env=self.client.env(), stdin=subprocess.DEVNULL)

    def scp(self, *args: str, legacy: bool = False) -> subprocess.CompletedProcess[str]:
        """`scp -J bastion ...` (SFTP mode unless ``legacy``, which is `scp -O`)."""
        return subprocess.run(["scp", *(["-O"] if legacy else []), "-F", str(self.config), "-J", "bastion", *args],
                              capture_output=True, text=True, timeout=30, env=self.client.env(),
                              cwd=self.client.home, stdin=subprocess.DEVNULL)

    def sftp(self, batch: str) -> subprocess.CompletedProcess[str]:
        """An `sftp -J bastion` batch to web-1; every command must succeed for exit status 0."""
        path = self.client.home / "batch"
        path.write_text(batch)
        return subprocess.run(["sftp", "-F", str(self.config), "-J", "bastion", "-b", str(path),
                               f"{self.user}@web-1"], capture_output=True, text=True, timeout=30,
                              env=self.client.env(), cwd=self.client.home, stdin=subprocess.DEVNULL)


def _person(bastion: Bastion, home: Path, issuer: OidcIssuer, user: str, groups: list[str]) -> Client:
    client = Client(home, bastion)
    client.certify(issuer, user, groups)
    return client


@pytest.fixture
def olive(bastion: Bastion, tmp_path: Path, oidc_issuer: OidcIssuer) -> Jumper:
    return Jumper(_person(bastion, tmp_path / "olive", oidc_issuer, "olive", ["ops"]), "olive")


def test_the_known_hosts_lines_cover_the_bastion_and_target_names(olive: Jumper) -> None:
    lines = olive.client.known_hosts.read_text().splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["@cert-authority", f"[localhost]:{olive.client.bastion.ssh_port},[127.0.0.1]:{olive.client.bastion.ssh_port}"],
        ["@cert-authority", "web-1,web-nologin,web-prod"]]  # what olive's policies reach; no web-dev, no dots
    assert lines[0].split()[2:4] == lines[1].split()[2:4]  # one host CA
    assert lines[1].split()[4] == "bastion-jump-targets"


def test_exec_through_proxyjump_prints_and_exits_with_the_remote_status(olive: Jumper, bastion: Bastion) -> None:
    done = olive.ssh("web-1", "echo hi; exit 3")
    assert (done.returncode, done.stdout) == (3, "hi\n"), done.stderr
    opened = bastion.wait_event("forward.opened", lambda e: e.user == "olive" and e.target == "web-1")
    assert (opened.detail["mode"], opened.rule) == ("proxyjump", "ops-test")
    login = bastion.wait_event("proxyjump.authenticated", lambda e: e.session == opened.session)
    assert login.target == "web-1"
    run = bastion.wait_event("ssh.run", lambda e: e.detail.get("command") == "echo hi; exit 3")
    assert (run.user, run.target, run.detail["exit_status"]) == ("olive", "web-1", 3)
    cast = wait_recording(bastion, run.session, "hi")
    assert "run web-1: exit status 3" in [e.data for e in iter_events(cast) if e.code == "m"]


def test_the_inner_host_certificate_names_the_target_and_comes_from_the_host_ca(olive: Jumper,
                                                                                 bastion: Bastion) -> None:
    done = subprocess.run([*olive.args("-v"), "olive@web-1", "true"], capture_output=True, text=True,
                          timeout=30, env=olive.client.env(), stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    host_ca = bastion.host_ca().get_fingerprint("sha256")
    shown = [line for line in done.stderr.splitlines() if "Server host certificate" in line]
    assert len(shown) == 2 and all(host_ca in line for line in shown), shown  # the bastion's, then web-1's
    assert "serial" in shown[1]
    assert 'Host \'web-1\' is known and matches the ED25519-CERT host certificate' in done.stderr


def test_stdin_and_large_output_cross_the_jump(olive: Jumper) -> None:
    size = 4 * 1024 * 1024
    up = subprocess.run([*olive.args(), "olive@web-1", "wc -c"], input=b"y" * size, capture_output=True,
                        timeout=60, env=olive.client.env())
    assert (up.returncode, up.stdout.strip()) == (0, str(size).encode()), up.stderr
    down = subprocess.run([*olive.args(), "olive@web-1", f"head -c {size} /dev/zero"], capture_output=True,
                          timeout=60, env=olive.client.env(), stdin=subprocess.DEVNULL)
    assert (down.returncode, len(down.stdout)) == (0, size), down.stderr


def test_an_interactive_pty_session_through_proxyjump_is_recorded(olive: Jumper, bastion: Bastion) -> None:
    args = olive.args("-tt", "olive@web-1")
    child = pexpect.spawn(args[0], args[1:], env=olive.client.env(), dimensions=(30, 120), encoding="utf-8",
                          timeout=20)
    child.send("echo term=$TERM size=$(stty size) sum=$((40+2))\r")  # typed while connecting: not lost
    child.expect("term=xterm size=30 120 sum=42")
    child.setwinsize(40, 100)
    time.sleep(0.3)
    child.send("echo now=$(stty size)\r")
    child.expect("now=40 100")
    child.send("exit 5\r")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 5
    event = bastion.wait_event("ssh.session", lambda e: e.user == "olive" and e.detail["exit_status"] == 5)
    assert event.target == "web-1"
    events = list(iter_events(wait_recording(bastion, event.session, "sum=42")))
    assert "echo now=$(stty size)\r" in "".join(e.data for e in events if e.code == "i")  # keystrokes
    assert ("r", "100x40") in [(e.code, e.data) for e in events]
    assert "now=40 100" in strip_ansi("".join(e.data for e in events if e.code == "o"))
    marks = [e.data for e in events if e.code == "m"]
    assert "ssh -J web-1" in marks and "connect web-1: allow by ops-test" in marks
    assert "connect web-1: exit status 5" in marks


def test_revoking_the_certificate_ends_a_session_through_the_jump(bastion: Bastion, tmp_path: Path,
                                                                  oidc_issuer: OidcIssuer) -> None:
    rita = Jumper(_person(bastion, tmp_path / "rita", oidc_issuer, "rita", ["ops"]), "rita")
    args = rita.args("-tt", "rita@web-1")
    child = pexpect.spawn(args[0], args[1:], env=rita.client.env(), dimensions=(30, 120), encoding="utf-8",
                          timeout=15)
    child.send("echo up-$((1+1))\r")
    child.expect("up-2")
    serial = bastion.wait_event("certificate.issued", lambda e: e.user == "rita").detail["serial"]
    started = time.monotonic()
    bastion.revoke(serial)
    child.expect("your certificate has been revoked", timeout=10)
    child.expect(pexpect.EOF)
    assert time.monotonic() - started < 5
    ended = bastion.wait_event("session.ended", lambda e: e.user == "rita")
    ending = "session ending: your certificate has been revoked; this session is over."
    cast = wait_recording(bastion, ended.session, ending)  # the marker comes after the output: wait for it
    assert ending in [e.data for e in iter_events(cast) if e.code == "m"]
    assert any("up-2" in e.data for e in iter_events(cast) if e.code == "o")


def test_a_user_whose_policy_denies_the_target_is_refused_with_a_message(bastion: Bastion, tmp_path: Path,
                                                                         oidc_issuer: OidcIssuer) -> None:
    dave = Jumper(_person(bastion, tmp_path / "dave", oidc_issuer, "dave", ["dev"]), "dave")
    done = dave.ssh("web-1", "echo should-not-run")
    assert done.returncode == 255 and "should-not-run" not in done.stdout
    assert "no policy gives dave access to web-1" in done.stderr
    event = bastion.wait_event("forward.refused", lambda e: e.user == "dave")
    assert (event.outcome, event.detail["destination"]) == ("deny", "web-1:22")
    allowed = dave.ssh("web-dev", "echo allowed-$((1+1))")  # the same person, a target policy gives them
    assert (allowed.returncode, allowed.stdout) == (0, "allowed-2\n"), allowed.stderr


def test_an_approval_target_needs_a_grant(olive: Jumper, bastion: Bastion, tmp_path: Path,
                                         oidc_issuer: OidcIssuer) -> None:
    held = olive.ssh("web-prod", "echo granted")
    assert held.returncode == 255 and "ssh bastion request web-prod" in held.stderr
    filed = subprocess.run([*olive.client.ssh_args("olive"), "request", "web-prod", "--reason", "deploy", "--json"],
                           capture_output=True, text=True, timeout=30, env=olive.client.env(), stdin=subprocess.DEVNULL)
    assert filed.returncode == 0, filed.stderr
    sam = _person(bastion, tmp_path / "sam", oidc_issuer, "sam", ["sre"])
    assert sam.ssh("sam", "approve", json.loads(filed.stdout)["id"]).returncode == 0
    done = olive.ssh("web-prod", "echo granted")
    assert (done.returncode, done.stdout) == (0, "granted\n"), done.stderr
    opened = bastion.wait_event("forward.opened", lambda e: e.target == "web-prod")
    ran = bastion.wait_event("ssh.run", lambda e: e.target == "web-prod")
    assert opened.detail["grant"] and ran.detail["grant"] == opened.detail["grant"]


def test_a_key_that_is_not_the_same_certificate_is_refused_on_the_inner_login(
        bastion: Bastion, tmp_path: Path, oidc_issuer: OidcIssuer) -> None:
    outer = _person(bastion, tmp_path / "outer", oidc_issuer, "olive", ["ops"])
    other = _person(bastion, tmp_path / "other", oidc_issuer, "olive", ["ops"])  # valid, same user, other serial
    jumper = Jumper(outer, "olive", inner_key=other.key)
    done = jumper.ssh("web-1", "echo should-not-run")
    assert done.returncode == 255 and "should-not-run" not in done.stdout
    assert "not the certificate your bastion connection logged in with" in done.stderr, done.stderr
    event = bastion.wait_event("forward.closed", lambda e: e.user == "olive" and e.outcome == "refused")
    assert "not the certificate" in event.detail["reason"]
    plain = Jumper(outer, "olive", inner_key=tmp_path / "plain")
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(tmp_path / "plain"))
    os.chmod(tmp_path / "plain", 0o600)
    refused = plain.ssh("web-1", "echo should-not-run")
    assert refused.returncode == 255 and "plain public keys are not accepted" in refused.stderr


def test_the_inner_login_must_be_the_bastion_username(olive: Jumper) -> None:
    done = subprocess.run([*olive.args(), "someone@web-1", "echo should-not-run"], capture_output=True,
                          text=True, timeout=30, env=olive.client.env(), stdin=subprocess.DEVNULL)
    assert done.returncode == 255 and "should-not-run" not in done.stdout
    assert "the certificate is for olive, not someone" in done.stderr
    assert "ssh -J olive@BASTION olive@web-1" in done.stderr


@pytest.mark.parametrize(("destination", "message"), [
    ("web-1:8080", "passes no other port through"),
    ("web.dotted:22", "covers target names without dots or colons only"),
    ("web-nologin:22", "names no login for it"),
])
def test_what_cannot_be_terminated_is_refused_never_passed_through(olive: Jumper, bastion: Bastion,
                                                                   destination: str, message: str) -> None:
    done = subprocess.run(["ssh", "-F", str(olive.config), "-W", destination, "bastion"], capture_output=True,
                          text=True, timeout=30, env=olive.client.env(), stdin=subprocess.DEVNULL)
    assert done.returncode == 255 and "SSH-2.0" not in done.stdout  # nothing of the target's came back
    assert message in done.stderr
    event = bastion.wait_event("forward.refused", lambda e: e.detail.get("destination") == destination)
    assert (event.rule, event.outcome) == ("proxyjump", "deny")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _transfer(bastion: Bastion, path: Path, direction: str) -> Any:
    return bastion.wait_event("transfer", lambda e: e.user == "olive" and e.detail["path"] == str(path)
                              and e.detail["direction"] == direction)


@pytest.mark.parametrize("legacy", [False, True], ids=["sftp-mode", "scp-O"])
def test_scp_through_the_jump_keeps_the_sha256_both_ways_and_is_audited(
        olive: Jumper, bastion: Bastion, files: Path, legacy: bool) -> None:
    name = f"jump-{'legacy' if legacy else 'sftp'}.bin"
    local = olive.client.home / name
    local.write_bytes(os.urandom(2_000_000))
    up = olive.scp(str(local), f"olive@web-1:{files}/{name}", legacy=legacy)
    assert up.returncode == 0, up.stderr
    assert _sha256(files / name) == _sha256(local)
    down = olive.scp(f"olive@web-1:{files}/{name}", str(olive.client.home / "back.bin"), legacy=legacy)
    assert down.returncode == 0, down.stderr
    assert _sha256(olive.client.home / "back.bin") == _sha256(local)
    for direction in ("upload", "download"):  # the host's own path, as the gateway's /web-1/... would have it
        event = _transfer(bastion, files / name, direction)
        assert (event.outcome, event.target, event.rule) == ("ok", "web-1", "ops-test")
        assert (event.detail["bytes"], event.detail["sha256"]) == (2_000_000, _sha256(local))
    started = bastion.wait_event("session.started", lambda e: e.session == event.session)
    assert started.detail["mode"] == ("scp" if legacy else "sftp")
    marks = [e.data for e in iter_events(wait_recording(bastion, event.session, "download web-1")) if e.code == "m"]
    assert f"{'scp' if legacy else 'sftp'} through ssh -J web-1" in marks
    assert any(m.startswith(f"transfer download web-1:{files}/{name} ok") for m in marks), marks


def test_sftp_through_the_jump_sees_the_host_s_own_paths(olive: Jumper, bastion: Bastion, files: Path,
                                                         hosts: tuple[Bastion, Sshd]) -> None:
    local = olive.client.home / "notes.txt"
    local.write_text("through the jump\n")
    done = olive.sftp(f"""\
pwd
cd {files}
put notes.txt
ls -l
get notes.txt copy.txt
rm notes.txt
""")
    assert done.returncode == 0, done.stderr
    home = os.path.realpath(pwd.getpwnam(hosts[1].login).pw_dir)
    assert f"Remote working directory: {home}\n" in done.stdout  # the host's home, not a gateway path
    assert "notes.txt" in done.stdout and "/web-1" not in done.stdout
    assert (olive.client.home / "copy.txt").read_text() == "through the jump\n"
    assert not (files / "notes.txt").exists()
    up = _transfer(bastion, files / "notes.txt", "upload")
    assert up.outcome == "ok" and up.detail["sha256"] == _sha256(local)
    removed = bastion.wait_event("transfer.change", lambda e: e.session == up.session)
    assert (removed.detail["action"], removed.detail["path"]) == ("remove", f"{files}/notes.txt")


def test_the_transfer_policy_refuses_through_the_jump_with_its_reason(olive: Jumper, bastion: Bastion,
                                                                      files: Path,
                                                                      hosts: tuple[Bastion, Sshd]) -> None:
    local = olive.client.home / "denied.txt"
    local.write_text("no\n")
    done = olive.scp(str(local), f"olive@web-1:{files}/secret/denied.txt")
    assert done.returncode != 0
    assert "which policy ops-test denies" in done.stderr, done.stderr
    assert not (files / "secret" / "denied.txt").exists()
    refused = [e for e in bastion.events() if e.kind in ("transfer", "transfer.browse") and e.user == "olive"
               and e.outcome == "deny" and e.detail.get("path") == f"{files}/secret/denied.txt"]
    assert refused and "which policy ops-test denies" in refused[-1].detail["reason"]
    # A relative path starts at the login's home on the host, which this policy does not open.
    home = os.path.realpath(pwd.getpwnam(hosts[1].login).pw_dir)
    relative = olive.scp("olive@web-1:nothere.txt", str(olive.client.home / "nothere.txt"), legacy=True)
    assert relative.returncode != 0 and "outside the paths policy ops-test allows" in relative.stderr
    assert any(e.detail.get("path") == f"{home}/nothere.txt" for e in bastion.events("transfer.browse")
               if e.user == "olive")


def test_ansible_ping_through_the_bastion(olive: Jumper, bastion: Bastion, tmp_path: Path) -> None:
    ansible = BIN / "ansible"
    if not ansible.exists():
        pytest.skip("ansible-core is not installed (pip install -e '.[test]')")
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(
        "web-1 ansible_user=olive ansible_python_interpreter=/usr/bin/python3 "
        f"ansible_ssh_common_args='-F {olive.config} -o ProxyJump=bastion'\n")
    env = {**olive.client.env(), "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
           "ANSIBLE_REMOTE_TMP": str(tmp_path / "remote"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_SSH_CONTROL_PATH_DIR": str(tmp_path / "cp")}
    done = subprocess.run([str(ansible), "-i", str(inventory), "web-1", "-m", "ping"], capture_output=True,
                          text=True, timeout=90, env=env, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "web-1 | SUCCESS" in done.stdout and '"ping": "pong"' in done.stdout
    # Its module ran as commands through the bastion, each audited (its files by the piped fallback: the
    # gateway refuses its sftp and scp uploads, which fall outside the paths the transfer policy opens).
    ran = bastion.wait_event("ssh.run", lambda e: e.user == "olive" and "/usr/bin/python3" in e.detail["command"])
    assert (ran.target, ran.detail["exit_status"]) == ("web-1", 0)
