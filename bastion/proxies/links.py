"""One peer of a proxy: awaited like a stream while logging in, then pushing its bytes to a consumer as they arrive.

A proxy reads each peer in two ways. During the handshake it awaits exact
lengths (``readexactly``), as with an asyncio stream. Once the session relays,
:meth:`Link.divert` hands every chunk to a consumer, called from the
transport's own ``data_received``.

Why not streams throughout: every awaited read costs a future and a task step,
per direction and per message. That alone held a relay that parses nothing to
0.82x of socat's throughput here, against 0.96-1.07x for callbacks
(``benchmarks/pg_relay_ceiling.py``).

Flow control is the consumer's business. It pauses a source's reading while
the other side cannot take more (:meth:`Link.when_writable`), so memory
stays bounded by one read per link.

:class:`TcpLink` is a link over a TCP or Unix socket: the target, a loopback
listener, or the console's socket pair. :class:`ChannelLink` is a link over an
SSH direct-tcpip channel (``ssh -L``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any, Protocol

import asyncssh

HANDSHAKE_BUFFER = 1 << 20  # bytes a link holds unread before a diversion; beyond it, it stops reading


class _Transport(Protocol):
    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def is_closing(self) -> bool: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def abort(self) -> None: ...


Consumer = Callable[[bytes], None]
"""Called with each chunk once a link is diverted."""

Ended = Callable[[BaseException | None], None]
"""Called once when a diverted link's peer is gone: None at a clean end of stream, else why."""


