"""Routing a session channel to the SFTP/scp gateway: which channels go there, and how they are served.

A session channel that asks for the ``sftp`` subsystem, or runs ``scp`` (legacy
``scp -O``), is handed to :class:`TransferChannel`, which runs asyncssh's own
SFTP or SCP server code over :class:`~bastion.transfer.TransferGateway`. The
gateway reaches each target with :func:`connector_opener`: the SSH proxy's
login, as ``connect`` and ``run`` use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import asyncssh
from asyncssh.scp import run_scp_server
from asyncssh.sftp import MIN_SFTP_VERSION, run_sftp_server
from asyncssh.stream import SSHServerStreamSession

from policies.model import Identity

from .config import TargetConfig
from .sshaccess import SshAccess
from .transfer import GatewayContext, TransferGateway, UpstreamOpener

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)

GATHER_MAX = 256 * 1024  # bytes of SFTP replies held within one event-loop turn before they go anyway


def is_scp(command: str | None) -> bool:
    """True for the command a legacy ``scp -O`` client runs on the server."""
    return command is not None and command.startswith("scp ")


def connector_opener(runtime: Runtime, identity: Identity, session: str, peer: str,
                     mark: Callable[[str], None]) -> UpstreamOpener:
    """The real opener: the SSH proxy's login (a one-minute certificate, or the target's identity key), audited."""

    async def open_target(target: TargetConfig) -> asyncssh.SSHClientConnection:
        return await SshAccess(runtime, identity, target, session, peer, mark=mark).connect()

    return open_target



class GatheringWriter(asyncssh.SSHWriter[bytes]):  # type: ignore[misc]
    """An SFTP server's writer whose writes of one event-loop turn leave as one channel write.

    asyncssh's SFTP server writes each reply on its own, and its channel makes at least one SSH packet of each
    write: a 32 KiB read reply takes a full packet and a 13-byte one, and every write acknowledgement takes a
    packet. Replies to pipelined requests come out in the same turn, so gathered they fill whole packets, which
    is what the event loop pays for.
    """

    def __init__(self, session: SSHServerStreamSession[bytes], chan: asyncssh.SSHServerChannel[bytes]) -> None:
        super().__init__(session, chan)
        self._held: list[bytes] = []
        self._held_bytes = 0

    def write(self, data: bytes) -> None:
        if not self._held:
            asyncio.get_running_loop().call_soon(self.flush)
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes >= GATHER_MAX:
            self.flush()

    def flush(self) -> None:
        """Hand what is held to the channel now."""
        if self._held:
            held, self._held, self._held_bytes = self._held, [], 0
            if not self.channel.is_closing():  # a reply to a client that left goes nowhere, as asyncssh's would
                super().write(held[0] if len(held) == 1 else b"".join(held))

    def write_eof(self) -> None:
        self.flush()
        super().write_eof()

    def close(self) -> None:
        self.flush()
        super().close()


class TransferChannel:
    """Runs asyncssh's SFTP or SCP server for one session channel, over the gateway.

    The channel's session object stays the bastion's own (recorded, counted,
    ended like any other) and forwards the stream callbacks here. The server
    runs in a task of ours: whatever goes wrong in it ends this channel with
    exit status 1, never the connection (asyncssh's own task would drop it).
    """

    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx
        self.gateway: TransferGateway | None = None
        self.task: asyncio.Task[None] | None = None
        self._stream: SSHServerStreamSession[bytes] = SSHServerStreamSession(None)

    def start(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        """Begin serving: SFTP for the subsystem, SCP for an ``scp`` command."""
        self._stream.connection_made(chan)
        reader = asyncssh.SSHReader[bytes](self._stream, chan)
        self.gateway = TransferGateway(chan, self.ctx)
        handler: Awaitable[None] | None
        if chan.get_subsystem() == "sftp":
            replies = GatheringWriter(self._stream, chan)
            self.gateway.flush_replies = replies.flush
            handler = run_sftp_server(self.gateway, reader, replies, MIN_SFTP_VERSION)
        else:
            writer = asyncssh.SSHWriter[bytes](self._stream, chan)
            stderr = asyncssh.SSHWriter[bytes](self._stream, chan, asyncssh.EXTENDED_DATA_STDERR)
            handler = cast(Awaitable[None] | None,
                           run_scp_server(self.gateway, chan.get_command() or "", reader, writer, stderr))
        if handler is not None:  # None: a malformed scp command, already answered with status 1
            self.task = asyncio.get_running_loop().create_task(self._serve(handler, self.gateway))

    async def _serve(self, handler: Awaitable[None], gateway: TransferGateway) -> None:
        try:
            await handler
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a client that vanished, or a bug: this channel ends, the daemon goes on
            if not isinstance(e, (EOFError, ConnectionError, asyncssh.Error)):
                log.exception("transfer session %s failed", self.ctx.session)
            gateway.failures += 1
            await gateway.exit()

    def data_received(self, data: bytes, datatype: Any) -> None:
        self._stream.data_received(data, datatype)

    def eof_received(self) -> bool:
        if self.gateway is not None:
            self.gateway.client_ended = True
        return bool(self._stream.eof_received())

    def pause_writing(self) -> None:
        self._stream.pause_writing()

    def resume_writing(self) -> None:
        self._stream.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.gateway is not None:
            self.gateway.client_ended = True
        self._stream.connection_lost(exc)
