"""The daemon's side of the recorder worker: raw events into a pipe, cast files written by a child process.

Why a process: JSON-encoding every output event on the event loop's thread cost
about as much as SSH itself, and a thread would still hold the GIL. Here the loop
pays one ``writev`` per event; decoding, escaping and file writes run on another core.

Backpressure: the pipe holds 1 MiB. Behind it, frames wait in a backlog that
the event loop writes as the worker makes room, so a worker descheduled for a
few milliseconds does not stall the loop. Beyond ``max_backlog`` bytes the
sending thread waits for room (the event loop too: every session slows down to
the worker's pace); events are never dropped and memory stays bounded. A
worker that makes no room for ``stall_timeout`` seconds is killed. When the worker dies, every recording
it held fails: each writer's ``on_failure`` is told once, and every later event
raises :class:`~recorders.errors.RecorderError`, so the daemon ends those
sessions rather than run them unrecorded. The next :meth:`RecorderProcess.open`
starts a new worker.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from . import wire
from .errors import RecorderError

log = logging.getLogger(__name__)

PIPE_SIZE = 1 << 20
MAX_BACKLOG = 32 << 20  # bytes held in the daemon while the worker catches up; beyond it, senders wait
_IOV_MAX = 1024
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


class RemoteWriter:
    """One recording written by the worker; the same methods as :class:`recorders.asciicast.Writer`."""

    def __init__(self, link: _Link, recording: int, clock: Callable[[], float]) -> None:
        self._link = link
        self._id = recording
        self._clock = clock
        self._closed = False
        self._done = threading.Event()  # the worker closed the file, or the recording failed
        self.failed: str | None = None
        self.on_failure: Callable[[str], None] | None = None

    def _send(self, kind: bytes, payload: bytes = b"") -> None:
        if self.failed is not None:
            raise RecorderError(self.failed)
        if self._closed:
            raise RecorderError("the cast writer is closed")
        self._link.send(kind, self._id, self._clock(), payload)

    def output(self, data: bytes, *, onlcr: bool = False) -> None:
        """Record terminal output ('o'); ``onlcr``: LF was shown as CRLF."""
        if self.failed is not None or self._closed:  # the hot path: one call less than _send
            self._send(wire.OUTPUT)
        if data:
            self._link.send(wire.OUTPUT_ONLCR if onlcr else wire.OUTPUT, self._id, self._clock(), data)

    def input(self, data: bytes) -> None:
        """Record keystrokes ('i')."""
        if data:
            self._send(wire.INPUT, data)

    def input_redacted(self) -> None:
        """Record that keystrokes were typed with echo off, without them."""
        self._send(wire.REDACTED)

    def resize(self, cols: int, rows: int) -> None:
        """Record a terminal resize ('r')."""
        self._send(wire.RESIZE, f"{cols}x{rows}".encode("ascii"))

    def marker(self, label: str) -> None:
        """Record a marker ('m'); the worker writes each batch at once, markers included."""
        self._send(wire.MARKER, label.encode("utf-8", "surrogatepass"))

    def flush(self) -> None:
        """Nothing to do: events are in the pipe, and the worker writes each batch it reads."""
        if self.failed is not None:
            raise RecorderError(self.failed)

    def close(self, timeout: float = 30.0) -> None:
        """Ask the worker to finish the file and wait until it has; idempotent. Raises RecorderError if it failed."""
        if not self._closed and self.failed is None:
            self._send(wire.CLOSE)
            self._closed = True
            self._link.flush()  # this thread may be the loop's, which would otherwise write the backlog
            if not self._done.wait(timeout):
                self._link.kill(f"the recorder worker did not close a recording within {timeout:.0f} s")
        self._closed = True
        if self.failed is not None:
            raise RecorderError(self.failed)

    def _finished(self) -> None:
        self._done.set()

    def _fail(self, reason: str) -> None:
        if self.failed is not None or (self._closed and self._done.is_set()):
            return
        self.failed = reason
        self._done.set()
        if self.on_failure is not None:
            try:
                self.on_failure(reason)
            except Exception:  # a broken callback must not stop the others from hearing of the failure
                log.exception("recording failure callback failed")


class _Link:
    """One worker process, its pipes and the recordings it holds."""

    def __init__(self, python: str, stall_timeout: float, max_backlog: int,
                 loop: asyncio.AbstractEventLoop | None) -> None:
        self._stall_timeout = stall_timeout
        self._max_backlog = max_backlog
        self._loop = loop
        # Nothing of the daemon's environment: it may hold target credentials.
        self.proc = subprocess.Popen([python, "-m", "recorders.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, bufsize=0, env={"PYTHONPATH": _PACKAGE_ROOT},
                                     close_fds=True, start_new_session=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._fd = self.proc.stdin.fileno()
        try:
            fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except (OSError, AttributeError) as e:  # not Linux, or over pipe-max-size: the default 64 KiB works
            log.debug("recorder pipe keeps its default size: %s", e)
        os.set_blocking(self._fd, False)
        self._send_lock = threading.RLock()  # _die() takes it again, from inside a failing send
        # Frames the pipe had no room for yet, oldest first; the loop writes them as it makes room.
        self._backlog: deque[memoryview] = deque()
        self._backlog_size = 0
        self._armed = False
        self._registry_lock = threading.Lock()
        self._writers: dict[int, RemoteWriter] = {}
        self._next_id = 0
        self.dead: str | None = None
        self.waits = 0  # times a send found the pipe full, and the seconds it waited in all
        self.waited = 0.0
        self.longest_wait = 0.0
        self._reader = threading.Thread(target=self._read_replies, name=f"recorder-{self.proc.pid}", daemon=True)
        self._reader.start()
        log.info("recorder worker started, pid %d", self.proc.pid)

    def open(self, path: Path, clock: Callable[[], float]) -> RemoteWriter:
        with self._registry_lock:
            self._next_id += 1
            writer = RemoteWriter(self, self._next_id, clock)
            self._writers[writer._id] = writer
        self.send(wire.OPEN, writer._id, clock(), os.fsencode(os.path.abspath(path)))
        return writer

    def send(self, kind: bytes, recording: int, now: float, payload: bytes) -> None:
        """Put one frame in the pipe, or behind it in the backlog; waits (bounded) when the backlog is full."""
        head = wire.HEAD.pack(kind, recording, now, len(payload))
        with self._send_lock:
            if self.dead is not None:
                raise RecorderError(self.dead)
            if not self._backlog:
                try:
                    sent = os.writev(self._fd, (head, payload))
                except BlockingIOError:
                    sent = 0
                except OSError as e:  # EPIPE: the worker is gone
                    raise self._gone(e) from e
                if sent == len(head) + len(payload):
                    return
                self._queue(head, payload, sent)
            else:
                self._queue(head, payload, 0)
                self._push()
            if self._backlog_size > self._max_backlog:
                self._drain(until=self._max_backlog // 2)
            if self._backlog:
                self._arm()

    def _queue(self, head: bytes, payload: bytes, sent: int) -> None:
        if not isinstance(payload, bytes):  # a caller's bytearray may change after send() returns
            payload = bytes(payload)
        for part in (memoryview(head)[sent:], memoryview(payload)[max(0, sent - len(head)):]):
            if part:
                self._backlog.append(part)
                self._backlog_size += len(part)

    def _push(self) -> bool:
        """Write what the pipe takes now, without waiting; False when it is full."""
        while self._backlog:
            try:
                sent = os.writev(self._fd, list(itertools.islice(self._backlog, _IOV_MAX)))
            except BlockingIOError:
                return False
            except OSError as e:
                raise self._gone(e) from e
            self._backlog_size -= sent
            while sent:
                first = self._backlog[0]
                if sent < len(first):
                    self._backlog[0] = first[sent:]
                    return False  # a short write: the pipe is full
                sent -= len(first)
                self._backlog.popleft()
        return True

    def _drain(self, until: int = 0) -> None:
        """The slow path: wait for the worker to make room until at most ``until`` bytes are left behind."""
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        started = time.monotonic()
        try:
            while not self._push() and self._backlog_size > until:
                if not poller.poll(self._stall_timeout * 1000):
                    self._kill_locked(f"the recorder worker made no room for {self._stall_timeout:.0f} s")
                    raise RecorderError(self.dead or "the recorder worker is stuck")
        finally:
            waited = time.monotonic() - started
            self.waits += 1
            self.waited += waited
            self.longest_wait = max(self.longest_wait, waited)

    def flush(self) -> None:
        """Put the whole backlog in the pipe, waiting as needed (before waiting for the worker's answer)."""
        with self._send_lock:
            if self.dead is not None:
                raise RecorderError(self.dead)
            if self._backlog:
                self._drain()

    def _arm(self) -> None:
        """Have the event loop write the backlog as the pipe makes room; without a loop, wait here."""
        if self._loop is None:
            self._drain()
        elif not self._armed:
            self._armed = True
            self._loop.call_soon_threadsafe(self._watch)

    def _watch(self) -> None:
        assert self._loop is not None
        if self.dead is None:
            self._loop.add_writer(self._fd, self._writable)

    def _writable(self) -> None:
        assert self._loop is not None
        with self._send_lock:
            try:
                done = self.dead is not None or self._push()
            except RecorderError:
                done = True
            if done:
                self._loop.remove_writer(self._fd)
                self._armed = False

    def _gone(self, e: OSError) -> RecorderError:
        self._die(f"the recorder worker is gone: {e.strerror or e}")
        return RecorderError(self.dead or "the recorder worker is gone")

    def _read_replies(self) -> None:
        """The worker's answers, in a thread of their own: it sleeps in read() and wakes only for them."""
        assert self.proc.stdout is not None
        fd, pending = self.proc.stdout.fileno(), b""
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError as e:
                log.error("cannot read from the recorder worker: %s", e)
                data = b""
            if not data:
                break
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                self._dispatch(line)
        status = self.proc.wait()
        self._die(self.dead or f"the recorder worker exited with status {status}")

    def _dispatch(self, line: bytes) -> None:
        try:
            kind, recording, reason = wire.parse_message(line)
        except ValueError:
            log.error("the recorder worker said something unexpected: %r", line[:200])
            return
        with self._registry_lock:
            writer = self._writers.pop(recording, None)
        if writer is None:
            return
        if kind == wire.CLOSED:
            writer._finished()
        else:
            log.error("recording %d failed in the recorder worker: %s", recording, reason)
            writer._fail(reason or "the recorder worker could not write the recording")

    def _die(self, reason: str) -> None:
        """Mark the link dead and fail every recording it still held."""
        with self._send_lock:
            if self.dead is None:
                self.dead = reason
                log.error("%s; its open recordings have failed", reason)
            self._backlog.clear()
            self._backlog_size = 0
            if self._armed and self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._unwatch)
        with self._registry_lock:
            writers, self._writers = list(self._writers.values()), {}
        for writer in writers:
            writer._fail(reason)

    def _unwatch(self) -> None:
        assert self._loop is not None
        with self._send_lock:
            if self._armed:
                self._loop.remove_writer(self._fd)
                self._armed = False

    def kill(self, reason: str) -> None:
        """Give up on a stuck worker: kill it, and fail its recordings."""
        with self._send_lock:
            self._kill_locked(reason)

    def _kill_locked(self, reason: str) -> None:
        if self.dead is None:
            self.dead = reason
            log.error("%s: killing it", reason)
        if self.proc.poll() is None:
            self.proc.kill()
        self._die(reason)

    def stop(self, timeout: float) -> None:
        """Write the backlog, close the pipe (the worker writes what is left and exits) and wait for it."""
        with self._send_lock:
            if self.dead is None:
                try:
                    self._drain()
                except RecorderError as e:
                    log.error("the recorder worker's last events are lost: %s", e)
                self.dead = "the recorder worker has stopped"
        self._unwatch_and_wait()
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("the recorder worker did not stop within %.0f s: killing it", timeout)
            self.proc.kill()
        self._reader.join(timeout)
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def _unwatch_and_wait(self) -> None:
        """Take the pipe out of the loop's selector before it is closed (the loop's own thread, or another)."""
        loop = self._loop
        if loop is None or not self._armed or loop.is_closed():
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._unwatch()
            return
        done = threading.Event()

        def unwatch() -> None:
            self._unwatch()
            done.set()

        loop.call_soon_threadsafe(unwatch)
        done.wait(5.0)


