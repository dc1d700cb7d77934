"""What the benchmarks share: real peers on loopback, clean-up, statistics and tables.

The bastion and the identity provider are the same real peers the end-to-end
tests use (``tests/peers.py``, ``tests/oidc_issuer.py``). Everything a
benchmark starts is registered on a :class:`Lab`, which stops it and removes
its temporary directory on the way out, also on Ctrl-C or SIGTERM.

Run as a script, this module is the bare asyncssh server that calibrates the
connect benchmark: ``python benchmarks/_support.py bare-server READY HOSTKEY AUTHKEYS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _path in (REPO, REPO / "tests"):  # the e2e tests' real-peer helpers, and the product
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import asyncssh  # noqa: E402
from oidc_issuer import OidcIssuer  # noqa: E402
from peers import Bastion, Client, bastion_cli  # noqa: E402

from bastion import ssh_packets  # noqa: E402
from bastion.server import ENCRYPTION_ALGS, KEX_ALGS, MAC_ALGS, SIGNATURE_ALGS  # noqa: E402

SSHD = Path("/usr/sbin/sshd")
STOP_TIMEOUT = 20.0  # seconds a peer gets to stop on SIGTERM before it is killed


# -- processes and clean-up -------------------------------------------------------


def raise_nofile() -> int:
    """Raise this process's open-file limit to its hard limit; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


class OutOfTime(KeyboardInterrupt):
    """The benchmark's overall time budget ran out. Unwinds like Ctrl-C, so clean-up runs."""


def stop_on_signals(budget: float) -> None:
    """Unwind with KeyboardInterrupt on Ctrl-C, SIGTERM and after ``budget`` seconds.

    Our own SIGINT handler keeps asyncio.run from installing its own, which
    only cancels the main task (and a cancellation can be absorbed on the way).
    KeyboardInterrupt, and so OutOfTime, is re-raised by asyncio out of the loop
    rather than stored in whichever task happened to be running.
    """
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def out_of_time(signum: int, frame: Any) -> None:
        raise OutOfTime(f"the benchmark's time budget of {budget:.0f} s ran out")

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(max(1, round(budget)))


def run_main(main: Callable[[], int]) -> None:
    """Run a benchmark's ``main`` and exit with its code; 130 on Ctrl-C, 124 when out of time."""
    try:
        code = main()
    except OutOfTime as e:
        print(f"stopped: {e}; every process it started is stopped", file=sys.stderr)
        code = 124
    except KeyboardInterrupt:
        print("interrupted; every process it started is stopped", file=sys.stderr)
        code = 130
    sys.exit(code)


def stop_process(proc: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, wait, then SIGKILL: a peer never outlives the benchmark."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def free_port() -> int:
    """A loopback port that was free a moment ago (for sshd, which cannot report port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[Any], log: Path, timeout: float = 10) -> None:
    """Wait until something accepts on the loopback port, or fail with the peer's log."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{log.stem} exited early:\n{log.read_text()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on 127.0.0.1:{port}:\n{log.read_text()}")
        time.sleep(0.05)


def wait_for_file(path: Path, proc: subprocess.Popen[Any], log: Path, timeout: float = 20) -> dict[str, Any]:
    """The JSON a peer writes once it listens."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{log.stem} did not start:\n{log.read_text()}")
        time.sleep(0.05)
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def rss_kib(pid: int) -> int:
    """A process's resident set size (VmRSS), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    """How many file descriptors a process holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Sshd:
    """A throwaway OpenSSH sshd on a loopback port, for one key-authenticated user."""

    proc: subprocess.Popen[bytes]
    port: int
    user: str
    known_hosts: Path


@dataclass
class BareServer:
    """The bare asyncssh server: same algorithms as the bastion, one plain key, exec exits 0."""

    proc: subprocess.Popen[bytes]
    port: int
    known_hosts: Path


class Lab(contextlib.ExitStack):
    """One benchmark's peers and temporary directory, torn down in reverse order on exit."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="bastion-bench-"))
        self.callback(shutil.rmtree, self.tmp, ignore_errors=True)
        self._issuer: OidcIssuer | None = None

    def issuer(self) -> OidcIssuer:
        """The development identity provider, in a background thread."""
        if self._issuer is None:
            issuer = OidcIssuer()
            issuer.start()
            self.callback(issuer.stop)
            self._issuer = issuer
        return self._issuer

    def bastion(self, limits: str = "{}") -> Bastion:
        """``bastion init`` + ``bastion serve`` with the test config (audit on, the default)."""
        directory = self.tmp / "bastion"
        result = bastion_cli("init", "--dir", str(directory), "--oidc-issuer", self.issuer().issuer)
        if result.returncode != 0:
            raise RuntimeError(f"bastion init failed: {result.stderr}")
        bastion = Bastion(directory, self.issuer().issuer)
        bastion.write_config(limits=limits)
        self.callback(self._stop_bastion, bastion)
        return bastion.start()

    def profile(self, pid: int, output: Path) -> Profiler:
        """Start sampling ``pid`` with py-spy; stopped by :meth:`Profiler.stop` or on exit."""
        profiler = Profiler(pid, output)
        self.callback(profiler.stop)
        return profiler

    @staticmethod
    def _stop_bastion(bastion: Bastion) -> None:
        if bastion.proc is not None:
            stop_process(bastion.proc)

    def client(self, bastion: Bastion, user: str, groups: Sequence[str] = ("dev",)) -> Client:
        """A home with a key, a certificate from the real exchange, and known_hosts."""
        client = Client(self.tmp / "homes" / user, bastion)
        client.make_key()
        client.certify(self.issuer(), user, list(groups))
        return client

    def plain_key(self, name: str) -> Path:
        """An ed25519 key pair with no certificate beside it; returns the private key's path."""
        path = self.tmp / "keys" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)],
                       check=True, stdin=subprocess.DEVNULL)
        return path

    def sshd(self, client_key: Path) -> Sshd:
        """OpenSSH sshd on a free loopback port, accepting ``client_key`` for the current user."""
        if not SSHD.exists():
            raise RuntimeError(f"{SSHD} is not installed (Debian: openssh-server)")
        directory = self.tmp / "sshd"
        directory.mkdir()
        host_key = self.plain_key("sshd_host_ed25519")
        authorized = directory / "authorized_keys"
        authorized.write_text(Path(f"{client_key}.pub").read_text())
        privsep = Path("/run/sshd")
        if not privsep.exists():
            privsep.mkdir(mode=0o755)
            self.callback(_rmdir_quietly, privsep)
        port = free_port()
        user = _current_user()
        config = directory / "sshd_config"
        config.write_text(textwrap.dedent(f"""\
            Port {port}
            ListenAddress 127.0.0.1
            HostKey {host_key}
            AuthorizedKeysFile {authorized}
            AuthenticationMethods publickey
            PubkeyAuthentication yes
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            PermitRootLogin prohibit-password
            AllowUsers {user}
            UsePAM no
            StrictModes no
            PidFile none
            PrintMotd no
            PrintLastLog no
            UseDNS no
            X11Forwarding no
            AllowAgentForwarding no
            AllowTcpForwarding no
            """))
        log = directory / "sshd.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.callback(stop_process, proc)
        wait_for_port(port, proc, log)
        known_hosts = directory / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {Path(f'{host_key}.pub').read_text()}")
        return Sshd(proc, port, user, known_hosts)

    def bare_server(self, client_key: Path) -> BareServer:
        """The bare asyncssh server (this module run as a script) accepting ``client_key``."""
        directory = self.tmp / "bare"
        directory.mkdir()
        host_key = self.plain_key("bare_host_ed25519")
        ready, log = directory / "ready.json", directory / "bare.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, __file__, "bare-server", str(ready), str(host_key), f"{client_key}.pub"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.callback(stop_process, proc)
        port = int(wait_for_file(ready, proc, log)["port"])
        known_hosts = directory / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {Path(f'{host_key}.pub').read_text()}")
        return BareServer(proc, port, known_hosts)


