"""Just-in-time access end to end: requests, approvals, grants that end sessions, held statements, webhooks.

Two people with real OpenSSH clients (exec, and a PTY for the approver's shell)
against a running bastion in front of a real PostgreSQL, plus a webhook
receiver on loopback, one of whose URLs fails before it succeeds.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pexpect
import pytest
from oidc_issuer import OidcIssuer
from peers import Bastion, Client, bastion_cli, new_bastion, strip_ansi

pytest_plugins = ["pg_fixtures"]

SCHEMA = """
CREATE TABLE accounts (id int PRIMARY KEY, owner text, frozen bool NOT NULL DEFAULT false);
INSERT INTO accounts VALUES (1, 'ada', false), (2, 'bob', false), (3, 'cy', false);
GRANT ALL ON accounts TO bastion_jit;
"""


class Receiver:
    """A webhook receiver: /ok keeps every payload, /flaky answers 500 twice, then keeps them too."""

    def __init__(self) -> None:
        self.payloads: dict[str, list[dict[str, Any]]] = {"/ok": [], "/flaky": []}
        self.attempts = {"/ok": 0, "/flaky": 0}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.attempts[self.path] = receiver.attempts.get(self.path, 0) + 1
                if self.path == "/flaky" and receiver.attempts["/flaky"] <= 2:
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.payloads.setdefault(self.path, []).append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, path: str, text: str, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for payload in self.payloads.get(path, []):
                if text in json.dumps(payload):
                    return payload
            time.sleep(0.05)
        raise AssertionError(f"no payload with {text!r} at {path}: {self.payloads}")


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture(scope="module")
def jit(pg_server, tmp_path_factory: pytest.TempPathFactory, oidc_issuer: OidcIssuer,  # type: ignore[no-untyped-def]
        receiver: Receiver) -> Iterator[Bastion]:
    password = "S3cret-" + os.urandom(6).hex()
    pg_server.psql("DROP DATABASE IF EXISTS jit")
    pg_server.psql("CREATE DATABASE jit")
    pg_server.psql(f"DROP ROLE IF EXISTS bastion_jit; CREATE ROLE bastion_jit LOGIN PASSWORD '{password}'")
    pg_server.psql(SCHEMA, db="jit")
    directory = tmp_path_factory.mktemp("jit")
    secret = directory / "pg.password"
    secret.write_text(password)
    secret.chmod(0o600)
    target = f'{{kind: postgres, address: "127.0.0.1:{pg_server.port}", database: jit, user: bastion_jit, ' \
             f"password: {{file: {secret}}}}}"
    body = f"""
targets:
  pg-prod: {target}
  pg-two: {target}
  pg-rev: {target}
  pg-bg: {target}
policies:
  - name: prod
    subjects: {{groups: [dev]}}
    targets: {{names: [pg-prod]}}
    access: approval
    approval: {{approvers: {{groups: [dba]}}, max_duration: 1h}}
  - name: two-keys
    subjects: {{groups: [dev]}}
    targets: {{names: [pg-two]}}
    access: approval
    approval: {{approvers: {{groups: [dba]}}, min_approvals: 2}}
  - name: emergency
    subjects: {{groups: [oncall]}}
    targets: {{names: [pg-bg]}}
    access: approval
    approval: {{approvers: {{groups: [dba]}}, break_glass: true, max_duration: 15m}}
  - name: reviewed-writes
    subjects: {{groups: [dev]}}
    targets: {{names: [pg-rev]}}
    access: allow
    port_forwarding: true
    approval: {{approvers: {{groups: [dba]}}}}
    guardrails:
      - {{effect: review, statements: [update, delete]}}
approvals:
  webhooks: ["http://127.0.0.1:{receiver.port}/ok", "http://127.0.0.1:{receiver.port}/flaky"]
  link: "https://bastion.example/approvals/{{id}}"
  backoff: 0.1
"""
    b = new_bastion(directory / "b", oidc_issuer.issuer, body=body)
    yield b
    b.stop()


def person(jit: Bastion, tmp_path: Path, issuer: OidcIssuer, name: str, groups: list[str]) -> Client:
    client = Client(tmp_path / name, jit)
    client.certify(issuer, name, groups)
    return client


@pytest.fixture
def alice(jit: Bastion, tmp_path: Path, oidc_issuer: OidcIssuer) -> Client:
    return person(jit, tmp_path, oidc_issuer, "alice", ["dev"])


@pytest.fixture
def bob(jit: Bastion, tmp_path: Path, oidc_issuer: OidcIssuer) -> Client:
    return person(jit, tmp_path, oidc_issuer, "bob", ["dba"])


@pytest.fixture
def dana(jit: Bastion, tmp_path: Path, oidc_issuer: OidcIssuer) -> Client:
    return person(jit, tmp_path, oidc_issuer, "dana", ["dba"])


def request(client: Client, user: str, *args: str) -> dict[str, Any]:
    # ssh joins its arguments with spaces: quote them the way the remote command line reads them.
    done = client.ssh(user, shlex.join(["request", *args, "--json"]))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def awaiting(approver: Client, user: str, match: Callable[[dict[str, Any]], bool]) -> str:
    """The id of the first request waiting for ``approver`` that ``match`` picks, once it appears."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        listing = json.loads(approver.ssh(user, "requests", "--json").stdout)
        found = [r for r in listing["to_decide"] if match(r)]
        if found:
            return str(found[0]["id"])
        time.sleep(0.2)
    raise AssertionError("the request never appeared for the approver")


