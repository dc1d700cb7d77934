"""reads_alike_under_any_string_syntax, checked against what a real PostgreSQL reads.

The proxy lets a statement be parsed after a function may have changed
``standard_conforming_strings`` (later in the same extended-protocol batch)
only when this predicate vouches that the text reads alike either way. So the
property that matters is soundness: whatever it vouches for, the server must
read the same with the setting on and off, or refuse it (``U&'…'`` with the
setting off: an error runs nothing).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.conninfo import make_conninfo

from policies.sql import reads_alike_under_any_string_syntax

if TYPE_CHECKING:
    from bastion.devdb import PgServer

pytest_plugins = ["pg_fixtures"]
PASSWORD = "strings-Pw-5e1a"

VOUCHED = [
    "SELECT 1",
    "SELECT 'plain', E'a\\\\b', $$c\\$$, $t$\\'$t$",
    "SELECT 1 -- a \\ in a comment\n",
    "SELECT 1 /* \\' */",
    'SELECT 1 AS "quoted \\ identifier"',
    "SELECT B'101', X'ff'",
]
REFUSED = [
    "SELECT 'a\\b'",
    "SELECT N'\\'",
    "SELECT '\\'\n' , 1 -- '",   # with the setting off, the ', 1' is code
    "SELECT 'café'",              # any non-ASCII byte: client encodings differ past ASCII
    "SELECT 1 -- é",
    "SELECT 'unterminated\\",    # what does not scan is never vouched for
]


@pytest.mark.parametrize("sql", VOUCHED)
def test_texts_that_read_alike_are_vouched_for(sql: str) -> None:
    assert reads_alike_under_any_string_syntax(sql)


@pytest.mark.parametrize("sql", REFUSED)
def test_texts_whose_reading_depends_on_the_settings_are_not(sql: str) -> None:
    assert not reads_alike_under_any_string_syntax(sql)


@pytest.fixture(scope="module")
def readers(pg_server: PgServer) -> Iterator[tuple[psycopg.Connection[Any], psycopg.Connection[Any]]]:
    """Two sessions of one real server: standard strings on, and off."""
    pg_server.create_role("strings", PASSWORD)
    dsn = make_conninfo(host="127.0.0.1", port=pg_server.port, user="strings", password=PASSWORD, dbname="postgres")
    with psycopg.connect(dsn, autocommit=True) as on, psycopg.connect(dsn, autocommit=True) as off:
        off.execute("SET standard_conforming_strings = off")
        off.execute("SET escape_string_warning = off")
        yield on, off


def _read(conn: psycopg.Connection[Any], sql: str) -> object:
    """The rows, or "error": a statement that fails runs nothing, whichever error says why."""
    try:
        return conn.execute(sql).fetchall()
    except psycopg.Error:
        return "error"


# Quotes and backslashes several times over: the texts where the setting matters are made of them.
PIECES = st.sampled_from(["'", "'", "'", "\\", "\\", "a", " ", "\n", "E'", "$$", "--", "/*", "*/", "U&'", "N'", ",",
                          '"'])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(PIECES, max_size=14).map("".join))
def test_whatever_is_vouched_for_reads_the_same_or_fails_with_standard_strings_off(
        readers: tuple[psycopg.Connection[Any], psycopg.Connection[Any]], tail: str) -> None:
    sql = "SELECT " + tail
    if not reads_alike_under_any_string_syntax(sql):
        return
    on, off = readers
    assert _read(off, sql) in (_read(on, sql), "error")


def test_the_server_does_read_a_refused_text_otherwise(
        readers: tuple[psycopg.Connection[Any], psycopg.Connection[Any]]) -> None:
    # The check above could pass with a predicate that vouches for nothing; this shows the hazard is real.
    on, off = readers
    sql = "SELECT '\\'\n' , 1 -- '"
    assert not reads_alike_under_any_string_syntax(sql)
    assert _read(on, sql) == [("\\ , 1 -- ",)]  # two literals, the second continuing the first
    assert _read(off, sql) == [("'\n", 1)]
