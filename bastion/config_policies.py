"""The ``policies`` section of bastion.yaml: subjects, target selectors, approvals, guardrails, masking.

Split from config.py, which loads the rest; errors keep the same ``file:line: key: expected`` form.
"""

from __future__ import annotations

from collections.abc import Mapping

from bastion.config_schema import Node
from bastion.errors import ConfigError
from policies.masking import BUILTIN_DETECTORS, STRATEGIES
from policies.model import (
    Access,
    ApprovalRule,
    Approvers,
    Guardrail,
    MaskingRule,
    Policy,
    StatementEffect,
    Subjects,
    TargetSelector,
    TransferRule,
)
from policies.pgtypes import compile_glob
from policies.sql import KINDS
from policies.transfer import PathError, normalise

TARGET_KINDS = ("postgres", "mysql", "kubernetes", "ssh")


def _subjects(node: Node) -> tuple[tuple[str, ...], tuple[str, ...]]:
    f = node.fields(("users", "groups"))
    users = f["users"].names() if "users" in f else ()
    groups = f["groups"].names() if "groups" in f else ()
    if not users and not groups:
        raise node.error("expected at least one user or group")
    return users, groups


def _selector(node: Node) -> TargetSelector:
    f = node.fields(("names", "kinds", "labels"))
    names = f["names"].names() if "names" in f else ()
    kinds = tuple(item.choice(TARGET_KINDS) for item in f["kinds"].items()) if "kinds" in f else ()
    labels = tuple(f["labels"].labels().items()) if "labels" in f else ()
    if not (names or kinds or labels):
        raise node.error('expected at least one of names, kinds or labels (use names: ["*"] for all targets)')
    return TargetSelector(names=names, kinds=kinds, labels=labels)


def _approval(node: Node) -> ApprovalRule:
    keys = ("approvers", "min_approvals", "max_duration", "reason_required", "request_ttl", "break_glass")
    f = node.fields(keys, required=("approvers",))
    users, groups = _subjects(f["approvers"])
    rule = ApprovalRule(
        approvers=Approvers(users=users, groups=groups),
        min_approvals=f["min_approvals"].integer() if "min_approvals" in f else 1,
        max_duration=f["max_duration"].duration() if "max_duration" in f else ApprovalRule.max_duration,
        reason_required=f["reason_required"].flag() if "reason_required" in f else True,
        request_ttl=f["request_ttl"].duration() if "request_ttl" in f else ApprovalRule.request_ttl,
        break_glass=f["break_glass"].flag() if "break_glass" in f else False,
    )
    if not groups and rule.min_approvals > len(set(users)):
        raise f["min_approvals"].error(f"cannot be met by the {len(set(users))} approver user(s) listed")
    return rule


def _policy(node: Node, seen: dict[str, int], detectors: Mapping[str, str], has_hash_key: bool) -> Policy:
    keys = ("name", "subjects", "targets", "access", "port_forwarding", "approval", "guardrails", "masking",
            "transfer")
    f = node.fields(keys, required=("name", "subjects", "targets", "access"))
    name = f["name"].name()
    if name in seen:
        raise f["name"].error(f"duplicate policy name {name!r} (first at line {seen[name]})")
    seen[name] = f["name"].line
    users, groups = _subjects(f["subjects"])
    targets = _selector(f["targets"])
    access = Access(f["access"].choice(a.value for a in Access))
    guardrails = tuple(_guardrail(item, f"{name}.guardrails[{i}]")
                       for i, item in enumerate(f["guardrails"].items())) if "guardrails" in f else ()
    # The approval block names who approves access, and who reviews statements a guardrail holds.
    reviews = any(g.effect is StatementEffect.REVIEW for g in guardrails)
    transfer = _transfer(f["transfer"]) if "transfer" in f else None
    approved_transfers = transfer is not None and transfer.approval
    if (access is Access.APPROVAL or reviews or approved_transfers) and "approval" not in f:
        why = ("access is approval" if access is Access.APPROVAL else "a guardrail has effect review" if reviews
               else "transfer.approval is true")
        raise ConfigError(node.file, node.key_line, f"{node.key}.approval",
                          f"required when {why}: it names the approvers")
    if access is Access.DENY and "approval" in f:
        raise f["approval"].error("not allowed when access is deny", at_key=True)
    if access is Access.ALLOW and "approval" in f and not (reviews or approved_transfers):
        raise f["approval"].error("allowed only when access is approval or a guardrail has effect review "
                                  "(access is allow), or when transfer.approval is true", at_key=True)
    return Policy(
        name=name,
        subjects=Subjects(users=users, groups=groups),
        targets=targets,
        access=access,
        port_forwarding=f["port_forwarding"].flag() if "port_forwarding" in f else False,
        approval=_approval(f["approval"]) if "approval" in f else None,
        guardrails=guardrails,
        masking=tuple(_masking_rule(item, f"{name}.masking[{i}]", detectors, has_hash_key)
                      for i, item in enumerate(f["masking"].items())) if "masking" in f else (),
        transfer=transfer,
    )


def load_policies(node: Node, *, detectors: Mapping[str, str], has_hash_key: bool) -> tuple[Policy, ...]:
    """The ``policies`` list; ``detectors`` are the ones declared in ``masking.detectors``."""
    seen: dict[str, int] = {}
    return tuple(_policy(item, seen, detectors, has_hash_key) for item in node.items())


