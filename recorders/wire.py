"""The pipe between the daemon and its recorder worker: binary frames one way, text lines back.

Daemon to worker, one frame per event: a 17-byte head (kind, recording id, the
daemon's monotonic clock at the event, payload length), then the payload as it
was given (raw output bytes, keystrokes, a UTF-8 label or path). Raw bytes cross
the pipe: decoding and JSON encoding happen in the worker.

Worker to daemon, one ASCII line per message: ``closed ID`` once a recording's
file is complete and closed, ``failed ID REASON`` when it cannot be written.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import Final

HEAD: Final = struct.Struct("<cIdI")  # kind, recording id, monotonic time, payload length

OPEN: Final = b"n"  # payload: the cast's absolute path (its header is already written); time: t=0
OUTPUT: Final = b"o"
OUTPUT_ONLCR: Final = b"O"  # output from a session without a PTY: LF is shown as CRLF
INPUT: Final = b"i"
REDACTED: Final = b"x"  # keystrokes typed while echo was off: no payload
RESIZE: Final = b"r"  # payload: "COLSxROWS"
MARKER: Final = b"m"  # payload: the label, UTF-8 (surrogatepass)
CLOSE: Final = b"c"  # write what is left, close the file, answer "closed ID"

CLOSED: Final = "closed"
FAILED: Final = "failed"


def head(kind: bytes, recording: int, now: float, size: int) -> bytes:
    """The head of one frame."""
    return HEAD.pack(kind, recording, now, size)


class FrameBuffer:
    """Bytes read from the pipe into one reused buffer, cut into whole frames; a frame may span many reads."""

    def __init__(self, read_size: int = 1 << 20) -> None:
        self._read_size = read_size
        self._buf = bytearray(2 * read_size)  # reused: no fresh megabyte (and its page faults) per read
        self._start = 0  # the first byte not yet returned in a frame
        self._end = 0  # the end of what was read

    def read(self, fd: int) -> int:
        """Read once from ``fd`` (blocking); the number of bytes read, 0 at end of input."""
        if len(self._buf) - self._end < self._read_size:
            self._make_room(self._read_size)
        n = os.readv(fd, [memoryview(self._buf)[self._end: self._end + self._read_size]])
        self._end += n
        return n

    def feed(self, data: bytes) -> None:
        """Add bytes read elsewhere (tests)."""
        self._make_room(len(data))
        self._buf[self._end: self._end + len(data)] = data
        self._end += len(data)

    def _make_room(self, size: int) -> None:
        pending = self._end - self._start
        if self._start:
            self._buf[:pending] = self._buf[self._start: self._end]
            self._start, self._end = 0, pending
        if len(self._buf) - self._end < size:
            self._buf.extend(bytes(size - (len(self._buf) - self._end)))

    def frames(self) -> Iterator[tuple[bytes, int, float, bytes]]:
        """Each complete frame not yet returned: (kind, recording id, time, payload)."""
        buf, size = self._buf, HEAD.size
        while self._end - self._start >= size:
            kind, recording, now, length = HEAD.unpack_from(buf, self._start)
            begin = self._start + size
            if self._end - begin < length:
                if begin + length > len(buf):  # a frame larger than the buffer: make it fit
                    self._make_room(size + length - (self._end - self._start))
                return
            self._start = begin + length
            yield kind, recording, now, bytes(buf[begin: self._start])

    @property
    def partial(self) -> bool:
        """Whether a frame has started and not ended (at end of input: the daemon died mid-write)."""
        return self._end > self._start


def message(kind: str, recording: int, reason: str = "") -> bytes:
    """One line from the worker to the daemon."""
    text = f"{kind} {recording}" + (f" {' '.join(reason.split())}" if reason else "")
    return text.encode("ascii", "replace") + b"\n"


def parse_message(line: bytes) -> tuple[str, int, str]:
    """(kind, recording id, reason) from one line; raises ValueError when it is not one."""
    kind, recording, *rest = line.decode("ascii").rstrip("\n").split(" ", 2)
    return kind, int(recording), rest[0] if rest else ""
