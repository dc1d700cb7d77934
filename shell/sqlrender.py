"""SQL results as text: psql-style aligned tables, ``\\x`` vertical records, JSON and CSV.

Pure: :func:`lines` gives styled lines (prompt-toolkit ``(style, text)`` fragments) for
the console, :func:`render` plain text for ``ssh bastion sql … --format``. Values
reach us already masked; a masked column's cells get their own style and a footer
names the columns. Denials and held statements read differently from SQL errors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wcwidth import wcswidth, wcwidth

if TYPE_CHECKING:
    from .sql import SqlResult

Fragment = tuple[str, str]
Line = list[Fragment]

FORMATS = ("table", "json", "csv")
NULL = "<null>"
DENIED_HINT = ("  The statement did not run. The rule above made that decision; if you need this, "
               "ask for approval or for a change to the policy.")
HELD_HINT = "  The statement did not run yet: it waits for an approver. Exit code 4 means the same in exec."

# C0/C1 controls would drive the user's terminal; bidi and zero-width characters would disguise
# a value. Shown escaped instead, in tables only: json and csv carry the value as it is.
_HIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_NUMBER = re.compile(r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


@dataclass(frozen=True)
class Note:
    """A line of text among results: a title, a message, an error."""

    text: str
    style: str = ""  # a prompt-toolkit class, e.g. "class:sql.title"


def visible(value: str) -> str:
    """A value with the characters that would act on the terminal escaped."""
    return _HIDDEN.sub(lambda m: _ESCAPES.get(m[0], f"\\u{ord(m[0]):04x}" if ord(m[0]) > 0xff
                                              else f"\\x{ord(m[0]):02x}"), value)


def width(text: str) -> int:
    """Display width in terminal cells (East Asian wide characters count 2)."""
    n = wcswidth(text)
    return n if n >= 0 else sum(max(0, wcwidth(c)) for c in text)


def line_width(line: Line) -> int:
    """Display width of a styled line."""
    return sum(width(text) for _, text in line)


def _pad(text: str, size: int, align: str) -> str:
    gap = " " * max(0, size - width(text))
    if align == "right":
        return gap + text
    if align == "center":
        half = len(gap) // 2
        return gap[:half] + text + gap[half:]
    return text + gap


def _cell(value: str | None, masked: bool) -> Fragment:
    if value is None:
        return ("class:sql.null", NULL)
    return ("class:sql.masked" if masked else "", visible(value))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _table(result: SqlResult) -> list[Line]:
    """psql's aligned format: centred headers, `` | `` between columns, numbers to the right."""
    cells = [[_cell(v, i in result.masked_columns) for i, v in enumerate(row)] for row in result.rows]
    heads = [visible(c) for c in result.columns]
    widths = [max([width(h), *(width(r[i][1]) for r in cells)]) for i, h in enumerate(heads)]
    aligns = ["right" if _numeric(result, i) else "left" for i in range(len(heads))]
    last = len(heads) - 1
    out: list[Line] = []
    head: Line = []
    for i, h in enumerate(heads):
        text = _pad(h, widths[i], "center")
        head += [("", " " if i == 0 else " | "), ("class:sql.header", text.rstrip() if i == last else text)]
    out.append(head)
    out.append([("", "-" + "-+-".join("-" * w for w in widths) + "-")])
    for row in cells:
        line: Line = []
        for i, (style, text) in enumerate(row):
            text = _pad(text, widths[i], aligns[i])
            line += [("", " " if i == 0 else " | "), (style, text.rstrip() if i == last else text)]
        out.append(line)
    return out


def _numeric(result: SqlResult, column: int) -> bool:
    values = [v for r in result.rows if (v := r[column]) is not None]
    return bool(values) and column not in result.masked_columns and all(_NUMBER.fullmatch(v) for v in values)


def _vertical(result: SqlResult) -> list[Line]:
    """psql's expanded display: one ``-[ RECORD n ]`` block per row."""
    heads = [visible(c) for c in result.columns]
    key = max(width(h) for h in heads)
    cells = [[_cell(v, i in result.masked_columns) for i, v in enumerate(row)] for row in result.rows]
    value = max((width(text) for row in cells for _, text in row), default=0)
    out: list[Line] = []
    for n, row in enumerate(cells, 1):
        label = f"-[ RECORD {n} ]"
        rule = label + "-" * (key + 1 - len(label)) + "+" + "-" * (value + 1) if len(label) <= key + 1 \
            else label + "-" * max(0, key + 3 + value - len(label))
        out.append([("class:sql.header", rule)])
        out += [[("class:sql.header", _pad(h, key, "left")), ("", " | "), cell] for h, cell in zip(heads, row,
                                                                                                   strict=True)]
    return out


