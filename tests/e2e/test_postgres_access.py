"""PostgreSQL through the bastion: one-shot `sql`, the console, and native clients over `ssh -L`.

A real PostgreSQL (scram-sha-256) holds PII; the bastion logs in with a
password only it knows. Every path goes through the same proxy: guardrails,
masking, audit and recording apply to each.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest
from oidc_issuer import OidcIssuer
from peers import TARGETS, Bastion, Client, new_bastion, strip_ansi

pytest_plugins = ["pg_fixtures"]

SCHEMA = """
CREATE TABLE customers (id int PRIMARY KEY, name text, email text UNIQUE, card text);
CREATE TABLE orders (id int PRIMARY KEY, customer int REFERENCES customers, total numeric);
INSERT INTO customers VALUES
  (1, 'Ada', 'ada@example.com', '4111 1111 1111 1111'),
  (2, 'Bob', 'bob@example.org', '5500-0000-0000-0004');
INSERT INTO orders VALUES (10, 1, 12.50), (11, 1, 99.00), (12, 2, 5.25);
GRANT ALL ON customers, orders TO bastion_app;
"""

POLICY = """
  - name: shop
    subjects: {groups: [dev]}
    targets: {names: [pg-shop, pg-down]}
    access: allow
    port_forwarding: true
    guardrails:
      - {effect: deny, statements: [drop, truncate]}
      - {effect: deny, statements: [update, delete], without_where: true}
    masking:
      - {strategy: partial, columns: ["*.email"]}
      - {strategy: redact, detect: [credit_card]}
"""


@pytest.fixture(scope="module")
def shop(pg_server, tmp_path_factory: pytest.TempPathFactory, oidc_issuer: OidcIssuer) -> Iterator[Bastion]:  # type: ignore[no-untyped-def]
    password = "S3cret-" + os.urandom(6).hex()
    pg_server.psql("DROP DATABASE IF EXISTS shop")
    pg_server.psql("CREATE DATABASE shop")
    pg_server.psql(f"DROP ROLE IF EXISTS bastion_app; CREATE ROLE bastion_app LOGIN PASSWORD '{password}'")
    pg_server.psql(SCHEMA, db="shop")
    directory = tmp_path_factory.mktemp("shop")
    secret = directory / "pg-shop.password"
    secret.write_text(password)
    secret.chmod(0o600)
    targets = TARGETS.replace("policies:\n", f"""  pg-shop:
    kind: postgres
    address: "127.0.0.1:{pg_server.port}"
    database: shop
    user: bastion_app
    password: {{file: {secret}}}
  pg-down: {{kind: postgres, address: "127.0.0.1:1", database: shop, user: bastion_app, password: {{file: {secret}}}}}
