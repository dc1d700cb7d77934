"""The one exception hierarchy of the bastion daemon, its CLIs and the login client.

Every error a person can act on derives from :class:`BastionError`; its ``str``
is the message shown to them. CLIs map the class to an exit code.
"""

from __future__ import annotations


class BastionError(Exception):
    """Base of every error the bastion raises on purpose."""

    exit_code = 1


class ConfigError(BastionError):
    """A configuration file is missing, unreadable or invalid.

    The message names ``file:line``, the key and what was expected.
    """

    exit_code = 2

    def __init__(self, path: str, line: int | None, key: str, expected: str) -> None:
        self.path = path
        self.line = line
        self.key = key
        self.expected = expected
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {key}: {expected}" if key else f"{where}: {expected}")


class StateError(BastionError):
    """The state directory or a key in it is missing, unreadable or would be overwritten."""

    exit_code = 2


class TokenError(BastionError):
    """An ID token was refused. The message is safe to show; it never contains the token."""

    exit_code = 3


class CertificateError(BastionError):
    """A certificate request or a presented certificate was refused."""

    exit_code = 3


class LoginError(BastionError):
    """The client side of ``bastion login`` failed (IdP refused, user denied, timeout...)."""

    exit_code = 3


class AuditError(BastionError):
    """The audit store is unusable, or its hash chain is broken."""

    exit_code = 4
