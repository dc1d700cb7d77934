"""Completion in the SQL console: keywords, plus schemas, tables and columns from the target's catalog.

The catalog comes through the connection (so the proxy sees those queries too),
once when the console opens and again on ``\\refresh``; completing reads only
the cached :class:`Catalog`, never the network.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from pygments.lexers import _mysql_builtins, _postgres_builtins

if TYPE_CHECKING:
    from .sql import SqlResult

log = logging.getLogger(__name__)

KEYWORDS = {
    "postgres": sorted({w.upper() for w in (*_postgres_builtins.KEYWORDS, *_postgres_builtins.DATATYPES)}),
    "mysql": sorted({w.upper() for w in (*_mysql_builtins.MYSQL_KEYWORDS, *_mysql_builtins.MYSQL_DATATYPES)}),
}
_SYSTEM = {
    "postgres": "'pg_catalog', 'information_schema'",
    "mysql": "'mysql', 'performance_schema', 'sys', 'information_schema'",
}
_SCHEMAS_SQL = {
    "postgres": "SELECT n.nspname FROM pg_catalog.pg_namespace n "
                "WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema' ORDER BY 1;",
    "mysql": f"SELECT schema_name FROM information_schema.schemata WHERE schema_name NOT IN ({_SYSTEM['mysql']}) "
             "ORDER BY 1;",
}
_SEARCH_PATH_SQL = {
    "postgres": "SELECT s FROM unnest(pg_catalog.current_schemas(false)) AS s;",
    "mysql": "SELECT DATABASE();",
}
# After these words a table name comes next.
_TABLE_CONTEXT = {"FROM", "JOIN", "INTO", "UPDATE", "TABLE", "TRUNCATE", "\\D", "\\DT"}
_REFERENCE = re.compile(r"\b(?:FROM|JOIN|UPDATE|INTO)\s+((?:\"[^\"]+\"|[\w$]+)(?:\.(?:\"[^\"]+\"|[\w$]+))?)"
                        r"(?:\s+(?:AS\s+)?([A-Za-z_]\w*))?", re.I)
_WORD = re.compile(r"(?:(\"[^\"]*\"|[\w$]+)\.)?(\"?[\w$]*)$")


@dataclass(frozen=True)
class Catalog:
    """Schemas, tables and their columns, as the target showed them."""

    schemas: tuple[str, ...] = ()
    columns: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)  # (schema, table) -> columns
    search_path: tuple[str, ...] = ()

    @property
    def tables(self) -> list[tuple[str, str]]:
        """Every (schema, table)."""
        return list(self.columns)

    def tables_in(self, schema: str) -> list[str]:
        """The tables of one schema."""
        return [t for s, t in self.columns if s == schema]

    def visible(self) -> list[str]:
        """Tables reachable without a schema name (on the search path)."""
        return sorted({t for s, t in self.columns if s in self.search_path})

    def columns_of(self, name: str) -> tuple[str, ...]:
        """A table's columns, by ``schema.table`` or by name (search path first)."""
        schema, _, table = name.rpartition(".")
        if schema:
            return self.columns.get((schema, table), ())
        for s in (*self.search_path, *self.schemas):
            if (s, table) in self.columns:
                return self.columns[(s, table)]
        return next((cols for (_, t), cols in self.columns.items() if t == table), ())


def catalog_sql(dialect: str) -> str:
    """The three catalog queries behind completion: schemas, columns of every table, the search path."""
    return (f"{_SCHEMAS_SQL[dialect]}\n"
            "SELECT table_schema, table_name, column_name FROM information_schema.columns "
            f"WHERE table_schema NOT IN ({_SYSTEM[dialect]}) ORDER BY table_schema, table_name, ordinal_position;\n"
            f"{_SEARCH_PATH_SQL[dialect]}")


