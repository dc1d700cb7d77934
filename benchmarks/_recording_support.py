"""What the recording benchmarks share: realistic terminal output, synthetic recordings, a fake TTY.

Synthetic recordings are written with the product's own :class:`recorders.asciicast.Writer`
and registered through :class:`recorders.store.RecordingStore` (hashed and signed as the
daemon would), on a state directory made by ``bastion init``. Their clock is a
:class:`FakeClock`, so a session of half an hour is written in a second.

The content imitates what a bastion records:

- interactive shells drawn the way prompt_toolkit draws them: a coloured prompt, a
  reverse-video bottom toolbar reached by cursor moves, each keystroke echoed between
  hide-cursor and show-cursor sequences, completion menus drawn below the line and erased,
  resizes and markers; the commands print tables, listings and short logs;
- large command outputs: coloured log dumps (journalctl, kubectl logs) arriving in
  32 KiB chunks, as they would from a target's SSH channel;
- a full-screen monitor (top-like) repainting with cursor addressing every two seconds.

Some lines are needles for ``recorder grep``: ``DROP TABLE`` typed in psql, and
"Out of memory" / "out of memory" in logs.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from _support import REPO
from peers import bastion_cli

from recorders.asciicast import Header, Writer
from recorders.store import RecordingStore, load_signing_key
from recorders.vt import Terminal, new_stream, render_screen

CHUNK = 32 * 1024  # bytes per output event of a large output: an SSH channel's packet
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")
TARGETS = ("web-1", "web-2", "db-1", "pg-prod", "k8s-prod", "build-3", None)
HOSTS = ("web-1", "web-2", "db-1", "api-7", "worker-3", "edge-2")
UNITS = ("nginx", "sshd", "kubelet", "postgres", "app", "cron", "containerd", "systemd", "kernel")
PATHS = ("/api/v1/orders", "/api/v1/users/{n}", "/healthz", "/static/app.{n}.js", "/login", "/metrics",
         "/api/v2/search?q=item{n}", "/admin/reports/{n}")
LEVELS = (("INFO", "\x1b[32m"), ("INFO", "\x1b[32m"), ("INFO", "\x1b[32m"), ("DEBUG", "\x1b[2m"),
          ("WARN", "\x1b[33m"), ("ERROR", "\x1b[1;31m"))
WORDS = ("request", "completed", "upstream", "timeout", "retry", "cache", "miss", "hit", "session", "token",
         "refreshed", "connection", "closed", "opened", "worker", "queue", "job", "scheduled", "latency",
         "backend", "pool", "exhausted", "checkpoint", "vacuum", "replica", "lag", "certificate", "rotated")
COMMANDS = ("ls -la --color=auto", "git status", "kubectl get pods -n payments", "df -h", "ps aux | head -40",
            "systemctl status nginx", "tail -n 50 /var/log/syslog", "cat /etc/os-release", "uptime",
            "docker ps", "psql -h db-1 orders", "sudo journalctl -u app -n 80", "free -m", "whoami", "targets",
            "connect pg-prod", "history | tail -20", "ss -tlnp", "du -sh /var/*", "vim /etc/nginx/nginx.conf")
NEEDLE_SQL = "DROP TABLE customers_archive;"
NEEDLE_OOM = ("Out of memory: Killed process {n} (java) total-vm:8123456kB",
              "worker {n}: allocation failed: out of memory")


class FakeClock:
    """A clock that moves only when told: recordings of minutes are written in milliseconds."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds


# -- terminal output ------------------------------------------------------------------