def _problem(result: SqlResult) -> list[Line]:
    """A result's notices, then its denial, hold or error, if any."""
    out: list[Line] = [[("class:sql.notice", f"NOTICE: {n}")] for n in result.notices]
    if result.denied:
        out += [[("class:sql.denied", f"denied by policy: {result.error or 'no reason given'}")],
                [("class:sql.hint", DENIED_HINT)]]
    elif result.held:
        request = f" (request {result.request})" if result.request else ""
        out += [[("class:sql.held", f"held for review{request}: {result.error or 'waiting for approval'}")],
                [("class:sql.hint", HELD_HINT)]]
    elif result.error is not None:
        out.append([("class:sql.error", f"ERROR: {result.error}")])
    return out


def _result(result: SqlResult, *, vertical: bool, timing: bool, max_width: int | None) -> list[Line]:
    out = _problem(result)
    if result.error is None and result.columns:
        table = _table(result)
        if vertical or (max_width is not None and line_width(table[1]) > max_width):  # the rule is full width
            out += _vertical(result) if result.rows else []
            counted = not result.rows  # psql's expanded display counts only an empty result
        else:
            out += table
            counted = True
        if counted and result.status:
            out.append([("class:sql.status", f"({_plural(len(result.rows), 'row')})")])
        if result.masked_columns:
            names = ", ".join(result.columns[i] for i in sorted(result.masked_columns) if i < len(result.columns))
            out.append([("class:sql.footer", f"{_plural(len(result.masked_columns), 'column')} masked: {names}")])
        out.append([])
    elif result.error is None and result.status:
        out.append([("class:sql.status", result.status)])
    if timing:
        out.append([("class:sql.timing", f"Time: {result.duration * 1000:.3f} ms")])
    return out


def lines(items: Sequence[SqlResult | Note], *, vertical: bool = False, timing: bool = False,
          max_width: int | None = None) -> list[Line]:
    """Styled lines for results and notes; with ``max_width``, tables wider than it go vertical."""
    out: list[Line] = []
    for item in items:
        if isinstance(item, Note):
            out.append([(item.style, item.text)])
        else:
            out += _result(item, vertical=vertical, timing=timing, max_width=max_width)
    return out


def plain(rendered: list[Line]) -> str:
    """Styled lines as plain text."""
    return "".join("".join(text for _, text in line) + "\n" for line in rendered)


def _unique(columns: Sequence[str]) -> list[str]:
    """Column names as distinct keys: a repeated name gets ``_2``, ``_3``…"""
    seen: set[str] = set()
    out = []
    for name in columns:
        key, n = name, 1
        while key in seen:
            n += 1
            key = f"{name}_{n}"
        seen.add(key)
        out.append(key)
    return out


def as_json(results: Sequence[SqlResult]) -> list[dict[str, Any]]:
    """One object per statement: columns, rows as objects, status, error, sqlstate, masked column names.

    A held statement also has ``request``: the id of the request an approver decides.
    """
    out = []
    for r in results:
        keys = _unique(r.columns)
        item: dict[str, Any] = {
            "columns": keys,
            "rows": [dict(zip(keys, row, strict=True)) for row in r.rows],
            "status": r.status,
            "error": r.error,
            "sqlstate": r.sqlstate,
            "masked_columns": [keys[i] for i in sorted(r.masked_columns) if i < len(keys)],
        }
        if r.request is not None:
            item["request"] = r.request
        out.append(item)
    return out


def _csv_field(value: str | None) -> str:
    # As psql --csv: NULL is an empty field, an empty string is "" so the two stay apart.
    if value is None:
        return ""
    if value == "" or any(c in value for c in ',"\r\n') or value != value.strip():
        return '"' + value.replace('"', '""') + '"'
    return value


def as_csv(results: Sequence[SqlResult]) -> str:
    """The rows of the last statement that returned rows, under a header line."""
    last = next((r for r in reversed(results) if r.columns and r.error is None), None)
    if last is None:
        return ""
    rows = [last.columns, *last.rows]
    return "".join(",".join(_csv_field(v) for v in row) + "\n" for row in rows)


def diagnostics(results: Sequence[SqlResult]) -> str:
    """Notices, denials, holds and errors as plain text: stderr for ``--format csv``."""
    return plain([line for r in results for line in _problem(r)])


def render(results: list[SqlResult], fmt: str = "table", *, vertical: bool = False, timing: bool = False) -> str:
    """Results as text in one of :data:`FORMATS`, for ``ssh bastion sql … --format``."""
    if fmt == "table":
        return plain(lines(results, vertical=vertical, timing=timing))
    if fmt == "json":
        return json.dumps(as_json(results), indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        return as_csv(results)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
