"""The PostgreSQL proxy against a real PostgreSQL, driven by psycopg, the real psql and raw protocol.

The inspector and masker here are small hand-written fakes of the bastion's
policy side (the real engines live in policies/); the network path, the proxy
and the database are all real.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from test_held_statements import CONFIG as HOLD_FOR_REVIEW

from bastion.approvals import Approvals
from bastion.audit import AuditStore
from bastion.config import load_config
from bastion.devdb import PgServer, free_port
from bastion.proxies import pg_handshake as hs
from bastion.proxies import pg_rows
from bastion.proxies import pgwire as w
from bastion.proxies.base import Column, ProxyError, StatementEvent, StatementVerdict, Upstream
from bastion.proxies.pg_upstream import open_link
from bastion.proxies.postgres import serve_tcp
from bastion.sqlaccess import PolicyInspector
from policies.masking import Column as MaskColumn
from policies.masking import Masker
from policies.model import Identity, MaskingRule, StatementEffect
from policies.pgtypes import UNRESOLVED_COLUMN, UNRESOLVED_TABLE

if TYPE_CHECKING:
    from pg_fixtures import ProxyLoop

pytest_plugins = ["pg_fixtures"]

APP_PASSWORD = "app-Pw-7f3a9c1e-not-for-clients"
MD5_PASSWORD = "md5-Pw-28b1e04d-not-for-clients"
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
TEXT_OIDS = {25, 1043}
SCHEMA = """
CREATE TABLE customers (id int PRIMARY KEY, name text, email text UNIQUE, ssn text);
INSERT INTO customers VALUES (1, 'Ada', 'ada@example.com', '123-45-6789'),
                             (2, 'Bob', 'bob@example.org', '987-65-4321');
