"""File transfer through the bastion: real `sftp`, `scp` (SFTP mode), `scp -O` and paramiko, to a real sshd.

The sshd trusts the bastion's target CA, so the gateway reaches it with the SSH
proxy's own login: a one-minute certificate per session, host key pinned.
Every transfer must keep its sha256, leave one `transfer` audit event and a
marker in the session's recording; every refusal must reach the client with its
reason, fast, and be audited too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh
import paramiko
import paramiko.sftp as paramiko_sftp
import pytest
from oidc_issuer import OidcIssuer
from peers import Bastion, Client, bastion_cli, have

if TYPE_CHECKING:
    from sshd_fixtures import Sshd

pytest_plugins = ["transfer_fixtures"]

MB = 1_000_000
SIZE_MB = int(os.environ.get("TRANSFER_TEST_MB", "20"))  # 100 for the manual check of issue #6
CAP_MB = max(25, SIZE_MB + 5)
TIMEOUT = 30  # a refusal that hangs fails the test instead of the suite


def _config(sshd: Sshd, files: Path) -> str:
    address = f"127.0.0.1:{sshd.port}"
    target = f'kind: ssh, address: "{address}", login: {sshd.login}, host_key: "{sshd.host_key_line}"'
    return f"""
targets:
  web-1:    {{{target}}}
  web-gate: {{{target}}}
  web-none: {{{target}}}
policies:
  - name: ops-files
    subjects: {{groups: [ops]}}
    targets: {{names: [web-1]}}
    access: allow
    transfer:
      upload: true
      download: true
      allow_paths: [{files}]
      deny_paths: [{files}/secret]
      max_size: {CAP_MB}MB
      blocked_extensions: [.sh]
      quarantine_days: 7
  - name: ops-gated
    subjects: {{groups: [ops]}}
    targets: {{names: [web-gate]}}
    access: allow
    approval: {{approvers: {{users: [sam]}}}}
    transfer: {{upload: true, download: true, allow_paths: [{files}], approval: true}}
  - {{name: ops-shell, subjects: {{groups: [ops]}}, targets: {{names: [web-none]}}, access: allow}}
  - name: viewers
    subjects: {{groups: [view]}}
    targets: {{names: [web-1]}}
    access: allow
    transfer: {{download: true, allow_paths: [{files}]}}
"""


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory, oidc_issuer: OidcIssuer,
          make_sftpd: Callable[[str], Sshd]) -> Iterator[tuple[Bastion, Sshd, Path]]:
    """A bastion, an sshd trusting its target CA, and the directory on the host that policy opens."""
    if not (have("sftp") and have("scp")):
        pytest.skip("the OpenSSH sftp and scp clients are not installed")
    directory = tmp_path_factory.mktemp("transfer")
    made = bastion_cli("init", "--dir", str(directory), "--oidc-issuer", oidc_issuer.issuer)
    assert made.returncode == 0, made.stderr
    line = bastion_cli("target-ca", "-c", str(directory / "bastion.yaml"))
    assert line.returncode == 0, line.stderr
    sshd = make_sftpd(line.stdout.strip())
    files = sshd.directory / "files"
    (files / "secret").mkdir(parents=True)
    bastion = Bastion(directory, oidc_issuer.issuer)
    bastion.write_config(body=_config(sshd, files))
    bastion.start()
    yield bastion, sshd, files
    bastion.stop()


@pytest.fixture
def bastion(hosts: tuple[Bastion, Sshd, Path]) -> Bastion:
    return hosts[0]


@pytest.fixture
def files(hosts: tuple[Bastion, Sshd, Path]) -> Path:
    return hosts[2]


@pytest.fixture
def olive(bastion: Bastion, tmp_path: Path, oidc_issuer: OidcIssuer) -> Client:
    client = Client(tmp_path / "olive", bastion)
    client.certify(oidc_issuer, "olive", ["ops"])
    return client


def _opts(client: Client, port_flag: str, *extra: str) -> list[str]:
    return ["-F", "/dev/null", port_flag, str(client.bastion.ssh_port), "-i", str(client.key),
            "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={client.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", *extra]


def sftp(client: Client, user: str, commands: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run an sftp batch; every command must succeed for exit status 0."""
    batch = client.home / "batch"
    batch.write_text(commands)
    return subprocess.run(["sftp", *_opts(client, "-P", *extra), "-b", str(batch), f"{user}@127.0.0.1"],
                          capture_output=True, text=True, timeout=TIMEOUT, env=client.env(), cwd=client.home)


