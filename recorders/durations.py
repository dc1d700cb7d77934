"""Durations and moments as people type them (``90d``, ``2h``, ``2026-11-29``), and offsets as ``1m23s``."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> float:
    """Seconds in ``90d``, ``2h``, ``30m``, ``45s``, ``1w`` or a sum such as ``1h30m``."""
    compact = text.strip().lower()
    parts = _DURATION.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"{text!r} is not a duration such as 90d, 2h or 30m")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def parse_moment(text: str, now: float) -> float:
    """A duration ago (``2h``) or an ISO date or date-time (UTC when no zone is given), as epoch seconds."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration such as 2h nor a date such as 2026-11-29") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_age(text: str, now: float) -> float:
    """An age in seconds from a duration (``90d``) or from an ISO date (the age of that date)."""
    return max(0.0, now - parse_moment(text, now))


def format_offset(seconds: float, *, tenths: bool = False) -> str:
    """``83`` -> ``1m23s``, ``3723`` -> ``1h02m03s``, ``-2`` -> ``-2s``; rounded towards zero.

    With ``tenths``: ``83.46`` -> ``1m23.4s``, ``0.8`` -> ``0.8s`` (what ``play --from`` takes).
    """
    sign = "-" if seconds < 0 else ""
    scale = 10 if tenths else 1
    h, rest = divmod(math.floor(abs(seconds) * scale + 1e-6), 3600 * scale)
    m, rest = divmod(rest, 60 * scale)
    s = f"{rest // 10}.{rest % 10}" if tenths else f"{rest}"
    if h:
        return f"{sign}{h}h{m:02d}m{s.zfill(4 if tenths else 2)}s"
    if m:
        return f"{sign}{m}m{s.zfill(4 if tenths else 2)}s"
    return f"{sign}{s}s"


def format_size(size: int | None) -> str:
    """Bytes for people: ``512``, ``1.5K``, ``3.2M``, ``1.1G``."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{int(value)}" if not unit else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}T"  # unreachable: the loop returns at G


def format_time(epoch: float | None) -> str:
    """An epoch time as ``YYYY-MM-DD HH:MM:SS`` UTC, as ``bastion audit`` prints it."""
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")
