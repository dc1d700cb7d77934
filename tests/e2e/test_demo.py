"""The README's first command: `bastion demo`, followed line by line as a newcomer would."""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import requests
from peers import BIN


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_in(command: str, user: str, groups: list[str], cwd: Path, env: dict[str, str]) -> None:
    """Run a printed `bastion login` line and approve it at the dev IdP as ``user``."""
    login = subprocess.Popen(shlex.split(command), cwd=cwd, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    assert login.stdout is not None
    url = next(line.strip() for line in login.stdout if line.startswith("http"))
    code = parse_qs(urlparse(url).query)["user_code"][0]
    requests.post(url.split("?")[0], timeout=10,
                  data={"user_code": code, "username": user, "groups": groups, "action": "approve"})
    assert login.wait(30) == 0


def test_demo_login_connect_and_audit(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    ports = [str(_free_port()) for _ in range(4)]
    demo = subprocess.Popen(
        ["bastion", "demo", "--dir", "demo", "--ssh-port", ports[0], "--http-port", ports[1], "--idp-port", ports[2],
         "--pg-port", ports[3]],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in demo.stdout or []], daemon=True).start()
    try:
        printed = []
        while "play ID" not in "".join(printed) or not printed[-1].strip().startswith("recorder"):
            printed.append(lines.get(timeout=30))
        text = "".join(printed)
        assert "DEVELOPMENT ONLY" in text
        commands = [line.strip() for line in printed if re.match(r"   (bastion|ssh|recorder) ", line)]
        login_cmd, ssh_cmd, bob_login_cmd, bob_approve_cmd, audit_cmd, recorder_cmd = commands
        log_in(login_cmd, "alice", ["dev"], tmp_path, env)

        ssh = subprocess.run([*shlex.split(ssh_cmd), "whoami", "--json"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert ssh.returncode == 0, ssh.stderr
        assert json.loads(ssh.stdout)["groups"] == ["dev"]

        rows = subprocess.run([*shlex.split(ssh_cmd), "sql", "pg-demo", "--format", "json",
                               "select name, email, ssn from customers order by id"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        if "pg-demo will not answer" not in text:
            assert rows.returncode == 0, rows.stderr
            first = json.loads(rows.stdout)[0]["rows"][0]
            assert first["name"] == "Ada Lovelace" and first["email"] == "****@example.com"
            assert "123-45-6789" not in rows.stdout

        # Step 3: alice asks for pg-prod, bob approves, alice's one-shot command runs under the grant.
        asked = subprocess.run([*shlex.split(ssh_cmd), "request pg-prod --reason 'check order 2' --json"],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30,
                               stdin=subprocess.DEVNULL)
        assert asked.returncode == 0, asked.stderr
        request_id = json.loads(asked.stdout)["id"]
        log_in(bob_login_cmd, "bob", ["sre"], tmp_path, env)
        approved = subprocess.run(shlex.split(bob_approve_cmd.replace(" ID", f" {request_id}")), cwd=tmp_path,
                                  env=env, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert approved.returncode == 0, approved.stderr
        if "pg-demo will not answer" not in text:
            prod = subprocess.run([*shlex.split(ssh_cmd), "sql", "pg-prod", "select count(*) from orders"],
                                  cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30,
                                  stdin=subprocess.DEVNULL)
            assert prod.returncode == 0, prod.stderr

        audit = subprocess.run(shlex.split(audit_cmd), cwd=tmp_path, env=env, capture_output=True, text=True)
        assert "certificate.issued" in audit.stdout and "connection.authenticated" in audit.stdout
        assert "alice" in audit.stdout
        listing = subprocess.run(shlex.split(recorder_cmd), cwd=tmp_path, env=env, capture_output=True, text=True)
        assert listing.returncode == 0 and "alice" in listing.stdout
    finally:
        demo.send_signal(signal.SIGINT)
        assert demo.wait(15) == 0
