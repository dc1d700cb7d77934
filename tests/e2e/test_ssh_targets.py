"""SSH targets through the bastion: `connect` (a PTY upstream), `run TARGET -- COMMAND`, host-key pinning.

A real OpenSSH sshd trusts the bastion's target CA (TrustedUserCAKeys) and
nothing else but one plain key (the identity fallback). The bastion logs in
with a one-minute certificate per session; people drive real `ssh`.
"""

from __future__ import annotations

import base64
import json
import shlex
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncssh
import pexpect
import pytest
from oidc_issuer import OidcIssuer
from peers import Bastion, Client, strip_ansi
from sshd_fixtures import Sshd, bastion_with_sshd, wait_recording

from bastion.sshcert import parse_certificate
from recorders.asciicast import iter_events

pytest_plugins = ["sshd_fixtures"]


def _targets(sshd: Sshd) -> str:
    address = f"127.0.0.1:{sshd.port}"
    other = bytes(asyncssh.generate_private_key("ssh-ed25519").export_public_key()).decode().strip()
    (sshd.directory / "host_ca.pub").write_text(sshd.host_ca_line + "\n")
    return f"""
targets:
  web-1:    {{kind: ssh, address: "{address}", login: {sshd.login}, host_key: "{sshd.host_key_line}",
             labels: {{env: test}}}}
  web-ca:   {{kind: ssh, address: "{address}", login: {sshd.login}, host_ca: {{file: {sshd.directory}/host_ca.pub}},
             labels: {{env: test}}}}
  web-key:  {{kind: ssh, address: "{address}", login: {sshd.login}, host_key: "{sshd.host_key_line}",
             identity: {{file: {sshd.client_key_file}}}, labels: {{env: test}}}}
  web-bad:  {{kind: ssh, address: "{address}", login: {sshd.login}, host_key: "{other}", labels: {{env: test}}}}
  web-prod: {{kind: ssh, address: "{address}", login: {sshd.login}, host_key: "{sshd.host_key_line}",
             labels: {{env: prod}}}}
policies:
  - {{name: ops-test, subjects: {{groups: [ops]}}, targets: {{labels: {{env: test}}}}, access: allow}}
  - name: ops-prod
    subjects: {{groups: [ops]}}
    targets: {{labels: {{env: prod}}}}
    access: approval
    approval: {{approvers: {{groups: [sre]}}}}
"""


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory, oidc_issuer: OidcIssuer,
          make_sshd: Callable[[str], Sshd]) -> Iterator[tuple[Bastion, Sshd]]:
    """A bastion (made by `bastion init`) and an sshd that trusts its target CA."""
    with bastion_with_sshd(tmp_path_factory.mktemp("ssh-targets"), oidc_issuer.issuer, make_sshd, _targets) as hosts:
        yield hosts


@pytest.fixture
def bastion(hosts: tuple[Bastion, Sshd]) -> Bastion:
    return hosts[0]


@pytest.fixture
def sshd(hosts: tuple[Bastion, Sshd]) -> Sshd:
    return hosts[1]


@pytest.fixture
def olive(bastion: Bastion, tmp_path: Path, oidc_issuer: OidcIssuer) -> Client:
    client = Client(tmp_path / "olive", bastion)
    client.certify(oidc_issuer, "olive", ["ops"])
    return client


def test_the_target_ca_is_a_0600_key_whose_line_the_cli_prints(bastion: Bastion, sshd: Sshd) -> None:
    key = bastion.state / "keys" / "target_ca"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (bastion.state / "keys" / "target_ca.pub").read_text().split()[:2] == sshd.trusted_user_ca.split()[:2]
    assert sshd.trusted_user_ca.startswith("ssh-ed25519 ")


def test_run_exit_status_becomes_ours(olive: Client) -> None:
    done = olive.ssh("olive", "run", "web-1", "--", "sh -c 'exit 7'")
    assert done.returncode == 7, done.stderr
    ok = olive.ssh("olive", "run", "web-1", "--", "echo out-$((6*7)); echo err >&2")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "out-42\n" and ok.stderr == "err\n"


