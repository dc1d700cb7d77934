"""PostgreSQL's side of masking: column names, values in binary format, JSON text, error details.

Column globs follow PostgreSQL's identifier rules: unquoted parts are
case-insensitive (they fold), quoted parts are literal.

A binary value must stay a valid encoding of its type. Text-like types (and
json, jsonb) are decoded, masked and encoded again. Every other type cannot
hold a marker: when a column rule covers it, or a detector finds something in
its text form, the value becomes NULL; otherwise it passes unchanged. A type
this module cannot decode becomes NULL whenever its column is to be masked:
fail closed. docs/masking.md lists the types.
"""

from __future__ import annotations

import ipaddress
import json
import re
import struct
import uuid
from bisect import bisect_right
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .masking import ColumnPlan, Masker

NAME, TEXT, BPCHAR, VARCHAR, UNKNOWN, XML = 19, 25, 1042, 1043, 705, 142
JSON_OID, JSONB_OID = 114, 3802

TEXT_OIDS: frozenset[int] = frozenset({NAME, TEXT, BPCHAR, VARCHAR, UNKNOWN, XML})
JSON_OIDS: frozenset[int] = frozenset({JSON_OID, JSONB_OID})

# Array type -> element type, for the arrays whose elements this module can mask.
ARRAY_ELEMENTS: Mapping[int, int] = {
    1000: 16, 1001: 17, 1002: 18, 1003: 19, 1005: 21, 1007: 23, 1009: 25, 1014: 1042, 1015: 1043,
    1016: 20, 1021: 700, 1022: 701, 1028: 26, 1041: 869, 651: 650, 1115: 1114, 1182: 1082,
    1183: 1083, 1185: 1184, 1187: 1186, 1231: 1700, 1270: 1266, 143: 142, 199: 114, 2951: 2950,
    3807: 3802, 791: 790, 1040: 829,
}


# -- column names ----------------------------------------------------------------------------

UNRESOLVED_COLUMN = "\x00unresolved column"
"""The own name of a table column the proxy could not look up: every glob matches it, whatever its table.

A result may rename a column (``SELECT email AS x``); only the catalog knows
the name the masking rules were written for, so when it cannot be asked,
every rule applies (the strictest wins): masking errs on the side of hiding.
"""

UNRESOLVED_TABLE = "\x00unresolved"
"""The table of a column from a table whose name the proxy could not look up (no real name holds a NUL).

Unlike None (an expression: no table at all), it may be any table, so every
glob that names the column, for whatever table, masks it: masking errs on the
side of hiding when the catalog cannot be asked.
"""


@dataclass(frozen=True)
class ColumnGlob:
    """One compiled column glob."""

    text: str
    qualified: re.Pattern[str] | None  # over "table.column" and "schema.table.column"; None for a bare name glob
    column: re.Pattern[str]            # the column part alone
    any_table: bool                    # the table part is only "*" (or absent): matches when the table is unknown

    def match(self, table: str | None, name: str) -> bool:
        """True when the glob names this column of this table ("schema.table", "table", None for no table)."""
        if name == UNRESOLVED_COLUMN:
            return True
        if table == UNRESOLVED_TABLE:
            return self.column.fullmatch(name) is not None
        if self.qualified is None or table is None:
            return self.any_table and self.column.fullmatch(name) is not None
        candidates = [f"{table}.{name}"]
        if "." in table:
            candidates.append(f"{table.split('.', 1)[1]}.{name}")
        return any(self.qualified.fullmatch(c) for c in candidates)


def _split_identifier_glob(glob: str) -> list[tuple[str, bool]]:
    """Split on dots outside double quotes; each part with whether it was quoted."""
    parts: list[tuple[str, bool]] = []
    current: list[str] = []
    quoted = in_quotes = False
    i = 0
    while i < len(glob):
        ch = glob[i]
        if ch == '"':
            if in_quotes and glob[i + 1:i + 2] == '"':
                current.append('"')
                i += 1
            else:
                in_quotes = not in_quotes
                quoted = True
        elif ch == "." and not in_quotes:
            parts.append(("".join(current), quoted))
            current, quoted = [], False
        else:
            current.append(ch)
        i += 1
    if in_quotes:
        raise ValueError(f"column glob {glob!r}: unbalanced double quote")
    parts.append(("".join(current), quoted))
    if any(p == "" and not q for p, q in parts):
        raise ValueError(f"column glob {glob!r}: empty part")
    return parts


