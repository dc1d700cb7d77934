"""Many concurrent interactive shells: the bastion's memory per shell, and keystroke echo latency.

Each shell is its own SSH connection with a PTY (xterm, 80x24), as a person's
would be, opened by an asyncssh client in this process, with certificates of
several users. The benchmark

1. opens one probe shell and times keystroke -> echo on it, alone;
2. opens more shells, a batch at a time, until N are open and idle at the prompt;
3. times keystroke -> echo on the probe again, with the idle shells open;

and reads the daemon's VmRSS with no shell, with 1 and with N open.

    .venv/bin/python benchmarks/concurrent_shells.py [--sessions 1000] [--keystrokes 200] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import asyncssh
from _support import (
    Lab,
    cpu_seconds,
    median,
    ms,
    open_fds,
    percentile,
    raise_nofile,
    rss_kib,
    run_main,
    stop_on_signals,
    table,
)
from peers import Client, strip_ansi

PROBE_KEY = "z"  # a letter that neither the prompt nor the toolbar shows
# No cursor-position reports: this client cannot answer them (as in the e2e tests).
TERM_ENV: dict[str | bytes, str | bytes] = {"PROMPT_TOOLKIT_NO_CPR": "1"}
PROMPT_TIMEOUT = 30.0  # seconds from connect to a visible prompt
ECHO_TIMEOUT = 5.0
BUDGET = 290.0  # seconds for the whole run; the issue asks for about five minutes at most


class Terminal(asyncssh.SSHClientSession[bytes]):
    """The client side of one shell: collects output, or ignores it once the shell is idle."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.collect = True
        self.arrived = asyncio.Event()
        self.closed = False

    def data_received(self, data: bytes, datatype: Any) -> None:
        if self.collect:
            self.buffer += data
            self.arrived.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.arrived.set()

    def text(self) -> str:
        return strip_ansi(self.buffer.decode("utf-8", "replace"))

    def clear(self) -> None:
        self.buffer.clear()
        self.arrived.clear()

    async def wait_for(self, predicate: Callable[[Terminal], bool], timeout: float) -> None:
        """Wait until the collected output satisfies ``predicate``."""
        async with asyncio.timeout(timeout):
            while not predicate(self):
                if self.closed:
                    raise ConnectionError(f"the shell closed; its last output: {self.text()[-200:]!r}")
                self.arrived.clear()
                await self.arrived.wait()

    async def quiet(self, period: float) -> None:
        """Wait until no output has arrived for ``period`` seconds."""
        while True:
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), period)
            except TimeoutError:
                return


@dataclass
class Shell:
    """One open shell."""

    conn: asyncssh.SSHClientConnection
    chan: asyncssh.SSHClientChannel[bytes]
    term: Terminal


@dataclass
class Login:
    """A user's key, certificate and known_hosts, loaded once for many connections."""

    user: str
    key: asyncssh.SSHKey
    cert: asyncssh.SSHCertificate
    known_hosts: str

    @classmethod
    def of(cls, client: Client, user: str) -> Login:
        return cls(user, asyncssh.read_private_key(str(client.key)),
                   asyncssh.read_certificate(str(client.cert)), str(client.known_hosts))


async def open_shell(port: int, login: Login) -> Shell:
    """Connect, log in with the certificate, ask for a PTY and a shell, wait for the prompt."""
    conn = await asyncssh.connect(
        "127.0.0.1", port, username=login.user, client_keys=[(login.key, login.cert)],
        known_hosts=login.known_hosts, agent_path=None, config=[], connect_timeout=PROMPT_TIMEOUT)
    try:
        chan, session = await conn.create_session(Terminal, term_type="xterm", term_size=(80, 24),
                                                  env=TERM_ENV, encoding=None)
        term = cast(Terminal, session)
        prompt = f"{login.user}@"
        await term.wait_for(lambda t: prompt in t.text() and t.text().rstrip().endswith(">"), PROMPT_TIMEOUT)
    except BaseException:
        conn.abort()
        raise
    return Shell(conn, chan, term)


async def echo_latencies(shell: Shell, count: int, gap: float, budget: float) -> list[float]:
    """Type PROBE_KEY and erase it, up to ``count`` times; seconds from each keystroke to its echo.

    This process's own garbage collector is paused meanwhile: with a thousand
    connections open here, its pauses would otherwise be charged to the bastion.
    """
    term, latencies = shell.term, list[float]()
    deadline = time.monotonic() + budget
    gc.collect()
    gc.disable()
    try:
        while len(latencies) < count and time.monotonic() < deadline:
            await term.quiet(gap)
            term.clear()
            start = time.perf_counter()
            shell.chan.write(PROBE_KEY.encode())
            await term.wait_for(lambda t: PROBE_KEY in t.text(), ECHO_TIMEOUT)
            latencies.append(time.perf_counter() - start)
            term.clear()
            shell.chan.write(b"\x7f")  # backspace, so that the line never grows
            await term.wait_for(lambda t: len(t.buffer) > 0, ECHO_TIMEOUT)
    finally:
        gc.enable()
    return latencies


