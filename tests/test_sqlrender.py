"""SQL result rendering (shell/sqlrender.py) and exec exit codes (shell/sql.py)."""

from __future__ import annotations

import json

import pytest

from shell.commands import EXIT_APPROVAL, EXIT_DENIED, EXIT_ERROR, EXIT_OK
from shell.sql import SQLSTATE_DENIED, SQLSTATE_HELD, SqlResult, exit_code
from shell.sqlrender import Note, diagnostics, lines, plain, render, visible, width

PEOPLE = SqlResult(
    ("id", "name", "email"),
    [("1", "Zoë", "z***@example.com"), ("22", "山田太郎", None), ("333", None, "b***@example.com")],
    "SELECT 3", masked_columns=frozenset({2}), duration=0.0125)
UPDATE = SqlResult((), [], "UPDATE 2")
DENIED = SqlResult((), [], "", error='rule "dba-prod": DELETE without WHERE is denied', sqlstate=SQLSTATE_DENIED)
HELD = SqlResult((), [], "", error='rule "dba-prod": UPDATE needs review', sqlstate=SQLSTATE_HELD)
MISSING = SqlResult((), [], "", error='relation "nope" does not exist', sqlstate="42P01")


def test_table_aligns_unicode_by_display_width_and_marks_nulls() -> None:
    assert render([PEOPLE]) == (
        " id  |   name   |      email\n"
        "-----+----------+------------------\n"
        "   1 | Zoë      | z***@example.com\n"
        "  22 | 山田太郎 | <null>\n"
        " 333 | <null>   | b***@example.com\n"
        "(3 rows)\n"
        "1 column masked: email\n"
        "\n")
    assert width("山田太郎") == 8


def test_masked_cells_and_nulls_carry_their_own_style() -> None:
    styled = lines([PEOPLE])
    assert ("class:sql.masked", "z***@example.com") in styled[2]
    assert ("class:sql.null", "<null>") in styled[3]
    assert styled[-2] == [("class:sql.footer", "1 column masked: email")]


def test_vertical_records() -> None:
    assert render([PEOPLE], vertical=True).splitlines()[:8] == [
        "-[ RECORD 1 ]-----------",
        "id    | 1",
        "name  | Zoë",
        "email | z***@example.com",
        "-[ RECORD 2 ]-----------",
        "id    | 22",
        "name  | 山田太郎",
        "email | <null>",
    ]
    assert render([SqlResult(("a",), [], "SELECT 0")], vertical=True) == "(0 rows)\n\n"


def test_a_table_wider_than_the_screen_goes_vertical() -> None:
    wide = SqlResult(("k", "v"), [("1", "x" * 100)], "SELECT 1")
    assert plain(lines([wide], max_width=80)).startswith("-[ RECORD 1 ]")
    assert plain(lines([wide], max_width=200)).startswith(" k |")


def test_commands_errors_timing_and_notices() -> None:
    notice = SqlResult((), [], "DO", notices=("hello",), duration=0.0005)
    assert render([UPDATE, MISSING, notice], timing=True) == (
        "UPDATE 2\nTime: 0.000 ms\n"
        'ERROR: relation "nope" does not exist\nTime: 0.000 ms\n'
        "NOTICE: hello\nDO\nTime: 0.500 ms\n")


def test_denial_and_hold_read_as_policy_not_sql_errors() -> None:
    text = render([DENIED, HELD])
    assert text.startswith('denied by policy: rule "dba-prod": DELETE without WHERE is denied\n'
                           "  The statement did not run.")
    assert 'held for review: rule "dba-prod": UPDATE needs review\n' in text
    assert "ERROR" not in text
    styled = lines([DENIED])
    assert styled[0][0][0] == "class:sql.denied" and lines([MISSING])[0][0][0] == "class:sql.error"


def test_values_cannot_drive_the_terminal() -> None:
    evil = SqlResult(("v",), [("a\x1b[2Jb\nc\u202ed",)], "SELECT 1")
    text = render([evil])
    assert "\x1b" not in text and "\u202e" not in text
    assert "a\\x1b[2Jb\\nc\\u202ed" in text
    assert visible("tab\there") == "tab\\there"
    # machine formats keep the value as the server sent it
    assert json.loads(render([evil], "json"))[0]["rows"] == [{"v": "a\x1b[2Jb\nc\u202ed"}]


def test_json_shape() -> None:
    dup = SqlResult(("?column?", "?column?"), [("1", "2")], "SELECT 1")
    assert json.loads(render([PEOPLE, UPDATE, DENIED, dup], "json")) == [
        {"columns": ["id", "name", "email"],
         "rows": [{"id": "1", "name": "Zoë", "email": "z***@example.com"},
                  {"id": "22", "name": "山田太郎", "email": None},
                  {"id": "333", "name": None, "email": "b***@example.com"}],
         "status": "SELECT 3", "error": None, "sqlstate": None, "masked_columns": ["email"]},
        {"columns": [], "rows": [], "status": "UPDATE 2", "error": None, "sqlstate": None, "masked_columns": []},
        {"columns": [], "rows": [], "status": "", "error": 'rule "dba-prod": DELETE without WHERE is denied',
         "sqlstate": "42501", "masked_columns": []},
        {"columns": ["?column?", "?column?_2"], "rows": [{"?column?": "1", "?column?_2": "2"}],
         "status": "SELECT 1", "error": None, "sqlstate": None, "masked_columns": []},
    ]
    assert "山田太郎" in render([PEOPLE], "json")  # not \u-escaped


def test_csv_is_the_last_result_with_rows() -> None:
    quoted = SqlResult(("a", "b"), [("x,y", 'say "hi"'), ("", None), (" pad", "plain")], "SELECT 3")
    assert render([PEOPLE, quoted, UPDATE], "csv") == (
        'a,b\n"x,y","say ""hi"""\n"",\n" pad",plain\n')
    assert render([UPDATE], "csv") == ""


def test_diagnostics_for_csv_stderr() -> None:
    assert diagnostics([PEOPLE, MISSING]) == 'ERROR: relation "nope" does not exist\n'
    assert diagnostics([DENIED]).startswith("denied by policy: ")


def test_notes_and_status_free_results() -> None:
    columns = SqlResult(("Column", "Type"), [("id", "integer")], "")
    assert render_items([Note('Table "public.t"', "class:sql.title"), columns]) == (
        'Table "public.t"\n Column |  Type\n--------+---------\n id     | integer\n\n')


def render_items(items: list[SqlResult | Note]) -> str:
    return plain(lines(items))


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        render([UPDATE], "xml")


@pytest.mark.parametrize(("results", "code"), [
    ([], EXIT_OK),
    ([PEOPLE, UPDATE], EXIT_OK),
    ([PEOPLE, MISSING], EXIT_ERROR),
    ([HELD, MISSING], EXIT_APPROVAL),
    ([UPDATE, DENIED, HELD], EXIT_DENIED),
])
def test_exit_codes(results: list[SqlResult], code: int) -> None:
    assert exit_code(results) == code
    assert (EXIT_OK, EXIT_ERROR, EXIT_DENIED, EXIT_APPROVAL) == (0, 1, 3, 4)
