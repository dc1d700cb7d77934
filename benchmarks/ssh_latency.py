"""Keystroke round trip through the bastion against ``ssh -J`` through an OpenSSH jump host (issue 6, Performance).

Every path ends at the same target sshd (web-1) and runs the real OpenSSH
client in a PTY of its own, 80x24:

- bastion: ``ssh -tt bastion``, then ``connect web-1`` typed at its prompt: the
  bastion's own PTY relay (recorded, keystroke by keystroke);
- bastion -J: ``ssh -tt -J bastion web-1``, when the bastion accepts it (probed
  first, skipped with the reason when not);
- OpenSSH -J: ``ssh -tt -J jump target``, the jump host being the same sshd
  binary on another port with ``AllowTcpForwarding yes``;
- direct: ``ssh -tt target``, for reference.

Once the remote shell runs ``stty raw -echo; exec cat``, one byte is written to
the PTY and timed until cat's copy comes back. Keystrokes are ``--gap`` apart,
as a person types; after a warm-up, the paths take turns in blocks of
``--block`` keystrokes until each has ``--samples``.

The CPU time of the bastion daemon and of its recorder worker is counted
during each path's blocks (per keystroke in the table); ``--profile DIR`` then
samples the daemon with py-spy during more keystrokes on each bastion path and
sorts the samples by where they were taken.

``.venv/bin/python benchmarks/ssh_latency.py [--samples 400] [--block 25] [--gap 0.02] [--profile DIR]``
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pexpect
from _recording_support import summarize_profile
from _ssh_support import TARGET, SshLab, live_children, ssh_lab, thread_cpu_seconds, where_time_goes
from _support import Lab, median, ms, percentile, run_main, stop_on_signals, table
from peers import strip_ansi

BUDGET = 240.0  # seconds for the whole run, then everything is stopped
READY = "cat-is-ready"
START_CAT = f"stty raw -echo; echo {READY[:4]}''{READY[4:]}; exec cat\r"  # the echo of the line is not READY
ROUND_TRIP_TIMEOUT = 5.0
SHELL_PROMPT = re.compile(r"@.*[#$] $")  # the target's shell, e.g. root@vm:~#
PROFILED_KEYSTROKES = 2000  # about 2 s of the daemon's CPU, 500 samples
PROFILED_GAP = 0.005
# Walking each sample from its leaf outwards, the first frame that matches decides (see where_time_goes).
CATEGORIES = (
    ("ciphers + MAC (asyncssh/crypto, encryption.py, mac.py)", r"asyncssh/(crypto/|encryption\.py|mac\.py)"),
    ("recording (recorders/)", r"/recorders/"),
    ("audit (bastion/audit.py)", r"bastion/audit\.py"),
    ("session, relay (bastion/session.py, session_ssh.py, proxies/ssh.py, proxyjump.py)",
     r"bastion/(session|session_ssh|proxyjump|proxies/ssh)\.py"),
    ("SSH packets, channels (rest of asyncssh)", r"asyncssh/"),
    ("socket I/O, event loop (asyncio, selectors)", r"asyncio/|selectors\.py"),
)


@dataclass
class Session:
    """One path's ssh in its PTY, with ``cat`` echoing on the far end; its round trips in seconds."""

    name: str
    command: str
    child: pexpect.spawn
    times: list[float] = field(default_factory=list)
    daemon_cpu: float = 0.0  # seconds the bastion daemon used during this path's blocks
    worker_cpu: float = 0.0  # and its recorder worker
    _next: int = 0

    def keystroke(self) -> float:
        """Write one byte, wait for it to come back; the seconds in between."""
        byte = bytes([ord("a") + self._next % 26])
        self._next += 1
        fd = self.child.child_fd
        start = time.perf_counter()
        os.write(fd, byte)
        got = b""
        while not got:
            ready, _, _ = select.select([fd], [], [], ROUND_TRIP_TIMEOUT)
            if not ready:
                raise RuntimeError(f"{self.name}: no echo of {byte!r} within {ROUND_TRIP_TIMEOUT:.0f} s")
            got = os.read(fd, 64)
        elapsed = time.perf_counter() - start
        if got != byte:
            raise RuntimeError(f"{self.name}: sent {byte!r}, got {got!r}")
        return elapsed


