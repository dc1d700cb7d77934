"""The host admin's access commands on a real audit store: requests, approve, deny, revoke, revoke-cert, break-glass."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.approvals import Approvals
from bastion.audit import AuditStore, Issuance
from bastion.cli import main
from bastion.cli_access import acting_as
from policies.approvals import Request, RequestKind, State
from policies.model import ApprovalRule, Approvers, Identity

RULE = ApprovalRule(approvers=Approvers(users=("lead",), groups=("sre",)), max_duration=3600.0)
TWO = dataclasses.replace(RULE, min_approvals=2)
GLASS = dataclasses.replace(RULE, break_glass=True)
UPDATE = b"UPDATE accounts SET balance = 0 WHERE id = 7 AND note = '" + b"x" * 300 + b"'"
CONFIG = """\
listen: {ssh: "127.0.0.1:0", http: "127.0.0.1:0"}
state_dir: state
identity:
  oidc: {issuer: "https://idp.example.com", client_id: bastion}
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "bastion.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def store(config: Path) -> Iterator[AuditStore]:
    s = AuditStore(config.parent / "state" / "audit.db")
    yield s
    s.close()


@pytest.fixture
def approvals(store: AuditStore) -> Approvals:
    return Approvals(store)


_serials = iter(range(1000, 10**6))


def issue(store: AuditStore, user: str, groups: tuple[str, ...], *, issued_at: float | None = None,
          lifetime: float = 3600) -> Issuance:
    """An issuance record as the CA writes one at login."""
    now = time.time() if issued_at is None else issued_at
    serial = next(_serials)
    record = Issuance(serial=serial, key_id=f"{user}-{serial}", username=user, subject=f"sub-{user}",
                      issuer="https://idp.example.com", email=None, groups=groups, valid_after=int(now) - 60,
                      valid_before=int(now + lifetime), client_address="127.0.0.1", cert_sha256=f"sha-{serial}",
                      key_fingerprint=f"SHA256:{user}", issued_at=now)
    store.record_issuance(record)
    return record


def file(approvals: Approvals, rule: ApprovalRule = RULE, **kw: object) -> Request:
    fields: dict[str, object] = {"requester": "alice", "target": "pg-prod", "kind": RequestKind.ACCESS,
                                 "reason": "INC-42", "policy": "dba-prod", "now": time.time()}
    fields.update(kw)
    return approvals.file_request(rule, **fields)  # type: ignore[arg-type]


def approvals_identity(store: AuditStore, user: str) -> Identity:
    """The approver as the admin CLI sees them: groups from their latest login."""
    return acting_as(store, user)[0]


def run(config: Path, *args: str) -> int:
    return main([*args[:1], "-c", str(config), *args[1:]])


def test_requests_lists_pending_with_votes_and_a_truncated_statement(
    config: Path, store: AuditStore, approvals: Approvals, capsys: pytest.CaptureFixture[str],
) -> None:
    issue(store, "carol", ("sre",))
    held = file(approvals, TWO, kind=RequestKind.STATEMENT, statement=UPDATE)
    approvals.approve(held.id, approvals_identity(store, "carol"), time.time(), "looks right")
    denied = file(approvals, requester="bob", target="web-1")
    approvals.deny(denied.id, approvals_identity(store, "carol"), "use staging", time.time())

    assert run(config, "requests") == 0
    out = capsys.readouterr().out
    assert held.id in out and denied.id not in out
    line = next(x for x in out.splitlines() if x.startswith(held.id))
    assert line.split()[1:4] == ["statement", "pending", "alice"] and "1/2" in line and "INC-42" in line
    statement = next(x for x in out.splitlines() if "statement:" in x)
    assert "UPDATE accounts SET balance = 0" in statement and statement.endswith("…")
    assert len(statement) < 140
    assert "approved by carol" in out and "looks right" in out

    assert run(config, "requests", "--all", "--user", "bob") == 0
    out = capsys.readouterr().out
    assert denied.id in out and held.id not in out
    assert "denied by carol: use staging" in out


def test_requests_json_is_one_object_per_line(
    config: Path, approvals: Approvals, capsys: pytest.CaptureFixture[str],
) -> None:
    held = file(approvals, kind=RequestKind.STATEMENT, statement=UPDATE)
    assert run(config, "requests", "--json") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["id"], r["kind"], r["state"], r["statement"], r["needed"]) for r in rows] == [
        (held.id, "statement", "pending", UPDATE.decode(), 1)]


def test_requests_escapes_control_characters(
    config: Path, approvals: Approvals, capsys: pytest.CaptureFixture[str],
) -> None:
    file(approvals, reason="INC-1 \x1b]0;pwned\x07 \x1b[2J")
    assert run(config, "requests") == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b]0;pwned\\x07" in out


