"""What ssh_transfer.py and ssh_latency.py share: an SSH target behind the bastion, a jump sshd, an ssh_config.

The target is _support's throwaway OpenSSH sshd, restarted with the lines an
SSH target of the bastion needs: it trusts the bastion's target CA
(``TrustedUserCAKeys``, the line ``bastion target-ca`` prints) and serves SFTP
(``Subsystem sftp internal-sftp``). It also accepts one plain key, for the
paths that do not go through the bastion. The jump host is the same sshd
binary and config started again on another port with ``AllowTcpForwarding yes``.

Every client is the real OpenSSH ``ssh`` or ``scp`` with ``-F`` an ssh_config
written here, so the commands read as a person would type them:
``scp -F CFG big bastion:/web-1/DIR/``, ``ssh -F CFG -J bastion web-1``,
``ssh -F CFG -J jump target``.
"""

from __future__ import annotations

import contextlib
import os
import re
import textwrap
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from _pg_support import spawn
from _support import SSHD, Lab, Sshd, client_env, cpu_seconds, free_port, stop_process, wait_for_port
from peers import Bastion, Client, bastion_cli

TARGET = "web-1"
USER = "alice"


@dataclass
class SshLab:
    """The bastion, the target sshd behind it, a jump sshd, and an ssh_config naming them all."""

    bastion: Bastion
    alice: Client         # a certificate from the real exchange
    target: Sshd          # trusts the target CA and ``plain``; serves SFTP
    jump: Sshd | None     # forwards TCP for ``ssh -J``
    plain: Path           # a plain key both sshds accept
    files: Path           # a directory on the target for transfers
    config: Path          # the ssh_config: hosts bastion, target, jump, web-1

    def ssh(self, *args: str) -> list[str]:
        """The OpenSSH client with this lab's config."""
        return ["ssh", "-F", str(self.config), *args]

    def scp(self, *args: str) -> list[str]:
        """scp (SFTP mode, the OpenSSH 9 default) with this lab's config."""
        return ["scp", "-F", str(self.config), *args]

    def env(self) -> dict[str, str]:
        """The clients' environment: alice's home, no agent."""
        return client_env(self.alice.home) | {"TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1"}


def ssh_lab(lab: Lab, *, jump: bool = False, uvloop: bool = False) -> SshLab:
    """``bastion init`` + serve with target web-1, the target sshd, alice's certificate, optionally a jump sshd."""
    directory = lab.tmp / "bastion"
    made = bastion_cli("init", "--dir", str(directory), "--oidc-issuer", lab.issuer().issuer)
    if made.returncode != 0:
        raise RuntimeError(f"bastion init failed: {made.stderr}")
    bastion = Bastion(directory, lab.issuer().issuer)
    ca = bastion_cli("target-ca", "-c", str(bastion.config))
    if ca.returncode != 0:
        raise RuntimeError(f"bastion target-ca failed: {ca.stderr}")
    plain = lab.plain_key("client")
    target = target_sshd(lab, plain, ca.stdout.strip())
    files = lab.tmp / "target-files"
    files.mkdir()
    bastion.write_config(body=config_body(target))
    lab.callback(Lab._stop_bastion, bastion)
    bastion.start(*(["--event-loop", "uvloop"] if uvloop else []))
    alice = lab.client(bastion, USER, ["dev"])
    jumper = jump_sshd(lab, target) if jump else None
    config = lab.tmp / "ssh_config"
    config.write_text(ssh_config(bastion, alice, target, jumper, plain))
    return SshLab(bastion, alice, target, jumper, plain, files, config)


def target_sshd(lab: Lab, plain: Path, trusted_user_ca: str) -> Sshd:
    """_support's sshd, restarted to trust the target CA and serve SFTP, as tests/transfer_fixtures.py's does."""
    if not SSHD.exists():
        raise RuntimeError(f"{SSHD} is not installed (Debian: openssh-server)")
    sshd = lab.sshd(plain)
    stop_process(sshd.proc)
    directory = lab.tmp / "sshd"
    ca_file = directory / "trusted_user_ca"
    ca_file.write_text(trusted_user_ca + "\n")
    log = directory / "sshd-target.log"
    sshd.proc = spawn(lab, [str(SSHD), "-D", "-e", "-f", str(directory / "sshd_config"),
                            "-o", f"TrustedUserCAKeys={ca_file}", "-o", "Subsystem sftp internal-sftp"], log)
    wait_for_port(sshd.port, sshd.proc, log)
    return sshd