CREATE TABLE kv (k int PRIMARY KEY, v text);
CREATE TABLE big AS SELECT g AS id, 'user' || g || '@example.com' AS email FROM generate_series(1, 20000) g;
"""


# ---- the fake policy side ------------------------------------------------------------------------

class FakeMasker:
    """Masks the given column indexes (text: "***"; other binary types: NULL) and emails in prose."""

    def __init__(self, indexes: frozenset[int] = frozenset()) -> None:
        self.indexes = indexes

    def text_row(self, values: list[bytes | None]) -> list[bytes | None]:
        if not any(values[i] is not None for i in self.indexes):
            return values
        return [b"***" if i in self.indexes and v is not None else v for i, v in enumerate(values)]

    def text_cells(self) -> list[tuple[int, Callable[[bytes], bytes]]]:
        return [(i, lambda _: b"***") for i in sorted(self.indexes)]

    def binary_value(self, index: int, type_oid: int, value: bytes) -> bytes | None:
        if index not in self.indexes:
            return value
        return b"***" if type_oid in TEXT_OIDS else None

    def free_text(self, text: str) -> str:
        return EMAIL.sub("<email>", text)


@dataclass
class FakeInspector:
    """Denies DELETE and DROP, holds TRUNCATE for review; masks email, and customers.ssn by table."""

    events: list[StatementEvent]
    columns_seen: list[tuple[Column, ...]] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)

    def check(self, sql: str, *, extended: bool = False) -> StatementVerdict:
        self.checked.append(sql)
        if re.search(r"\b(delete|drop)\b", sql, re.I):
            return StatementVerdict(StatementEffect.DENY, "test.no-delete", "DELETE and DROP are not allowed")
        if re.search(r"\btruncate\b", sql, re.I):
            return StatementVerdict(StatementEffect.REVIEW, "test.review", "TRUNCATE needs an approval")
        return StatementVerdict(StatementEffect.ALLOW, "test.allow", "allowed")

    def masker_for(self, columns: Sequence[Column]) -> FakeMasker | None:
        if not columns:
            return FakeMasker()
        self.columns_seen.append(tuple(columns))
        masked = frozenset(i for i, c in enumerate(columns)
                           if c.name == "email" or (c.table == "public.customers" and c.name == "ssn"))
        return FakeMasker(masked) if masked else None

    def audit(self, event: StatementEvent) -> None:
        self.events.append(event)

    def forget(self, name: str) -> None:
        self.forgotten.append(name)


@dataclass
class Proxy:
    """A proxy listener for one upstream, and what its inspectors saw."""

    port: int
    events: list[StatementEvent]
    inspectors: list[FakeInspector]

    def dsn(self, **extra: str) -> str:
        return make_conninfo(host="127.0.0.1", port=self.port, user="anyone", dbname="whatever",
                             connect_timeout=10, **extra)

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn(), autocommit=kwargs.pop("autocommit", True), **kwargs)


def start_proxy(loop: ProxyLoop, upstream: Upstream, **kwargs: Any) -> Proxy:
    events: list[StatementEvent] = []
    inspectors: list[FakeInspector] = []

    def factory() -> FakeInspector:
        inspectors.append(FakeInspector(events))
        return inspectors[-1]

    return Proxy(loop.serve(upstream, factory, **kwargs), events, inspectors)


@pytest.fixture(scope="module")
def target(pg_server: PgServer) -> Upstream:
    pg_server.create_role("app", APP_PASSWORD)
    pg_server.create_role("md5user", MD5_PASSWORD, md5=True)
    pg_server.psql("CREATE DATABASE appdb OWNER app")
    pg_server.psql(SCHEMA, db="appdb", user="app", password=APP_PASSWORD)
    return Upstream("127.0.0.1", pg_server.port, "app", APP_PASSWORD, "appdb", name="pg-test")


@pytest.fixture(scope="module")
def proxy(proxy_loop: ProxyLoop, target: Upstream) -> Proxy:
    return start_proxy(proxy_loop, target)


@pytest.fixture
def conn(proxy: Proxy) -> Iterator[psycopg.Connection[Any]]:
    with proxy.connect() as c:
        yield c


# ---- queries and results -------------------------------------------------------------------------

def test_text_mode_results_with_masking_by_column_and_table(proxy: Proxy, conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute("SELECT id, name, email, ssn FROM customers ORDER BY id").fetchall()
    assert rows == [(1, "Ada", "***", "***"), (2, "Bob", "***", "***")]
    assert Column("public.customers", "ssn", 25) in proxy.inspectors[-1].columns_seen[-1]
    # Not the customers table: ssn is left alone, email still masked by name.
    assert conn.execute("SELECT 'x' AS ssn, 'a@b.c' AS email, NULL::text AS email").fetchone() == ("x", "***", None)


def test_binary_mode_with_prepared_statements(conn: psycopg.Connection[Any]) -> None:
    cur = conn.cursor(binary=True)
    for _ in range(3):  # the first prepares; later ones Bind/Execute the named statement
        cur.execute("SELECT id, name, email, ssn, id * 2 AS twice FROM customers WHERE id = %s", (2,), prepare=True)
        assert cur.fetchall() == [(2, "Bob", "***", "***", 4)]
    cur.execute("SELECT email::varchar, length(email) AS email FROM customers WHERE id = %s", (1,), prepare=True)
    assert cur.fetchone() == ("***", None)  # a masked non-text binary value becomes NULL


def test_simple_denial_keeps_the_connection_and_the_transaction(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
        conn.execute("DELETE FROM kv")
    assert err.value.sqlstate == "42501"
    assert str(err.value) == "denied by test.no-delete: DELETE and DROP are not allowed"
    assert conn.execute("SELECT 1").fetchone() == (1,)
    conn.autocommit = False
    conn.execute("INSERT INTO kv VALUES (100, 'in-tx')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DROP TABLE kv")
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS  # the true status, relayed
    conn.commit()
    assert conn.execute("SELECT v FROM kv WHERE k = 100").fetchone() == ("in-tx",)


def test_extended_denial_discards_to_sync_and_recovers(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DELETE FROM kv WHERE k = %s", (1,))
    assert conn.execute("SELECT %s::int + 1", (1,)).fetchone() == (2,)


def test_review_is_refused_with_its_reason(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="held for review by test.review: TRUNCATE"):
        conn.execute("TRUNCATE kv")


def test_multi_statement_query_with_a_denied_statement_runs_nothing(proxy: Proxy, conn: psycopg.Connection[Any]
                                                                    ) -> None:
    cur = conn.execute("SELECT 1; SELECT 2")
    assert cur.fetchone() == (1,) and cur.nextset() and cur.fetchone() == (2,)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("INSERT INTO kv VALUES (200, 'x'); DELETE FROM kv")
    assert conn.execute("SELECT count(*) FROM kv WHERE k = 200").fetchone() == (0,)
    assert proxy.inspectors[-1].checked.count("INSERT INTO kv VALUES (200, 'x'); DELETE FROM kv") == 1


def test_pipeline(conn: psycopg.Connection[Any]) -> None:
    with conn.pipeline():
        cursors = [conn.execute("SELECT %s::int * 10", (i,)) for i in range(5)]
        named = conn.cursor(binary=True).execute("SELECT email, id FROM customers WHERE id = %s", (1,), prepare=True)
    assert [c.fetchone() for c in cursors] == [(i * 10,) for i in range(5)]
    assert named.fetchone() == ("***", 1)
    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.pipeline():
        conn.execute("INSERT INTO kv VALUES (%s, 'pipelined')", (300,))
        conn.execute("DELETE FROM kv WHERE k = %s", (300,))
        conn.execute("SELECT 1")
    # As with any error in a pipeline, the batch's implicit transaction rolled back.
    assert conn.execute("SELECT count(*) FROM kv WHERE k = 300").fetchone() == (0,)


def test_copy_out_is_masked_and_copy_in_works(conn: psycopg.Connection[Any]) -> None:
    with conn.cursor() as cur:
        with cur.copy("COPY (SELECT id, email FROM customers ORDER BY id) TO STDOUT") as copy:
            lines = b"".join(bytes(chunk) for chunk in copy).decode()
        assert lines == "1\t<email>\n2\t<email>\n"
        with cur.copy("COPY kv (k, v) FROM STDIN") as copy:
            for k in range(400, 410):
                copy.write_row((k, f"copied {k}"))
        assert cur.execute("SELECT count(*) FROM kv WHERE v LIKE 'copied%'").fetchone() == (10,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="binary COPY"):
            with cur.copy("COPY customers TO STDOUT (FORMAT binary)") as copy:
                list(copy)


def test_returning_error_messages_and_notices_are_masked(proxy: Proxy, conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("INSERT INTO customers VALUES (3, 'Cy', 'cy@example.net', '1') RETURNING id, email").fetchone()
    assert row == (3, "***")
    with pytest.raises(psycopg.errors.UniqueViolation) as err:
        conn.execute("INSERT INTO customers VALUES (4, 'Dup', %s, '2')", ("cy@example.net",))
    assert "cy@example.net" not in str(err.value) and "cy@example.net" not in (err.value.diag.message_detail or "")
    assert "<email>" in (err.value.diag.message_detail or "")
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    conn.execute("DO $$ BEGIN RAISE NOTICE 'mail %', 'eve@example.com'; END $$")
    assert notices == ["mail <email>"]
    event = next(e for e in reversed(proxy.events) if e.sql.startswith("INSERT INTO customers VALUES (4"))
    assert event.params == ("<email>",) and event.error and "cy@example.net" not in event.error


def test_audit_one_event_per_statement(proxy: Proxy, conn: psycopg.Connection[Any]) -> None:
    before = len(proxy.events)
    conn.execute("SELECT * FROM customers WHERE id = %s", (1,))
    conn.execute("UPDATE kv SET v = v WHERE k < 0")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DELETE FROM kv")
    with pytest.raises(psycopg.errors.DivisionByZero):
        conn.execute("SELECT 1/0")
    events = proxy.events[before:]
    assert [(e.sql, e.verdict.effect, e.rows, e.error) for e in events] == [
        ("SELECT * FROM customers WHERE id = $1", "allow", 1, None),
        ("UPDATE kv SET v = v WHERE k < 0", "allow", 0, None),
        ("DELETE FROM kv", "deny", None, "denied by test.no-delete: DELETE and DROP are not allowed"),
        ("SELECT 1/0", "allow", None, "division by zero"),
    ]
    assert events[0].params == ("1",) and events[0].tags == ("SELECT 1",) and events[0].duration > 0


def test_startup_options_are_not_forwarded(proxy: Proxy) -> None:
    with psycopg.connect(proxy.dsn(options="-c search_path=evil"), autocommit=True) as c:
        assert c.execute("SHOW search_path").fetchone() == ('"$user", public',)
        assert c.execute("SELECT current_user, current_database()").fetchone() == ("app", "appdb")


def test_messages_larger_than_one_read_pass_whole_both_ways(conn: psycopg.Connection[Any]) -> None:
    # The relays frame what each read brings: a message of many reads is held, and joined once it is whole.
    big = "x" * (3 * 1024 * 1024 + 17)
    assert conn.execute("SELECT %s::text AS note", (big,)).fetchone() == (big,)  # a 3 MiB Bind, and DataRow
    assert conn.execute(f"SELECT length('{big}')").fetchone() == (len(big),)     # a 3 MiB Query


def test_new_result_shapes_in_one_chunk_are_looked_up_one_after_another(proxy: Proxy,
                                                                         conn: psycopg.Connection[Any]) -> None:
    # Each new shape pauses the relay for its table names; what arrived behind it waits, in order.
    cur = conn.execute("SELECT email FROM customers WHERE id = 1; SELECT name, ssn FROM customers WHERE id = 2; "
                       "SELECT k, v FROM kv WHERE k < 0; SELECT id, email FROM big WHERE id = 3")
    results = [cur.fetchall()]
    while cur.nextset():
        results.append(cur.fetchall())
    assert results == [[("***",)], [("Bob", "***")], [], [(3, "***")]]
    tables = {c.table for columns in proxy.inspectors[-1].columns_seen[-4:] for c in columns}
    assert tables == {"public.customers", "public.kv", "public.big"}


def _log_in(sock: socket.socket, port: int) -> None:
    """Connect a raw socket to the proxy and read through its login, to the first ReadyForQuery."""
    sock.connect(("127.0.0.1", port))
    sock.sendall(hs.startup_message({"user": "raw", "database": "x"}))
    buf = b""
    while not buf.endswith(w.ready_for_query(b"I")):
        buf += sock.recv(65536)


def test_a_client_that_reads_slowly_gets_every_row(proxy: Proxy) -> None:
    # A small receive buffer and pauses: the proxy's writes to the client back up, and it must stop
    # reading the target until they drain (flow control), then carry on to the last row.
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", proxy.port))
        sock.sendall(hs.startup_message({"user": "raw", "database": "x"}))
        buf, rows, emails, ready = b"", 0, set(), 0
        while ready < 2:
            data = sock.recv(8192)
            assert data, "the proxy closed the connection"
            buf += data
            msgs, rest = w.frames(buf, 0, 1 << 30)
            for typ, start, end in msgs:
                if typ == w.READY:
                    ready += 1
                    if ready == 1:
                        sock.sendall(w.query("SELECT id, email, repeat('y', 500) AS pad FROM big ORDER BY id"))
                elif typ == w.DATA_ROW:
                    rows += 1
                    emails.add(pg_rows.split_datarow(buf, start, end)[1])
                elif typ == w.ERROR:
                    raise AssertionError(dict(w.parse_fields(buf[start:end])))
            buf = buf[rest:]
            if ready == 1 and rows < 4000:  # 2 MB read slowly: more than the kernel's buffers hold
                time.sleep(0.001)
    assert rows == 20000 and emails == {b"***"}


def test_a_client_that_pipelines_refusals_and_never_reads_is_read_no_further(proxy: Proxy) -> None:
    # Refusals are the proxy's own answers: while the client does not read them, the proxy must stop
    # reading the client (else every refused Query would grow its memory), and go on when it reads.
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        _log_in(sock, proxy.port)
        sock.settimeout(2)
        refused = w.query("DELETE FROM kv") * 20000
        sent = 0
        with contextlib.suppress(TimeoutError):
            for _ in range(200):
                sock.sendall(refused)
                sent += 1
        assert sent < 200  # 80 MB were not all taken: the proxy holds back, it does not buffer them
        inspector = proxy.inspectors[-1]
        seen = len(inspector.checked)
        sock.settimeout(10)
        replies = 0
        while len(inspector.checked) < seen + 1000:  # reading the refusals lets it carry on
            replies += sock.recv(1 << 20).count(b"denied by test.no-delete")
        assert replies > 1000


def test_a_batch_waits_for_the_ready_for_query_of_the_one_before(proxy: Proxy) -> None:
    # A statement may change how the server reads the next (a function that calls set_config(), which a
    # parser cannot see), and the target reports that only with its ReadyForQuery: so the proxy relays a
    # pipelined batch only after the one before it is done.
    with socket.socket() as sock:
        _log_in(sock, proxy.port)
        inspector = proxy.inspectors[-1]
        sock.sendall(w.query("SELECT pg_sleep(0.8)") + w.query("SELECT 2"))
        time.sleep(0.4)
        assert inspector.checked[-1] == "SELECT pg_sleep(0.8)"  # the second waits, unjudged and unsent
        buf = b""
        while buf.count(w.ready_for_query(b"I")) < 2:
            buf += sock.recv(65536)
        assert inspector.checked[-2:] == ["SELECT pg_sleep(0.8)", "SELECT 2"]


# ---- cancel, and failures upstream ---------------------------------------------------------------

def test_cancel_reaches_the_right_query(conn: psycopg.Connection[Any]) -> None:
    # cancel_safe, not cancel: libpq's blocking PQcancel holds the GIL, and this proxy runs in our own
    # process. The blocking path is proven by psql below, which uses it from its own process.
    timer = threading.Timer(0.5, conn.cancel_safe)
    timer.start()
    started = time.monotonic()
    with pytest.raises(psycopg.errors.QueryCanceled) as err:
        conn.execute("SELECT pg_sleep(30)")
    assert err.value.sqlstate == "57014"
    assert time.monotonic() - started < 10
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_upstream_down_is_a_clear_error(proxy_loop: ProxyLoop) -> None:
    down = start_proxy(proxy_loop, Upstream("127.0.0.1", free_port(), "app", APP_PASSWORD, "appdb", name="pg-down"))
    with pytest.raises(psycopg.OperationalError, match="cannot reach target pg-down: Connection refused"):
        down.connect()


def test_wrong_password_never_leaks(proxy_loop: ProxyLoop, target: Upstream, proxy: Proxy,
                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-Pw-0b7e5d22-secret"
    bad = start_proxy(proxy_loop, Upstream(target.host, target.port, "app", wrong, "appdb", name="pg-test"))
    with pytest.raises(psycopg.OperationalError) as err:
        bad.connect()
    assert "the bastion's credentials for target pg-test were refused; ask an admin" in str(err.value)
    with proxy.connect() as c:  # a good session, logged at DEBUG too
        c.execute("SELECT 1")
    assert APP_PASSWORD not in repr(target)
    for text in (str(err.value), caplog.text, repr(proxy.events)):
        assert wrong not in text and APP_PASSWORD not in text


def test_md5_and_tls_logins(proxy_loop: ProxyLoop, pg_server: PgServer, target: Upstream) -> None:
    md5 = start_proxy(proxy_loop, Upstream(target.host, target.port, "md5user", MD5_PASSWORD, "appdb"))
    with md5.connect() as c:
        assert c.execute("SELECT current_user").fetchone() == ("md5user",)
    for tls, ca, host in (("require", None, "127.0.0.1"), ("verify-full", str(pg_server.ca_file), "localhost")):
        secure = start_proxy(proxy_loop, Upstream(host, target.port, "app", APP_PASSWORD, "appdb", tls=tls, ca_file=ca))
        with secure.connect() as c:
            assert c.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
    untrusted = start_proxy(proxy_loop, Upstream("127.0.0.1", target.port, "app", APP_PASSWORD, "appdb",
                                                 tls="verify-full", name="pg-tls"))
    with pytest.raises(psycopg.OperationalError, match="cannot reach target pg-tls: TLS failed"):
        untrusted.connect()


def test_listener_refuses_non_loopback(proxy_loop: ProxyLoop, target: Upstream) -> None:
    with pytest.raises(ProxyError, match="loopback only"):
        proxy_loop.call(serve_tcp(target, lambda: FakeInspector([]), host="0.0.0.0"))


# ---- the real psql ------------------------------------------------------------------------------

def _psql(proxy: Proxy, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"PGCONNECT_TIMEOUT": "10"}
    return subprocess.run([psql, "-X", "-A", "-t", "-v", "VERBOSITY=verbose",
                           f"host=127.0.0.1 port={proxy.port} user=anyone dbname=x", *args],
                          capture_output=True, text=True, env=env, input=stdin, timeout=30)


def test_psql_queries_denials_and_copy(proxy: Proxy) -> None:
    out = _psql(proxy, "-c", "SELECT name, email FROM customers WHERE id = 1")
    assert out.returncode == 0 and out.stdout.strip() == "Ada|***"
    out = _psql(proxy, "-c", "DELETE FROM kv", "-c", "SELECT 'still here'")
    assert "ERROR:  42501: denied by test.no-delete" in out.stderr
    assert out.stdout.strip() == "still here"
    out = _psql(proxy, "-c", r"\copy kv (k, v) from stdin", stdin="500\tfrom psql\n501\tfrom psql\n\\.\n")
    assert out.returncode == 0, out.stderr
    out = _psql(proxy, "-c", r"\copy (SELECT k, v FROM kv WHERE k >= 500 ORDER BY k) to stdout")
    assert out.stdout == "500\tfrom psql\n501\tfrom psql\n"


def test_psql_ctrl_c_cancels(proxy: Proxy) -> None:
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    proc = subprocess.Popen([psql, "-X", "-v", "VERBOSITY=verbose", proxy.dsn(), "-c", "SELECT pg_sleep(30)"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(1.0)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)
    assert time.monotonic() - started < 10
    assert "57014" in err and "canceling statement due to user request" in err


# ---- raw protocol: paths no driver takes on its own ---------------------------------------------

async def _raw_session(port: int, messages: bytes, *, until: int = 1) -> list[tuple[str, bytes]]:
    """Log in, send ``messages``, and collect the replies up to ``until`` ReadyForQuery messages."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(hs.startup_message({"user": "raw", "database": "x"}))
    replies: list[tuple[str, bytes]] = []
    ready = 0
    try:
        while True:
            typ, length = w.HEADER.unpack(await reader.readexactly(5))
            body = await reader.readexactly(length - 4)
            if ready == 0:  # the login's own replies
                if typ == w.READY:
                    ready = 1
                    writer.write(messages)
                continue
            replies.append((chr(typ), body))
            if typ == w.READY:
                ready += 1
                if ready > until:
                    return replies
    finally:
        writer.close()


