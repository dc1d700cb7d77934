"""Time to result of one SSH command: the bastion against OpenSSH sshd and a bare asyncssh server.

Each run is one real OpenSSH ``ssh`` process, from spawn to exit:

- bastion:       certificate login, ``whoami --json``, audit on (the default);
- OpenSSH sshd:  plain-key login, ``true``, with the client's default key exchange
                 (sntrup761x25519 on OpenSSH 9.x, which the bastion does not offer);
- OpenSSH sshd, curve25519: the same, with the key exchange the bastion negotiates;
- bare asyncssh: plain-key login, the bastion's algorithm lists, an exec that exits 0.

The servers are interleaved (A, B, C, D, A, B, ...) after a warm-up, so that
drift on the machine affects them alike.

    .venv/bin/python benchmarks/connect_latency.py [--runs 30] [--warmup 3] [--profile FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from _support import Lab, client_env, median, ms, percentile, run_main, ssh_command, stop_on_signals, table

KEX = re.compile(r"kex: algorithm: (\S+)")
BUDGET = 290.0  # seconds for the whole run


@dataclass
class Target:
    """One server under test and the ssh command line that measures it."""

    name: str
    argv: list[str]
    home: Path
    expect_user: str | None = None  # the bastion's whoami answer is checked too
    kex: str = "?"
    times: list[float] = field(default_factory=list)

    def run(self, *, verbose: bool = False) -> float:
        """One ssh run; its wall time in seconds. Fails loudly on a bad result."""
        argv = [self.argv[0], "-v", *self.argv[1:]] if verbose else self.argv
        start = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                                stdin=subprocess.DEVNULL, env=client_env(self.home))
        elapsed = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(f"{self.name}: ssh exited {result.returncode}: {result.stderr.strip()}")
        if self.expect_user and json.loads(result.stdout).get("user") != self.expect_user:
            raise RuntimeError(f"{self.name}: unexpected whoami answer {result.stdout!r}")
        if verbose and (found := KEX.search(result.stderr)):
            self.kex = found.group(1)
        return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="measured runs per server (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured runs per server first (default 3)")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="py-spy the bastion daemon during the measured runs, into FILE (collapsed stacks)")
    args = parser.parse_args()
    stop_on_signals(BUDGET)
    with Lab() as lab:
        print("starting: identity provider, bastion, OpenSSH sshd, bare asyncssh server", flush=True)
        bastion = lab.bastion()
        assert bastion.proc is not None
        alice = lab.client(bastion, "alice", ["dev"])
        plain = lab.plain_key("client_ed25519")
        sshd = lab.sshd(plain)
        bare = lab.bare_server(plain)
        to_sshd = ssh_command(sshd.port, plain, sshd.known_hosts, sshd.user, "true")
        targets = [
            Target("bastion (whoami --json)",
                   ssh_command(bastion.ssh_port, alice.key, alice.known_hosts, "alice", "whoami", "--json"),
                   alice.home, expect_user="alice"),
            Target("OpenSSH sshd (true)", to_sshd, lab.tmp),
            Target("OpenSSH sshd, curve25519 (true)",
                   [to_sshd[0], "-o", "KexAlgorithms=curve25519-sha256", *to_sshd[1:]], lab.tmp),
            Target("bare asyncssh (exit 0)",
                   ssh_command(bare.port, plain, bare.known_hosts, "alice", "true"), lab.tmp),
        ]
        for i in range(max(args.warmup, 1)):
            for target in targets:
                target.run(verbose=i == 0)
        print(f"measuring: {args.runs} runs each, interleaved", flush=True)
        profiler = lab.profile(bastion.proc.pid, args.profile) if args.profile else None
        for i in range(args.runs):
            for target in targets:
                target.times.append(target.run())
            if (i + 1) % 10 == 0:
                print(f"  {i + 1}/{args.runs}", flush=True)
        if profiler:
            profiler.stop()
        report(targets)
    return 0


def report(targets: list[Target]) -> None:
    """Print the per-server table and the ratios of medians."""
    rows = [(t.name, t.kex, ms(median(t.times)), ms(percentile(t.times, 90)), ms(min(t.times)),
             ms(max(t.times)), len(t.times)) for t in targets]
    print()
    print(table(("server", "kex", "median ms", "p90 ms", "min ms", "max ms", "runs"), rows))
    bastion, sshd, sshd_same_kex, bare = (median(t.times) for t in targets)
    print()
    print(table(("ratio of medians (time to result)", "vs sshd", "vs sshd, curve25519"), [
        ("bastion / sshd", f"{bastion / sshd:.2f}x", f"{bastion / sshd_same_kex:.2f}x"),
        ("sshd / bastion", f"{sshd / bastion:.2f}x", f"{sshd_same_kex / bastion:.2f}x"),
        ("bare asyncssh / sshd", f"{bare / sshd:.2f}x", f"{bare / sshd_same_kex:.2f}x"),
        ("sshd / bare asyncssh", f"{sshd / bare:.2f}x", f"{sshd_same_kex / bare:.2f}x"),
    ]))
    print(f"\nbastion / bare asyncssh: {bastion / bare:.2f}x (+{(bastion - bare) * 1000:.1f} ms); "
          "steps of ~40 ms are TCP delayed-ACK stalls, see benchmarks/README.md")


if __name__ == "__main__":
    run_main(main)