@dataclass
class Ramp:
    """The idle shells, and how opening them went."""

    shells: list[Shell] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    daemon_cpu: float = 0.0
    stopped: str = ""


async def ramp_up(port: int, logins: list[Login], want: int, batch: int, budget: float,
                  max_failures: int) -> Ramp:
    """Open ``want`` idle shells, ``batch`` at a time, until done, too many failures or out of time."""
    ramp, start = Ramp(), time.monotonic()
    next_report = 100
    while len(ramp.shells) < want:
        failed = sum(ramp.failures.values())
        if time.monotonic() - start > budget:
            ramp.stopped = f"the {budget:.0f} s allowed for opening shells ran out"
            break
        if failed >= max_failures:
            ramp.stopped = f"{failed} connections failed"
            break
        size = min(batch, want - len(ramp.shells))
        offset = len(ramp.shells) + failed
        attempts = [open_shell(port, logins[(offset + i) % len(logins)]) for i in range(size)]
        for result in await asyncio.gather(*attempts, return_exceptions=True):
            if isinstance(result, Shell):
                result.term.collect = False
                result.term.clear()
                ramp.shells.append(result)
            else:
                ramp.failures[f"{type(result).__name__}: {result}"[:160]] += 1
        if len(ramp.shells) >= next_report or len(ramp.shells) == want:
            elapsed = time.monotonic() - start
            print(f"  {len(ramp.shells)}/{want} idle shells open, {elapsed:.1f} s, "
                  f"{len(ramp.shells) / elapsed:.0f}/s, {sum(ramp.failures.values())} failed", flush=True)
            next_report = (len(ramp.shells) // 100 + 1) * 100
    ramp.seconds = time.monotonic() - start
    return ramp


async def close_all(shells: list[Shell], timeout: float) -> None:
    """Close every connection; abort whatever has not closed in time."""
    for shell in shells:
        shell.conn.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(s.conn.wait_closed() for s in shells), return_exceptions=True)
    for shell in shells:
        shell.conn.abort()


@dataclass
class Figures:
    """What the run measured."""

    rss_empty: int = 0  # KiB
    rss_one: int = 0
    rss_many: int = 0
    open_shells: int = 0
    alive_after: int = 0
    fds: int = 0
    idle_cpu: float = 0.0  # fraction of one core
    alone: list[float] = field(default_factory=list)
    many: list[float] = field(default_factory=list)
    ramp: Ramp = field(default_factory=Ramp)


async def measure(lab: Lab, args: argparse.Namespace, port: int, pid: int, logins: list[Login]) -> Figures:
    """The three phases."""
    fig = Figures(rss_empty=rss_kib(pid))
    probe = await open_shell(port, logins[0])
    shells = [probe]
    try:
        await echo_latencies(probe, 10, args.gap, args.phase_budget)  # warm-up: first renders, caches
        await asyncio.sleep(1)
        fig.rss_one = rss_kib(pid)
        fig.alone = await echo_latencies(probe, args.keystrokes, args.gap, args.phase_budget)
        print(f"1 shell: echo p50 {ms(median(fig.alone))} ms, p99 {ms(percentile(fig.alone, 99))} ms", flush=True)

        print(f"opening {args.sessions - 1} idle shells, {args.batch} at a time", flush=True)
        profiler = lab.profile(pid, args.profile / "ramp.txt") if args.profile else None
        cpu = cpu_seconds(pid)
        fig.ramp = await ramp_up(port, logins, args.sessions - 1, args.batch, args.ramp_budget, args.max_failures)
        fig.ramp.daemon_cpu = cpu_seconds(pid) - cpu
        if profiler:
            profiler.stop()
        shells.extend(fig.ramp.shells)
        fig.open_shells = len(shells)

        await asyncio.sleep(args.settle)
        fig.rss_many, fig.fds = rss_kib(pid), open_fds(pid)
        profiler = lab.profile(pid, args.profile / "open.txt") if args.profile else None
        cpu, wall = cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(args.idle_window)
        fig.idle_cpu = (cpu_seconds(pid) - cpu) / (time.monotonic() - wall)
        fig.many = await echo_latencies(probe, args.keystrokes, args.gap, args.phase_budget)
        if profiler:
            profiler.stop()
        fig.alive_after = sum(not s.term.closed for s in shells)
        print(f"{fig.open_shells} shells: echo p50 {ms(median(fig.many))} ms, "
              f"p99 {ms(percentile(fig.many, 99))} ms", flush=True)
    finally:
        print(f"closing {len(shells)} connections", flush=True)
        await close_all(shells, 30)
    return fig


