"""The console's backslash meta-commands, registered with a decorator.

The psql meta-commands people use daily are catalog queries sent through the
connection, so the proxy inspects and audits them like any statement. The ones
that would touch the bastion's files or run a program there are refused by name.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from .sqlrender import Note

if TYPE_CHECKING:
    from .sql import SqlConnection, SqlResult

Output = list["SqlResult | Note"]
POSTGRES = frozenset({"postgres"})


# -- refused by name ---------------------------------------------------------------

_FILES = "it reads or writes files on the bastion"
FORBIDDEN: dict[str, str] = {
    "!": "it would run a program on the bastion",
    "copy": _FILES, "lo_import": _FILES, "lo_export": _FILES,
    "i": _FILES, "ir": _FILES, "include": _FILES, "include_relative": _FILES,
    "o": _FILES, "out": _FILES, "w": _FILES, "write": _FILES, "s": _FILES,
    "e": "it would run an editor on the bastion", "edit": "it would run an editor on the bastion",
    "ef": "it would run an editor on the bastion", "ev": "it would run an editor on the bastion",
    "cd": "it would change the bastion's working directory", "setenv": "it would change the bastion's environment",
    "getenv": "it would read the bastion's environment",
    "c": "to switch targets, leave with \\q and `connect` another", "connect": "to switch targets, leave with \\q "
                                                                            "and `connect` another",
    "password": "the target's credentials belong to the bastion",
}
FORBIDDEN_WITH_ARG = {"g": "it would write the result to a file or a program on the bastion",
                      "gx": "it would write the result to a file or a program on the bastion"}
FORBIDDEN_HINT = ("  Only the target is reachable from this console. To take data out, run "
                  "`ssh bastion sql TARGET --format csv \"SELECT …\"` from your own machine.")


def forbidden(name: str, arg: str) -> str | None:
    """Why a meta-command is not available on the bastion, or None if it may run."""
    if name in FORBIDDEN:
        return FORBIDDEN[name]
    return FORBIDDEN_WITH_ARG.get(name) if arg else None


# -- the registry ------------------------------------------------------------------


@dataclass
class Settings:
    """The console's toggles."""

    vertical: str = "auto"  # "on", "off", or "auto": vertical when a table is wider than the screen
    timing: bool = False
    leave: bool = False


class MetaConsole(Protocol):
    """What a meta-command may use of the console."""

    conn: SqlConnection
    user: str
    settings: Settings

    async def query(self, sql: str) -> list[SqlResult] | None:
        """Execute through the connection (None: abandoned with Ctrl-C)."""
        ...

    async def refresh(self) -> int:
        """Refetch the completion catalog; the number of tables."""
        ...


Handler = Callable[[MetaConsole, str], Awaitable[Output | None]]


@dataclass(frozen=True)
class Meta:
    """One registered meta-command."""

    name: str
    usage: str
    summary: str
    handler: Handler
    dialects: frozenset[str] = field(default=frozenset())  # empty: every dialect


META: dict[str, Meta] = {}


def meta(name: str, usage: str, summary: str, *, dialects: frozenset[str] = frozenset(),
         aliases: tuple[str, ...] = ()) -> Callable[[Handler], Handler]:
    """Register a meta-command."""

    def register(handler: Handler) -> Handler:
        for key in (name, *aliases):
            META[key] = Meta(name, usage, summary, handler, dialects)
        return handler

    return register


def _titled(title: str, results: list[SqlResult] | None) -> Output | None:
    """Results under a psql-style title, unless the query failed."""
    if results is None:
        return None
    if any(r.error is not None for r in results):
        return list(results)
    return [Note(title, "class:sql.title"), *results]


def _toggle(arg: str, current: bool) -> bool | None:
    if not arg:
        return not current
    return {"on": True, "off": False}.get(arg.lower())


@meta("?", "\\?", "Show these commands.")
async def _help(console: MetaConsole, arg: str) -> Output:
    dialect = console.conn.dialect
    shown = {m.name: m for m in META.values() if not m.dialects or dialect in m.dialects}
    width = max(len(m.usage) for m in shown.values())
    out: Output = [Note("Meta-commands (catalog queries go through the bastion like any statement)", "class:sql.title")]
    out += [Note(f"  {m.usage.ljust(width)}  {m.summary}") for m in shown.values()]
    out += [Note("Statements end with ; and may span lines. Ctrl-C cancels a running statement, "
                  "Ctrl-D goes back to the bastion shell."),
            Note("Not available on the bastion: \\! \\copy \\i \\o \\e \\w \\s \\cd \\g FILE \\lo_import "
                  "\\lo_export \\c \\password", "class:sql.hint")]
    return out


