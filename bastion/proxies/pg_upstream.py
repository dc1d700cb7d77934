"""The proxy's side of a PostgreSQL target: connect, TLS, log in with the target's credentials, cancel.

The target's password is used here and nowhere else. It never appears in an
exception message or a log line: errors say what failed, not with what.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import ssl
from dataclasses import dataclass, field

from scramp import ScramClient, ScramException

from policies.pgtypes import UNRESOLVED_COLUMN, UNRESOLVED_TABLE

from . import pg_handshake as hs
from . import pg_rows
from . import pgwire as w
from .base import Column, ProxyError, Upstream
from .links import TcpLink, open_tcp

SCRAM = "SCRAM-SHA-256"
UPSTREAM_MAX_MESSAGE = 1 << 30        # PostgreSQL's own limit on one value; the target is not the adversary
LOOKUP_TIMEOUT = 10.0                 # seconds a result's table names may take to look up


class UpstreamError(ProxyError):
    """The target could not be reached or refused the bastion; the message is for the client."""

    sqlstate = "08001"

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        if sqlstate:
            self.sqlstate = sqlstate


class UpstreamAuthError(UpstreamError):
    """The target refused the bastion's credentials."""

    sqlstate = "28P01"


@dataclass
class UpstreamConnection:
    """A logged-in connection to the target, and what its startup told us."""

    link: TcpLink
    pid: int = 0
    key: bytes = b""
    startup: list[bytes] = field(default_factory=list)  # framed ParameterStatus/NoticeResponse, in order
    status: bytes = b"I"

    def close(self) -> None:
        """Say goodbye and close, without waiting."""
        if not self.link.is_closing():
            try:
                self.link.write(w.TERMINATE_MESSAGE)
            except (ConnectionError, RuntimeError):
                pass  # already gone: closing is all that is left to do
            self.link.close()


def _reason(e: OSError) -> str:
    """A short human reason for a network error ("Connection refused", "Name or service not known")."""
    if isinstance(e, socket.gaierror) or not e.errno or e.errno < 0:
        return e.strerror or str(e) or type(e).__name__
    return os.strerror(e.errno)


def _ssl_context(upstream: Upstream) -> ssl.SSLContext:
    if upstream.tls == "verify-full":
        return ssl.create_default_context(cafile=upstream.ca_file)
    # "require" encrypts without authenticating the server, as libpq's sslmode=require does.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def open_link(upstream: Upstream) -> TcpLink:
    """A TCP connection to the target, upgraded to TLS when its ``tls`` mode asks for it."""
    where = f"cannot reach target {upstream.label}"
    try:
        link = await open_tcp(upstream.host, upstream.port)
    except OSError as e:
        raise UpstreamError(f"{where}: {_reason(e)}") from e
    if upstream.tls == "disable":
        return link
    try:
        link.write(hs.ssl_request())
        answer = await link.readexactly(1)
        if answer != b"S":
            raise UpstreamError(f"{where}: it does not accept TLS, and tls is {upstream.tls}")
        if link.buffered:  # bytes sent before the handshake would pass as if TLS had protected them
            raise UpstreamError(f"{where}: it sent data before the TLS handshake; something is in the way")
        await link.start_tls(_ssl_context(upstream), server_hostname=upstream.host)
    except ssl.SSLError as e:
        link.close()
        raise UpstreamError(f"{where}: TLS failed: {e.reason or e}") from e
    except (OSError, asyncio.IncompleteReadError) as e:
        link.close()
        raise UpstreamError(f"{where}: connection lost during TLS negotiation") from e
    except BaseException:
        link.close()
        raise
    return link


async def read_message(reader: TcpLink) -> tuple[int, bytes]:
    """One whole message from the target: (type, body)."""
    head = await reader.readexactly(5)
    typ, length = w.HEADER.unpack(head)
    if length < 4 or length > UPSTREAM_MAX_MESSAGE:
        raise w.ProtocolError("the target sent a message with an invalid length")
    return typ, await reader.readexactly(length - 4)


def _md5_response(upstream: Upstream, salt: bytes) -> bytes:
    inner = hashlib.md5((upstream.password + upstream.user).encode()).hexdigest()
    return b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode()


async def login(upstream: Upstream, params: dict[str, str], *, timeout: float = 10.0) -> UpstreamConnection:
    """Connect and log in as the target's user; collect what the client must see of the startup."""
    try:
        async with asyncio.timeout(timeout):
            conn = UpstreamConnection(await open_link(upstream))
            try:
                await _startup(conn, upstream, params)
            except BaseException:
                conn.link.close()
                raise
            return conn
    except TimeoutError as e:
        raise UpstreamError(f"cannot reach target {upstream.label}: timed out after {timeout:g}s") from e
    except asyncio.IncompleteReadError as e:
        raise UpstreamError(f"target {upstream.label} closed the connection during login") from e
    except OSError as e:
        raise UpstreamError(f"cannot reach target {upstream.label}: {_reason(e)}") from e