def shell(client: Client, user: str) -> pexpect.spawn:
    args = client.ssh_args(user, "-tt", "-o", "SetEnv=PROMPT_TOOLKIT_NO_CPR=1")
    term = pexpect.spawn(args[0], args[1:], env=client.env(), encoding="utf-8", timeout=15, dimensions=(30, 160))
    term.expect("localhost")
    return term


def test_request_notify_approve_connect_and_the_grant_ends_the_session(jit: Bastion, alice: Client, bob: Client,
                                                                      receiver: Receiver) -> None:
    approver = shell(bob, "bob")
    refused = alice.ssh("alice", "sql", "pg-prod", "select 1")  # no grant, and no reason to file a request
    assert refused.returncode == 3 and "requires a reason" in refused.stderr

    started = time.monotonic()
    filed = request(alice, "alice", "pg-prod", "--reason", "ticket 42: fix the stuck export", "--for", "8s")
    assert time.monotonic() - started < 5  # the webhooks, one of them failing, never hold the requester up
    rid = filed["id"]
    assert filed["state"] == "pending"
    approver.expect(f"request {rid}: alice asks", timeout=10)  # the approver's shell shows it

    payload = receiver.wait_for("/ok", rid)
    assert rid in payload["text"] and "https://bastion.example/approvals/" + rid in json.dumps(payload)
    receiver.wait_for("/flaky", rid)  # 500, 500, then delivered
    assert receiver.attempts["/flaky"] >= 3

    approver.sendline(f"approve {rid} --comment 'go ahead'")
    approver.expect("approved")
    approver.sendline("exit")

    ok = alice.ssh("alice", "sql", "pg-prod", "--format", "json", "select count(*) as n from accounts")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)[0]["rows"][0]["n"] in (3, "3")
    assert jit.wait_event("target.connect", lambda e: e.user == "alice" and e.outcome == "approval")

    # A console under the grant is cut when the grant runs out, and the recording says why.
    args = alice.ssh_args("alice", "-tt", "-o", "SetEnv=PROMPT_TOOLKIT_NO_CPR=1")
    console = pexpect.spawn(args[0], args[1:], env=alice.env(), encoding="utf-8", timeout=20, dimensions=(30, 160))
    console.expect("localhost")
    console.sendline("connect pg-prod")
    console.expect("pg-prod")
    console.expect(r"has expired", timeout=20)
    console.expect(pexpect.EOF, timeout=10)
    console.close()
    assert console.exitstatus == 255
    grant = jit.wait_event("grant.expired", lambda e: e.detail.get("request") == rid)
    ended = jit.wait_event("recording.closed", lambda e: e.user == "alice")
    cast = next((jit.state / "recordings").rglob(f"{ended.session}.cast")).read_text()
    assert f"grant {grant.detail['grant']} for pg-prod has expired" in cast


def test_self_approval_is_refused(jit: Bastion, tmp_path: Path, oidc_issuer: OidcIssuer) -> None:
    carol = person(jit, tmp_path, oidc_issuer, "carol", ["dev", "dba"])
    rid = request(carol, "carol", "pg-prod", "--reason", "my own")["id"]
    done = carol.ssh("carol", "approve", rid)
    assert done.returncode == 3 and "no self-approval" in done.stderr
    assert carol.ssh("carol", "sql", "pg-prod", "select 1").returncode == 4


def test_two_approvals_are_needed_when_the_policy_says_two(alice: Client, bob: Client, dana: Client) -> None:
    rid = request(alice, "alice", "pg-two", "--reason", "migration")["id"]
    assert bob.ssh("bob", "approve", rid).returncode == 0
    assert alice.ssh("alice", "sql", "pg-two", "select 1").returncode == 4  # one of two is not enough
    assert bob.ssh("bob", "approve", rid).returncode == 3  # nor is the same person twice
    assert dana.ssh("dana", "approve", rid).returncode == 0
    assert alice.ssh("alice", "sql", "pg-two", "select 1").returncode == 0