def test_run_forwards_stdin(olive: Client) -> None:
    done = subprocess.run([*olive.ssh_args("olive"), "run web-1 -- tr a-z A-Z"], input="hello\nthere\n",
                          capture_output=True, text=True, timeout=30, env=olive.env())
    assert done.returncode == 0, done.stderr
    assert done.stdout == "HELLO\nTHERE\n"


def test_run_moves_megabytes_both_ways_with_flow_control(olive: Client) -> None:
    size = 8 * 1024 * 1024  # well over the relay's high-water mark in each direction
    up = subprocess.run([*olive.ssh_args("olive"), "run web-1 -- wc -c"], input=b"x" * size,
                        capture_output=True, timeout=60, env=olive.env())
    assert (up.returncode, up.stdout.strip()) == (0, str(size).encode()), up.stderr
    down = subprocess.run([*olive.ssh_args("olive"), f"run web-1 -- head -c {size} /dev/zero"],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=60, env=olive.env())
    assert (down.returncode, len(down.stdout)) == (0, size), down.stderr


def test_run_streams_output_as_it_comes(olive: Client) -> None:
    proc = subprocess.Popen([*olive.ssh_args("olive"), "run web-1 -- echo first; sleep 2; echo second"],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=olive.env())
    started = time.monotonic()
    assert proc.stdout is not None
    assert proc.stdout.readline() == "first\n"
    assert time.monotonic() - started < 1.8  # before the command has finished
    assert proc.stdout.readline() == "second\n"
    assert proc.wait(10) == 0


def test_run_is_audited_and_recorded(olive: Client, bastion: Bastion) -> None:
    assert olive.ssh("olive", "run", "web-1", "--", "echo audited-$((2*3)); exit 2").returncode == 2
    event = bastion.wait_event("ssh.run", lambda e: "audited" in e.detail.get("command", ""))
    assert (event.user, event.target, event.detail["exit_status"]) == ("olive", "web-1", 2)
    assert event.detail["duration"] >= 0
    cast = wait_recording(bastion, event.session, "run web-1: exit status 2")  # the marker comes last
    assert "run web-1: exit status 2" in [e.data for e in iter_events(cast) if e.code == "m"]
    assert any("audited-6" in e.data for e in iter_events(cast) if e.code == "o")


class Terminal:
    """The real ssh client in a PTY, and what it has shown so far."""

    def __init__(self, client: Client, *command: str, stty: str | None = None) -> None:
        args = [*client.ssh_args("olive", "-tt", "-o", "SetEnv=PROMPT_TOOLKIT_NO_CPR=1"), *command]
        if stty is not None:  # set the local terminal's modes first, as a user's shell would have
            args = ["/bin/sh", "-c", f"stty {stty} && exec {shlex.join(args)}"]
        self.child = pexpect.spawn(args[0], args[1:], env=client.env(), dimensions=(30, 120),
                                   encoding="utf-8", timeout=20)
        self.seen = ""

    def wait_for(self, text: str) -> str:
        deadline = time.monotonic() + 20
        while text not in strip_ansi(self.seen):
            assert time.monotonic() < deadline, strip_ansi(self.seen)[-800:]
            try:
                self.seen += self.child.read_nonblocking(4096, timeout=0.2)
            except pexpect.TIMEOUT:
                pass
        return strip_ansi(self.seen)


def test_the_terminal_modes_of_the_user_s_keyboard_reach_the_target(olive: Client, bastion: Bastion) -> None:
    # An erase key of ^X is unusual: only the client's own PTY request can have told the target about it.
    term = Terminal(olive, stty="erase ^X intr ^G")
    term.wait_for("olive@localhost>")
    term.child.send("connect web-1\r")
    term.child.send("stty -a | tr ';' '\\n' | grep -E '^ *(erase|intr) =' | tr -d ' ' | paste -sd, -\r")
    term.wait_for("intr=^G,erase=^X")
    term.child.close(force=True)


