"""``bastion demo``: a working bastion on embedded defaults, for the first ten minutes.

It creates a local CA and config in the demo directory (once), starts the
DEVELOPMENT-ONLY identity provider and the bastion in this process, and prints
the exact commands to paste. Ctrl-C stops everything.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
from pathlib import Path

from .config import load_config
from .daemon import Daemon, until_stopped
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
    client = directory / "client"
    key, known_hosts = client / "id_ed25519", client / "known_hosts"
    q = shlex.quote
    return f"""
bastion demo is running. Press Ctrl-C to stop it.

  identity provider: {issuer}   (DEVELOPMENT ONLY: anyone can pick any user)
  bastion:           ssh 127.0.0.1:{ssh_port}, http {http_url}

1. Log in. Open the URL it prints, pick a user (alice is in group dev, bob in sre) and approve:

   {me} login --bastion {http_url} --flow device --key {q(str(key))} --known-hosts {q(str(known_hosts))}

2. Connect to the bastion's shell (use the user you picked):

   ssh -p {ssh_port} -i {q(str(key))} -o UserKnownHostsFile={q(str(known_hosts))} alice@127.0.0.1

   Try `targets`, `whoami`, `connect pg-demo`, `help`; or one-shot: ... alice@127.0.0.1 targets --json

3. See the audit trail (in another terminal):

   {me} audit -c {q(str(directory / 'bastion.yaml'))}
"""


async def run_demo(directory: Path, *, ssh_port: int = 2222, http_port: int = 8080,
                   idp_port: int = 8081) -> int:
    """Run the demo until Ctrl-C. Returns the exit code."""
    issuer = f"http://127.0.0.1:{idp_port}"
    config_file = directory / "bastion.yaml"
    if not config_file.exists():
        initialise(InitOptions(directory, issuer=issuer, ssh_listen=f"127.0.0.1:{ssh_port}",
                               http_listen=f"127.0.0.1:{http_port}"))
        print(f"Created {config_file} with a new local CA.", flush=True)
    (directory / "client").mkdir(mode=0o700, exist_ok=True)
    config = load_config(config_file)
    if config.identity.oidc.issuer.rstrip("/") != issuer:
        raise StateError(f"{config_file} trusts {config.identity.oidc.issuer}, not the demo's IdP at "
                         f"{issuer}; pass the matching --idp-port or remove {directory}")

    idp = DevIdentityProvider(port=idp_port, client_id=config.identity.oidc.client_id or "bastion")
    try:
        await idp.start()
    except OSError as e:
        raise StateError(f"cannot start the demo identity provider on port {idp_port}: {e.strerror}; "
                         "pass --idp-port") from e
    daemon = Daemon(config)
    try:
        await daemon.start()
    except BaseException:
        await idp.stop()
        raise
    assert daemon.runtime is not None
    print(instructions(directory, idp.issuer, config.http_url, daemon.runtime.ssh_port), flush=True)

    try:
        await until_stopped()
    finally:
        print("\nStopping the demo...", flush=True)
        await daemon.stop()
        await idp.stop()
    return 0
