"""Masking of result values: column rules, value detectors and the three strategies.

A ``Masker`` is built once from a policy's masking rules. For each result shape
(a PostgreSQL RowDescription) it makes a ``ColumnPlan`` that says, per column,
whether a column rule masks the whole value or which detectors look inside it.
Rows are then masked against the plan; columns the plan leaves alone are never
decoded. How rules combine, and what a user sees, is in docs/masking.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from .detectors import BUILTIN_DETECTORS, BUILTINS, EMAIL, Detector, DetectorError, custom_detector, is_email_bytes
from .model import MaskingRule
from .pgtypes import ColumnGlob, compile_glob, is_json, looks_like_json, mask_error_details, mask_json_text

__all__ = [
    "BUILTIN_DETECTORS", "REDACTED", "STRATEGIES", "Column", "ColumnPlan", "Masker", "MaskingError",
]

REDACTED = "[REDACTED]"
PARTIAL_PREFIX = "****"
HASH_PREFIX = "hash:"
STRATEGIES: tuple[str, ...] = ("redact", "partial", "hash")
_RANK = {"partial": 0, "hash": 1, "redact": 2}  # when rules disagree, the one that reveals least wins
_REDACTED_BYTES = REDACTED.encode()
_PARTIAL_EMAIL = f"{PARTIAL_PREFIX}@".encode()
_MAYBE_JSON_START = frozenset(b'{["' + b" \t\r\n")
_Finding = tuple[int, int, str, str | None]  # start, end, strategy, detector (None where several overlapped)
_NO_DETECTORS: Mapping[str, str] = MappingProxyType({})
_PLAN_CACHE_SIZE = 256


class MaskingError(ValueError):
    """Masking rules or detectors that cannot be compiled."""


@dataclass(frozen=True)
class Column:
    """A result column: its table ("schema.table", "table", None for none, UNRESOLVED_TABLE when unknown) and name.

    ``source`` is the table column's own name when the result renames it
    (``SELECT email AS x``): rules match either name, so an alias hides
    nothing. UNRESOLVED_COLUMN there means the catalog could not say.
    """

    table: str | None
    name: str
    source: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The names rules are matched against."""
        return (self.name,) if self.source is None or self.source == self.name else (self.name, self.source)