class Profiler:
    """py-spy sampling one process into collapsed stacks (``--format raw``), for the report's evidence."""

    def __init__(self, pid: int, output: Path) -> None:
        binary = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
        if binary is None:
            raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
        output.parent.mkdir(parents=True, exist_ok=True)
        self.output = output
        self.proc = subprocess.Popen([binary, "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
                                      "--nonblocking", "--output", str(output)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        """Stop sampling (SIGINT makes py-spy write its output) and wait for the file."""
        if self.proc.returncode is not None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        print(f"profile written: {self.output}", flush=True)


def _current_user() -> str:
    import pwd
    return pwd.getpwuid(os.getuid()).pw_name


def _rmdir_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()  # only if still empty: a real sshd may have started using it meanwhile


def ssh_command(port: int, key: Path, known_hosts: Path, user: str, *command: str) -> list[str]:
    """The real OpenSSH client, isolated from any user config, agent or host-key prompt."""
    return ["ssh", "-F", "/dev/null", "-p", str(port), "-i", str(key), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
            f"{user}@127.0.0.1", *command]


def client_env(home: Path) -> dict[str, str]:
    """An environment for ssh without the caller's agent or SSH_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    env["HOME"] = str(home)
    return env


# -- statistics and tables ------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linearly interpolated between order statistics."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    """The median, or NaN for no values."""
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def ms(seconds: float) -> str:
    """Seconds as milliseconds, for tables."""
    return f"{seconds * 1000:.1f}"


# -- the bare asyncssh server ------------------------------------------------------------


async def serve_bare(ready: Path, host_key: Path, authorized_keys: Path,
                     server_factory: Any = asyncssh.SSHServer, **options: Any) -> None:
    """A bare asyncssh server with the bastion's algorithms, until SIGINT/SIGTERM; its port goes to ``ready``.

    It gets the bastion's packet fix too (bastion/ssh_packets.py), so that a ratio against it measures what the
    bastion does on top of asyncssh, not asyncssh's extra packets.
    """
    ssh_packets.install()
    server = await asyncssh.create_server(
        server_factory, "127.0.0.1", 0, server_host_keys=[str(host_key)],
        authorized_client_keys=str(authorized_keys), **options,
        kex_algs=KEX_ALGS, encryption_algs=ENCRYPTION_ALGS, mac_algs=MAC_ALGS,
        signature_algs=SIGNATURE_ALGS, compression_algs=["none"], encoding=None,
        keepalive_interval=30, keepalive_count_max=3, agent_forwarding=False,
        x11_forwarding=False, allow_scp=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tmp = ready.with_suffix(".tmp")
    tmp.write_text(json.dumps({"port": server.sockets[0].getsockname()[1], "pid": os.getpid()}))
    os.replace(tmp, ready)
    await stop.wait()
    server.close()
    await server.wait_closed()


async def _bare_server(ready: Path, host_key: Path, authorized_keys: Path) -> None:
    def process(proc: asyncssh.SSHServerProcess[bytes]) -> None:
        proc.exit(0)

    await serve_bare(ready, host_key, authorized_keys, process_factory=process)


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "bare-server":
        sys.exit(f"usage: {sys.argv[0]} bare-server READY_FILE HOST_KEY AUTHORIZED_KEYS")
    asyncio.run(_bare_server(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])))