@pytest.mark.parametrize("describe", [False, True], ids=["undescribed", "statement-described"])
def test_binary_rows_of_prepared_statements_are_masked(proxy: Proxy, proxy_loop: ProxyLoop, describe: bool) -> None:
    # Without any Describe the proxy asks the target itself and keeps the answer; after Describe(statement),
    # whose RowDescription says "format unknown", the formats come from Bind.
    sql = "SELECT id, email FROM customers WHERE id = 1"
    messages = (w.parse_message("s1", sql) + (w.describe_message("S", "s1") if describe else b"") + w.SYNC_MESSAGE
                + w.bind_message("", "s1", result_formats=(1,)) + w.execute_message() + w.SYNC_MESSAGE)
    replies = proxy_loop.call(_raw_session(proxy.port, messages, until=2))
    described = ["t", "T"] if describe else []
    assert [t for t, _ in replies] == ["1", *described, "Z", "2", "D", "C", "Z"]
    row = dict(replies)["D"]
    assert pg_rows.split_datarow(row, 0, len(row)) == [(1).to_bytes(4, "big"), b"***"]


def test_bind_to_a_statement_not_prepared_through_the_proxy_is_refused(proxy: Proxy, proxy_loop: ProxyLoop) -> None:
    messages = (w.query("PREPARE hidden AS SELECT 1") + w.bind_message("", "hidden") + w.execute_message()
                + w.SYNC_MESSAGE + w.query("SELECT 42"))
    replies = proxy_loop.call(_raw_session(proxy.port, messages, until=3))
    kinds = [t for t, _ in replies]
    assert kinds == ["C", "Z", "E", "Z", "T", "D", "C", "Z"]
    fields = dict(w.parse_fields(replies[2][1]))
    assert fields["C"] == "26000" and "not prepared through the bastion" in fields["M"]


