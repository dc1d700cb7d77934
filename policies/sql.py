"""PostgreSQL statement classification for guardrails, with PostgreSQL's own parser (pglast).

:func:`classify` splits a message into statements and walks each one's whole
parse tree (see :mod:`policies.sql_walk`), because the top node misleads:

- ``WITH x AS (DELETE …) SELECT …`` is a SelectStmt holding a DeleteStmt;
- ``EXPLAIN ANALYZE DELETE …`` runs the DELETE. A plain ``EXPLAIN`` does not:
  its inner kinds are still reported (so rules on them apply), but it stays
  ``read_only``;
- ``PREPARE p AS DELETE …`` carries the DELETE, and is classified with it;
- ``EXECUTE p`` runs whatever was prepared earlier: it is kind ``execute``,
  which guardrails treat as opaque. The proxy remembers what each name was
  prepared as and calls :func:`resolve_execute` to judge the real content;
- ``DO`` bodies are PL/pgSQL text, opaque: kind ``do``;
- a call to a function in :data:`~policies.sql_walk.DANGEROUS_FUNCTIONS`
  (``pg_terminate_backend``, ``pg_read_file``, ``lo_import``, ``dblink*``,
  ``set_config``, ``query_to_xml`` …), anywhere, adds kind
  ``dangerous_function`` and its name to ``functions``. ``pg_sleep`` is not
  listed: it changes and reads nothing, and ``statement_timeout`` bounds it;
- ``SELECT … INTO t`` is also ``create``; ``SELECT … FOR UPDATE/SHARE`` is
  also ``lock``; ``INSERT … ON CONFLICT DO UPDATE`` is also ``update``; a
  ``MERGE`` is also each of ``insert``/``update``/``delete`` its WHEN clauses
  do; ``COPY … FROM`` is also ``insert`` and ``COPY … TO`` also ``select``.

Statement kinds (:data:`KINDS`):

========================== ===================================================
select                     SELECT, VALUES, TABLE; a read of a relation
insert update delete merge DML (also when hidden in a CTE, EXPLAIN ANALYZE, …)
truncate drop create alter DDL (``create`` includes CREATE TABLE AS, SELECT INTO,
                           CREATE INDEX/VIEW/FUNCTION/RULE/TRIGGER …)
grant revoke               privileges and role membership
copy_to copy_from          COPY; ``copy_program`` for TO/FROM PROGRAM,
copy_program copy_file     ``copy_file`` for a file on the database server
set_role                   SET ROLE, RESET ROLE
set_session_authorization  SET/RESET SESSION AUTHORIZATION
alter_system               ALTER SYSTEM (also ``alter``)
do call execute            DO block, CALL procedure, EXECUTE prepared statement
prepare deallocate         PREPARE (plus the kinds of its body), DEALLOCATE
explain explain_analyze    EXPLAIN; EXPLAIN ANALYZE also has ``explain``
lock                       LOCK, SELECT … FOR UPDATE/SHARE
vacuum analyze reindex     maintenance
cluster refresh checkpoint
listen notify              LISTEN/UNLISTEN, NOTIFY
transaction                BEGIN, COMMIT, ROLLBACK, SAVEPOINT, PREPARE TRANSACTION …
set show reset discard     session settings (not role changes), DISCARD
comment load cursor        COMMENT/SECURITY LABEL, LOAD, DECLARE/FETCH/MOVE/CLOSE
dangerous_function         a call to a listed function, anywhere in the statement
other                      a statement type this module does not know (opaque)
========================== ===================================================

``read_only`` is true when PostgreSQL would run the statement in a read-only
transaction and it changes neither role nor server configuration: SELECT,
EXPLAIN, SHOW, SET/RESET of settings, transaction control, cursors, PREPARE of
a read, COPY TO STDOUT, LISTEN.

Limitations, by design of a parser-level check:

- writes done *inside* functions or procedures called by the statement, by
  triggers, rules or views cannot be seen (a few known writers such as
  ``nextval`` make the statement not ``read_only``). Deny ``create`` (of
  functions, rules, triggers) where that matters, and use database privileges
  as the second line;
- relations are matched as written: views, synonyms and ``search_path`` are
  not resolved (see :func:`policies.guardrails.relation_matches`);
- a WHERE clause that mentions no column (``WHERE true``, ``WHERE 1=1``) counts
  as missing; other tautologies are not detected.

Pure: no sockets, files or clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from pglast import ast, enums, parser

from .sql_walk import DANGEROUS_FUNCTIONS, STRING_SYNTAX_SETTINGS, Facts, is_dangerous, node_kinds, walk

__all__ = ["DANGEROUS_FUNCTIONS", "KINDS", "OPAQUE_KINDS", "ShapeCache", "SqlError", "Statement", "classify",
           "has_parameters", "is_dangerous", "reads_alike_under_any_string_syntax", "resolve_execute"]

KINDS: frozenset[str] = frozenset({
    "select", "insert", "update", "delete", "merge", "truncate", "drop", "create", "alter", "grant", "revoke",
    "copy_to", "copy_from", "copy_program", "copy_file", "set_role", "set_session_authorization",
    "alter_system", "do", "call", "execute", "prepare", "deallocate", "explain", "explain_analyze", "lock",
    "vacuum", "analyze", "listen", "notify", "transaction", "set", "show", "reset", "discard", "comment",
    "reindex", "cluster", "refresh", "load", "checkpoint", "cursor", "dangerous_function", "other",
})

# What the statement does cannot be seen from its text: guardrails deny these unless a rule names them.
OPAQUE_KINDS: frozenset[str] = frozenset({"do", "execute", "dangerous_function", "other"})

READ_ONLY_KINDS: frozenset[str] = frozenset({
    "select", "explain", "explain_analyze", "show", "set", "reset", "transaction", "cursor", "prepare",
    "deallocate", "listen", "copy_to",
})


_UTF8_NAMES = frozenset({"utf8", "unicode"})  # how PostgreSQL spells UTF-8, once it drops case and punctuation
_ON = frozenset({"on", "true", "yes", "1", "t", "y"})  # how SQL says a boolean is on, as the proxy pins it
_WRITES = frozenset({"insert", "update", "delete", "merge"})


class SqlError(Exception):
    """The SQL could not be parsed, so it cannot be classified: callers must fail closed."""


@dataclass(frozen=True)
class Statement:
    """What one statement does, as far as its parse tree shows."""

    text: str                           # this statement's source text, without the separating ';'
    kind: str                           # the top-level statement's kind, e.g. "select" for WITH … DELETE … SELECT
    kinds: frozenset[str]               # every kind found anywhere in the tree
    tables: frozenset[str]              # relations touched, as written: "schema.table" or "table"
    functions: frozenset[str]           # functions called, lower-case, schema-qualified as written
    without_where: bool                 # some UPDATE/DELETE in the tree has no (column-referencing) WHERE
    read_only: bool                     # nothing in it writes or changes state (see the module docstring)
    targets: frozenset[tuple[str, str]] = frozenset()     # (kind, relation): which kind acts on which relation
    unfiltered: frozenset[tuple[str, str]] = frozenset()  # (update|delete, relation) lacking a WHERE
    executes: frozenset[str] = frozenset()                # prepared-statement names it EXECUTEs
    prepares: str | None = None                           # the name a PREPARE defines …
    prepared: Statement | None = None                     # … and what that body does
    deallocates: frozenset[str] = frozenset()             # names DEALLOCATE drops
    deallocates_all: bool = False                         # DEALLOCATE ALL, DISCARD ALL


def _statement(text: str, kind: str, facts: Facts) -> Statement:
    read_only = facts.effective <= READ_ONLY_KINDS and not facts.writing_function
    prepared = None
    if facts.prepared is not None:
        _, body_kind, body = facts.prepared
        prepared = _statement(text, body_kind, body)
    return Statement(
        text=text,
        kind=kind,
        kinds=frozenset(facts.kinds),
        tables=frozenset(table for _, table in facts.targets),
        functions=frozenset(facts.functions),
        without_where=bool(facts.unfiltered),
        read_only=read_only,
        targets=frozenset(facts.targets),
        unfiltered=frozenset(facts.unfiltered),
        executes=frozenset(facts.executes),
        prepares=facts.prepared[0] if facts.prepared else None,
        prepared=prepared,
        deallocates=frozenset(facts.deallocates),
        deallocates_all=facts.deallocates_all,
    )


def classify(sql: str) -> list[Statement]:
    """One Statement per statement in ``sql``; raises SqlError on anything that does not parse."""
    if "\x00" in sql:
        # The parser stops at a NUL: what follows would go unchecked.
        raise SqlError("the SQL contains a NUL character")
    try:
        raw = parser.parse_sql(sql)
    except parser.ParseError as e:
        raise SqlError(f"syntax error: {e}") from e
    except Exception as e:  # the C extension has other failure modes (encoding, limits): all mean "unknown"
        raise SqlError(f"cannot parse: {type(e).__name__}") from e
    statements = []
    for item in raw:
        if isinstance(item.stmt, ast.VariableSetStmt) and changes_string_syntax(item.stmt):
            # This parser reads quotes and backslashes as the setting is now; changed, the server would not.
            raise SqlError(f"{item.stmt.name} may not be changed through the bastion: its guardrails must read "
                           "string literals exactly as the server does")
        start = item.stmt_location or 0  # pglast reports characters of sql, not bytes
        end = start + item.stmt_len if item.stmt_len else len(sql)
        text = sql[start:end].strip()
        kind = next(iter(node_kinds(item.stmt)), "other")
        facts = walk(item.stmt)
        if facts.string_syntax or any(table.rsplit(".", 1)[-1] == "pg_settings" and kind in _WRITES
                                      for kind, table in facts.targets):
            # pg_settings' update rule calls set_config(): a write to it is a SET of any setting.
            raise SqlError("settings may not be changed through set_config() or pg_settings here when they could "
                           "be client_encoding or standard_conforming_strings: the guardrails must read SQL "
                           "exactly as the server does; use SET")
        statements.append(_statement(text, kind, facts))
    return statements


def changes_string_syntax(stmt: ast.VariableSetStmt) -> bool:
    """True when a SET or RESET would make the server read SQL text otherwise than this module does.

    Setting one to what the proxy pins at login (``client_encoding`` UTF-8,
    ``standard_conforming_strings`` on) is harmless, and drivers do it on
    connect; so is a RESET or DEFAULT, which returns to the pinned value.
    """
    name = (stmt.name or "").lower()
    if name not in STRING_SYNTAX_SETTINGS:
        return False
    if stmt.kind in (enums.VariableSetKind.VAR_SET_DEFAULT, enums.VariableSetKind.VAR_RESET):
        return False
    args = stmt.args or ()
    value = args[0].val if len(args) == 1 and isinstance(args[0], ast.A_Const) else None
    if isinstance(value, ast.String):
        text = (value.sval or "").lower()
    elif isinstance(value, ast.Integer):
        text = str(value.ival)
    else:
        return True
    if name == "client_encoding":
        return "".join(c for c in text if c.isalnum()) not in _UTF8_NAMES
    return text not in _ON


def reads_alike_under_any_string_syntax(sql: str) -> bool:
    """True when the server splits ``sql`` into the same tokens whatever its string syntax settings are.

    That is when the text is ASCII, which reads alike in every client
    encoding PostgreSQL has, and no plain ``'…'`` literal holds a backslash,
    the one thing ``standard_conforming_strings`` changes in the scanner (a
    ``U&'…'`` literal is an error with it off, so it cannot be misread). The
    proxy needs this for a statement that follows, in the same batch, one that
    may have changed either setting where no parser can see it.
    """
    if sql.isascii() and "\\" not in sql:
        return True
    if not sql.isascii() or "\x00" in sql:
        return False
    try:
        tokens = parser.scan(sql)
    except Exception:  # noqa: BLE001 - what cannot be scanned cannot be vouched for
        return False
    # pglast's positions count characters; the text is ASCII here, so they are bytes too.
    return not any(token.name == "SCONST" and sql[token.start] == "'" and "\\" in sql[token.start:token.end + 1]
                   for token in tokens)


# Literal tokens of PostgreSQL's scanner: strings (also dollar-quoted, E'', U&''), numbers, bit strings.
_LITERAL_TOKENS = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
_UNICODE_ESCAPES = frozenset({"UIDENT", "USCONST", "UESCAPE"})
_COMMENTS = frozenset({"C_COMMENT", "SQL_COMMENT"})

# Kinds whose classification reads no literal's value, only which tokens are where. EXPLAIN is not
# one (``ANALYZE 0`` vs ``ANALYZE 1``), nor is anything that names prepared statements or functions
# this module singles out: those are classified afresh every time.
LITERAL_BLIND_KINDS: frozenset[str] = frozenset({
    "select", "insert", "update", "delete", "merge", "lock", "transaction", "show"})


class ShapeCache:
    """:func:`classify` for statements that differ only in their literals, parsed once per shape.

    The key is the statement's token sequence from PostgreSQL's own scanner,
    with each literal's text replaced by its token type; everything else
    (keywords, identifiers, operators, parameters) stays byte for byte. Two
    texts with one key therefore parse to the same tree but for literal values,
    and only single statements whose kinds are in :data:`LITERAL_BLIND_KINDS`
    are kept, so a hit gives what :func:`classify` would. This is what makes
    ``SELECT … WHERE id = 42`` cheap on the data path the thousandth time.
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._shapes: dict[str, Statement] = {}
        self.hits = self.misses = 0

    def classify(self, sql: str) -> list[Statement]:
        """What :func:`classify` returns for ``sql``; raises SqlError the same way."""
        return self.classify_shape(sql, _shape(sql))[0]

    def shape(self, sql: str) -> tuple[str, str] | None:
        """(key, statement text), or None when the scanner refuses the SQL; see :meth:`classify_shape`."""
        return _shape(sql)

    def classify_shape(self, sql: str, shape: tuple[str, str] | None) -> tuple[list[Statement], str | None]:
        """:meth:`classify` given ``shape(sql)``; also the key when every text of that shape classifies alike.

        With a key, the statements differ from those of any other text with
        that key in their ``text`` only, so whatever is decided from the rest
        of them (a guardrail's verdict) holds for every text of the shape.
        """
        if shape is None:
            return classify(sql), None
        key, text = shape
        cached = self._shapes.get(key)
        if cached is not None:
            self.hits += 1
            return [replace(cached, text=text)], key
        self.misses += 1
        statements = classify(sql)
        if len(statements) == 1 and statements[0].kinds <= LITERAL_BLIND_KINDS:
            if len(self._shapes) >= self.size:
                self._shapes.clear()  # simple and bounded; a hot shape is back after one parse
            self._shapes[key] = statements[0]
            return statements, key
        return statements, None


