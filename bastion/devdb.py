"""A throwaway real PostgreSQL, DEVELOPMENT ONLY: for `bastion demo` and the test suite.

initdb with scram-sha-256, a loopback port (random unless given), TLS on,
fsync off: nothing here is meant to keep data.

As root (CI runs as root) initdb and postgres run as the ``postgres`` user (or
``nobody``) through ``setpriv``, with the temporary directory chowned to it.
The superuser's password is random per run; :meth:`PgServer.psql` runs SQL as
the superuser with ``PGPASSWORD`` in the child's environment, never its argv.
"""

from __future__ import annotations

import datetime
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SUPERUSER = "postgres"


class PgUnavailable(RuntimeError):
    """The PostgreSQL binaries this machine would need are missing."""


def find_bindir() -> Path:
    """The directory holding initdb and postgres: pg_config --bindir, then /usr/lib/postgresql/*/bin."""
    candidates: list[str] = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0, reverse=True)
    for d in candidates:
        if d and all(os.access(Path(d) / exe, os.X_OK) for exe in ("initdb", "postgres")):
            return Path(d)
    raise PgUnavailable("PostgreSQL server binaries (initdb, postgres) not found; install the postgresql package")


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost that is its own CA, and its key."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    crt, pem = directory / "server.crt", directory / "server.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    pem.chmod(0o600)
    return crt, pem


class PgServer:
    """One running PostgreSQL cluster in a temporary directory."""

    def __init__(self, port: int = 0) -> None:
        self.bindir = find_bindir()
        self._wanted_port = port
        self.password = secrets.token_urlsafe(18)
        self.dir = Path(tempfile.mkdtemp(prefix="bastion-pg-"))
        self.data = self.dir / "data"
        self.host = "127.0.0.1"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._as: list[str] = []
        self.ca_file = self.dir / "server.crt"

    # ---- life cycle ---------------------------------------------------------------------------

    def start(self) -> PgServer:
        """initdb, configure and start; wait until it accepts connections."""
        uid, gid = os.getuid(), os.getgid()
        if uid == 0:
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                entry = pwd.getpwnam("nobody")
            uid, gid = entry.pw_uid, entry.pw_gid
            self._as = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
        pwfile = self.dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        _self_signed(self.dir)
        for path in (self.dir, pwfile, self.dir / "server.crt", self.dir / "server.key"):
            os.chown(path, uid, gid)
        self._run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "-E", "UTF8",
                   "--locale=C", "--auth=scram-sha-256", f"--pwfile={pwfile}", "--no-sync"])
        (self.data / "pg_hba.conf").write_text(
            "local all all scram-sha-256\n"
            "host all md5user 127.0.0.1/32 md5\n"
            "host all all 127.0.0.1/32 scram-sha-256\n")
        for attempt in range(3):
            self.port = self._wanted_port or free_port()
            if self._launch():
                return self
            if attempt == 2 or self._wanted_port:
                raise PgUnavailable(f"postgres did not start on port {self.port}:\n{self.log_text()[-2000:]}")
        return self

    def _launch(self) -> bool:
        log = (self.dir / "postgres.log").open("ab")
        self.proc = subprocess.Popen(
            [*self._as, str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-k", str(self.dir), "-c", f"listen_addresses={self.host}", "-c", "fsync=off",
             "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "ssl=on",
             "-c", f"ssl_cert_file={self.dir / 'server.crt'}", "-c", f"ssl_key_file={self.dir / 'server.key'}",
             "-c", "max_connections=60", "-c", "shared_buffers=32MB"],
            stdout=log, stderr=subprocess.STDOUT, env=self._env())
        log.close()
        deadline = time.monotonic() + 30
        pidfile = self.data / "postmaster.pid"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if pidfile.read_text().rstrip().endswith("ready"):
                    return True
            except OSError:
                pass  # not written yet
            time.sleep(0.05)
        self.stop()
        return False

    def stop(self) -> None:
        """Fast shutdown, then remove every file."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- helpers ------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    def _run(self, argv: list[str]) -> None:
        out = subprocess.run([*self._as, *argv], capture_output=True, text=True, env=self._env(), cwd=self.dir)
        if out.returncode:
            raise RuntimeError(f"{argv[0]} failed: {out.stdout}{out.stderr}")

    def log_text(self) -> str:
        """The server's log so far."""
        path = self.dir / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def psql(self, sql: str, *, db: str = "postgres", user: str = SUPERUSER, password: str | None = None) -> str:
        """Run SQL with the real psql as the superuser (or ``user``); return unaligned, tuples-only output."""
        env = self._env() | {"PGPASSWORD": self.password if password is None else password}
        out = subprocess.run(
            [str(self.bindir / "psql") if (self.bindir / "psql").exists() else "psql", "-X", "-A", "-t", "-q",
             "-v", "ON_ERROR_STOP=1", "-h", self.host, "-p", str(self.port), "-U", user, "-d", db, "-c", sql],
            capture_output=True, text=True, env=env, timeout=60)
        if out.returncode:
            raise RuntimeError(f"psql failed ({out.returncode}): {out.stderr.strip()}")
        return out.stdout.strip()

    def create_role(self, name: str, password: str, *, md5: bool = False, superuser: bool = False) -> None:
        """A login role with a password, stored as md5 when asked (for the md5 login path)."""
        encryption = "SET password_encryption = 'md5'; " if md5 else ""
        self.psql(f"{encryption}CREATE ROLE {name} LOGIN {'SUPERUSER ' if superuser else ''}PASSWORD '{password}'")