def test_function_call_and_replication_are_refused(proxy: Proxy, proxy_loop: ProxyLoop) -> None:
    call = w.message(w.FUNCTION_CALL, (1247).to_bytes(4, "big") + b"\0\0" + b"\0\0" + b"\0\0")
    replies = proxy_loop.call(_raw_session(proxy.port, call))
    assert [t for t, _ in replies] == ["E", "Z"]
    assert dict(w.parse_fields(replies[0][1]))["C"] == "42501"
    with pytest.raises(psycopg.OperationalError, match="replication connections are not allowed"):
        psycopg.connect(proxy.dsn(replication="database"))


def test_newer_protocol_minor_is_negotiated_down(proxy: Proxy, proxy_loop: ProxyLoop) -> None:
    async def hello() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        body = (196608 + 2).to_bytes(4, "big") + b"user\0u\0_pq_.future\0x\0\0"
        writer.write((len(body) + 4).to_bytes(4, "big") + body)
        data = await reader.readexactly(1)
        writer.close()
        return data
    assert proxy_loop.call(hello()) == b"v"


# -- reused statement and portal names (found in review: a stale shape skipped masking) -----------


def _data_rows(replies: list[tuple[str, bytes]]) -> list[bytes]:
    return [body for typ, body in replies if typ == "D"]