def parse_catalog(results: Sequence[SqlResult]) -> Catalog:
    """A Catalog from the results of :func:`catalog_sql`; empty if the target refused or failed."""
    if len(results) < 3 or any(r.error is not None for r in results):
        log.info("completion catalog unavailable: %s", next((r.error for r in results if r.error), "no results"))
        return Catalog()
    columns: dict[tuple[str, str], list[str]] = {}
    for schema, table, column, *_ in results[1].rows:
        if schema is not None and table is not None and column is not None:
            columns.setdefault((schema, table), []).append(column)
    return Catalog(schemas=tuple(r[0] for r in results[0].rows if r and r[0] is not None),
                   columns={k: tuple(v) for k, v in columns.items()},
                   search_path=tuple(r[0] for r in results[2].rows if r and r[0] is not None))


def identifier(name: str, dialect: str) -> str:
    """A name as it must be typed: quoted unless it is a plain lower-case identifier."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
        return name
    if dialect == "mysql":
        return "`" + name.replace("`", "``") + "`"
    return '"' + name.replace('"', '""') + '"'


def _unquote(name: str) -> str:
    return name[1:-1] if len(name) > 1 and name[0] == name[-1] == '"' else name.strip('"').lower()


class SqlCompleter(Completer):
    """Completes meta-commands after ``\\``, tables after FROM/JOIN/…, columns after ``table.``, else keywords."""

    def __init__(self, catalog: Callable[[], Catalog], dialect: str, meta_names: Iterable[str]) -> None:
        self._catalog = catalog
        self.dialect = dialect
        self._meta = sorted(set(meta_names))
        self._keywords = KEYWORDS.get(dialect, KEYWORDS["postgres"])

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        before = document.text_before_cursor
        statement = before[before.rfind(";") + 1:]
        if re.fullmatch(r"\s*\\\S*", statement):
            prefix = statement.strip()[1:]
            for name in self._meta:
                if name.startswith(prefix):
                    yield Completion("\\" + name, -len(prefix) - 1, display_meta="meta-command")
            return
        word = _WORD.search(before)
        assert word is not None  # the pattern matches the empty string
        qualifier, prefix = word[1], word[2]
        catalog = self._catalog()
        if qualifier is not None:
            yield from self._qualified(catalog, _unquote(qualifier), prefix, document.text)
            return
        previous = re.findall(r"\\?\w+", before[:word.start()])
        if previous and previous[-1].upper() in _TABLE_CONTEXT:
            yield from self._matches(catalog.visible(), prefix, "table")
            yield from self._matches(catalog.schemas, prefix, "schema")
            return
        yield from self._matches(self._referenced_columns(catalog, document.text), prefix, "column")
        yield from self._keyword_matches(prefix)
        yield from self._matches(catalog.visible(), prefix, "table")

    def _qualified(self, catalog: Catalog, qualifier: str, prefix: str, text: str) -> Iterable[Completion]:
        if qualifier in catalog.schemas:
            yield from self._matches(catalog.tables_in(qualifier), prefix, "table")
            return
        tables = self._references(text)
        yield from self._matches(catalog.columns_of(tables.get(qualifier, qualifier)), prefix, "column")

    def _references(self, text: str) -> dict[str, str]:
        """Tables the statement names, by alias and by name."""
        refs: dict[str, str] = {}
        for m in _REFERENCE.finditer(text):
            table = ".".join(_unquote(part) for part in re.findall(r"\"[^\"]+\"|[\w$]+", m[1]))
            refs[table.rpartition(".")[2]] = table
            if m[2] and m[2].upper() not in self._keywords:
                refs[m[2]] = table
        return refs

    def _referenced_columns(self, catalog: Catalog, text: str) -> list[str]:
        columns: dict[str, None] = {}
        for table in self._references(text).values():
            columns.update(dict.fromkeys(catalog.columns_of(table)))
        return list(columns)

    def _matches(self, names: Iterable[str], prefix: str, kind: str) -> Iterable[Completion]:
        wanted = _unquote(prefix).lower() if prefix.startswith('"') else prefix.lower()
        for name in names:
            if name.lower().startswith(wanted):
                yield Completion(identifier(name, self.dialect), -len(prefix), display=name, display_meta=kind)

    def _keyword_matches(self, prefix: str) -> Iterable[Completion]:
        if not prefix or prefix.startswith('"'):
            return
        lower = prefix[0].islower()
        for keyword in self._keywords:
            if keyword.startswith(prefix.upper()):
                yield Completion(keyword.lower() if lower else keyword, -len(prefix), display_meta="keyword")