def scp(client: Client, *args: str, legacy: bool = False) -> subprocess.CompletedProcess[str]:
    """Run scp (SFTP mode unless ``legacy``, which is `scp -O`)."""
    return subprocess.run(["scp", *(["-O"] if legacy else []), *_opts(client, "-P"), *args],
                          capture_output=True, text=True, timeout=TIMEOUT, env=client.env(), cwd=client.home)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def refusal(bastion: Bastion, user: str, path: str) -> Any:
    """The refusal audited for ``path``: of the transfer itself, or of the stat a client makes before it."""
    found = [e for e in bastion.events() if e.kind in ("transfer", "transfer.browse") and e.user == user
             and e.outcome == "deny" and e.detail.get("path") == path]
    assert found, f"no refusal audited for {path}"
    return found[-1]


def transfers(bastion: Bastion, **match: Any) -> list[Any]:
    return [e for e in bastion.events("transfer")
            if all((e.detail.get(k) if k not in ("user", "outcome", "target") else getattr(e, k)) == v
                   for k, v in match.items())]


def recording_text(bastion: Bastion, session: str) -> str:
    found = list((bastion.state / "recordings").rglob(f"{session}.cast"))
    assert found, f"no recording for session {session}"
    return found[0].read_text()


# -- what works -------------------------------------------------------------------------------

def test_sftp_lists_targets_and_does_ls_cd_mkdir_put_rename_get_rm(bastion: Bastion, olive: Client,
                                                                   files: Path) -> None:
    local = random_file(olive.home / "report.csv", 300_000)
    done = sftp(olive, "olive", f"""\
ls /
cd /web-1{files}
mkdir incoming
put report.csv incoming/report.csv
rename incoming/report.csv incoming/final.csv
ls incoming
get incoming/final.csv back.csv
rm incoming/final.csv
rmdir incoming
""")
    assert done.returncode == 0, done.stderr
    listing = done.stdout
    assert "web-1" in listing and "web-gate" in listing and "web-none" not in listing  # no transfer block
    assert "final.csv" in listing
    assert sha256(olive.home / "back.csv") == sha256(local)
    assert not (files / "incoming").exists()
    up = bastion.wait_event("transfer", lambda e: e.user == "olive" and e.detail["path"] ==
                            f"{files}/incoming/report.csv")
    assert (up.outcome, up.target, up.detail["direction"], up.detail["bytes"]) == ("ok", "web-1", "upload", 300_000)
    assert up.detail["sha256"] == sha256(local) and up.detail["duration"] >= 0 and up.rule == "ops-files"
    down = transfers(bastion, user="olive", direction="download", path=f"{files}/incoming/final.csv")[-1]
    assert down.detail["sha256"] == sha256(local) and down.outcome == "ok"
    changes = {(e.detail["action"], e.outcome) for e in bastion.events("transfer.change") if e.user == "olive"}
    assert {("mkdir", "ok"), ("rename", "ok"), ("remove", "ok"), ("rmdir", "ok")} <= changes
    cast = recording_text(bastion, up.session or "")
    assert "transfer upload web-1:" in cast and "transfer download web-1:" in cast and "session started" in cast
    started = bastion.wait_event("session.started", lambda e: e.session == up.session)
    assert started.detail["mode"] == "sftp"
    quarantined = Path(up.detail["quarantine"])
    assert quarantined.is_file() and sha256(quarantined) == sha256(local)
    assert quarantined.stat().st_mode & 0o777 == 0o600


def test_scp_keeps_the_sha256_of_20_mb_both_ways_and_exits_0(bastion: Bastion, olive: Client, files: Path) -> None:
    local = random_file(olive.home / "data.bin", SIZE_MB * MB)
    up = scp(olive, str(local), f"olive@127.0.0.1:/web-1{files}/")
    assert up.returncode == 0, up.stderr
    assert sha256(files / "data.bin") == sha256(local)
    down = scp(olive, f"olive@127.0.0.1:/web-1{files}/data.bin", str(olive.home / "copy.bin"))
    assert down.returncode == 0, down.stderr
    assert sha256(olive.home / "copy.bin") == sha256(local)
    event = transfers(bastion, user="olive", direction="download", path=f"{files}/data.bin")[-1]
    assert event.detail["bytes"] == SIZE_MB * MB and event.detail["sha256"] == sha256(local)


