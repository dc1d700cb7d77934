"""A relay's chunks: the message cut at a chunk's end held until it is whole, and the relayed parts sent.

Both relays of a PostgreSQL session frame each chunk as it arrives. What is
relayed unchanged goes out as the very bytes that came in; only rewritten
messages are joined with the rest.
"""

from __future__ import annotations

from . import pgwire as w
from .links import Link


def write_chunk(writer: Link, buf: bytes, out: list[bytes], seg: int, rest: int) -> None:
    """Send the relayed part of a chunk: as it came when nothing was rewritten, else the pieces in order."""
    if seg == 0 and rest == len(buf):
        writer.write(buf)
    else:
        out.append(buf[seg:rest])
        writer.write(b"".join(out))


class Gather:
    """The incomplete message at the end of a relay's last chunk, held until the chunks that complete it arrive.

    Joined once, when whole: a 100 MiB COPY row is not copied again for every 256 KiB that arrives.
    """

    __slots__ = ("_need", "_parts", "_size")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._need = 0

    def add(self, data: bytes) -> bytes | None:
        """What to frame now: the held tail, then ``data``; None while a large message is still incomplete."""
        if not self._parts:
            return data
        self._parts.append(data)
        self._size += len(data)
        if self._size < self._need:
            return None
        buf = b"".join(self._parts)
        self._parts, self._size = [], 0
        return buf

    def keep(self, buf: bytes, rest: int) -> None:
        """Hold ``buf[rest:]``, the start of a message that has not fully arrived (framed: its length is valid)."""
        if rest < len(buf):
            tail = buf[rest:]
            self._parts, self._size = [tail], len(tail)
            self._need = len(tail) + w.pending_length(tail, 0)  # nothing more known while the header is cut