class Content:
    """Generates realistic terminal output from a seeded random source."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self._log_pool = [self._log_line(i) for i in range(4000)]

    def _log_line(self, i: int) -> str:
        rng = self.rng
        level, colour = rng.choice(LEVELS)
        unit = rng.choice(UNITS)
        stamp = f"2026-11-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:" \
                f"{rng.randint(0, 59):02d}.{rng.randint(0, 999999):06d}Z"
        if unit == "nginx":
            path = rng.choice(PATHS).format(n=rng.randint(1, 99999))
            msg = (f'10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)} - - "GET {path} '
                   f'HTTP/1.1" {rng.choice((200, 200, 200, 204, 301, 404, 500, 502))} {rng.randint(0, 90000)} '
                   f'"-" "Mozilla/5.0 (X11; Linux x86_64)" rt={rng.random():.3f}')
        else:
            msg = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14)))
            msg += f" id={rng.getrandbits(48):012x} took={rng.randint(1, 5000)}ms"
        return (f"\x1b[2m{stamp}\x1b[0m {rng.choice(HOSTS)} {unit}[{rng.randint(100, 65000)}]: "
                f"{colour}{level:<5}\x1b[0m {msg}\r\n")

    def log_dump(self, size: int) -> Iterator[str]:
        """About ``size`` bytes of coloured log lines, in CHUNK-sized pieces, with the odd needle."""
        rng, pool = self.rng, self._log_pool
        sent = 0
        while sent < size:
            lines = rng.choices(pool, k=max(1, CHUNK // 150))
            if rng.random() < 0.01:
                needle = rng.choice(NEEDLE_OOM).format(n=rng.randint(1000, 99999))
                lines[rng.randrange(len(lines))] = f"\x1b[1;31mkernel: {needle}\x1b[0m\r\n"
            text = "".join(lines)
            sent += len(text)
            yield text

    def table(self, rows: int) -> str:
        """A command's tabular output (kubectl get pods, ps, psql)."""
        rng = self.rng
        head = "\x1b[1mNAME                                 READY   STATUS    RESTARTS   AGE\x1b[0m\r\n"
        body = []
        for _ in range(rows):
            status = rng.choice(("\x1b[32mRunning\x1b[0m  ", "\x1b[32mRunning\x1b[0m  ", "\x1b[33mPending\x1b[0m  ",
                                 "\x1b[31mCrashLoop\x1b[0m"))
            body.append(f"{rng.choice(('api', 'worker', 'web', 'cron'))}-{rng.getrandbits(40):010x}-"
                        f"{rng.getrandbits(20):05x}          1/1     {status} {rng.randint(0, 9):<10} "
                        f"{rng.randint(1, 59)}m\r\n")
        return head + "".join(body)

    def listing(self, rows: int) -> str:
        """``ls -la --color``."""
        rng = self.rng
        out = [f"total {rng.randint(100, 9000)}\r\n"]
        for _ in range(rows):
            name = f"{rng.choice(WORDS)}_{rng.randint(1, 999)}"
            kind = rng.random()
            shown = (f"\x1b[01;34m{name}\x1b[0m" if kind < 0.3 else f"\x1b[01;32m{name}.sh\x1b[0m" if kind < 0.4
                     else f"{name}.{rng.choice(('log', 'conf', 'py', 'json', 'txt'))}")
            out.append(f"{'d' if kind < 0.3 else '-'}rw-r--r--  1 {rng.choice(USERS):<6} staff "
                       f"{rng.randint(0, 10**7):>9} Nov {rng.randint(1, 28):>2} "
                       f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d} {shown}\r\n")
        return "".join(out)

    def psql_result(self) -> str:
        """A psql result table."""
        rng = self.rng
        rows = [f" {i:>5} | {rng.choice(WORDS)}@example.com{' ' * 10} | {rng.randint(0, 99999):>8} | "
                f"2026-11-{rng.randint(1, 28):02d}\r\n" for i in range(rng.randint(3, 40))]
        return ("   id  | email                         |  balance | created\r\n"
                "-------+-------------------------------+----------+------------\r\n"
                + "".join(rows) + f"({len(rows)} rows)\r\n\r\n")

    def monitor_frame(self, width: int, height: int, tick: int) -> str:
        """One repaint of a top-like full-screen monitor: cursor addressing, colours, erase-to-end."""
        rng = self.rng
        out = [f"\x1b[H\x1b[1mtop - 14:{tick // 60 % 60:02d}:{tick % 60:02d} up 41 days,  3 users,  load "
               f"average: {rng.random() * 4:.2f}, {rng.random() * 4:.2f}, {rng.random() * 4:.2f}\x1b[0m\x1b[K\r\n",
               f"Tasks: \x1b[1m{rng.randint(200, 300)}\x1b[0m total, "
               f"\x1b[1m{rng.randint(1, 9)}\x1b[0m running\x1b[K\r\n",
               f"%Cpu(s): \x1b[1m{rng.random() * 60:5.1f}\x1b[0m us, {rng.random() * 9:4.1f} sy\x1b[K\r\n",
               "\x1b[K\r\n",
               "\x1b[7m    PID USER      PR  NI    VIRT    RES  %CPU  %MEM     TIME+ COMMAND" + " " * max(0, width - 69)
               + "\x1b[0m\r\n"]
        for row in range(5, height - 1):
            cpu = rng.random() * 100 / (row - 3)
            colour = "\x1b[1m" if cpu > 10 else ""
            out.append(f"\x1b[{row + 1};1H{colour}{rng.randint(1, 99999):>7} {rng.choice(USERS):<9} 20   0 "
                       f"{rng.randint(10**5, 10**7):>7} {rng.randint(10**3, 10**6):>6} {cpu:5.1f} "
                       f"{rng.random() * 10:5.1f} {rng.randint(0, 999):>5}:{rng.randint(0, 59):02d}."
                       f"{rng.randint(0, 99):02d} {rng.choice(UNITS)}\x1b[0m\x1b[K")
        return "".join(out)