def test_a_download_just_under_the_cap_is_not_refused(bastion: Bastion, olive: Client, files: Path) -> None:
    # scp reads ahead past the end of the file, past the cap too; nothing there is nothing over the cap.
    local = random_file(files / "under-cap.bin", CAP_MB * MB - 1000)
    down = scp(olive, f"olive@127.0.0.1:/web-1{files}/under-cap.bin", str(olive.home / "under-cap.bin"))
    assert down.returncode == 0, down.stderr
    assert sha256(olive.home / "under-cap.bin") == sha256(local)


def test_legacy_scp_goes_through_the_same_gateway(bastion: Bastion, olive: Client, files: Path) -> None:
    local = random_file(olive.home / "legacy.bin", 2 * MB)
    up = scp(olive, str(local), f"olive@127.0.0.1:/web-1{files}/legacy.bin", legacy=True)
    assert up.returncode == 0, up.stderr
    assert sha256(files / "legacy.bin") == sha256(local)
    down = scp(olive, f"olive@127.0.0.1:/web-1{files}/legacy.bin", str(olive.home / "back.bin"), legacy=True)
    assert down.returncode == 0, down.stderr
    assert sha256(olive.home / "back.bin") == sha256(local)
    event = transfers(bastion, user="olive", direction="upload", path=f"{files}/legacy.bin")[-1]
    assert event.outcome == "ok" and event.detail["sha256"] == sha256(local)
    assert bastion.wait_event("session.started", lambda e: e.session == event.session).detail["mode"] == "scp"
    refused = scp(olive, str(random_file(olive.home / "run.sh", 10)), f"olive@127.0.0.1:/web-1{files}/",
                  legacy=True)
    assert refused.returncode != 0 and "files ending in .sh may not be moved to web-1" in refused.stderr


def _paramiko(client: Client, bastion: Bastion, user: str) -> paramiko.SSHClient:
    key = paramiko.Ed25519Key.from_private_key_file(str(client.key))
    key.load_certificate(str(client.cert))
    host = asyncssh.read_private_key(str(bastion.state / "keys" / "host_key"))
    blob = base64.b64decode(bytes(host.export_public_key("openssh")).split()[1])
    ssh = paramiko.SSHClient()  # the bastion's host key pinned: no trust on first use in tests either
    ssh.get_host_keys().add(f"[127.0.0.1]:{bastion.ssh_port}", "ssh-ed25519", paramiko.Ed25519Key(data=blob))
    ssh.connect("127.0.0.1", bastion.ssh_port, username=user, pkey=key, look_for_keys=False, allow_agent=False,
                timeout=10)
    return ssh


def test_paramiko_puts_gets_and_reads_the_reason_of_a_refusal(bastion: Bastion, olive: Client, files: Path) -> None:
    local = random_file(olive.home / "p.bin", 1 * MB)
    ssh = _paramiko(olive, bastion, "olive")
    try:
        client = ssh.open_sftp()
        assert "web-1" in client.listdir("/")
        client.put(str(local), f"/web-1{files}/p.bin")
        client.get(f"/web-1{files}/p.bin", str(olive.home / "p2.bin"))
        with pytest.raises(PermissionError, match="is under .*/secret, which policy ops-files denies"):
            client.put(str(local), f"/web-1{files}/secret/p.bin")
        client.close()
    finally:
        ssh.close()
    assert sha256(olive.home / "p2.bin") == sha256(local) == sha256(files / "p.bin")
    assert not (files / "secret" / "p.bin").exists()


def test_a_huge_read_request_gets_a_bounded_answer(bastion: Bastion, olive: Client, files: Path) -> None:
    content = random_file(files / "big-read.bin", 6 * 1024 * 1024).read_bytes()
    ssh = _paramiko(olive, bastion, "olive")
    try:
        client = ssh.open_sftp()
        with client.open(f"/web-1{files}/big-read.bin", "rb") as remote:
            # One READ for 1 GiB: asyncssh's server passes any length through; the gateway must not fetch it all.
            kind, msg = client._request(paramiko_sftp.CMD_READ, remote.handle, paramiko_sftp.int64(0), 1 << 30)
            assert kind == paramiko_sftp.CMD_DATA
            first = msg.get_string()
            kind, msg = client._request(paramiko_sftp.CMD_READ, remote.handle, paramiko_sftp.int64(len(first)),
                                        1 << 30)
            second = msg.get_string()
        client.close()
    finally:
        ssh.close()
    assert len(first) == 4 * 1024 * 1024 and first == content[:len(first)]  # what limits@openssh.com says
    assert second == content[len(first):]