class Link:
    """The peer-independent part: the handshake buffer, the diversion, and write flow control."""

    def __init__(self) -> None:
        self._transport: _Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False
        self._error: BaseException | None = None
        self._consumer: Consumer | None = None
        self._on_end: Ended | None = None
        self._write_paused = False
        self._on_writable: list[Callable[[], None]] = []
        self._drainers: list[asyncio.Future[None]] = []
        self._wanted = 0              # the length a readexactly() waits for: it may exceed HANDSHAKE_BUFFER
        self._held_back = False       # reading paused because the handshake buffer is full
        self._paused = False          # reading paused, for whatever reason

    # -- the handshake: stream-like ----------------------------------------------------------

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all that is buffered when n < 0); b"" at the end of the stream."""
        while not self._buffer and not self._ended:
            await self._wait()
        if self._error is not None and not self._buffer:
            raise self._error
        size = len(self._buffer) if n < 0 else min(n, len(self._buffer))
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        self._read_on()
        return data

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; asyncio.IncompleteReadError if the stream ends first."""
        self._wanted = n
        try:
            while len(self._buffer) < n:
                if self._ended:
                    if self._error is not None:
                        raise self._error
                    partial = bytes(self._buffer)
                    self._buffer.clear()
                    raise asyncio.IncompleteReadError(partial, n)
                self._read_on()
                await self._wait()
        finally:
            self._wanted = 0
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        self._read_on()
        return data

    def _read_on(self) -> None:
        """Read again once the handshake buffer has room (or a wanted message needs more than it holds)."""
        if self._held_back and len(self._buffer) < max(HANDSHAKE_BUFFER, self._wanted):
            self._held_back = False
            self.resume_reading()

    async def _wait(self) -> None:
        assert self._waiter is None, "one reader at a time"
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- writing --------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send now, or as soon as the transport can (it buffers)."""
        if self._transport is None:
            raise ConnectionResetError("the link is not connected")
        self._transport.write(data)

    async def drain(self) -> None:
        """Wait while the peer is not taking what was written."""
        if self._ended and self._error is not None:
            raise self._error
        if self._write_paused:
            waiter = asyncio.get_running_loop().create_future()
            self._drainers.append(waiter)
            await waiter

    @property
    def write_paused(self) -> bool:
        """True while the transport holds more than it wants to: stop feeding it."""
        return self._write_paused

    def when_writable(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the transport takes writes again (at once if it already does)."""
        if self._write_paused:
            self._on_writable.append(callback)
        else:
            callback()

    def close(self) -> None:
        """Close once what is written has been sent."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        """Close now, dropping what the peer has not taken, and end here at once: a peer must not delay a cut."""
        if self._transport is not None:
            self._transport.abort()
        self._lost(ConnectionAbortedError("the connection was cut"))

    @property
    def buffered(self) -> int:
        """Bytes received and not read yet (before a diversion)."""
        return len(self._buffer)

    def is_closing(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    # -- the relay: callbacks -----------------------------------------------------------------------

    def divert(self, consumer: Consumer, on_end: Ended) -> None:
        """From now on, hand each chunk to ``consumer``, starting with what is already buffered."""
        self._consumer, self._on_end = consumer, on_end
        held, self._held_back = self._held_back, False  # from now on the consumer's flow control decides
        self._paused = False
        if self._buffer:
            data = bytes(self._buffer)
            self._buffer.clear()
            consumer(data)
        if self._ended:
            self._end()
        elif held and not self._paused:
            # Only now: asyncssh hands over what it queued the moment reading resumes, and that comes after.
            self.resume_reading()

    def stop(self) -> None:
        """Deliver nothing more (the session that took the link is over)."""
        self._consumer = lambda data: None
        self._on_end = None

    def pause_reading(self) -> None:
        self._paused = True
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._paused = False
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    # -- what the transport tells us ------------------------------------------------------------------

    def _connected(self, transport: _Transport) -> None:
        self._transport = transport

    def _data(self, data: bytes) -> None:
        if self._consumer is not None:
            self._consumer(data)
        else:
            self._buffer += data
            if not self._held_back and len(self._buffer) >= max(HANDSHAKE_BUFFER, self._wanted):
                self._held_back = True  # a peer that sends ahead of the handshake waits: memory stays bounded
                self.pause_reading()
            self._wake()

    # Named as asyncio's Protocol and asyncssh's SSHTCPSession both call them.

    def eof_received(self) -> bool:
        self._finish(None)
        return False  # nothing is half-closed here: close our side too

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost(exc)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._writable()

    def _lost(self, exc: BaseException | None) -> None:
        if exc is not None and not isinstance(exc, OSError):  # asyncssh's ConnectionLost, say: one kind for callers
            exc = ConnectionResetError(f"the connection was lost: {exc}")
        self._finish(exc)
        drainers, self._drainers = self._drainers, []
        for waiter in drainers:  # nothing more will be taken: whoever waits to write learns so
            if not waiter.done():
                waiter.set_exception(ConnectionResetError("the connection was lost"))
        self._writable()  # and paused sources resume, to see their own end

    def _finish(self, exc: BaseException | None) -> None:
        if self._ended:
            return
        self._ended = True
        self._error = exc
        self._wake()
        if self._consumer is not None:
            self._end()

    def _end(self) -> None:
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end(self._error)

    def _writable(self) -> None:
        self._write_paused = False
        callbacks, self._on_writable = self._on_writable, []
        for callback in callbacks:
            callback()
        drainers, self._drainers = self._drainers, []
        for waiter in drainers:
            if not waiter.done():
                waiter.set_result(None)


class TcpLink(Link, asyncio.Protocol):
    """A link over a TCP or Unix socket (an asyncio Protocol); ``on_open`` runs once it is connected."""

    def __init__(self, on_open: Callable[[TcpLink], None] | None = None) -> None:
        super().__init__()
        self._on_open = on_open

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._connected(transport)  # type: ignore[arg-type]
        if self._on_open is not None:
            self._on_open(self)

    def data_received(self, data: bytes) -> None:
        self._data(data)

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        """Upgrade the connection to TLS in place; later reads and writes are the decrypted stream."""
        assert self._transport is not None
        loop = asyncio.get_running_loop()
        tls = await loop.start_tls(self._transport, self, context, server_hostname=server_hostname)  # type: ignore[arg-type]
        self._connected(tls)  # type: ignore[arg-type]


async def open_tcp(host: str, port: int) -> TcpLink:
    """Connect to host:port; raises OSError as asyncio.open_connection does."""
    _, link = await asyncio.get_running_loop().create_connection(TcpLink, host, port)
    return link


class ChannelLink(Link, asyncssh.SSHTCPSession):  # type: ignore[misc]
    """A link over an SSH direct-tcpip channel; ``on_open`` runs once the channel is open."""

    def __init__(self, on_open: Callable[[ChannelLink], None]) -> None:
        super().__init__()
        self._on_open = on_open

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self._connected(chan)
        self._on_open(self)

    def data_received(self, data: bytes, datatype: Any) -> None:
        self._data(data)
