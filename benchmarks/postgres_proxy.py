"""The PostgreSQL proxy's cost, side by side in one run (issue 4, Performance).

1. Inspection: ``pgbench -S`` through the proxy's loopback listener (the real
   PolicyInspector: guardrails, masking, audit) against ``socat`` in front of
   the same database, interleaved.
2. Through the bastion: ``pgbench -S`` over ``ssh -L`` to ``bastion serve``
   against the same over a bare asyncssh forward, and over OpenSSH sshd's.
3. Bulk: a large SELECT with one masked column, psql to /dev/null, through
   the proxy against socat; the peak RSS of this process (the proxy's side).

``.venv/bin/python benchmarks/postgres_proxy.py [--seconds 12] [--runs 2] [--rows 1000000]``
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import resource
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from _pg_support import (
    APP_USER,
    DATABASE,
    BenchDb,
    bare_forward,
    bench_db,
    finish,
    forward_args,
    launch,
    parse_tps,
    pgbench_binary,
    socat,
    spawn,
    sshd_with_forwarding,
)
from _support import (
    SSHD,
    Lab,
    free_port,
    median,
    rss_kib,
    run_main,
    table,
    wait_for_port,
)
from peers import Bastion, bastion_cli

from bastion.audit import AuditStore
from bastion.config import load_config
from bastion.proxies.postgres import serve_tcp
from bastion.sqlaccess import PolicyInspector, upstream_for
from policies.model import Identity

TARGET = "pg-bench"
POLICY_NAME = "bench"


def config_body(db: BenchDb, secret: Path) -> str:
    """Targets and policies: the database, and guardrails + one column masking rule, as in the template."""
    return f"""\
targets:
  {TARGET}:
    kind: postgres
    address: "127.0.0.1:{db.port}"
    database: {DATABASE}
    user: {APP_USER}
    password: {{file: {secret}}}
policies:
  - name: {POLICY_NAME}
    subjects: {{groups: [dev]}}
    targets: {{names: [{TARGET}]}}
    access: allow
    port_forwarding: true
    guardrails:
      - {{effect: deny, statements: [drop, truncate]}}
      - {{effect: deny, statements: [update, delete], without_where: true}}
    masking:
      - {{strategy: partial, columns: ["*.email"]}}
"""


def make_bastion(lab: Lab, db: BenchDb) -> Bastion:
    """``bastion init`` with the bench target and policy; not started yet."""
    directory = lab.tmp / "bastion"
    result = bastion_cli("init", "--dir", str(directory), "--oidc-issuer", lab.issuer().issuer)
    if result.returncode != 0:
        raise RuntimeError(f"bastion init failed: {result.stderr}")
    secret = lab.tmp / "pg-bench.password"
    secret.write_text(db.password)
    secret.chmod(0o600)
    bastion = Bastion(directory, lab.issuer().issuer)
    bastion.write_config(body=config_body(db, secret))
    return bastion


async def start_proxy(lab: Lab, bastion: Bastion) -> tuple[asyncio.Server, int, list[PolicyInspector]]:
    """The proxy's loopback listener in this process, one real PolicyInspector per connection."""
    config = load_config(bastion.config)
    policy = next(p for p in config.policies if p.name == POLICY_NAME)
    store = AuditStore(lab.tmp / "proxy-audit" / "audit.db")
    lab.callback(store.close)
    identity = Identity("bench", frozenset({"dev"}))
    inspectors: list[PolicyInspector] = []

    def inspector() -> PolicyInspector:
        made = PolicyInspector(config=config, store=store, identity=identity, target=TARGET, policy=policy,
                               session=f"bench-{len(inspectors)}", source="127.0.0.1")
        inspectors.append(made)
        return made

    server = await serve_tcp(upstream_for(config.targets[TARGET]), inspector, host="127.0.0.1", port=0)
    return server, int(server.sockets[0].getsockname()[1]), inspectors


async def pgbench(lab: Lab, db: BenchDb, port: int, args: argparse.Namespace, label: str) -> float:
    """One ``pgbench -S`` run against a loopback port; its TPS."""
    log = lab.tmp / "pgbench" / f"{label}-{time.monotonic_ns()}.log"
    proc = spawn(lab, [pgbench_binary(db.server), "-n", "-S", "-c", str(args.clients), "-j", str(args.threads),
                       "-T", str(args.seconds), "-p", str(port)], log, env=db.env())
    code = await finish(proc, args.seconds + 60)
    output = log.read_text(errors="replace")
    if code != 0:
        raise RuntimeError(f"pgbench via {label} failed ({code}):\n{output[-2000:]}")
    tps = parse_tps(output)
    print(f"  {label:<28} {tps:>9.0f} tps", flush=True)
    return tps


