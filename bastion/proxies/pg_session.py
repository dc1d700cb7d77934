"""One PostgreSQL proxy session after login: two relays that inspect, mask and audit.

The client relay judges every Query and Parse before forwarding it, and notes
in a queue (:class:`~.pg_state.Pending`) what response each forwarded message
will get. The target relay walks that queue as responses arrive, so it knows
which result each row belongs to, masks rows and messages, sends the proxy's
own refusals in their turn, and writes one audit event per statement.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from policies.model import StatementEffect
from policies.sql import reads_alike_under_any_string_syntax

from . import pgwire as w
from .base import HELD_DETAIL, Inspector, RowMasker, StatementEvent, StatementVerdict, Upstream
from .links import Link
from .pg_batch import AFTER_CODE_RAN, CURSOR_VERDICT, QUERY_IN_BATCH, may_copy_in, name_problem
from .pg_chunks import Gather, write_chunk
from .pg_results import LostTrack, ResultRelay
from .pg_state import Await, Pending, Portal, Statement, render_params
from .pg_upstream import UpstreamConnection

SQLSTATE_DENIED = "42501"   # insufficient_privilege: what clients already know as "not allowed"
SQLSTATE_HELD = "BH001"     # the bastion's own class: held for review, waiting for an approver
# What a server in copy-in mode takes; it ignores Sync and Flush there, and ends the COPY on anything else.
_COPY_MESSAGES = frozenset({w.COPY_DATA, w.COPY_DONE, w.COPY_FAIL})
_COPY_TRAFFIC = _COPY_MESSAGES | {w.SYNC, w.FLUSH}
_EXTENDED = frozenset({w.PARSE, w.BIND, w.DESCRIBE, w.EXECUTE, w.CLOSE})


class PgSession(ResultRelay):
    """The relays of one client connection and the state they share.

    Both relays run from their links' callbacks (:meth:`Link.divert`): each
    chunk is framed, judged and forwarded in the ``data_received`` that
    brought it. A relay that must wait (the client or the target not taking
    more, a result shape whose table names are looked up) pauses its source's
    reading and resumes it when the wait is over.
    """

    def __init__(self, client: Link, conn: UpstreamConnection, upstream: Upstream,
                 inspector: Inspector, logger: logging.LoggerAdapter, *,  # type: ignore[type-arg]
                 max_message: int = w.DEFAULT_MAX_MESSAGE) -> None:
        super().__init__(client, conn, upstream, inspector, logger)
        self.client = client
        self.max_message = max_message
        self.statements: dict[str, Statement] = {}
        self.portals: dict[str, Portal] = {}
        self.discarding = False      # after our own refusal in the extended protocol: drop until Sync
        self.batch_executes = 0      # Executes forwarded since the last Sync: a refusal must undo them
        # A Bind or Execute was forwarded since the last Sync: either may run a function (an Execute's, a
        # trigger's, a domain check's, one folded by the planner), and a function can change how the server
        # reads SQL with set_config(). PostgreSQL says so only at Sync, so what is parsed before must read alike.
        self.batch_ran_code = False
        self.batch_open = False      # an extended-protocol message was forwarded since the last Sync
        self.poison = f"bastion-refused-{secrets.token_hex(8)}"  # a statement name that never exists
        self.terminated = False
        self._client_buf = Gather()
        self._client_holds: set[str] = set()  # why the client's reading is paused: "target"/"client" full, "ready"
        self._awaiting_ready = False  # a batch (Query, Sync) was forwarded and its ReadyForQuery has not come
        self._copy_in = False         # the target reads COPY data, until the client's CopyDone or CopyFail
        # An Execute that may start COPY FROM STDIN, not answered yet. What the client sends after it waits: a
        # Sync reaching a server in copy-in mode is ignored, one reaching it after the COPY failed is answered,
        # and which of the two happens is known only from the answer.
        self._awaiting_copy: Pending | None = None
        self.client_consumer: Callable[[bytes], None] = self._client_data  # as run() guards it

    async def run(self) -> None:
        """Relay both ways until either side closes; raise what ended it abnormally."""
        self.done = done = asyncio.get_running_loop().create_future()
        self.target_consumer = self._guarded(self.target_data)
        self.client_consumer = self._guarded(self._client_data)
        self.client.divert(self.client_consumer, self._ended("client"))
        self.conn.link.divert(self.target_consumer, self._ended("target"))
        try:
            await done
        finally:
            self.client.stop()
            self.conn.link.stop()
            self.cancel_waits()

    def _guarded(self, relay: Callable[[bytes], None]) -> Callable[[bytes], None]:
        done = self.done
        assert done is not None, "guarded consumers are made when the session runs"

        def consume(data: bytes) -> None:
            if done.done():
                return
            try:
                relay(data)
            except Exception as e:  # noqa: BLE001 - raised by run(), in the session's task, not in the transport
                self.finish(e)
        return consume

    def _ended(self, side: str) -> Callable[[BaseException | None], None]:
        def ended(error: BaseException | None) -> None:
            # Either peer leaving ends the session, as a closed stream did; why is worth a line, not a trace.
            log = self.log.info if side == "target" else self.log.debug
            log("the %s closed the connection%s", side, f" ({error})" if error else "")
            self.finish()
        return ended

    # ---- client -> target -------------------------------------------------------------------

    def _client_data(self, data: bytes) -> None:
        buf = self._client_buf.add(data)
        if buf is None:
            return  # a large message, still arriving
        up = self.conn.link
        msgs, rest = w.frames(buf, 0, self.max_message)
        out: list[bytes] = []
        seg = 0
        for typ, start, end in msgs:
            if (self._awaiting_ready or self._awaiting_copy) and not (self._copy_in and typ in _COPY_TRAFFIC):
                # One batch at a time: a statement may change how the server reads the next one (a function
                # that calls set_config(), say), and the target says so only with its ReadyForQuery.
                rest = start - 5
                self._hold_client("ready")
                break
            if typ == w.COPY_DATA and self._copy_in and not self.discarding:
                continue
            repl = self._client_message(typ, buf[start:end])
            if repl is not None:
                out.append(buf[seg:start - 5])
                out.append(repl)
                seg = end
            if self.terminated:
                rest = end
                break
        write_chunk(up, buf, out, seg, rest)
        if self.terminated:
            self.log.debug("client terminated the session")
            self.finish()
            return
        self._client_buf.keep(buf, rest)
        # Stop reading the client while the target takes no more, or while the client itself does not
        # read what we answer (refusals are ours: a client that pipelines them must not fill our memory).
        for side, link in (("target", up), ("client", self.client)):
            if link.write_paused and side not in self._client_holds:
                self._hold_client(side)
                link.when_writable(functools.partial(self._release_client, side))

    def portals_dropped(self) -> None:
        # Forgotten here too: a cursor DECLAREd under a dropped portal's name must not be audited as its SQL.
        self.portals.clear()

    def batch_done(self, status: bytes) -> None:
        """The target is ready for the next batch: relay what waited for it."""
        if status == b"I":
            # No transaction is open: the server has dropped every portal a Bind made (none is holdable).
            # A name kept here would lend its SQL to a cursor DECLAREd under it later, in the audit trail.
            self.portals.clear()
        if not self._awaiting_ready:
            return
        self._awaiting_ready = False
        if "ready" in self._client_holds:
            self._release_client("ready")

    def copy_in_started(self, head: Pending) -> None:
        """The target reads COPY data for ``head``: let the client's through, and nothing else until it ends."""
        if head.kind is Await.EXECUTE and head is not self._awaiting_copy:
            # Only an Execute we let nothing pass behind may start one: else a Sync may have gone ahead.
            raise LostTrack("the target started a COPY the proxy did not expect")
        self._copy_in = True
        self._awaiting_copy = None
        self._resume()

    def answered(self, item: Pending | None) -> None:
        """The target answered ``item`` (None: nothing more before ReadyForQuery); no COPY goes on."""
        self._copy_in = False
        if self._awaiting_copy is not None and (item is None or item is self._awaiting_copy):
            self._awaiting_copy = None
            self._resume()

    def _resume(self) -> None:
        """Relay what waited for an answer; what must still wait is held again as it comes up."""
        if "ready" in self._client_holds:
            self._release_client("ready")

    def _hold_client(self, why: str) -> None:
        if not self._client_holds:
            self.client.pause_reading()
        self._client_holds.add(why)

    def _release_client(self, why: str) -> None:
        self._client_holds.discard(why)
        if not self._client_holds:
            self.client.resume_reading()
            # Messages kept while held go first, after the chunk being relayed now (new ones queue behind).
            asyncio.get_running_loop().call_soon(self.client_consumer, b"")

    def _client_message(self, typ: int, body: bytes) -> bytes | None:
        """Handle one client message: None forwards it as is; bytes replace it (b"" drops it)."""
        if self._copy_in and typ in (w.SYNC, w.FLUSH):
            return b""  # a server in copy-in mode ignores both; one that has just left it must not answer late
        if typ in _COPY_MESSAGES:
            if not self._copy_in or self.discarding:
                # A server that reads no COPY data ignores them; and a COPY we did not see start must not
                # run to its end (and commit) before the session can notice.
                return b""
            if typ != w.COPY_DATA:
                self._copy_in = False
            return None
        if self.discarding and typ not in (w.SYNC, w.TERMINATE):
            return b""
        if typ in _EXTENDED:
            self.batch_open = True
        if typ == w.PARSE:
            return self._on_parse(body)
        if typ == w.BIND:
            return self._on_bind(body)
        if typ == w.EXECUTE:
            return self._on_execute(body)
        if typ == w.DESCRIBE:
            kind, name = w.parse_target(body)
            if (problem := self._name_problem(name)) is not None:
                return self._refuse_extended(self.refuse(f"<describe {name}>", problem))
            if kind == "S":
                self.push(Pending(Await.DESCRIBE_S, statement=self.statements.get(name)))
            else:
                self.push(Pending(Await.DESCRIBE_P, portal=self.portals.get(name)))
            return None
        if typ == w.SYNC:
            self.discarding = self.batch_open = self.batch_ran_code = False
            self.batch_executes = 0
            self.push(Pending(Await.SYNC))
            self._awaiting_ready = True
            return None
        if typ == w.QUERY:
            return self._on_query(body)
        if typ == w.CLOSE:
            kind, name = w.parse_target(body)
            if (problem := self._name_problem(name)) is not None:
                return self._refuse_extended(self.refuse(f"<close {name}>", problem))
            if kind == "S":
                self.statements.pop(name, None)
                self.inspector.forget(name)
            else:
                self.portals.pop(name, None)
            self.push(Pending(Await.CLOSE))
            return None
        if typ == w.FLUSH:
            return None
        if typ == w.TERMINATE:
            self.terminated = True
            return None
        if typ == w.FUNCTION_CALL:
            verdict = StatementVerdict(StatementEffect.DENY, "bastion",
                                       "fast-path function calls cannot be inspected")
            if self.batch_open:
                return self._refuse_extended(self.refuse("<function call>", verdict))
            self.local(self.refuse("<function call>", verdict))
            self.push(Pending(Await.SYNC))
            self._awaiting_ready = True
            return w.SYNC_MESSAGE
        raise w.ProtocolError(f"unexpected message type {chr(typ)!r} from the client")

    def _check(self, sql: str, *, extended: bool = False) -> StatementVerdict:
        try:
            return self.inspector.check(sql, extended=extended)
        except Exception:  # broad on purpose: a failing policy engine must refuse, not crash the session
            self.log.exception("the inspector failed; the statement is refused")
            return StatementVerdict(StatementEffect.DENY, "bastion", "the statement could not be checked")

    def _check_parse(self, sql: str) -> StatementVerdict:
        if self.batch_ran_code and not reads_alike_under_any_string_syntax(sql):
            return AFTER_CODE_RAN
        return self._check(sql, extended=True)

    def _on_query(self, body: bytes) -> bytes | None:
        sql = w.parse_query(body)
        if self.batch_open:
            # The server would run it inside that batch, after whatever the batch ran, and answer it only if
            # nothing in the batch failed: no driver does this, and a proxy cannot follow it. As if it failed.
            return self._refuse_extended(self.refuse(sql, QUERY_IN_BATCH))
        verdict = self._check(sql)
        self._awaiting_ready = True
        if verdict.allowed:
            self._forget(verdict)
            self.push(Pending(Await.QUERY, sql=sql, verdict=verdict, started=time.monotonic()))
            return None
        self.local(self.refuse(sql, verdict))
        # A Sync instead of the Query: the target answers with ReadyForQuery and its true status.
        self.push(Pending(Await.SYNC))
        return w.SYNC_MESSAGE

    def _name_problem(self, *names: str) -> StatementVerdict | None:
        return name_problem(names, after_code=self.batch_ran_code)

    def _forget(self, verdict: StatementVerdict) -> None:
        """SQL that PREPAREs or DEALLOCATEs names runs now: what we knew by those names is no longer so."""
        names = verdict.redefines
        if names is None:
            self.statements.clear()
        else:
            for name in names:
                self.statements.pop(name, None)

    def _on_parse(self, body: bytes) -> bytes | None:
        name, sql, oids = w.parse_parse(body)
        verdict = self._name_problem(name) or self._check_parse(sql)
        if verdict.allowed:
            if name:
                self.inspector.forget(name)  # SQL EXECUTE of this name runs this body from now on
            # A statement that ran on an approval is bound once: the approval covers one execution.
            statement = Statement(sql, verdict, oids, binds_left=1 if verdict.request else None)
            # Always a fresh, undescribed entry: a stale shape would mask new rows with old columns.
            # If the target refuses the Parse (a duplicate name), the undo puts the old entry back.
            previous = self.statements.get(name)
            self.statements[name] = statement
            self.push(Pending(Await.PARSE, statement=statement,
                              undo=lambda: self._restore(self.statements, name, previous)))
            return None
        if name == "":
            self.statements.pop("", None)
        return self._refuse_extended(self.refuse(sql, verdict))

    def _on_bind(self, body: bytes) -> bytes | None:
        bind = w.parse_bind(body)
        if (problem := self._name_problem(bind.portal, bind.statement)) is not None:
            return self._refuse_extended(self.refuse(f"<bind {bind.statement}>", problem))
        statement = self.statements.get(bind.statement)
        if statement is None:
            verdict = StatementVerdict(StatementEffect.DENY, "bastion",
                                       f'prepared statement "{bind.statement}" was not prepared through the bastion')
            return self._refuse_extended(self.refuse(f"<bind {bind.statement}>", verdict, sqlstate="26000"))
        if statement.binds_left is not None:
            if statement.binds_left <= 0:
                verdict = StatementVerdict(StatementEffect.DENY, statement.verdict.rule,
                                           f"request {statement.verdict.request} approved one execution, "
                                           "which has run; file a new request to run it again")
                return self._refuse_extended(self.refuse(statement.sql, verdict))
            statement.binds_left -= 1
        params = render_params(bind.params, bind.param_formats, statement.param_oids)
        portal = Portal(statement.sql, statement.verdict, statement, self.masked_params(params), bind.result_formats)
        previous = self.portals.get(bind.portal)
        self.portals[bind.portal] = portal  # fresh and undescribed, for the same reason as in _on_parse
        self.batch_ran_code = True
        self.push(Pending(Await.BIND, portal=portal,
                          undo=lambda: self._restore(self.portals, bind.portal, previous)))
        return None

    @staticmethod
    def _restore(table: dict[str, Any], name: str, previous: Any) -> None:
        if previous is None:
            table.pop(name, None)
        else:
            table[name] = previous

    def _on_execute(self, body: bytes) -> bytes | None:
        name, _ = w.parse_execute(body)
        if (problem := self._name_problem(name)) is not None:
            return self._refuse_extended(self.refuse(f"<execute {name}>", problem))
        portal = self.portals.get(name)
        if portal is None:
            # A cursor DECLAREd in SQL (that statement passed inspection) can be fetched with Execute.
            portal = Portal(f"<cursor {name}>", CURSOR_VERDICT, None)
        # Rows are masked by the columns the target states for this very portal, asked right before it runs
        # (the answer stays with us): SQL can redefine a name behind our back (DEALLOCATE and PREPARE,
        # CLOSE and DECLARE), and the shape remembered for it would then mask the wrong columns.
        self.push(Pending(Await.DESCRIBE_P, portal=portal, internal=True))
        execute = Pending(Await.EXECUTE, portal=portal, sql=portal.sql, verdict=portal.verdict,
                          params=portal.params, started=time.monotonic())
        self.push(execute)
        self._forget(portal.verdict)
        self.batch_executes += 1
        self.batch_ran_code = True
        forwarded = w.describe_message("P", name) + w.message(w.EXECUTE, body)
        if may_copy_in(portal.sql) and not self.skipping:  # (skipping: the target will not run it at all)
            # Its answer must come now, not at the next Flush or Sync: those wait for it.
            self._awaiting_copy = execute
            return forwarded + w.FLUSH_MESSAGE
        return forwarded

    # ---- refusals ---------------------------------------------------------------------------

    def refuse(self, sql: str, verdict: StatementVerdict, *, sqlstate: str | None = None) -> bytes:
        """Audit a refused statement; return the ErrorResponse that tells the client why."""
        # Held only while a request waits; review without one (approvals unavailable) is a plain refusal.
        held = verdict.effect == StatementEffect.REVIEW and verdict.request is not None
        review = verdict.effect == StatementEffect.REVIEW
        text = f"{'held for review' if review else 'denied'} by {verdict.rule}: {verdict.reason}"
        self.log.info("refused a statement (%s by %s)", verdict.effect, verdict.rule)
        self.audit(StatementEvent(sql, verdict, error=text))
        if held:
            return w.error_response(sqlstate or SQLSTATE_HELD, text, detail=f"{HELD_DETAIL}{verdict.request}")
        return w.error_response(sqlstate or SQLSTATE_DENIED, text)

    def _refuse_extended(self, reply: bytes) -> bytes:
        """Refuse inside an extended-protocol batch: discard up to Sync, as the server would after an error.

        When the batch already ran an Execute, the target must see an error too,
        so that its implicit transaction rolls back as the client expects: we
        describe a statement that cannot exist, and send our refusal in place of
        the target's complaint.
        """
        self.discarding = True
        if not self.batch_executes:
            self.local(reply)
            return b""
        self.push(Pending(Await.DESCRIBE_S, internal=True, reply=reply))
        return w.describe_message("S", self.poison)

    def masked_params(self, params: tuple[str | None, ...]) -> tuple[str | None, ...]:
        """Bound values through the free-text masker, for the audit trail."""
        free: RowMasker | None = self.free
        if free is None or not params:
            return params
        return tuple(None if p is None else free.free_text(p) for p in params)

