"""The target-to-client half of a PostgreSQL session: place each response, mask it, audit it.

Rows stream through: each chunk read from the target is scanned once, and only
the messages that change (masked rows, masked errors) are rebuilt; every other
byte goes out as it came in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from . import pg_freetext as ft
from . import pg_handshake as hs
from . import pg_rows
from . import pgwire as w
from .base import Inspector, NotAllowed, ProxyError, RowMasker, StatementEvent, Upstream
from .links import Link
from .pg_chunks import Gather, write_chunk
from .pg_state import Await, Pending, Result, Shape
from .pg_upstream import UPSTREAM_MAX_MESSAGE, TableNames, UpstreamConnection, column_of, refuse_string_syntax

MAX_SHAPES = 1024
NOT_RUN = "not executed: an earlier message of the same pipeline failed"
_UNSET: object = object()


class LostTrack(ProxyError):
    """The target's responses do not match what was forwarded; masking could no longer be trusted."""

    sqlstate = "08P01"


class ResultRelay:
    """Relays the target's responses in the order the client expects them."""

    def __init__(self, writer: Link, conn: UpstreamConnection, upstream: Upstream,
                 inspector: Inspector, logger: logging.LoggerAdapter) -> None:  # type: ignore[type-arg]
        self.client_writer = writer
        self.conn = conn
        self.inspector = inspector
        self.log = logger
        self.tables = TableNames(upstream, logger)
        self.conn_label = upstream.label
        self.pending: deque[Pending] = deque()
        self.skipping = False        # the target reported an extended-protocol error: it skips to Sync
        self.undos: list[Callable[[], None]] = []  # Parse/Bind the target refused or skipped, in order
        self.result: Result | None = None
        self.copy_masking = False
        self.shapes: dict[bytes, Shape] = {}
        self._free: object = _UNSET
        self._after: list[bytes] = []  # our own replies that follow the message being relayed
        self._target_buf = Gather()
        self._learning: asyncio.Task[None] | None = None  # a result shape's table names being looked up
        self._held: list[bytes] = []   # the target's chunks waiting for that lookup
        self._holds: set[str] = set()  # why the target's reading is paused: "client" full, "shape" lookup
        self.target_consumer: Callable[[bytes], None] = self.target_data  # as the session guards it
        self.done: asyncio.Future[None] | None = None  # set while the session runs; finish() resolves it

    def close(self) -> None:
        """Release what the session holds besides its two streams."""
        self.tables.close()

    @property
    def free(self) -> RowMasker | None:
        """The session's free-text masker (errors, notices, COPY lines, audited values), fetched once."""
        if self._free is _UNSET:
            self._free = self.inspector.masker_for(())
        return self._free  # type: ignore[return-value]

    # ---- the response queue -----------------------------------------------------------------

    def push(self, item: Pending) -> None:
        """Expect a response for a message just forwarded (called by the client relay)."""
        self.pending.append(item)

    def local(self, reply: bytes) -> None:
        """Send one of our own replies as soon as everything before it has been relayed."""
        if self.pending:
            self.pending.append(Pending(Await.LOCAL, reply=reply))
        elif not self.skipping:  # the target is discarding up to Sync: so would a real server
            self.client_writer.write(reply)

    def _pop(self) -> Pending:
        pending = self.pending
        item = pending.popleft()
        while pending and pending[0].kind is Await.LOCAL:
            reply = pending.popleft().reply
            if not self.skipping:
                self._after.append(reply)
        return item

    def _head(self, *kinds: Await) -> Pending:
        if self.pending and self.pending[0].kind in kinds:
            return self.pending[0]
        seen = self.pending[0].kind.name if self.pending else "nothing"
        raise LostTrack(f"the target's response does not match the request (expected {seen})")

    def audit(self, event: StatementEvent) -> None:
        """Hand one event to the inspector; an audit trail that fails closes the session."""
        try:
            self.inspector.audit(event)
        except Exception as e:  # broad on purpose: whatever broke, nothing may run unaudited
            self.log.exception("the audit trail failed; closing the session")
            raise ProxyError("the bastion could not record this statement; the session is closed") from e

    def _finish(self, item: Pending) -> None:
        if item.verdict is None:
            return
        counts = [n for n in map(w.rows_from_tag, item.tags) if n is not None]
        self.audit(StatementEvent(item.sql, item.verdict, item.params, sum(counts) if counts else None,
                                  tuple(item.tags), time.monotonic() - item.started, item.error))

    # ---- the relay --------------------------------------------------------------------------

    def target_data(self, data: bytes) -> None:
        """Relay the target's messages in one chunk (the target link's consumer)."""
        if self._learning is not None:
            self._held.append(data)  # arrived while a result's table names are looked up: in order, after
            return
        buf = self._target_buf.add(data)
        if buf is None:
            return  # a large message, still arriving
        client = self.client_writer
        msgs, rest = w.frames(buf, 0, UPSTREAM_MAX_MESSAGE)
        out: list[bytes] = []
        seg = 0
        for typ, start, end in msgs:
            if typ == w.DATA_ROW:
                result = self.result or self._begin_rows()
                if result.masker is None:
                    continue
                if result.all_text:
                    repl = pg_rows.mask_cells(buf, start, end, len(result.formats), result.cells)
                else:
                    repl = self._mask_row(result, buf, start, end)
            elif typ == w.ROW_DESCRIPTION:
                body = buf[start:end]
                if body not in self.shapes:
                    # Flush first: our own replies must not overtake what came before this.
                    out.append(buf[seg:start - 5])
                    client.write(b"".join(out))
                    self._learn(body, buf[start - 5:])
                    return
                repl = self._row_description(self.shapes[body])
            else:
                repl = self._message(typ, buf[start:end])
            if self._after:
                repl = (buf[start - 5:end] if repl is None else repl) + b"".join(self._after)
                self._after.clear()
            if repl is not None:
                out.append(buf[seg:start - 5])
                out.append(repl)
                seg = end
        write_chunk(client, buf, out, seg, rest)
        self._target_buf.keep(buf, rest)
        if client.write_paused and "client" not in self._holds:  # the client takes no more: nor do we
            self._hold_target("client")
            client.when_writable(lambda: self._release_target("client"))

    def _learn(self, body: bytes, rest: bytes) -> None:
        """Look up a new result shape's table names; then relay ``rest`` (from its RowDescription on)."""
        self._hold_target("shape")
        self._held = [rest]

        async def learn() -> None:
            try:
                await self._learn_shape(body)
            except Exception as e:  # noqa: BLE001 - raised by the session's run(), as any relay error
                self.finish(e)
                return
            self._learning = None
            held, self._held = self._held, []
            consume = self.target_consumer
            for i, chunk in enumerate(held):
                consume(chunk)  # may start another lookup: what is left goes on waiting behind it
                if self._learning is not None:
                    self._held.extend(held[i + 1:])
                    return
            self._release_target("shape")

        self._learning = asyncio.get_running_loop().create_task(learn())

    def _hold_target(self, why: str) -> None:
        if not self._holds:
            self.conn.link.pause_reading()
        self._holds.add(why)

    def _release_target(self, why: str) -> None:
        self._holds.discard(why)
        if not self._holds:
            self.conn.link.resume_reading()

    def cancel_waits(self) -> None:
        """The session is over: stop a lookup still running."""
        if self._learning is not None:
            self._learning.cancel()
            self._learning = None

    def batch_done(self, status: bytes) -> None:
        """The target answered a batch with ReadyForQuery, in transaction ``status`` (the session goes on)."""

    def copy_in_started(self, head: Pending) -> None:
        """The target reads COPY data for ``head`` now (the session lets it through)."""

    def portals_dropped(self) -> None:
        """The target may have dropped portals the client bound (a transaction ended, a cursor closed)."""

    def answered(self, item: Pending | None) -> None:
        """The target finished answering ``item``; None: it answers nothing more before ReadyForQuery.

        Either way it is not reading COPY data (any more).
        """

    def finish(self, error: BaseException | None = None) -> None:
        """End the session: normally, or with the error that ended it (the session's run() raises it)."""
        done = self.done
        if done is not None and not done.done():
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

    async def _learn_shape(self, body: bytes) -> None:
        fields = w.parse_row_description(body)
        oids = {f.table_oid for f in fields if f.table_oid}
        tables = (self.tables.cached(oids) or await self.tables.resolve(oids)) if oids else {}
        columns = tuple(column_of(f, tables.get(f.table_oid)) for f in fields)
        if len(self.shapes) >= MAX_SHAPES:
            self.shapes.clear()
        self.shapes[body] = Shape(fields, columns, self.inspector.masker_for(columns))

    def _row_description(self, shape: Shape) -> bytes | None:
        head = self._head(Await.QUERY, Await.DESCRIBE_S, Await.DESCRIBE_P)
        if head.kind is Await.QUERY:
            self.result = shape.as_described
            return None
        self._pop()
        if head.kind is Await.DESCRIBE_S:
            if head.statement is not None:
                head.statement.shape = shape
            return None
        if head.portal is not None:
            head.portal.shape = shape
        return b"" if head.internal else None

    def _begin_rows(self) -> Result:
        portal = self._head(Await.EXECUTE).portal
        if portal is None or portal.shape is None:  # the session describes every portal it executes
            raise LostTrack("rows arrived for a result the proxy could not describe")
        self.result = portal.shape.as_described
        return self.result

    def _mask_row(self, result: Result, buf: bytes, start: int, end: int) -> bytes | None:
        """A row with binary cells (text-only rows take :func:`~.pgwire.mask_cells`)."""
        masker = result.masker
        assert masker is not None
        values = pg_rows.split_datarow(buf, start, end)
        if len(values) != len(result.formats):
            raise LostTrack("a row does not match its RowDescription")
        formats = result.formats
        new = list(masker.text_row([None if f else v for v, f in zip(values, formats, strict=True)]))
        for i, f in enumerate(formats):
            value = values[i]
            if f:
                new[i] = None if value is None else masker.binary_value(i, result.oids[i], value)
        if len(new) != len(values):
            raise ProxyError("the masker changed the number of columns")
        return pg_rows.replace_cells(buf, start, end, values, new)

    def _message(self, typ: int, body: bytes) -> bytes | None:
        """Track and rewrite one response other than rows and row descriptions."""
        if typ == w.COMMAND_COMPLETE:
            self.result, self.copy_masking = None, False
            head = self._head(Await.QUERY, Await.EXECUTE)
            tag = w.parse_tag(body)
            head.tags.append(tag)
            if tag in _PORTAL_ENDS:
                self.portals_dropped()
            if head.kind is Await.EXECUTE:
                self._finish(self._pop())
            self.answered(head)
            return None
        if typ == w.READY:
            self.result, self.copy_masking = None, False
            self.answered(None)
            self._ready()
            self.batch_done(body)
            return None
        if typ in _SIMPLE_ACKS:
            self._pop_expected(_SIMPLE_ACKS[typ])
            return None
        if typ == w.ERROR:
            return self._error(body)
        if typ == w.NOTICE:
            return ft.mask_fields(typ, body, self.free)
        if typ == w.NOTIFICATION:
            return ft.mask_notification(body, self.free)
        if typ == w.PARAMETER_STATUS:
            name, value = hs.parse_parameter_status(body)
            try:
                refuse_string_syntax(self.conn_label, name, value)
            except ProxyError as e:
                raise NotAllowed(str(e)) from e  # statements after this point would be misread: end the session
            return None
        if typ == w.COPY_IN:
            self.copy_in_started(self._head(Await.EXECUTE, Await.QUERY))
            return None
        if typ in (w.PARAM_DESCRIPTION, w.FUNCTION_RESULT):
            return None
        if typ == w.COPY_DATA:
            return ft.mask_copy_line(body, self.free) if self.copy_masking else None
        if typ == w.COPY_DONE:
            self.copy_masking = False
            return None
        if typ == w.NO_DATA:
            head = self._head(Await.DESCRIBE_S, Await.DESCRIBE_P)
            self._pop()
            empty = Shape((), (), None)
            if head.statement is not None:
                head.statement.shape = empty
            if head.portal is not None:
                head.portal.shape = empty
            return b"" if head.internal else None
        if typ in (w.EMPTY_QUERY, w.PORTAL_SUSPENDED):
            self.result = None
            head = self._head(Await.QUERY, Await.EXECUTE)
            if head.kind is Await.EXECUTE:
                self._finish(self._pop())
                self.answered(head)
            return None
        if typ == w.COPY_OUT:
            self._copy_out(body)
            return None
        if typ == w.COPY_BOTH:
            raise NotAllowed("replication streams are not supported through the bastion")
        raise w.ProtocolError(f"the target sent an unexpected message {chr(typ)!r}")

    def _pop_expected(self, kind: Await) -> None:
        self._head(kind)
        self._pop()

    def _ready(self) -> None:
        if self.skipping:
            # The target skipped everything up to this Sync; so do we, refusals included.
            while self.pending and self.pending[0].kind is not Await.SYNC:
                item = self.pending.popleft()
                if item.undo is not None:
                    self.undos.append(item.undo)
                if item.kind in (Await.EXECUTE, Await.QUERY):
                    item.error = NOT_RUN
                    self._finish(item)
            self.skipping = False
            while self.undos:  # newest first, so a name reused in the batch ends as it was before it
                self.undos.pop()()
        head = self._head(Await.SYNC, Await.QUERY)
        self._pop()
        if head.kind is Await.QUERY:
            self._finish(head)

    def _error(self, body: bytes) -> bytes | None:
        self.answered(None)  # the target now skips to Sync (or ends the Query); a COPY ends at once
        fields = w.parse_fields(body)
        masked = ft.mask_field_values(fields, self.free)
        text = dict(masked).get("M", "")
        self.result, self.copy_masking = None, False
        head = self.pending[0] if self.pending else None
        if head is None or head.kind is Await.SYNC:
            pass  # an error outside any statement (shutdown, a failed COMMIT at Sync): relay it
        elif head.kind is Await.QUERY:
            head.error = head.error or text
        else:
            # Extended protocol: the target now discards everything up to Sync, our refusals included.
            self.skipping = True
            item = self._pop()
            if item.undo is not None:
                self.undos.append(item.undo)
            if item.kind is Await.EXECUTE:
                item.error = text
                self._finish(item)
            elif item.internal and item.reply:
                return item.reply  # the error we provoked to roll back a refused batch: say why instead
        return None if masked is fields else w.build_fields(w.ERROR, masked)

    def _copy_out(self, body: bytes) -> None:
        overall, _ = w.parse_copy_response(body)
        if self.free is None:
            return
        if overall != 0:
            raise NotAllowed("binary COPY output cannot be masked; use COPY ... TO STDOUT with text or csv format")
        self.copy_masking = True


# Command tags after which portals bound earlier may be gone on the server while its transaction status
# does not say so: CLOSE p and CLOSE ALL, COMMIT or ROLLBACK followed by BEGIN, ROLLBACK TO a savepoint.
_PORTAL_ENDS = frozenset({"CLOSE CURSOR", "CLOSE CURSOR ALL", "COMMIT", "ROLLBACK", "PREPARE TRANSACTION",
                          "DISCARD ALL"})
_SIMPLE_ACKS = {w.PARSE_COMPLETE: Await.PARSE, w.BIND_COMPLETE: Await.BIND, w.CLOSE_COMPLETE: Await.CLOSE}
