"""`bastion login` as a person runs it: the IdP page in 'a browser', then plain ssh works."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import requests
from peers import BIN, Bastion, Client


class LoginProcess:
    """A running `bastion login`, read line by line."""

    def __init__(self, client: Client, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "bastion"), "login", "--bastion", client.bastion.url, "--key", str(client.key),
             "--known-hosts", str(client.known_hosts), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env or client.env(),
            stdin=subprocess.DEVNULL)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def url(self) -> str:
        """The line that holds nothing but the URL to open."""
        while True:
            line = self.lines.get(timeout=15)
            self.output.append(line)
            if line.startswith(("http://", "https://")):
                assert " " not in line
                return line

    def finish(self) -> str:
        assert self.proc.wait(30) == 0, "\n".join(self.output)
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return "\n".join(self.output)


def _approve_device(url: str, username: str, groups: list[str]) -> None:
    user_code = parse_qs(urlparse(url).query)["user_code"][0]
    page = requests.get(url, timeout=10)
    assert page.status_code == 200 and "development" in page.text.lower()
    base = url.split("?")[0]
    r = requests.post(base, data={"user_code": user_code, "username": username, "groups": groups,
                                  "action": "approve"}, timeout=10)
    assert r.status_code == 200, r.text


def test_device_flow_then_plain_ssh(client: Client, bastion: Bastion) -> None:
    login = LoginProcess(client, "--flow", "device")
    _approve_device(login.url(), "carol", ["dev", "sre"])
    output = login.finish()
    assert "Logged in as carol (groups: dev, sre)" in output
    assert client.cert.exists() and (client.key.stat().st_mode & 0o777) == 0o600
    assert client.known_hosts.read_text().startswith("@cert-authority [localhost]:")
    result = client.ssh("carol", "targets", "--json")  # StrictHostKeyChecking=yes: the host CA is trusted
    assert result.returncode == 0, result.stderr
    assert [t["name"] for t in json.loads(result.stdout)] == ["pg-demo", "pg-prod", "web-1"]
    event = bastion.wait_event("certificate.issued", lambda e: e.user == "carol")
    assert event.detail["groups"] == ["dev", "sre"]


def test_code_flow_with_pkce_then_plain_ssh(client: Client, bastion: Bastion) -> None:
    login = LoginProcess(client, "--flow", "code", "--no-browser")
    url = login.url()
    params = {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
    assert params["code_challenge_method"] == "S256" and params["redirect_uri"].startswith("http://127.0.0.1:")
    assert requests.get(url, timeout=10).status_code == 200  # the page a browser would show
    decided = requests.post(url.split("?")[0], data={**params, "username": "alice", "groups": ["dev"],
                                                     "action": "approve"},
                            allow_redirects=False, timeout=10)
    assert decided.status_code == 302
    assert requests.get(decided.headers["Location"], timeout=10).status_code == 200  # the loopback redirect
    assert "Logged in as alice (groups: dev)" in login.finish()
    assert json.loads(client.ssh("alice", "whoami", "--json").stdout)["groups"] == ["dev"]


def test_denied_login_fails_clearly(client: Client) -> None:
    login = LoginProcess(client, "--flow", "code", "--no-browser")
    url = login.url()
    params = {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
    decided = requests.post(url.split("?")[0], data={**params, "username": "alice", "action": "deny"},
                            allow_redirects=False, timeout=10)
    requests.get(decided.headers["Location"], timeout=10)
    assert login.proc.wait(30) != 0
    while not login.lines.empty():
        login.output.append(login.lines.get())
    assert "denied" in "\n".join(login.output)
    assert not client.cert.exists()


@pytest.mark.skipif(not Path("/usr/bin/ssh-agent").exists(), reason="ssh-agent is not installed")
def test_agent_holds_the_certificate_for_its_lifetime(client: Client, tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            threading.Event().wait(0.05)
        env = {**client.env(), "SSH_AUTH_SOCK": str(sock)}
        login = LoginProcess(client, "--flow", "device", "--agent", "--ttl", "600", env=env)
        _approve_device(login.url(), "alice", ["dev"])
        assert "ssh-agent" in login.finish()
        listed = subprocess.run(["ssh-add", "-L"], env=env, capture_output=True, text=True).stdout
        assert "ssh-ed25519-cert-v01@openssh.com" in listed
        os.remove(client.key)  # only the agent can sign now
        client.cert.unlink()
        args = ["ssh", "-F", "/dev/null", "-p", str(client.bastion.ssh_port),
                "-o", f"UserKnownHostsFile={client.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", "alice@127.0.0.1", "whoami", "--json"]
        result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["user"] == "alice"
    finally:
        agent.terminate()
        agent.wait(5)
