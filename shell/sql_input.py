"""Where the console's input ends: a statement at its ``;``, or a backslash meta-command.

Quotes, comments and dollar-quoted bodies are skipped, so a ``;`` or ``\\`` inside
them ends nothing.
"""

from __future__ import annotations

import re

_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_META = re.compile(r"\\([A-Za-z_]+|[^A-Za-z_\s])\+?\s*(.*)", re.S)


def _skip_quoted(text: str, i: int, quote: str, backslash: bool) -> int | None:
    """The index after the quote that closes the one at ``i``, or None if it stays open."""
    j = i + 1
    while j < len(text):
        if backslash and text[j] == "\\":
            j += 2
            continue
        if text[j] == quote:
            if text[j + 1:j + 2] == quote:
                j += 2
                continue
            return j + 1
        j += 1
    return None


def _scan(text: str, dialect: str) -> tuple[int | None, bool, bool]:
    """(first backslash outside quotes and comments, ends with ``;``, still inside a quote or comment)."""
    mysql = dialect == "mysql"
    i, last = 0, ""
    while i < len(text):
        c, pair = text[i], text[i:i + 2]
        end: int | None
        if c == "'":
            e_string = i > 0 and text[i - 1] in "eE" and (i == 1 or not (text[i - 2].isalnum() or text[i - 2] == "_"))
            end = _skip_quoted(text, i, "'", mysql or e_string)
        elif c == '"' or (c == "`" and mysql):
            end = _skip_quoted(text, i, c, mysql)
        elif pair == "--" or (c == "#" and mysql):
            newline = text.find("\n", i)
            i = len(text) if newline < 0 else newline + 1
            continue
        elif pair == "/*":
            close = text.find("*/", i + 2)
            end = None if close < 0 else close + 2
        elif c == "$" and not mysql and (m := _DOLLAR.match(text, i)) and not (i and text[i - 1].isalnum()):
            close = text.find(m[0], m.end())
            end = None if close < 0 else close + len(m[0])
        elif c == "\\":
            return i, False, False
        else:
            if not c.isspace():
                last = c
            i += 1
            continue
        if end is None:
            return None, False, True
        i, last = end, text[end - 1]
    return None, last == ";", False


def submits(text: str, dialect: str = "postgres") -> bool:
    """Whether Enter should submit: a statement ended by ``;``, a meta-command, ``quit``/``exit``, or nothing."""
    stripped = text.strip()
    if not stripped or stripped.startswith("\\") or stripped.rstrip(";").strip().lower() in ("quit", "exit"):
        return True
    meta, ends, _ = _scan(text, dialect)
    return meta is not None or ends


def split_meta(text: str, dialect: str = "postgres") -> tuple[str, str | None]:
    """Split input into its SQL and the meta-command on the line where a backslash starts one."""
    at, _, _ = _scan(text, dialect)
    if at is None:
        return text.strip(), None
    newline = text.find("\n", at)
    end = len(text) if newline < 0 else newline
    return (text[:at] + text[end:]).strip(), text[at:end].strip()


def parse_meta(meta: str) -> tuple[str, str]:
    """``\\dt+ public.*`` -> ``("dt", "public.*")``; ``\\!ls`` -> ``("!", "ls")``."""
    m = _META.fullmatch(meta.strip())
    if m is None:
        return "", ""
    return m[1], m[2].strip()
