"""The client side of ``bastion login``: key, certificate exchange, known_hosts and ssh-agent.

The OAuth flows that produce the ID token live in :mod:`bastion.login_flows`.
Messages for the user go to the ``out`` stream; the ID token never appears in
one, nor in any error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TextIO

import aiohttp
import asyncssh

from .errors import LoginError
from .login_flows import (
    IssuerInfo,
    discover_issuer,
    fetch_json,
    obtain_id_token,
    require_secure_url,
)

logger = logging.getLogger(__name__)

KnownHostsChange = Literal["added", "replaced", "unchanged"]


@dataclass(frozen=True)
class LoginResult:
    """What a successful login produced, and where it was written."""

    principal: str
    valid_before: datetime
    key_path: Path
    certificate_path: Path
    known_hosts_path: Path
    groups: tuple[str, ...]


@dataclass(frozen=True)
class IssuedCertificate:
    """The bastion's answer to ``POST /v1/certificates``."""

    certificate: str
    known_hosts: str
    principal: str
    valid_before: datetime
    groups: tuple[str, ...]


def home_dir(environ: Mapping[str, str]) -> Path:
    """The user's home directory, from ``HOME`` in ``environ`` when set."""
    home = environ.get("HOME")
    return Path(home) if home else Path.home()


def certificate_path_for(key_path: Path) -> Path:
    """Where OpenSSH looks for the certificate of ``key_path``: ``<key>-cert.pub``."""
    return key_path.with_name(key_path.name + "-cert.pub")


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _ensure_ssh_dir(directory: Path) -> None:
    if not directory.exists():
        directory.mkdir(parents=True, mode=0o700)
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask


def load_or_create_key(key_path: Path, comment: str) -> asyncssh.SSHKey:
    """Return the public key of ``key_path``, generating an Ed25519 key there if none exists."""
    pub_path = key_path.with_name(key_path.name + ".pub")
    try:
        if not key_path.exists():
            if pub_path.exists():
                raise LoginError(f"{pub_path} exists but its private key {key_path} does not; "
                                 "move the .pub away or pass another key")
            _ensure_ssh_dir(key_path.parent)
            key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key.export_private_key("openssh"))
            _write_atomic(pub_path, key.export_public_key("openssh"), 0o644)
            logger.info("generated a new ssh-ed25519 key at %s", key_path)
            return asyncssh.import_public_key(key.export_public_key("openssh"))
        if pub_path.exists():
            return asyncssh.read_public_key(str(pub_path))
        try:
            private = asyncssh.read_private_key(str(key_path))
        except asyncssh.KeyImportError as e:
            if "passphrase" in str(e).lower():
                raise LoginError(f"{key_path} is protected by a passphrase and {pub_path} is missing; "
                                 f"recreate it with: ssh-keygen -y -f {key_path} > {pub_path}") from e
            raise LoginError(f"cannot read the SSH key {key_path}: {e}") from e
        return asyncssh.import_public_key(private.export_public_key("openssh"))
    except OSError as e:
        raise LoginError(f"cannot use the SSH key {key_path}: {e.strerror or e}") from e
    except asyncssh.KeyImportError as e:
        raise LoginError(f"cannot read the SSH public key {pub_path}: {e}") from e


def public_key_line(key: asyncssh.SSHKey) -> str:
    """The key as one OpenSSH ``authorized_keys``-style line, without a trailing newline."""
    return key.export_public_key("openssh").decode("ascii").strip()


def write_certificate(key_path: Path, certificate: str) -> Path:
    """Write ``certificate`` next to ``key_path`` as ``<key>-cert.pub``, mode 0644, atomically."""
    path = certificate_path_for(key_path)
    try:
        _write_atomic(path, certificate.strip().encode("ascii") + b"\n", 0o644)
    except OSError as e:
        raise LoginError(f"cannot write the certificate to {path}: {e.strerror or e}") from e
    return path


def _ca_pattern(line: str) -> str | None:
    fields = line.split()
    if len(fields) >= 4 and fields[0] == "@cert-authority":
        return fields[1]
    return None


def _marked(line: str) -> tuple[str, str] | None:
    """(key, mark) of a marked ``@cert-authority`` line: the bastion's list of jump targets."""
    fields = line.split()
    if len(fields) >= 5 and fields[0] == "@cert-authority":
        return fields[3], fields[4]
    return None


