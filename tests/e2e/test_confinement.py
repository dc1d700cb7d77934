"""The shell cannot run a program on the bastion, and nothing tunnels through it unchecked."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest
from oidc_issuer import OidcIssuer
from peers import Bastion, Client

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_IMPORTS = {"subprocess", "pty", "pexpect", "multiprocessing"}
FORBIDDEN_CALLS = {"system", "popen", "execv", "execve", "execvp", "spawnv", "create_subprocess_exec",
                   "create_subprocess_shell", "fork"}


@pytest.mark.parametrize("command", [
    ("/bin/sh", "-c", "id"), ("id",), ("sh",), ("bash", "-i"), ("targets;", "id"), ("$(id)",),
    ("`id`",), ("help", "&&", "id"), ("python3", "-c", "print(1)"),
])
def test_exec_never_reaches_a_program(client: Client, oidc_issuer: OidcIssuer,
                                      command: tuple[str, ...]) -> None:
    client.certify(oidc_issuer, "bob", ["sre"])
    result = client.ssh("bob", *command)
    assert result.returncode == 2, (command, result.stdout, result.stderr)
    assert "uid=" not in result.stdout + result.stderr


@pytest.mark.parametrize("subsystem", ["netconf", "sftp-server", "shell"])
def test_subsystems_other_than_the_file_gateway_are_refused(client: Client, oidc_issuer: OidcIssuer,
                                                            subsystem: str) -> None:
    client.certify(oidc_issuer, "bob", ["sre"])
    result = client.ssh("bob", subsystem, extra=("-s",))
    assert result.returncode != 0
    assert "subsystem request failed" in result.stderr


def test_port_forwarding_is_refused_and_audited(client: Client, bastion: Bastion, oidc_issuer: OidcIssuer) -> None:
    client.certify(oidc_issuer, "bob", ["sre"])  # sre's certificate carries permit-port-forwarding
    result = client.ssh("bob", extra=("-W", f"127.0.0.1:{bastion.http_port}"))
    assert result.returncode != 0
    assert "administratively prohibited" in result.stderr
    event = bastion.wait_event("forward.refused", lambda e: e.user == "bob")
    assert event.detail["destination"] == f"127.0.0.1:{bastion.http_port}"


def test_remote_forwarding_is_refused(client: Client, oidc_issuer: OidcIssuer) -> None:
    client.certify(oidc_issuer, "bob", ["sre"])
    result = client.ssh("bob", "whoami", extra=("-R", "0:127.0.0.1:22", "-o", "ExitOnForwardFailure=yes"))
    assert result.returncode == 255 and "remote port forwarding failed" in result.stderr.lower()


def test_x11_forwarding_is_refused(client: Client, oidc_issuer: OidcIssuer) -> None:
    """Agent forwarding has no reply in OpenSSH; certificates never permit it (see test_ca)."""
    client.certify(oidc_issuer, "bob", ["sre"])
    env = {**client.env(), "DISPLAY": ":0"}
    result = subprocess.run([*client.ssh_args("bob", "-X"), "whoami"], env=env, capture_output=True,
                            text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == 0
    assert "X11 forwarding request failed" in result.stderr


def _session_modules() -> list[Path]:
    return [*(ROOT / "shell").glob("*.py"), *(ROOT / "bastion").glob("session*.py"), ROOT / "bastion" / "server.py",
            ROOT / "bastion" / "proxyjump.py"]


@pytest.mark.parametrize("path", _session_modules(), ids=lambda p: p.name)
def test_session_code_cannot_start_programs(path: Path) -> None:
    """A tripwire: the code a session runs imports nothing that starts a process."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not {a.name.split(".")[0] for a in node.names} & FORBIDDEN_IMPORTS, path
        if isinstance(node, ast.ImportFrom) and node.module:
            assert node.module.split(".")[0] not in FORBIDDEN_IMPORTS, path
        if isinstance(node, ast.Attribute):
            assert node.attr not in FORBIDDEN_CALLS, f"{path}: {node.attr}"
