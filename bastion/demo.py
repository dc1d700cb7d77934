"""``bastion demo``: a working bastion on embedded defaults, for the first ten minutes.

It creates a local CA and config in the demo directory (once), starts the
DEVELOPMENT-ONLY identity provider and the bastion in this process, and prints
the exact commands to paste. Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shlex
import shutil
import sys
from pathlib import Path

from .config import load_config
from .daemon import Daemon, until_stopped
from .devdb import PgServer, PgUnavailable
from .devidp import DevIdentityProvider
from .errors import StateError
from .provision import InitOptions, initialise

log = logging.getLogger(__name__)


def _self_command() -> str:
    """How the user invoked us, so pasted commands work from the same directory."""
    argv0 = sys.argv[0]
    on_path = shutil.which("bastion")
    if os.sep not in argv0 or (on_path and os.path.samefile(on_path, argv0)):
        return "bastion"
    return os.path.relpath(argv0)


def instructions(directory: Path, issuer: str, http_url: str, ssh_port: int) -> str:
    """The lines a newcomer pastes to log in, connect and read the audit trail."""
    me = _self_command()
    recorder = me[: -len("bastion")] + "recorder" if me.endswith("bastion") else "recorder"
    client = directory / "client"
    key, known_hosts = client / "id_ed25519", client / "known_hosts"
    bob_key = client / "bob_ed25519"
    q = shlex.quote
    return f"""
bastion demo is running. Press Ctrl-C to stop it.

  identity provider: {issuer}   (DEVELOPMENT ONLY: anyone can pick any user)
  bastion:           ssh 127.0.0.1:{ssh_port}, http {http_url}

1. Log in. Open the URL it prints, pick a user (alice is in group dev, bob in sre) and approve:

   {me} login --bastion {http_url} --flow device --key {q(str(key))} --known-hosts {q(str(known_hosts))}

2. Connect to the bastion's shell (use the user you picked):

   ssh -p {ssh_port} -i {q(str(key))} -o UserKnownHostsFile={q(str(known_hosts))} alice@127.0.0.1

   Try `targets`, `whoami`, `help`, then `connect pg-demo` and, in the SQL console:
     select * from customers;     -- emails, SSNs and card numbers are masked
     delete from customers;       -- blocked by a guardrail: no WHERE clause
   \q goes back to the bastion shell. Scripts and agents use one-shot commands:
     <the ssh line above> sql pg-demo --format json "select name, email from customers"

3. Just-in-time access: pg-prod needs an approved request, and its writes a reviewer.
   In alice's shell:  request pg-prod --reason "check order 2" --for 15m
   Then log bob in (pick bob, group sre) with a key of his own, and approve as bob:

   {me} login --bastion {http_url} --flow device --key {q(str(bob_key))} --known-hosts {q(str(known_hosts))}
   ssh -p {ssh_port} -i {q(str(bob_key))} -o UserKnownHostsFile={q(str(known_hosts))} bob@127.0.0.1 approve ID

   Now alice can `connect pg-prod`. There, `update orders set total = 6 where id = 3;`
   is held for review: approve that request as bob too, and alice's console runs it.

4. See the audit trail (in another terminal):

   {me} audit -c {q(str(directory / 'bastion.yaml'))}

5. Replay a session: list them, then `play ID` (space pauses, q quits):

   {recorder} -c {q(str(directory / 'bastion.yaml'))} ls
"""


SAMPLE_SCHEMA = """
CREATE TABLE customers (
    id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE, ssn text, card_number text, phone text);
CREATE TABLE orders (
    id serial PRIMARY KEY, customer_id int REFERENCES customers, total numeric(10, 2), placed_at timestamptz);
INSERT INTO customers (name, email, ssn, card_number, phone) VALUES
    ('Ada Lovelace', 'ada@example.com', '123-45-6789', '4111 1111 1111 1111', '+44 20 7946 0958'),
    ('Grace Hopper', 'grace@example.org', '234-56-7890', '5500-0000-0000-0004', '+1 202 555 0142'),
    ('Alan Turing', 'alan@example.net', '345-67-8901', '3400 0000 0000 009', '+44 161 496 0735');
INSERT INTO orders (customer_id, total, placed_at) VALUES
    (1, 12.50, now() - interval '3 days'), (1, 99.00, now() - interval '1 day'), (2, 5.25, now());
GRANT SELECT, INSERT, UPDATE, DELETE ON customers, orders TO bastion_demo;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO bastion_demo;
"""


def _demo_password(directory: Path) -> str:
    """The password only the bastion holds for pg-demo, kept in a 0600 file next to the config."""
    secrets_dir = directory / "secrets"
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    path = secrets_dir / "pg-demo.password"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24))
    return path.read_text().strip()


def _start_database(port: int, password: str) -> PgServer:
    """A throwaway PostgreSQL with the sample schema; blocking, so callers run it in a thread."""
    db = PgServer(port=port).start()
    try:
        db.create_role("bastion_demo", password)
        db.psql("CREATE DATABASE shop")
        db.psql(SAMPLE_SCHEMA, db="shop")
    except BaseException:
        db.stop()
        raise
    return db


async def run_demo(directory: Path, *, ssh_port: int = 2222, http_port: int = 8080,
                   idp_port: int = 8081, pg_port: int = 15432) -> int:
    """Run the demo until Ctrl-C. Returns the exit code."""
    issuer = f"http://127.0.0.1:{idp_port}"
    config_file = directory / "bastion.yaml"
    if not config_file.exists():
        initialise(InitOptions(directory, issuer=issuer, ssh_listen=f"127.0.0.1:{ssh_port}",
                               http_listen=f"127.0.0.1:{http_port}", pg_demo_address=f"127.0.0.1:{pg_port}"))
        print(f"Created {config_file} with a new local CA.", flush=True)
    password = _demo_password(directory)
    print(f"Starting a throwaway PostgreSQL on 127.0.0.1:{pg_port} with sample customers...", flush=True)
    try:
        database: PgServer | None = await asyncio.to_thread(_start_database, pg_port, password)
    except PgUnavailable as e:
        database = None
        print(f"Without PostgreSQL, pg-demo will not answer: {e}", flush=True)
    (directory / "client").mkdir(mode=0o700, exist_ok=True)
    config = load_config(config_file)
    if config.identity.oidc.issuer.rstrip("/") != issuer:
        raise StateError(f"{config_file} trusts {config.identity.oidc.issuer}, not the demo's IdP at "
                         f"{issuer}; pass the matching --idp-port or remove {directory}")

    idp = DevIdentityProvider(port=idp_port, client_id=config.identity.oidc.client_id or "bastion")
    try:
        await idp.start()
    except OSError as e:
        if database is not None:
            database.stop()
        raise StateError(f"cannot start the demo identity provider on port {idp_port}: {e.strerror}; "
                         "pass --idp-port") from e
    daemon = Daemon(config)
    try:
        await daemon.start()
    except BaseException:
        await idp.stop()
        if database is not None:
            database.stop()
        raise
    assert daemon.runtime is not None
    print(instructions(directory, idp.issuer, config.http_url, daemon.runtime.ssh_port), flush=True)

    try:
        await until_stopped()
    finally:
        print("\nStopping the demo...", flush=True)
        await daemon.stop()
        await idp.stop()
        if database is not None:
            await asyncio.to_thread(database.stop)
    return 0