def test_connect_runs_a_recorded_pty_session_and_reports_its_exit(olive: Client, bastion: Bastion) -> None:
    term = Terminal(olive)
    term.wait_for("olive@localhost>")
    term.child.send("connect web-1\r")
    term.child.send("echo term=$TERM size=$(stty size) sum=$((40+2))\r")  # typed while connecting: not lost
    term.wait_for("term=xterm size=30 120 sum=42")
    term.child.setwinsize(40, 100)
    time.sleep(0.3)
    term.child.send("echo now=$(stty size)\r")
    term.wait_for("now=40 100")
    term.child.send("sleep 30\r")
    time.sleep(0.3)
    term.child.send("\x03")  # Ctrl-C goes to the remote side, not the bastion
    term.child.send("echo still-there\r")
    term.wait_for("\nstill-there\n")  # the output, not the echo
    term.child.send("exit 3\r")
    term.wait_for("left web-1 (the remote shell exited with 3); back in the bastion shell")
    term.child.send("exit\r")
    term.child.expect(pexpect.EOF)
    event = bastion.wait_event("ssh.session", lambda e: e.user == "olive")
    assert (event.target, event.detail["exit_status"]) == ("web-1", 3)
    cast = wait_recording(bastion, event.session, "sum=42")
    events = list(iter_events(cast))
    typed = "".join(e.data for e in events if e.code == "i")
    assert "echo still-there\r" in typed and "\x03" in typed  # keystroke by keystroke
    assert ("r", "100x40") in [(e.code, e.data) for e in events]
    shown = strip_ansi("".join(e.data for e in events if e.code == "o"))
    assert "now=40 100" in shown
    marks = [e.data for e in events if e.code == "m"]
    assert "connect web-1: allow by ops-test" in marks and "connect web-1: exit status 3" in marks


def test_ssh_t_connect_exits_with_the_remote_status(olive: Client) -> None:
    term = Terminal(olive, "connect", "web-1")
    term.child.send("echo ready-$((1+1))\r")
    term.wait_for("ready-2")
    term.child.send("exit 4\r")  # 4 is also the bastion's "needs approval": the remote status wins
    term.child.expect(pexpect.EOF)
    shown = strip_ansi(term.seen + str(term.child.before))
    term.child.close()
    assert term.child.exitstatus == 4
    assert "left web-1 (the remote shell exited with 4)" in shown and "request" not in shown


def test_a_host_key_that_does_not_match_the_pin_is_refused(olive: Client, bastion: Bastion) -> None:
    done = olive.ssh("olive", "run", "web-bad", "--", "echo should-not-run")
    assert done.returncode == 1
    assert "refusing to connect to web-bad" in done.stderr and "never trusts a host key" in done.stderr
    assert "should-not-run" not in done.stdout
    event = bastion.wait_event("ssh.refused", lambda e: e.target == "web-bad")
    assert event.outcome == "deny" and "pinned host_key" in event.detail["reason"]


def test_a_host_certificate_from_the_host_ca_is_trusted(olive: Client) -> None:
    done = olive.ssh("olive", "run", "web-ca", "--", "echo via-ca")
    assert (done.returncode, done.stdout) == (0, "via-ca\n"), done.stderr


def test_the_identity_key_is_the_fallback(olive: Client, sshd: Sshd) -> None:
    done = olive.ssh("olive", "run", "web-key", "--", "cat \"$SSH_USER_AUTH\"")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("publickey ssh-ed25519 ")  # a plain key, no certificate


