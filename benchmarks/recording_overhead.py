"""Throughput of a large output through a recorded session, against the same session unrecorded.

The bastion has no command that prints a lot, and must not grow one for a benchmark.
So this process runs the real daemon itself (``bastion.daemon.Daemon`` on a config
made by ``bastion init``), and registers one extra shell command, in this process only:
``flood BYTES``. It streams coloured log lines in 32 KiB chunks through the session's
``BastionSession.send()``, the single exit point of session output that a target's
console output will take, honouring the channel's flow control (asyncssh's
pause_writing/resume_writing). That is more faithful than returning the text as the
command's ``Result``: ``_run_exec`` would then send it in one piece, recorded as one
event of hundreds of megabytes.

The client is the real OpenSSH ``ssh`` with a certificate from the real exchange,
writing to /dev/null. "Recording off" replaces ``BastionSession._start_recording``
with a no-op in this process. Runs alternate on, off, on, off, ... after a warm-up
of each. The daemon's sidecars (transcript and keyframes) are left lazy here: built at
close they would render each 200 MB cast in a background thread for minutes and slow
down every later run, recorded or not; ``--sidecars`` measures that effect on its own.

    .venv/bin/python benchmarks/recording_overhead.py [--megabytes 200] [--runs 5] [--pty] [--sidecars]
        [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _recording_support import Content, mb, summarize_profile
from _support import Lab, client_env, median, run_main, ssh_command, stop_on_signals, table
from peers import Bastion, Client, bastion_cli

from bastion.config import load_config
from bastion.daemon import Daemon
from bastion.session import BastionSession
from recorders import asciicast
from shell.commands import Args, Result, command
from shell.context import ShellContext

BUDGET = 295.0  # seconds for the whole run
PAYLOAD_VARIETY = 8 << 20  # distinct bytes of log lines, cycled through
WARMUP_BYTES = 8_000_000
BUCKETS = (("recorders/tap.py", "recorders/tap.py (SessionTap)"),
           ("recorders/asciicast.py", "recorders/asciicast.py (Writer)"),
           ("asyncssh/", "asyncssh (SSH framing, crypto)"),
           ("bastion/session.py", "bastion/session.py"))


# -- the benchmark-only command --------------------------------------------------------------


@dataclass
class Flood:
    """What the ``flood`` command streams, and what it measured last."""

    chunks: list[bytes] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # first send -> write buffer drained, per run
    sent: list[int] = field(default_factory=list)


FLOOD = Flood()


@command("flood", "flood BYTES", "Benchmark only: stream BYTES of log lines through the session.",
         min_args=1, max_args=1)
async def _flood(ctx: ShellContext, args: Args) -> Result:
    session: BastionSession = ctx._session  # type: ignore[attr-defined]  # SessionContext's own session
    chan = session.chan
    assert chan is not None
    writable = asyncio.Event()
    writable.set()
    # asyncssh calls these on the session when the channel's buffer passes its high and low water marks.
    session.pause_writing = writable.clear  # type: ignore[method-assign]
    session.resume_writing = writable.set  # type: ignore[method-assign]
    total, sent, i = int(args.positional[0]), 0, 0
    chunks = FLOOD.chunks
    start = time.perf_counter()
    while sent < total:
        chunk = chunks[i % len(chunks)][: total - sent]
        session.send(chunk)
        sent += len(chunk)
        i += 1
        if not writable.is_set():
            await writable.wait()
        if chan.is_closing():
            return Result(1, error="the channel closed")
    while chan.get_write_buffer_size() > 0 and not chan.is_closing():
        await asyncio.sleep(0.001)
    FLOOD.seconds.append(time.perf_counter() - start)
    FLOOD.sent.append(sent)
    return Result()


# -- measuring ----------------------------------------------------------------------------------


@dataclass
class Mode:
    """Recording on or off, and its runs."""

    name: str
    recording: bool
    stream: list[float] = field(default_factory=list)  # seconds the daemon streamed (flood)
    wall: list[float] = field(default_factory=list)  # seconds from ssh spawn to exit
    cpu: list[float] = field(default_factory=list)  # CPU seconds of this process (the daemon) per run
    seal: list[float] = field(default_factory=list)  # seconds from the session's end to the recording sealed
    cast_bytes: list[int] = field(default_factory=list)
    stall: list[float] = field(default_factory=list)  # the longest wait for room in the worker's pipe, per run
    waited: list[float] = field(default_factory=list)  # seconds senders waited for the worker in all, per run

    def mbps(self, payload: int) -> list[float]:
        return [payload / 1e6 / s for s in self.stream]


class FlushTimer:
    """Times Writer.flush (the daemon calls it on the event loop, every second): the longest stall."""

    def __init__(self) -> None:
        self.original = asciicast.Writer.flush
        self.longest = 0.0
        self.count = 0
        timer = self

        def flush(writer: asciicast.Writer) -> None:
            start = time.perf_counter()
            timer.original(writer)
            timer.longest = max(timer.longest, time.perf_counter() - start)
            timer.count += 1

        asciicast.Writer.flush = flush  # type: ignore[method-assign,assignment]

    def take(self) -> float:
        longest, self.longest = self.longest, 0.0
        return longest

    def restore(self) -> None:
        asciicast.Writer.flush = self.original  # type: ignore[method-assign]


class Bench:
    """The daemon in this process, one client, and the two modes."""

    def __init__(self, lab: Lab, daemon: Daemon, client: Client, argv: list[str]) -> None:
        self.lab = lab
        self.daemon = daemon
        self.client = client
        self.argv = argv
        self.original_start = BastionSession._start_recording
        self.procs: set[asyncio.subprocess.Process] = set()
        self.flush_timer = FlushTimer()

    def set_recording(self, on: bool) -> None:
        def unrecorded(session: BastionSession, mode: str) -> None:
            pass

        BastionSession._start_recording = self.original_start if on else unrecorded  # type: ignore[method-assign,assignment]

    async def run(self, mode: Mode, nbytes: int, *, keep: bool = True, capture: bool = False,
                  delete: bool = True) -> bytes:
        """One ssh run of ``flood nbytes``; appends its figures to ``mode`` when ``keep``."""
        runtime = self.daemon.runtime
        assert runtime is not None and runtime.recordings is not None
        self.set_recording(mode.recording)
        before = set(r.session_id for r in runtime.recordings.list())
        self.flush_timer.take()
        waited = self.worker_stats()
        cpu = time.process_time()
        start = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *self.argv, "flood", str(nbytes), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=client_env(self.client.home))
        self.procs.add(proc)
        try:
            out, err = await proc.communicate()
        finally:
            self.procs.discard(proc)
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu
        if proc.returncode != 0:
            raise RuntimeError(f"ssh exited {proc.returncode}: {err.decode(errors='replace').strip()}")
        ended = time.perf_counter()
        while runtime.tasks:  # the recording is hashed and signed after the session: let it finish
            await asyncio.sleep(0.005)
        seal = time.perf_counter() - ended
        new = [r for r in runtime.recordings.list() if r.session_id not in before]
        if mode.recording and (len(new) != 1 or new[0].status != "closed" or (new[0].bytes or 0) < nbytes):
            raise RuntimeError(f"expected one closed recording of at least {nbytes} bytes, found {new}")
        if not mode.recording and new:
            raise RuntimeError(f"recording off, yet a recording was made: {new}")
        if keep:
            mode.stream.append(FLOOD.seconds[-1])
            mode.wall.append(wall)
            mode.cpu.append(cpu)
            if mode.recording:
                mode.seal.append(seal)
                mode.cast_bytes.append(int(new[0].bytes or 0))
                after = self.worker_stats()
                mode.stall.append(max(self.flush_timer.take(), after["longest_wait"]))
                mode.waited.append(after["waited"] - waited["waited"])
        if delete:  # keep the disk small: 3 x 200 MB casts otherwise
            for info in new:
                runtime.recordings.path(info).unlink(missing_ok=True)
        return out

    def worker_stats(self) -> dict[str, float]:
        """How long the event loop waited for room in the recorder worker's pipe (resets the longest)."""
        runtime = self.daemon.runtime
        recorder = runtime.recordings.recorder if runtime and runtime.recordings else None
        if recorder is None:
            return {"waits": 0, "waited": 0.0, "longest_wait": 0.0}
        stats = recorder.stats()
        if recorder._link is not None:
            recorder._link.longest_wait = 0.0
        return stats

    def kill_clients(self) -> None:
        for proc in list(self.procs):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()