def test_a_reused_portal_name_is_masked_with_its_new_shape(proxy, proxy_loop) -> None:  # type: ignore[no-untyped-def]
    messages = (w.parse_message("a", "SELECT 'x'::text AS n") + w.bind_message("p", "a") + w.execute_message("p")
                + w.SYNC_MESSAGE
                + w.parse_message("b", "SELECT email FROM customers WHERE id = 1") + w.bind_message("p", "b")
                + w.execute_message("p") + w.SYNC_MESSAGE)
    replies = proxy_loop.call(_raw_session(proxy.port, messages, until=2))
    rows = _data_rows(replies)
    assert len(rows) == 2 and not any(b"ada@example.com" in row for row in rows)


def test_a_statement_name_reused_after_sql_deallocate_is_masked(proxy, proxy_loop) -> None:  # type: ignore[no-untyped-def]
    messages = (w.parse_message("s", "SELECT 'x'::text AS n") + w.describe_message("S", "s") + w.SYNC_MESSAGE
                + w.query("DEALLOCATE s")
                + w.parse_message("s", "SELECT email FROM customers WHERE id = 1") + w.bind_message("", "s")
                + w.execute_message("") + w.SYNC_MESSAGE)
    replies = proxy_loop.call(_raw_session(proxy.port, messages, until=3))
    rows = _data_rows(replies)
    assert len(rows) == 1 and b"ada@example.com" not in rows[0]


def test_a_refused_duplicate_parse_keeps_the_statement_the_target_still_has(proxy, proxy_loop) -> None:  # type: ignore[no-untyped-def]
    messages = (w.parse_message("s", "SELECT email FROM customers WHERE id = 1") + w.SYNC_MESSAGE
                + w.parse_message("s", "SELECT 'x'::text AS n") + w.SYNC_MESSAGE   # the target refuses: 42P05
                + w.bind_message("", "s") + w.execute_message("") + w.SYNC_MESSAGE)
    replies = proxy_loop.call(_raw_session(proxy.port, messages, until=3))
    assert any(typ == "E" for typ, _ in replies)
    rows = _data_rows(replies)
    assert len(rows) == 1 and b"ada@example.com" not in rows[0]  # the old statement ran, masked as itself


def test_a_session_whose_strings_would_be_misread_is_ended(proxy: Proxy) -> None:
    # This inspector lets SET through (the real one refuses it); the proxy itself must still fail closed.
    with proxy.connect() as c:
        with pytest.raises(psycopg.Error, match="standard_conforming_strings"):
            c.execute("SET standard_conforming_strings = off")
            c.execute("SELECT 'a\\' , $$ ' ; SELECT 1; -- $$")
        assert c.closed or c.broken


def test_a_session_whose_encoding_is_switched_is_ended_before_it_misreads(proxy: Proxy) -> None:
    # This inspector lets set_config through (the real one refuses it). In SJIS the next statement's
    # bytes could hide a DELETE inside what reads as a UTF-8 string, so the proxy ends the session as soon
    # as the target reports the new client_encoding.
    with proxy.connect() as c:
        with pytest.raises(psycopg.Error, match="client_encoding"):
            c.execute("SELECT set_config('client_encoding', 'SJIS', false)")
        assert c.closed or c.broken
    with proxy.connect() as c:
        assert c.execute("SELECT current_setting('client_encoding')").fetchone() == ("UTF8",)


SET_OFF = "SELECT set_config('standard_conforming_strings', 'off', false)"  # as a function of the database could


def _run(sql: str) -> bytes:
    return w.parse_message("", sql) + w.bind_message("", "") + w.execute_message()


def test_a_statement_parsed_after_code_ran_in_its_batch_must_read_alike_either_way(proxy: Proxy,
                                                                                   proxy_loop: ProxyLoop) -> None:
    # This inspector lets set_config through, standing in for a function that calls it: PostgreSQL then
    # reads the next Parse of the batch without standard strings, and reports the change only at Sync.
    misread = "SELECT 'a\\b' AS x"  # a backslash in a plain literal: its meaning depends on the setting
    messages = (_run(SET_OFF) + _run(misread) + w.SYNC_MESSAGE + _run(misread) + w.SYNC_MESSAGE
                + w.query("SHOW standard_conforming_strings"))
    replies = proxy_loop.call(_raw_session(proxy.port, messages, until=3))
    kinds = [t for t, _ in replies]
    assert kinds[:6] == ["1", "2", "D", "C", "E", "Z"], kinds
    fields = dict(w.parse_fields(replies[4][1]))
    assert fields["C"] == "42501" and "same batch" in fields["M"] and "after a Sync" in fields["M"]
    # The refusal rolled the batch back, set_config() included, as an error of the server's own would:
    # alone in its batch, the statement is read with standard strings, and the session goes on.
    rows = _data_rows(replies)
    assert pg_rows.split_datarow(rows[1], 0, len(rows[1])) == [b"a\\b"]
    assert pg_rows.split_datarow(rows[2], 0, len(rows[2])) == [b"on"]


def test_a_query_inside_an_unfinished_batch_is_refused_and_the_batch_rolled_back(
        proxy: Proxy, proxy_loop: ProxyLoop) -> None:
    # A server would run it after what the batch ran, which may have changed how it reads SQL; and no
    # driver sends one there. Refused as a failure of the batch: what the batch ran is rolled back.
    replies = proxy_loop.call(_raw_session(proxy.port, _run(SET_OFF) + w.query("SELECT 1") + w.query("SELECT 2")
                                           + w.SYNC_MESSAGE + w.query("SHOW standard_conforming_strings"), until=2))
    assert [t for t, _ in replies] == ["1", "2", "D", "C", "E", "Z", "T", "D", "C", "Z"]
    assert "inside an unfinished extended-protocol batch" in dict(w.parse_fields(replies[4][1]))["M"]
    rows = _data_rows(replies)
    assert pg_rows.split_datarow(rows[1], 0, len(rows[1])) == [b"on"]


def test_a_refused_statement_then_a_query_then_sync_is_answered(proxy: Proxy, proxy_loop: ProxyLoop) -> None:
    # The Query is discarded with the rest of the failed batch, as a server would: the Sync still gets its answer.
    call = w.message(w.FUNCTION_CALL, (1247).to_bytes(4, "big") + b"\0\0" + b"\0\0" + b"\0\0")
    for extra in (w.query("SELECT 1"), call):
        replies = proxy_loop.call(_raw_session(proxy.port, _run("DELETE FROM kv") + extra + w.SYNC_MESSAGE
                                               + w.query("SELECT 2"), until=2), timeout=10)
        assert [t for t, _ in replies] == ["E", "Z", "T", "D", "C", "Z"]


