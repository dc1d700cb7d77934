"""Every session through the bastion is recorded: what the user saw and typed, sealed and verifiable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pexpect
from oidc_issuer import OidcIssuer
from peers import BIN, Bastion, Client, strip_ansi

from recorders.asciicast import REDACTED, iter_events, read_header, validate


def recorder(bastion: Bastion, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "recorder"), "-c", str(bastion.config), *args], capture_output=True,
                          text=True, timeout=timeout)


def recordings(bastion: Bastion, user: str) -> list[dict]:
    result = recorder(bastion, "ls", "--user", user, "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def cast_of(bastion: Bastion, session: str) -> Path:
    return next((bastion.state / "recordings").rglob(f"{session}.cast"))


def wait_closed(bastion: Bastion, user: str, count: int = 1) -> list[dict]:
    deadline = time.monotonic() + 10
    while True:
        rows = [r for r in recordings(bastion, user) if r["status"] == "closed"]
        if len(rows) >= count:
            return rows
        assert time.monotonic() < deadline, recordings(bastion, user)
        time.sleep(0.1)


def shell(client: Client, user: str) -> pexpect.spawn:
    args = client.ssh_args(user, "-tt", "-o", "SetEnv=PROMPT_TOOLKIT_NO_CPR=1")
    return pexpect.spawn(args[0], args[1:], env=client.env(), dimensions=(24, 100), encoding="utf-8", timeout=15)


def test_interactive_session_records_keystrokes_output_resize_and_markers(
        client: Client, bastion: Bastion, oidc_issuer: OidcIssuer) -> None:
    client.certify(oidc_issuer, "carol", ["dev", "sre"])
    term = shell(client, "carol")
    term.expect("localhost")
    for ch in "whoami":
        term.send(ch)
        time.sleep(0.05)
    term.send("\r")
    term.expect("groups:")
    term.setwinsize(40, 140)
    time.sleep(0.3)
    term.send("connect web-1\r")
    term.expect("not available")
    term.send("exit\r")
    term.expect(pexpect.EOF)

    row = wait_closed(bastion, "carol")[0]
    path = cast_of(bastion, row["session_id"])
    assert validate(path) == []
    header = read_header(path)
    assert (header.width, header.height) == (100, 24) and header.env.get("TERM") == "xterm"
    events = list(iter_events(path))
    typed = "".join(e.data for e in events if e.code == "i")
    assert "whoami\r" in typed and "connect web-1\r" in typed
    shown = strip_ansi("".join(e.data for e in events if e.code == "o"))
    assert "groups:      dev, sre" in shown
    assert ("r", "140x40") in [(e.code, e.data) for e in events]
    marks = [e.data for e in events if e.code == "m"]
    assert marks[0].startswith("session started: carol (dev, sre) from 127.0.0.1")
    assert "connect web-1: allow by sre-all" in marks and marks[-1] == "session ended"
    assert [e.time for e in events] == sorted(e.time for e in events)
    closed = bastion.wait_event("recording.closed", lambda e: e.session == row["session_id"])
    assert closed.detail["sha256"] == row["sha256"]


def test_exec_session_is_recorded_and_unechoed_stdin_is_redacted(
        client: Client, bastion: Bastion, oidc_issuer: OidcIssuer) -> None:
    client.certify(oidc_issuer, "dave", ["dev"])
    result = subprocess.run([*client.ssh_args("dave"), "targets", "--json"], input="hunter2-secret\n",
                            capture_output=True, text=True, timeout=30, env=client.env())
    assert result.returncode == 0
    row = wait_closed(bastion, "dave")[0]
    path = cast_of(bastion, row["session_id"])
    assert "hunter2" not in path.read_text()
    events = list(iter_events(path))
    assert "pg-demo" in "".join(e.data for e in events if e.code == "o")
    assert read_header(path).command == "targets --json"
    # stdin may or may not reach the session before the command ends; what does must be redacted
    assert all(e.data == REDACTED for e in events if e.code == "i")


def test_grep_finds_typed_and_printed_text_at_a_time_play_shows(
        client: Client, bastion: Bastion, oidc_issuer: OidcIssuer) -> None:
    client.certify(oidc_issuer, "erin", ["dev"])
    term = shell(client, "erin")
    term.expect("localhost")
    time.sleep(1.2)  # so that the command is not at offset 0
    term.send("whoami\r")
    term.expect("certificate:")
    term.send("exit\r")
    term.expect(pexpect.EOF)
    session = wait_closed(bastion, "erin")[0]["session_id"]

    typed = recorder(bastion, "grep", "erin@localhost> whoami", "--user", "erin")
    printed = recorder(bastion, "grep", "groups: +dev", "--user", "erin")
    assert typed.returncode == 0 and printed.returncode == 0, typed.stderr + printed.stderr
    for result in (typed, printed):
        line = next(line for line in result.stdout.splitlines() if line.startswith(session[:12]))
        offset = line.split()[1]
        assert offset != "0s"
        from recorders.player import parse_offset
        from recorders.screen import plain_lines

        start = parse_offset(offset)
        later = [text for t, text in plain_lines(iter_events(cast_of(bastion, session)), 100, 24) if t >= start]
        assert any("whoami" in text or "groups:" in text for text in later[:5])


def test_export_plays_in_asciinema(client: Client, bastion: Bastion, oidc_issuer: OidcIssuer,
                                   tmp_path: Path) -> None:
    client.certify(oidc_issuer, "fred", ["dev"])
    assert client.ssh("fred", "targets").returncode == 0
    session = wait_closed(bastion, "fred")[0]["session_id"]
    out = tmp_path / "exported.cast"
    assert recorder(bastion, "export", session[:10], "-o", str(out)).returncode == 0
    shown = subprocess.run([str(BIN / "asciinema"), "cat", str(out)], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0 and "pg-demo" in shown.stdout


def test_kill_9_leaves_a_replayable_recording_marked_interrupted(
        make_bastion: Callable[..., Bastion], tmp_path: Path, oidc_issuer: OidcIssuer) -> None:
    b = make_bastion()
    client = Client(tmp_path / "home", b)
    client.certify(oidc_issuer, "gina", ["dev"])
    term = shell(client, "gina")
    term.expect("localhost")
    term.send("whoami\r")
    term.expect("certificate:")
    time.sleep(1.5)  # at least one flush
    assert b.proc is not None
    worker = worker_of(b)
    assert worker is not None
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait(10)
    term.expect(pexpect.EOF)
    deadline = time.monotonic() + 10  # the worker sees its pipe close, writes what it has, and exits
    while running(worker):
        assert time.monotonic() < deadline, "the recorder worker outlived its daemon"
        time.sleep(0.05)

    b.start()
    row = recordings(b, "gina")[0]
    assert row["status"] == "interrupted"
    path = cast_of(b, row["session_id"])
    events = list(iter_events(path))
    assert "groups:" in strip_ansi("".join(e.data for e in events if e.code == "o"))
    assert events[-1].code == "m" and "interrupted" in events[-1].data
    verify = recorder(b, "verify", row["session_id"])
    assert verify.returncode == 0, verify.stdout + verify.stderr
    b.wait_event("recording.interrupted", lambda e: e.session == row["session_id"])


def test_verify_all_passes_after_real_sessions(bastion: Bastion) -> None:
    result = recorder(bastion, "verify", "--all")
    assert result.returncode == 0, result.stdout + result.stderr


def running(pid: int) -> bool:
    """Whether ``pid`` is still a recorder worker (not gone, not a zombie)."""
    try:
        return b"recorders.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def worker_of(bastion: Bastion) -> int | None:
    """The pid of the bastion's recorder worker (a child process), if one runs."""
    assert bastion.proc is not None
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            cmdline = (status.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(bastion.proc.pid) and b"recorders.worker" in cmdline:
            return int(status.parent.name)
    return None


def test_a_session_whose_recorder_dies_ends_with_a_message_and_the_next_is_recorded(
        make_bastion: Callable[..., Bastion], tmp_path: Path, oidc_issuer: OidcIssuer) -> None:
    b = make_bastion()
    client = Client(tmp_path / "home", b)
    client.certify(oidc_issuer, "hana", ["dev"])
    term = shell(client, "hana")
    term.expect("localhost")
    term.send("whoami\r")
    term.expect("certificate:")
    cast = next((b.state / "recordings").rglob("*.cast"))
    deadline = time.monotonic() + 1.0  # `recorder watch` sees a live session within about a second
    while "certificate:" not in cast.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "certificate:" in cast.read_text()
    pid = worker_of(b)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    term.expect("can no longer be recorded")
    term.expect(pexpect.EOF)
    term.close()
    assert term.exitstatus == 255

    row = recordings(b, "hana")[0]
    deadline = time.monotonic() + 10
    while row["status"] == "live" and time.monotonic() < deadline:
        time.sleep(0.1)
        row = recordings(b, "hana")[0]
    assert row["status"] == "interrupted"
    events = list(iter_events(cast_of(b, row["session_id"])))
    assert "certificate:" in strip_ansi("".join(e.data for e in events if e.code == "o"))
    assert events[-1].code == "m" and events[-1].data.startswith("recording failed")
    assert recorder(b, "verify", row["session_id"]).returncode == 0
    b.wait_event("recording.failed", lambda e: e.session == row["session_id"])

    assert client.ssh("hana", "targets").returncode == 0  # a new worker records the next session
    assert worker_of(b) not in (None, pid)
    wait_closed(b, "hana")
    assert b.alive()
