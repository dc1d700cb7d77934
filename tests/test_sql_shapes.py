"""ShapeCache: one classification per statement shape must give exactly what classify() gives.

The cache keys a statement by its tokens with literal values blanked out. These
tests warm it with one set of literals and check that every other set, including
the hostile ones (EXPLAIN options, unicode escapes), classifies as a fresh parse.
"""

from __future__ import annotations

import contextlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast import parser
from test_sql_guardrails import ALLOWED, DENIED, REVIEWED

from policies.sql import ShapeCache, SqlError, classify

CORPUS = [sql for sql, _ in DENIED] + [sql for sql, _ in REVIEWED] + ALLOWED


def other_literals(sql: str) -> str:
    """The same SQL with different literal values: digits changed, quoted strings' contents replaced."""
    sql = re.sub(r"\d+", lambda m: str(int(m.group()) + 7), sql)
    return re.sub(r"'([^']*)'", lambda m: "'" + ("z" * (len(m.group(1)) + 1)) + "'", sql)


def fresh(sql: str) -> object:
    try:
        return classify(sql)
    except SqlError as e:
        return type(e)


def cached(cache: ShapeCache, sql: str) -> object:
    try:
        return cache.classify(sql)
    except SqlError as e:
        return type(e)


@pytest.mark.parametrize("sql", CORPUS, ids=[s[:60] for s in CORPUS])
def test_a_warm_cache_classifies_like_a_fresh_parse(sql: str) -> None:
    cache = ShapeCache()
    if fresh(other_literals(sql)) is not SqlError:
        cache.classify(other_literals(sql))
    assert cached(cache, sql) == fresh(sql)
    assert cached(cache, sql) == fresh(sql)  # the second time from the cache, when it was cacheable


def test_repeated_shapes_hit_and_keep_their_own_text() -> None:
    cache = ShapeCache()
    for aid in range(1, 6):
        [statement] = cache.classify(f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};")
        assert statement.text == f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid}"
    assert (cache.hits, cache.misses) == (4, 1)


@pytest.mark.parametrize(("first", "second"), [
    # EXPLAIN reads its options' values: ANALYZE 0 plans, ANALYZE 1 runs the DELETE.
    ("EXPLAIN (ANALYZE 0) DELETE FROM orders", "EXPLAIN (ANALYZE 1) DELETE FROM orders"),
    ("EXPLAIN (ANALYZE 'off') DELETE FROM orders", "EXPLAIN (ANALYZE 'on') DELETE FROM orders"),
    # UESCAPE's literal decides which relation a U&"…" identifier names.
    ('SELECT * FROM U&"#0070g_authid" UESCAPE \'!\'', 'SELECT * FROM U&"#0070g_authid" UESCAPE \'#\''),
    ('SELECT * FROM U&"!0070g_authid" UESCAPE \'#\'', 'SELECT * FROM U&"!0070g_authid" UESCAPE \'!\''),
])
def test_literals_that_change_the_meaning_are_never_blanked_out(first: str, second: str) -> None:
    cache = ShapeCache()
    cache.classify(first)
    assert cache.classify(second) == classify(second)
    assert cache.classify(second) != classify(first) or first == second


def test_only_single_literal_blind_statements_are_kept() -> None:
    cache = ShapeCache()
    for sql in ("SELECT 1; DELETE FROM orders", "SELECT pg_read_file('x')", "PREPARE p AS SELECT 1",
                "EXECUTE p(1)", "SET work_mem = '64MB'", "COPY orders TO STDOUT"):
        cache.classify(sql)
        cache.classify(sql)
    assert cache.hits == 0


def test_the_cache_is_bounded() -> None:
    cache = ShapeCache(size=8)
    for i in range(50):
        cache.classify(f"SELECT c{i} FROM t WHERE id = 1")
    assert len(cache._shapes) <= 8
    assert cache.classify("SELECT c49 FROM t WHERE id = 99")[0].tables == frozenset({"t"})


def test_garbage_fails_the_same_way() -> None:
    cache = ShapeCache()
    for sql in ("SELEC 1", "SELECT (", "SELECT 1\x00", "'", "$$", ""):
        with pytest.raises(SqlError) if fresh(sql) is SqlError else contextlib.nullcontext():
            cache.classify(sql)


