"""Links: a peer read like a stream while logging in, then pushed to a consumer; over real sockets.

The PostgreSQL proxy's relays rest on three promises of :class:`TcpLink`: what
arrived before :meth:`divert` is handed over first and in order, the end of
the stream is told exactly once, and a writer that cannot keep up makes
``drain``/``when_writable`` wait until it can.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from bastion.proxies.links import HANDSHAKE_BUFFER, Link, TcpLink


def run(test: Callable[[TcpLink, socket.socket], Awaitable[None]]) -> None:
    """``test(link, peer)``: the link on one end of a real socket pair, a plain socket on the other."""
    async def main() -> None:
        left, right = socket.socketpair()
        right.setblocking(False)
        _, link = await asyncio.get_running_loop().create_connection(TcpLink, sock=left)
        try:
            await test(link, right)
        finally:
            link.close()
            right.close()

    asyncio.run(main())


async def send(peer: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(peer, data)


async def settle() -> None:
    for _ in range(20):  # let the loop deliver what the socket has
        await asyncio.sleep(0.005)


def test_reads_exact_lengths_then_hands_the_rest_over_in_order() -> None:
    async def test(link: TcpLink, peer: socket.socket) -> None:
        await send(peer, b"\x00\x00\x00\x08abcdEFGH")
        assert await link.readexactly(4) == b"\x00\x00\x00\x08"
        assert await link.readexactly(4) == b"abcd"
        got: list[bytes] = []
        ends: list[BaseException | None] = []
        link.divert(got.append, ends.append)
        assert got == [b"EFGH"]  # what was buffered comes first, at once
        await send(peer, b"more")
        await settle()
        assert b"".join(got) == b"EFGHmore" and ends == []
        peer.shutdown(socket.SHUT_WR)
        await settle()
        assert ends == [None]  # a clean end, told once
        link.close()
        await settle()
        assert ends == [None]

    run(test)


def test_an_end_before_divert_is_told_at_divert() -> None:
    async def test(link: TcpLink, peer: socket.socket) -> None:
        await send(peer, b"last words")
        peer.shutdown(socket.SHUT_WR)
        await settle()
        got: list[bytes] = []
        ends: list[BaseException | None] = []
        link.divert(got.append, ends.append)
        assert got == [b"last words"] and ends == [None]

    run(test)


def test_a_short_stream_raises_incomplete_read_with_what_came() -> None:
    async def test(link: TcpLink, peer: socket.socket) -> None:
        await send(peer, b"abc")
        peer.shutdown(socket.SHUT_WR)
        with pytest.raises(asyncio.IncompleteReadError) as err:
            await link.readexactly(5)
        assert err.value.partial == b"abc"
        assert await link.read(10) == b""

    run(test)


def test_a_full_peer_makes_writers_wait_until_it_reads() -> None:
    async def test(link: TcpLink, peer: socket.socket) -> None:
        chunk = b"x" * (1 << 20)
        while not link.write_paused:  # the peer reads nothing: the kernel's buffers, then the transport's, fill
            link.write(chunk)
            await asyncio.sleep(0)
        woken: list[str] = []
        link.when_writable(lambda: woken.append("callback"))
        drained = asyncio.get_running_loop().create_task(link.drain())
        await settle()
        assert woken == [] and not drained.done()
        loop = asyncio.get_running_loop()
        while link.write_paused:  # now the peer reads
            await loop.sock_recv(peer, 1 << 20)
        await asyncio.wait_for(drained, 5)
        assert woken == ["callback"]
        link.when_writable(lambda: woken.append("at once"))  # not paused: called right away
        assert woken == ["callback", "at once"]

    run(test)


def test_a_lost_connection_releases_writers_and_ends_readers() -> None:
    async def main() -> None:
        link = Link()
        ends: list[BaseException | None] = []
        link.divert(lambda data: None, ends.append)
        link.pause_writing()
        waiting = asyncio.get_running_loop().create_task(link.drain())
        await asyncio.sleep(0)
        link._lost(RuntimeError("channel closed"))  # as asyncssh reports a lost channel: not an OSError
        with pytest.raises(ConnectionResetError):
            await waiting
        [error] = ends
        assert isinstance(error, ConnectionResetError) and "channel closed" in str(error)

    asyncio.run(main())



def test_a_peer_that_sends_ahead_of_the_handshake_is_held_back() -> None:
    # Nothing reads the link (a target slow to log in, say) while the peer floods it: the link stops
    # reading at its handshake buffer, so memory stays bounded; reading resumes as the buffer is read.
    async def test(link: TcpLink, peer: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        flood = b"f" * (8 << 20)
        sending = loop.create_task(loop.sock_sendall(peer, flood))
        await settle()
        assert not sending.done()  # the peer is blocked: the link no longer reads
        assert HANDSHAKE_BUFFER <= len(link._buffer) < HANDSHAKE_BUFFER + (1 << 20)
        received = 0
        while received < len(flood):
            received += len(await link.read(1 << 20))
        await asyncio.wait_for(sending, 5)
        big = await asyncio.gather(link.readexactly(3 << 20), send(peer, b"b" * (3 << 20)))
        assert big[0] == b"b" * (3 << 20)  # one wanted message may exceed the buffer

    run(test)


def test_an_abort_ends_the_link_at_once_even_with_unsent_data() -> None:
    # A cut (a grant's end) must not wait for a peer that stopped reading to take what is queued.
    async def test(link: TcpLink, peer: socket.socket) -> None:
        ends: list[BaseException | None] = []
        link.divert(lambda data: None, ends.append)
        while not link.write_paused:
            link.write(b"x" * (1 << 20))
            await asyncio.sleep(0)
        link.abort()
        assert len(ends) == 1 and isinstance(ends[0], ConnectionAbortedError)
        assert link.is_closing()

    run(test)


def test_a_held_back_link_hands_over_its_buffer_before_what_its_transport_queued() -> None:
    # asyncssh delivers what a channel queued while paused the moment reading resumes: a diversion must
    # hand over its own, older buffer first.
    class QueueingChannel:
        def __init__(self, link: Link) -> None:
            self.link, self.queued, self.paused = link, [b"newer"], False

        def pause_reading(self) -> None:
            self.paused = True

        def resume_reading(self) -> None:
            self.paused = False
            while self.queued:
                self.link._data(self.queued.pop(0))

        def is_closing(self) -> bool:
            return False

    link = Link()
    channel = QueueingChannel(link)
    link._connected(channel)  # type: ignore[arg-type]
    link._data(b"o" * HANDSHAKE_BUFFER)  # fills the handshake buffer: the link stops reading
    assert channel.paused
    got: list[bytes] = []
    link.divert(got.append, lambda error: None)
    assert got == [b"o" * HANDSHAKE_BUFFER, b"newer"] and not channel.paused