async def _startup(conn: UpstreamConnection, upstream: Upstream, params: dict[str, str]) -> None:
    # Pinned here, for every login (sessions and catalog lookups): a value from the startup packet outranks a
    # role's, a database's and the server's defaults, and RESET returns to it. The guardrails read SQL this way.
    startup = {"user": upstream.user, **({"database": upstream.database} if upstream.database else {}), **params,
               "client_encoding": "UTF8", "standard_conforming_strings": "on"}
    conn.link.write(hs.startup_message(startup))
    scram: ScramClient | None = None
    while True:
        typ, body = await read_message(conn.link)
        if typ == w.AUTH:
            code = hs.parse_int32s(body, 1)[0]
            if code == 0:
                continue
            scram = _authenticate(conn, upstream, code, body, scram)
        elif typ == w.ERROR:
            raise _login_refused(upstream, dict(w.parse_fields(body)))
        elif typ in (w.PARAMETER_STATUS, w.NOTICE):
            if typ == w.PARAMETER_STATUS:
                refuse_string_syntax(upstream.label, *hs.parse_parameter_status(body))
            conn.startup.append(w.message(typ, body))
        elif typ == w.BACKEND_KEY:
            conn.pid, conn.key = hs.parse_backend_key(body)
        elif typ == w.READY:
            conn.status = body[:1] or b"I"
            return
        elif typ != w.NEGOTIATE_VERSION:
            raise w.ProtocolError(f"the target sent an unexpected message {chr(typ)!r} during login")


def _authenticate(conn: UpstreamConnection, upstream: Upstream, code: int, body: bytes,
                  scram: ScramClient | None) -> ScramClient | None:
    """Answer one authentication request; return the SCRAM exchange in progress, if any."""
    send = conn.link.write
    try:
        if code == 10:                                    # AuthenticationSASL
            if SCRAM not in hs.parse_sasl_mechanisms(body):
                raise UpstreamError(f"target {upstream.label} offers no SASL mechanism the bastion speaks")
            scram = ScramClient([SCRAM], upstream.user, upstream.password)
            send(hs.sasl_initial_response(SCRAM, scram.get_client_first().encode()))
        elif code == 11 and scram is not None:            # AuthenticationSASLContinue
            scram.set_server_first(body[4:].decode())
            send(hs.sasl_response(scram.get_client_final().encode()))
        elif code == 12 and scram is not None:            # AuthenticationSASLFinal
            scram.set_server_final(body[4:].decode())
            scram = None
        elif code == 5:                                   # AuthenticationMD5Password
            send(hs.password_message(_md5_response(upstream, body[4:8])))
        elif code == 3:                                   # AuthenticationCleartextPassword
            if upstream.tls == "disable":
                raise UpstreamError(f"target {upstream.label} asks for a cleartext password over an "
                                    "unencrypted connection; the bastion refuses (set tls for this target)")
            send(hs.password_message(upstream.password.encode()))
        else:
            raise UpstreamError(f"target {upstream.label} asks for an authentication method the bastion "
                                f"does not support (code {code})")
    except (ScramException, UnicodeDecodeError) as e:
        # scramp's messages name the protocol step, never the password.
        raise UpstreamAuthError(f"SCRAM authentication with target {upstream.label} failed: {e}") from e
    return scram


def refuse_string_syntax(label: str, name: str, value: str) -> None:
    """Fail closed when the target reads SQL text otherwise than the guardrails' parser does (UTF-8, standard)."""
    if name == "standard_conforming_strings" and value.lower() != "on":
        raise UpstreamError(f"target {label} runs with standard_conforming_strings = {value}: the bastion could "
                            "not read its SQL as the server does, so it does not serve it; ask an admin to set it on")
    if name == "client_encoding" and "".join(c for c in value.lower() if c.isalnum()) not in ("utf8", "unicode"):
        # The guardrails read every statement as UTF-8; in another encoding the server may split it otherwise.
        raise UpstreamError(f"target {label} switched client_encoding to {value}: the bastion reads SQL as UTF-8 "
                            "only, so the session is closed")