# -- sessions -------------------------------------------------------------------------------


@dataclass
class Session:
    """Drives one Writer like a person at a prompt_toolkit shell, on a fake clock."""

    writer: Writer
    clock: FakeClock
    content: Content
    width: int = 100
    height: int = 30
    user: str = "alice"
    flush_every: int = 1 << 20
    _unflushed: int = field(default=0, init=False)

    @property
    def rng(self) -> random.Random:
        return self.content.rng

    def out(self, text: str, after: float = 0.0) -> None:
        """Output ``after`` seconds from now."""
        self.clock.advance(after)
        self.writer.output(text.encode())
        self._unflushed += len(text)
        if self._unflushed >= self.flush_every:
            self.writer.flush()
            self._unflushed = 0

    def typed(self, text: str, after: float = 0.0) -> None:
        """Keystrokes ``after`` seconds from now."""
        self.clock.advance(after)
        self.writer.input(text.encode())

    def toolbar(self) -> str:
        return (f"\x1b7\x1b[{self.height};1H\x1b[0;7m {self.user}@bastion | certificate valid "
                f"{self.rng.randint(1, 7)}h{self.rng.randint(0, 59):02d}m | F1 help \x1b[K\x1b[0m\x1b8")

    def prompt(self) -> None:
        self.out(f"\x1b[?2004h\x1b[?25l\x1b[?7l\x1b[0m\r\x1b[0;1;32m{self.user}\x1b[0;37m@\x1b[0;1;34mbastion"
                 f"\x1b[0m:\x1b[0;33m~\x1b[0m> {self.toolbar()}\x1b[?7h\x1b[?25h", after=0.01)

    def type_line(self, line: str) -> None:
        """Type ``line`` a key at a time, echoed as prompt_toolkit redraws it; completion menus now and then."""
        rng = self.rng
        for i, ch in enumerate(line):
            self.typed(ch, after=rng.uniform(0.05, 0.35))
            colour = 33 if i < line.find(" ") or " " not in line else 37
            self.out(f"\x1b[?25l\x1b[0;{colour}m{ch}\x1b[0m\x1b[?12l\x1b[?25h", after=0.002)
            if ch == " " and rng.random() < 0.3:
                self.typed("\t", after=0.4)
                items = [f"{rng.choice(WORDS)}-{rng.randint(1, 9)}" for _ in range(rng.randint(3, 8))]
                menu = "".join(f"\x1b[1B\x1b[{i + 10}G\x1b[0;30;46m {item:<18}\x1b[0m" for item in items)
                self.out(f"\x1b[?25l{menu}\x1b[{len(items)}A\x1b[{i + 12}G\x1b[?25h", after=0.003)
                self.out("\x1b[?25l\x1b[J\x1b[?25h", after=rng.uniform(0.3, 1.5))
        self.typed("\r", after=rng.uniform(0.1, 0.6))
        self.out("\x1b[?2004l\x1b[J\r\n", after=0.002)

    def command(self) -> None:
        """A prompt, a typed command, its output."""
        rng = self.rng
        self.prompt()
        cmd = rng.choice(COMMANDS)
        self.clock.advance(rng.uniform(0.5, 8.0))  # thinking
        self.type_line(cmd)
        if cmd.startswith("psql"):
            self.out("psql (16.4)\r\nType \"help\" for help.\r\n\r\n")
            for _ in range(rng.randint(1, 4)):
                self.out("orders=> ", after=0.05)
                sql = NEEDLE_SQL if rng.random() < 0.05 else (
                    f"SELECT id, email, balance, created FROM customers WHERE balance > {rng.randint(0, 999)} "
                    "ORDER BY created DESC LIMIT 40;")
                self.type_line(sql)
                self.out(self.content.psql_result() if not sql.startswith("DROP") else "DROP TABLE\r\n", after=0.05)
            self.out("orders=> ", after=0.05)
            self.type_line("\\q")
        elif cmd.startswith(("kubectl", "docker", "ps")):
            self.out(self.content.table(rng.randint(5, 40)), after=rng.uniform(0.05, 0.8))
        elif cmd.startswith(("ls", "du")):
            self.out(self.content.listing(rng.randint(5, 60)), after=0.02)
        elif cmd.startswith(("tail", "sudo journalctl", "history", "systemctl")):
            for chunk in self.content.log_dump(rng.randint(2000, 12000)):
                self.out(chunk, after=0.03)
        else:
            self.out(self.content.listing(rng.randint(1, 8)), after=0.02)
        if rng.random() < 0.03:
            cols, rows = rng.choice(((100, 30), (120, 40), (80, 24), (160, 48)))
            self.clock.advance(rng.uniform(0.5, 3))
            self.writer.resize(cols, rows)
            self.width, self.height = cols, rows
        if rng.random() < 0.05:
            self.writer.marker(f"connect {rng.choice(TARGETS[:-1])}: allow by dev-demo")

    def big_output(self, size: int, rate: float = 20e6) -> None:
        """A command whose output is ``size`` bytes, arriving at ``rate`` bytes per second."""
        rng = self.rng
        self.prompt()
        self.clock.advance(rng.uniform(1, 6))
        self.type_line(rng.choice(("sudo journalctl -u app --since today --no-pager",
                                   "kubectl logs -n payments deploy/api --since=24h", "cat /var/log/nginx/access.log",
                                   "zcat /var/log/syslog.2.gz")))
        for chunk in self.content.log_dump(size):
            self.out(chunk, after=len(chunk) / rate)

    def size(self) -> int:
        """Bytes of cast written so far (flushes the writer)."""
        self.writer.flush()
        self._unflushed = 0
        return int(self.writer.bytes_written)

    def mixed(self, size: int, *, dumps: tuple[float, float] = (0.5e6, 6e6)) -> None:
        """Commands, large outputs of ``dumps`` bytes and monitors, until the cast holds ``size`` bytes."""
        rng = self.rng
        while (written := self.size()) < size:
            r = rng.random()
            if r < 0.75:
                self.command()
            elif r < 0.93:
                self.big_output(max(100_000, min(int(rng.uniform(*dumps)), size - written)))
            else:
                self.monitor(rng.uniform(20, 90))

    def monitor(self, seconds: float) -> None:
        """A full-screen monitor repainting every two seconds for ``seconds``."""
        self.prompt()
        self.type_line("top -d 2")
        self.out("\x1b[?1049h\x1b[?1h\x1b=\x1b[H\x1b[2J", after=0.05)
        for tick in range(int(seconds / 2)):
            self.out(self.content.monitor_frame(self.width, self.height, tick), after=2.0 if tick else 0.05)
        self.typed("q", after=0.8)
        self.out(f"\x1b[{self.height};1H\x1b[K\x1b[?1l\x1b>\x1b[?1049l", after=0.01)