async def start_daemon(lab: Lab, limits: str) -> tuple[Daemon, Client]:
    """``bastion init`` + the test config, the daemon in this process, and alice's certificate."""
    issuer = lab.issuer()
    directory = lab.tmp / "bastion"
    result = bastion_cli("init", "--dir", str(directory), "--oidc-issuer", issuer.issuer)
    if result.returncode != 0:
        raise RuntimeError(f"bastion init failed: {result.stderr}")
    bastion = Bastion(directory, issuer.issuer)
    bastion.write_config(limits=limits)
    daemon = Daemon(load_config(bastion.config))
    await daemon.start()
    assert daemon.runtime is not None
    bastion.ssh_port, bastion.http_port = daemon.runtime.ssh_port, daemon.http_port
    client = Client(lab.tmp / "homes" / "alice", bastion)
    client.make_key()
    await asyncio.to_thread(client.certify, issuer, "alice", ["dev"])  # HTTP to the daemon on this loop
    return daemon, client


def payload(pty: bool) -> list[bytes]:
    """Distinct 32 KiB chunks of coloured log lines: CRLF as a PTY makes them, LF without one."""
    chunks = [c.encode() for c in Content(seed=7).log_dump(PAYLOAD_VARIETY)]
    return chunks if pty else [c.replace(b"\r\n", b"\n") for c in chunks]