def jump_sshd(lab: Lab, target: Sshd) -> Sshd:
    """The same sshd binary and config on another port, with ``AllowTcpForwarding yes``: an OpenSSH jump host."""
    directory = lab.tmp / "sshd"
    port = free_port()
    log = directory / "sshd-jump.log"
    proc = spawn(lab, [str(SSHD), "-D", "-e", "-f", str(directory / "sshd_config"), "-p", str(port),
                       "-o", "AllowTcpForwarding yes"], log)
    wait_for_port(port, proc, log)
    known_hosts = directory / "known_hosts_jump"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_key_line(target)}\n")
    return Sshd(proc, port, target.user, known_hosts)


def host_key_line(sshd: Sshd) -> str:
    """``ssh-ed25519 AAAA...`` of a _support sshd, from its known_hosts line."""
    return " ".join(sshd.known_hosts.read_text().split()[1:3])


def config_body(target: Sshd) -> str:
    """web-1, its host key pinned, and one policy: dev may connect and move files either way, no size cap."""
    return f"""\
targets:
  {TARGET}: {{kind: ssh, address: "127.0.0.1:{target.port}", login: {target.user},
           host_key: "{host_key_line(target)}"}}
policies:
  - name: bench
    subjects: {{groups: [dev]}}
    targets: {{names: [{TARGET}]}}
    access: allow
    port_forwarding: true
    transfer: {{upload: true, download: true}}
"""


def ssh_config(bastion: Bastion, alice: Client, target: Sshd, jump: Sshd | None, plain: Path) -> str:
    """Hosts ``bastion`` (alice's certificate), ``target`` (the sshd, plain key), ``jump``, and ``web-1``.

    ``web-1`` is the name as a client gives it to ``ssh -J bastion web-1``. The bastion ends that
    inner connection itself (bastion/proxyjump.py): it wants alice's certificate again and presents
    a host certificate for web-1, which the exchange's ``@cert-authority`` lines verify.
    """
    known = target.known_hosts.parent / "known_hosts_all"
    lines = [alice.known_hosts.read_text().strip(), target.known_hosts.read_text().strip()]
    if jump is not None:
        lines.append(jump.known_hosts.read_text().strip())
    known.write_text("\n".join(lines) + "\n")
    jump_host = "" if jump is None else textwrap.dedent(f"""\
        Host jump
          HostName 127.0.0.1
          Port {jump.port}
          User {jump.user}
          IdentityFile {plain}
        """)
    return textwrap.dedent(f"""\
        Host bastion
          HostName 127.0.0.1
          Port {bastion.ssh_port}
          User {USER}
          IdentityFile {alice.key}
          CertificateFile {alice.cert}
        Host target
          HostName 127.0.0.1
          Port {target.port}
          User {target.user}
          IdentityFile {plain}
        Host {TARGET}
          User {USER}
          IdentityFile {alice.key}
          CertificateFile {alice.cert}
        """) + jump_host + textwrap.dedent(f"""\
        Host *
          IdentitiesOnly yes
          UserKnownHostsFile {known}
          StrictHostKeyChecking yes
          BatchMode yes
          ConnectTimeout 10
          LogLevel ERROR
        """)


# -- processes ----------------------------------------------------------------------------------


def children_cpu_seconds(pid: int) -> float:
    """CPU time of a process's children it has waited for (cutime + cstime): an sshd's finished sessions."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> float:
    """CPU time so far of all of a process's threads, to the nanosecond (``/proc/PID/task/*/schedstat``)."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            total += int(stat.read_text().split()[0])
    return total / 1e9


def live_children(pid: int) -> list[int]:
    """The pids of a process's children that are still running."""
    return [int(c) for c in "".join(p.read_text() for p in Path(f"/proc/{pid}/task").glob("*/children")).split()]


def tree_cpu_seconds(pid: int) -> float:
    """CPU time so far of a process and of its live children (the bastion and its recorder worker)."""
    total = cpu_seconds(pid)
    for child in live_children(pid):
        with contextlib.suppress(OSError):  # gone meanwhile
            total += cpu_seconds(child)
    return total


def wait_no_children(pid: int, timeout: float = 5) -> bool:
    """Wait until a process has no child left (an sshd has reaped its sessions); False at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if not live_children(pid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


# -- profiles -----------------------------------------------------------------------------------


def where_time_goes(path: Path, categories: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """Each py-spy sample (collapsed stacks) to one category: the innermost frame that matches one.

    ``categories`` is (label, regular expression searched in a frame, ``function (file:line)``);
    walking from the leaf outwards, the first frame that matches any of them decides, and the
    first matching category in the tuple wins. Shares add up to 100 %.
    """
    patterns = [(label, re.compile(pattern)) for label, pattern in categories]
    counts: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        counts[_category(stack.split(";"), patterns)] += n
    return [(label, f"{n / total * 100:.1f}") for label, n in counts.most_common()] if total else []


def _category(frames: list[str], patterns: list[tuple[str, re.Pattern[str]]]) -> str:
    for frame in reversed(frames):
        for label, pattern in patterns:
            if pattern.search(frame):
                return label
    return "other"
