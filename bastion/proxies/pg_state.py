"""What a PostgreSQL proxy session remembers: statements, portals, result shapes and awaited responses."""

from __future__ import annotations

import enum
import struct
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from . import pgwire as w
from .base import Column, RowMasker, StatementVerdict


class Await(enum.Enum):
    """What the target still owes for a message the proxy forwarded (or a reply of our own)."""

    QUERY = enum.auto()       # simple Query: results, then ReadyForQuery
    PARSE = enum.auto()
    BIND = enum.auto()
    DESCRIBE_S = enum.auto()
    DESCRIBE_P = enum.auto()
    EXECUTE = enum.auto()
    CLOSE = enum.auto()
    SYNC = enum.auto()
    LOCAL = enum.auto()       # a reply the proxy made itself, sent when its turn comes


@dataclass(frozen=True)
class Shape:
    """A result's columns as maskers see them, and the masker the inspector chose for them."""

    fields: tuple[w.Field, ...]
    columns: tuple[Column, ...]
    masker: RowMasker | None

    @cached_property
    def as_described(self) -> Result:
        """The result in the formats this RowDescription itself states (simple Query, Describe portal)."""
        return Result.of(self, tuple(f.format for f in self.fields))


@dataclass
class Statement:
    """A prepared statement that passed inspection."""

    sql: str
    verdict: StatementVerdict
    param_oids: tuple[int, ...] = ()  # as the client declared them in Parse (0 = let the server infer)
    shape: Shape | None = None       # its result columns, once the target described them
    binds_left: int | None = None    # approved through a request: how many more Binds it may have


@dataclass
class Portal:
    """A bound portal: what it runs, with which values, in which result formats."""

    sql: str
    verdict: StatementVerdict
    statement: Statement | None
    params: tuple[str | None, ...] = ()
    formats: tuple[int, ...] = ()    # Bind's result format codes
    shape: Shape | None = None       # from Describe(portal): its formats are the real ones


@dataclass(slots=True)
class Pending:
    """One response the backend relay waits for, in the order the client will see it."""

    kind: Await
    internal: bool = False           # a Describe the proxy injected; its answer is not relayed
    statement: Statement | None = None
    portal: Portal | None = None
    params: tuple[str | None, ...] = ()
    sql: str = ""
    verdict: StatementVerdict | None = None
    started: float = 0.0
    tags: list[str] = field(default_factory=list)
    error: str | None = None
    reply: bytes = b""               # LOCAL: the bytes to send
    undo: Callable[[], None] | None = None  # PARSE/BIND: put back what this entry replaced, if the target refuses it


@dataclass
class Result:
    """The result set rows are arriving for: how to mask them."""

    masker: RowMasker | None
    formats: tuple[int, ...]         # one per column: 0 text, 1 binary
    oids: tuple[int, ...]
    all_text: bool = True
    cells: Sequence[tuple[int, Callable[[bytes], bytes]]] = ()  # all text: the masker, cell by cell

    @classmethod
    def of(cls, shape: Shape, formats: tuple[int, ...]) -> Result:
        """A result of ``shape`` in Bind-style ``formats`` (none = text, one = all, or one per column)."""
        n = len(shape.fields)
        if not formats:
            per_column = (0,) * n
        elif len(formats) == 1:
            per_column = formats * n
        elif len(formats) == n:
            per_column = formats
        else:
            raise w.ProtocolError("result format codes do not match the result's columns")
        all_text = not any(per_column)
        cells = shape.masker.text_cells() if all_text and shape.masker is not None else ()
        return cls(shape.masker, per_column, tuple(f.type_oid for f in shape.fields), all_text, cells)


_BINARY_DECODERS: dict[int, Callable[[bytes], str]] = {
    16: lambda v: "true" if v == b"\x01" else "false",                                   # bool
    20: lambda v: str(int.from_bytes(v, "big", signed=True)),                           # int8
    21: lambda v: str(int.from_bytes(v, "big", signed=True)),                           # int2
    23: lambda v: str(int.from_bytes(v, "big", signed=True)),                           # int4
    26: lambda v: str(int.from_bytes(v, "big")),                                        # oid
    700: lambda v: repr(struct.unpack("!f", v)[0]),                                      # float4
    701: lambda v: repr(struct.unpack("!d", v)[0]),                                      # float8
    2950: lambda v: str(uuid.UUID(bytes=v)),                                             # uuid
}
_TEXT_OIDS = frozenset({18, 19, 25, 1042, 1043, 114, 3802})  # binary = text bytes (jsonb has a version byte)


def render_params(params: tuple[bytes | None, ...], formats: tuple[int, ...], oids: tuple[int, ...] = (),
                  limit: int = 4096) -> tuple[str | None, ...]:
    """Bound values as audit text: text values decoded (and capped), common binary types decoded, others summarised."""
    out: list[str | None] = []
    for i, value in enumerate(params):
        fmt = formats[0] if len(formats) == 1 else (formats[i] if formats else 0)
        oid = oids[i] if i < len(oids) else 0
        if value is None:
            out.append(None)
            continue
        text: str | None = None
        if not fmt or oid in _TEXT_OIDS:
            text = (value[1:] if oid == 3802 else value).decode("utf-8", "replace")
        elif oid in _BINARY_DECODERS:
            try:
                text = _BINARY_DECODERS[oid](value)
            except (ValueError, struct.error):
                text = None  # not a valid encoding of its type: summarised below
        if text is None:
            out.append(f"<binary {len(value)} bytes>")
        else:
            out.append(text if len(text) <= limit else text[:limit] + "…")
    return tuple(out)