def report(args: argparse.Namespace, fig: Figures) -> None:
    """Print the daemon's figures, the echo latencies and the goal's ratio."""
    ramp, opened = fig.ramp, len(fig.ramp.shells)
    per_shell = f"{(fig.rss_many - fig.rss_one) / opened:.0f} KiB" if opened else "-"
    print()
    print(table(("bastion daemon", "value"), [
        ("shells open (asked for)", f"{fig.open_shells} ({args.sessions})"),
        ("shells still open after measuring", fig.alive_after),
        ("VmRSS, no shell", f"{fig.rss_empty / 1024:.1f} MiB"),
        ("VmRSS, 1 shell", f"{fig.rss_one / 1024:.1f} MiB"),
        (f"VmRSS, {fig.open_shells} shells", f"{fig.rss_many / 1024:.1f} MiB"),
        ("RSS per added shell", per_shell),
        ("open file descriptors", fig.fds),
        ("shells opened per second", f"{opened / ramp.seconds:.1f}" if opened else "-"),
        ("daemon CPU per shell opened", f"{ramp.daemon_cpu / opened * 1000:.1f} ms" if opened else "-"),
        (f"daemon CPU, {fig.open_shells} shells idle", f"{fig.idle_cpu * 100:.1f} % of a core"),
    ]))
    if ramp.stopped or ramp.failures:
        print(f"\nnot every shell opened: {ramp.stopped or 'some connections failed'}")
        for reason, count in ramp.failures.most_common(5):
            print(f"  {count} x {reason}")

    def row(label: str, xs: list[float]) -> tuple[object, ...]:
        return (label, len(xs), ms(median(xs)), ms(percentile(xs, 90)), ms(percentile(xs, 99)), ms(max(xs)))

    print()
    print(table(("keystroke -> echo", "samples", "p50 ms", "p90 ms", "p99 ms", "max ms"),
                [row("1 shell open", fig.alone), row(f"{fig.open_shells} shells open", fig.many)]))
    p99_ratio = percentile(fig.many, 99) / percentile(fig.alone, 99)
    print(f"\np99({fig.open_shells}) / p99(1) = {p99_ratio:.2f}x (goal: at most 2x); "
          f"p50({fig.open_shells}) / p50(1) = {median(fig.many) / median(fig.alone):.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000, help="shells open at once, probe included (1000)")
    parser.add_argument("--keystrokes", type=int, default=200, help="echo samples per phase (200)")
    parser.add_argument("--users", type=int, default=10, help="distinct users the shells belong to (10)")
    parser.add_argument("--batch", type=int, default=25, help="connections opened concurrently (25)")
    parser.add_argument("--gap", type=float, default=0.05, help="quiet seconds before each keystroke (0.05)")
    parser.add_argument("--ramp-budget", type=float, default=120.0, help="seconds allowed for opening shells")
    parser.add_argument("--phase-budget", type=float, default=45.0, help="seconds allowed per echo phase")
    parser.add_argument("--max-failures", type=int, default=50, help="stop opening after this many failures")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between opening and measuring")
    parser.add_argument("--idle-window", type=float, default=10.0, help="seconds the idle CPU is measured over")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy the daemon into DIR/ramp.txt and DIR/open.txt (collapsed stacks)")
    args = parser.parse_args()
    if args.sessions < 1 or args.users < 1 or args.batch < 1:
        parser.error("--sessions, --users and --batch must be at least 1")
    stop_on_signals(BUDGET)
    nofile = raise_nofile()  # the daemon, started below, inherits it
    need = args.sessions * 4 + 200  # per shell: a socket and a pipe pair in the daemon
    if nofile < need:
        print(f"warning: open-file limit {nofile} < {need}; shells may fail with EMFILE", file=sys.stderr)
    limits = (f"{{sessions_per_user: {args.sessions + 10}, connections_per_source: {args.sessions + 50}, "
              "login_timeout: 120s}")
    with Lab() as lab:
        print("starting: identity provider, bastion", flush=True)
        bastion = lab.bastion(limits=limits)
        assert bastion.proc is not None
        users = [f"user{i:02d}" for i in range(args.users)]
        logins = [Login.of(lab.client(bastion, user, ["dev"]), user) for user in users]
        figures = asyncio.run(measure(lab, args, bastion.ssh_port, bastion.proc.pid, logins))
    report(args, figures)
    return 0


if __name__ == "__main__":
    run_main(main)
