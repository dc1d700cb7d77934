"""The bastion's policy side of a SQL session: what the wire proxy asks before and after each statement.

One :class:`PolicyInspector` per client connection. It judges each message
with the guardrails of the policy that granted access, masks results with that
policy's masking rules, and writes one audit event per statement (and a marker
in the session's recording when a statement is refused).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from policies.approvals import RequestKind, State
from policies.guardrails import DEFAULT_RULE, Verdict, evaluate
from policies.masking import Column as MaskColumn
from policies.masking import ColumnPlan, Masker
from policies.model import Identity, Policy, StatementEffect
from policies.pgtypes import mask_binary
from policies.sql import ShapeCache, SqlError, Statement, has_parameters, resolve_execute
from recorders.asciicast import Header
from recorders.store import Recording
from recorders.tap import SessionTap

from .audit import AuditStore
from .config import Config, TargetConfig
from .errors import BastionError
from .proxies.base import Column, RowMasker, StatementEvent, StatementVerdict, Upstream
from .proxies.links import ChannelLink, Link
from .proxies.pgclient import PgClient
from .proxies.postgres import serve_client

if TYPE_CHECKING:
    from .approvals import Approvals
    from .runtime import Runtime

log = logging.getLogger(__name__)

MAX_AUDITED_SQL = 8192
MAX_NAMED = 10_000  # statement names one connection is followed by (drivers name each new statement)
MAX_VERDICTS = 1024  # verdicts one connection keeps by statement shape: an application's hot statements
SHAPES = ShapeCache()  # shared by every session: classification is pure, and apps repeat their statements
REVIEW_UNAVAILABLE = "approvals are not available on this path, so the statement was not run"


@dataclass
class _PlanMasker:
    """A :class:`RowMasker` for one result shape; notes which columns it really changed."""

    masker: Masker
    plan: ColumnPlan
    names: tuple[str, ...] = ()
    changed: set[str] | None = None

    def __post_init__(self) -> None:
        self._watched = frozenset(self.names[i] for i in self.plan.masked_columns if i < len(self.names))

    def text_row(self, values: list[bytes | None]) -> list[bytes | None]:
        masked, count = self.masker.mask_row_text(self.plan, values)
        # Once every maskable column is noted (until the console resets the set), rows skip this.
        if count and self.changed is not None and not self._watched <= self.changed:
            self.changed.update(self.names[i] for i in self.plan.masked_columns if masked[i] != values[i])
        return masked

    def text_cells(self) -> tuple[tuple[int, Callable[[bytes], bytes]], ...]:
        cells = self.plan.text_cells
        if self.changed is None:
            return cells
        return tuple((i, self._noting(i, mask)) for i, mask in cells)

    def _noting(self, index: int, mask: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
        """``mask``, noting its column in ``changed`` when it changes a value (as text_row does)."""
        changed = self.changed
        if changed is None or index >= len(self.names):
            return mask
        name = self.names[index]

        def noting(value: bytes) -> bytes:
            new = mask(value)
            if name not in changed and new != value:
                changed.add(name)
            return new
        return noting

    def binary_value(self, index: int, type_oid: int, value: bytes) -> bytes | None:
        result = mask_binary(type_oid, value, self.masker, self.plan, index)
        if result != value and self.changed is not None:
            self.changed.add(self.names[index])
        return result

    def free_text(self, text: str) -> str:
        return self.masker.mask_free_text(text)


def masker_for_policy(config: Config, policy: Policy) -> Masker | None:
    """The Masker of a policy's masking rules, or None when it has none."""
    if not policy.masking:
        return None
    secret = config.masking.hash_key
    # Without hash rules the key is never used; the loader requires one when a rule hashes.
    key = hashlib.sha256(secret.resolve().encode()).digest() if secret else secrets.token_bytes(32)
    return Masker(policy.masking, hash_key=key, custom_detectors=config.masking.detectors)


