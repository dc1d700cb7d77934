"""Masking the target's messages that carry prose: errors, notices, notifications, COPY lines.

A value the maskers would hide in a result row can come back inside words too:
``duplicate key value (email)=(ada@example.com)``, a NOTIFY payload, a line of
``COPY … TO STDOUT``. Each function here runs such text through the session's
free-text masker and rebuilds the message only when something changed (None
means: relay it as it came). Without a masker (a policy that masks nothing),
everything passes as it is.
"""

from __future__ import annotations

from . import pgwire as w
from .base import RowMasker

FREE_TEXT_FIELDS = frozenset("MDHWq")  # message, detail, hint, context, internal query


def mask_field_values(fields: list[tuple[str, str]], free: RowMasker | None) -> list[tuple[str, str]]:
    """ErrorResponse/NoticeResponse fields with their prose masked; the same list when nothing changed."""
    if free is None:
        return fields
    out = [(code, free.free_text(value) if code in FREE_TEXT_FIELDS else value) for code, value in fields]
    return fields if out == fields else out


def mask_fields(typ: int, body: bytes, free: RowMasker | None) -> bytes | None:
    """A whole error or notice message, rebuilt when masking changed it."""
    fields = w.parse_fields(body)
    masked = mask_field_values(fields, free)
    return None if masked is fields else w.build_fields(typ, masked)


def mask_notification(body: bytes, free: RowMasker | None) -> bytes | None:
    """A NotificationResponse whose payload masking changed, rebuilt; its channel is left as it is."""
    if free is None:
        return None
    pid, channel_and_payload = body[:4], body[4:]
    parts = channel_and_payload.split(b"\0")
    if len(parts) < 2:
        raise w.ProtocolError("malformed NotificationResponse from the target")
    payload = parts[1].decode("utf-8", "surrogateescape")
    masked = free.free_text(payload)
    if masked == payload:
        return None
    return w.message(w.NOTIFICATION, pid + parts[0] + b"\0" + masked.encode("utf-8", "surrogateescape") + b"\0")


def mask_copy_line(body: bytes, free: RowMasker | None) -> bytes | None:
    """One CopyData line of text or csv COPY output, rebuilt when masking changed it."""
    assert free is not None, "COPY lines are masked only when the session has a masker"
    line = body.decode("utf-8", "surrogateescape")
    masked = free.free_text(line)
    return None if masked == line else w.message(w.COPY_DATA, masked.encode("utf-8", "surrogateescape"))
