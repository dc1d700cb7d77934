"""PostgreSQL targets: the wire-protocol proxy that every path to a PostgreSQL target goes through.

:func:`serve_client` serves one client stream that the bastion hands it (an SSH
direct-tcpip channel, or the shell's own console connection). The client is
already authenticated by its SSH session, so it gets AuthenticationOk at once;
the proxy logs in to the target with the target's credentials, which the client
never sees.

Decisions, documented:

- The client's ``user`` and ``database`` are ignored: the target's configured
  ones are used (tools default them to the local login name, which means
  nothing here). Of the client's other startup parameters only harmless
  formatting ones are forwarded; ``options`` and arbitrary GUCs (``role=...``)
  are dropped, since they would bypass statement inspection. The upstream
  always runs with ``client_encoding=UTF8`` so that maskers see UTF-8.
- Replication connections and fast-path function calls are refused: neither
  can be inspected.
- Only protocol 3.0 is spoken. A newer 3.x client is told so with
  NegotiateProtocolVersion; SSLRequest and GSSENCRequest get 'N' (the SSH
  channel is the transport); direct TLS is refused.
- BackendKeyData is replaced with a random key; :data:`CANCEL_KEYS` maps it to
  the target's, so a CancelRequest (on a new connection to the same target)
  cancels the right query.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Callable

from . import pg_handshake as hs
from . import pgwire as w
from .base import ConnLog, Inspector, NotAllowed, ProxyError, Upstream, require_loopback
from .links import Link, TcpLink
from .pg_session import PgSession
from .pg_upstream import UpstreamConnection, login, send_cancel

log = logging.getLogger(__name__)

STARTUP_TIMEOUT = 30.0
FORWARDED_PARAMS = frozenset({"datestyle", "timezone", "intervalstyle", "extra_float_digits"})


class CancelKeys:
    """Maps the cancel keys the proxy hands to clients to the target's real ones."""

    def __init__(self) -> None:
        self._keys: dict[tuple[int, bytes], tuple[Upstream, int, bytes]] = {}

    def issue(self, upstream: Upstream, pid: int, key: bytes) -> tuple[int, bytes]:
        """A fresh random (pid, key) standing for the target's."""
        while True:
            ours = (secrets.randbelow(2**31 - 2) + 1, secrets.token_bytes(4))
            if ours not in self._keys:
                self._keys[ours] = (upstream, pid, key)
                return ours

    def revoke(self, pid: int, key: bytes) -> None:
        """Forget a key when its session ends."""
        self._keys.pop((pid, key), None)

    def find(self, pid: int, key: bytes) -> tuple[Upstream, int, bytes] | None:
        """The target and its real key for a key we issued."""
        return self._keys.get((pid, key))


CANCEL_KEYS = CancelKeys()


async def serve_client(client: Link, upstream: Upstream, inspector: Inspector, *,
                       session_label: str, max_message: int = w.DEFAULT_MAX_MESSAGE,
                       connect_timeout: float = 10.0, cancel_keys: CancelKeys = CANCEL_KEYS) -> None:
    """Serve one client connection until either side closes. Never raises for protocol or target errors."""
    clog = ConnLog(log, {"label": session_label})
    conn: UpstreamConnection | None = None
    session: PgSession | None = None
    issued: tuple[int, bytes] | None = None
    try:
        async with asyncio.timeout(STARTUP_TIMEOUT):
            packet = await _first_packet(client)
        if packet.code == hs.CANCEL_REQUEST:
            await _forward_cancel(packet, upstream, cancel_keys, clog, connect_timeout)
            return
        params, greeting = _startup_params(packet, session_label, clog)
        conn = await login(upstream, params, timeout=connect_timeout)
        issued = cancel_keys.issue(upstream, conn.pid, conn.key)
        client.write(b"".join([greeting, hs.auth_ok(), *conn.startup, hs.backend_key(*issued),
                               w.ready_for_query(conn.status)]))
        clog.info("connected to target %s as %s", upstream.label, upstream.user)
        session = PgSession(client, conn, upstream, inspector, clog, max_message=max_message)
        await session.run()
    except ProxyError as e:
        clog.warning("closing the connection: %s", e)
        _send_fatal(client, e.sqlstate, str(e))
    except (ConnectionError, asyncio.IncompleteReadError, TimeoutError) as e:
        clog.info("connection ended: %s", type(e).__name__)
    except Exception:  # noqa: BLE001 - broad on purpose: one broken connection must never reach the daemon
        clog.exception("internal error; closing this connection")
        _send_fatal(client, "XX000", "internal error in the bastion's PostgreSQL proxy; the connection is closed")
    finally:
        if issued is not None:
            cancel_keys.revoke(*issued)
        if session is not None:
            session.close()
        if conn is not None:
            conn.close()
        if not client.is_closing():
            client.close()