async def measure(lab: Lab, args: argparse.Namespace) -> tuple[Bench, Mode, Mode, dict[str, Any]]:
    """Warm-up, then the interleaved runs; then the extras (sidecars, profiles) when asked."""
    FLOOD.chunks = payload(args.pty)
    asyncio.get_running_loop().set_exception_handler(_quiet_interrupts)
    daemon, client = await start_daemon(lab, "{sessions_per_user: 10}")
    assert daemon.runtime is not None and daemon.runtime.recordings is not None
    store = daemon.runtime.recordings
    store.sidecars_at_close = "lazy"
    extra: dict[str, Any] = {}
    argv = ssh_command(daemon.runtime.ssh_port, client.key, client.known_hosts, "alice")
    if args.pty:
        argv = [argv[0], "-tt", *argv[1:]]
    bench = Bench(lab, daemon, client, argv)
    on, off = Mode("recording on", True), Mode("recording off", False)
    nbytes = args.megabytes * 1_000_000
    try:
        for mode in (on, off):
            out = await bench.run(mode, WARMUP_BYTES, keep=False, capture=True)
            if len(out) < WARMUP_BYTES:  # the PTY's ONLCR adds CRs; without one the bytes are exact
                raise RuntimeError(f"{mode.name}: the client received {len(out)} of {WARMUP_BYTES} bytes")
        print(f"measuring: {args.runs} runs each of {args.megabytes} MB, interleaved on/off", flush=True)
        for i in range(args.runs):
            for mode in (on, off) if i % 2 == 0 else (off, on):
                await bench.run(mode, nbytes)
                print(f"  {mode.name:<14} {nbytes / 1e6 / mode.stream[-1]:7.1f} MB/s "
                      f"(stream {mode.stream[-1]:.2f} s, ssh {mode.wall[-1]:.2f} s)", flush=True)
        batch = int(median(on.mbps(nbytes)) * 1e6 * daemon.config.recording.flush_interval)
        extra["alone"] = (recording_alone(lab.tmp / "alone.cast", nbytes, batch, onlcr=not args.pty), batch,
                          recording_alone(lab.tmp / "alone.cast", nbytes, 1 << 20, onlcr=not args.pty))
        if args.profile:
            extra["profiles"] = await profile(bench, args.profile, nbytes)
        if args.sidecars:  # last: the background render it starts outlives the run
            extra["sidecars"] = await sidecar_contention(bench, store, nbytes)
    finally:
        bench.kill_clients()
        bench.set_recording(True)
        bench.flush_timer.restore()
        if store.sidecars_at_close != "lazy":
            store.sidecars_at_close = "lazy"
        await daemon.stop()
    return bench, on, off, extra