def _part_regex(part: str, quoted: bool) -> str:
    if quoted:
        return re.escape(part)  # a quoted identifier is literal and case-sensitive, as in SQL
    out: list[str] = []
    i = 0
    while i < len(part):
        ch = part[i]
        end = part.find("]", i + 2) if ch == "[" else -1
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif end > 0:
            body = part[i + 1:end].replace("\\", "\\\\")
            if body.startswith(("!", "^")):  # "!" negates, as in fnmatch; "^" is then a plain character
                body = ("^" if body[0] == "!" else "\\^") + body[1:]
            out.append("[" + body + "]")
            i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return "(?i:" + "".join(out) + ")"  # unquoted identifiers are case-insensitive


def compile_glob(glob: str) -> ColumnGlob:
    """Compile one column glob such as ``*.email``, ``users.ssn``, ``email`` or ``public."Users".*``."""
    parts = _split_identifier_glob(glob)
    if len(parts) > 3:
        raise ValueError(f"column glob {glob!r}: more than schema.table.column")
    regexes = [_part_regex(p, q) for p, q in parts]
    try:
        qualified = re.compile(r"\.".join(regexes), re.DOTALL) if len(parts) > 1 else None
        column = re.compile(regexes[-1], re.DOTALL)
    except re.error as e:
        raise ValueError(f"column glob {glob!r}: {e}") from None
    return ColumnGlob(glob, qualified, column, all(p == "*" and not q for p, q in parts[:-1]))


# -- values in binary format -----------------------------------------------------------------

_EPOCH = datetime(2000, 1, 1)
_INT32_MAX, _INT64_MAX = 2**31 - 1, 2**63 - 1


def _struct(fmt: str) -> Callable[[bytes], str]:
    packer = struct.Struct("!" + fmt)
    return lambda v: str(packer.unpack(v)[0])


def _float(fmt: str) -> Callable[[bytes], str]:
    packer = struct.Struct("!" + fmt)
    return lambda v: repr(packer.unpack(v)[0])


def _numeric(v: bytes) -> str:
    ndigits, weight, sign, _dscale = struct.unpack_from("!hhHh", v)
    special = {0xC000: "NaN", 0xD000: "Infinity", 0xF000: "-Infinity"}
    if sign in special:
        return special[sign]
    groups = struct.unpack_from(f"!{ndigits}H", v, 8)
    digits = tuple(int(d) for d in "".join(f"{g:04d}" for g in groups))
    return format(Decimal((1 if sign == 0x4000 else 0, digits, (weight - ndigits + 1) * 4)), "f")


def _inet(v: bytes) -> str:
    family, bits, is_cidr, size = v[0], v[1], v[2], v[3]
    if family not in (2, 3) or len(v) != 4 + size:
        raise ValueError("malformed inet")
    address = ipaddress.ip_address(v[4:])
    return f"{address}/{bits}" if is_cidr or bits != address.max_prefixlen else str(address)


def _clock(micros: int) -> str:
    seconds, us = divmod(micros, 1_000_000)
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" + (f".{us:06d}" if us else "")


def _date(v: bytes) -> str:
    (days,) = struct.unpack("!i", v)
    if abs(days) == _INT32_MAX:
        return "infinity" if days > 0 else "-infinity"
    return (date(2000, 1, 1) + timedelta(days=days)).isoformat()


def _timestamp(zone: str) -> Callable[[bytes], str]:
    def decode(v: bytes) -> str:
        (micros,) = struct.unpack("!q", v)
        if micros in (_INT64_MAX, -_INT64_MAX - 1):
            return "infinity" if micros > 0 else "-infinity"
        return (_EPOCH + timedelta(microseconds=micros)).isoformat(" ") + zone
    return decode


def _time(v: bytes) -> str:
    return _clock(struct.unpack("!q", v)[0])


def _timetz(v: bytes) -> str:
    micros, west = struct.unpack("!qi", v)
    return f"{_clock(micros)}{'-' if west > 0 else '+'}{abs(west) // 3600:02d}"


