"""File transfer policy: path normalisation, prefixes, directions, extensions, sizes, approvals, and the YAML block."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.config import load_config
from bastion.config_policies import parse_size
from bastion.errors import ConfigError
from policies.engine import decide
from policies.model import (
    Access,
    ApprovalRule,
    Approvers,
    Effect,
    Identity,
    Policy,
    Subjects,
    Target,
    TargetSelector,
    TransferRule,
)
from policies.transfer import (
    Direction,
    PathError,
    TransferSpec,
    allowed,
    browsable,
    check,
    check_browse,
    check_change,
    may_transfer_with,
    normalise,
    spec_problem,
    under,
)

ALICE = Identity("alice", frozenset({"dev"}))
WEB = Target("web-1", "ssh", {"env": "prod"})
RULE = TransferRule(upload=True, download=True, allow_paths=("/tmp", "/var/log/app"), deny_paths=("/tmp/secret",),
                    max_size=1000, blocked_extensions=(".sh", ".tar.gz"))


def access(rule: TransferRule | None, mode: Access = Access.ALLOW) -> object:
    approval = ApprovalRule(Approvers(groups=("sre",))) if mode is Access.APPROVAL or (rule and rule.approval) \
        else None
    policy = Policy("files", Subjects(groups=("dev",)), TargetSelector(names=("web-*",)), mode,
                    approval=approval, transfer=rule)
    return decide([policy], ALICE, WEB, "transfer", 0.0)


# -- normalisation ------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "clean"), [
    ("/tmp/x", "/tmp/x"), ("tmp//x/", "/tmp/x"), ("/tmp/./x", "/tmp/x"), ("/tmp/a/../x", "/tmp/x"),
    ("/../../etc/passwd", "/etc/passwd"), ("/tmp/../../etc", "/etc"), ("", "/"), ("..", "/"),
])
def test_normalise_resolves_dots_and_never_climbs_above_root(raw: str, clean: str) -> None:
    assert normalise(raw) == clean


def test_a_nul_byte_is_not_a_path() -> None:
    with pytest.raises(PathError, match="NUL"):
        normalise("/tmp/x\x00.sh")


SEGMENT = st.sampled_from(["..", ".", "", "tmp", "etc", "secret", "a", "tmpfoo", "x.sh"])
PATHS = st.lists(SEGMENT, max_size=10).map("/".join)


@given(PATHS)
def test_normalised_paths_are_absolute_clean_and_stable(raw: str) -> None:
    path = normalise(raw)
    assert path.startswith("/")
    assert path == "/" or not set(path[1:].split("/")) & {"", ".", ".."}
    assert normalise(path) == path


@given(PATHS, PATHS)
def test_no_dotdot_escapes_an_allowed_prefix(prefix_parts: str, tail: str) -> None:
    """Whatever a client appends, what policy allows lies inside the allowed prefix, whole components only."""
    prefix = normalise(prefix_parts)
    rule = TransferRule(upload=True, allow_paths=(prefix,))
    path = normalise(prefix + "/" + tail)
    if allowed(rule, path):
        assert path == prefix or prefix == "/" or path.startswith(prefix + "/")
    assert not under(prefix.rstrip("/") + "foo", prefix) or prefix == "/"


@given(PATHS)
def test_deny_wins_over_allow(raw: str) -> None:
    rule = TransferRule(upload=True, allow_paths=("/",), deny_paths=("/etc",))
    path = normalise(raw)
    assert allowed(rule, path) is not under(path, "/etc")


def test_prefixes_match_whole_components() -> None:
    assert under("/tmp/x", "/tmp") and under("/tmp", "/tmp")
    assert not under("/tmpfoo", "/tmp") and not under("/tm", "/tmp")


# -- decisions ----------------------------------------------------------------------------

def test_an_allowed_download_carries_its_limits() -> None:
    decision = check(access(RULE), "web-1", Direction.DOWNLOAD, "/var/log/app/app.log", size=10)
    assert decision.effect is Effect.ALLOW and decision.max_size == 1000 and decision.rule == "files"


@pytest.mark.parametrize(("rule", "direction", "path", "size", "fragment"), [
    (TransferRule(download=True), Direction.UPLOAD, "/tmp/x", None, "does not allow uploads to web-1"),
    (TransferRule(upload=True), Direction.DOWNLOAD, "/tmp/x", 1, "does not allow downloads from web-1"),
    (RULE, Direction.UPLOAD, "/etc/passwd", None, "outside the paths policy files allows (/tmp, /var/log/app)"),
    (RULE, Direction.UPLOAD, "/tmp/secret/k", None, "is under /tmp/secret, which policy files denies"),
    (RULE, Direction.UPLOAD, "/tmp/../etc/x", None, "web-1:/etc/x is outside"),
    (RULE, Direction.UPLOAD, "/tmp/run.SH", None, "files ending in .sh may not be moved to web-1"),
    (RULE, Direction.DOWNLOAD, "/tmp/b.tar.gz", 1, "files ending in .tar.gz may not be moved from web-1"),
    (RULE, Direction.DOWNLOAD, "/tmp/big", 1001, "is 1001 bytes, over the 1000-byte limit of policy files"),
])
def test_each_refusal_says_what_and_which_policy(rule: TransferRule, direction: Direction, path: str,
                                                 size: int | None, fragment: str) -> None:
    decision = check(access(rule), "web-1", direction, path, size=size)
    assert decision.effect is Effect.DENY
    assert fragment in decision.reason


def test_no_transfer_block_means_no_transfers() -> None:
    decision = check(access(None), "web-1", Direction.DOWNLOAD, "/tmp/x")
    assert decision.effect is Effect.DENY and "has no transfer block" in decision.reason
    assert not may_transfer_with(access(None))  # type: ignore[arg-type]


def test_a_denied_target_is_denied_with_the_engines_reason() -> None:
    decision = check(access(RULE, Access.DENY), "web-1", Direction.DOWNLOAD, "/tmp/x")
    assert decision.effect is Effect.DENY and "denies alice access to web-1" in decision.reason


def test_approval_comes_from_the_rule_or_from_the_access_mode() -> None:
    by_rule = TransferRule(upload=True, approval=True)
    assert check(access(by_rule), "web-1", Direction.UPLOAD, "/x").effect is Effect.APPROVAL
    by_access = TransferRule(upload=True)
    decision = check(access(by_access, Access.APPROVAL), "web-1", Direction.UPLOAD, "/x")
    assert decision.effect is Effect.APPROVAL and "requires an approved request" in decision.reason


def test_changes_need_uploads_allowed_paths_and_unblocked_new_names() -> None:
    ok = access(RULE)
    assert check_change(ok, "web-1", "mkdir", "/tmp/new").allowed
    renamed = check_change(ok, "web-1", "rename", "/tmp/a.txt", new_name="/tmp/a.sh")
    assert not renamed.allowed and "names ending in .sh are blocked" in renamed.reason
    moved_out = check_change(ok, "web-1", "rename", "/tmp/a", new_name="/etc/a")
    assert not moved_out.allowed and "outside" in moved_out.reason
    read_only = check_change(access(TransferRule(download=True)), "web-1", "remove", "/tmp/a")
    assert not read_only.allowed and "uploads are not allowed" in read_only.reason
    approved = check_change(access(TransferRule(upload=True, approval=True)), "web-1", "remove", "/tmp/a")
    assert not approved.allowed and "only an approved upload may change files" in approved.reason


def test_browsing_shows_the_way_down_to_allowed_paths_and_nothing_beside() -> None:
    assert browsable(RULE, "/") and browsable(RULE, "/var") and browsable(RULE, "/var/log/app/x")
    assert not browsable(RULE, "/etc") and not browsable(RULE, "/var/lib") and not browsable(RULE, "/tmp/secret")
    assert "listing refused" in check_browse(access(RULE), "web-1", "/etc").reason


# -- approvals --------------------------------------------------------------------------------

def test_an_upload_approval_covers_exactly_its_size_and_sha256() -> None:
    approved = TransferSpec(Direction.UPLOAD, "/tmp/r.csv", 10, "ab" * 32)
    assert spec_problem(approved, TransferSpec(Direction.UPLOAD, "/tmp/r.csv")) is None  # at open: not known yet
    assert spec_problem(approved, TransferSpec(Direction.UPLOAD, "/tmp/r.csv", 10, "ab" * 32)) is None
    assert "approval covers exactly 10" in str(spec_problem(approved, TransferSpec(Direction.UPLOAD, "/tmp/r.csv",
                                                                                   11, "ab" * 32)))
    assert "sha256" in str(spec_problem(approved, TransferSpec(Direction.UPLOAD, "/tmp/r.csv", 10, "cd" * 32)))
    assert "not download" in str(spec_problem(approved, TransferSpec(Direction.DOWNLOAD, "/tmp/r.csv")))
    assert "must name" in str(spec_problem(TransferSpec(Direction.UPLOAD, "/tmp/r.csv"),
                                           TransferSpec(Direction.UPLOAD, "/tmp/r.csv")))
    assert approved.describe() == f"upload /tmp/r.csv (10 bytes, sha256 {'ab' * 32})"


# -- the YAML block ---------------------------------------------------------------------------

BASE = """\
listen: {ssh: "127.0.0.1:2222", http: "127.0.0.1:8080"}
state_dir: /var/lib/bastion
identity:
  oidc: {issuer: "https://idp.example.com", client_id: bastion}
