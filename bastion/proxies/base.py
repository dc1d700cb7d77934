"""What every protocol proxy shares: the upstream it logs in to, and the policy hooks it calls.

A proxy never decides policy. The bastion hands it, per session, an
:class:`Inspector` that judges each statement, supplies maskers for results and
records one :class:`StatementEvent` per statement. The proxy enforces what the
inspector says, in the protocol's own terms.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from bastion.errors import BastionError
from policies.model import StatementEffect

TLS_MODES = ("disable", "require", "verify-full")

class Column(NamedTuple):
    """One result column as maskers see it."""

    table: str | None        # "schema.table"; None for an expression; UNRESOLVED_TABLE when it cannot be named
    name: str                # as the result names it: an alias, if the query gave one
    type_oid: int
    source: str | None = None  # the table column's own name, when it differs from ``name`` (or UNRESOLVED_COLUMN)


class ProxyError(BastionError):
    """A proxy could not serve a connection. The message is safe to show to the client."""

    sqlstate = "58000"


class NotAllowed(ProxyError):
    """The client asked for something the bastion never allows on this path."""

    sqlstate = "42501"


@dataclass(frozen=True)
class Upstream:
    """How the proxy reaches one target. The caller resolves ``password`` from the target's SecretRef."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)  # never logged, never shown: repr() leaves it out
    database: str | None = None
    tls: str = "disable"               # disable | require | verify-full
    ca_file: str | None = None         # verify-full: the CA bundle; None = the system's trust store
    name: str = ""                     # the target's name, for messages ("cannot reach target pg-prod")

    def __post_init__(self) -> None:
        if self.tls not in TLS_MODES:
            raise ProxyError(f"target {self.label}: tls must be one of {', '.join(TLS_MODES)}")

    @property
    def label(self) -> str:
        """How messages name this target: its name, else host:port."""
        return self.name or f"{self.host}:{self.port}"


@dataclass(frozen=True)
class StatementVerdict:
    """The inspector's decision on one statement (or one multi-statement message)."""

    effect: StatementEffect
    rule: str
    reason: str
    request: str | None = None  # review: the request filed for it; allow: the approved request it used
    # Prepared-statement names the statement defines or drops in SQL (PREPARE, DEALLOCATE); None: every name
    # (DEALLOCATE ALL, DISCARD ALL). The proxy forgets what it knew by those names, as the server does.
    redefines: frozenset[str] | None = frozenset()

    @property
    def allowed(self) -> bool:
        """True when the statement may be forwarded."""
        return self.effect is StatementEffect.ALLOW  # identity: a look-alike string is not an allow


@dataclass(frozen=True)
class StatementEvent:
    """What happened to one statement, for the audit trail.

    ``params`` are the bound values of an extended-protocol Execute, as text
    (binary values appear as ``<binary N bytes>``), already passed through the
    session's free-text masker. The inspector's ``audit`` must still redact the
    values bound to masked columns, which only it can map from the parsed SQL.
    """

    sql: str
    verdict: StatementVerdict
    params: tuple[str | None, ...] = ()
    rows: int | None = None             # from the command tag(s): SELECT n, UPDATE n, ...
    tags: tuple[str, ...] = ()          # every command tag the target sent (several for a multi-statement Query)
    duration: float = 0.0               # seconds from forwarding to completion; 0 for refusals
    error: str | None = None            # the target's error message, masked; or why it never ran


class RowMasker(Protocol):
    """Masks the values of one result shape; built by the inspector from its columns."""

    def text_row(self, values: list[bytes | None]) -> list[bytes | None]:
        """Return the row to send: the same list (or equal values) when nothing changes."""
        ...

    def text_cells(self) -> Sequence[tuple[int, Callable[[bytes], bytes]]]:
        """What :meth:`text_row` does, cell by cell: (index, masker) of each column it may change, in order.

        A masker takes a text-format cell and returns the cell to send: the
        same object when it leaves it alone. The bulk path walks rows with these.
        """
        ...

    def binary_value(self, index: int, type_oid: int, value: bytes) -> bytes | None:
        """Return a valid binary encoding for ``type_oid``, the value itself, or None for NULL."""
        ...

    def free_text(self, text: str) -> str:
        """Mask values inside prose: notices, error messages, COPY text lines."""
        ...


HELD_DETAIL = "request "
"""How a held statement's ErrorResponse names its request in the detail field: ``request r-…``."""


class Inspector(Protocol):
    """The bastion's policy side for one session; the proxy calls it and enforces its answers."""

    def check(self, sql: str, *, extended: bool = False) -> StatementVerdict:
        """Judge one Query message (or, ``extended``, one Parse), before anything is forwarded."""
        ...

    def masker_for(self, columns: Sequence[Column]) -> RowMasker | None:
        """A masker for a result with these columns, or None when nothing in it is masked.

        An empty ``columns`` asks for the session's free-text masker: errors,
        notices, COPY OUT lines and audited parameters go through it.
        """
        ...

    def audit(self, event: StatementEvent) -> None:
        """Record one statement's outcome."""
        ...

    def forget(self, name: str) -> None:
        """A protocol Parse or Close of the prepared statement ``name`` went to the server.

        SQL ``EXECUTE name`` now runs whatever the server holds under that name,
        not a body the inspector judged from SQL ``PREPARE``.
        """
        ...


class ConnLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A child logger that prefixes each message with its connection's label."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['label'] if self.extra else '?'}] {msg}", kwargs


def require_loopback(host: str) -> None:
    """Refuse to listen anywhere but loopback: the proxies trust whoever reaches them."""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass  # not an address literal: refused below like any other non-loopback name
    raise ProxyError(f"refusing to listen on {host!r}: proxies listen on loopback only")