def test_approve_as_an_approver_creates_the_grant(
    config: Path, store: AuditStore, approvals: Approvals, capsys: pytest.CaptureFixture[str],
) -> None:
    issue(store, "carol", ("sre",))
    request = file(approvals)
    assert run(config, "approve", request.id, "--as", "carol", "--comment", "checked INC-42") == 0
    captured = capsys.readouterr()
    assert f"{request.id}: approved by carol" in captured.out
    grant = approvals.grant_of(request.id)
    assert grant is not None and f"grant {grant.id}: alice may reach pg-prod" in captured.out
    assert "acting as carol, groups sre" in captured.err
    event = store.events(kinds=("request.approved",))[-1]
    assert (event.user, event.detail["comment"], event.outcome) == ("carol", "checked INC-42", "approved")


def test_approver_groups_come_from_their_latest_login(
    config: Path, store: AuditStore, approvals: Approvals, capsys: pytest.CaptureFixture[str],
) -> None:
    issue(store, "dave", ("sre",), issued_at=time.time() - 600)
    issue(store, "dave", ("dev",))  # since then the IdP took dave out of sre
    request = file(approvals)
    assert run(config, "approve", request.id, "--as", "dave") == 3
    assert "dave is not an approver for pg-prod" in capsys.readouterr().err
    assert approvals.get(request.id).state is State.PENDING


def test_approver_who_never_logged_in_has_no_groups_but_a_named_user_still_counts(
    config: Path, approvals: Approvals, capsys: pytest.CaptureFixture[str],
) -> None:
    request = file(approvals)
    assert run(config, "approve", request.id, "--as", "erin") == 3
    assert "never logged in" in capsys.readouterr().err
    assert run(config, "approve", request.id, "--as", "lead") == 0  # listed by name in the rule
    assert approvals.get(request.id).state is State.APPROVED


def test_self_approval_is_refused(
    config: Path, store: AuditStore, approvals: Approvals, capsys: pytest.CaptureFixture[str],
) -> None:
    issue(store, "alice", ("sre", "dev"))
    request = file(approvals)
    assert run(config, "approve", request.id, "--as", "alice") == 3
    assert "no self-approval" in capsys.readouterr().err
    assert approvals.get(request.id).state is State.PENDING
    assert store.events(kinds=("request.refused",))[-1].user == "alice"


def test_two_approvals_needed(
    config: Path, store: AuditStore, approvals: Approvals, capsys: pytest.CaptureFixture[str],
) -> None:
    issue(store, "carol", ("sre",))
    issue(store, "dave", ("sre",))
    request = file(approvals, TWO)
    assert run(config, "approve", request.id, "--as", "carol") == 0
    assert "(1 of 2); 1 more needed" in capsys.readouterr().out
    assert approvals.grant_of(request.id) is None
    assert run(config, "approve", request.id, "--as", "carol") == 3
    assert "carol already approved" in capsys.readouterr().err
    assert run(config, "approve", request.id, "--as", "dave") == 0
    assert "approved by carol, dave" in capsys.readouterr().out
    assert approvals.grant_of(request.id) is not None


def test_deny_needs_a_reason(
    config: Path, store: AuditStore, approvals: Approvals, capsys: pytest.CaptureFixture[str],
) -> None:
    issue(store, "carol", ("sre",))
    request = file(approvals)
    assert run(config, "deny", request.id, "--as", "carol", "--reason", "  ") == 3
    assert "a denial needs a reason" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        run(config, "deny", request.id, "--as", "carol")
    assert usage.value.code == 2
    assert run(config, "deny", request.id, "--as", "carol", "--reason", "not during the freeze") == 0
    assert f"{request.id}: denied by carol: not during the freeze" in capsys.readouterr().out
    decided = approvals.get(request.id)
    assert (decided.state, decided.decision_reason) == (State.DENIED, "not during the freeze")


def test_unknown_request_exits_1(config: Path, store: AuditStore, capsys: pytest.CaptureFixture[str]) -> None:
    issue(store, "carol", ("sre",))
    assert run(config, "approve", "r-0000000000", "--as", "carol") == 1
    assert "no request r-0000000000" in capsys.readouterr().err


def test_missing_audit_store_is_a_state_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bastion.yaml"
    config.write_text(CONFIG.replace("state_dir: state", "state_dir: nowhere"))
    assert run(config, "requests") == 2
    assert "no audit store at" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


def test_revoke_a_grant(
    config: Path, store: AuditStore, approvals: Approvals, capsys: pytest.CaptureFixture[str],
) -> None:
    issue(store, "carol", ("sre",))
    request = file(approvals)
    approvals.approve(request.id, approvals_identity(store, "carol"), time.time())
    grant = approvals.grant_of(request.id)
    assert grant is not None
    assert run(config, "revoke", grant.id, "--reason", "task done", "--by", "oncall") == 0
    assert f"grant {grant.id} revoked" in capsys.readouterr().out
    revoked = approvals.grant(grant.id)
    assert (revoked.revoked_by, revoked.revoke_reason) == ("oncall", "task done")
    assert approvals.active_grant("alice", "pg-prod", time.time()) is None
    event = store.events(kinds=("grant.revoked",))[-1]
    assert (event.user, event.detail["holder"], event.detail["reason"]) == ("oncall", "alice", "task done")
    assert run(config, "revoke", grant.id) == 3
    assert "already revoked" in capsys.readouterr().err
    assert run(config, "revoke", "g-0000000000") == 1


