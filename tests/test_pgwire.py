"""The v3 wire-protocol codec: round trips, fuzzing, and bad input through a live proxy."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.devdb import PgServer
from bastion.proxies import pg_handshake as hs
from bastion.proxies import pg_rows
from bastion.proxies import pgwire as w
from bastion.proxies.base import StatementEvent, StatementVerdict, Upstream
from policies.model import StatementEffect

if TYPE_CHECKING:
    from pg_fixtures import ProxyLoop

pytest_plugins = ["pg_fixtures"]

PARSERS: list[Callable[[bytes], Any]] = [
    hs.parse_startup, w.parse_query, w.parse_parse, w.parse_bind, w.parse_target, w.parse_execute,
    w.parse_row_description, w.parse_fields, w.parse_tag, w.parse_copy_response, hs.parse_backend_key,
    hs.parse_parameter_status, hs.parse_sasl_mechanisms, lambda b: pg_rows.split_datarow(b, 0, len(b)),
    lambda b: w.frames(b, 0, 1 << 20), lambda b: hs.startup_length(b[:4]), lambda b: hs.parse_int32s(b, 2),
]

VALID = [
    hs.startup_message({"user": "u", "database": "d"})[4:],
    hs.cancel_request(7, b"\x01\x02\x03\x04")[4:],
    w.query("SELECT 1")[5:],
    w.parse_message("s1", "SELECT $1", (23,))[5:],
    w.bind_message("p", "s1", (b"42", None), (0,), (1,))[5:],
    w.describe_message("S", "s1")[5:],
    w.execute_message("p", 10)[5:],
    pg_rows.build_datarow([b"a", None, b""])[5:],
    w.error_response("42501", "no", detail="d")[5:],
    (1).to_bytes(2, "big") + b"id\0" + struct.pack("!ihihih", 16384, 1, 23, 4, -1, 0),  # RowDescription body
]


def _only_protocol_errors(data: bytes) -> None:
    for parse in PARSERS:
        try:
            parse(data)
        except w.ProtocolError:
            pass


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    _only_protocol_errors(data)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
       st.integers(0, 400))
def test_mutated_messages_raise_only_protocol_errors(valid: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(valid)
    for pos, value in flips:
        if data:
            data[pos % len(data)] = value
    _only_protocol_errors(bytes(data[:cut]))
    _only_protocol_errors(bytes(data))


def test_frames_and_lengths() -> None:
    stream = w.query("SELECT 1") + w.SYNC_MESSAGE + w.query("SELECT 2")[:7]
    msgs, rest = w.frames(stream, 0, 1 << 20)
    assert [(chr(t), stream[s:e]) for t, s, e in msgs] == [("Q", b"SELECT 1\0"), ("S", b"")]
    assert rest == len(w.query("SELECT 1")) + 5 and w.pending_length(stream, rest) == len(w.query("SELECT 2")) - 7
    with pytest.raises(w.ProtocolError, match="out of range"):
        w.frames(b"Q" + (64 * 1024 * 1024 + 1).to_bytes(4, "big"), 0, 64 * 1024 * 1024)
    with pytest.raises(w.ProtocolError, match="minimum"):
        w.frames(b"Q\0\0\0\x03", 0, 100)
    with pytest.raises(w.ProtocolError, match="direct TLS"):
        hs.startup_length(b"\x16\x03\x01\x02")


def test_strings_that_are_not_utf8_are_refused_except_in_prose() -> None:
    for body in (b"\x88\x9f\0SELECT 1\0\0\0", b"s\0SELECT '\xff'\0\0\0"):
        with pytest.raises(w.ProtocolError, match="not valid UTF-8"):
            w.parse_parse(body)
    with pytest.raises(w.ProtocolError, match="not valid UTF-8"):
        w.parse_query(b"SELECT '\xc3'\0")
    assert w.parse_fields(b"Mbad \xff byte\0\0") == [("M", "bad \ufffd byte")]  # an error's text, for people


def test_round_trips() -> None:
    bind = w.parse_bind(w.bind_message("p", "s", (b"1", None), (1,), (0, 1))[5:])
    assert bind == w.Bind("p", "s", (1,), (b"1", None), (0, 1))
    row = pg_rows.build_datarow([b"x", None, b""])
    assert pg_rows.split_datarow(row, 5, len(row)) == [b"x", None, b""]
    assert w.parse_fields(w.error_response("08P01", "bad", hint="h")[5:]) == [
        ("S", "ERROR"), ("V", "ERROR"), ("C", "08P01"), ("M", "bad"), ("H", "h")]
    assert hs.parse_startup(hs.startup_message({"user": "u"})[4:]).params == {"user": "u"}
    assert [w.rows_from_tag(t) for t in ("SELECT 3", "INSERT 0 7", "BEGIN", "COPY 2")] == [3, 7, None, 2]


def _reference(buf: bytes, start: int, end: int, width: int,
               cells: Sequence[tuple[int, Callable[[bytes], bytes]]]) -> bytes | type[Exception] | None:
    """mask_cells by the three-pass way it replaces: split, mask the list, replace."""
    try:
        values = pg_rows.split_datarow(buf, start, end)
    except w.ProtocolError:
        return w.ProtocolError
    if len(values) != width:
        return w.ProtocolError
    new = list(values)
    for index, mask in cells:
        value = values[index] if index < len(values) else None
        if value is not None:
            new[index] = mask(value)
    return pg_rows.replace_cells(buf, start, end, values, new)


_CELL = st.none() | st.binary(max_size=12)


@settings(max_examples=600)
@given(st.lists(_CELL, min_size=0, max_size=6), st.sets(st.integers(0, 7)), st.booleans(), st.binary(max_size=3),
       st.integers(-1, 1))
def test_mask_cells_gives_what_split_mask_and_replace_give(values: list[bytes | None], masked: set[int],
                                                           grow: bool, tail: bytes, width_off: int) -> None:
    # Maskers that change some cells (longer or shorter) and leave others, on well-formed and cut rows.
    def mask(value: bytes) -> bytes:
        return value if value.startswith(b"k") else (value + b"!!" if grow else value[:1])
    row = pg_rows.build_datarow(values)
    cells = [(i, mask) for i in sorted(masked)]
    for buf, end in ((row + tail, len(row)), (row[:-1] + tail, len(row) - 1)):  # whole, and one byte short
        width = len(values) + width_off
        expected = _reference(buf, 5, end, width, cells)
        try:
            got: bytes | type[Exception] | None = pg_rows.mask_cells(buf, 5, end, width, cells)
        except w.ProtocolError:
            got = w.ProtocolError
        assert got == expected


def test_mask_cells_refuses_a_negative_length_in_any_cell() -> None:
    row = bytearray(pg_rows.build_datarow([b"a", b"b", b"c"]))
    for at in (7, 12, 17):  # each cell's length field
        bad = bytes(row[:at]) + (-2).to_bytes(4, "big", signed=True) + bytes(row[at + 4:])
        for cells in ([], [(1, bytes.upper)]):
            with pytest.raises(w.ProtocolError, match="negative"):
                pg_rows.mask_cells(bad, 5, len(bad), 3, cells)


# ---- bad input through a live proxy --------------------------------------------------------------

class AllowAll:
    """Allows everything, masks nothing."""

    def check(self, sql: str, *, extended: bool = False) -> StatementVerdict:
        return StatementVerdict(StatementEffect.ALLOW, "test", "ok")

    def masker_for(self, columns: Any) -> None:
        return None

    def audit(self, event: StatementEvent) -> None:
        pass

    def forget(self, name: str) -> None:
        pass


async def _send_garbage(port: int, garbage: bytes) -> list[tuple[str, dict[str, str]]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(hs.startup_message({"user": "x"}))
    seen: list[tuple[str, dict[str, str]]] = []
    try:
        while True:
            head = await asyncio.wait_for(reader.read(5), 10)
            if len(head) < 5:
                return seen  # closed by the proxy
            typ, length = w.HEADER.unpack(head)
            body = await reader.readexactly(length - 4)
            seen.append((chr(typ), dict(w.parse_fields(body)) if typ == w.ERROR else {}))
            if typ == w.READY and len(seen) and all(t != "E" for t, _ in seen):
                writer.write(garbage)
    finally:
        writer.close()


@pytest.mark.parametrize("garbage", [
    pytest.param(b"Q\0\0\0\x09SELECT 1" + b"S\0\0\0\x04", id="unterminated-query"),
    pytest.param(b"Q" + (1 << 30).to_bytes(4, "big") + b"x" * 64, id="oversized"),
    pytest.param(b"B\0\0\0\x08\0\0\xff\xff", id="truncated-bind"),
    pytest.param(b"!\0\0\0\x04", id="unknown-type"),
])
def test_malformed_message_closes_only_that_connection(pg_server: PgServer, proxy_loop: ProxyLoop,
                                                       garbage: bytes) -> None:
    pg_server.psql("SELECT 1")
    upstream = Upstream("127.0.0.1", pg_server.port, "postgres", pg_server.password, "postgres", name="pg-fuzz")
    port = proxy_loop.serve(upstream, AllowAll, max_message=1 << 20)
    with psycopg.connect(host="127.0.0.1", port=port, user="u", dbname="d", autocommit=True) as bystander:
        seen = proxy_loop.call(_send_garbage(port, garbage))
        errors = [fields for t, fields in seen if t == "E"]
        assert len(errors) == 1 and errors[0]["C"] == "08P01" and errors[0]["S"] == "FATAL"
        assert bystander.execute("SELECT 41 + 1").fetchone() == (42,)