def test_an_agent_asks_for_access_and_waits_inside_one_sql_call(jit: Bastion, tmp_path: Path,
                                                                oidc_issuer: OidcIssuer, bob: Client,
                                                                dana: Client) -> None:
    agent = person(jit, tmp_path, oidc_issuer, "agent-7", ["dev"])  # no grant from the other tests
    waiting = subprocess.Popen([*agent.ssh_args("agent-7"), "sql", "pg-two", "--format", "json", "--reason",
                                shlex.quote("agent: nightly reconciliation"), "--wait", "60s",
                                shlex.quote("select count(*) as n from accounts")],
                               env=agent.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    rid = awaiting(bob, "bob", lambda r: r["reason"] == "agent: nightly reconciliation")
    assert bob.ssh("bob", "approve", rid).returncode == 0
    assert waiting.poll() is None  # pg-two needs two approvers: still waiting
    assert dana.ssh("dana", "approve", rid).returncode == 0
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 0, err
    assert json.loads(out)[0]["rows"][0]["n"] in (3, "3")


def test_a_denial_reaches_the_waiting_requester_with_its_reason(alice: Client, bob: Client) -> None:
    waiting = subprocess.Popen([*alice.ssh_args("alice"), "sql", "pg-rev", "--wait", "30s",
                                shlex.quote("UPDATE accounts SET frozen = true WHERE id = 3")],
                               env=alice.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    rid = awaiting(bob, "bob", lambda r: (r["statement"] or "").endswith("WHERE id = 3"))
    assert bob.ssh("bob", shlex.join(["deny", rid, "--reason", "freeze needs a ticket"])).returncode == 0
    out, err = waiting.communicate(timeout=20)
    assert waiting.returncode == 3, (out, err)
    assert "freeze needs a ticket" in err


def test_a_held_update_runs_byte_identical_exactly_once(pg_server, alice: Client, bob: Client) -> None:  # type: ignore[no-untyped-def]
    update = "UPDATE accounts SET frozen = true WHERE id = 1"
    held = alice.ssh("alice", "sql", "pg-rev", update)
    assert held.returncode == 4, held.stderr
    rid = re.search(r"request (r-[\w-]+)", held.stderr).group(1)  # type: ignore[union-attr]
    assert "f" in pg_server.psql("SELECT frozen FROM accounts WHERE id = 1", db="jit")  # not run yet

    assert bob.ssh("bob", "approve", rid).returncode == 0
    other = alice.ssh("alice", "sql", "pg-rev", update.replace("id = 1", "id = 2"))
    assert other.returncode == 4 and rid not in other.stderr  # a different statement is not covered
    ran = alice.ssh("alice", "sql", "pg-rev", update)
    assert ran.returncode == 0, ran.stderr
    assert "t" in pg_server.psql("SELECT frozen FROM accounts WHERE id = 1", db="jit")
    again = alice.ssh("alice", "sql", "pg-rev", update)
    assert again.returncode == 4 and rid not in again.stderr  # once: the next run is a new request


def test_a_native_client_gets_the_request_id_and_its_retry_runs(jit: Bastion, pg_server, alice: Client,  # type: ignore[no-untyped-def]
                                                               bob: Client) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    forward = subprocess.Popen([*alice.ssh_args("alice", "-N", "-L", f"{port}:pg-rev:5432")], env=alice.env())
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        binary = pg_server.bindir / "psql"
        psql = [str(binary) if binary.exists() else "psql", "-X", "-h", "127.0.0.1", "-p", str(port),
                "-U", "alice", "-d", "jit", "-v", "ON_ERROR_STOP=1", "-c", "DELETE FROM accounts WHERE id = 2"]
        env = {**os.environ, "PGPASSWORD": "anything", "PGSSLMODE": "disable"}
        first = subprocess.run(psql, capture_output=True, text=True, env=env, timeout=20)
        assert first.returncode != 0 and "held for review" in first.stderr
        rid = re.search(r"request (r-[\w-]+)", first.stderr).group(1)  # type: ignore[union-attr]
        assert bob.ssh("bob", "approve", rid).returncode == 0
        retry = subprocess.run(psql, capture_output=True, text=True, env=env, timeout=20)
        assert retry.returncode == 0, retry.stderr
        assert "DELETE 1" in retry.stdout
    finally:
        forward.terminate()
        forward.wait(10)


def test_restart_loses_no_request_or_grant(jit: Bastion, alice: Client, bob: Client,
                                          oidc_issuer: OidcIssuer) -> None:
    pending = request(alice, "alice", "pg-two", "--reason", "pending over a restart")["id"]
    granted = request(alice, "alice", "pg-prod", "--reason", "granted over a restart", "--for", "10m")["id"]
    assert bob.ssh("bob", "approve", granted).returncode == 0
    assert jit.stop() == 0
    jit.start()
    alice.certify(oidc_issuer, "alice", ["dev"])  # a new port: known_hosts names it
    bob.certify(oidc_issuer, "bob", ["dba"])
    listed = alice.ssh("alice", "requests", "--json")
    assert listed.returncode == 0, listed.stderr
    listing = json.loads(listed.stdout)
    states = {r["id"]: r["state"] for r in listing["mine"]}
    assert (states[pending], states[granted]) == ("pending", "approved")
    assert pending in strip_ansi(bob.ssh("bob", "requests").stdout)
    assert alice.ssh("alice", "sql", "pg-prod", "select 1").returncode == 0  # the grant outlived the restart
    import requests

    metrics = dict(line.split(" ") for line in requests.get(f"{jit.url}/metrics", timeout=5).text.splitlines()
                   if line.startswith("bastion_"))
    assert int(metrics["bastion_requests_pending"]) >= 1 and int(metrics["bastion_grants_active"]) >= 1


def test_break_glass_grants_at_once_loudly_and_is_listed_for_review(jit: Bastion, tmp_path: Path,
                                                                    oidc_issuer: OidcIssuer, alice: Client) -> None:
    olga = person(jit, tmp_path, oidc_issuer, "olga", ["oncall"])
    refused = alice.ssh("alice", shlex.join(["request", "pg-prod", "--break-glass", "--reason", "x"]))
    assert refused.returncode == 3  # prod's policy does not allow it
    done = olga.ssh("olga", shlex.join(["request", "pg-bg", "--break-glass", "--reason", "db on fire", "--json"]))
    assert done.returncode == 0, done.stderr
    assert "BREAK-GLASS" in done.stderr and json.loads(done.stdout)["grant"]
    assert olga.ssh("olga", "sql", "pg-bg", "select 1").returncode == 0
    used = jit.wait_event("breakglass.used", lambda e: e.user == "olga")
    assert "BREAK-GLASS" in used.detail["flag"] and used.detail["reason"] == "db on fire"
    listed = bastion_cli("break-glass", "-c", str(jit.config))
    assert listed.returncode == 0 and "olga" in listed.stdout and "db on fire" in listed.stdout


def test_connect_offers_a_request_waits_with_a_countdown_and_connects_once_approved(
        jit: Bastion, tmp_path: Path, oidc_issuer: OidcIssuer, bob: Client) -> None:
    pia = person(jit, tmp_path, oidc_issuer, "pia", ["dev"])
    term = shell(pia, "pia")
    term.sendline("connect pg-prod")
    term.expect("Reason for a request for pg-prod")
    term.sendline("ticket 77: read the audit table")
    term.expect("For how long")
    term.sendline("20m")
    term.expect(r"request (r-[\w-]+) filed")
    rid = term.match.group(1)
    term.expect("waiting for approval")  # the countdown line
    assert bob.ssh("bob", "approve", rid).returncode == 0
    term.expect("connecting to pg-prod", timeout=10)
    term.expect("pg-prod", timeout=10)  # the console's prompt names the target
    term.sendline("select owner || '-seen' as o from accounts where id = 3;")
    term.expect("cy-seen")
    term.sendline("\\q")
    term.expect("back in the bastion shell")
    term.sendline("exit")
    term.expect(pexpect.EOF)
    grant = jit.wait_event("grant.created", lambda e: e.detail.get("request") == rid)
    assert grant.user == "pia" and grant.detail["ends"] - grant.detail["starts"] == pytest.approx(1200, abs=1)


def test_revoking_a_grant_ends_the_session_under_it_within_seconds(jit: Bastion, tmp_path: Path,
                                                                   oidc_issuer: OidcIssuer, bob: Client) -> None:
    rex = person(jit, tmp_path, oidc_issuer, "rex", ["dev"])
    rid = request(rex, "rex", "pg-prod", "--reason", "look at one row")["id"]
    approved = bob.ssh("bob", shlex.join(["approve", rid, "--json"]))
    assert approved.returncode == 0, approved.stderr
    grant = json.loads(approved.stdout)["grant"]
    term = shell(rex, "rex")
    term.sendline("connect pg-prod")
    term.expect("pg-prod")
    started = time.monotonic()
    assert bob.ssh("bob", shlex.join(["revoke", grant, "--reason", "done for today"])).returncode == 0
    term.expect(f"grant {grant} was revoked by bob: done for today", timeout=10)
    term.expect(pexpect.EOF, timeout=10)
    assert time.monotonic() - started < 5
    cut = jit.wait_event("session.cut", lambda e: e.user == "rex")  # the forced end is an audit event
    assert f"grant {grant} was revoked by bob" in cut.detail["reason"]
    after = rex.ssh("rex", "sql", "pg-prod", "select 1")  # no grant any more: it would need a new request
    assert after.returncode == 3 and "requires a reason" in after.stderr