def open_session(lab: Lab, ssh: SshLab, name: str, args: list[str], connect: str | None = None) -> Session:
    """ssh in a PTY; optionally ``connect`` typed at the bastion's prompt; then cat on the remote shell."""
    command = ssh.ssh("-tt", *args)
    child = pexpect.spawn(command[0], command[1:], env=ssh.env(), dimensions=(24, 80), timeout=30)
    lab.callback(child.close, force=True)
    if connect is not None:
        expect(child, name, f"{ssh.alice.home.name}@")  # the bastion's prompt
        child.send(f"{connect}\r")
    expect(child, name, SHELL_PROMPT)  # typed earlier, a line could go to the bastion's prompt instead
    child.send(START_CAT)
    expect(child, name, READY)
    while True:  # whatever follows READY (a newline, a prompt redraw) is not a round trip
        try:
            child.read_nonblocking(4096, timeout=0.3)
        except pexpect.TIMEOUT:
            break
    return Session(name, " ".join(["ssh", "-tt", *args]) + (f", then `{connect}`" if connect else ""), child)


def expect(child: pexpect.spawn, name: str, text: str | re.Pattern[str]) -> None:
    """Read the terminal until ``text`` shows (a pattern: at the end), or fail with what it shows."""
    seen = ""
    deadline = time.monotonic() + 30
    while (text not in strip_ansi(seen)) if isinstance(text, str) else not text.search(strip_ansi(seen)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: no {text!r} within 30 s; the terminal shows:\n{strip_ansi(seen)[-1500:]}")
        try:
            seen += child.read_nonblocking(4096, timeout=0.2).decode(errors="replace")
        except pexpect.TIMEOUT:
            pass
        except pexpect.EOF:
            raise RuntimeError(f"{name}: ssh exited:\n{strip_ansi(seen)[-1500:]}") from None


def probe_jump_through_bastion(ssh: SshLab) -> str | None:
    """Why ``ssh -J bastion web-1`` does not work here (yet), or None when it does."""
    done = subprocess.run(ssh.ssh("-J", "bastion", TARGET, "echo", "jump-ok"), env=ssh.env(),
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    if done.returncode == 0 and "jump-ok" in done.stdout:
        return None
    return f"exit {done.returncode}: {' '.join(done.stderr.split())[:300]}"


def measure(sessions: list[Session], args: argparse.Namespace, bastion_pid: int) -> None:
    """Warm-up, then blocks of keystrokes, path after path, the starting path rotating."""
    for session in sessions:
        for _ in range(args.warmup):
            session.keystroke()
            time.sleep(args.gap)
    rounds = -(-args.samples // args.block)
    for r in range(rounds):
        for i in range(len(sessions)):
            session = sessions[(r + i) % len(sessions)]
            daemon, worker = thread_cpu_seconds(bastion_pid), worker_cpu(bastion_pid)
            for _ in range(min(args.block, args.samples - len(session.times))):
                time.sleep(args.gap)
                session.times.append(session.keystroke())
            session.daemon_cpu += thread_cpu_seconds(bastion_pid) - daemon
            session.worker_cpu += worker_cpu(bastion_pid) - worker
        if (r + 1) % 4 == 0 or r + 1 == rounds:
            print(f"  {min(len(s.times) for s in sessions)}/{args.samples} keystrokes per path", flush=True)


def worker_cpu(bastion_pid: int) -> float:
    """CPU seconds of the bastion's children: its recorder worker."""
    return sum(thread_cpu_seconds(child) for child in live_children(bastion_pid))


def profile(lab: Lab, sessions: list[Session], args: argparse.Namespace, bastion_pid: int) -> list[tuple[str, Path]]:
    """py-spy the bastion during more keystrokes on each of its paths (not part of the table)."""
    files = []
    for session in sessions:
        if not session.name.startswith("bastion"):
            continue
        output = args.profile / f"ssh_latency-{session.name.replace(' ', '_')}.txt"
        profiler = lab.profile(bastion_pid, output)
        time.sleep(0.5)  # py-spy attaches
        for _ in range(PROFILED_KEYSTROKES):
            time.sleep(PROFILED_GAP)
            session.keystroke()
        profiler.stop()
        files.append((session.name, output))
    return files


def report(sessions: list[Session], skipped: str | None, args: argparse.Namespace,
           profiles: list[tuple[str, Path]]) -> None:
    """p50/p90/p99 per path, the spread of block medians, and the p50 ratios against OpenSSH -J."""
    print(f"\nkeystroke -> echo through cat, {args.samples} per path after {args.warmup} warm-up, "
          f"blocks of {args.block}, {args.gap * 1000:.0f} ms apart; milliseconds")
    rows = []
    for s in sessions:
        blocks = [median(s.times[i:i + args.block]) for i in range(0, len(s.times), args.block)]
        rows.append((s.name, ms(percentile(s.times, 50)), ms(percentile(s.times, 90)), ms(percentile(s.times, 99)),
                     ms(max(s.times)), f"{ms(min(blocks))}-{ms(max(blocks))}", len(s.times),
                     f"{s.daemon_cpu / len(s.times) * 1e6:.0f}", f"{s.worker_cpu / len(s.times) * 1e6:.0f}"))
    print(table(("path", "p50", "p90", "p99", "max", "block p50s", "n", "daemon CPU us/key",
                 "recorder CPU us/key"), rows))
    print("\n" + "\n".join(f"  {s.name}: {s.command}" for s in sessions))
    base = next(s for s in sessions if s.name == "OpenSSH -J")
    for s in sessions:
        if s.name.startswith("bastion"):
            ratio = percentile(s.times, 50) / percentile(base.times, 50)
            print(f"{s.name} / OpenSSH -J, p50: {ratio:.2f}x (goal at most 1.5x); "
                  f"p99: {percentile(s.times, 99) / percentile(base.times, 99):.2f}x")
    if skipped:
        print(f"bastion -J not measured: ssh -J bastion {TARGET} does not work here ({skipped})")
    for name, path in profiles:
        print(f"\nwhere the bastion's CPU goes, {name}, {PROFILED_KEYSTROKES} keystrokes "
              f"{PROFILED_GAP * 1000:.0f} ms apart (py-spy, % of its non-idle samples; innermost match):")
        print(table(("category", "%"), where_time_goes(path, CATEGORIES)))
        print(table(("top leaf frames", "%", "kind"), summarize_profile(path, (), top=10)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=400, help="measured keystrokes per path (default 400)")
    parser.add_argument("--block", type=int, default=25, help="keystrokes per path before the next takes over (25)")
    parser.add_argument("--warmup", type=int, default=30, help="unmeasured keystrokes per path first (default 30)")
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between keystrokes (default 0.02)")
    parser.add_argument("--uvloop", action="store_true", help="run bastion serve with --event-loop uvloop")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help=f"then py-spy the bastion during {PROFILED_KEYSTROKES} more keystrokes per bastion path, "
                        f"{PROFILED_GAP * 1000:.0f} ms apart")
    parser.add_argument("--no-direct", action="store_true", help="leave out the direct ssh reference")
    parser.add_argument("--budget", type=float, default=BUDGET,
                        help=f"stop everything after this many seconds (default {BUDGET:.0f})")
    args = parser.parse_args()
    if args.samples < 1 or args.block < 1:
        parser.error("--samples and --block must be at least 1")
    if shutil.which("ssh") is None:
        parser.error("needs the OpenSSH client (Debian: openssh-client)")
    stop_on_signals(args.budget)
    with Lab() as lab:
        print("starting: identity provider, bastion serve, OpenSSH sshd (target web-1) and a jump sshd", flush=True)
        ssh = ssh_lab(lab, jump=True, uvloop=args.uvloop)
        skipped = probe_jump_through_bastion(ssh)
        sessions = [open_session(lab, ssh, "bastion connect", ["bastion"], connect=f"connect {TARGET}")]
        if skipped is None:
            sessions.append(open_session(lab, ssh, "bastion -J", ["-J", "bastion", TARGET]))
        sessions.append(open_session(lab, ssh, "OpenSSH -J", ["-J", "jump", "target"]))
        if not args.no_direct:
            sessions.append(open_session(lab, ssh, "direct", ["target"]))
        print(f"sessions open: {', '.join(s.name for s in sessions)}"
              + (f"; bastion -J skipped ({skipped})" if skipped else ""), flush=True)
        assert ssh.bastion.proc is not None
        measure(sessions, args, ssh.bastion.proc.pid)
        profiles = profile(lab, sessions, args, ssh.bastion.proc.pid) if args.profile else []
        report(sessions, skipped, args, profiles)
    return 0


if __name__ == "__main__":
    run_main(main)