def new_state(directory: Path) -> Path:
    """A state directory made by ``bastion init`` (keys), with an audit store; returns it."""
    from bastion.audit import AuditStore

    result = bastion_cli("init", "--dir", str(directory), "--oidc-issuer", "http://127.0.0.1:9")
    if result.returncode != 0:
        raise RuntimeError(f"bastion init failed: {result.stderr}")
    state = directory / "state"
    AuditStore(state / "audit.db").close()
    return state


def writing_store(state: Path, clock: FakeClock) -> RecordingStore:
    """The store as the daemon opens it (signing key, sidecars left for later), on a fake clock."""
    import sqlite_utils

    return RecordingStore(state / "recordings", sqlite_utils.Database(state / "audit.db"),
                          signing_key=load_signing_key(state / "keys" / "audit_key"),
                          clock=time.time, monotonic=clock, sidecars_at_close="lazy")


def record(store: RecordingStore, clock: FakeClock, session_id: str, started: float, user: str,
           target: str | None, play: Callable[[Session], None], *, width: int = 100, height: int = 30,
           seed: int = 0) -> tuple[Path, int]:
    """Write one recording through the store: ``play`` drives the session. Returns (cast, bytes)."""
    header = Header(width=width, height=height, timestamp=int(started), idle_time_limit=2.0,
                    title=f"{user}@bastion (shell)", env={"TERM": "xterm-256color", "SHELL": "bastion"})
    recording = store.open(session_id, user=user, target=target, header=header, started=started)
    session = Session(recording.writer, clock, Content(seed), width, height, user)
    recording.writer.marker(f"session started: {user} (dev) from 127.0.0.1")
    play(session)
    recording.writer.marker("session ended")
    info = recording.close()
    return recording.path, int(info.bytes or 0)