def test_the_upstream_certificate_is_minted_per_session_and_never_leaves(olive: Client, bastion: Bastion,
                                                                         sshd: Sshd) -> None:
    auth = sshd.directory / "auth-info"
    auth.unlink(missing_ok=True)
    done = olive.ssh("olive", "run", "web-1", "--", f"cp \"$SSH_USER_AUTH\" {shlex.quote(str(auth))}; echo copied")
    assert (done.returncode, done.stdout) == (0, "copied\n"), done.stderr
    method, algorithm, blob_text = auth.read_text().split()[:3]
    assert (method, algorithm) == ("publickey", "ssh-ed25519-cert-v01@openssh.com")
    cert = parse_certificate(base64.b64decode(blob_text))
    assert cert.principals == (sshd.login,)
    assert cert.valid_before - cert.valid_after == 90  # backdated 30 s, valid 60 s
    assert abs(cert.valid_after + 30 - time.time()) < 30
    assert cert.extensions == ("permit-pty",) and cert.critical_options == {}
    assert cert.key_id.startswith("bastion:olive:") and cert.key_id.endswith(":web-1")
    key_blob = _certified_key(base64.b64decode(blob_text))  # the ephemeral public key, as OpenSSH writes it
    asyncssh.import_public_key(f"ssh-ed25519 {key_blob}")  # really a key: the search below can fail
    event = bastion.wait_event("ssh.run", lambda e: "copied" in e.detail.get("command", ""))
    wait_recording(bastion, event.session, "copied")
    places = [bastion.state / "audit.db", bastion.state / "audit.db-wal", bastion.log,
              *(bastion.state / "recordings").rglob("*")]
    for path in places:
        if path.is_file():
            data = path.read_bytes()
            assert blob_text.encode() not in data and key_blob.encode() not in data, path
    assert blob_text not in done.stdout + done.stderr


def _certified_key(cert: bytes) -> str:
    """The base64 of the public key inside an ssh-ed25519 certificate blob."""
    offset, fields = 0, []
    for _ in range(3):  # algorithm, nonce, public key
        length = struct.unpack_from(">I", cert, offset)[0]
        fields.append(cert[offset + 4:offset + 4 + length])
        offset += 4 + length
    wire = b"".join(struct.pack(">I", len(f)) + f for f in (b"ssh-ed25519", fields[2]))
    return base64.b64encode(wire).decode()


def test_policy_deny_applies(bastion: Bastion, tmp_path: Path, oidc_issuer: OidcIssuer) -> None:
    mallory = Client(tmp_path / "mallory", bastion)
    mallory.certify(oidc_issuer, "mallory", ["guest"])
    done = mallory.ssh("mallory", "run", "web-1", "--", "echo no")
    assert done.returncode == 3 and "denied" in done.stderr
    assert "no" not in done.stdout
    event = bastion.wait_event("target.connect", lambda e: e.user == "mallory")
    assert (event.target, event.outcome) == ("web-1", "deny")


def test_approval_and_grant_apply(olive: Client, bastion: Bastion, tmp_path: Path, oidc_issuer: OidcIssuer) -> None:
    held = olive.ssh("olive", "run", "web-prod", "--", "echo granted")
    assert held.returncode == 4 and "request web-prod" in held.stderr
    filed = olive.ssh("olive", shlex.join(["request", "web-prod", "--reason", "deploy", "--json"]))
    assert filed.returncode == 0, filed.stderr
    sam = Client(tmp_path / "sam", bastion)
    sam.certify(oidc_issuer, "sam", ["sre"])
    assert sam.ssh("sam", "approve", json.loads(filed.stdout)["id"]).returncode == 0
    done = olive.ssh("olive", "run", "web-prod", "--", "echo granted")
    assert (done.returncode, done.stdout) == (0, "granted\n"), done.stderr
    event = bastion.wait_event("ssh.run", lambda e: e.target == "web-prod")
    assert event.detail["grant"]


def test_run_usage_and_non_ssh_targets(olive: Client) -> None:
    assert olive.ssh("olive", "run", "web-1").returncode == 2
    assert olive.ssh("olive", "run", "--", "true").returncode == 2
