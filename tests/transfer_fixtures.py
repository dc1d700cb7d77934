"""pytest fixtures for file transfer: the SSH target sshd of ``sshd_fixtures``, with its SFTP subsystem on.

``sshd_fixtures`` configures no ``Subsystem``; this adds OpenSSH's
``internal-sftp`` and has the running sshd re-read its config (SIGHUP), unless
the config already has one. Use with ``pytest_plugins = ["transfer_fixtures"]``.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest
from sshd_fixtures import Sshd, make_sshd

__all__ = ["make_sftpd", "make_sshd"]

LISTENING = "Server listening on 127.0.0.1"


@pytest.fixture(scope="module")
def make_sftpd(make_sshd: Callable[[str], Sshd]) -> Callable[[str], Sshd]:
    """Start sshds that trust a given user CA line and serve SFTP; stopped with ``make_sshd``'s."""

    def make(trusted_user_ca: str) -> Sshd:
        sshd = make_sshd(trusted_user_ca)
        config = sshd.directory / "sshd_config"
        text = config.read_text()
        if "\nSubsystem" in f"\n{text}":
            return sshd
        config.write_text(text + "Subsystem sftp internal-sftp\n")
        assert sshd.proc is not None
        sshd.proc.send_signal(signal.SIGHUP)  # sshd re-executes itself and reads the config again
        deadline = time.monotonic() + 10
        while sshd.log.read_text(errors="replace").count(LISTENING) < 2:
            if sshd.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not restart with SFTP:\n{sshd.log.read_text()}")
            time.sleep(0.02)
        return sshd

    return make
