"""asyncssh's empty ignore packet before each packet: gone under AEAD ciphers, kept under any other.

Both sides are real asyncssh over loopback TCP. What is counted is what one
connection hands to its socket: one write per SSH packet.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncssh
import pytest

from bastion import ssh_packets

CHUNKS = 20


class _Server(asyncssh.SSHServer):  # type: ignore[misc]
    def begin_auth(self, username: str) -> bool:
        return False  # no authentication: this test is about packets, not logins


async def writes_per_chunk(cipher: str) -> tuple[float, bytes]:
    """Socket writes per channel write, on a connection that negotiated ``cipher``; and what arrived."""
    ssh_packets.install()
    received = bytearray()
    arrived = asyncio.Event()

    async def handle(process: asyncssh.SSHServerProcess[bytes]) -> None:
        while len(received) < CHUNKS:
            received.extend(await process.stdin.read(1))
        arrived.set()
        process.exit(0)

    server = await asyncssh.create_server(
        _Server, "127.0.0.1", 0, server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        process_factory=handle, encoding=None, encryption_algs=[cipher])
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncssh.connect("127.0.0.1", port, known_hosts=None, username="u", client_keys=None,
                                    agent_path=None, encryption_algs=[cipher], config=[]) as conn:
            process = await conn.create_process(encoding=None)
            sent: list[int] = []
            send = conn._send

            def counting(data: bytes) -> None:
                sent.append(len(data))
                send(data)

            conn._send = counting
            for i in range(CHUNKS):
                process.stdin.write(bytes([65 + i]))
                await asyncio.sleep(0.005)  # one packet per write: nothing waits to be coalesced
            conn._send = send
            await asyncio.wait_for(arrived.wait(), 10)
            await process.wait()
            assert conn.get_extra_info("send_cipher") == cipher
    finally:
        server.close()
    return len(sent) / CHUNKS, bytes(received)


@pytest.mark.parametrize("cipher", ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"])
def test_an_aead_connection_sends_one_packet_per_write(cipher: str) -> None:
    per_write, received = asyncio.run(writes_per_chunk(cipher))
    assert received == bytes(range(65, 65 + CHUNKS))
    assert per_write < 1.5  # the odd window adjust aside, no second packet per write


def test_other_ciphers_keep_asyncssh_s_ignore_packet() -> None:
    # If this fails, asyncssh stopped inserting the ignore packet: bastion/ssh_packets.py can go.
    per_write, received = asyncio.run(writes_per_chunk("aes128-ctr"))
    assert received == bytes(range(65, 65 + CHUNKS))
    assert per_write >= 2


def test_install_is_idempotent() -> None:
    ssh_packets.install()
    first: Any = asyncssh.connection.SSHConnection.send_packet
    ssh_packets.install()
    assert asyncssh.connection.SSHConnection.send_packet is first
