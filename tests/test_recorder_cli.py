"""The ``recorder`` CLI against a real state directory: SQLite index, signed casts, sidecars."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyte
import pytest
import sqlite_utils
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_recording_store import Clock

from bastion.audit import AuditStore
from recorders import screen, sidecars
from recorders.asciicast import Header, iter_events
from recorders.cli import build_parser, main
from recorders.player import Player, parse_offset
from recorders.search import MARGIN, matching_lines, search_transcript_file
from recorders.store import RecordingStore

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def write_keys(keys: Path, key: Ed25519PrivateKey) -> None:
    """The audit key pair in OpenSSH format, as `bastion init` leaves it."""
    keys.mkdir(parents=True, mode=0o700)
    (keys / "audit_key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    (keys / "audit_key").chmod(0o600)
    (keys / "audit_key.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))


class Env:
    """A state directory with an audit store, an audit key and a config file pointing at it."""

    def __init__(self, root: Path) -> None:
        self.state = root / "state"
        self.key = Ed25519PrivateKey.generate()
        write_keys(self.state / "keys", self.key)
        self.audit = AuditStore(self.state / "audit.db")
        self.clock = Clock()
        self.store = RecordingStore(self.state / "recordings", self.audit.db, signing_key=self.key,
                                    clock=self.clock, monotonic=self.clock)
        self.config = root / "etc" / "bastion.yaml"
        self.config.parent.mkdir()
        self.config.write_text("# only state_dir matters to recorder\nstate_dir: ../state\nlisten: {}\n")

    def session(self, session_id: str, *, user: str = "alice", target: str = "pg-prod", close: bool = True) -> None:
        """A minute-long shell session: ticking output, then `whoami` typed, then its answer."""
        c = self.clock
        started = c.t
        self.audit.append("session.start", user=user, session=session_id, outcome="allow", ts=started)
        rec = self.store.open(session_id, user=user, target=target, header=Header(80, 24), started=started)
        w = rec.writer
        for i in range(60):  # a screenful and more: keyframes, and earlier lines scroll away
            w.output(f"tick {i}\r\n".encode())
            c.t += 1
        w.marker("target connected")
        w.output(b"$ ")
        for ch in b"whoami":
            c.t += 0.3
            w.input(bytes([ch]))
            w.output(bytes([ch]))
        c.t += 0.5
        w.input(b"\r")
        w.output(b"\r\nprinted-answer-42\r\n$ ")
        w.resize(100, 30)
        c.t += 5
        w.output(b"\x1b[2J\x1b[Hbye\r\n")
        self.audit.append("sql.statement", user=user, session=session_id, target=target, outcome="deny",
                          rule="no-drop", ts=c.t, statement="DROP TABLE users")
        c.t += 1
        if close:
            rec.close(reason="user logged out")
        else:
            w.flush()
        c.t += 10

    def cast(self, session_id: str) -> Path:
        return self.store.path(self.store.get(session_id))


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.audit.close()


def run(env: Env, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `recorder ARGV --state-dir STATE` in-process; (exit code, stdout, stderr)."""
    code = main([*argv, "--state-dir", str(env.state)])
    out, err = capsys.readouterr()
    return code, out, err