def _encode(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that did not come from undecodable bytes
        return text.encode("utf-8", "surrogatepass")


class _Strategies:
    """The three strategies, with the deployment's hash key."""

    def __init__(self, hash_key: bytes) -> None:
        self._mac = hmac.new(hash_key, digestmod=hashlib.sha256)

    def hash_bytes(self, value: bytes) -> str:
        """``hash:`` and the first 16 hex digits of HMAC-SHA256(key, value)."""
        mac = self._mac.copy()
        mac.update(value)
        return HASH_PREFIX + mac.hexdigest()[:16]

    def apply(self, strategy: str, value: str, email: bool = False) -> str:
        """The masked form of one value or detected substring."""
        if strategy == "hash":
            return self.hash_bytes(_encode(value))
        if strategy == "partial":
            return partial(value, email)
        return REDACTED


def partial(value: str, email: bool = False) -> str:
    """Keep the last 4 letters or digits (an email keeps its domain); 4 or fewer: redact it all."""
    if email:
        return f"{PARTIAL_PREFIX}@{value.rpartition('@')[2]}"
    kept = [ch for ch in value if ch.isalnum()]
    return PARTIAL_PREFIX + "".join(kept[-4:]) if len(kept) > 4 else REDACTED


class _Whole:
    """A column rule: the whole value is replaced."""

    __slots__ = ("_strategies", "strategy")

    def __init__(self, strategy: str, strategies: _Strategies) -> None:
        self.strategy = strategy
        self._strategies = strategies

    def text(self, value: str) -> str:
        """The masked value; a JSON object, array or string stays JSON (the marker as a JSON string)."""
        masked = self._strategies.apply(self.strategy, value, self.strategy == "partial" and _is_email(value))
        return json.dumps(masked) if looks_like_json(value) and is_json(value) else masked

    def raw(self, value: bytes) -> bytes:
        """The masked value of a text-format cell."""
        if not value or value[0] not in _MAYBE_JSON_START:
            if self.strategy == "redact":
                return _REDACTED_BYTES
            if self.strategy == "hash":
                return self._strategies.hash_bytes(value).encode()
            if b"@" in value and is_email_bytes(value):
                return _PARTIAL_EMAIL + value.rpartition(b"@")[2]  # what partial() gives, without the round trip
        return _encode(self.text(value.decode("utf-8", "surrogateescape")))


def _is_email(value: str) -> bool:
    return EMAIL.fullmatch(value) is not None


class _Scan:
    """Detectors run over the value; only what they find is replaced."""

    __slots__ = ("_any", "_runs", "_strategies", "detectors")

    def __init__(self, detectors: tuple[tuple[Detector, str], ...], strategies: _Strategies) -> None:
        self.detectors = detectors
        self._strategies = strategies
        # Most cells hold nothing any detector could match: one search in C says so.
        hints = list(dict.fromkeys(d.hint for d, _ in detectors))
        self._any = re.compile("|".join(hints)).search if all(hints) else None
        self._runs = tuple((re.compile(d.hint).search if d.hint else None, d.find, strategy, d.name)
                           for d, strategy in detectors)

    def spans(self, value: str) -> list[_Finding]:
        """Non-overlapping spans to mask, each with its strategy and detector (None where detectors overlapped)."""
        if self._any is not None and self._any(value) is None:
            return []
        found: list[_Finding] = []
        for hint, find, strategy, detector in self._runs:
            if hint is None or hint(value) is not None:
                found.extend((s, e, strategy, detector) for s, e in find(value))
        if len(found) < 2:
            return found
        found.sort(key=lambda f: (f[0], -f[1]))
        merged = [found[0]]
        for start, end, strategy, name in found[1:]:
            s0, e0, st0, n0 = merged[-1]
            if start < e0:  # overlapping findings are masked as one, by the stricter strategy
                merged[-1] = (s0, max(e0, end), _stricter(st0, strategy), n0 if n0 == name else None)
            else:
                merged.append((start, end, strategy, name))
        return merged

    def text(self, value: str) -> str:
        """The value with every detected substring masked; the same object when nothing was found."""
        spans = self.spans(value)
        if not spans:
            return value
        masked = _replace(value, spans, self._strategies)
        if looks_like_json(value) and not is_json(masked) and is_json(value):
            apply = self._strategies.apply
            return mask_json_text(value, [f[:2] for f in spans], REDACTED,
                                  lambda i, s, e: apply(spans[i][2], value[s:e], spans[i][3] == "email"))
        return masked

    def raw(self, value: bytes) -> bytes:
        """The masked value of a text-format cell; the same object when nothing was found."""
        text = value.decode("utf-8", "surrogateescape")
        masked = self.text(text)
        return value if masked is text else _encode(masked)


def _replace(value: str, spans: Sequence[_Finding], strategies: _Strategies) -> str:
    """The value with each span replaced by its strategy's output."""
    out: list[str] = []
    pos = 0
    for start, end, strategy, name in spans:
        out.append(value[pos:start])
        out.append(strategies.apply(strategy, value[start:end], name == "email"))
        pos = end
    out.append(value[pos:])
    return "".join(out)


_Action = _Whole | _Scan


class ColumnPlan:
    """What masking does to each column of one result shape; made by ``Masker.plan``."""

    __slots__ = ("_actions", "_work", "columns")

    def __init__(self, columns: tuple[Column, ...], actions: tuple[_Action | None, ...]) -> None:
        self.columns = columns
        self._actions = actions
        self._work = tuple((i, a) for i, a in enumerate(actions) if a is not None)

    @property
    def empty(self) -> bool:
        """True when no column can be masked: rows pass untouched."""
        return not self._work

    @property
    def masked_columns(self) -> tuple[int, ...]:
        """Indices of the columns a rule or a detector applies to."""
        return tuple(i for i, _ in self._work)

    @property
    def text_cells(self) -> tuple[tuple[int, Callable[[bytes], bytes]], ...]:
        """(index, masker) of each column that can be masked, in order, for text-format cells.

        A masker takes a cell's bytes and returns the cell to send: the same
        object when nothing in it is masked. What :meth:`Masker.mask_row_text`
        does with a row, cell by cell, for callers that walk the row themselves.
        """
        return tuple((i, a.raw) for i, a in self._work)

    def strategy(self, index: int) -> str | None:
        """The column rule's strategy for the whole value, or None when no column rule applies."""
        action = self._action(index)
        return action.strategy if isinstance(action, _Whole) else None

    def detectors(self, index: int) -> tuple[str, ...]:
        """The detectors that look inside this column's values (none when a column rule applies)."""
        action = self._action(index)
        return tuple(d.name for d, _ in action.detectors) if isinstance(action, _Scan) else ()

    def _action(self, index: int) -> _Action | None:
        return self._actions[index] if 0 <= index < len(self._actions) else None


class Masker:
    """Masks result values by the masking rules of the policies that apply to a session."""

    def __init__(self, rules: Sequence[MaskingRule], *, hash_key: bytes,
                 custom_detectors: Mapping[str, str] = _NO_DETECTORS) -> None:
        self._strategies = _Strategies(hash_key)
        detectors: dict[str, Detector] = dict(BUILTINS)
        for name, pattern in custom_detectors.items():
            try:
                detectors[name] = custom_detector(name, pattern)
            except DetectorError as e:
                raise MaskingError(str(e)) from e
        self._column_rules: list[tuple[tuple[ColumnGlob, ...], str]] = []
        self._scoped: list[tuple[tuple[ColumnGlob, ...], dict[str, str]]] = []
        everywhere: dict[str, str] = {}
        for i, rule in enumerate(rules):
            label = rule.name or f"masking[{i}]"
            if rule.strategy not in STRATEGIES:
                raise MaskingError(f"{label}: strategy {rule.strategy!r} is not one of {', '.join(STRATEGIES)}")
            if rule.strategy == "hash" and len(hash_key) < 16:
                raise MaskingError(f"{label}: the hash strategy needs a hash key of at least 16 bytes")
            if not rule.columns and not rule.detect:
                raise MaskingError(f"{label}: names neither columns nor detectors")
            unknown = [d for d in rule.detect if d not in detectors]
            if unknown:
                raise MaskingError(f"{label}: unknown detector {unknown[0]!r}; known: {', '.join(sorted(detectors))}")
            try:
                globs = tuple(compile_glob(g) for g in rule.columns)
            except ValueError as e:
                raise MaskingError(f"{label}: {e}") from e
            wanted = {d: rule.strategy for d in rule.detect}
            if globs and wanted:
                self._scoped.append((globs, wanted))
            elif globs:
                self._column_rules.append((globs, rule.strategy))
            else:
                _merge(everywhere, wanted)
        self._detectors = detectors
        self._everywhere = everywhere
        self._all_detectors = dict(everywhere)
        for _, wanted in self._scoped:
            _merge(self._all_detectors, wanted)
        self._free = self._scan(self._all_detectors)
        self._rules = tuple(rules)
        self._plans: dict[tuple[Column, ...], ColumnPlan] = {}

    @property
    def active(self) -> bool:
        """False when there are no rules: callers skip masking entirely."""
        return bool(self._rules)

    def _scan(self, wanted: Mapping[str, str]) -> _Scan | None:
        if not wanted:
            return None
        # Sorted, so that the order of findings (and of ColumnPlan.detectors) does not depend on the rules' order.
        return _Scan(tuple((self._detectors[n], wanted[n]) for n in sorted(wanted)), self._strategies)

    @property
    def by_column(self) -> bool:
        """True when some rule applies by column: output without columns (COPY lines) cannot honour it."""
        return bool(self._column_rules or self._scoped)

    def plan(self, columns: Sequence[Column]) -> ColumnPlan:
        """Decide, once per result shape, what masking does to each column."""
        key = tuple(columns)
        cached = self._plans.get(key)
        if cached is not None:
            return cached
        scans: dict[tuple[tuple[str, str], ...], _Scan | None] = {}
        actions: list[_Action | None] = []
        for column in key:
            strategy = None
            names = column.names
            for globs, rule_strategy in self._column_rules:
                if any(g.match(column.table, name) for g in globs for name in names):
                    strategy = _stricter(strategy, rule_strategy)
            if strategy is not None:
                actions.append(_Whole(strategy, self._strategies))
                continue
            wanted = dict(self._everywhere)
            for globs, scoped in self._scoped:
                if any(g.match(column.table, name) for g in globs for name in names):
                    _merge(wanted, scoped)
            signature = tuple(sorted(wanted.items()))
            if signature not in scans:
                scans[signature] = self._scan(wanted)
            actions.append(scans[signature])
        plan = ColumnPlan(key, tuple(actions))
        if len(self._plans) >= _PLAN_CACHE_SIZE:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def mask_text(self, plan: ColumnPlan, index: int, value: str) -> tuple[str, bool]:
        """One column's value, masked by the plan; and whether anything changed."""
        action = plan._action(index)
        if action is None:
            return value, False
        if isinstance(action, _Whole):
            return action.text(value), True
        masked = action.text(value)
        return masked, masked is not value

    def mask_row_text(self, plan: ColumnPlan, values: list[bytes | None]) -> tuple[list[bytes | None], int]:
        """A text-format row (None = NULL), masked by the plan; and how many cells were masked.

        Columns the plan leaves alone are not decoded, and when nothing changes the
        very same list comes back.
        """
        work = plan._work
        if not work:
            return values, 0
        out: list[bytes | None] | None = None
        count = 0
        size = len(values)
        for index, action in work:
            if index >= size:
                break
            value = values[index]
            if value is None:
                continue
            masked = action.raw(value)
            if masked is not value:
                if out is None:
                    out = list(values)
                out[index] = masked
                count += 1
        return (values if out is None else out), count

    def mask_free_text(self, text: str) -> str:
        """Mask a notice, an error message or any other text that may echo values: every detector runs over it.

        PostgreSQL's error details that echo a row or a key ("Failing row contains (…)",
        "Key (email)=(…)") are redacted too when a column rule could cover the values.
        """
        if not self._rules:
            return text
        if self._column_rules or self._scoped:
            text = mask_error_details(text, self._names_a_column, REDACTED)
        return self._free.text(text) if self._free is not None else text

    def _names_a_column(self, name: str) -> bool:
        # The table is not in the message, so any glob's column part counts: mask more, never less.
        return any(g.column.fullmatch(name) for globs, _ in (*self._column_rules, *self._scoped) for g in globs)


def _stricter(a: str | None, b: str) -> str:
    """Of two strategies, the one that reveals less."""
    return b if a is None or _RANK[b] > _RANK[a] else a


def _merge(into: dict[str, str], wanted: Mapping[str, str]) -> None:
    """Add detectors to a set, keeping the stricter strategy where one is named twice."""
    for name, strategy in wanted.items():
        into[name] = _stricter(into.get(name), strategy)