async def psql_bulk(lab: Lab, db: BenchDb, port: int, rows: int, label: str) -> float:
    """Seconds for psql to receive ``rows`` rows with an ``email`` column and discard them."""
    sql = f"select g as id, 'user' || g || '@example.com' as email from generate_series(1, {rows}) g"
    log = lab.tmp / "psql" / f"{label}-{time.monotonic_ns()}.log"
    start = time.perf_counter()
    proc = spawn(lab, ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-p", str(port), "-o", "/dev/null",
                       "-c", sql], log, env=db.env())
    code = await finish(proc, 120)
    elapsed = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"psql via {label} failed ({code}):\n{log.read_text(errors='replace')[-2000:]}")
    print(f"  {label:<28} {elapsed:>9.2f} s  ({rows / elapsed / 1e3:.0f}k rows/s)", flush=True)
    return elapsed


async def check_masked(lab: Lab, db: BenchDb, port: int) -> str:
    """The proxy masks the bulk query's email column (else the bulk case would measure nothing)."""
    log = lab.tmp / "psql" / "check.log"
    proc = spawn(lab, ["psql", "-X", "-A", "-t", "-p", str(port), "-c",
                       "select g as id, 'user' || g || '@example.com' as email from generate_series(1, 2) g"],
                 log, env=db.env())
    await finish(proc, 30)
    out = log.read_text(errors="replace").strip()
    if "user1@example.com" in out or "@example.com" not in out:
        raise RuntimeError(f"the email column was not masked through the proxy:\n{out}")
    return out.splitlines()[0]


async def interleave(runs: int, paths: list[tuple[str, Callable[[], Awaitable[float]]]]) -> dict[str, list[float]]:
    """A, B, C, A, B, C, ...: each path ``runs`` times."""
    results: dict[str, list[float]] = {name: [] for name, _ in paths}
    for _ in range(runs):
        for name, run in paths:
            results[name].append(await run())
    return results


def fmt_runs(values: list[float], digits: int = 0) -> str:
    return " / ".join(f"{v:.{digits}f}" for v in values)