async def _asyncssh_get(client: Client, bastion: Bastion, remote: str, local: Path) -> None:
    host = asyncssh.read_private_key(str(bastion.state / "keys" / "host_key"))
    key = asyncssh.read_private_key(str(client.key))
    cert = asyncssh.read_certificate(str(client.cert))
    async with asyncssh.connect("127.0.0.1", bastion.ssh_port, username="olive", client_keys=[(key, cert)],
                                known_hosts=([host.convert_to_public()], [], []), agent_path=None,
                                config=[]) as conn, conn.start_sftp_client() as sftp:
        await sftp.get(remote, str(local))  # asyncssh's defaults: 4 MiB reads in parallel, sparse ranges


def test_asyncssh_s_sftp_client_downloads_with_its_defaults_and_the_sha256_holds(
        bastion: Bastion, olive: Client, files: Path) -> None:
    local = random_file(files / "as.bin", 24 * MB)
    copy = olive.home / "as-copy.bin"
    asyncio.run(_asyncssh_get(olive, bastion, f"/web-1{files}/as.bin", copy))
    assert sha256(copy) == sha256(local)
    event = transfers(bastion, user="olive", direction="download", path=f"{files}/as.bin")[-1]
    assert (event.outcome, event.detail["bytes"], event.detail["sha256"]) == ("ok", 24 * MB, sha256(local))


def test_an_upload_the_client_abandons_leaves_no_partial_file(bastion: Bastion, olive: Client,
                                                              files: Path) -> None:
    ssh = _paramiko(olive, bastion, "olive")
    client = ssh.open_sftp()
    remote = client.open(f"/web-1{files}/half.bin", "wb")
    remote.write(os.urandom(200_000))
    remote.flush()
    ssh.close()  # gone without closing the file
    event = bastion.wait_event("transfer", lambda e: e.user == "olive" and e.detail["path"] == f"{files}/half.bin")
    assert event.outcome == "interrupted" and event.detail["sha256"] is not None
    assert not (files / "half.bin").exists()


# -- what is refused --------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "size", "where", "fragment"), [
    ("denied.txt", 10, "secret/", "which policy ops-files denies"),
    ("tool.sh", 10, "", "files ending in .sh may not be moved to web-1"),
    ("big.bin", (CAP_MB + 1) * MB, "", f"over the {CAP_MB * MB}-byte limit of policy ops-files"),
])
def test_each_refused_upload_says_why_leaves_nothing_and_is_audited(
        bastion: Bastion, olive: Client, files: Path, name: str, size: int, where: str, fragment: str) -> None:
    local = random_file(olive.home / name, size)
    done = scp(olive, str(local), f"olive@127.0.0.1:/web-1{files}/{where}")
    assert done.returncode != 0
    assert fragment in done.stderr
    assert not (files / where / name).exists()
    event = refusal(bastion, "olive", f"{files}/{where.rstrip('/')}" if where else f"{files}/{name}")
    assert fragment in event.detail["reason"]
    if size > CAP_MB * MB:  # refused while streaming: what crossed is counted, and stopped at the cap
        assert 0 < event.detail["bytes"] <= CAP_MB * MB


def test_a_download_outside_the_allowed_paths_is_refused(bastion: Bastion, olive: Client) -> None:
    done = sftp(olive, "olive", "get /web-1/etc/hostname\n")
    assert done.returncode != 0
    assert "outside the paths policy ops-files allows" in done.stderr
    assert not (olive.home / "hostname").exists()
    assert "outside the paths" in refusal(bastion, "olive", "/etc/hostname").detail["reason"]


def test_a_refused_download_does_not_tell_whether_the_file_exists(bastion: Bastion, olive: Client) -> None:
    # Outside the allowed paths, a missing file and a directory are refused exactly like a file that is there.
    # paramiko's open() is one SFTP OPEN, with no stat first (OpenSSH's sftp stats, which is refused anyway).
    ssh = _paramiko(olive, bastion, "olive")
    answers = {}
    try:
        client = ssh.open_sftp()
        for path in ("/etc/hostname", "/etc/no-such-file-8c1f", "/etc"):
            with pytest.raises(OSError) as refused:
                client.open(f"/web-1{path}", "rb")
            answers[path] = (type(refused.value), str(refused.value).replace(path, "PATH"))
        client.close()
    finally:
        ssh.close()
    assert all("outside the paths policy ops-files allows" in text for _, text in answers.values()), answers
    assert len(set(answers.values())) == 1, answers


