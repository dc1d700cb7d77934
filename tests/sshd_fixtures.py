"""pytest fixtures for SSH targets: a real OpenSSH sshd on a random loopback port.

Use from a test module with ``pytest_plugins = ["sshd_fixtures"]``. The sshd
trusts a user CA given at start (the bastion's target CA) through
``TrustedUserCAKeys``, also accepts one plain key (for the ``identity``
fallback), and presents both a plain host key and a host certificate.
:func:`bastion_with_sshd` starts a bastion and such an sshd together, and
:func:`wait_recording` finds a session's recording once it shows some text.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pytest
from peers import Bastion, bastion_cli

SSHD = Path("/usr/sbin/sshd")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_key(path: Path, key: asyncssh.SSHKey) -> Path:
    key.write_private_key(str(path))
    os.chmod(path, 0o600)
    key.write_public_key(f"{path}.pub")
    return path


@dataclass
class Sshd:
    """A running sshd and the keys a test needs to trust it or be trusted by it."""

    directory: Path
    trusted_user_ca: str            # the OpenSSH line of the user CA it trusts
    port: int = 0
    login: str = field(default_factory=getpass.getuser)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.host_ca = asyncssh.generate_private_key("ssh-ed25519")
        self.client_key = asyncssh.generate_private_key("ssh-ed25519")  # the identity fallback
        self.log = self.directory / "sshd.log"

    @property
    def host_key_line(self) -> str:
        return bytes(self.host_key.export_public_key()).decode().strip()

    @property
    def host_ca_line(self) -> str:
        return bytes(self.host_ca.export_public_key()).decode().strip()

    @property
    def client_key_file(self) -> Path:
        return self.directory / "client_key"

    def start(self) -> Sshd:
        d = self.directory
        host_key = _write_key(d / "host_key", self.host_key)
        cert = self.host_ca.generate_host_certificate(self.host_key, "sshd-test", principals=["127.0.0.1"])
        cert.write_certificate(str(d / "host_key-cert.pub"))
        _write_key(self.client_key_file, self.client_key)
        (d / "trusted_user_ca").write_text(self.trusted_user_ca + "\n")
        (d / "authorized_keys").write_text(bytes(self.client_key.export_public_key()).decode())
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        self.port = _free_port()
        (d / "sshd_config").write_text(textwrap.dedent(f"""\
            Port {self.port}
            ListenAddress 127.0.0.1
            HostKey {host_key}
            HostCertificate {d / 'host_key-cert.pub'}
            TrustedUserCAKeys {d / 'trusted_user_ca'}
            AuthorizedKeysFile {d / 'authorized_keys'}
            AuthenticationMethods publickey
            PubkeyAuthentication yes
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            PermitRootLogin prohibit-password
            AllowUsers {self.login}
            UsePAM no
            StrictModes no
            PidFile none
            PrintMotd no
            PrintLastLog no
            UseDNS no
            X11Forwarding no
            AllowAgentForwarding no
            AllowTcpForwarding no
            ExposeAuthInfo yes
            LogLevel VERBOSE
            """))
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(d / "sshd_config")],
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sshd did not start:\n{self.log.read_text()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def sshd_unavailable() -> str | None:
    """Why no sshd can run here, or None."""
    if not SSHD.exists():
        return f"{SSHD} is not installed (Debian: openssh-server)"
    if shutil.which("ssh") is None:
        return "the OpenSSH client (ssh) is not installed"
    return None


@pytest.fixture(scope="module")
def make_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Sshd]]:
    """Start sshds that trust a given user CA line; all stopped at the end of the module."""
    reason = sshd_unavailable()
    if reason is not None:
        pytest.skip(reason)
    started: list[Sshd] = []

    def make(trusted_user_ca: str) -> Sshd:
        sshd = Sshd(tmp_path_factory.mktemp("sshd"), trusted_user_ca).start()
        started.append(sshd)
        return sshd

    yield make
    for sshd in started:
        sshd.stop()


@contextlib.contextmanager
def bastion_with_sshd(directory: Path, issuer: str, make_sshd: Callable[[str], Sshd],
                      targets: Callable[[Sshd], str]) -> Iterator[tuple[Bastion, Sshd]]:
    """A bastion made by `bastion init` in ``directory`` with config ``targets(sshd)``, and an sshd that trusts
    its target CA; the bastion is stopped at the end (the sshd with ``make_sshd``'s)."""
    made = bastion_cli("init", "--dir", str(directory), "--oidc-issuer", issuer)
    assert made.returncode == 0, made.stderr
    assert "TrustedUserCAKeys" in made.stdout
    line = bastion_cli("target-ca", "-c", str(directory / "bastion.yaml"))
    assert line.returncode == 0, line.stderr
    sshd = make_sshd(line.stdout.strip())
    bastion = Bastion(directory, issuer)
    bastion.write_config(body=targets(sshd))
    bastion.start()
    try:
        yield bastion, sshd
    finally:
        bastion.stop()


def wait_recording(bastion: Bastion, session: str | None, text: str) -> Path:
    """The recording of an ended ``session``, once it is closed (the recorder writes behind) and has ``text``.

    Closed, not just showing ``text``: the worker writes in batches, so what a test checks next (a marker at the
    end, say) may still be on its way when ``text`` is already there. Fails after 10 s.
    """
    bastion.wait_event("recording.closed", lambda e: e.session == session)
    path = next((bastion.state / "recordings").rglob(f"{session}.cast"), None)
    assert path is not None and text in path.read_text(), f"{text!r} is not in the recording of {session}"
    return path