async def run(args: argparse.Namespace) -> int:
    with Lab() as lab:
        print("setting up: PostgreSQL, pgbench -i, socat, the proxy, bastion serve, sshd, bare asyncssh", flush=True)
        db = bench_db(lab)
        socat_port = socat(lab, db.port)
        bastion = make_bastion(lab, db)
        server, proxy_port, inspectors = await start_proxy(lab, bastion)
        lab.callback(server.close)
        report: list[str] = []

        # -- 1. inspection cost ---------------------------------------------------------------
        print(f"\n1. pgbench -S -c {args.clients} -j {args.threads} -T {args.seconds}, interleaved", flush=True)
        one = await interleave(args.runs, [
            ("proxy (loopback listener)", lambda: pgbench(lab, db, proxy_port, args, "proxy")),
            ("socat", lambda: pgbench(lab, db, socat_port, args, "socat"))])
        audited = len(inspectors)
        ratio1 = median(one["proxy (loopback listener)"]) / median(one["socat"])
        rows1 = [[name, fmt_runs(v), f"{median(v):.0f}"] for name, v in one.items()]
        report.append(table(["path (pgbench -S)", "tps per run", "median"], rows1))
        report.append(f"proxy ÷ socat = {ratio1:.2f}x (goal ≥ 0.8x); {audited} inspected connections")

        # -- 2. through the bastion --------------------------------------------------------------
        if not args.no_ssh:
            bastion.start(*(["--event-loop", "uvloop"] if args.uvloop else []))
            lab.callback(Lab._stop_bastion, bastion)
            alice = lab.client(bastion, "alice", ["dev"])
            plain = lab.plain_key("client")
            bare = bare_forward(lab, plain, uvloop=args.uvloop)
            paths: list[tuple[str, int]] = []
            for name, (port, key, known, user, dest, env) in {
                "bastion (ssh -L, inspected)": (bastion.ssh_port, alice.key, alice.known_hosts, "alice",
                                                f"{TARGET}:5432", alice.env()),
                "bare asyncssh (ssh -L)": (bare.port, plain, bare.known_hosts, "bench",
                                           f"127.0.0.1:{db.port}", None),
            }.items():
                paths.append((name, open_forward(lab, name, port, key, known, user, dest, env)))
            if SSHD.exists() and not args.no_sshd:
                sshd = sshd_with_forwarding(lab, plain)
                paths.append(("OpenSSH sshd (ssh -L)", open_forward(lab, "sshd", sshd.port, plain, sshd.known_hosts,
                                                                  sshd.user, f"127.0.0.1:{db.port}", None)))
            print(f"\n2. pgbench -S -c {args.clients} -j {args.threads} -T {args.seconds} over ssh -L, interleaved",
                  flush=True)
            two = await interleave(args.runs, [
                (name, functools.partial(pgbench, lab, db, port, args, name.split(" (")[0])) for name, port in paths])
            rows2 = [[name, fmt_runs(v), f"{median(v):.0f}"] for name, v in two.items()]
            report.append(table(["path (pgbench -S)", "tps per run", "median"], rows2))
            base = median(two["bastion (ssh -L, inspected)"])
            bare_tps = median(two["bare asyncssh (ssh -L)"])
            report.append(f"bastion ÷ bare asyncssh = {base / bare_tps:.2f}x (goal ≥ 0.85x)")
            if "OpenSSH sshd (ssh -L)" in two:
                report.append(f"bastion ÷ OpenSSH sshd = {base / median(two['OpenSSH sshd (ssh -L)']):.2f}x "
                              "(stretch ≥ 0.5x)")

        # -- 3. bulk ----------------------------------------------------------------------------------
        print(f"\n3. {args.rows:,} rows, psql -o /dev/null, email column masked by the proxy", flush=True)
        sample = await check_masked(lab, db, proxy_port)
        rss_before = rss_kib(os.getpid())
        peak = [rss_before]
        sampling = True

        async def sample_rss() -> None:
            while sampling:
                peak[0] = max(peak[0], rss_kib(os.getpid()))
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample_rss())
        three = await interleave(args.bulk_runs, [
            ("proxy, email masked", lambda: psql_bulk(lab, db, proxy_port, args.rows, "proxy")),
            ("socat", lambda: psql_bulk(lab, db, socat_port, args.rows, "socat"))])
        sampling = False
        await sampler
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rows3 = [[name, fmt_runs(v, 2), f"{median(v):.2f}", f"{args.rows / median(v) / 1e3:.0f}k"]
                 for name, v in three.items()]
        report.append(table(["path (1 SELECT)", "seconds per run", "median", "rows/s"], rows3))
        ratio3 = median(three["socat"]) / median(three["proxy, email masked"])
        report.append(f"proxy ÷ socat throughput = {ratio3:.2f}x (goal ≥ 0.6x); masked sample row: {sample}")
        report.append(f"this process (proxy side): VmRSS {rss_before / 1024:.1f} MiB before the bulk runs, "
                      f"{peak[0] / 1024:.1f} MiB peak during them (sampled every 20 ms); "
                      f"ru_maxrss over the whole run {maxrss / 1024:.1f} MiB")

        server.close()
        print("\n" + "\n\n".join(report), flush=True)
        return 0


def open_forward(lab: Lab, name: str, port: int, key: Path, known: Path, user: str, dest: str,
                 env: dict[str, str] | None) -> int:
    """``ssh -N -L`` to a server; returns the local port once it listens."""
    local = free_port()
    log = lab.tmp / "ssh" / f"{name.split(' ')[0]}.log"
    proc = spawn(lab, forward_args(port, key, known, user, local, dest), log, env)
    wait_for_port(local, proc, log, timeout=20)
    return local


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=12, help="pgbench -T per run (default 12; the issue says 30)")
    parser.add_argument("--runs", type=int, default=2, help="pgbench runs per path (default 2)")
    parser.add_argument("--clients", type=int, default=8, help="pgbench -c (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="pgbench -j (default 2)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the bulk SELECT (default 1,000,000)")
    parser.add_argument("--bulk-runs", type=int, default=3, help="bulk runs per path (default 3)")
    parser.add_argument("--no-ssh", action="store_true", help="skip the ssh -L comparison (part 2)")
    parser.add_argument("--no-sshd", action="store_true", help="skip OpenSSH sshd in part 2")
    parser.add_argument("--uvloop", action="store_true",
                        help="part 2 on uvloop: bastion serve --event-loop uvloop, and the bare forward on uvloop too")
    parser.add_argument("--budget", type=float, default=235, help="stop everything after this many seconds")
    return launch(run, parser.parse_args(), tools={"socat": "socat", "psql": "postgresql-client"})


if __name__ == "__main__":
    run_main(main)