def _login_refused(upstream: Upstream, fields: dict[str, str]) -> UpstreamError:
    code = fields.get("C", "")
    if code in ("28P01", "28000"):
        return UpstreamAuthError(f"the bastion's credentials for target {upstream.label} were refused; "
                                 "ask an admin")
    return UpstreamError(f"target {upstream.label} refused the connection: {fields.get('M', 'no reason given')}",
                         code or None)


async def send_cancel(upstream: Upstream, pid: int, key: bytes, *, timeout: float = 10.0) -> None:
    """Forward a CancelRequest for the target backend ``pid``; PostgreSQL answers by closing."""
    async with asyncio.timeout(timeout):
        link = await open_link(upstream)
        try:
            link.write(hs.cancel_request(pid, key))
            await link.drain()
            await link.read(1)
        finally:
            link.close()


TableInfo = tuple[str, dict[int, str]]
"""A table as the catalog names it: "schema.table", and its columns' names by attribute number."""


class TableNames:
    """Resolves table OIDs to "schema.table" and column names, over a connection of its own, cached for one session.

    The client's connection is busy streaming results, so the lookup cannot
    share it. A table created in the client's still-open transaction is not
    visible here, and a lookup can fail: such a table resolves to None, and
    the proxy marks its columns unresolved, which every masking rule that
    names the column covers (:data:`policies.pgtypes.UNRESOLVED_TABLE`).
    """

    def __init__(self, upstream: Upstream, logger: logging.LoggerAdapter) -> None:  # type: ignore[type-arg]
        self._upstream = upstream
        self._log = logger
        self._cache: dict[int, TableInfo | None] = {}
        self._conn: UpstreamConnection | None = None
        self._lock = asyncio.Lock()
        self._broken = False

    def cached(self, oids: set[int]) -> dict[int, TableInfo | None] | None:
        """The names when all are already known, else None."""
        cache = self._cache
        if all(o in cache for o in oids):
            return {o: cache[o] for o in oids}
        return None

    async def resolve(self, oids: set[int]) -> dict[int, TableInfo | None]:
        """Names for these OIDs; None for any that cannot be resolved."""
        async with self._lock:
            missing = sorted(o for o in oids if o not in self._cache)
            if missing and not self._broken:
                try:
                    await self._lookup(missing)
                except (ProxyError, OSError, asyncio.IncompleteReadError, TimeoutError) as e:
                    self._broken = True
                    self._log.warning("table-name lookups unavailable for this session (%s); "
                                      "every masking rule that names a column covers it", e)
            for o in missing:
                self._cache.setdefault(o, None)
            return {o: self._cache[o] for o in oids}

    async def _lookup(self, oids: list[int]) -> None:
        async with asyncio.timeout(LOOKUP_TIMEOUT):  # the session's target waits meanwhile: never for good
            await self._query(oids)

    async def _query(self, oids: list[int]) -> None:
        if self._conn is None:
            self._conn = await login(self._upstream, {"application_name": "bastion catalog"})
        conn = self._conn
        # Column names too: a result may rename a column (SELECT email AS x), and rules name the real one.
        conn.link.write(w.query(
            "SELECT c.oid, n.nspname, c.relname, a.attnum, a.attname FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND NOT a.attisdropped "
            f"WHERE c.oid IN ({','.join(str(o) for o in oids)})"))
        while True:
            typ, body = await read_message(conn.link)
            if typ == w.DATA_ROW:
                oid, schema, table, attnum, attname = pg_rows.split_datarow(body, 0, len(body))
                if None not in (oid, schema, table, attnum, attname):
                    assert oid and schema and table and attnum and attname  # for the type checker
                    info = self._cache.get(int(oid))
                    if info is None:
                        info = self._cache[int(oid)] = (f"{schema.decode()}.{table.decode()}", {})
                    info[1][int(attnum)] = attname.decode()
            elif typ == w.ERROR:
                raise ProxyError(dict(w.parse_fields(body)).get("M", "catalog query failed"))
            elif typ == w.READY:
                return

    def close(self) -> None:
        """Close the lookup connection, if one was opened."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def column_of(field: w.Field, table: TableInfo | None) -> Column:
    """How maskers see one result column, given what the catalog said about its table."""
    if not field.table_oid:
        return Column(None, field.name, field.type_oid)  # an expression: no table, only the name it was given
    if table is None:
        # A table the lookup could not name may be any table, and the column any column: every rule applies.
        return Column(UNRESOLVED_TABLE, field.name, field.type_oid, UNRESOLVED_COLUMN)
    name, attributes = table
    source = attributes.get(field.attnum, UNRESOLVED_COLUMN)
    return Column(name, field.name, field.type_oid, None if source == field.name else source)
