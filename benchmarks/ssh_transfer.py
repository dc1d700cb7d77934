"""scp of 1 GiB through the bastion's SFTP gateway against scp direct to the same sshd (issue 6, Performance).

- Through the bastion: ``scp -F CFG big bastion:/web-1/DIR/up.bin``. OpenSSH's
  scp speaks SFTP to ``bastion serve``, whose gateway (bastion/transfer.py)
  hashes each chunk and relays it over its own SSH connection (a one-minute
  target-CA certificate) to the target's ``internal-sftp``: two encryption hops.
- Direct: ``scp -F CFG big target:DIR/up.bin``, a plain key, to the same sshd.

Uploads first, then downloads, each interleaved (bastion, direct, direct,
bastion, ...). Each run is timed from spawn to exit of scp, so its SSH login
is included (about 0.1-0.3 s). The sha256 of what arrived is checked after each
run, outside the timing, and the file removed. CPU seconds are counted for the
client (scp + ssh), the bastion (its process and its recorder worker) and the
target sshd (its finished sessions).

``--profile DIR`` adds one upload and one download through the bastion under
py-spy and sorts the samples by where they were taken.

``.venv/bin/python benchmarks/ssh_transfer.py [--megabytes 1024] [--runs 3] [--no-download] [--profile DIR]``
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from _recording_support import summarize_profile
from _ssh_support import (
    TARGET,
    SshLab,
    children_cpu_seconds,
    ssh_lab,
    tree_cpu_seconds,
    wait_no_children,
    where_time_goes,
)
from _support import Lab, median, run_main, stop_on_signals, table

MIB = 1024 * 1024
WARMUP_MIB = 16
BUDGET = 290.0  # seconds for the whole run, then everything is stopped
# Walking each sample from its leaf outwards, the first frame that matches decides (see where_time_goes).
CATEGORIES = (
    ("sha256 of the file (transfer_files.py OrderedHash.feed)", r"feed \(.*bastion/transfer_files\.py"),
    ("ciphers + MAC (asyncssh/crypto, encryption.py, mac.py)", r"asyncssh/(crypto/|encryption\.py|mac\.py)"),
    ("SFTP packets (asyncssh/sftp.py)", r"asyncssh/sftp\.py"),
    ("recording (recorders/)", r"/recorders/"),
    ("audit (bastion/audit.py)", r"bastion/audit\.py"),
    ("gateway (bastion/transfer*.py)", r"bastion/transfer"),
    ("SSH packets, channels, streams (rest of asyncssh)", r"asyncssh/"),
    ("socket I/O, event loop (asyncio, selectors)", r"asyncio/|selectors\.py"),
)


@dataclass
class Way:
    """One way of moving the file (a path and a direction), and what each run of it cost."""

    path: str        # "bastion" or "direct"
    direction: str   # "upload" or "download"
    source: str
    dest: str
    arrived: Path
    seconds: list[float] = field(default_factory=list)
    cpu: dict[str, list[float]] = field(default_factory=lambda: {"client": [], "bastion": [], "target sshd": []})

    def mbps(self, nbytes: int) -> list[float]:
        return [nbytes / 1e6 / s for s in self.seconds]


def ways(lab: SshLab, name: str) -> list[Way]:
    """Upload and download of ``name``, through the bastion and direct, in the order they run."""
    files, local = lab.files, lab.alice.home
    source = f"{files}/{name}"
    return [
        Way("bastion", "upload", source, f"bastion:/{TARGET}{files}/up-bastion.bin", files / "up-bastion.bin"),
        Way("direct", "upload", source, f"target:{files}/up-direct.bin", files / "up-direct.bin"),
        Way("bastion", "download", f"bastion:/{TARGET}{source}", str(local / "down-bastion.bin"),
            local / "down-bastion.bin"),
        Way("direct", "download", f"target:{source}", str(local / "down-direct.bin"), local / "down-direct.bin"),
    ]


def make_source(path: Path, mib: int) -> str:
    """``mib`` MiB of random bytes (scp does not compress, but nothing should); their sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for _ in range(mib):
            chunk = os.urandom(MIB)
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def transfer(lab: SshLab, way: Way, nbytes: int, expected: str, cipher: str | None) -> tuple[float, dict[str, float]]:
    """One scp, timed from spawn to exit; then the arrived file's size and sha256 checked, and the file removed."""
    sshd_pid, bastion_pid = lab.target.proc.pid, lab.bastion.proc.pid  # type: ignore[union-attr]
    command = lab.scp(*(["-c", cipher] if cipher else []), way.source, way.dest)
    client0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    bastion0, target0 = tree_cpu_seconds(bastion_pid), children_cpu_seconds(sshd_pid)
    start = time.perf_counter()
    done = subprocess.run(command, env=lab.env(), capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=max(120.0, nbytes / 1e6 / 2))
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    wait_no_children(sshd_pid)  # its sessions reaped: their CPU is in cutime; the bastion's upstream is closed too
    client1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {"client": client1.ru_utime + client1.ru_stime - client0.ru_utime - client0.ru_stime,
           "bastion": tree_cpu_seconds(bastion_pid) - bastion0,
           "target sshd": children_cpu_seconds(sshd_pid) - target0}
    size = way.arrived.stat().st_size
    got = sha256(way.arrived)
    way.arrived.unlink()  # also drops its dirty pages, so no writeback lands in the next run
    if size != nbytes or got != expected:
        raise RuntimeError(f"{way.direction} {way.path}: {size} bytes with sha256 {got} arrived, "
                           f"expected {nbytes} with {expected}")
    return elapsed, cpu


