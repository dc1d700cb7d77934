"""PostgreSQL v3 connection start-up: the untyped first packet, authentication, key data.

Pure functions over bytes, like :mod:`.pgwire`; they raise only its ProtocolError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .pgwire import AUTH, BACKEND_KEY, NEGOTIATE_VERSION, PASSWORD, Cursor, ProtocolError, cstr, message

PROTOCOL_3_0 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
MAX_STARTUP = 10_000                 # as PostgreSQL itself caps the startup packet

_I32 = struct.Struct("!i")
_I32PAIR = struct.Struct("!ii")


@dataclass(frozen=True)
class StartupPacket:
    """The untyped first packet: SSLRequest, GSSENCRequest, CancelRequest or StartupMessage."""

    code: int
    params: dict[str, str]
    pid: int = 0
    key: bytes = b""

    @property
    def major(self) -> int:
        return self.code >> 16

    @property
    def minor(self) -> int:
        return self.code & 0xFFFF


def startup_length(head: bytes) -> int:
    """Validate the 4-byte length word of a first packet; return the rest's length."""
    if len(head) != 4:
        raise ProtocolError("incomplete startup packet")
    if head[0] == 0x16:
        raise ProtocolError("direct TLS is not supported here: connect with sslmode=disable or prefer")
    length = int(_I32.unpack(head)[0])
    if length < 8 or length > MAX_STARTUP:
        raise ProtocolError(f"invalid startup packet length {length}")
    return length - 4


def parse_startup(body: bytes) -> StartupPacket:
    """Parse a first packet's body (everything after its length word)."""
    cur = Cursor(body)
    code = cur.int32()
    if code in (SSL_REQUEST, GSSENC_REQUEST):
        cur.done()
        return StartupPacket(code, {})
    if code == CANCEL_REQUEST:
        pid = cur.int32()
        key = cur.take(cur.end - cur.pos)
        if not 4 <= len(key) <= 256:
            raise ProtocolError("invalid cancel key length")
        return StartupPacket(code, {}, pid, key)
    params: dict[str, str] = {}
    if code >> 16 == 3:
        while True:
            name = cur.text()
            if not name:
                break
            params[name] = cur.text()
        cur.done()
    return StartupPacket(code, params)


def startup_message(params: dict[str, str]) -> bytes:
    """A protocol 3.0 StartupMessage."""
    body = _I32.pack(PROTOCOL_3_0) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\0"
    return _I32.pack(len(body) + 4) + body


def ssl_request() -> bytes:
    """An SSLRequest packet."""
    return _I32PAIR.pack(8, SSL_REQUEST)


def cancel_request(pid: int, key: bytes) -> bytes:
    """A CancelRequest packet."""
    return _I32PAIR.pack(12 + len(key), CANCEL_REQUEST) + _I32.pack(pid) + key


def password_message(secret: bytes) -> bytes:
    """A PasswordMessage (cleartext or md5)."""
    return message(PASSWORD, secret + b"\0")


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    """A SASLInitialResponse."""
    return message(PASSWORD, cstr(mechanism) + _I32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    """A SASLResponse."""
    return message(PASSWORD, data)


def parse_int32s(body: bytes, count: int) -> tuple[int, ...]:
    """Leading int32 fields of a message (authentication code, BackendKeyData's pid...)."""
    cur = Cursor(body)
    return tuple(cur.int32() for _ in range(count))


def parse_backend_key(body: bytes) -> tuple[int, bytes]:
    """BackendKeyData: (pid, secret key)."""
    cur = Cursor(body)
    pid = cur.int32()
    key = cur.take(cur.end - cur.pos)
    if not 4 <= len(key) <= 256:
        raise ProtocolError("invalid BackendKeyData")
    return pid, key


def parse_parameter_status(body: bytes) -> tuple[str, str]:
    """ParameterStatus: (name, value)."""
    cur = Cursor(body)
    name, value = cur.text(), cur.text()
    cur.done()
    return name, value


def parse_sasl_mechanisms(body: bytes) -> list[str]:
    """The mechanisms of an AuthenticationSASL, after its code."""
    cur = Cursor(body, 4)
    mechanisms = []
    while (name := cur.text()):
        mechanisms.append(name)
    return mechanisms


def auth_ok() -> bytes:
    """AuthenticationOk."""
    return message(AUTH, _I32.pack(0))


def backend_key(pid: int, key: bytes) -> bytes:
    """BackendKeyData."""
    return message(BACKEND_KEY, _I32.pack(pid) + key)


def negotiate_version(minor: int, unrecognized: list[str]) -> bytes:
    """NegotiateProtocolVersion: the newest minor version we speak, and options we do not know."""
    return message(NEGOTIATE_VERSION, _I32.pack(minor) + _I32.pack(len(unrecognized))
                   + b"".join(cstr(o) for o in unrecognized))
