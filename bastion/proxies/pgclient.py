"""An in-process PostgreSQL client for the bastion's own console and ``ssh bastion sql``.

It speaks the simple query protocol to :func:`~bastion.proxies.postgres.serve_client`
over a socket pair, so the console and one-shot commands take exactly the path
a native client takes: guardrails, masking and audit all happen in the proxy.
Implements :class:`shell.sql.SqlConnection`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable

from shell.sql import SqlResult

from . import pg_rows
from . import pgwire as w
from .base import HELD_DETAIL, Inspector, Upstream
from .links import TcpLink
from .postgres import serve_client

PROTOCOL_3 = 196608
CANCEL_REQUEST = 80877102


async def _pair() -> tuple[TcpLink, tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """The proxy's end of a socket pair as a link, and the console's end as streams."""
    left, right = socket.socketpair()
    _, proxy_end = await asyncio.get_running_loop().create_connection(TcpLink, sock=left)
    return proxy_end, await asyncio.open_connection(sock=right)


class PgClient:
    """One console connection to a PostgreSQL target, through the proxy."""

    dialect = "postgres"

    def __init__(self, target: str, upstream: Upstream, inspector: Inspector, label: str,
                 masked_names: Callable[[], set[str]] | None = None) -> None:
        self.target = target
        self._upstream = upstream
        self._inspector = inspector
        self._label = label
        self._masked_names = masked_names
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._server: asyncio.Task[None] | None = None
        self._key: tuple[int, int] | None = None
        self.server_version = ""

    async def connect(self, user: str, database: str | None) -> None:
        """Start the proxy on one end of a socket pair and log in on the other. Raises ConnectionError."""
        proxy_end, (cr, cw) = await _pair()
        self._server = asyncio.get_running_loop().create_task(
            serve_client(proxy_end, self._upstream, self._inspector, session_label=self._label))
        self._reader, self._writer = cr, cw
        params = b"user\0" + user.encode() + b"\0" + (b"database\0" + database.encode() + b"\0" if database else b"")
        body = struct.pack("!i", PROTOCOL_3) + params + b"\0"
        cw.write(struct.pack("!i", len(body) + 4) + body)
        while True:
            typ, payload = await self._read()
            if typ == w.ERROR:
                raise ConnectionError(_message(payload))
            if typ == w.BACKEND_KEY:
                self._key = struct.unpack("!ii", payload[:8])
            elif typ == w.PARAMETER_STATUS:
                name, _, value = payload.rstrip(b"\0").partition(b"\0")
                if name == b"server_version":
                    self.server_version = value.decode(errors="replace")
            elif typ == w.READY:
                return

    async def _read(self) -> tuple[int, bytes]:
        assert self._reader is not None
        header = await self._reader.readexactly(5)
        typ, length = w.HEADER.unpack(header)
        return typ, await self._reader.readexactly(length - 4)

    async def execute(self, sql: str) -> list[SqlResult]:
        """Run one input (maybe several statements); SQL errors come back as results."""
        if self._writer is None:
            raise ConnectionError("not connected")
        if self._masked_names is not None:
            self._masked_names().clear()
        self._writer.write(w.query(sql))
        results: list[SqlResult] = []
        columns: tuple[str, ...] = ()
        rows: list[tuple[str | None, ...]] = []
        notices: list[str] = []
        started = time.monotonic()
        try:
            while True:
                typ, body = await self._read()
                if typ == w.ROW_DESCRIPTION:
                    columns, rows = tuple(f.name for f in w.parse_row_description(body)), []
                elif typ == w.DATA_ROW:
                    cells = pg_rows.split_datarow(body, 0, len(body))
                    rows.append(tuple(None if c is None else c.decode("utf-8", "replace") for c in cells))
                elif typ in (w.COMMAND_COMPLETE, w.EMPTY_QUERY):
                    tag = w.parse_tag(body) if typ == w.COMMAND_COMPLETE else ""
                    results.append(self._result(columns, rows, tag, notices, started))
                    columns, rows, notices, started = (), [], [], time.monotonic()
                elif typ == w.ERROR:
                    fields = dict(w.parse_fields(body))
                    detail = fields.get("D", "")
                    request = detail.removeprefix(HELD_DETAIL) if detail.startswith(HELD_DETAIL) else None
                    results.append(SqlResult(columns, rows, "", error=fields.get("M", "error"),
                                             sqlstate=fields.get("C"), notices=tuple(notices),
                                             duration=time.monotonic() - started, request=request))
                    columns, rows, notices = (), [], []
                elif typ == w.NOTICE:
                    notices.append(dict(w.parse_fields(body)).get("M", ""))
                elif typ == w.COPY_IN:
                    # The console never reads files on the bastion: COPY FROM STDIN is refused.
                    self._writer.write(w.message(w.COPY_FAIL, w.cstr("COPY FROM STDIN is not available here")))
                elif typ == w.COPY_OUT:
                    columns, rows = ("copy",), []
                elif typ == w.COPY_DATA:
                    rows.append((body.decode("utf-8", "replace").rstrip("\n"),))
                elif typ == w.READY:
                    return results
        except (asyncio.IncompleteReadError, OSError) as e:
            raise ConnectionError(f"the connection to {self.target} was lost") from e

    def _result(self, columns: tuple[str, ...], rows: list[tuple[str | None, ...]], tag: str,
                notices: list[str], started: float) -> SqlResult:
        masked = self._masked_names() if self._masked_names is not None else set()
        return SqlResult(columns, rows, tag, notices=tuple(notices), duration=time.monotonic() - started,
                         masked_columns=frozenset(i for i, name in enumerate(columns) if name in masked))

    async def cancel(self) -> None:
        """Cancel the running statement, as psql does: a CancelRequest on a new connection."""
        if self._key is None:
            return
        proxy_end, (_, cw) = await _pair()
        task = asyncio.get_running_loop().create_task(
            serve_client(proxy_end, self._upstream, self._inspector, session_label=self._label + "/cancel"))
        cw.write(struct.pack("!iiii", 16, CANCEL_REQUEST, *self._key))
        await cw.drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(task, 10)
        cw.close()

    async def close(self) -> None:
        """Say goodbye and wait for the proxy's side to finish."""
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(w.TERMINATE_MESSAGE)
            self._writer.close()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server, 10)


def _message(body: bytes) -> str:
    return dict(w.parse_fields(body)).get("M", "the target refused the connection")
