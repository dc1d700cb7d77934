"""One change to asyncssh's packet layer: no empty ignore packet before each packet under an AEAD cipher.

asyncssh (2.24 included) sends an empty ``SSH_MSG_IGNORE`` before every
packet past the key exchange, whatever the cipher. That is the old
countermeasure against the chosen-plaintext attack on CBC mode (RFC 4251,
9.3.1); it buys nothing under AES-GCM or chacha20-poly1305, whose nonces come
from the sequence number, and the bastion negotiates nothing else on either
side of a session (:data:`bastion.server.ENCRYPTION_ALGS`, and AES-GCM first
upstream). Each ignore packet costs what a data packet costs: padding, an
encryption call, and a send system call of its own. That doubles the packets
of every keystroke and of every 32 KiB of a file, on both hops.

:func:`install` wraps ``SSHConnection.send_packet`` so that this one packet
is not sent while an AEAD cipher is in use; under any other cipher asyncssh's
behaviour is unchanged. ``tests/test_ssh_packets.py`` checks both, so an
asyncssh upgrade that changes this shows up there.
"""

from __future__ import annotations

from typing import Any

from asyncssh.connection import SSHConnection
from asyncssh.constants import MSG_IGNORE
from asyncssh.encryption import ChachaEncryption, GCMEncryption
from asyncssh.packet import String

_EMPTY = String(b"")
_AEAD = (GCMEncryption, ChachaEncryption)


def install() -> None:
    """Stop asyncssh's per-packet ignore packet under AEAD ciphers, for every connection of this process."""
    if getattr(SSHConnection.send_packet, "_bastion_aead_skip", False):
        return
    original = SSHConnection.send_packet

    def send_packet(self: SSHConnection, pkttype: int, *args: bytes, handler: Any = None) -> None:
        if pkttype == MSG_IGNORE and args == (_EMPTY,) and isinstance(self._send_encryption, _AEAD):
            return
        original(self, pkttype, *args, handler=handler)

    send_packet._bastion_aead_skip = True  # type: ignore[attr-defined]
    SSHConnection.send_packet = send_packet  # type: ignore[method-assign]