targets:
  web-1: {kind: ssh, address: "127.0.0.1:22", login: ops, host_key: "%s"}
policies:
  - name: files
    subjects: {groups: [dev]}
    targets: {names: [web-1]}
    access: allow
"""


@pytest.fixture
def host_key() -> str:
    import asyncssh
    return bytes(asyncssh.generate_private_key("ssh-ed25519").export_public_key()).decode().strip()


def load(tmp_path: Path, host_key: str, block: str) -> list[Policy]:
    path = tmp_path / "bastion.yaml"
    path.write_text(BASE % host_key + block)
    return list(load_config(path).policies)


def test_the_transfer_block_loads_normalised(tmp_path: Path, host_key: str) -> None:
    policies = load(tmp_path, host_key, """\
    transfer:
      upload: true
      download: true
      allow_paths: [/tmp/, /var//log/app]
      deny_paths: [/tmp/secret]
      max_size: 20MiB
      blocked_extensions: [sh, .EXE]
      quarantine_days: 30
""")
    assert policies[0].transfer == TransferRule(
        upload=True, download=True, allow_paths=("/tmp", "/var/log/app"), deny_paths=("/tmp/secret",),
        max_size=20 * 2**20, blocked_extensions=(".sh", ".exe"), quarantine_days=30)


@pytest.mark.parametrize(("block", "line", "key", "fragment"), [
    ("    transfer: {upload: true, uploads: true}\n", 12, "policies[0].transfer.uploads", "unknown"),
    ("    transfer: {download: false}\n", 12, "policies[0].transfer", "expected upload: true or download: true"),
    ("    transfer: {upload: true, allow_paths: [tmp]}\n", 12, "policies[0].transfer.allow_paths[0]",
     "expected an absolute path"),
    ("    transfer: {upload: true, deny_paths: [/tmp/../etc]}\n", 12, "policies[0].transfer.deny_paths[0]",
     "without '..'; write it as /etc"),
    ("    transfer: {upload: true, max_size: 20XB}\n", 12, "policies[0].transfer.max_size", "expected a size"),
    ("    transfer: {upload: true, approval: true}\n", 8, "policies[0].approval", "transfer.approval is true"),
])
def test_a_bad_transfer_block_names_file_line_and_key(tmp_path: Path, host_key: str, block: str, line: int,
                                                      key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, host_key, block)
    message = str(caught.value)
    assert f"bastion.yaml:{line}" in message and key in message and fragment in message


def test_transfer_approval_brings_its_approvers(tmp_path: Path, host_key: str) -> None:
    policies = load(tmp_path, host_key, "    approval: {approvers: {groups: [sre]}}\n"
                                        "    transfer: {upload: true, approval: true}\n")
    assert policies[0].transfer is not None and policies[0].transfer.approval
    assert policies[0].approval is not None


@pytest.mark.parametrize(("text", "size"), [("1048576", 1048576), ("20MB", 20_000_000), ("20 MiB", 20 * 2**20),
                                            ("1GiB", 2**30)])
def test_sizes_read_as_people_write_them(text: str, size: int) -> None:
    assert parse_size(text) == size