def _send_fatal(client: Link, sqlstate: str, text: str) -> None:
    if not client.is_closing():
        try:
            client.write(w.error_response(sqlstate, text, severity="FATAL"))
        except (ConnectionError, RuntimeError):
            pass  # the client is gone; there is nobody left to tell


async def _first_packet(client: Link) -> hs.StartupPacket:
    """Read the startup packet, declining encryption requests (the SSH channel is the transport)."""
    for _ in range(3):
        body = await client.readexactly(hs.startup_length(await client.readexactly(4)))
        packet = hs.parse_startup(body)
        if packet.code not in (hs.SSL_REQUEST, hs.GSSENC_REQUEST):
            return packet
        client.write(b"N")
    raise w.ProtocolError("too many encryption requests")


def _startup_params(packet: hs.StartupPacket, label: str, clog: ConnLog) -> tuple[dict[str, str], bytes]:
    """The upstream's startup parameters, and a NegotiateProtocolVersion for the client if it needs one."""
    if packet.major != 3:
        raise w.ProtocolError(f"unsupported frontend protocol {packet.major}.{packet.minor}: "
                              "the bastion speaks 3.0")
    if packet.params.get("replication", "false").lower() not in ("false", "off", "no", "0"):
        raise NotAllowed("replication connections are not allowed through the bastion")
    client_app = packet.params.get("application_name", "")
    params = {"client_encoding": "UTF8",
              "application_name": f"bastion {label} {client_app}".strip()[:63]}
    for name, value in packet.params.items():
        if name.lower() in FORWARDED_PARAMS:
            params[name] = value
    ignored = sorted(set(packet.params) - set(params) - {"user", "database", "application_name"})
    if ignored:
        clog.debug("startup parameters not forwarded: %s", ", ".join(ignored))
    options = [name for name in packet.params if name.startswith("_pq_.")]
    greeting = hs.negotiate_version(0, options) if packet.minor or options else b""
    return params, greeting


async def _forward_cancel(packet: hs.StartupPacket, upstream: Upstream, keys: CancelKeys, clog: ConnLog,
                          timeout: float) -> None:
    found = keys.find(packet.pid, packet.key)
    if found is None or (found[0].host, found[0].port) != (upstream.host, upstream.port):
        clog.info("cancel request with an unknown key ignored")
        return
    target, pid, key = found
    try:
        await send_cancel(target, pid, key, timeout=timeout)
        clog.info("cancel request forwarded to target %s", target.label)
    except (ProxyError, OSError, TimeoutError, asyncio.IncompleteReadError) as e:
        clog.warning("could not forward a cancel request to target %s: %s", target.label, e)


async def serve_tcp(upstream: Upstream, inspector_factory: Callable[[], Inspector], *,
                    host: str = "127.0.0.1", port: int = 0, max_message: int = w.DEFAULT_MAX_MESSAGE,
                    label: str = "pg") -> asyncio.Server:
    """Listen on loopback and serve each connection (benchmarks and tests; the bastion hands streams over SSH)."""
    require_loopback(host)
    counter = itertools.count(1)
    serving: set[asyncio.Task[None]] = set()  # held here: the loop keeps only weak references to tasks

    def start(client: TcpLink) -> None:
        task = asyncio.get_running_loop().create_task(serve_client(
            client, upstream, inspector_factory(), session_label=f"{label}-{next(counter)}", max_message=max_message))
        serving.add(task)
        task.add_done_callback(serving.discard)

    return await asyncio.get_running_loop().create_server(lambda: TcpLink(on_open=start), host, port)
