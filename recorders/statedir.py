"""Where the recorder finds the bastion's state: ``--state-dir``, or ``state_dir`` in bastion.yaml.

The state directory holds ``audit.db`` (the recordings index), ``recordings/`` and
``keys/audit_key.pub`` (to check signatures).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import sqlite_utils
import yaml

from .errors import RecorderError
from .store import RecordingStore, load_verify_key

DEFAULT_CONFIG = Path("/etc/bastion/bastion.yaml")


class ConfigError(RecorderError):
    """No usable config file or state directory."""

    exit_code = 2


def config_path(cli_value: str | None, environ: Mapping[str, str]) -> Path:
    """The config file to read: -c, then $BASTION_CONFIG, then /etc/bastion/bastion.yaml."""
    return Path(cli_value or environ.get("BASTION_CONFIG") or DEFAULT_CONFIG)


def state_dir_from_config(path: Path) -> Path:
    """The ``state_dir`` of a bastion.yaml, relative to the file's directory.

    recorders may not import bastion's config loader (the imports point from bastion to
    recorders, never back), so this reads the one key it needs and validates nothing else;
    ``bastion check-config`` is where a config file is checked.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}; give -c FILE or --state-dir DIR") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    value = data.get("state_dir") if isinstance(data, dict) else None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: state_dir: expected a directory path")
    state = Path(value).expanduser()
    return state if state.is_absolute() else Path(os.path.normpath(path.parent / state))


def open_store(state: Path) -> RecordingStore:
    """The recording store of a state directory, reading (never signing) with the audit public key."""
    db_path = state / "audit.db"
    if not db_path.exists():
        raise ConfigError(f"no audit store at {db_path}: is the state directory right?")
    public = state / "keys" / "audit_key.pub"
    verify_key = load_verify_key(public) if public.exists() else None
    return RecordingStore(state / "recordings", sqlite_utils.Database(db_path), verify_key=verify_key)