def test_uploads_are_refused_where_only_downloads_are_allowed(bastion: Bastion, tmp_path: Path,
                                                              oidc_issuer: OidcIssuer, files: Path) -> None:
    vic = Client(tmp_path / "vic", bastion)
    vic.certify(oidc_issuer, "vic", ["view"])
    (files / "shared.txt").write_text("for viewers\n")
    got = scp(vic, f"vic@127.0.0.1:/web-1{files}/shared.txt", str(vic.home / "shared.txt"))
    assert got.returncode == 0, got.stderr
    assert (vic.home / "shared.txt").read_text() == "for viewers\n"
    put = scp(vic, str(vic.home / "shared.txt"), f"vic@127.0.0.1:/web-1{files}/mine.txt")
    assert put.returncode != 0 and "policy viewers does not allow uploads to web-1" in put.stderr
    assert bastion.wait_event("transfer", lambda e: e.user == "vic" and e.outcome == "deny").detail[
        "direction"] == "upload"


# -- approvals --------------------------------------------------------------------------------

def _approve(bastion: Bastion, request: str) -> None:
    done = bastion_cli("approve", request, "--as", "sam", "-c", str(bastion.config))
    assert done.returncode == 0, done.stderr + done.stdout


def test_an_unapproved_transfer_is_held_then_runs_once_approved(bastion: Bastion, olive: Client,
                                                                files: Path) -> None:
    local = random_file(olive.home / "gated.csv", 50_000)
    reason = ("-o", 'SetEnv=BASTION_REASON="quarterly report"')
    no_reason = sftp(olive, "olive", f"put gated.csv /web-gate{files}/gated.csv\n")
    assert no_reason.returncode != 0 and "requires a reason" in no_reason.stderr
    held = sftp(olive, "olive", f"put gated.csv /web-gate{files}/gated.csv\n", *reason)
    assert held.returncode != 0 and not (files / "gated.csv").exists()
    request = re.search(r"request (r-[0-9a-f]+) filed for upload", held.stderr)
    assert request, held.stderr
    assert sha256(local) in held.stderr  # what the approver approves: path, size and content
    _approve(bastion, request.group(1))
    other = random_file(olive.home / "other.csv", 50_000)
    swapped = sftp(olive, "olive", f"put other.csv /web-gate{files}/gated.csv\n", *reason)
    assert swapped.returncode != 0 and "approval covers" in swapped.stderr  # same path, other content
    assert not (files / "gated.csv").exists()
    assert other.exists()
    # that attempt used the approval up, so the real file needs it again
    again = sftp(olive, "olive", f"put gated.csv /web-gate{files}/gated.csv\n", *reason)
    second = re.search(r"request (r-[0-9a-f]+) filed for upload", again.stderr)
    assert second, again.stderr
    _approve(bastion, second.group(1))
    ok = sftp(olive, "olive", f"put gated.csv /web-gate{files}/gated.csv\n", *reason)
    assert ok.returncode == 0, ok.stderr
    assert sha256(files / "gated.csv") == sha256(local)
    assert transfers(bastion, user="olive", target="web-gate", outcome="ok")[-1].detail["request"] == second.group(1)

    refused = sftp(olive, "olive", f"get /web-gate{files}/gated.csv got.csv\n", *reason)
    asked = re.search(r"request (r-[0-9a-f]+) filed", refused.stderr)
    assert refused.returncode != 0 and asked, refused.stderr
    _approve(bastion, asked.group(1))
    got = sftp(olive, "olive", f"get /web-gate{files}/gated.csv got.csv\n", *reason)
    assert got.returncode == 0, got.stderr
    assert sha256(olive.home / "got.csv") == sha256(local)
    once = sftp(olive, "olive", f"get /web-gate{files}/gated.csv got2.csv\n", *reason)
    assert once.returncode != 0 and "filed" in once.stderr  # an approval is used once


# -- the invariant ------------------------------------------------------------------------------