def _interval(v: bytes) -> str:
    micros, days, months = struct.unpack("!qii", v)
    sign = "-" if micros < 0 else ""
    return f"{months} mons {days} days {sign}{_clock(abs(micros))}"


def _char(v: bytes) -> str:
    # "char" is one byte: no room for a marker.
    if len(v) > 1:
        raise ValueError("malformed \"char\"")
    return v.decode("latin-1")


def _macaddr(v: bytes) -> str:
    if len(v) != 6:
        raise ValueError("malformed macaddr")
    return ":".join(f"{b:02x}" for b in v)


def _money(v: bytes) -> str:
    (cents,) = struct.unpack("!q", v)
    whole, rest = divmod(abs(cents), 100)
    return f"{'-' if cents < 0 else ''}{whole}.{rest:02d}"


# How a value of each type reads as text, close to PostgreSQL's own output, so detectors can look at it.
DECODERS: Mapping[int, Callable[[bytes], str]] = {
    16: lambda v: {b"\x01": "t", b"\x00": "f"}[v],
    18: _char,
    17: lambda v: "\\x" + v.hex(),
    20: _struct("q"), 21: _struct("h"), 23: _struct("i"), 26: _struct("I"),
    700: _float("f"), 701: _float("d"), 1700: _numeric, 790: _money,
    2950: lambda v: str(uuid.UUID(bytes=v)),
    869: _inet, 650: _inet,
    829: _macaddr,
    1082: _date, 1083: _time, 1266: _timetz, 1114: _timestamp(""), 1184: _timestamp("+00"), 1186: _interval,
}


def is_text_like(type_oid: int) -> bool:
    """True for the types whose binary form is their text (json and jsonb included): they can hold a marker."""
    return type_oid in TEXT_OIDS or type_oid in JSON_OIDS


def mask_binary(type_oid: int, value: bytes, masker: Masker, plan: ColumnPlan, index: int,
                *, text_oids: Collection[int] = ()) -> bytes | None:
    """A binary-format value masked by the plan: a valid encoding of its type, or None (NULL).

    ``text_oids`` names further types whose binary form is UTF-8 text, such as
    citext or an enum, whose OIDs differ per database.
    """
    if plan.strategy(index) is None and not plan.detectors(index):
        return value
    try:
        return _mask(type_oid, value, masker, plan, index, text_oids)
    except (ValueError, struct.error, KeyError, IndexError, OverflowError):
        return None  # a value we cannot read cannot be shown safely


def _mask(type_oid: int, value: bytes, masker: Masker, plan: ColumnPlan, index: int,
          text_oids: Collection[int]) -> bytes | None:
    if type_oid in TEXT_OIDS or type_oid in text_oids:
        masked, changed = masker.mask_text(plan, index, value.decode("utf-8", "surrogateescape"))
        return masked.encode("utf-8", "surrogateescape") if changed else value
    if type_oid in JSON_OIDS:
        return _mask_json(type_oid, value, masker, plan, index)
    if type_oid in ARRAY_ELEMENTS:
        return None if plan.strategy(index) else _mask_array(type_oid, value, masker, plan, index, text_oids)
    decode = DECODERS.get(type_oid)
    if decode is None or plan.strategy(index):
        return None  # a column rule over a type that cannot hold a marker, or a type we cannot read
    _, changed = masker.mask_text(plan, index, decode(value))
    return None if changed else value


def _mask_json(type_oid: int, value: bytes, masker: Masker, plan: ColumnPlan, index: int) -> bytes | None:
    prefix = b"\x01" if type_oid == JSONB_OID else b""
    if not value.startswith(prefix):
        return None  # a jsonb binary version we do not know
    masked, changed = masker.mask_text(plan, index, value[len(prefix):].decode("utf-8", "surrogateescape"))
    if not changed:
        return value
    try:
        json.loads(masked)
    except ValueError:  # a marker where the type expects a JSON scalar: make it a JSON string
        masked = json.dumps(masked)
    return prefix + masked.encode("utf-8", "surrogateescape")


