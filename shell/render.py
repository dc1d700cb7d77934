"""Plain-text rendering of tables and records for the shell's human output."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from .sqlrender import visible


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns with a header rule; an empty result says so."""
    if not rows:
        return "(none)\n"
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join([line, rule, *body]) + "\n"


def labels(values: dict[str, str]) -> str:
    """``k=v,k=v`` in key order, or ``-``."""
    return ",".join(f"{k}={v}" for k, v in sorted(values.items())) or "-"


def utc(ts: float) -> str:
    """An epoch time as ``YYYY-MM-DD HH:MM UTC``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def iso(ts: float) -> str:
    """An epoch time as ISO 8601 in UTC, for machine output."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def duration(seconds: float) -> str:
    """A short human duration: ``7h59m``, ``4m``, ``12s``."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m" if minutes else f"{secs}s"


def countdown(seconds: float) -> str:
    """A clock-style time left, for a line redrawn every second: ``59:58``, ``1:59:58``."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def clean(text: str, limit: int | None = None) -> str:
    """Text someone else typed (a reason, a statement), safe for a terminal: one line, controls escaped."""
    text = visible(text)
    return text if limit is None or len(text) <= limit else text[:limit - 1] + "…"
