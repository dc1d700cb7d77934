"""The tree walk behind :func:`policies.sql.classify`: which pglast nodes mean which statement kinds.

The top node alone misleads (``WITH x AS (DELETE …) SELECT`` is a SelectStmt),
so every node of every statement is visited. The walk is iterative, like
pglast's own ``Visitor``, so deeply nested input cannot exhaust Python's stack;
unlike it, it carries two pieces of context down the tree:

- the *role* of a relation: the kinds of the statement that acts on it
  (``DELETE FROM t`` deletes from ``t``; ``USING u`` or a subquery only reads
  ``u``), so that a rule on ``(delete, t)`` does not fire on a read of ``t``;
- whether the node sits under a plain ``EXPLAIN``, which plans but does not run
  its statement.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pglast import ast, enums

# Functions that read or write the server's files, signal other sessions, change
# the server's configuration or role, or run SQL given as a string (invisible to
# this walk). pg_sleep is deliberately absent: it changes nothing and reads
# nothing, and statement_timeout bounds it.
DANGEROUS_FUNCTIONS = frozenset({
    "pg_terminate_backend", "pg_cancel_backend", "pg_signal_backend", "pg_reload_conf", "pg_rotate_logfile",
    "pg_promote", "pg_switch_wal", "pg_create_restore_point", "pg_backup_start", "pg_backup_stop",
    "pg_start_backup", "pg_stop_backup", "pg_wal_replay_pause", "pg_wal_replay_resume",
    "pg_log_backend_memory_contexts", "set_config",
    "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "pg_ls_logdir", "pg_ls_waldir",
    "pg_ls_tmpdir", "pg_ls_archive_statusdir", "pg_ls_logicalsnapdir", "pg_ls_logicalmapdir",
    "pg_ls_replslotdir", "pg_file_write", "pg_file_rename", "pg_file_unlink", "pg_file_sync",
    "lo_import", "lo_export",
    "pg_create_physical_replication_slot", "pg_create_logical_replication_slot", "pg_drop_replication_slot",
    "pg_copy_physical_replication_slot", "pg_copy_logical_replication_slot",
    "pg_logical_slot_get_changes", "pg_logical_slot_get_binary_changes", "pg_logical_slot_peek_changes",
    "pg_logical_slot_peek_binary_changes", "pg_logical_emit_message", "pg_replication_slot_advance",
    "query_to_xml", "query_to_xml_and_xmlschema", "query_to_xmlschema", "cursor_to_xml", "ts_stat",
    # These read whole relations named in string literals, out of the walk's (and table rules') sight.
    "table_to_xml", "table_to_xml_and_xmlschema", "table_to_xmlschema", "schema_to_xml",
    "schema_to_xml_and_xmlschema", "schema_to_xmlschema", "database_to_xml", "database_to_xml_and_xmlschema",
    "database_to_xmlschema", "cursor_to_xmlschema",
})
# Settings that change how the server splits SQL text into tokens: the encoding its bytes are read in, and
# whether backslashes escape in '...' strings. The classifier reads SQL as UTF-8 with the defaults, so these
# are fixed for a session (policies.sql refuses changing them; the proxy ends a session that sees one change).
STRING_SYNTAX_SETTINGS = frozenset({"standard_conforming_strings", "client_encoding"})

DANGEROUS_PREFIXES = ("dblink", "pg_replication_origin_", "binary_upgrade_")

# Functions that write although they are called from a SELECT: the statement is then not read-only.
WRITING_FUNCTIONS = frozenset({
    "nextval", "setval", "lo_create", "lo_creat", "lo_unlink", "lo_put", "lo_from_bytea", "lo_truncate",
    "lo_truncate64", "pg_advisory_lock", "pg_advisory_xact_lock", "pg_stat_reset", "pg_stat_reset_shared",
    "pg_stat_reset_single_table_counters", "pg_stat_reset_single_function_counters", "pg_stat_reset_slru",
    "txid_current", "pg_current_xact_id", "pg_notify",
})

READ = ("select",)
ALL_RELATIONS = "*"  # a relation name meaning "every relation" (DROP SCHEMA s: "s.*"; DROP DATABASE: "*")

# Statement nodes whose kind does not depend on their fields. Classes missing here
# (and from _kinds) are named by prefix in _fallback_kind, or become "other".
_FIXED: dict[type[ast.Node], tuple[str, ...]] = {
    ast.DeleteStmt: ("delete",),
    ast.UpdateStmt: ("update",),
    ast.TruncateStmt: ("truncate",),
    ast.AlterSystemStmt: ("alter_system", "alter"),
    ast.DoStmt: ("do",),
    ast.CallStmt: ("call",),
    ast.ExecuteStmt: ("execute",),
    ast.PrepareStmt: ("prepare",),
    ast.DeallocateStmt: ("deallocate",),
    ast.LockStmt: ("lock",),
    ast.ListenStmt: ("listen",),
    ast.UnlistenStmt: ("listen",),
    ast.NotifyStmt: ("notify",),
    ast.TransactionStmt: ("transaction",),
    ast.VariableShowStmt: ("show",),
    ast.ConstraintsSetStmt: ("set",),
    ast.DiscardStmt: ("discard",),
    ast.CommentStmt: ("comment",),
    ast.SecLabelStmt: ("comment",),
    ast.ReindexStmt: ("reindex",),
    ast.ClusterStmt: ("cluster",),
    ast.RefreshMatViewStmt: ("refresh",),
    ast.LoadStmt: ("load",),
    ast.CheckPointStmt: ("checkpoint",),
    ast.DeclareCursorStmt: ("cursor",),
    ast.FetchStmt: ("cursor",),
    ast.ClosePortalStmt: ("cursor",),
    ast.DefineStmt: ("create",),
    ast.IndexStmt: ("create",),
    ast.ViewStmt: ("create",),
    ast.CompositeTypeStmt: ("create",),
    ast.RuleStmt: ("create",),
    ast.ImportForeignSchemaStmt: ("create",),
    ast.CreateTableAsStmt: ("create",),
    ast.RenameStmt: ("alter",),
    ast.ReassignOwnedStmt: ("alter",),
    ast.ReplicaIdentityStmt: ("alter",),
    ast.AlterDefaultPrivilegesStmt: ("alter",),  # its GrantStmt child adds grant or revoke
    ast.DropOwnedStmt: ("drop",),
    # Nodes named *Stmt that are not statements of their own: parts of set
    # operations and of SQL-standard function bodies (the CREATE FUNCTION holding
    # them is already "create").
    ast.RawStmt: (),
    ast.SetOperationStmt: (),
    ast.ReturnStmt: (),
    ast.PLAssignStmt: (),
}

# Fields that hold the relations a statement acts on; every other field only reads.
_TARGET_FIELDS = frozenset({"relation", "relations", "objects", "into", "intoClause", "view", "table", "rels"})

# DROP of these object types names relations that table rules can match.
_DROPPED_RELATIONS = frozenset({
    enums.ObjectType.OBJECT_TABLE, enums.ObjectType.OBJECT_VIEW, enums.ObjectType.OBJECT_MATVIEW,
    enums.ObjectType.OBJECT_INDEX, enums.ObjectType.OBJECT_SEQUENCE, enums.ObjectType.OBJECT_FOREIGN_TABLE,
})
_MERGE_ACTIONS = {enums.CmdType.CMD_UPDATE: "update", enums.CmdType.CMD_DELETE: "delete",
                  enums.CmdType.CMD_INSERT: "insert"}
_FALSE = frozenset({"false", "off", "0", "no"})


@dataclass
class Facts:
    """What one walk found; :func:`policies.sql.classify` freezes it into a Statement."""

    kinds: set[str] = field(default_factory=set)
    effective: set[str] = field(default_factory=set)      # kinds that run (not under a plain EXPLAIN)
    targets: set[tuple[str, str]] = field(default_factory=set)
    unfiltered: set[tuple[str, str]] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    writing_function: bool = False
    executes: set[str] = field(default_factory=set)
    prepared: tuple[str, str, Facts] | None = None  # PREPARE: name, the body's kind, what the body does
    deallocates: set[str] = field(default_factory=set)
    deallocates_all: bool = False
    string_syntax: bool = False  # set_config() of a setting that changes how literals read, or of one unknown

    def add(self, kinds: tuple[str, ...], plain: bool) -> None:
        """Record kinds found at a node; under a plain EXPLAIN they do not run."""
        self.kinds.update(kinds)
        if not plain:
            self.effective.update(kinds)


def relation_name(node: ast.RangeVar | None) -> str:
    """``catalog.schema.table`` as far as it was written (identifiers as the parser folded them)."""
    if node is None:
        return "?"
    return ".".join(p for p in (node.catalogname, node.schemaname, node.relname) if p)


def function_name(node: ast.FuncCall) -> str:
    """The called function, lower-case, schema-qualified as written."""
    return ".".join(getattr(p, "sval", "?") for p in node.funcname or ()).lower()


def is_dangerous(name: str) -> bool:
    """True for a function listed in DANGEROUS_FUNCTIONS or under DANGEROUS_PREFIXES, in any schema."""
    bare = name.rsplit(".", 1)[-1].lower()
    return bare in DANGEROUS_FUNCTIONS or bare.startswith(DANGEROUS_PREFIXES)


def _fallback_kind(cls: type[ast.Node]) -> tuple[str, ...]:
    name = cls.__name__
    if not name.endswith("Stmt"):
        return ()
    for prefix, kind in (("Create", "create"), ("Alter", "alter"), ("Drop", "drop")):
        if name.startswith(prefix):
            return (kind,)
    return ("other",)  # a statement this table does not know: policy treats it as opaque


def _explain_analyze(node: ast.ExplainStmt) -> bool:
    for option in node.options or ():
        if option.defname.lower() != "analyze":
            continue
        arg = option.arg
        value = getattr(arg, "sval", getattr(arg, "boolval", getattr(arg, "ival", True)))
        # Anything but a clear "false" counts: PostgreSQL rejects values it cannot read.
        return str(value).lower() not in _FALSE
    return False


def node_kinds(node: ast.Node | None) -> tuple[str, ...]:
    """The statement kinds this one node stands for (``()`` for expressions)."""
    if node is None:
        return ()
    cls = type(node)
    if cls in _FIXED:
        return _FIXED[cls]
    if isinstance(node, ast.SelectStmt):
        kinds = ["select"]
        if node.intoClause is not None:
            kinds.append("create")
        if node.lockingClause:
            kinds.append("lock")  # FOR UPDATE/SHARE: refused in a read-only transaction
        return tuple(kinds)
    if isinstance(node, ast.InsertStmt):
        clause = node.onConflictClause
        upsert = clause is not None and clause.action == enums.OnConflictAction.ONCONFLICT_UPDATE
        return ("insert", "update") if upsert else ("insert",)
    if isinstance(node, ast.MergeStmt):
        actions = {_MERGE_ACTIONS.get(w.commandType) for w in node.mergeWhenClauses or ()}
        return ("merge", *sorted(a for a in actions if a))
    if isinstance(node, ast.CopyStmt):
        kinds = ["copy_from", "insert"] if node.is_from else ["copy_to", "select"]
        if node.is_program:
            kinds.append("copy_program")
        elif node.filename is not None:
            kinds.append("copy_file")
        return tuple(kinds)
    if isinstance(node, ast.ExplainStmt):
        return ("explain", "explain_analyze") if _explain_analyze(node) else ("explain",)
    if isinstance(node, ast.VariableSetStmt):
        name = (node.name or "").lower()
        if name == "role":
            return ("set_role",)  # RESET ROLE too: it changes the role
        if name == "session_authorization":
            return ("set_session_authorization",)
        reset = node.kind in (enums.VariableSetKind.VAR_RESET, enums.VariableSetKind.VAR_RESET_ALL)
        return ("reset",) if reset else ("set",)
    if isinstance(node, ast.GrantStmt | ast.GrantRoleStmt):
        return ("grant",) if node.is_grant else ("revoke",)
    if isinstance(node, ast.VacuumStmt):
        return ("vacuum",) if node.is_vacuumcmd else ("analyze",)
    return _fallback_kind(cls)


def _mentions_column(node: ast.Node) -> bool:
    """True when a WHERE clause refers to some column (or a cursor): ``WHERE true`` filters nothing."""
    stack: list[object] = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, ast.ColumnRef | ast.CurrentOfExpr):
            return True
        if isinstance(item, tuple):
            stack.extend(item)
        elif isinstance(item, ast.Node):
            stack.extend(getattr(item, member) for member in item)
    return False


def _note(node: ast.Node, kinds: tuple[str, ...], facts: Facts, plain: bool) -> None:
    """Facts beyond the kinds: unfiltered writes, calls, prepared-statement names, dropped relations."""
    if isinstance(node, ast.UpdateStmt | ast.DeleteStmt):
        if node.whereClause is None or not _mentions_column(node.whereClause):
            facts.unfiltered.add((kinds[0], relation_name(node.relation)))
    elif isinstance(node, ast.FuncCall):
        name = function_name(node)
        facts.functions.add(name)
        if is_dangerous(name):
            facts.add(("dangerous_function",), plain)
        if name.rsplit(".", 1)[-1] == "set_config":
            setting = node.args[0] if node.args else None
            named = setting.val.sval if isinstance(setting, ast.A_Const) and isinstance(setting.val, ast.String) \
                else None
            facts.string_syntax |= named is None or named.lower() in STRING_SYNTAX_SETTINGS
        elif name.rsplit(".", 1)[-1] in WRITING_FUNCTIONS and not plain:
            facts.writing_function = True
    elif isinstance(node, ast.ExecuteStmt):
        facts.executes.add(node.name or "")
    elif isinstance(node, ast.DeallocateStmt):
        if node.name is None:
            facts.deallocates_all = True
        else:
            facts.deallocates.add(node.name)
    elif isinstance(node, ast.DiscardStmt) and node.target == enums.DiscardMode.DISCARD_ALL:
        facts.deallocates_all = True
    elif isinstance(node, ast.DropStmt) and node.removeType in _DROPPED_RELATIONS:
        for names in node.objects or ():
            parts = names if isinstance(names, tuple) else (names,)
            facts.targets.add(("drop", ".".join(getattr(p, "sval", "?") for p in parts)))
    elif isinstance(node, ast.DropStmt) and node.removeType == enums.ObjectType.OBJECT_SCHEMA:
        # Every relation in the schema goes with it: table rules must see them.
        facts.targets.update(("drop", f"{getattr(name, 'sval', '?')}.{ALL_RELATIONS}") for name in node.objects or ())
    elif isinstance(node, ast.DropdbStmt | ast.DropOwnedStmt):
        facts.targets.add(("drop", ALL_RELATIONS))


def walk(root: ast.Node | None) -> Facts:
    """Visit every node under ``root`` and collect what the statement does."""
    facts = Facts()
    # (node or tuple of nodes, role of a relation met here, under a plain EXPLAIN)
    stack: list[tuple[object, tuple[str, ...], bool]] = [(root, READ, False)]
    while stack:
        node, role, plain = stack.pop()
        if isinstance(node, tuple):
            stack.extend((item, role, plain) for item in node if isinstance(item, tuple | ast.Node))
            continue
        if not isinstance(node, ast.Node):
            continue
        if isinstance(node, ast.RangeVar):
            name = relation_name(node)
            facts.targets.update((kind, name) for kind in role)
            facts.add(role, plain)  # MERGE … USING s reads s: that is a select too
            continue
        kinds = node_kinds(node)
        if kinds:
            facts.add(kinds, plain)
        _note(node, kinds, facts, plain)
        if isinstance(node, ast.PrepareStmt):
            body = walk(node.query)
            facts.prepared = (node.name or "", next(iter(node_kinds(node.query)), "other"), body)
            _merge(facts, body, plain)
            stack.append((node.argtypes, READ, plain))
            continue
        if not kinds:  # an expression or clause: relations below keep the role they were given
            stack.extend((getattr(node, m), role, plain) for m in node)
            continue
        child_plain = plain or (isinstance(node, ast.ExplainStmt) and "explain_analyze" not in kinds)
        for member in node:
            value = getattr(node, member)
            if not isinstance(value, tuple | ast.Node):
                continue
            if member in _TARGET_FIELDS:
                child_role = ("create",) if member in ("into", "intoClause") else kinds
            elif member == "fromClause" and "lock" in kinds:
                child_role = ("select", "lock")
            else:
                child_role = READ
            stack.append((value, child_role, child_plain))
    return facts


def _merge(facts: Facts, body: Facts, plain: bool) -> None:
    """Fold what a PREPARE's body does into the PREPARE itself (it will run on EXECUTE)."""
    facts.kinds |= body.kinds
    if not plain:  # under a plain EXPLAIN nothing runs
        facts.effective |= body.effective
    facts.targets |= body.targets
    facts.unfiltered |= body.unfiltered
    facts.functions |= body.functions
    facts.writing_function |= body.writing_function
    facts.string_syntax |= body.string_syntax
    facts.executes |= body.executes