def update_known_hosts(path: Path, new_text: str) -> KnownHostsChange:
    """Add the bastion's ``@cert-authority`` lines to ``path``, replacing older ones for the same hosts."""
    new_lines = [line.strip() for line in new_text.splitlines() if line.strip()]
    if not new_lines or any(_ca_pattern(line) is None for line in new_lines):
        raise LoginError("the bastion returned a malformed known_hosts entry (expected an @cert-authority line)")
    patterns = {_ca_pattern(line) for line in new_lines}
    marks = {m for m in map(_marked, new_lines) if m is not None}  # its jump-target names may have changed
    target = path.resolve() if path.is_symlink() else path
    try:
        _ensure_ssh_dir(target.parent)
        existing = target.read_text().splitlines() if target.exists() else []
        mode = target.stat().st_mode & 0o777 if target.exists() else 0o644
        kept: list[str] = []
        removed = False
        for line in existing:
            stripped = line.strip()
            if (_ca_pattern(stripped) in patterns or _marked(stripped) in marks) and stripped not in new_lines:
                removed = True
                continue
            kept.append(line)
        present = {line.strip() for line in kept}
        added = [line for line in new_lines if line not in present]
        if not added and not removed:
            return "unchanged"
        _write_atomic(target, "".join(f"{line}\n" for line in kept + added).encode(), mode)
    except OSError as e:
        raise LoginError(f"cannot update {path}: {e.strerror or e}") from e
    return "replaced" if removed else "added"


def _require_agent(environ: Mapping[str, str]) -> None:
    if not environ.get("SSH_AUTH_SOCK"):
        raise LoginError("cannot add the certificate to ssh-agent: SSH_AUTH_SOCK is not set; "
                         'start an agent with eval "$(ssh-agent)" or log in without --agent')