def recording_alone(path: Path, nbytes: int, batch: int, *, onlcr: bool) -> float:
    """MB/s of the recording path alone (SessionTap + Writer to a file, no SSH), flushed every ``batch`` bytes."""
    from recorders.tap import SessionTap

    with path.open("wb") as f:
        writer = asciicast.Writer(f, asciicast.Header(width=80, height=24))
        tap = SessionTap(writer, onlcr=onlcr)
        chunks, sent, since, i = FLOOD.chunks, 0, 0, 0
        start = time.perf_counter()
        while sent < nbytes:
            chunk = chunks[i % len(chunks)]
            tap.output(chunk)
            sent += len(chunk)
            since += len(chunk)
            i += 1
            if since >= batch:
                writer.flush()
                since = 0
        tap.close()
        seconds = time.perf_counter() - start
    path.unlink()
    return sent / 1e6 / seconds


def _quiet_interrupts(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Ctrl-C or the time budget can land inside a session's task: that is no error worth a traceback."""
    if isinstance(context.get("exception"), KeyboardInterrupt):
        return
    loop.default_exception_handler(context)


async def sidecar_contention(bench: Bench, store: Any, nbytes: int) -> dict[str, float]:
    """Unrecorded throughput while the previous session's sidecars build in the daemon (its default)."""
    import threading

    print("sidecars: one recorded run with sidecars built in the background (the daemon's default), "
          "then an unrecorded run while they build", flush=True)
    store.sidecars_at_close = "background"
    await bench.run(Mode("scratch", True), nbytes, keep=False, delete=False)  # its cast is rendered next
    builders = [t for t in threading.enumerate() if t.name.startswith("sidecars-")]
    during = Mode("off, during sidecar build", False)
    await bench.run(during, nbytes)
    still = any(t.is_alive() for t in builders)
    store.sidecars_at_close = "lazy"
    # Daemon.stop() would wait 30 s for this render; the thread is a daemon thread and dies with us.
    store._builders = []
    return {"mbps": nbytes / 1e6 / during.stream[0], "builder_alive": float(still)}


async def profile(bench: Bench, directory: Path, nbytes: int) -> dict[str, Path]:
    """py-spy this process during one recorded and one unrecorded run."""
    files = {}
    for name, on in (("on", True), ("off", False)):
        path = directory / f"recording_{name}.txt"
        profiler = bench.lab.profile(os.getpid(), path)
        await asyncio.sleep(0.5)  # py-spy attaches
        await bench.run(Mode(name, on), nbytes, keep=False)
        await asyncio.to_thread(profiler.stop)
        files[name] = path
    return files


# -- reporting -----------------------------------------------------------------------------------


def report(args: argparse.Namespace, on: Mode, off: Mode, extra: dict[str, Any]) -> None:
    """The side-by-side table and the ratio of medians."""
    nbytes = args.megabytes * 1_000_000

    def row(mode: Mode) -> tuple[object, ...]:
        rates = mode.mbps(nbytes)
        return (mode.name, len(rates), f"{median(rates):.1f}", f"{min(rates):.1f}", f"{max(rates):.1f}",
                f"{median([nbytes / 1e6 / w for w in mode.wall]):.1f}",
                f"{median([c / s for c, s in zip(mode.cpu, mode.wall, strict=True)]) * 100:.0f}",
                f"{median(mode.seal):.2f}" if mode.seal else "-",
                mb(median(mode.cast_bytes)) if mode.cast_bytes else "-")

    print()
    print(f"{args.megabytes} MB of log lines through `ssh {'-tt ' if args.pty else ''}bastion flood`, "
          f"32 KiB per send(), OpenSSH client to /dev/null")
    print(table(("mode", "runs", "MB/s median", "min", "max", "MB/s ssh e2e", "daemon CPU %", "seal s",
                 "cast MB"), [row(on), row(off)]))
    ratio = median(on.mbps(nbytes)) / median(off.mbps(nbytes))
    e2e = median([nbytes / w for w in on.wall]) / median([nbytes / w for w in off.wall])
    print(f"\nthroughput on / off = {ratio:.2f} (goal: at least 0.9); ssh end to end: {e2e:.2f}")
    alone, batch, small = extra["alone"]
    off_rate = median(off.mbps(nbytes))
    print(f"longest stall of the event loop on recording (a Writer.flush, or waiting for room in the worker's "
          f"pipe), median of runs: {median(on.stall) * 1000:.0f} ms; waiting in all, median: "
          f"{median(on.waited) * 1000:.0f} ms per run")
    print(f"recording path alone (SessionTap + Writer to a file, no SSH), flushed every {batch / 1e6:.0f} MB as the "
          f"1 s flusher does at the recorded rate: {alone:.1f} MB/s; SSH (off) and that on one thread would give "
          f"1 / (1/{off_rate:.0f} + 1/{alone:.0f}) = {1 / (1 / off_rate + 1 / alone):.0f} MB/s")
    print(f"what-if, the same flushed every 1 MB: {small:.1f} MB/s; on one thread with SSH: "
          f"{1 / (1 / off_rate + 1 / small):.0f} MB/s = {1 / (1 / off_rate + 1 / small) / off_rate:.2f} of off")
    if "sidecars" in extra:
        s = extra["sidecars"]
        print(f"recording off while a {args.megabytes} MB cast's sidecars build in the daemon (its default): "
              f"{s['mbps']:.1f} MB/s = {s['mbps'] / median(off.mbps(nbytes)):.2f} of off"
              f"{' (the builder was still running after)' if s['builder_alive'] else ''}")
    for name, path in extra.get("profiles", {}).items():
        print(f"\nprofile, recording {name} (py-spy, this process: daemon + benchmark), % of samples:")
        print(table(("where", "%", "kind"), summarize_profile(path, BUCKETS)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=200, help="output per run, in MB (200)")
    parser.add_argument("--runs", type=int, default=5, help="measured runs per mode, interleaved (5)")
    parser.add_argument("--pty", action="store_true", help="ask for a PTY (ssh -tt), as an interactive user would")
    parser.add_argument("--sidecars", action="store_true",
                        help="also measure an unrecorded run while a cast's sidecars build in the background")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy one recorded and one unrecorded run into DIR and summarise them")
    args = parser.parse_args()
    if args.runs < 1 or args.megabytes < 1:
        parser.error("--runs and --megabytes must be at least 1")
    if shutil.which("ssh") is None:
        parser.error("needs the OpenSSH client (Debian: openssh-client)")
    stop_on_signals(BUDGET)
    with Lab() as lab:
        print("starting: identity provider, bastion daemon in this process", flush=True)
        _, on, off, extra = asyncio.run(measure(lab, args))
    report(args, on, off, extra)
    return 0


if __name__ == "__main__":
    run_main(main)
