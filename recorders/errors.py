"""The recorders' exception hierarchy (recorders import nothing from bastion)."""

from __future__ import annotations


class RecorderError(Exception):
    """Base of every error the recorders raise on purpose; ``str`` is the message for people."""

    exit_code = 1


class CastError(RecorderError):
    """A file is not valid asciicast v2 where it has to be."""


class NotFound(RecorderError):
    """No recording matches an id or prefix, or a prefix matches several."""

    exit_code = 2


class IntegrityError(RecorderError):
    """A recording's hash, size or signature does not match what the store recorded."""

    exit_code = 3
