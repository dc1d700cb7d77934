"""PostgreSQL v3 wire protocol: framing, parsing and building messages, as pure functions over bytes.

Every parser here raises :class:`ProtocolError` and nothing else on bad input,
so a peer's garbage can only ever close its own connection.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .base import ProxyError

DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024

HEADER = struct.Struct("!BI")
_I16 = struct.Struct("!h")
_U16 = struct.Struct("!H")
_I32 = struct.Struct("!i")
_NULL_CELL = b"\xff\xff\xff\xff"

# Message type bytes, as ints (what indexing bytes gives).
QUERY, PARSE, BIND, DESCRIBE, EXECUTE, SYNC, FLUSH, CLOSE = b"QPBDESHC"
FUNCTION_CALL, TERMINATE, PASSWORD, COPY_DATA, COPY_DONE, COPY_FAIL = b"FXpdcf"
AUTH, PARAMETER_STATUS, BACKEND_KEY, READY, ROW_DESCRIPTION, DATA_ROW = b"RSKZTD"
COMMAND_COMPLETE, ERROR, NOTICE, NOTIFICATION, EMPTY_QUERY = b"CENAI"
PARSE_COMPLETE, BIND_COMPLETE, CLOSE_COMPLETE, NO_DATA, PARAM_DESCRIPTION = b"123nt"
PORTAL_SUSPENDED, COPY_IN, COPY_OUT, COPY_BOTH, NEGOTIATE_VERSION, FUNCTION_RESULT = b"sGHWvV"


class ProtocolError(ProxyError):
    """A peer sent something that is not valid protocol; its connection is closed."""

    sqlstate = "08P01"


class Cursor:
    """Reads fields from a message body, refusing to run past its end."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data, self.pos = data, pos
        self.end = len(data) if end is None else end

    def _need(self, n: int) -> int:
        pos = self.pos
        if n < 0 or pos + n > self.end:
            raise ProtocolError("message is shorter than its fields")
        self.pos = pos + n
        return pos

    def int16(self) -> int:
        return int(_I16.unpack_from(self.data, self._need(2))[0])

    def uint16(self) -> int:
        return int(_U16.unpack_from(self.data, self._need(2))[0])

    def int32(self) -> int:
        return int(_I32.unpack_from(self.data, self._need(4))[0])

    def take(self, n: int) -> bytes:
        pos = self._need(n)
        return bytes(self.data[pos:pos + n])

    def cstring(self) -> bytes:
        nul = self.data.find(b"\0", self.pos, self.end)
        if nul < 0:
            raise ProtocolError("unterminated string in message")
        value = bytes(self.data[self.pos:nul])
        self.pos = nul + 1
        return value

    def text(self) -> str:
        """A string field: names, SQL, settings. UTF-8 or refused, never guessed at (see :func:`utf8`)."""
        return utf8(self.cstring())

    def prose(self) -> str:
        """A string field meant for people (error and notice texts): what is not UTF-8 is replaced."""
        return self.cstring().decode("utf-8", "replace")

    def done(self) -> None:
        if self.pos != self.end:
            raise ProtocolError("message is longer than its fields")


# ---- framing ---------------------------------------------------------------------------------

def frames(buf: bytes | bytearray, pos: int, max_size: int) -> tuple[list[tuple[int, int, int]], int]:
    """The complete messages in ``buf`` from ``pos``: [(type, body_start, end)], and where the rest starts."""
    out = []
    n = len(buf)
    unpack = HEADER.unpack_from
    while pos + 5 <= n:
        typ, length = unpack(buf, pos)
        if length < 4 or length > max_size:
            raise ProtocolError(f"message length {length} is out of range" if length >= 4
                                else "message length is below the minimum of 4")
        end = pos + 1 + length
        if end > n:
            break
        out.append((typ, pos + 5, end))
        pos = end
    return out, pos


def pending_length(buf: bytes | bytearray, pos: int) -> int:
    """How many bytes the incomplete message at ``pos`` still needs (0 when its header is incomplete)."""
    if len(buf) - pos < 5:
        return 0
    return int(1 + HEADER.unpack_from(buf, pos)[1] - (len(buf) - pos))


def message(typ: int, body: bytes = b"") -> bytes:
    """One framed message."""
    return HEADER.pack(typ, len(body) + 4) + body


def cstr(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    if b"\0" in raw:
        raise ProtocolError("a string field may not contain NUL")
    return raw + b"\0"


# ---- frontend messages -----------------------------------------------------------------------

@dataclass(frozen=True)
class Bind:
    """A parsed Bind message."""

    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]


