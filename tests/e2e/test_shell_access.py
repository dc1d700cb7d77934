"""Certificate in hand: OpenSSH reaches the controlled shell, which shows only what policy grants."""

from __future__ import annotations

import json
import re
import time

import pexpect
import pytest
from oidc_issuer import OidcIssuer
from peers import Bastion, Client, bastion_cli, strip_ansi

EXPECTED_FOR_DEV = [
    {"name": "pg-demo", "kind": "postgres", "labels": {"env": "demo"}, "access": "allow", "description": "demo db"},
    {"name": "pg-prod", "kind": "postgres", "labels": {"env": "prod"}, "access": "approval", "description": ""},
    {"name": "web-1", "kind": "ssh", "labels": {"env": "prod"}, "access": "approval", "description": ""},
]


def test_targets_json_is_exactly_the_policy_filtered_list(client: Client, oidc_issuer: OidcIssuer) -> None:
    client.certify(oidc_issuer, "alice", ["dev"])
    result = client.ssh("alice", "targets", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == EXPECTED_FOR_DEV
    assert "not accepted" not in result.stderr  # a good login shows no refusal hint


def test_deny_policy_hides_a_target_from_sre(client: Client, oidc_issuer: OidcIssuer) -> None:
    client.certify(oidc_issuer, "bob", ["sre"])
    names = [t["name"] for t in json.loads(client.ssh("bob", "targets", "--json").stdout)]
    assert names == ["pg-demo", "pg-prod", "web-1"]  # vault is denied by nobody-vault


def test_whoami_json_reports_token_groups_and_expiry(client: Client, oidc_issuer: OidcIssuer) -> None:
    body = client.certify(oidc_issuer, "carol", ["dev", "sre"], ttl=1800)
    data = json.loads(client.ssh("carol", "whoami", "--json").stdout)
    assert data["user"] == "carol" and data["groups"] == ["dev", "sre"]
    assert data["certificate"]["valid_before"].replace("Z", "+00:00") == body["valid_before"]
    assert 1700 < data["certificate"]["seconds_left"] <= 1800


@pytest.mark.parametrize(("command", "code", "message"), [
    (("connect", "pg-demo"), 1, "target pg-demo has no user configured; ask an administrator"),
    (("connect", "pg-prod"), 4, "requires an approved request"),
    (("connect", "vault"), 3, "denied: no policy gives alice access to vault"),
    (("connect", "nope"), 2, "no target named 'nope'"),
    (("frobnicate",), 2, "unknown command 'frobnicate'"),
    (("targets", "--yaml"), 2, "unknown option --yaml"),
])
def test_exec_exit_codes(client: Client, oidc_issuer: OidcIssuer, command: tuple[str, ...],
                         code: int, message: str) -> None:
    client.certify(oidc_issuer, "alice", ["dev"])
    result = client.ssh("alice", *command)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert message in result.stderr


def test_shell_without_a_terminal_explains_itself(client: Client, oidc_issuer: OidcIssuer) -> None:
    client.certify(oidc_issuer, "alice", ["dev"])
    result = client.ssh("alice", extra=("-T",))
    assert result.returncode == 2 and "the shell needs a terminal" in result.stderr


def test_shell_commands_are_audited(client: Client, bastion: Bastion, oidc_issuer: OidcIssuer) -> None:
    client.certify(oidc_issuer, "alice", ["dev"])
    client.ssh("alice", "connect", "vault")
    event = bastion.wait_event("target.connect", lambda e: e.target == "vault")
    assert (event.user, event.outcome, event.rule) == ("alice", "deny", "default-deny")
    command = bastion.wait_event("shell.command", lambda e: e.detail["command"] == "connect vault")
    assert command.outcome == "3"


class Terminal:
    """A real PTY running OpenSSH, read as plain text."""

    CPR_QUERY = "\x1b[6n"

    def __init__(self, client: Client, user: str, *, answer_cpr: bool = False) -> None:
        no_cpr = () if answer_cpr else ("-o", "SetEnv=PROMPT_TOOLKIT_NO_CPR=1")
        args = client.ssh_args(user, "-tt", *no_cpr)
        self.child = pexpect.spawn(args[0], args[1:], env=client.env(), dimensions=(30, 110),
                                   encoding="utf-8", timeout=15)
        self.answer_cpr = answer_cpr
        self.seen = ""

    def wait_for(self, text: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while text not in strip_ansi(self.seen):
            if time.monotonic() > deadline:
                screen = strip_ansi(self.seen)[-800:]
                raise AssertionError(f"{text!r} not on screen; got {screen!r}")
            try:
                chunk = self.child.read_nonblocking(4096, timeout=0.2)
            except pexpect.TIMEOUT:
                continue
            if self.answer_cpr and self.CPR_QUERY in chunk:
                self.child.send("\x1b[10;1R")  # as a terminal would: the cursor is on row 10
            self.seen += chunk
        return strip_ansi(self.seen)

    def type(self, keys: str) -> None:
        self.child.send(keys)


def test_interactive_shell_prompt_whoami_completion_and_exit(client: Client, oidc_issuer: OidcIssuer) -> None:
    client.certify(oidc_issuer, "carol", ["dev", "sre"])
    term = Terminal(client, "carol")
    term.wait_for("carol@localhost>")
    term.type("who\t")  # Tab completes the command
    term.wait_for("whoami")
    term.type("\r")
    screen = term.wait_for("groups:      dev, sre")
    assert "user:        carol" in screen
    term.type("connect we\t")
    term.wait_for("connect web-1")
    term.type("\r")
    term.wait_for("web-1 is not available")  # the test config names no login or host key for it
    term.child.setwinsize(40, 140)
    term.type("targets\r")
    term.wait_for("web-1")
    term.type("exit\r")
    term.child.expect(pexpect.EOF)
    term.child.close()
    assert term.child.exitstatus == 0


def test_toolbar_shows_identity_and_certificate_time_left(client: Client, oidc_issuer: OidcIssuer) -> None:
    client.certify(oidc_issuer, "carol", ["dev", "sre"], ttl=3 * 3600)
    term = Terminal(client, "carol", answer_cpr=True)
    screen = term.wait_for("Ctrl-D leaves")
    assert re.search(r"carol \[dev,sre\]  certificate: (2h59m|3h00m) left", screen)
    term.type("exit\r")
    term.child.expect(pexpect.EOF)


def test_history_is_kept_per_user(client: Client, bastion: Bastion, oidc_issuer: OidcIssuer) -> None:
    client.certify(oidc_issuer, "alice", ["dev"])
    term = Terminal(client, "alice")
    term.wait_for("alice@localhost>")
    term.type("targets\r")
    term.wait_for("pg-demo")
    term.type("exit\r")
    term.child.expect(pexpect.EOF)
    history = (bastion.state / "history" / "alice.shell").read_text()
    assert "+targets" in history


def test_audit_cli_shows_the_login_and_the_chain_verifies(client: Client, bastion: Bastion,
                                                           oidc_issuer: OidcIssuer) -> None:
    body = client.certify(oidc_issuer, "alice", ["dev"])
    assert client.ssh("alice", "whoami").returncode == 0
    listing = bastion_cli("audit", "-c", str(bastion.config), "--user", "alice", "--json")
    events = [json.loads(line) for line in listing.stdout.splitlines()]
    kinds = [e["kind"] for e in events]
    assert "certificate.issued" in kinds and "connection.authenticated" in kinds
    serial = next(e for e in events if e["kind"] == "certificate.issued")["detail"]["serial"]
    assert body["principal"] == "alice" and isinstance(serial, int)
    text = bastion_cli("audit", "-c", str(bastion.config), "--since", "1h").stdout
    assert "certificate.issued" in text and "alice" in text
    verify = bastion_cli("audit", "-c", str(bastion.config), "verify")
    assert verify.returncode == 0 and "audit chain OK" in verify.stdout


def test_bad_input_leaves_the_daemon_serving(client: Client, bastion: Bastion, oidc_issuer: OidcIssuer) -> None:
    import socket

    import requests

    for payload in (b"GET / HTTP/1.0\r\n\r\n", b"SSH-2.0-x\r\n" + b"\xff" * 70000, b"\x00" * 10):
        with socket.create_connection(("127.0.0.1", bastion.ssh_port), timeout=5) as s:
            s.sendall(payload)
            try:
                s.recv(1024)
            except OSError:
                pass
    for body in ("not json", "[1,2]", json.dumps({"public_key": 1, "id_token": []}), "x" * 200_000):
        r = requests.post(f"{bastion.url}/v1/certificates", data=body, timeout=10,
                          headers={"Content-Type": "application/json"})
        assert 400 <= r.status_code < 500 and "error" in r.json() if r.status_code != 413 else True
    assert bastion.alive()
    client.certify(oidc_issuer, "alice", ["dev"])
    assert client.ssh("alice", "whoami").returncode == 0
    assert requests.get(f"{bastion.url}/healthz", timeout=5).json() == {"status": "ok"}


def test_metrics_count_open_sessions(client: Client, bastion: Bastion, oidc_issuer: OidcIssuer) -> None:
    import requests

    client.certify(oidc_issuer, "alice", ["dev"])
    term = Terminal(client, "alice")
    term.wait_for("alice@localhost>")
    text = requests.get(f"{bastion.url}/metrics", timeout=5).text
    assert "bastion_sessions 1" in text
    term.type("exit\r")
    term.child.expect(pexpect.EOF)
    deadline = time.monotonic() + 5
    while "bastion_sessions 0" not in requests.get(f"{bastion.url}/metrics", timeout=5).text:
        assert time.monotonic() < deadline, "the session was not released"
        time.sleep(0.05)


def test_serve_runs_on_uvloop_when_asked(tmp_path, oidc_issuer: OidcIssuer) -> None:  # type: ignore[no-untyped-def]
    from peers import new_bastion

    fast = new_bastion(tmp_path / "fast", oidc_issuer.issuer)
    try:
        assert fast.stop() == 0
        fast.start("--event-loop", "uvloop")
        client = Client(tmp_path / "home", fast)
        client.certify(oidc_issuer, "alice", ["dev"])
        done = client.ssh("alice", "whoami", "--json")
        assert done.returncode == 0 and json.loads(done.stdout)["user"] == "alice"
        assert "(event loop: uvloop)" in fast.log.read_text()
    finally:
        fast.stop()