def test_config_file_gives_the_state_dir(env: Env, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    env.session("sess-cfg")
    assert main(["ls", "-c", str(env.config)]) == 0
    assert "sess-cfg" in capsys.readouterr().out
    assert main(["-c", str(env.config), "ls"]) == 0  # before the command, too
    assert "sess-cfg" in capsys.readouterr().out
    monkeypatch.setenv("BASTION_CONFIG", str(env.config))
    assert main(["ls"]) == 0
    assert "sess-cfg" in capsys.readouterr().out
    assert main(["ls", "-c", str(env.config.parent / "missing.yaml")]) == 2
    assert capsys.readouterr().err.startswith("recorder: cannot read config")


def test_ls_table_and_json(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.session("aaaa-1111-2222-3333", user="alice")
    env.session("bbbb-1111", user="bob", close=False)
    code, out, _ = run(env, capsys, "ls")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["ID", "USER", "TARGET", "START", "DURATION", "SIZE", "STATUS", "HOLD"]
    assert lines[1].startswith("bbbb-1111 ") and "live" in lines[1]
    assert lines[2].startswith("aaaa-1111-22 ") and "closed" in lines[2] and "1m08s" in lines[2]
    code, out, _ = run(env, capsys, "ls", "--json", "--user", "alice")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 1
    assert set(rows[0]) == {"session_id", "user", "target", "started", "ended", "bytes", "sha256", "signature",
                            "status", "path", "title", "hold", "hold_reason", "duration", "pruned_at"}
    assert rows[0]["status"] == "closed" and rows[0]["duration"] == pytest.approx(68.3)
    code, out, _ = run(env, capsys, "ls", "--json", "--status", "live")
    assert [json.loads(x)["session_id"] for x in out.splitlines()] == ["bbbb-1111"]


def test_show_json_and_text(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.session("show-me")
    code, out, _ = run(env, capsys, "show", "show", "--json")
    doc = json.loads(out)
    assert code == 0 and set(doc) == {"recording", "verified", "problems", "timeline"}
    assert doc["verified"] is True and doc["problems"] == []
    assert doc["recording"]["session_id"] == "show-me" and doc["recording"]["file"].endswith("show-me.cast")
    assert [(e["kind"], e["offset"]) for e in doc["timeline"]] == [("session.start", 0.0),
                                                                    ("sql.statement", pytest.approx(67.3))]
    assert doc["timeline"][1]["detail"] == {"statement": "DROP TABLE users"}
    code, out, _ = run(env, capsys, "show", "show-me")
    assert code == 0 and "verified   ok" in out and "1m07s  sql.statement" in out and "statement=DROP" in out


def test_prefixes_ambiguous_and_unknown(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.session("abc-1")
    env.session("abc-2")
    assert run(env, capsys, "show", "abc-1", "--json")[0] == 0
    code, _, err = run(env, capsys, "show", "abc")
    assert code == 2 and "ambiguous" in err and "abc-1" in err and "abc-2" in err
    code, _, err = run(env, capsys, "play", "nope")
    assert code == 2 and err == "recorder: no recording matches 'nope'\n"


def _damage(env: Env, session_id: str, how: str) -> None:
    path = env.cast(session_id)
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[200] ^= 0x04
        path.write_bytes(bytes(data))
    elif how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:  # a row re-signed by someone else's key
        from recorders.signing import sign

        info = env.store.get(session_id)
        sig = sign(Ed25519PrivateKey.generate(), session_id, info.sha256 or "", info.bytes or 0, info.ended or 0)
        env.audit.db.table("recordings").update(session_id, {"signature": sig})


@pytest.mark.parametrize("how, reason", [
    ("flip", "hash mismatch"), ("truncate", "size mismatch"), ("resign", "bad signature"),
])
def test_damage_is_caught_by_verify_and_refused_by_play(env: Env, capsys: pytest.CaptureFixture[str],
                                                        how: str, reason: str) -> None:
    env.session("good")
    env.session("bad")
    _damage(env, "bad", how)
    code, out, _ = run(env, capsys, "verify", "bad")
    assert code == 1 and "bad: FAILED" in out and reason in out
    code, out, _ = run(env, capsys, "verify", "--all")
    assert code == 1 and "good: OK" in out and "2 recordings, 1 failed" in out
    code, out, err = run(env, capsys, "play", "bad")
    assert code == 3 and out == "" and err.startswith("recorder: refusing to play bad: ") and reason in err
    assert run(env, capsys, "verify", "good")[0] == 0


def test_play_no_verify_and_seek(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.session("p1")
    _damage(env, "p1", "resign")
    code, out, _ = run(env, capsys, "play", "p1", "--no-verify", "--speed", "10000")
    assert code == 0 and "printed-answer-42" in out and "tick 0" in out
    code, out, _ = run(env, capsys, "play", "p1", "--no-verify", "--speed", "10000", "--from", "1m")
    assert code == 0 and "printed-answer-42" in out
    code, out, _ = run(env, capsys, "play", "p1", "--no-verify", "--speed", "10000", "--from-marker", "1")
    assert code == 0 and "whoami" in out
    code, _, err = run(env, capsys, "play", "p1", "--no-verify", "--from-marker", "5")
    assert code == 2 and "marker" in err


def test_cat_raw_and_plain(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.session("c1")
    code, out, _ = run(env, capsys, "cat", "c1")
    assert code == 0 and "\x1b[2J" in out and "tick 59\r\n" in out
    code, out, _ = run(env, capsys, "cat", "c1", "--plain")
    lines = out.splitlines()
    assert code == 0 and lines[0] == "tick 0" and "$ whoami" in lines and "printed-answer-42" in lines
    assert "\x1b" not in out


class Terminal:
    """A pyte terminal for the Player to write to; remembers whether ``text`` was ever on screen."""

    def __init__(self, text: str) -> None:
        self.screen = pyte.Screen(80, 24)
        self.stream = screen.new_stream(self.screen)
        self.text = text
        self.seen_at: float | None = None
        self.now = 0.0

    def write(self, data: str) -> int:
        self.stream.feed(data)
        return len(data)

    def flush(self) -> None:
        if self.seen_at is None and any(self.text in row for row in self.screen.display):
            self.seen_at = self.now


def play_window(cast: Path, start: float, seconds: float, text: str) -> float | None:
    """Play ``cast`` as ``recorder play --from START`` does, on a fake clock, for ``seconds``.

    Returns the playback time at which ``text`` was first on screen, or None.
    """
    frame = sidecars.keyframe_before(sidecars.keyframe_index(cast), start)
    assert frame is not None and frame.time > 0, "the test wants a seek through a keyframe"
    term = Terminal(text)

    def keys(timeout: float | None) -> str | None:  # no real sleeping: time passes when the player waits
        term.now += timeout or 0.0
        return "q" if term.now > seconds else None

    Player(term, keys, clock=lambda: term.now).play(  # type: ignore[arg-type]
        iter_events(cast, start_offset=frame.offset), start=start, keyframe=frame, size=(80, 24))
    return term.seen_at


@pytest.mark.parametrize("pattern, line", [("whoami", "$ whoami"), ("printed-answer", "printed-answer-42")])
def test_grep_finds_typed_and_printed_text_at_a_playable_offset(
        env: Env, capsys: pytest.CaptureFixture[str], pattern: str, line: str) -> None:
    env.session("g1")
    sidecars.remove(env.cast("g1"))  # built on the fly
    code, out, _ = run(env, capsys, "grep", pattern)
    session, offset, found = out.rstrip("\n").split("  ", 2)
    assert code == 0 and (session, found) == ("g1", line)
    start = parse_offset(offset)
    assert start > 30, "the match is well into the recording"
    cast = env.cast("g1")
    seen = play_window(cast, start, MARGIN + 1, line)
    assert seen is not None and seen <= MARGIN + 0.11, "on screen within about half a second of playback"
    assert sidecars.transcript_path(cast).exists()


def test_grep_json_filters_stats_and_no_match(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.session("g-alice", user="alice")
    env.session("g-bob", user="bob", close=False)  # live: searched without writing sidecars
    code, out, err = run(env, capsys, "grep", "PRINTED-ANSWER", "-i", "--json", "--stats")
    hits = [json.loads(x) for x in out.splitlines()]
    assert code == 0 and [h["session_id"] for h in hits] == ["g-bob", "g-alice"]
    assert set(hits[0]) == {"session_id", "time", "offset", "from", "line"}
    assert "searched 2 recordings" in err and "MB/s" in err
    assert not sidecars.transcript_path(env.cast("g-bob")).exists()
    code, out, _ = run(env, capsys, "grep", "printed-answer", "--user", "bob")
    assert code == 0 and out.startswith("g-bob  ")
    assert run(env, capsys, "grep", "PRINTED-ANSWER")[0] == 1
    assert run(env, capsys, "grep", "(")[0] == 2


def test_export_plays_in_asciinema(env: Env, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    asciinema = VENV_BIN / "asciinema"
    if not asciinema.exists():
        pytest.skip("asciinema 2.4 is not installed (pip install -e '.[test]')")
    env.session("x1", close=False)
    with open(env.cast("x1"), "ab") as f:
        f.write(b'[99.0, "o", "cut mid-wri')  # a live file can end mid-line
    out_file = tmp_path / "x1.cast"
    assert run(env, capsys, "export", "x1", "-o", str(out_file))[0] == 0
    result = subprocess.run([str(asciinema), "cat", str(out_file)], capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert "printed-answer-42" in result.stdout and "whoami" in result.stdout and "cut mid" not in result.stdout
    assert [e.code for e in iter_events(out_file)].count("i") == 7  # keystrokes kept
    code, out, _ = run(env, capsys, "export", "x1", "--format", "txt")
    assert code == 0 and "printed-answer-42\n" in out and "\x1b" not in out


@pytest.mark.timeout(30)
def test_watch_follows_until_closed(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    opened = threading.Event()

    def session() -> None:  # the bastion: its own connection to the database, as another process would
        db = sqlite_utils.Database(env.state / "audit.db")
        store = RecordingStore(env.state / "recordings", db, signing_key=env.key)
        rec = store.open("w1", user="alice", target=None, header=Header(80, 24))
        rec.writer.output(b"before watching\r\n")
        rec.writer.flush()
        opened.set()
        time.sleep(0.1)
        for i in range(5):
            time.sleep(0.05)
            rec.writer.output(f"line {i}\r\n".encode())
            rec.writer.flush()
        time.sleep(0.1)
        rec.writer.output(b"last words\r\n")
        rec.close()
        db.close()

    writer = threading.Thread(target=session)
    writer.start()
    assert opened.wait(10)
    started = time.monotonic()
    code, out, err = run(env, capsys, "watch", "w1", "--poll", "0.02")
    writer.join()
    assert code == 0 and time.monotonic() - started < 10
    assert out == "before watching\r\n" + "".join(f"line {i}\r\n" for i in range(5)) + "last words\r\n"
    assert "w1 ended" in err
    assert env.store.get("w1").status == "closed"


def test_prune_hold_release(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.clock.t = time.time() - 100 * 86400
    env.session("old-1")
    env.session("old-held")
    env.session("old-live", close=False)
    env.clock.t = time.time()
    env.session("new-1")
    code, out, _ = run(env, capsys, "hold", "old-h", "--reason", "case 7")
    assert code == 0 and out == "held old-held: case 7\n"
    code, out, _ = run(env, capsys, "prune", "--older-than", "90d", "--dry-run")
    assert code == 0 and "would delete old-1 " in out and "would delete: 1 recording(s)" in out
    assert env.cast("old-1").exists()
    code, out, _ = run(env, capsys, "prune", "--older-than", "90d")
    assert code == 0 and "deleted old-1 " in out
    code, out, _ = run(env, capsys, "ls", "--json")
    assert sorted(json.loads(x)["session_id"] for x in out.splitlines()) == ["new-1", "old-held", "old-live"]
    code, out, _ = run(env, capsys, "ls", "--status", "pruned", "--json")
    assert [json.loads(x)["session_id"] for x in out.splitlines()] == ["old-1"]
    assert run(env, capsys, "release", "old-held")[0] == 0
    code, out, _ = run(env, capsys, "prune", "--older-than", "2026-01-01")
    assert code == 0
    with pytest.raises(SystemExit) as exit_:
        run(env, capsys, "prune", "--older-than", "soon")
    assert exit_.value.code == 2 and "argument --older-than: 'soon' is neither" in capsys.readouterr().err


def test_every_subcommand_has_help_and_is_documented() -> None:
    reference = (ROOT / "docs" / "recorder.md").read_text()
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subs.choices) == {"ls", "show", "play", "cat", "grep", "export", "verify", "watch", "prune",
                                 "hold", "release"}
    for name, sub in subs.choices.items():
        assert sub.description, f"recorder {name} has no help text"
        assert f"recorder {name}" in reference, f"recorder {name} is not in docs/recorder.md"
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"recorder {name} {action.option_strings} has no help"


PATTERNS = ["o", "lo w", "o$", "^h", "^$", "[^a-z]", "(?i)HELLO", r"\bw", r"\d", r"\t", ".*", "x*", r"o\s", "l+",
            "(?<=l)o", r"\Ah", r"d\Z", "w(?!o)", "$", r"\.", "(?s)o.h"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.text(alphabet="helo wrd1.\t", max_size=12), max_size=8), pattern=st.sampled_from(PATTERNS))
def test_grep_whole_file_search_equals_line_by_line(tmp_path: Path, lines: list[str], pattern: str) -> None:
    rows = [(i + 0.5, text.replace("\t", " ")) for i, text in enumerate(lines)]
    txt = tmp_path / "t.txt"
    txt.write_text("# header\n" + "".join(f"{t:.6f}\t{text}\n" for t, text in rows))
    rx = re.compile(pattern)
    assert list(search_transcript_file(rx, txt)) == list(matching_lines(rx, rows))