def test_a_refused_function_call_inside_a_batch_rolls_the_batch_back(proxy: Proxy, proxy_loop: ProxyLoop) -> None:
    call = w.message(w.FUNCTION_CALL, (1247).to_bytes(4, "big") + b"\0\0" + b"\0\0" + b"\0\0")
    replies = proxy_loop.call(_raw_session(proxy.port, _run("INSERT INTO kv VALUES (9101, 'x')") + call
                                           + w.SYNC_MESSAGE + w.query("SELECT count(*) FROM kv WHERE k = 9101"),
                                           until=2))
    assert [t for t, _ in replies] == ["1", "2", "C", "E", "Z", "T", "D", "C", "Z"]
    assert _data_rows(replies)[-1].endswith(b"0")


def test_simple_copy_in_lets_only_its_data_through_until_its_ready_for_query(proxy: Proxy,
                                                                             proxy_loop: ProxyLoop) -> None:
    # The Query that ran set_config() (a trigger on the COPY's table could too) reports the change only with
    # its ReadyForQuery, after the COPY: the statement pipelined behind the COPY must wait for it.
    copy = (w.query(f"{SET_OFF}; COPY kv FROM STDIN") + w.message(w.COPY_DATA, b"9201\tx\n")
            + w.message(w.COPY_DONE) + w.query("SELECT 'a\\b'"))
    with pytest.raises(asyncio.IncompleteReadError):
        proxy_loop.call(_raw_session(proxy.port, copy, until=2))
    assert "SELECT 'a\\b'" not in proxy.inspectors[-1].checked  # never judged, never sent: the session ended first


def test_a_copy_that_fails_ends_copy_in_for_the_proxy_too(proxy: Proxy, proxy_loop: ProxyLoop) -> None:
    # Bad data ends the COPY at the server at once. A Sync the client sends meanwhile must not be relayed as
    # if the server were still ignoring it: answered late, it would shift every response after it.
    bad = w.query("COPY kv FROM STDIN") + w.message(w.COPY_DATA, b"not-a-number\tx\n") + w.SYNC_MESSAGE
    replies = proxy_loop.call(_raw_session(proxy.port, bad + w.query("SELECT 1"), until=2))
    assert [t for t, _ in replies] == ["G", "E", "Z", "T", "D", "C", "Z"]
    # And the statement after it still waits for the ReadyForQuery that reports a settings change.
    with pytest.raises(asyncio.IncompleteReadError):
        proxy_loop.call(_raw_session(proxy.port, bad + w.query(SET_OFF) + w.query("SELECT 'a\\b'"), until=3))
    assert "SELECT 'a\\b'" not in proxy.inspectors[-1].checked


def test_nothing_passes_an_execute_that_may_start_a_copy_until_it_is_answered(proxy: Proxy,
                                                                              proxy_loop: ProxyLoop) -> None:
    # The COPY fails on its data before the server reads the Sync sent with that data, and whether a server
    # ignores a Sync (in copy-in mode) or answers it (after an error) shows only from its answers. So the
    # proxy holds what follows such an Execute until the answer: here the Sync is never relayed mid-COPY,
    # the server skips to the next Sync, and the batch behind it (which would switch the string syntax)
    # does not run and cannot get a ReadyForQuery ahead of it.
    copy = (_run("COPY kv FROM STDIN WHERE pg_sleep(0.3) IS NOT NULL")
            + w.message(w.COPY_DATA, b"9501\tx\nbad\n") + w.SYNC_MESSAGE + w.message(w.COPY_DONE))
    replies = proxy_loop.call(_raw_session(proxy.port, copy + _run(SET_OFF) + w.SYNC_MESSAGE
                                           + w.query("SHOW standard_conforming_strings"), until=2))
    assert [t for t, _ in replies] == ["1", "2", "G", "E", "Z", "T", "D", "C", "Z"]
    assert _data_rows(replies)[-1].endswith(b"on")
    assert not any(b"9501" in body for _, body in replies)


def test_one_query_with_two_copies_in(proxy: Proxy, proxy_loop: ProxyLoop) -> None:
    data = w.message(w.COPY_DATA, b"9401\tx\n") + w.message(w.COPY_DONE)
    replies = proxy_loop.call(_raw_session(proxy.port, w.query("COPY kv FROM STDIN; COPY kv FROM STDIN") + data
                                           + data.replace(b"9401", b"9402"), until=1), timeout=10)
    assert [t for t, _ in replies] == ["G", "C", "G", "C", "Z"]


def test_a_non_ascii_name_after_code_ran_in_its_batch_is_refused(proxy: Proxy, proxy_loop: ProxyLoop) -> None:
    # After set_config('client_encoding', 'SJIS') in a function, the server would read these bytes as
    # another name (UTF-8 "\u00a1" is SJIS "\uff82\uff61"), and run a statement we did not describe.
    prepare = w.parse_message("\u00a1", "SELECT 1") + w.SYNC_MESSAGE
    replies = proxy_loop.call(_raw_session(proxy.port, prepare + _run("SELECT 2") + w.bind_message("", "\u00a1")
                                           + w.execute_message() + w.SYNC_MESSAGE, until=2))
    assert [t for t, _ in replies] == ["1", "Z", "1", "2", "D", "C", "E", "Z"]
    assert "non-ASCII" in dict(w.parse_fields(replies[6][1]))["M"]


def test_a_statement_redefined_in_sql_is_masked_by_what_it_now_returns(proxy: Proxy, proxy_loop: ProxyLoop) -> None:
    # The proxy remembered s as a harmless text column; SQL replaced it behind the protocol's back.
    messages = (w.parse_message("s", "SELECT 'x'::text AS n") + w.describe_message("S", "s") + w.SYNC_MESSAGE
                + w.query("DEALLOCATE s") + w.query("PREPARE s AS SELECT email FROM customers WHERE id = 1")
                + w.bind_message("", "s") + w.execute_message() + w.SYNC_MESSAGE
                + w.bind_message("p", "s") + w.describe_message("P", "p") + w.execute_message("p") + w.SYNC_MESSAGE)
    replies = proxy_loop.call(_raw_session(proxy.port, messages, until=5))
    rows = _data_rows(replies)
    assert len(rows) == 2 and not any(b"ada@example.com" in row for row in rows)