def measure(lab: SshLab, args: argparse.Namespace, nbytes: int, expected: str) -> list[Way]:
    """The interleaved runs: all uploads, then all downloads; who goes first alternates."""
    measured = [w for w in ways(lab, "source.bin") if w.direction == "upload" or not args.no_download]
    for direction in ("upload", "download"):
        pair = [w for w in measured if w.direction == direction]
        for i in range(args.runs if pair else 0):
            for way in pair if i % 2 == 0 else reversed(pair):
                seconds, cpu = transfer(lab, way, nbytes, expected, args.cipher)
                way.seconds.append(seconds)
                for k, v in cpu.items():
                    way.cpu[k].append(v)
                print(f"  {direction:<8} {way.path:<7} run {i + 1}: {seconds:6.2f} s  "
                      f"{nbytes / 1e6 / seconds:6.1f} MB/s  sha256 ok  cpu s: client {cpu['client']:.1f}, "
                      f"bastion {cpu['bastion']:.1f}, target sshd {cpu['target sshd']:.1f}", flush=True)
    return measured


def profile(lab: Lab, ssh: SshLab, args: argparse.Namespace, nbytes: int, expected: str) -> list[tuple[str, Path]]:
    """One upload and one download through the bastion under py-spy (not part of the table)."""
    assert ssh.bastion.proc is not None
    files = []
    for way in ways(ssh, "source.bin"):
        if way.path != "bastion" or (way.direction == "download" and args.no_download):
            continue
        output = args.profile / f"ssh_transfer-{way.direction}.txt"
        profiler = lab.profile(ssh.bastion.proc.pid, output)
        time.sleep(0.5)  # py-spy attaches
        seconds, _ = transfer(ssh, way, nbytes, expected, args.cipher)
        profiler.stop()
        print(f"  profiled {way.direction} through the bastion: {nbytes / 1e6 / seconds:.1f} MB/s", flush=True)
        files.append((way.direction, output))
    return files


def report(measured: list[Way], nbytes: int, mib: int, profiles: list[tuple[str, Path]]) -> None:
    """Per-run MB/s, medians, CPU per GB, and the ratio of medians per direction."""
    rows = []
    for way in measured:
        rates = way.mbps(nbytes)
        wall = median(way.seconds)
        rows.append((f"{way.direction} {way.path}", " / ".join(f"{r:.1f}" for r in rates), f"{median(rates):.1f}",
                     *(f"{median(way.cpu[k]) / (nbytes / 1e9):.1f}" for k in ("client", "bastion", "target sshd")),
                     f"{median(way.cpu['bastion']) / wall * 100:.0f}"))
    print(f"\n{mib} MiB ({nbytes / 1e6:.0f} MB) per run, scp spawn to exit; MB/s = 10^6 bytes/s; "
          "CPU in seconds per GB (10^9 bytes), median of runs")
    print(table(("scp", "MB/s per run", "median", "client CPU", "bastion CPU", "target sshd CPU",
                 "bastion % of a core"), rows))
    for direction in ("upload", "download"):
        pair = {w.path: w for w in measured if w.direction == direction}
        if len(pair) == 2:
            ratio = median(pair["bastion"].mbps(nbytes)) / median(pair["direct"].mbps(nbytes))
            print(f"{direction}: bastion / direct = {ratio:.2f}x (goal at least 0.6x)")
    for direction, path in profiles:
        print(f"\nwhere the bastion's CPU goes, {direction} (py-spy, % of its non-idle samples; innermost match):")
        print(table(("category", "%"), where_time_goes(path, CATEGORIES)))
        print(table(("top leaf frames", "%", "kind"), summarize_profile(path, (), top=10)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=1024, metavar="MIB",
                        help="size of the file in MiB (default 1024, 1 GiB)")
    parser.add_argument("--runs", type=int, default=3, help="measured runs per path and direction (default 3)")
    parser.add_argument("--no-download", action="store_true", help="uploads only")
    parser.add_argument("--cipher", metavar="NAME",
                        help="scp -c NAME for the client's hop on both paths (the bastion's upstream keeps its own)")
    parser.add_argument("--uvloop", action="store_true", help="run bastion serve with --event-loop uvloop")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="also py-spy one upload and one download through the bastion into DIR")
    parser.add_argument("--budget", type=float, default=BUDGET, help=f"stop everything after this many seconds "
                        f"(default {BUDGET:.0f})")
    args = parser.parse_args()
    if args.runs < 1 or args.megabytes < 1:
        parser.error("--runs and --megabytes must be at least 1")
    if shutil.which("scp") is None:
        parser.error("needs the OpenSSH client (Debian: openssh-client)")
    stop_on_signals(args.budget)
    nbytes = args.megabytes * MIB
    with Lab() as lab:
        print("starting: identity provider, bastion serve, OpenSSH sshd (target web-1)", flush=True)
        ssh = ssh_lab(lab, uvloop=args.uvloop)
        start = time.perf_counter()
        warm = make_source(ssh.files / "warmup.bin", WARMUP_MIB)
        for way in ways(ssh, "warmup.bin"):
            if way.direction == "upload" or not args.no_download:
                transfer(ssh, way, WARMUP_MIB * MIB, warm, args.cipher)
        expected = make_source(ssh.files / "source.bin", args.megabytes)
        print(f"warm-up done ({WARMUP_MIB} MiB each way); source: {args.megabytes} MiB of random bytes in "
              f"{time.perf_counter() - start:.1f} s; measuring {args.runs} runs each, interleaved", flush=True)
        measured = measure(ssh, args, nbytes, expected)
        profiles = profile(lab, ssh, args, nbytes, expected) if args.profile else []
        report(measured, nbytes, args.megabytes, profiles)
    return 0


if __name__ == "__main__":
    run_main(main)
