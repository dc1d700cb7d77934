"""How ``recorder ls`` and ``recorder show`` lay out recordings for people (JSON is the CLI's)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .durations import format_offset, format_size, format_time
from .store import RecordingInfo

LS_COLUMNS = ("ID", "USER", "TARGET", "START", "DURATION", "SIZE", "STATUS", "HOLD")


def with_offsets(info: RecordingInfo, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Audit events with ``offset``: seconds from the start of the recording (negative before it)."""
    return [{**e, "offset": round(e["ts"] - info.started, 6)} for e in events]


def ls_table(infos: list[RecordingInfo]) -> list[str]:
    """The ``ls`` table: a header row, then one aligned row per recording (ids cut to 12 characters)."""
    rows = [LS_COLUMNS]
    rows += [(i.session_id[:12], i.user, i.target or "-", format_time(i.started),
              "-" if i.duration is None else format_offset(i.duration), format_size(i.bytes), i.status,
              "held" if i.hold else "") for i in infos]
    widths = [max(len(r[c]) for r in rows) for c in range(len(LS_COLUMNS))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def show_text(info: RecordingInfo, path: Path, problems: list[str], timeline: list[dict[str, Any]]) -> list[str]:
    """The ``show`` page: every index field, the verification, then the audit timeline."""
    fields = [("session", info.session_id), ("user", info.user), ("target", info.target or "-"),
              ("title", info.title or "-"), ("started", format_time(info.started) + " UTC"),
              ("ended", format_time(info.ended) + (" UTC" if info.ended else "")),
              ("duration", "-" if info.duration is None else format_offset(info.duration)),
              ("size", f"{format_size(info.bytes)} ({info.bytes} bytes)" if info.bytes is not None else "-"),
              ("status", info.status), ("hold", f"yes: {info.hold_reason}" if info.hold else "no"),
              ("sha256", info.sha256 or "-"), ("signature", info.signature or "-"),
              ("file", str(path)), ("verified", "ok" if not problems else "FAILED")]
    lines = [f"{name:<10} {value}" for name, value in fields]
    lines += [f"  - {p}" for p in problems]
    lines += ["", "timeline" if timeline else "timeline   (no audit events for this session)"]
    for e in timeline:
        details = [f"{k}={v}" for k, v in (("target", e["target"]), ("rule", e["rule"])) if v]
        details += [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in e["detail"].items()]
        lines.append(f"  {format_offset(e['offset']):>9}  {e['kind']:<22} {e['outcome'] or '-':<8} "
                     f"{' '.join(details)}".rstrip())
    return lines