def test_a_name_redefined_in_sql_cannot_carry_an_approval_further(proxy_loop: ProxyLoop, target: Upstream,
                                                                   tmp_path: Path) -> None:
    # An approval runs one DELETE. Here SQL gives the name x a new body under the approval, while the proxy
    # still knew x as a SELECT: every Bind of x would then have run the DELETE again, audited as a SELECT.
    (tmp_path / "bastion.yaml").write_text(HOLD_FOR_REVIEW)  # holds UPDATE and DELETE for review
    config = load_config(tmp_path / "bastion.yaml")
    alice = Identity("alice", frozenset({"dev"}))
    prepare = "PREPARE x AS DELETE FROM kv WHERE k = 9601"

    async def approved() -> Callable[[], PolicyInspector]:  # on the proxy's thread, where SQLite is used
        store = AuditStore(tmp_path / "audit.db")
        approvals = Approvals(store)

        def inspector() -> PolicyInspector:
            return PolicyInspector(config=config, store=store, identity=alice, target="pg-prod",
                                   policy=config.policies[0], session="s", source="127.0.0.1", approvals=approvals)
        held = inspector().check(prepare)
        assert held.request is not None
        approvals.approve(held.request, Identity("bob", frozenset({"dba"})), time.time())
        return inspector

    port = proxy_loop.serve(target, proxy_loop.call(approved()))
    messages = (w.parse_message("x", "SELECT 1") + w.SYNC_MESSAGE + w.query("DEALLOCATE x") + w.query(prepare)
                + w.bind_message("", "x") + w.execute_message() + w.SYNC_MESSAGE)
    replies = proxy_loop.call(_raw_session(port, messages, until=4))
    assert [t for t, _ in replies] == ["1", "Z", "C", "Z", "C", "Z", "E", "Z"]
    assert dict(w.parse_fields(replies[6][1]))["C"] == "26000"  # x is the server's now, not ours to bind


def test_names_longer_than_the_server_compares_are_refused(proxy: Proxy, proxy_loop: ProxyLoop) -> None:
    # To PostgreSQL, "n"*63 + "x" and "n"*63 + "y" are one name: its tables compare the first 63 bytes.
    replies = proxy_loop.call(_raw_session(proxy.port, w.parse_message("n" * 63 + "y", "SELECT 1") + w.SYNC_MESSAGE
                                           + w.parse_message("n" * 63, "SELECT 2") + w.SYNC_MESSAGE, until=2))
    assert [t for t, _ in replies] == ["E", "Z", "1", "Z"]
    assert "longer than 63 bytes" in dict(w.parse_fields(replies[0][1]))["M"]


def test_a_statement_that_merely_mentions_copy_and_stdin_is_answered(proxy: Proxy, proxy_loop: ProxyLoop) -> None:
    # What follows an Execute that may start a COPY waits for its answer; the proxy asks for it with a Flush,
    # or the server would keep it until the Sync that waits for it. A row limit leaves the portal suspended.
    for execute in (w.execute_message(), w.execute_message("", 1)):
        replies = proxy_loop.call(_raw_session(
            proxy.port, _run("SELECT 'copy from stdin' AS c").replace(w.execute_message(), execute)
            + w.SYNC_MESSAGE, until=1), timeout=10)
        assert [t for t, _ in replies][-2:] in (["C", "Z"], ["s", "Z"])


def test_an_execute_that_may_start_a_copy_still_counts_as_code_run(proxy: Proxy, proxy_loop: ProxyLoop) -> None:
    # Its text mentions copy and stdin, but it calls set_config(): the Parse behind it in the batch must read
    # alike either way, and a refusal must roll it back.
    replies = proxy_loop.call(_raw_session(proxy.port, _run(f"{SET_OFF} -- copy stdin") + _run("SELECT 'a\\b'")
                                           + w.SYNC_MESSAGE + w.query("SHOW standard_conforming_strings"), until=2))
    assert [t for t, _ in replies] == ["1", "2", "D", "C", "E", "Z", "T", "D", "C", "Z"]
    assert "same batch" in dict(w.parse_fields(replies[4][1]))["M"]
    assert _data_rows(replies)[-1].endswith(b"on")


def test_a_portal_gone_with_its_transaction_lends_its_sql_to_nothing(proxy: Proxy, proxy_loop: ProxyLoop) -> None:
    # The Bind's portal p died at the Sync; a cursor DECLAREd as p later is audited as a cursor, not as p's SQL.
    messages = (w.parse_message("", "SELECT 1 AS one") + w.bind_message("p", "") + w.execute_message("p")
                + w.SYNC_MESSAGE + w.query("BEGIN") + w.query("DECLARE p CURSOR FOR SELECT 2 AS two")
                + w.execute_message("p") + w.SYNC_MESSAGE + w.query("COMMIT"))
    proxy_loop.call(_raw_session(proxy.port, messages, until=5))
    assert [e.sql for e in proxy.events[-3:]] == ["DECLARE p CURSOR FOR SELECT 2 AS two", "<cursor p>", "COMMIT"]


@pytest.mark.parametrize("drop", ["CLOSE p", "CLOSE ALL", "COMMIT; BEGIN"])
def test_a_portal_closed_inside_a_transaction_lends_its_sql_to_nothing(proxy: Proxy, proxy_loop: ProxyLoop,
                                                                       drop: str) -> None:
    messages = (w.query("BEGIN") + w.parse_message("", "SELECT 1 AS one") + w.bind_message("p", "")
                + w.execute_message("p") + w.SYNC_MESSAGE + w.query(drop)
                + w.query("DECLARE p CURSOR FOR SELECT 2 AS two") + w.execute_message("p") + w.SYNC_MESSAGE
                + w.query("COMMIT"))
    proxy_loop.call(_raw_session(proxy.port, messages, until=6))
    assert [e.sql for e in proxy.events[-3:]] == ["DECLARE p CURSOR FOR SELECT 2 AS two", "<cursor p>", "COMMIT"]


def test_a_may_be_copy_after_an_error_in_the_batch_does_not_wait(proxy: Proxy) -> None:
    # The server skips the COPY's Execute after the error: no answer is coming, so nothing may wait for one.
    with socket.socket() as sock:
        _log_in(sock, proxy.port)
        sock.settimeout(10)
        sock.sendall(_run("SELECT 1/0") + w.message(w.FLUSH))
        buf = b""
        while b"22012" not in buf:
            buf += sock.recv(65536)
        sock.sendall(_run("COPY kv FROM STDIN") + w.SYNC_MESSAGE)
        while not buf.endswith(w.ready_for_query(b"I")):
            buf += sock.recv(65536)
    assert [chr(t) for t, _, _ in w.frames(buf, 0, 1 << 20)[0]] == ["1", "E", "Z"]


def test_names_that_are_not_utf8_end_the_session(proxy: Proxy) -> None:
    # Decoded leniently, b"\x88\x9f" and b"\x88\xa0" were one name here and two to a server reading SJIS.
    with socket.socket() as sock:
        _log_in(sock, proxy.port)
        sock.sendall(w.message(w.PARSE, b"\x88\x9f\0SELECT 1\0\0\0") + w.SYNC_MESSAGE)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert b"not valid UTF-8" in answer and w.ready_for_query(b"I") not in answer