@meta("q", "\\q", "Leave the console, back to the bastion shell (also Ctrl-D).")
async def _quit(console: MetaConsole, arg: str) -> None:
    console.settings.leave = True


@meta("x", "\\x [on|off|auto]", "Toggle vertical records (auto: when a table is wider than the screen).")
async def _expanded(console: MetaConsole, arg: str) -> Output:
    settings = console.settings
    if arg.lower() == "auto":
        settings.vertical = "auto"
        return [Note("Expanded display is used automatically.")]
    on = _toggle(arg, settings.vertical == "on")
    if on is None:
        return [Note(f"\\x: unrecognized value {arg!r}; expected on, off or auto", "class:sql.error")]
    settings.vertical = "on" if on else "off"
    return [Note(f"Expanded display is {settings.vertical}.")]


@meta("timing", "\\timing [on|off]", "Toggle how long each statement took.")
async def _timing(console: MetaConsole, arg: str) -> Output:
    on = _toggle(arg, console.settings.timing)
    if on is None:
        return [Note(f"\\timing: unrecognized value {arg!r}; expected on or off", "class:sql.error")]
    console.settings.timing = on
    return [Note(f"Timing is {'on' if on else 'off'}.")]


@meta("refresh", "\\refresh", "Fetch schemas, tables and columns again for completion.")
async def _refresh(console: MetaConsole, arg: str) -> Output:
    return [Note(f"Completion refreshed: {await console.refresh()} tables.")]


CONNINFO_SQL = {
    "postgres": "SELECT pg_catalog.current_database(), current_user, pg_catalog.current_setting('server_version');",
    "mysql": "SELECT DATABASE(), CURRENT_USER(), VERSION();",
}


@meta("conninfo", "\\conninfo", "Show the target, database, database user and server version.")
async def _conninfo(console: MetaConsole, arg: str) -> Output | None:
    results = await console.query(CONNINFO_SQL[console.conn.dialect])
    if results is None:
        return None
    if not results or results[0].error is not None or not results[0].rows:
        return list(results)
    database, user, version = (v or "?" for v in results[0].rows[0][:3])
    return [Note(f'You are {console.user}, connected to target "{console.conn.target}" through the bastion: '
                  f'database "{database}" as database user "{user}", server version {version}.')]


# -- PostgreSQL catalog queries -----------------------------------------------------


def literal(value: str) -> str:
    """A SQL string literal, whatever standard_conforming_strings says."""
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def pattern_regexes(pattern: str) -> tuple[str | None, str]:
    """psql's patterns, simplified: ``*`` and ``?`` are wildcards, a dot splits schema from name,
    letters fold to lower case outside double quotes. Returns (schema regex or None, name regex)."""
    parts: list[list[str]] = [[]]
    quoted = False
    for c in pattern:
        if c == '"':
            quoted = not quoted
        elif c == "." and not quoted:
            parts.append([])
        elif c in "*?" and not quoted:
            parts[-1].append(".*" if c == "*" else ".")
        else:
            parts[-1].append(re.escape(c if quoted else c.lower()))
    regexes = [f"^({''.join(p)})$" for p in parts]
    return (regexes[-2] if len(regexes) > 1 else None), regexes[-1]


def _matching(column: str, schema_column: str, pattern: str, default: str) -> str:
    if not pattern:
        return default
    schema, name = pattern_regexes(pattern)
    where = f"{column} ~ {literal(name)}"
    return f"{schema_column} ~ {literal(schema)} AND {where}" if schema else where


_USER_SCHEMAS = "n.nspname <> 'pg_catalog' AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_toast'"


def relations_sql(kinds: str, pattern: str) -> str:
    """psql's ``\\dt``/``\\d``: relations of the given relkinds, visible ones unless a schema is named."""
    schema, _ = pattern_regexes(pattern) if pattern else (None, "")
    visible = "" if schema else " AND pg_catalog.pg_table_is_visible(c.oid)"
    where = _matching("c.relname", "n.nspname", pattern, _USER_SCHEMAS) + visible
    kind_list = ", ".join(f"'{k}'" for k in kinds)
    return ("SELECT n.nspname AS \"Schema\", c.relname AS \"Name\", "
            "CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned table' WHEN 'v' THEN 'view' "
            "WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence' WHEN 'f' THEN 'foreign table' END "
            "AS \"Type\", pg_catalog.pg_get_userbyid(c.relowner) AS \"Owner\" "
            "FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE c.relkind IN ({kind_list}) AND {where} ORDER BY 1, 2;")