async def add_to_agent(key_path: Path, seconds: int, environ: Mapping[str, str]) -> None:
    """Load ``key_path`` and its ``-cert.pub`` into ssh-agent for ``seconds`` (``ssh-add -t``)."""
    _require_agent(environ)
    if seconds <= 0:
        raise LoginError("the certificate has already expired; run bastion login again")
    ssh_add = shutil.which("ssh-add", path=environ.get("PATH") or os.defpath)
    if ssh_add is None:
        raise LoginError("cannot add the certificate to ssh-agent: ssh-add is not installed")
    try:
        proc = await asyncio.create_subprocess_exec(
            ssh_add, "-t", str(seconds), str(key_path), env=dict(environ),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, stderr = await proc.communicate()
    except OSError as e:
        raise LoginError(f"cannot run ssh-add: {e.strerror or e}") from e
    if proc.returncode != 0:
        detail = stderr.decode(errors="replace").strip() or f"exit status {proc.returncode}"
        raise LoginError(f"ssh-add could not load {key_path} into the agent: {detail}")


def _parse_issued(body: Any) -> IssuedCertificate:
    if not isinstance(body, dict):
        raise LoginError("the bastion answered the certificate request with something that is not JSON")
    try:
        certificate, known_hosts, principal = (str(body[k]) for k in ("certificate", "known_hosts", "principal"))
        valid_before = datetime.fromisoformat(str(body["valid_before"]))
    except (KeyError, ValueError) as e:
        raise LoginError(f"the bastion's certificate answer is incomplete or malformed: {e}") from e
    if valid_before.tzinfo is None:
        valid_before = valid_before.replace(tzinfo=UTC)
    groups = body.get("groups") or []
    return IssuedCertificate(certificate, known_hosts, principal, valid_before.astimezone(UTC),
                             tuple(str(g) for g in groups) if isinstance(groups, list) else ())


async def fetch_issuer_info(session: aiohttp.ClientSession, bastion_url: str,
                            client_secret: str | None = None) -> IssuerInfo:
    """Ask the bastion which IdP to use (``GET /v1/oidc``), then read that IdP's discovery document."""
    url = f"{bastion_url}/v1/oidc"
    status, body = await fetch_json(session, "GET", url, "bastion")
    if status != 200 or not isinstance(body, dict) or not body.get("issuer") or not body.get("client_id"):
        raise LoginError(f"the bastion at {bastion_url} gave no usable OIDC settings ({url}: HTTP {status})")
    scopes = body.get("scopes") or ["openid"]
    return await discover_issuer(session, str(body["issuer"]), str(body["client_id"]),
                                 tuple(str(s) for s in scopes),
                                 client_secret or (str(body["client_secret"]) if body.get("client_secret") else None))


async def request_certificate(session: aiohttp.ClientSession, bastion_url: str, public_key: str,
                              id_token: str, nonce: str | None, ttl: float | None) -> IssuedCertificate:
    """Exchange the ID token and public key for a certificate (``POST /v1/certificates``)."""
    if ttl is not None and ttl == int(ttl):
        ttl = int(ttl)
    payload = {"public_key": public_key, "id_token": id_token, "nonce": nonce, "ttl": ttl}
    status, body = await fetch_json(session, "POST", f"{bastion_url}/v1/certificates", "bastion", json=payload)
    if not 200 <= status < 300:
        reason = body.get("error") if isinstance(body, dict) else None
        raise LoginError(f"the bastion refused the certificate: {reason or f'HTTP {status}'!s}")
    return _parse_issued(body)


def _check_certificate(certificate: str, key: asyncssh.SSHKey) -> None:
    try:
        cert = asyncssh.import_certificate(certificate.strip())
    except (asyncssh.KeyImportError, ValueError) as e:
        raise LoginError(f"the bastion returned a certificate that cannot be read: {e}") from e
    if cert.key.public_data != key.public_data:
        raise LoginError("the bastion returned a certificate for a different key; not writing it")


def format_duration(seconds: float) -> str:
    """A short human duration: "8h", "1h 30m", "45m", "20s"."""
    if seconds < 60:
        return f"{max(0, int(seconds))}s"
    minutes = round(seconds / 60)
    hours, minutes = divmod(minutes, 60)
    if not hours:
        return f"{minutes}m"
    return f"{hours}h" if not minutes else f"{hours}h {minutes}m"


def format_summary(principal: str, groups: tuple[str, ...], valid_before: datetime, now: datetime) -> str:
    """The line that tells the user who they are and until when."""
    who = f"Logged in as {principal}" + (f" (groups: {', '.join(groups)})" if groups else "")
    until = valid_before.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    remaining = format_duration((valid_before - now).total_seconds())
    return f"{who}; certificate valid until {until} ({remaining})."


async def login(bastion_url: str, *, key_path: Path | None = None, flow: str = "auto",
                open_browser: bool = True, agent: bool = False, ttl: float | None = None,
                client_secret: str | None = None, known_hosts: Path | None = None,
                out: TextIO = sys.stderr, environ: Mapping[str, str] | None = None,
                browser_opener: Callable[[str], bool] | None = None, timeout: float = 600.0) -> LoginResult:
    """Log in through the bastion's IdP and install a short-lived SSH certificate for ``key_path``."""
    env = os.environ if environ is None else environ
    bastion_url = require_secure_url(bastion_url.rstrip("/"), "bastion URL")
    home = home_dir(env)
    key_path = key_path if key_path is not None else home / ".ssh" / "id_ed25519"
    known_hosts = known_hosts if known_hosts is not None else home / ".ssh" / "known_hosts"
    if agent:
        _require_agent(env)  # before the user goes through the IdP for nothing
    # The key comes first so that a key problem shows before the user goes through the IdP.
    key = load_or_create_key(key_path, comment=f"{env.get('USER', 'user')}@{socket.gethostname()} (bastion)")
    async with aiohttp.ClientSession() as session:
        info = await fetch_issuer_info(session, bastion_url, client_secret)
        token = await obtain_id_token(info, flow, session=session, out=out, open_browser=open_browser,
                                      environ=env, browser_opener=browser_opener, timeout=timeout)
        issued = await request_certificate(session, bastion_url, public_key_line(key),
                                           token.id_token, token.nonce, ttl)
    _check_certificate(issued.certificate, key)
    cert_path = write_certificate(key_path, issued.certificate)
    change = update_known_hosts(known_hosts, issued.known_hosts)
    if change == "added":
        out.write(f"Trusted the bastion's host CA in {known_hosts}.\n")
    elif change == "replaced":
        out.write(f"The bastion rotated its host CA: replaced the old @cert-authority entry in {known_hosts}.\n")
    now = datetime.now(UTC)
    if agent:
        seconds = int((issued.valid_before - now).total_seconds())
        await add_to_agent(key_path, seconds, env)
        out.write(f"Added {key_path} and its certificate to ssh-agent for {format_duration(seconds)}.\n")
    out.write(format_summary(issued.principal, issued.groups, issued.valid_before, now) + "\n")
    out.write(f"Certificate: {cert_path}\n")
    out.flush()
    return LoginResult(issued.principal, issued.valid_before, key_path, cert_path, known_hosts, issued.groups)
