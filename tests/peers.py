"""Real peers for end-to-end tests: the bastion daemon as a subprocess, and OpenSSH clients.

Each :class:`Bastion` is a real ``bastion serve`` process on loopback port 0,
with its own state directory, keys and audit store. Each :class:`Client` has
its own key, certificate and known_hosts files and drives the real ``ssh``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import requests

from bastion.audit import AuditStore, Event

BIN = Path(sys.executable).parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]|\r")

TARGETS = """
targets:
  pg-demo: {kind: postgres, address: "127.0.0.1:5432", labels: {env: demo}, description: "demo db"}
  pg-prod: {kind: postgres, address: "127.0.0.1:5433", labels: {env: prod}}
  web-1:   {kind: ssh, address: "127.0.0.1:22", labels: {env: prod}}
  vault:   {kind: mysql, address: "127.0.0.1:3306", labels: {env: restricted}}
policies:
  - {name: dev-demo, subjects: {groups: [dev]}, targets: {labels: {env: demo}}, access: allow}
  - name: dev-prod
    subjects: {groups: [dev]}
    targets: {labels: {env: prod}}
    access: approval
    approval: {approvers: {groups: [sre]}}
  - {name: sre-all, subjects: {groups: [sre]}, targets: {names: ["*"]}, access: allow, port_forwarding: true}
  - {name: nobody-vault, subjects: {groups: [sre]}, targets: {names: [vault]}, access: deny}
"""


def strip_ansi(text: str) -> str:
    """Terminal output as plain text."""
    return ANSI.sub("", text)


def bastion_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``bastion`` console script."""
    return subprocess.run([str(BIN / "bastion"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, input=input)


@dataclass
class Bastion:
    """A running ``bastion serve`` and its state directory."""

    directory: Path
    issuer: str
    proc: subprocess.Popen[str] | None = None
    ssh_port: int = 0
    http_port: int = 0
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.directory / "bastion.log"

    @property
    def config(self) -> Path:
        return self.directory / "bastion.yaml"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def state(self) -> Path:
        return self.directory / "state"

    def write_config(self, *, certificates: str = "{default_ttl: 1h, max_ttl: 8h}",
                     limits: str = "{}", body: str = TARGETS) -> None:
        self.config.write_text(textwrap.dedent(f"""\
            listen: {{ssh: "127.0.0.1:0", http: "127.0.0.1:0"}}
            state_dir: state
            identity:
              oidc: {{issuer: "{self.issuer}", client_id: bastion, scopes: [openid, profile, email, groups]}}
              certificates: {certificates}
            limits: {limits}
            """) + body)

    def start(self, *serve_args: str) -> Bastion:
        ready = self.directory / "ready.json"
        ready.unlink(missing_ok=True)
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "bastion"), "serve", "-c", str(self.config), "--ready-file", str(ready), *serve_args],
                stdout=log, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 20
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bastion did not start:\n{self.log.read_text()}")
            time.sleep(0.05)
        ports = json.loads(ready.read_text())
        self.ssh_port, self.http_port = ports["ssh_port"], ports["http_port"]
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def user_ca(self) -> asyncssh.SSHKey:
        return asyncssh.read_private_key(str(self.state / "keys" / "user_ca"))

    def host_ca(self) -> asyncssh.SSHKey:
        return asyncssh.read_private_key(str(self.state / "keys" / "host_ca"))

    def events(self, kind: str | None = None, user: str | None = None) -> list[Event]:
        store = AuditStore(self.state / "audit.db")
        try:
            return store.events(kinds=(kind,) if kind else (), user=user)
        finally:
            store.close()

    def wait_event(self, kind: str, predicate: Any = lambda e: True, timeout: float = 10) -> Event:
        """The first event of ``kind`` satisfying ``predicate``; waits for it to be written."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events(kind) if predicate(e)]
            if found:
                return found[-1]
            if time.monotonic() > deadline:
                raise AssertionError(f"no {kind} event; have {[e.kind for e in self.events()]}")
            time.sleep(0.05)

    def revoke(self, serial: int) -> None:
        store = AuditStore(self.state / "audit.db")
        try:
            store.revoke(serial, by="test", reason="test revocation")
        finally:
            store.close()


def new_bastion(directory: Path, issuer: str, **config: str) -> Bastion:
    """``bastion init`` a directory, replace its config with a test one, and start it."""
    result = bastion_cli("init", "--dir", str(directory), "--oidc-issuer", issuer)
    assert result.returncode == 0, result.stderr
    bastion = Bastion(directory, issuer)
    bastion.write_config(**config)
    return bastion.start()


@dataclass
class Client:
    """One person's machine: a home with ~/.ssh, driving real OpenSSH."""

    home: Path
    bastion: Bastion

    def __post_init__(self) -> None:
        (self.home / ".ssh").mkdir(parents=True, exist_ok=True, mode=0o700)

    @property
    def key(self) -> Path:
        return self.home / ".ssh" / "id_ed25519"

    @property
    def cert(self) -> Path:
        return self.home / ".ssh" / "id_ed25519-cert.pub"

    @property
    def known_hosts(self) -> Path:
        return self.home / ".ssh" / "known_hosts"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
        env.update(HOME=str(self.home), TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1")
        return env

    def make_key(self) -> asyncssh.SSHKey:
        key = asyncssh.generate_private_key("ssh-ed25519")
        self.key.unlink(missing_ok=True)
        key.write_private_key(str(self.key))
        os.chmod(self.key, 0o600)
        key.write_public_key(str(self.key) + ".pub")
        return key

    def certify(self, issuer: Any, user: str, groups: list[str], **request: Any) -> dict[str, Any]:
        """Get a certificate through the real HTTP exchange with a token from the issuer fixture."""
        key = self.make_key() if not self.key.exists() else asyncssh.read_private_key(str(self.key))
        token = issuer.mint_id_token(issuer.standard_claims(user, groups))
        response = requests.post(f"{self.bastion.url}/v1/certificates", timeout=10, json={
            "public_key": key.export_public_key().decode(), "id_token": token, **request})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        self.cert.write_text(body["certificate"] + "\n")
        self.known_hosts.write_text(body["known_hosts"] + "\n")
        return body

    def install_cert(self, cert: asyncssh.SSHCertificate) -> None:
        """Use a certificate made by the test itself (forged, expired...)."""
        cert.write_certificate(str(self.cert))

    def ssh_args(self, user: str, *extra: str) -> list[str]:
        return ["ssh", "-F", "/dev/null", "-p", str(self.bastion.ssh_port), "-i", str(self.key),
                "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                *extra, f"{user}@127.0.0.1"]

    def ssh(self, user: str, *command: str, extra: tuple[str, ...] = (),
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run one command through the bastion with the real OpenSSH client."""
        return subprocess.run([*self.ssh_args(user, *extra), *command], capture_output=True,
                              text=True, timeout=timeout, env=self.env(), stdin=subprocess.DEVNULL)


def cert_blob(line: str) -> bytes:
    """The binary blob of an OpenSSH certificate line."""
    return base64.b64decode(line.split()[1])


def have(binary: str) -> bool:
    """True when a peer binary is installed."""
    return shutil.which(binary) is not None