TEMPLATES = [
    "SELECT * FROM customers WHERE id = {i} AND email = {s}",
    "UPDATE orders SET total = {i} WHERE id = {i}",
    "DELETE FROM customers WHERE id = {i}",
    "DELETE FROM customers WHERE {i} = {i}",
    "INSERT INTO orders (id, note) VALUES ({i}, {s}) ON CONFLICT (id) DO UPDATE SET note = {s}",
    "WITH d AS (DELETE FROM orders WHERE id = {i} RETURNING *) SELECT * FROM d",
    "SELECT {s}::regclass, nextval({s}) FROM t LIMIT {i}",
    "EXPLAIN (ANALYZE {i}) DELETE FROM orders WHERE id = {i}",
    "EXPLAIN (ANALYZE {s}) SELECT {i}",
    "SELECT * FROM t WHERE x = E{s} OR y = {i}.5",
    "LOCK TABLE orders IN EXCLUSIVE MODE",
    "SELECT * FROM orders FOR UPDATE LIMIT {i}",
]
literal_int = st.integers(min_value=0, max_value=3).map(str)
literal_str = st.sampled_from(["'on'", "'off'", "'true'", "'0'", "'x'", "'it''s'", "$$a$$", "'customers'"])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(TEMPLATES), st.lists(st.tuples(literal_int, literal_str), min_size=2, max_size=4))
def test_any_order_of_literal_variants_classifies_like_a_fresh_parse(template: str,
                                                                     variants: list[tuple[str, str]]) -> None:
    cache = ShapeCache()
    for i, s in variants:
        sql = template.format(i=i, s=s)
        assert cached(cache, sql) == fresh(sql)


# ---- multi-byte text: the scanner counts characters, not bytes --------------------------------------

OPERAND_LITERALS = {"SCONST": "'{}'", "ICONST": "1", "FCONST": "1.5", "BCONST": "B'1'", "XCONST": "X'1'"}


def mirror(sql: str) -> tuple[str, str]:
    """(A, B): ``sql`` as B, and a SELECT A whose tokens have B's lengths, both after a comment of '€'.

    When token positions were taken for byte offsets, every token of such a pair
    was read from inside the comment, and A and B shared one key: a cache warmed
    with the harmless A handed B A's classification.
    """
    tokens = [t for t in parser.scan(sql) if t.name not in ("C_COMMENT", "SQL_COMMENT")]
    words = [(t.name, sql[t.start:t.end + 1]) for t in tokens]
    if len(words[0][1]) != len("SELECT"):
        return mirror("SELECT 1; " + sql)
    a = ["SELECT"]
    for i, (name, text) in enumerate(words[1:], 1):
        if name == "SCONST":
            a.append("'" + "x" * max(len(text) - 2, 0) + "'")
        elif name in OPERAND_LITERALS:
            a.append(OPERAND_LITERALS[name])
        else:
            a.append(("z" if i == len(words) - 1 else "@") * len(text))  # an operand last, operators before
    b = " ".join(text for _, text in words)
    pad = "/*" + "€" * (len(b) + 20) + "*/ "
    return pad + " ".join(a), pad + b


def _scannable(sql: str) -> bool:
    """True when the scanner reads all of ``sql`` into tokens (it stops at a NUL, which classify() refuses)."""
    if "\x00" in sql:
        return False
    try:
        return any(t.name not in ("C_COMMENT", "SQL_COMMENT") for t in parser.scan(sql))
    except Exception:  # the scanner refuses it: nothing to mirror (a fresh parse denies it)
        return False


MIRRORED = [sql for sql in CORPUS if _scannable(sql)]


@pytest.mark.parametrize("sql", MIRRORED, ids=[s[:60] for s in MIRRORED])
def test_a_cache_warmed_with_a_look_alike_still_classifies_like_a_fresh_parse(sql: str) -> None:
    a, b = mirror(sql)
    cache = ShapeCache()
    cached(cache, a)
    assert cached(cache, b) == fresh(b)


@pytest.mark.parametrize("sql", CORPUS, ids=[s[:60] for s in CORPUS])
def test_non_ascii_text_around_the_literals_classifies_like_a_fresh_parse(sql: str) -> None:
    cache = ShapeCache()
    noted = "/* über straße ünïcödé */ " + sql
    cached(cache, other_literals(noted).replace("'z", "'é"))
    assert cached(cache, noted) == fresh(noted)


def test_statement_texts_are_cut_by_characters() -> None:
    assert [s.text for s in classify("SELECT 'ééé'; DELETE FROM t")] == ["SELECT 'ééé'", "DELETE FROM t"]
    [statement] = ShapeCache().classify("SELECT 'Zoë' AS naïve;")
    assert statement.text == "SELECT 'Zoë' AS naïve"