def test_extended_copy_in_as_libpq_sends_it(proxy: Proxy, proxy_loop: ProxyLoop) -> None:
    # libpq sends Sync right after the Execute; a server in copy-in mode ignores it, so the batch ends only at
    # the Sync after CopyDone. And that batch ran code: a Parse after the COPY must still read alike.
    copy = _run("COPY kv FROM STDIN") + w.SYNC_MESSAGE + w.message(w.COPY_DATA, b"9301\tx\n") + w.message(w.COPY_DONE)
    replies = proxy_loop.call(_raw_session(proxy.port, copy + w.SYNC_MESSAGE + w.query("SELECT 42"), until=2))
    assert [t for t, _ in replies] == ["1", "2", "G", "C", "Z", "T", "D", "C", "Z"]
    replies = proxy_loop.call(_raw_session(proxy.port, _run(SET_OFF) + copy.replace(b"9301", b"9302")
                                           + _run("SELECT 'a\\b'") + w.SYNC_MESSAGE
                                           + w.query("SELECT count(*) FROM kv WHERE k = 9302"), until=2))
    assert [t for t, _ in replies] == ["1", "2", "D", "C", "1", "2", "G", "C", "E", "Z", "T", "D", "C", "Z"]
    assert "same batch" in dict(w.parse_fields(replies[8][1]))["M"]
    assert _data_rows(replies)[-1].endswith(b"0")  # the refusal rolled the batch back, COPY included


def test_a_statement_after_code_ran_in_its_batch_that_reads_alike_passes(proxy: Proxy,
                                                                        proxy_loop: ProxyLoop) -> None:
    replies = proxy_loop.call(_raw_session(
        proxy.port, _run("SELECT 1") + _run("SELECT E'a\\\\b', $$c\\$$ -- \\ ") + w.SYNC_MESSAGE))
    rows = _data_rows(replies)
    assert [t for t, _ in replies] == ["1", "2", "D", "C", "1", "2", "D", "C", "Z"]
    assert pg_rows.split_datarow(rows[1], 0, len(rows[1])) == [b"a\\b", b"c\\"]


def test_role_defaults_cannot_change_how_the_target_reads_sql(proxy_loop: ProxyLoop, pg_server: PgServer,
                                                              target: Upstream) -> None:
    # ALTER ROLE … SET passes the guardrails (it applies to later logins). The proxy pins both settings in
    # every login's startup packet, which outranks role defaults: sessions, and the catalog lookups that
    # masking by table needs, still read SQL as UTF-8 with standard strings.
    pg_server.create_role("oldstrings", APP_PASSWORD)
    pg_server.psql("GRANT SELECT ON ALL TABLES IN SCHEMA public TO oldstrings", db="appdb")
    pg_server.psql("ALTER ROLE oldstrings SET standard_conforming_strings = off")
    pg_server.psql("ALTER ROLE oldstrings SET client_encoding = 'LATIN1'")
    old = start_proxy(proxy_loop, Upstream(target.host, target.port, "oldstrings", APP_PASSWORD, "appdb",
                                           name="pg-old"))
    with old.connect() as c:
        assert c.execute("SELECT current_setting('standard_conforming_strings'), "
                         "current_setting('client_encoding')").fetchone() == ("on", "UTF8")
        assert c.execute("SELECT name, ssn FROM customers WHERE id = 1").fetchone() == ("Ada", "***")
        c.execute("RESET ALL")
        assert c.execute("SHOW standard_conforming_strings").fetchone() == ("on",)
    assert any(Column("public.customers", "ssn", 25) in seen for seen in old.inspectors[-1].columns_seen)  # by table


def test_a_table_whose_name_cannot_be_looked_up_is_masked_as_any_table(proxy_loop: ProxyLoop, pg_server: PgServer,
                                                                        target: Upstream) -> None:
    # The lookup needs a connection of its own; this role may have only one, the session's. Its columns
    # then come from an unresolved table, which every table-qualified rule for the column must cover.
    pg_server.create_role("oneconn", APP_PASSWORD)
    pg_server.psql("GRANT SELECT ON ALL TABLES IN SCHEMA public TO oneconn", db="appdb")
    pg_server.psql("ALTER ROLE oneconn CONNECTION LIMIT 1")
    single = start_proxy(proxy_loop, Upstream(target.host, target.port, "oneconn", APP_PASSWORD, "appdb",
                                              name="pg-one"))
    with single.connect() as c:
        c.execute("SELECT name, ssn FROM customers WHERE id = 1").fetchone()
    [columns] = single.inspectors[-1].columns_seen
    assert [(c.table, c.name, c.source) for c in columns] == [(UNRESOLVED_TABLE, "name", UNRESOLVED_COLUMN),
                                                              (UNRESOLVED_TABLE, "ssn", UNRESOLVED_COLUMN)]
    # Which column of which table each one is cannot be known: every rule applies, the strictest wins.
    plan = Masker([MaskingRule("redact", columns=("customers.ssn",)), MaskingRule("partial", columns=("*.name",))],
                  hash_key=b"k" * 32).plan([MaskColumn(c.table, c.name, c.source) for c in columns])
    assert (plan.strategy(0), plan.strategy(1)) == ("redact", "redact")


def test_a_renamed_column_reaches_the_masker_with_its_own_name(proxy: Proxy, conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT ssn AS x, email AS email, 1 AS ssn FROM customers WHERE id = 1").fetchone()
    assert proxy.inspectors[-1].columns_seen[-1] == (Column("public.customers", "x", 25, "ssn"),
                                                     Column("public.customers", "email", 25, None),
                                                     Column(None, "ssn", 23, None))


def test_bytes_before_the_tls_handshake_are_refused() -> None:
    # Like libpq's CVE-2021-23222: something in the way answers the SSLRequest with 'S' and, in the same
    # breath, a message of its own, which would otherwise be read as if TLS had protected it.
    async def main() -> str:
        async def hostile(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readexactly(8)
            writer.write(b"S" + w.error_response("28000", "log in again at https://evil.example/"))
            await writer.drain()
            await asyncio.sleep(5)

        server = await asyncio.start_server(hostile, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(ProxyError) as err:
                await open_link(Upstream("127.0.0.1", port, "app", "pw", "db", tls="require", name="pg-tls"))
            return str(err.value)
        finally:
            server.close()

    assert "sent data before the TLS handshake" in asyncio.run(main())