def test_the_upstream_credential_never_reaches_the_client(bastion: Bastion, olive: Client, files: Path,
                                                          hosts: tuple[Bastion, Sshd, Path]) -> None:
    sshd = hosts[1]
    (files / "seen.txt").write_text("x")
    done = sftp(olive, "olive", f"get /web-1{files}/seen.txt\n", "-vvv")
    assert done.returncode == 0, done.stderr
    target_ca = bytes(asyncssh.read_private_key(str(bastion.state / "keys" / "target_ca"))
                      .export_public_key()).split()[1].decode()
    assert "ED25519-CERT" in sshd.log.read_text()  # the gateway logged in upstream with a certificate
    seen = done.stdout + done.stderr + "".join(p.read_text(errors="replace") for p in olive.home.rglob("*")
                                               if p.is_file())
    assert target_ca not in seen  # any upstream certificate would carry its CA's key
    assert f"Authenticated to 127.0.0.1 ([127.0.0.1]:{bastion.ssh_port})" in done.stderr
    assert str(sshd.port) not in done.stdout + done.stderr  # the client never even learns where the host is


def test_a_revoked_certificate_ends_an_sftp_session_with_its_reason_on_stderr(bastion: Bastion, tmp_path: Path,
                                                                               oidc_issuer: OidcIssuer) -> None:
    import time

    client = Client(tmp_path / "rita", bastion)
    client.certify(oidc_issuer, "rita", ["ops"])
    session = subprocess.Popen(["sftp", *_opts(client, "-P"), "rita@127.0.0.1"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=client.env(),
                               cwd=client.home)
    assert session.stdin is not None
    session.stdin.write("ls /\n")
    session.stdin.flush()
    serial = bastion.wait_event("certificate.issued", lambda e: e.user == "rita").detail["serial"]
    bastion.wait_event("session.started", lambda e: e.user == "rita")
    time.sleep(0.5)
    assert bastion_cli("revoke-cert", "-c", str(bastion.config), str(serial), "--reason", "test").returncode == 0
    bastion.wait_event("session.ended", lambda e: e.user == "rita")  # the bastion ended it, not our EOF
    time.sleep(1)  # and has disconnected; sftp notices at its next command
    out, err = session.communicate("ls /\n", timeout=TIMEOUT)
    assert "your certificate has been revoked" in err  # not written into the SFTP stream, where it would corrupt it
    assert "web-1" in out  # the listing before the end came through intact


def test_a_link_cannot_lead_a_download_or_a_chmod_out_of_the_policy(bastion: Bastion, olive: Client,
                                                                     files: Path) -> None:
    secret = files / "secret"
    secret.mkdir(exist_ok=True)
    (secret / "key").write_text("TOP SECRET\n")
    (secret / "key").chmod(0o600)
    link = files / "innocent.txt"  # inside the allowed files/, pointing into the denied files/secret
    link.unlink(missing_ok=True)
    link.symlink_to(secret / "key")
    got = sftp(olive, "olive", f"get /web-1{files}/innocent.txt got.txt\n")
    assert got.returncode != 0 and "through a link" in got.stderr
    assert not (olive.home / "got.txt").exists()
    changed = sftp(olive, "olive", f"chmod 666 /web-1{files}/innocent.txt\n")
    assert changed.returncode != 0
    assert (secret / "key").stat().st_mode & 0o777 == 0o600


def test_an_approved_upload_must_arrive_front_to_back_with_its_sha256(bastion: Bastion, olive: Client,
                                                                      files: Path) -> None:
    random_file(olive.home / "gap.csv", 4000)
    held = sftp(olive, "olive", f"put gap.csv /web-gate{files}/gap.csv\n", "-o", 'SetEnv=BASTION_REASON="gap"')
    request = re.search(r"request (r-[0-9a-f]+) filed for upload", held.stderr)
    assert request, held.stderr
    _approve(bastion, request.group(1))
    ssh = _paramiko(olive, bastion, "olive")
    try:
        client = ssh.open_sftp()
        # Skipping byte 0 leaves no sha256 to match the approval (paramiko may not surface the refusal at close).
        with contextlib.suppress(OSError), client.open(f"/web-gate{files}/gap.csv", "wb") as remote:
            remote.seek(1)
            remote.write(b"X" * 3999)
        client.close()
    finally:
        ssh.close()
    assert not (files / "gap.csv").exists()
    refused = [e for e in transfers(bastion) if e.detail.get("path", "").endswith("gap.csv") and e.outcome == "deny"]
    assert refused and "front to back" in refused[-1].detail["reason"]
    assert not any(e.outcome == "ok" for e in transfers(bastion) if e.detail.get("path", "").endswith("gap.csv"))