def _mask_array(type_oid: int, value: bytes, masker: Masker, plan: ColumnPlan, index: int,
                text_oids: Collection[int]) -> bytes | None:
    ndim, flags, element = struct.unpack_from("!iiI", value)
    if element != ARRAY_ELEMENTS[type_oid] or not 0 <= ndim <= 6:
        return None
    header_end = 12 + 8 * ndim
    count = 1
    for d in range(ndim):
        count *= struct.unpack_from("!i", value, 12 + 8 * d)[0]
    if ndim == 0:
        return value
    pos = header_end
    items: list[bytes | None] = []
    changed = False
    for _ in range(count):
        (size,) = struct.unpack_from("!i", value, pos)
        pos += 4
        if size == -1:
            items.append(None)
            continue
        if size < 0 or pos + size > len(value):
            return None
        item = value[pos:pos + size]
        pos += size
        masked = _mask(element, item, masker, plan, index, text_oids)
        changed = changed or masked is not item
        items.append(masked)
    if pos != len(value):
        return None
    if not changed:
        return value
    has_null = any(i is None for i in items)
    out = [struct.pack("!iiI", ndim, 1 if has_null else flags & ~1, element), value[12:header_end]]
    for masked_item in items:
        out.append(struct.pack("!i", -1) if masked_item is None else struct.pack("!i", len(masked_item)) + masked_item)
    return b"".join(out)


# -- JSON text -------------------------------------------------------------------------------

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_NUMBER_CHARS = frozenset("+-.0123456789eE")


def looks_like_json(text: str) -> bool:
    """True when a text starts like a JSON object, array or string."""
    return text.lstrip()[:1] in ("{", "[", '"')


def is_json(text: str) -> bool:
    """True when a text parses as JSON."""
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def mask_json_text(value: str, spans: Sequence[tuple[int, int]], marker: str,
                   render: Callable[[int, int, int], str]) -> str:
    """Mask spans of a JSON text so that it stays JSON (json and jsonb columns must parse).

    ``render(i, start, end)`` masks span ``i``, perhaps widened: a finding inside a
    number masks the whole number, as a JSON string.
    """
    strings = [m.span() for m in _JSON_STRING.finditer(value)]
    starts = [s for s, _ in strings]
    out: list[str] = []
    pos = 0
    for i, (start, end) in enumerate(spans):
        k = bisect_right(starts, start) - 1
        if k >= 0 and start > strings[k][0] and end < strings[k][1]:
            out += [value[pos:start], render(i, start, end)]
        else:
            while start > pos and value[start - 1] in _JSON_NUMBER_CHARS:
                start -= 1
            while end < len(value) and value[end] in _JSON_NUMBER_CHARS:
                end += 1
            out += [value[pos:start], json.dumps(render(i, start, end))]
        pos = end
    out.append(value[pos:])
    result = "".join(out)
    # A finding that crossed the JSON structure (a private key cut short): keep nothing of the value.
    return result if is_json(result) else json.dumps(marker)


# -- error details ---------------------------------------------------------------------------

# Error details that echo values: "Key (email)=(a@b.com) already exists." and "Failing row
# contains (…)." Both run to the last parenthesis on their line: mask more, never less.
_KEY_DETAIL = re.compile(r"\bKey \((?P<cols>[^\n=]*?)\)=\((?P<vals>[^\n]*)\)")
_FAILING_ROW = re.compile(r"\bFailing row contains \([^\n]*\)")
_IDENTIFIER = re.compile(r'"((?:[^"]|"")+)"|([A-Za-z_][A-Za-z0-9_$]*)')


def mask_error_details(text: str, names_a_column: Callable[[str], bool], marker: str) -> str:
    """Replace the values echoed in error details: a failing row always, a key when a rule names its column."""
    if "Failing row contains (" in text:
        text = _FAILING_ROW.sub(f"Failing row contains ({marker})", text)

    def key(m: re.Match[str]) -> str:
        # Expression indexes name columns inside calls: "Key (lower(email::text))=(…)".
        names = [q.replace('""', '"') if q else bare for q, bare in _IDENTIFIER.findall(m["cols"])]
        return f"Key ({m['cols']})=({marker})" if any(map(names_a_column, names)) else m.group()

    return _KEY_DETAIL.sub(key, text) if "Key (" in text else text