def describe_sql(name: str) -> str:
    """psql's ``\\d NAME``: the relation, its columns, its indexes (three statements)."""
    oid = f"pg_catalog.to_regclass({literal(name)})"
    return (
        "SELECT n.nspname, c.relname, CASE c.relkind WHEN 'r' THEN 'Table' WHEN 'p' THEN 'Partitioned table' "
        "WHEN 'v' THEN 'View' WHEN 'm' THEN 'Materialized view' WHEN 'S' THEN 'Sequence' "
        "WHEN 'f' THEN 'Foreign table' WHEN 'i' THEN 'Index' ELSE 'Relation' END "
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE c.oid = {oid};\n"
        "SELECT a.attname AS \"Column\", pg_catalog.format_type(a.atttypid, a.atttypmod) AS \"Type\", "
        "CASE WHEN a.attnotnull THEN 'not null' ELSE '' END AS \"Nullable\", "
        "pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS \"Default\" "
        "FROM pg_catalog.pg_attribute a LEFT JOIN pg_catalog.pg_attrdef d "
        "ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
        f"WHERE a.attrelid = {oid} AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum;\n"
        "SELECT i.relname, CASE WHEN x.indisprimary THEN 'PRIMARY KEY, ' WHEN x.indisunique THEN 'UNIQUE, ' "
        "ELSE '' END || substring(pg_catalog.pg_get_indexdef(x.indexrelid) from 'USING (.*)$') "
        "FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid "
        f"WHERE x.indrelid = {oid} ORDER BY x.indisprimary DESC, i.relname;")


@meta("dt", "\\dt [PATTERN]", "List tables (PATTERN: name or schema.name, with * and ?).", dialects=POSTGRES)
async def _tables(console: MetaConsole, arg: str) -> Output | None:
    return _titled("List of tables", await console.query(relations_sql("rp", arg)))


@meta("d", "\\d [NAME]", "Describe a table, view or sequence: columns, types, nullability, indexes.",
      dialects=POSTGRES)
async def _describe(console: MetaConsole, arg: str) -> Output | None:
    if not arg:
        return _titled("List of relations", await console.query(relations_sql("rpvmSf", "")))
    results = await console.query(describe_sql(arg))
    if results is None:
        return None
    if len(results) < 3 or any(r.error is not None for r in results):
        return list(results)
    if not results[0].rows:
        return [Note(f'Did not find any relation named "{arg}".', "class:sql.error")]
    schema, name, kind = results[0].rows[0][:3]
    out: Output = [Note(f'{kind} "{schema}.{name}"', "class:sql.title"), replace(results[1], status="")]
    if results[2].rows:
        out.append(Note("Indexes:"))
        out += [Note(f'    "{index}" {definition or ""}') for index, definition, *_ in results[2].rows]
    return out


@meta("dn", "\\dn [PATTERN]", "List schemas.", dialects=POSTGRES)
async def _schemas(console: MetaConsole, arg: str) -> Output | None:
    where = _matching("n.nspname", "n.nspname", arg.replace(".", ""),
                      "n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'")
    sql = ("SELECT n.nspname AS \"Name\", pg_catalog.pg_get_userbyid(n.nspowner) AS \"Owner\" "
           f"FROM pg_catalog.pg_namespace n WHERE {where} ORDER BY 1;")
    return _titled("List of schemas", await console.query(sql))


@meta("l", "\\l", "List databases.", dialects=POSTGRES)
async def _databases(console: MetaConsole, arg: str) -> Output | None:
    sql = ("SELECT d.datname AS \"Name\", pg_catalog.pg_get_userbyid(d.datdba) AS \"Owner\", "
           "pg_catalog.pg_encoding_to_char(d.encoding) AS \"Encoding\", d.datcollate AS \"Collate\" "
           "FROM pg_catalog.pg_database d ORDER BY 1;")
    return _titled("List of databases", await console.query(sql))


@meta("du", "\\du [PATTERN]", "List roles and their attributes.", dialects=POSTGRES)
async def _roles(console: MetaConsole, arg: str) -> Output | None:
    where = _matching("r.rolname", "r.rolname", arg.replace(".", ""), "r.rolname !~ '^pg_'")
    sql = ("SELECT r.rolname AS \"Role name\", concat_ws(', ', "
           "CASE WHEN r.rolsuper THEN 'Superuser' END, CASE WHEN NOT r.rolinherit THEN 'No inheritance' END, "
           "CASE WHEN r.rolcreaterole THEN 'Create role' END, CASE WHEN r.rolcreatedb THEN 'Create DB' END, "
           "CASE WHEN NOT r.rolcanlogin THEN 'Cannot login' END, CASE WHEN r.rolreplication THEN 'Replication' END, "
           "CASE WHEN r.rolbypassrls THEN 'Bypass RLS' END) AS \"Attributes\" "
           f"FROM pg_catalog.pg_roles r WHERE {where} ORDER BY 1;")
    return _titled("List of roles", await console.query(sql))