def _shape(sql: str) -> tuple[str, str] | None:
    """(key, statement text as classify() would cut it), or None when the scanner refuses the SQL.

    pglast reports token positions in characters of ``sql``, not bytes: slicing the
    UTF-8 bytes with them once let a comment of multi-byte characters shift every
    token, so that a DELETE shared its key with a SELECT.
    """
    if "\x00" in sql:
        return None
    try:
        tokens = parser.scan(sql)
    except Exception:  # noqa: BLE001 - whatever the scanner dislikes, classify() decides about
        return None
    parts = []
    first = last = None
    for token in tokens:  # one pass: this runs for every statement on the data path
        name = token.name
        if name in _COMMENTS:
            continue  # comments are tokens of the scanner but whitespace to the grammar
        if name in _UNICODE_ESCAPES:
            return None  # UESCAPE 'c' is a literal that changes how a U&"…" identifier reads
        # Each token as its type and, unless it is a literal, its exact text.
        parts.append(name if name in _LITERAL_TOKENS else f"{name}\x01{sql[token.start:token.end + 1]}")
        if first is None:
            first = token
        last = token
    if first is None or last is None:
        return None
    end = last.start if last.name == "ASCII_59" else len(sql)  # 59 is ';'; classify() cuts before it
    # NUL never occurs in the SQL (refused above) nor in a token type, so it separates tokens unambiguously.
    return "\x00".join(parts), sql[first.start:end].strip()


