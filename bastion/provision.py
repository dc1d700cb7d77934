"""``bastion init``: a new state directory with keys and a commented bastion.yaml."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import StateError
from .keys import create_keys


@dataclass(frozen=True)
class InitOptions:
    """What ``bastion init`` writes into the config."""

    directory: Path
    issuer: str = "http://127.0.0.1:8081"
    client_id: str = "bastion"
    ssh_listen: str = "127.0.0.1:2222"
    http_listen: str = "127.0.0.1:8080"
    pg_demo_address: str = "127.0.0.1:5432"


def config_template() -> str:
    """The commented example bastion.yaml shipped with the package."""
    return resources.files("bastion").joinpath("templates/bastion.yaml").read_text()


def render_config(options: InitOptions, state_dir: str) -> str:
    """The template with this installation's values filled in."""
    values = {"@@SSH_LISTEN@@": options.ssh_listen, "@@HTTP_LISTEN@@": options.http_listen,
              "@@STATE_DIR@@": state_dir, "@@ISSUER@@": options.issuer,
              "@@CLIENT_ID@@": options.client_id, "@@PG_DEMO_ADDRESS@@": options.pg_demo_address}
    text = config_template()
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text


def initialise(options: InitOptions) -> Path:
    """Create keys and bastion.yaml under ``options.directory``; refuse to overwrite anything."""
    directory = options.directory
    config_file = directory / "bastion.yaml"
    if config_file.exists():
        raise StateError(f"refusing to overwrite existing {config_file}")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    state = directory / "state"
    create_keys(state, ("localhost", "127.0.0.1"))
    fd = os.open(config_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(render_config(options, "state"))
    return config_file
