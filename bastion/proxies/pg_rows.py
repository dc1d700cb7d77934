"""DataRow messages: split into cells, rebuilt with some cells replaced, masked in one pass.

The bulk path of every result runs through here, once per row: each function
walks the row's cell lengths itself and checks them against the message's
length, so a row that lies about its cells is refused, never read past.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

from .pgwire import _I32, _NULL_CELL, _U16, DATA_ROW, HEADER, ProtocolError


def split_datarow(buf: bytes, start: int, end: int) -> list[bytes | None]:
    """The cells of a DataRow whose body is ``buf[start:end]``."""
    try:
        count = _U16.unpack_from(buf, start)[0]
        if start + 2 > end:
            raise ProtocolError("DataRow is too short")
        pos = start + 2
        values: list[bytes | None] = [None] * count
        unpack = _I32.unpack_from
        for i in range(count):
            n = unpack(buf, pos)[0]
            pos += 4
            if n >= 0:
                values[i] = buf[pos:pos + n]
                pos += n
            elif n != -1:
                raise ProtocolError("DataRow has a negative cell length")
    except struct.error as e:
        raise ProtocolError("DataRow is shorter than its cells") from e
    # One check covers every overrun: a cell running past the end leaves pos beyond it.
    if pos != end:
        raise ProtocolError("DataRow does not match its length")
    return values


def replace_cells(buf: bytes, start: int, end: int, old: list[bytes | None],
                  new: list[bytes | None]) -> bytes | None:
    """The DataRow ``buf[start:end]`` (body) with the cells that differ in ``new``; None when none do.

    Unchanged runs are copied as they are; only the changed cells are encoded.
    """
    parts: list[bytes] = []
    pos = seg = start + 2
    delta = 0
    pack = _I32.pack
    for a, b in zip(old, new, strict=True):
        size = 4 if a is None else 4 + len(a)
        if a is not b and a != b:
            parts.append(buf[seg:pos])
            if b is None:
                parts.append(_NULL_CELL)
                delta -= size - 4
            else:
                parts.append(pack(len(b)))
                parts.append(b)
                delta += 4 + len(b) - size
            seg = pos + size
        pos += size
    if not parts:
        return None
    parts.append(buf[seg:end])
    return HEADER.pack(DATA_ROW, end - start + 4 + delta) + buf[start:start + 2] + b"".join(parts)


def mask_cells(buf: bytes, start: int, end: int, width: int,
               cells: Sequence[tuple[int, Callable[[bytes], bytes]]]) -> bytes | None:
    """The DataRow ``buf[start:end]`` (body), framed, with each cell ``cells`` names passed through its masker.

    None when no cell changed. The row must have ``width`` cells, and is
    checked as :func:`split_datarow` checks it. One pass, and only the masked
    cells are sliced: :func:`split_datarow`, a masker over the list and
    :func:`replace_cells` cost three times as much per row of a bulk result.
    ``cells`` are in column order; a masker returns its argument (or an equal
    value) to leave a cell as it is.
    """
    unpack = _I32.unpack_from
    parts: list[bytes] | None = None
    try:
        count = _U16.unpack_from(buf, start)[0]
        if count != width:
            raise ProtocolError("a DataRow does not match its RowDescription")
        pos = seg = start + 2
        delta = 0
        column = 0
        for index, mask in (*cells, (count, None)):  # the last, no cell, walks the cells after the last masked
            while column < index and column < count:
                n = unpack(buf, pos)[0]
                if n < -1:
                    raise ProtocolError("DataRow has a negative cell length")
                pos += 4 + n if n > 0 else 4
                column += 1
            if mask is None or column >= count:
                break
            n = unpack(buf, pos)[0]
            if n >= 0:
                value = buf[pos + 4:pos + 4 + n]
                new = mask(value)
                if new is not value and new != value:
                    if parts is None:
                        parts = []
                    parts.append(buf[seg:pos])
                    parts.append(_I32.pack(len(new)))
                    parts.append(new)
                    delta += len(new) - n
                    seg = pos + 4 + n
                pos += 4 + n
            elif n == -1:
                pos += 4
            else:
                raise ProtocolError("DataRow has a negative cell length")
            column += 1
    except struct.error as e:
        raise ProtocolError("DataRow is shorter than its cells") from e
    if pos != end:
        raise ProtocolError("DataRow does not match its length")
    if parts is None:
        return None
    parts.append(buf[seg:end])
    return HEADER.pack(DATA_ROW, end - start + 4 + delta) + buf[start:start + 2] + b"".join(parts)


def build_datarow(values: list[bytes | None]) -> bytes:
    """A framed DataRow message."""
    pack = _I32.pack
    parts = [b""]
    for v in values:
        parts.append(_NULL_CELL if v is None else pack(len(v)) + v)
    size = 6 + sum(map(len, parts))
    parts[0] = HEADER.pack(DATA_ROW, size) + _U16.pack(len(values))
    return b"".join(parts)