def _guardrail(node: Node, name: str) -> Guardrail:
    f = node.fields(("effect", "statements", "tables", "without_where"), required=("effect",))
    effect = StatementEffect(f["effect"].choice(e.value for e in StatementEffect))
    statements = tuple(_statement_kind(item) for item in f["statements"].items()) if "statements" in f else ()
    tables = f["tables"].names() if "tables" in f else ()
    without_where = f["without_where"].flag() if "without_where" in f else False
    if not (statements or tables or without_where):
        raise node.error("expected at least one of statements, tables or without_where: true "
                         "(a guardrail without a criterion would match every statement)")
    if without_where and statements and not {"update", "delete"} & set(statements):
        raise f["without_where"].error("applies only to update and delete; add one of them to statements",
                                       at_key=True)
    return Guardrail(effect=effect, statements=statements, tables=tables, without_where=without_where, name=name)


def _statement_kind(node: Node) -> str:
    kind = node.text()
    if kind not in KINDS:
        raise node.error(f"expected a statement kind ({', '.join(sorted(KINDS))}); got {kind!r}")
    return kind


def _masking_rule(node: Node, name: str, detectors: Mapping[str, str], has_hash_key: bool) -> MaskingRule:
    f = node.fields(("strategy", "columns", "detect"), required=("strategy",))
    strategy = f["strategy"].choice(STRATEGIES)
    if strategy == "hash" and not has_hash_key:
        raise f["strategy"].error("hash needs a key: set masking.hash_key ({env: NAME} or {file: PATH}) "
                                  "at the top level")
    columns = tuple(_column(item) for item in f["columns"].items()) if "columns" in f else ()
    detect = tuple(_detector(item, detectors) for item in f["detect"].items()) if "detect" in f else ()
    if not (columns or detect):
        raise node.error("expected at least one of columns or detect")
    return MaskingRule(strategy=strategy, columns=columns, detect=detect, name=name)


def _column(node: Node) -> str:
    column = node.name()
    node.parse(compile_glob, column)  # the masking engine's own check: at most schema.table.column
    return column


def _detector(node: Node, detectors: Mapping[str, str]) -> str:
    detector = node.name()
    if detector not in BUILTIN_DETECTORS and detector not in detectors:
        raise node.error(f"unknown detector {detector!r}; expected a built-in one ({', '.join(BUILTIN_DETECTORS)}) "
                         "or one declared in masking.detectors")
    return detector


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """A size in bytes: ``1048576``, ``20MB`` (10^6) or ``20MiB`` (2^20); raises ValueError."""
    number = text.strip().rstrip("bBiIkKmMgGtT ")
    unit = text.strip()[len(number):].strip().lower()
    if not number.isdigit() or unit not in _SIZE_UNITS:
        raise ValueError(f"expected a size in bytes such as 1048576, 20MB or 20MiB; got {text!r}")
    size = int(number) * _SIZE_UNITS[unit]
    if size < 1:
        raise ValueError("expected a size of at least 1 byte")
    return size


def _transfer_path(node: Node) -> str:
    raw = node.text()
    if not raw.startswith("/"):
        raise node.error(f"expected an absolute path on the target, such as /tmp; got {raw!r}")
    try:
        path = normalise(raw)
    except PathError as e:
        raise node.error(str(e)) from e
    if ".." in raw.split("/"):
        raise node.error(f"expected a path without '..'; write it as {path}")
    return path


def _extension(node: Node) -> str:
    ext = node.text().strip().lower()
    ext = ext if ext.startswith(".") else f".{ext}"
    if ext == "." or "/" in ext:
        raise node.error(f"expected a file extension such as .sh or .tar.gz; got {node.text()!r}")
    return ext


def _transfer(node: Node) -> TransferRule:
    keys = ("upload", "download", "allow_paths", "deny_paths", "max_size", "blocked_extensions", "approval",
            "quarantine_days")
    f = node.fields(keys)
    upload = f["upload"].flag() if "upload" in f else False
    download = f["download"].flag() if "download" in f else False
    if not (upload or download):
        raise node.error("expected upload: true or download: true (a transfer block allowing neither "
                         "allows nothing; remove it instead)")
    allow = tuple(_transfer_path(item) for item in f["allow_paths"].items()) if "allow_paths" in f else ("/",)
    if not allow:
        raise f["allow_paths"].error("expected at least one path (leave allow_paths out to allow every path)")
    max_size = None
    if "max_size" in f:
        size = f["max_size"]
        max_size = size.integer() if size.node.tag.endswith(":int") else size.parse(parse_size)
    return TransferRule(
        upload=upload, download=download, allow_paths=allow,
        deny_paths=tuple(_transfer_path(item) for item in f["deny_paths"].items()) if "deny_paths" in f else (),
        max_size=max_size,
        blocked_extensions=tuple(_extension(item) for item in f["blocked_extensions"].items())
        if "blocked_extensions" in f else (),
        approval=f["approval"].flag() if "approval" in f else False,
        quarantine_days=f["quarantine_days"].integer() if "quarantine_days" in f else None,
    )
