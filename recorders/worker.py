"""The recorder worker: a child process of the daemon that turns raw events into cast files.

``python -m recorders.worker`` reads frames (:mod:`recorders.wire`) on stdin and
answers on stdout. Each batch it reads is written to the files before the next
read, so a cast on disk trails the session by milliseconds (``recorder watch``)
and a crash loses only what was still in the pipe. It exits when stdin closes:
the daemon stopped, or died. SIGINT and SIGTERM are ignored for that reason: a
Ctrl-C or systemd's stop reaches the whole group, and the daemon still has
recordings to close.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import time

from . import wire
from .castlines import REDACTED, LineEncoder

log = logging.getLogger(__name__)

READ_SIZE = 1 << 20  # the pipe's capacity: one read takes all that is waiting
_IOV_MAX = 1024
BATCH_WAIT = 0.002  # seconds between looks at the pipe while events come; far below what a live cast may trail
POLL_MAX = 0.02     # the longest pause between looks while events come (a keystroke every second: 50 looks/s)
IDLE_AFTER = 2.0    # seconds without events before the worker sleeps in read() again


class _Cast:
    """One open cast file and what is encoded for it but not yet written."""

    def __init__(self, path: bytes, start: float) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)  # the store created it, 0600
        self.encoder = LineEncoder(start)
        self.lines: list[bytes] = []

    def write(self) -> None:
        lines, self.lines = self.lines, []
        while lines:  # writev, not join: no fresh megabyte per batch
            batch, lines = lines[:_IOV_MAX], lines[_IOV_MAX:]
            written = os.writev(self.fd, batch)
            while written < sum(map(len, batch)):  # a short write: the rest, one line at a time
                for i, line in enumerate(batch):
                    if written < len(line):
                        batch = [line[written:], *batch[i + 1:]]
                        break
                    written -= len(line)
                written = os.writev(self.fd, batch)


class Worker:
    """Every recording the daemon has open, keyed by the id the daemon gave it."""

    def __init__(self, replies: int) -> None:
        self._replies = replies
        self._casts: dict[int, _Cast] = {}

    def handle(self, kind: bytes, recording: int, now: float, payload: bytes) -> None:
        """Apply one frame."""
        if kind == wire.OPEN:
            try:
                self._casts[recording] = _Cast(payload, now)
            except OSError as e:
                self._reply(wire.FAILED, recording, f"cannot open {os.fsdecode(payload)}: {e.strerror or e}")
            return
        if kind == wire.CLOSE:
            cast = self._casts.get(recording)
            if cast is not None:
                cast.lines.append(cast.encoder.final(now))
                self._write(recording, cast, closing=True)
            self._reply(wire.CLOSED, recording)
            return
        cast = self._casts.get(recording)
        if cast is None:
            return  # failed earlier: the daemon has been told, and ends the session
        encoder = cast.encoder
        if kind == wire.OUTPUT:
            line = encoder.output(payload, now)
        elif kind == wire.OUTPUT_ONLCR:
            line = encoder.output(payload, now, onlcr=True)
        elif kind == wire.INPUT:
            line = encoder.input(payload, now)
        elif kind == wire.REDACTED:
            line = encoder.text("i", REDACTED, now)
        elif kind == wire.RESIZE:
            line = encoder.text("r", payload.decode("ascii"), now)
        elif kind == wire.MARKER:
            line = encoder.text("m", payload.decode("utf-8", "surrogatepass"), now)
        else:
            raise ValueError(f"unknown frame kind {kind!r}")
        if line:
            cast.lines.append(line)

    def write_all(self) -> None:
        """Write what every recording has pending: the end of each batch read."""
        for recording, cast in list(self._casts.items()):
            self._write(recording, cast)

    def close_all(self) -> None:
        """Write what is pending and close every file (stdin closed: the recordings are sealed by the daemon,
        or by recovery at its next start)."""
        for recording, cast in list(self._casts.items()):
            self._write(recording, cast, closing=True)

    def _write(self, recording: int, cast: _Cast, *, closing: bool = False) -> None:
        try:
            cast.write()
        except OSError as e:
            log.error("recording %d: %s", recording, e)
            self._reply(wire.FAILED, recording, f"cannot write the recording: {e.strerror or e}")
            closing = True
        if closing:
            del self._casts[recording]
            try:
                os.close(cast.fd)
            except OSError as e:  # written already; a failing close is worth a line, not a lost session
                log.error("recording %d: cannot close its file: %s", recording, e)

    def _reply(self, kind: str, recording: int, reason: str = "") -> None:
        os.write(self._replies, wire.message(kind, recording, reason))


def serve(source: int, replies: int) -> int:
    """Read frames from ``source`` until it closes; return the exit status."""
    worker = Worker(replies)
    frames = wire.FrameBuffer(READ_SIZE)
    waiting = select.poll()
    waiting.register(source, select.POLLIN)
    active_until, pause = 0.0, BATCH_WAIT
    try:
        while True:
            # Why: asleep in read(), the worker is woken by every write. It then takes the core that the
            # session's next hop (the user's ssh, the host's sshd) needs within the same keystroke's round
            # trip, and each wake-up costs the daemon's event loop too. While events come, it looks again
            # after BATCH_WAIT, backing off to POLL_MAX while it finds nothing; a stream also collects into
            # fewer, larger reads.
            if time.monotonic() < active_until and not waiting.poll(0):
                time.sleep(pause)
                pause = min(pause * 2, POLL_MAX)
                continue
            if not frames.read(source):
                break
            for frame in frames.frames():
                worker.handle(*frame)
            worker.write_all()
            active_until, pause = time.monotonic() + IDLE_AFTER, BATCH_WAIT
    finally:
        worker.close_all()
    if frames.partial:
        log.warning("the daemon stopped in the middle of an event; it is not recorded")
    return 0


def main() -> int:
    """Entry point of the child process."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="recorder-worker[%(process)d] %(levelname)s %(message)s")
    try:
        return serve(sys.stdin.fileno(), sys.stdout.fileno())
    except BrokenPipeError:
        return 0  # the daemon is gone: nobody is left to answer
    except Exception:
        log.exception("the recorder worker failed")  # the daemon sees the exit and ends the sessions
        return 1


if __name__ == "__main__":
    sys.exit(main())