# -- replay ---------------------------------------------------------------------------------


class FirstFrame(Exception):
    """Raised by :class:`FakeTty` at the player's first flush: the first frame is on screen."""


_RESIZE_SEQ = re.compile(r"\x1b\[8;(\d+);(\d+)t")


class FakeTty:
    """A terminal stand-in for the player: keeps what is written, stops it at the first flush."""

    encoding = "utf-8"

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.first_frame_at: float | None = None
        self._clock = clock

    def write(self, text: str) -> int:
        self.parts.append(text)
        self.size += len(text)
        return len(text)

    def flush(self) -> None:
        if self.first_frame_at is None:
            self.first_frame_at = self._clock()
            raise FirstFrame

    def isatty(self) -> bool:
        return True


def screen_of(parts: list[str], width: int, height: int) -> Terminal:
    """The screen a terminal of ``width`` x ``height`` shows after ``parts``; honours xterm resizes."""
    screen = Terminal(width, height)
    stream = new_stream(screen)
    for part in parts:
        pos = 0
        for m in _RESIZE_SEQ.finditer(part):
            stream.feed(part[pos:m.start()])
            screen.resize(lines=int(m[1]), columns=int(m[2]))
            pos = m.end()
        stream.feed(part[pos:])
    return screen


def same_screen(a: Terminal, b: Terminal) -> tuple[bool, str]:
    """Whether two screens are identical (cells, attributes, cursor, modes), and what differs if not."""
    if (a.columns, a.lines) != (b.columns, b.lines):
        return False, f"size {a.columns}x{a.lines} != {b.columns}x{b.lines}"
    if a.display != b.display:
        row = next(i for i, (x, y) in enumerate(zip(a.display, b.display, strict=True)) if x != y)
        return False, f"row {row}: {a.display[row]!r} != {b.display[row]!r}"
    if render_screen(a) != render_screen(b):
        return False, "same text, different attributes, cursor or modes"
    return True, f"identical {a.columns}x{a.lines} screens (text, attributes, cursor, modes)"


# -- processes ------------------------------------------------------------------------------


def recorder_cli(*args: str, profile: Path | None = None,
                 timeout: float = 600) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run the installed ``recorder`` console script, under py-spy into ``profile`` if given; (wall s, result)."""
    binary = Path(sys.executable).parent / "recorder"
    prefix: list[str] = []
    if profile is not None:
        spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
        if spy is None:
            raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
        profile.parent.mkdir(parents=True, exist_ok=True)
        prefix = [spy, "record", "--format", "raw", "--rate", "250", "--output", str(profile), "--"]
    start = time.perf_counter()
    result = subprocess.run([*prefix, str(binary), *args], capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL, cwd=REPO)
    return time.perf_counter() - start, result


def mb(n: float) -> str:
    """Bytes as MB (10^6), for tables."""
    return f"{n / 1e6:.1f}"


# -- profiles -------------------------------------------------------------------------------


def summarize_profile(path: Path, buckets: tuple[tuple[str, str], ...], top: int = 12) -> list[tuple[str, str, str]]:
    """From py-spy's collapsed stacks: the share of samples under each bucket, then the top leaf functions.

    ``buckets`` is (substring of a frame, label): a sample counts for a bucket when any frame matches.
    """
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaves[_short(frames[-1])] += n
        for label in {label for needle, label in buckets if any(needle in f for f in frames)}:
            inclusive[label] += n
    if not total:
        return []
    rows = [(f"under {k}", f"{v / total * 100:.1f}", "incl.") for k, v in inclusive.most_common()]
    rows += [(name, f"{v / total * 100:.1f}", "self") for name, v in leaves.most_common(top)]
    return rows


def _short(frame: str) -> str:
    # py-spy raw frames: "function (path/to/file.py:line)"
    name, _, where = frame.partition(" (")
    parts = Path(where.rsplit(":", 1)[0]).parts
    return f"{name} ({'/'.join(parts[-2:])})"