policies:
""", 1) + POLICY
    b = new_bastion(directory / "b", oidc_issuer.issuer, body=targets)
    b.secret = password  # type: ignore[attr-defined]
    yield b
    b.stop()


@pytest.fixture
def alice(shop: Bastion, tmp_path: Path, oidc_issuer: OidcIssuer) -> Client:
    client = Client(tmp_path / "home", shop)
    client.certify(oidc_issuer, "alice", ["dev"])
    return client


def test_sql_json_masks_email_and_card(alice: Client) -> None:
    result = alice.ssh("alice", "sql", "pg-shop", "--format", "json",
                       "select name, email, card from customers order by id")
    assert result.returncode == 0, result.stderr
    [statement] = json.loads(result.stdout)
    rows = statement["rows"]
    assert [r["name"] for r in rows] == ["Ada", "Bob"]
    assert rows[0]["email"] == "****@example.com" and rows[1]["email"] == "****@example.org"
    assert "4111" not in result.stdout and "[REDACTED]" in rows[0]["card"]
    assert set(statement["masked_columns"]) == {"email", "card"}  # name was checked, and left alone


def test_a_renamed_column_is_masked_as_the_column_it_is(alice: Client) -> None:
    # The rule says *.email; the result calls the column "contact" (and a view would too).
    result = alice.ssh("alice", "sql", "pg-shop", "--format", "json",
                       "select email as contact, name as email from customers order by id")
    assert result.returncode == 0, result.stderr
    [statement] = json.loads(result.stdout)
    assert [r["contact"] for r in statement["rows"]] == ["****@example.com", "****@example.org"]
    assert "ada@" not in result.stdout and "bob@" not in result.stdout
    # A column merely named like a rule's is masked too: more, never less.
    assert [r["email"] for r in statement["rows"]] == ["[REDACTED]", "[REDACTED]"]  # partial of a short name


def test_copy_out_is_refused_where_masking_goes_by_column(alice: Client) -> None:
    # COPY lines have no columns: *.email could not be honoured there.
    for sql in ("COPY customers TO STDOUT", "COPY (SELECT email FROM customers) TO STDOUT WITH (FORMAT csv)"):
        result = alice.ssh("alice", "sql", "pg-shop", sql)
        assert result.returncode == 3, result.stdout + result.stderr
        assert "SELECT the rows instead" in result.stdout + result.stderr
        assert "ada@" not in result.stdout + result.stderr


def test_denied_statement_exits_3_and_is_audited(alice: Client, shop: Bastion) -> None:
    result = alice.ssh("alice", "sql", "pg-shop", "DELETE FROM customers")
    assert result.returncode == 3
    assert "shop.guardrails[1]" in result.stdout + result.stderr
    event = shop.wait_event("sql.statement", lambda e: e.detail.get("sql") == "DELETE FROM customers")
    assert (event.user, event.target, event.outcome, event.rule) == ("alice", "pg-shop", "deny", "shop.guardrails[1]")
    assert alice.ssh("alice", "sql", "pg-shop", "--format", "csv", "select count(*) from customers").stdout \
        .splitlines() == ["count", "2"]  # nothing was deleted


def test_sql_from_stdin_in_csv(alice: Client) -> None:
    result = subprocess.run([*alice.ssh_args("alice"), "sql", "pg-shop", "--format", "csv"], env=alice.env(),
                            input="select id, total from orders order by id;\n", capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["id,total", "10,12.50", "11,99.00", "12,5.25"]


@pytest.mark.parametrize(("sql", "code"), [
    ("WITH x AS (DELETE FROM orders RETURNING *) SELECT * FROM x", 3),
    ("DROP TABLE orders", 3),
    ("SELEC 1", 3),
    ("select * from no_such_table", 1),
])
def test_exit_codes(alice: Client, sql: str, code: int) -> None:
    assert alice.ssh("alice", "sql", "pg-shop", sql).returncode == code


def test_target_down_gives_a_clear_error(alice: Client) -> None:
    result = alice.ssh("alice", "sql", "pg-down", "select 1")
    assert result.returncode == 1
    assert "cannot reach target pg-down" in result.stderr
    assert "Traceback" not in result.stderr


def test_console_through_a_pty(alice: Client) -> None:
    args = alice.ssh_args("alice", "-tt", "-o", "SetEnv=PROMPT_TOOLKIT_NO_CPR=1")
    term = pexpect.spawn(args[0], args[1:], env=alice.env(), dimensions=(30, 120), encoding="utf-8", timeout=20)
    seen = ""

    def wait_for(text: str) -> None:
        nonlocal seen
        deadline = time.monotonic() + 20
        while text not in strip_ansi(seen):
            assert time.monotonic() < deadline, strip_ansi(seen)[-600:]
            try:
                seen += term.read_nonblocking(4096, timeout=0.2)
            except pexpect.TIMEOUT:
                pass

    wait_for("alice@localhost>")
    term.send("connect pg-shop\r")
    wait_for("alice@pg-shop>")
    term.send("select name, email\r")
    wait_for("->")  # continues until the ;
    term.send("from customers order by id;\r")
    wait_for("****@example.com")
    assert "ada@example.com" not in seen
    term.send("drop table orders;\r")
    wait_for("denied by policy")
    term.send("\\q\r")
    wait_for("back in the bastion shell")
    term.send("exit\r")
    term.expect(pexpect.EOF)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def forwarded_psycopg(port: int, **kwargs: Any) -> Any:
    """A psycopg connection through an ``ssh -L`` that may still be starting."""
    import psycopg

    deadline = time.monotonic() + 15
    while True:
        try:
            return psycopg.connect(f"host=127.0.0.1 port={port} user=x dbname=y sslmode=disable",
                                   connect_timeout=5, **kwargs)
        except psycopg.OperationalError:
            assert time.monotonic() < deadline
            time.sleep(0.2)


def test_native_psql_over_ssh_forward(alice: Client, shop: Bastion, pg_server) -> None:  # type: ignore[no-untyped-def]
    port = _free_port()
    forward = subprocess.Popen([*alice.ssh_args("alice", "-N", "-L", f"{port}:pg-shop:5432")],
                               env=alice.env(), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        psql = str(pg_server.bindir / "psql") if (pg_server.bindir / "psql").exists() else "psql"
        env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
        dsn = f"host=127.0.0.1 port={port} user=anyone dbname=anything sslmode=disable"
        deadline = time.monotonic() + 15
        while True:
            ok = subprocess.run([psql, dsn, "-X", "-A", "-t", "-c", "select email from customers order by id"],
                                capture_output=True, text=True, env=env, timeout=30)
            if ok.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.split() == ["****@example.com", "****@example.org"]
        denied = subprocess.run([psql, dsn, "-X", "-c", "truncate orders"], capture_output=True, text=True,
                                env=env, timeout=30)
        assert denied.returncode != 0 and "denied by shop.guardrails[0]" in denied.stderr
    finally:
        forward.terminate()
        forward.wait(10)
    event = shop.wait_event("forward.opened", lambda e: e.target == "pg-shop")
    cast = next((shop.state / "recordings").rglob(f"{event.session}.cast"), None)
    deadline = time.monotonic() + 10
    while cast is None or "truncate orders" not in cast.read_text():
        assert time.monotonic() < deadline, "the forwarded session's transcript was not recorded"
        time.sleep(0.1)
        cast = next((shop.state / "recordings").rglob(f"{event.session}.cast"), None)


def test_the_target_password_never_leaves_the_bastion(alice: Client, shop: Bastion) -> None:
    alice.ssh("alice", "sql", "pg-shop", "select 1")
    secret = shop.secret  # type: ignore[attr-defined]
    places = [shop.state / "audit.db", shop.log, *(shop.state / "recordings").rglob("*")]
    for path in places:
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert secret not in ps
    assert shop.proc is not None
    environ = Path(f"/proc/{shop.proc.pid}/environ").read_bytes()
    assert secret.encode() not in environ


def test_bound_values_of_masked_columns_stay_out_of_the_audit(alice: Client, shop: Bastion, pg_server) -> None:  # type: ignore[no-untyped-def]

    port = _free_port()
    forward = subprocess.Popen([*alice.ssh_args("alice", "-N", "-L", f"{port}:pg-shop:5432")],
                               env=alice.env(), stdin=subprocess.DEVNULL)
    try:
        conn = forwarded_psycopg(port)
        with conn:
            conn.execute("INSERT INTO customers VALUES (%s, %s, %s, %s)",
                         (7, "Eve", "eve.secret@example.com", "none"))
            conn.execute("DELETE FROM customers WHERE id = %s", (7,))
    finally:
        forward.terminate()
        forward.wait(10)
    events = shop.wait_event("sql.statement", lambda e: "INSERT INTO customers" in e.detail.get("sql", ""))
    assert "eve.secret" not in json.dumps(events.detail)
    assert events.detail["params"] == ["[REDACTED]"] * 4
    for name in ("audit.db", "audit.db-wal"):
        path = shop.state / name
        assert not path.exists() or b"eve.secret" not in path.read_bytes(), name


def test_psycopg_binary_mode_and_prepared_statements_over_the_ssh_forward(alice: Client) -> None:
    import psycopg

    port = _free_port()
    forward = subprocess.Popen([*alice.ssh_args("alice", "-N", "-L", f"{port}:pg-shop:5432")],
                               env=alice.env(), stdin=subprocess.DEVNULL)
    try:
        conn = forwarded_psycopg(port, autocommit=True)
        with conn, conn.cursor(binary=True) as cur:
            for customer in (1, 2, 1):  # the third run reuses the server-side prepared statement
                cur.execute("SELECT id, email, card FROM customers WHERE id = %s", (customer,), prepare=True)
                row = cur.fetchone()
                assert row is not None and row[0] == customer
                assert row[1].startswith("****@") and "[REDACTED]" in row[2]
            assert cur.pgresult is not None and cur.pgresult.fformat(0) == 1  # binary results, really
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="shop.guardrails"):
                cur.execute("DELETE FROM customers", prepare=True)
            cur.execute("SELECT count(*) FROM orders WHERE customer = %s", (1,), prepare=True)
            assert cur.fetchone() == (2,)  # the session survived the refusal
    finally:
        forward.terminate()
        forward.wait(10)