class PolicyInspector:
    """Guardrails, masking and audit for one SQL client connection."""

    def __init__(self, *, config: Config, store: AuditStore, identity: Identity, target: str, policy: Policy,
                 session: str, source: str, mark: Callable[[str], None] | None = None,
                 on_event: Callable[[StatementEvent], None] | None = None,
                 approvals: Approvals | None = None, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._approvals = approvals
        self._clock = clock
        self._told: set[str] = set()  # decided requests this client has already been told about
        self._identity = identity
        self._target = target
        self._policy = policy
        self._session = session
        self._source = source
        self._mark = mark
        self._on_event = on_event
        self._masker = masker_for_policy(config, policy)
        # Which parameter binds to which column is not worked out yet, so when a policy masks
        # by column, bound values are not audited at all rather than risk storing one.
        self._redact_params = any(rule.columns for rule in policy.masking)
        self._prepared: dict[str, Statement] = {}  # SQL PREPAREs whose body is certain, by name
        self._named: set[str] = set()  # every name a PREPARE or protocol Parse gave a body, this session
        self._every_name_named = False  # more than MAX_NAMED were: EXECUTE of any name is opaque
        self._verdicts: dict[str, StatementVerdict] = {}  # by shape key; see ShapeCache.classify_shape
        self.masked_columns: set[str] = set()  # columns whose values masking changed, since the last reset

    # -- Inspector ----------------------------------------------------------------

    def check(self, sql: str, *, extended: bool = False) -> StatementVerdict:
        """Judge one Query or Parse message (several statements in it are judged together)."""
        if self._store.failure is not None:  # nothing runs that could not be audited
            return StatementVerdict(StatementEffect.DENY, "bastion",
                                    "the audit trail cannot be written right now, so nothing runs; try again shortly")
        shape = SHAPES.shape(sql)
        if shape is not None:
            known = self._verdicts.get(shape[0])
            if known is not None:
                return known
        try:
            classified, key = SHAPES.classify_shape(sql, shape)
            statements = [resolve_execute(s, self._prepared) for s in classified]
        except SqlError as e:
            return StatementVerdict(StatementEffect.DENY, "unparsable",
                                    f"the SQL could not be parsed, so it is not allowed ({e}); check the syntax")
        if self._masker is not None and self._masker.by_column and any("copy_to" in s.kinds for s in statements):
            # COPY's output is lines without columns: only detectors could run over them, not column rules.
            return StatementVerdict(StatementEffect.DENY, "masking",
                                    f"policy {self._policy.name} masks by column, which COPY ... TO output "
                                    "cannot honour; SELECT the rows instead (results are masked there)")
        verdict = evaluate(self._policy.guardrails, statements)
        if verdict.effect is StatementEffect.REVIEW and any(s.kind == "cursor" for s in statements):
            # An approval runs its statement once; a cursor's query runs again for every row fetched again.
            return StatementVerdict(StatementEffect.DENY, verdict.rule,
                                    f"{verdict.reason}; a statement held for review cannot be a cursor "
                                    "(its query would run again on every fetch): send the query itself")
        if verdict.effect is StatementEffect.REVIEW:
            held = self._held(sql, self._approval_text(sql, classified), verdict, extended=extended)
            if held.allowed:
                self._track_prepared(statements)
                return replace(held, redefines=_redefined(statements))
            return held
        if verdict.effect is StatementEffect.ALLOW:
            self._track_prepared(statements)
        decided = StatementVerdict(verdict.effect, verdict.rule or DEFAULT_RULE, verdict.reason,
                                   redefines=_redefined(statements) if verdict.effect is StatementEffect.ALLOW
                                   else frozenset())
        if key is not None:
            # Same shape, same guardrail verdict (never a review: approvals are per text and change).
            if len(self._verdicts) >= MAX_VERDICTS:
                self._verdicts.clear()
            self._verdicts[key] = decided
        return decided

    def _approval_text(self, sql: str, classified: list[Statement]) -> str:
        """What an approval covers: the SQL, and the body each EXECUTE in it runs in this session.

        An approval of ``EXECUTE x`` alone would cover whatever ``x`` is in any
        session; with the bodies, the reviewer reads what runs, and only that.
        """
        names = sorted({name for s in classified for name in s.executes if name in self._prepared})
        return sql + "".join(f"\n-- {name} is: {self._prepared[name].text}" for name in names)

    def _held(self, sql: str, text_approved: str, verdict: Verdict, *, extended: bool) -> StatementVerdict:
        """A statement a guardrail holds: run it on its approval, else file (or point at) its request."""
        rule, approvals = self._policy.approval, self._approvals
        if rule is None or approvals is None:
            return StatementVerdict(StatementEffect.REVIEW, verdict.rule,
                                    f"{verdict.reason}; {REVIEW_UNAVAILABLE}")
        if extended and has_parameters(sql):
            # A reviewer approves the text they read; values bound later would ride on that approval.
            return StatementVerdict(StatementEffect.REVIEW, verdict.rule,
                                    f"{verdict.reason}; a statement held for review cannot take bound parameters: "
                                    "send it with its values written in (psql, the console or `sql`)")
        user, now, text = self._identity.user, self._clock(), text_approved.encode("utf-8", "surrogateescape")
        used = approvals.consume_statement_approval(user, self._target, text, now)
        if used is not None:
            return StatementVerdict(StatementEffect.ALLOW, f"request {used.id}",
                                    f"approved by {', '.join(sorted(used.approvers))}", request=used.id)
        latest = approvals.latest_statement(user, self._target, text)
        if latest is not None and latest.state is State.PENDING and now < latest.expires:
            return StatementVerdict(StatementEffect.REVIEW, verdict.rule,
                                    f"{verdict.reason}; request {latest.id} waits for an approver", request=latest.id)
        if latest is not None and latest.state in (State.DENIED, State.EXPIRED) and latest.id not in self._told:
            self._told.add(latest.id)  # said once; sending it again files a new request
            why = latest.decision_reason or "no reason given"
            by = f" by {latest.decided_by}" if latest.decided_by else ""
            return StatementVerdict(StatementEffect.DENY, verdict.rule,
                                    f"request {latest.id} was {latest.state.value}{by}: {why}")
        try:
            request = approvals.file_request(
                rule, requester=user, target=self._target, kind=RequestKind.STATEMENT, now=now, statement=text,
                reason=f"held by {verdict.rule}: {verdict.reason}", policy=self._policy.name, session=self._session)
        except BastionError as e:
            return StatementVerdict(StatementEffect.DENY, verdict.rule, f"{verdict.reason}; cannot file a request: {e}")
        if self._mark is not None:
            self._mark(f"statement held on {self._target} as request {request.id}")
        return StatementVerdict(StatementEffect.REVIEW, verdict.rule,
                                f"{verdict.reason}; filed request {request.id} for an approver; once it is approved, "
                                "send exactly the same statement again", request=request.id)

    def masker_for(self, columns: Sequence[Column]) -> RowMasker | None:
        """A masker for this result shape, or None when nothing in it is masked."""
        if self._masker is None:
            return None
        if not columns:
            return _PlanMasker(self._masker, self._masker.plan([]))
        plan = self._masker.plan([MaskColumn(c.table, c.name, c.source) for c in columns])
        if plan.empty:
            return None
        return _PlanMasker(self._masker, plan, tuple(c.name for c in columns), self.masked_columns)

    def audit(self, event: StatementEvent) -> None:
        """One audit event per statement; refusals also go into the recording."""
        verdict = event.verdict
        self._store.defer(
            "sql.statement", user=self._identity.user, source=self._source, target=self._target,
            session=self._session, rule=verdict.rule, outcome=verdict.effect.value,
            sql=event.sql[:MAX_AUDITED_SQL],
            params=[None if p is None else "[REDACTED]" for p in event.params] if self._redact_params
            else list(event.params),
            rows=event.rows,
            duration=round(event.duration, 6), error=event.error,
            reason=None if verdict.allowed else verdict.reason)
        if not verdict.allowed and self._mark is not None:
            self._mark(f"statement {verdict.effect.value} by {verdict.rule} on {self._target}")
        if self._on_event is not None:
            self._on_event(event)

    # -- prepared statements ------------------------------------------------------------

    def forget(self, name: str) -> None:
        self._name(name)
        self._prepared.pop(name, None)

    def _name(self, name: str) -> None:
        """Note a name given a body; past MAX_NAMED names, every name counts as given one (set kept bounded)."""
        if self._every_name_named:
            return
        self._named.add(name)
        if len(self._named) > MAX_NAMED:
            self._named.clear()
            self._prepared.clear()
            self._every_name_named = True  # EXECUTE of it is opaque now, which guardrails refuse unless allowed

    def _track_prepared(self, statements: list[Statement]) -> None:
        # Recorded when judged, not when the server confirms; so a name is mapped only while its body is
        # certain. A PREPARE of a name already mapped may fail on the server (a duplicate) and leave the old
        # body there, approved or not: such a name is dropped, and EXECUTE of it is opaque from then on.
        for statement in statements:
            if statement.deallocates_all:
                self._prepared.clear()
            for name in statement.deallocates:
                self._prepared.pop(name, None)
            if statement.prepares and statement.prepared is not None:
                name = statement.prepares
                if name in self._prepared or name in self._named or self._every_name_named:
                    self._prepared.pop(name, None)
                else:
                    self._prepared[name] = statement.prepared
                self._name(name)


def _redefined(statements: list[Statement]) -> frozenset[str] | None:
    """The prepared-statement names these statements define or drop; None when they drop every name."""
    if any(s.deallocates_all for s in statements):
        return None
    return frozenset(name for s in statements for name in (*s.deallocates, *([s.prepares] if s.prepares else [])))


# -- opening SQL access for a session ---------------------------------------------------


def upstream_for(target: TargetConfig) -> Upstream:
    """How the proxy logs in to a target: the bastion's own credentials, resolved now."""
    if target.user is None:
        raise BastionError(f"target {target.name} has no user configured; ask an administrator")
    password = target.password.resolve() if target.password is not None else ""
    return Upstream(host=target.address.host, port=target.address.port, user=target.user, password=password,
                    database=target.database, name=target.name)


@dataclass
class SqlAccess:
    """What one session needs to reach a SQL target through the proxy."""

    runtime: Runtime
    identity: Identity
    target: TargetConfig
    policy: Policy
    session: str
    source: str
    mark: Callable[[str], None] | None = None
    grant: str | None = None  # the approved grant this access runs under, if its policy needs one

    def inspector(self, on_event: Callable[[StatementEvent], None] | None = None) -> PolicyInspector:
        """A fresh inspector for one client connection."""
        return PolicyInspector(config=self.runtime.config, store=self.runtime.store, identity=self.identity,
                               target=self.target.name, policy=self.policy, session=self.session,
                               source=self.source, mark=self.mark, on_event=on_event,
                               approvals=self.runtime.approvals, clock=self.runtime.clock)

    async def console_client(self) -> PgClient:
        """A connected in-process client, for the console and `sql` commands. Raises BastionError."""
        inspector = self.inspector()
        client = PgClient(self.target.name, upstream_for(self.target), inspector, f"{self.session}/{self.target.name}",
                          masked_names=lambda: inspector.masked_columns)
        try:
            await client.connect(self.identity.user, self.target.database)
        except ConnectionError as e:
            await client.close()
            raise BastionError(f"cannot open {self.target.name}: {e}") from e
        return client

    def forward_channel(self) -> ChannelLink:
        """The session of an `ssh -L` channel to this target: served once asyncssh has opened it."""
        return ChannelLink(on_open=lambda link: self.runtime.background(
            self.serve_forward(link), f"forwarded connection {self.session} to {self.target.name}"))

    async def serve_forward(self, client: Link) -> None:
        """Serve a native client (psql, drivers, GUIs) that reached us with `ssh -L`; record a transcript."""
        runtime = self.runtime
        assert runtime.recordings is not None
        header = Header(width=120, height=40, timestamp=int(runtime.clock()),
                        title=f"{self.identity.user} -> {self.target.name} (forwarded)")
        recording = runtime.recordings.open(self.session, user=self.identity.user, target=self.target.name,
                                            header=header)
        transcript = SessionTap(recording.writer, redact_echo_off=False)
        runtime.taps.add(transcript)
        transcript.marker(f"forwarded connection to {self.target.name} from {self.source}")

        def record(event: StatementEvent) -> None:
            transcript.output(_transcript_lines(event).encode())

        def end(why: str) -> None:  # the grant ended: so does this forwarded connection
            runtime.store.append("session.cut", user=self.identity.user, source=self.source, target=self.target.name,
                                 session=self.session, outcome="ended", reason=why)
            transcript.marker(f"forward ending: {why}")
            client.abort()  # at once: a client that stopped reading must not keep the session (and its locks)

        release = runtime.hold_grant(self.grant, end) if self.grant is not None else None
        try:
            upstream = upstream_for(self.target)
            await serve_client(client, upstream, self.inspector(on_event=record),
                               session_label=f"{self.session}/{self.target.name}")
        except BastionError as e:
            log.warning("forward to %s refused: %s", self.target.name, e)
            client.close()
        finally:
            if release is not None:
                release()
            transcript.marker("forwarded connection closed")
            runtime.taps.discard(transcript)
            await asyncio.to_thread(_seal, transcript, recording)
            runtime.store.append("recording.closed", user=self.identity.user, session=self.session,
                                 target=self.target.name)


def _seal(tap: SessionTap, recording: Recording) -> None:
    tap.close()
    recording.close()


def _transcript_lines(event: StatementEvent) -> str:
    """How one statement of a forwarded session reads in its recording."""
    verdict = event.verdict
    if not verdict.allowed:
        summary = f"-- {verdict.effect.value} by {verdict.rule}: {verdict.reason}"
    elif event.error:
        summary = f"-- error: {event.error}"
    else:
        summary = f"-- {', '.join(event.tags) or 'ok'} ({event.duration * 1000:.1f} ms)"
    return f"{event.sql.rstrip().rstrip(';')};\r\n{summary}\r\n\r\n".replace("\n", "\r\n").replace("\r\r\n", "\r\n")
