"""What postgres_proxy.py needs beyond _support.py: a pgbench database, relays and forwards.

Run as a script, this module is the bare asyncssh forward server: the bastion's
algorithms, one plain key, and direct-tcpip (``ssh -L``) to anywhere on loopback:
``python benchmarks/_pg_support.py bare-forward READY HOSTKEY AUTHKEYS``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
from _support import (
    SSHD,
    Lab,
    free_port,
    raise_nofile,
    serve_bare,
    stop_on_signals,
    stop_process,
    wait_for_file,
    wait_for_port,
)

from bastion.devdb import PgServer

APP_USER = "bench_app"
DATABASE = "bench"
TPS = re.compile(r"^tps = ([0-9.]+) \((?:without initial connection time|excluding connections establishing)\)",
                 re.MULTILINE)


@dataclass
class BenchDb:
    """A throwaway PostgreSQL with a pgbench database owned by a password-login role."""

    server: PgServer
    password: str

    @property
    def port(self) -> int:
        return self.server.port

    def env(self) -> dict[str, str]:
        """libpq settings for every client here: no TLS on any path, so the paths compare alike."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        return env | {"PGPASSWORD": self.password, "PGSSLMODE": "disable", "PGUSER": APP_USER,
                      "PGDATABASE": DATABASE, "PGHOST": "127.0.0.1", "LC_ALL": "C"}


def launch(run: Callable[[Any], Coroutine[Any, Any, int]], args: Any, *, tools: dict[str, str]) -> int:
    """Run a benchmark's ``run(args)`` once the ``tools`` it needs (binary: Debian package) are on PATH."""
    missing = sorted(tools[tool] for tool in tools if shutil.which(tool) is None)
    if missing:
        print(f"needs {' and '.join(tools)} (Debian: apt-get install {' '.join(missing)})", file=sys.stderr)
        return 2
    raise_nofile()
    stop_on_signals(args.budget)
    return asyncio.run(run(args))


def bench_db(lab: Lab, scale: int = 1) -> BenchDb:
    """Start PostgreSQL and ``pgbench -i`` a database as the application role."""
    server = PgServer(port=0)
    lab.callback(server.stop)
    server.start()
    password = "bench-" + os.urandom(8).hex()
    server.create_role(APP_USER, password)
    server.psql(f"CREATE DATABASE {DATABASE} OWNER {APP_USER}")
    db = BenchDb(server, password)
    subprocess.run([pgbench_binary(server), "-i", "-q", "-s", str(scale), "-p", str(server.port)],
                   env=db.env(), check=True, capture_output=True, timeout=120)
    return db


def pgbench_binary(server: PgServer) -> str:
    """The pgbench next to the server's binaries, else the one on PATH."""
    local = server.bindir / "pgbench"
    return str(local) if local.exists() else "pgbench"


def parse_tps(output: str) -> float:
    """pgbench's TPS without connection time."""
    found = TPS.search(output)
    if found is None:
        raise RuntimeError(f"no tps in pgbench's output:\n{output[-2000:]}")
    return float(found.group(1))


def spawn(lab: Lab, argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a peer with its output in ``log``; it is stopped when the lab closes."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    lab.callback(stop_process, proc)
    return proc


async def finish(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Wait for a child without blocking the event loop (the proxy runs on it); kill it at the timeout."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            stop_process(proc, 2)
            raise RuntimeError(f"{proc.args!r} did not finish within {timeout:.0f} s")
        await asyncio.sleep(0.05)
    return proc.returncode


def socat(lab: Lab, target_port: int) -> int:
    """socat relaying a loopback port to ``target_port``, one process per connection."""
    port = free_port()
    log = lab.tmp / "socat" / "socat.log"
    proc = spawn(lab, ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
                       f"TCP:127.0.0.1:{target_port}"], log)
    wait_for_port(port, proc, log)
    return port


def sshd_with_forwarding(lab: Lab, client_key: Path) -> Any:
    """_support's throwaway sshd, restarted on the same port with ``AllowTcpForwarding local``."""
    sshd = lab.sshd(client_key)
    stop_process(sshd.proc)
    config = lab.tmp / "sshd" / "sshd_config"
    log = lab.tmp / "sshd" / "sshd-forward.log"
    sshd.proc = spawn(lab, [str(SSHD), "-D", "-e", "-f", str(config), "-o", "AllowTcpForwarding=local"], log)
    wait_for_port(sshd.port, sshd.proc, log)
    return sshd


@dataclass
class BareForward:
    """The bare asyncssh forward server."""

    proc: subprocess.Popen[bytes]
    port: int
    known_hosts: Path


def bare_forward(lab: Lab, client_key: Path, *, uvloop: bool = False) -> BareForward:
    """Start this module as the bare asyncssh server that accepts ``client_key`` and ``ssh -L``."""
    directory = lab.tmp / "bare-forward"
    directory.mkdir()
    host_key = lab.plain_key("bare_forward_host")
    ready, log = directory / "ready.json", directory / "bare.log"
    argv = [sys.executable, __file__, "bare-forward", str(ready), str(host_key), f"{client_key}.pub"]
    proc = spawn(lab, [*argv, "uvloop"] if uvloop else argv, log)
    port = int(wait_for_file(ready, proc, log)["port"])
    known_hosts = directory / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {Path(f'{host_key}.pub').read_text()}")
    return BareForward(proc, port, known_hosts)


def forward_args(port: int, key: Path, known_hosts: Path, user: str, local: int, dest: str) -> list[str]:
    """OpenSSH ``ssh -N -L`` isolated from any user config, agent or host-key prompt."""
    return ["ssh", "-F", "/dev/null", "-p", str(port), "-i", str(key), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
            "-o", "ExitOnForwardFailure=yes", "-N", "-L", f"127.0.0.1:{local}:{dest}", f"{user}@127.0.0.1"]


class _Forwarder(asyncssh.SSHServer):
    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> bool:
        return dest_host in ("127.0.0.1", "localhost")  # loopback only; asyncssh opens the connection


async def _bare_forward(ready: Path, host_key: Path, authorized_keys: Path) -> None:
    await serve_bare(ready, host_key, authorized_keys, _Forwarder)


if __name__ == "__main__":
    if len(sys.argv) not in (5, 6) or sys.argv[1] != "bare-forward":
        sys.exit(f"usage: {sys.argv[0]} bare-forward READY_FILE HOST_KEY AUTHORIZED_KEYS [uvloop]")
    main = _bare_forward(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    if sys.argv[5:] == ["uvloop"]:
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)