class RecorderProcess:
    """The daemon's recorder worker: started on demand, and again after it dies."""

    def __init__(self, *, python: str = sys.executable, stall_timeout: float = 10.0,
                 max_backlog: int = MAX_BACKLOG, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._python = python
        self._stall_timeout = stall_timeout
        self._max_backlog = max_backlog
        self._loop = loop
        self._link: _Link | None = None
        self._lock = threading.Lock()

    def _live(self) -> _Link:
        with self._lock:
            if self._link is None or self._link.dead is not None:
                try:
                    self._link = _Link(self._python, self._stall_timeout, self._max_backlog, self._loop)
                except OSError as e:
                    raise RecorderError(f"cannot start the recorder worker: {e.strerror or e}") from e
            return self._link

    def start(self) -> None:
        """Start the worker now rather than at the first recording."""
        self._live()

    def open(self, path: Path, clock: Callable[[], float]) -> RemoteWriter:
        """A writer for the cast at ``path``, whose header is already written; event times come from ``clock``."""
        return self._live().open(path, clock)

    @property
    def pid(self) -> int | None:
        """The worker's process id, while one runs."""
        link = self._link
        return link.proc.pid if link is not None and link.dead is None else None

    def stats(self) -> dict[str, float]:
        """How often, and how long, senders waited for room in the pipe (current worker)."""
        link = self._link
        if link is None:
            return {"waits": 0, "waited": 0.0, "longest_wait": 0.0}
        return {"waits": link.waits, "waited": link.waited, "longest_wait": link.longest_wait}

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker once every recording is closed (at the daemon's stop)."""
        with self._lock:
            link, self._link = self._link, None
        if link is not None:
            link.stop(timeout)