def has_parameters(sql: str) -> bool:
    """True when the SQL has ``$n`` parameter placeholders (an unparsable text counts as having them)."""
    try:
        return any(t.name == "PARAM" for t in parser.scan(sql))
    except Exception:  # noqa: BLE001 - fail closed: what cannot be scanned may hide anything
        return True


def resolve_execute(statement: Statement, prepared: Mapping[str, Statement]) -> Statement:
    """The statement with each EXECUTE replaced by what the session prepared under that name.

    ``prepared`` is the session's map of names to what they run: for SQL
    ``PREPARE name AS …``, its :attr:`Statement.prepared`; for a protocol-level
    Parse of a named statement (same namespace in PostgreSQL), the Statement
    classified from the Parse's query. When a name is unknown, the statement
    keeps kind ``execute``, which guardrails treat as opaque.
    """
    if not statement.executes or not statement.executes <= prepared.keys():
        return statement
    bodies = [prepared[name] for name in sorted(statement.executes)]
    kinds = set(statement.kinds - {"execute"})
    targets, unfiltered, functions = set(statement.targets), set(statement.unfiltered), set(statement.functions)
    for body in bodies:
        kinds |= body.kinds
        targets |= body.targets
        unfiltered |= body.unfiltered
        functions |= body.functions
    return replace(
        statement,
        kind=bodies[0].kind if statement.kind == "execute" else statement.kind,
        kinds=frozenset(kinds),
        tables=frozenset(t for _, t in targets),
        functions=frozenset(functions),
        without_where=bool(unfiltered),
        # Already read-only when the EXECUTE sits under a plain EXPLAIN, which does not run it.
        read_only=statement.read_only
        or (statement.kinds - {"execute"} <= READ_ONLY_KINDS and all(b.read_only for b in bodies)),
        targets=frozenset(targets),
        unfiltered=frozenset(unfiltered),
        executes=frozenset(),
    )