def test_revoke_cert_by_serial(config: Path, store: AuditStore, capsys: pytest.CaptureFixture[str]) -> None:
    cert = issue(store, "alice", ("dev",))
    assert run(config, "revoke-cert", str(cert.serial), "--reason", "laptop stolen", "--by", "oncall") == 0
    assert f"serial {cert.serial} ({cert.key_id}) of alice: revoked" in capsys.readouterr().out
    assert store.is_revoked(cert.serial)
    event = store.events(kinds=("certificate.revoked",))[-1]
    assert (event.user, event.detail["serial"], event.detail["holder"], event.detail["reason"],
            event.detail["via"]) == ("oncall", cert.serial, "alice", "laptop stolen", "admin-cli")
    assert run(config, "revoke-cert", str(cert.serial)) == 0  # idempotent, and not audited twice
    assert "already revoked" in capsys.readouterr().out
    assert len(store.events(kinds=("certificate.revoked",))) == 1
    assert run(config, "revoke-cert", "999999999") == 1
    assert "no certificate with serial 999999999" in capsys.readouterr().err


def test_revoke_cert_by_user_takes_every_unexpired_certificate(
    config: Path, store: AuditStore, capsys: pytest.CaptureFixture[str],
) -> None:
    live = [issue(store, "alice", ("dev",)), issue(store, "alice", ("dev",))]
    old = issue(store, "alice", ("dev",), issued_at=time.time() - 7200, lifetime=600)
    other = issue(store, "bob", ("dev",))
    assert run(config, "revoke-cert", "--user", "alice") == 0
    assert {e.detail["serial"] for e in store.events(kinds=("certificate.revoked",))} == {c.serial for c in live}
    assert not store.is_revoked(old.serial) and not store.is_revoked(other.serial)
    assert run(config, "revoke-cert", "--user", "nobody") == 1
    assert "nobody holds no unexpired certificate" in capsys.readouterr().err
    for usage in (["revoke-cert"], ["revoke-cert", str(other.serial), "--user", "bob"]):
        with pytest.raises(SystemExit) as caught:
            run(config, *usage)
        assert caught.value.code == 2


def test_break_glass_is_listed_until_an_approver_reviews_it(
    config: Path, store: AuditStore, approvals: Approvals, capsys: pytest.CaptureFixture[str],
) -> None:
    issue(store, "carol", ("sre",))
    issue(store, "alice", ("dev",))
    request, grant = approvals.break_glass(GLASS, requester="alice", target="pg-prod", reason="outage INC-9",
                                           now=time.time(), policy="dba-prod")
    assert run(config, "break-glass") == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith(request.id))
    assert "alice" in line and grant.id in line and "outage INC-9" in line
    assert run(config, "break-glass", "--json") == 0
    [row] = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert (row["id"], row["break_glass"], row["grant"]["id"]) == (request.id, True, grant.id)

    assert run(config, "break-glass", "--review", request.id, "--as", "alice") == 3  # never the one who used it
    assert run(config, "break-glass", "--review", request.id) == 2
    assert run(config, "break-glass", "--as", "carol") == 2
    capsys.readouterr()
    assert run(config, "break-glass", "--review", request.id, "--as", "carol", "--comment", "justified") == 0
    assert "reviewed by carol" in capsys.readouterr().out
    assert run(config, "break-glass") == 0
    assert "No break-glass use awaits review." in capsys.readouterr().out
    event = store.events(kinds=("breakglass.reviewed",))[-1]
    assert (event.user, event.detail["requester"], event.detail["comment"]) == ("carol", "alice", "justified")


def test_audit_kind_accepts_globs_for_families(
    config: Path, store: AuditStore, approvals: Approvals, capsys: pytest.CaptureFixture[str],
) -> None:
    issue(store, "carol", ("sre",))
    cert = issue(store, "alice", ("dev",))
    request = file(approvals)
    approvals.approve(request.id, approvals_identity(store, "carol"), time.time())
    assert run(config, "revoke-cert", str(cert.serial)) == 0
    capsys.readouterr()

    def kinds(*args: str) -> list[str]:
        assert run(config, "audit", "--json", *args) == 0
        return [json.loads(line)["kind"] for line in capsys.readouterr().out.splitlines()]

    assert kinds("--kind", "request.*") == ["request.filed", "request.approved"]
    assert kinds("--kind", "grant.*,certificate.revoked") == ["grant.created", "certificate.revoked"]
    assert kinds("--kind", "request.filed") == ["request.filed"]
    assert kinds("--kind", "request") == []