def utf8(raw: bytes) -> str:
    """Bytes both ends exchange as UTF-8 (the proxy pins client_encoding), decoded strictly.

    Replacing bad bytes would make two statement names that differ only there
    one name here and two to the server; and a server that sends something else
    has left UTF-8 behind, which must end the session, not be read around.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("a string in the message is not valid UTF-8") from None


def parse_query(body: bytes) -> str:
    """The SQL of a Query message (or any message that is one string)."""
    last = len(body) - 1
    if last < 0 or body[last] != 0 or body.find(b"\0", 0, last) >= 0:
        raise ProtocolError("a string message must hold exactly one NUL-terminated string")
    return utf8(body[:last])


def parse_parse(body: bytes) -> tuple[str, str, tuple[int, ...]]:
    """A Parse message: (statement name, SQL, parameter type oids)."""
    cur = Cursor(body)
    name, sql = cur.text(), cur.text()
    oids = tuple(cur.int32() for _ in range(cur.uint16()))
    cur.done()
    return name, sql, oids


def parse_bind(body: bytes) -> Bind:
    """A Bind message."""
    cur = Cursor(body)
    portal, statement = cur.text(), cur.text()
    param_formats = tuple(cur.int16() for _ in range(cur.uint16()))
    params = []
    for _ in range(cur.uint16()):
        n = cur.int32()
        params.append(None if n == -1 else cur.take(n))
    result_formats = tuple(cur.int16() for _ in range(cur.uint16()))
    cur.done()
    if len(param_formats) not in (0, 1, len(params)):
        raise ProtocolError("Bind has a parameter format count that matches no parameter count")
    return Bind(portal, statement, param_formats, tuple(params), result_formats)


def parse_target(body: bytes) -> tuple[str, str]:
    """A Describe or Close message: ('S' or 'P', name)."""
    cur = Cursor(body)
    kind = cur.take(1).decode("latin-1")
    name = cur.text()
    cur.done()
    if kind not in ("S", "P"):
        raise ProtocolError("Describe/Close must name a statement (S) or a portal (P)")
    return kind, name


def parse_execute(body: bytes) -> tuple[str, int]:
    """An Execute message: (portal, row limit)."""
    cur = Cursor(body)
    portal, limit = cur.text(), cur.int32()
    cur.done()
    return portal, limit


def query(sql: str) -> bytes:
    """A Query message."""
    return message(QUERY, cstr(sql))


def parse_message(name: str, sql: str, oids: tuple[int, ...] = ()) -> bytes:
    """A Parse message."""
    return message(PARSE, cstr(name) + cstr(sql) + _U16.pack(len(oids)) + b"".join(_I32.pack(o) for o in oids))


def bind_message(portal: str, statement: str, params: tuple[bytes | None, ...] = (),
                 param_formats: tuple[int, ...] = (), result_formats: tuple[int, ...] = ()) -> bytes:
    """A Bind message."""
    parts = [cstr(portal), cstr(statement), _U16.pack(len(param_formats))]
    parts += [_I16.pack(f) for f in param_formats]
    parts.append(_U16.pack(len(params)))
    for p in params:
        parts.append(_NULL_CELL if p is None else _I32.pack(len(p)) + p)
    parts.append(_U16.pack(len(result_formats)))
    parts += [_I16.pack(f) for f in result_formats]
    return message(BIND, b"".join(parts))


def describe_message(kind: str, name: str) -> bytes:
    """A Describe message for a statement ('S') or a portal ('P')."""
    return message(DESCRIBE, kind.encode() + cstr(name))


def execute_message(portal: str = "", limit: int = 0) -> bytes:
    """An Execute message."""
    return message(EXECUTE, cstr(portal) + _I32.pack(limit))


SYNC_MESSAGE = message(SYNC)
FLUSH_MESSAGE = message(FLUSH)
TERMINATE_MESSAGE = message(TERMINATE)


# ---- backend messages ------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    """One column of a RowDescription."""

    name: str
    table_oid: int
    attnum: int
    type_oid: int
    format: int


def parse_row_description(body: bytes) -> tuple[Field, ...]:
    """A RowDescription's columns."""
    cur = Cursor(body)
    fields = []
    for _ in range(cur.uint16()):
        name = cur.text()
        table_oid, attnum, type_oid = cur.int32() & 0xFFFFFFFF, cur.int16(), cur.int32() & 0xFFFFFFFF
        cur.int16()
        cur.int32()
        fields.append(Field(name, table_oid, attnum, type_oid, cur.int16()))
    cur.done()
    return tuple(fields)


def parse_fields(body: bytes) -> list[tuple[str, str]]:
    """The (code, value) fields of an ErrorResponse or NoticeResponse."""
    cur = Cursor(body)
    fields = []
    while True:
        code = cur.take(1)
        if code == b"\0":
            break
        fields.append((code.decode("latin-1"), cur.prose()))
    cur.done()
    return fields


def build_fields(typ: int, fields: list[tuple[str, str]]) -> bytes:
    """A framed ErrorResponse or NoticeResponse."""
    body = b"".join(code.encode("latin-1") + cstr(value.replace("\0", "")) for code, value in fields)
    return message(typ, body + b"\0")


def error_response(sqlstate: str, text: str, *, severity: str = "ERROR",
                   detail: str | None = None, hint: str | None = None) -> bytes:
    """A framed ErrorResponse."""
    fields = [("S", severity), ("V", severity), ("C", sqlstate), ("M", text)]
    if detail:
        fields.append(("D", detail))
    if hint:
        fields.append(("H", hint))
    return build_fields(ERROR, fields)


def parse_tag(body: bytes) -> str:
    """The command tag of a CommandComplete."""
    return parse_query(body)


def rows_from_tag(tag: str) -> int | None:
    """The row count a command tag reports ("SELECT 3", "INSERT 0 1"), if it has one."""
    last = tag.rpartition(" ")[2]
    return int(last) if last.isdigit() and " " in tag else None


def parse_copy_response(body: bytes) -> tuple[int, tuple[int, ...]]:
    """A Copy{In,Out,Both}Response: (overall format, per-column formats)."""
    cur = Cursor(body)
    overall = cur.take(1)[0]
    formats = tuple(cur.int16() for _ in range(cur.uint16()))
    cur.done()
    return overall, formats


def ready_for_query(status: bytes = b"I") -> bytes:
    """ReadyForQuery with a transaction status (I, T or E)."""
    return message(READY, status)
