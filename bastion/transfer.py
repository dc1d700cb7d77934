"""The SFTP/scp gateway: a virtual tree whose ``/`` lists SSH targets and whose ``/web-1/...`` is that host.

A session channel that asks for the ``sftp`` subsystem, or runs ``scp`` (legacy
``scp -O``), is handed to :class:`~bastion.transfer_channel.TransferChannel`,
which runs asyncssh's own SFTP or SCP server code over :class:`TransferGateway`.
OpenSSH 9's ``scp`` speaks SFTP, so all three clients meet the same policy code.

Inside ``ssh -J`` (``sftp -J bastion web-1``) the gateway is rooted at that one
target (:attr:`GatewayContext.root`): the client's ``/tmp/x`` is ``/web-1/tmp/x``
here, its relative paths start at the host's home, and everything below is the
same code, so the same policy, hashing, caps, approvals and audit apply.

The gateway never touches the bastion's own filesystem: every method of
:class:`asyncssh.SFTPServer` is overridden, and what is not supported is refused.
Each target is reached through one upstream SFTP client per session, opened on
first use with the injected :data:`UpstreamOpener` and closed with the session.

Before the first byte of a file crosses, policy decides on the path the client
sent *and* on the path the host resolves (so a symbolic link cannot lead out of
an allowed prefix). While it crosses, it is hashed and capped. When it is done,
one ``transfer`` audit event and one recording marker say who moved what, where,
how much, its sha256, how long it took and how it ended. A refusal reaches the
client as SFTP permission-denied with the reason, and on stderr, which OpenSSH
prints (its clients show only the status code otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import posixpath
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncssh
from asyncssh.sftp import MAX_SFTP_READ_LEN

from policies.engine import Decision, decide
from policies.model import ApprovalRule, Effect, Identity
from policies.transfer import (
    Direction,
    PathError,
    TransferDecision,
    TransferSpec,
    check,
    check_browse,
    check_change,
    may_transfer_with,
    normalise,
    spec_problem,
)

from .approvals import ApprovalRefused
from .config import TargetConfig
from .errors import BastionError
from .transfer_files import READ_BLOCK_SIZE, Quarantine, QuarantineCopy, Stream
from .transfer_requests import REASON_ENV, TransferRequests

if TYPE_CHECKING:
    from .runtime import Runtime

UpstreamOpener = Callable[[TargetConfig], Awaitable[asyncssh.SSHClientConnection]]
"""Opens an authenticated client connection to an SSH target; raises BastionError with a message to show."""

_DIR = stat.S_IFDIR | 0o555
# Bytes one READ may return. asyncssh's server passes the client's length through unbounded, and the gateway
# fetches what it answers, so one request must not pull gigabytes into the daemon. The bound is what the
# server advertises (limits@openssh.com): asyncssh's clients read 4 MiB at a time, OpenSSH's 255 KiB.
READ_MAX = MAX_SFTP_READ_LEN
_WRITE_FLAGS = asyncssh.FXF_WRITE | asyncssh.FXF_APPEND | asyncssh.FXF_CREAT | asyncssh.FXF_TRUNC


@dataclass
class GatewayContext:
    """What one gateway session knows of its surroundings."""

    runtime: Runtime
    identity: Identity
    session: str
    peer: str
    mark: Callable[[str], None]      # a marker in the session's recording
    notify: Callable[[str], None]    # a line to the client's stderr (recorded as output)
    opener: UpstreamOpener
    root: str | None = None          # one target's name: its / is the client's / (``sftp -J bastion web-1``)


class TransferGateway(asyncssh.SFTPServer):  # type: ignore[misc]
    """The virtual tree: ``/`` lists targets, ``/NAME/...`` is that host, every file checked, hashed and audited."""

    def __init__(self, chan: asyncssh.SSHServerChannel[bytes], ctx: GatewayContext) -> None:
        super().__init__(chan)
        self.ctx = ctx
        self.runtime = ctx.runtime
        self.client_ended = False  # EOF or close from the client: an open file now is an interrupted one
        self.failures = 0
        self.flush_replies: Callable[[], None] = lambda: None  # replies held by the channel's writer, if any
        self._clients: dict[str, asyncssh.SFTPClient] = {}
        self._conns: list[asyncssh.SSHClientConnection] = []
        self._opening: dict[str, asyncio.Lock] = {}
        self._files = 0
        self._home: str | None = None  # the rooted target's realpath of ".", where relative paths start
        approvals = self.runtime.approvals
        self._requests = TransferRequests(approvals) if approvals is not None else None
        self._quarantine = Quarantine(self.runtime.config.state_dir / "quarantine")
        if self._quarantine.root.is_dir():  # copies past their days go as sessions come: no timer of its own
            self.runtime.background(asyncio.to_thread(self._quarantine.purge, self._now()), "purging quarantine")
        self._reason = str(chan.get_environment().get(REASON_ENV, ""))

    # -- paths, targets, policy ------------------------------------------------------

    def _now(self) -> float:
        return self.runtime.clock()

    async def _split(self, path: bytes) -> tuple[str | None, str]:
        """(target name or None for ``/``, path inside the target) of a path the client sent.

        In the virtual tree, relative paths start at ``/``. Rooted at one target
        (``sftp -J bastion web-1``), the client's ``P`` is ``/web-1/P``, and its
        relative paths start where the host's own ``realpath('.')`` says.
        """
        text = _text(path)
        root = self.ctx.root
        if root is not None and not text.startswith("/"):
            text = posixpath.join(await self._home_of(root), text)
        try:
            virtual = normalise(text)  # on its own, so in a rooted session no `..` climbs above the host's /
        except PathError as e:
            raise asyncssh.SFTPInvalidParameter(str(e)) from None
        if root is not None:
            return root, virtual
        if virtual == "/":
            return None, "/"
        name, _, rest = virtual[1:].partition("/")
        return name, "/" + rest

    async def _home_of(self, name: str) -> str:
        """The rooted target's working directory for the bastion's login there, asked once."""
        if self._home is None:
            target, _ = self._access(name)
            client = await self._client(target)
            self._home = normalise(_text(await client.realpath(b".")))
        return self._home

    def _access(self, name: str) -> tuple[TargetConfig, Decision]:
        """The target and the engine's ``transfer`` decision; unknown or hidden targets look absent."""
        target = self.runtime.config.targets.get(name)
        if target is None or target.kind != "ssh":
            raise asyncssh.SFTPNoSuchFile(f"no SSH target named {name}; `ls /` lists the ones you may use")
        decision = decide(self.runtime.config.policies, self.ctx.identity, target.target, "transfer", self._now())
        if not may_transfer_with(decision):
            raise self._refused(name, "/", check_browse(decision, name, "/"), event="transfer.browse",
                                action="target")
        return target, decision

    def _targets(self) -> list[str]:
        """The SSH targets this identity may transfer with, by name."""
        names = []
        for name, target in sorted(self.runtime.config.targets.items()):
            if target.kind == "ssh" and may_transfer_with(
                    decide(self.runtime.config.policies, self.ctx.identity, target.target, "transfer", self._now())):
                names.append(name)
        return names

    def _refused(self, target: str, path: str, decision: TransferDecision, *, event: str | None,
                 **detail: Any) -> asyncssh.SFTPPermissionDenied:
        """A refusal, told to the client (status and stderr) and, unless ``event`` is None, audited and marked."""
        message = f"bastion: {decision.reason}"
        self.ctx.notify(message)
        if event is not None:
            self.failures += 1
            outcome = "pending" if decision.effect is Effect.APPROVAL else "deny"
            self.runtime.store.append(event, user=self.ctx.identity.user, source=self.ctx.peer, target=target,
                                      session=self.ctx.session, rule=decision.rule, outcome=outcome, path=path,
                                      reason=decision.reason, **detail)
            self.ctx.mark(f"{event} {detail.get('direction') or detail.get('action', '')} {target}:{path} "
                          f"{outcome}: {decision.reason}")
        return asyncssh.SFTPPermissionDenied(decision.reason)

    async def _client(self, target: TargetConfig) -> asyncssh.SFTPClient:
        """This session's SFTP client for ``target``, opened on first use."""
        lock = self._opening.setdefault(target.name, asyncio.Lock())
        async with lock:
            client = self._clients.get(target.name)
            if client is not None:
                return client
            try:
                conn = await self.ctx.opener(target)
            except BastionError as e:
                self.ctx.notify(f"bastion: {e}")
                raise asyncssh.SFTPFailure(str(e)) from None
            self._conns.append(conn)
            try:
                client = await conn.start_sftp_client()
            except (asyncssh.Error, OSError) as e:
                raise asyncssh.SFTPFailure(f"{target.name} offers no SFTP: {e}") from None
            self._clients[target.name] = client
            self.ctx.mark(f"transfer: connected to {target.name}")
            return client

    async def _host_path(self, client: asyncssh.SFTPClient, inner: str) -> str:
        """Where ``inner`` really is on the host, links followed, its last component too; for a name that does
        not exist yet, its directory resolved there plus the name."""
        if inner == "/":
            return "/"
        with contextlib.suppress(asyncssh.SFTPError):  # a link as the last component must not escape the policy
            return normalise(_text(await client.realpath(_b(inner))))
        parent, name = posixpath.split(inner)
        try:
            real = await client.realpath(_b(parent))
        except asyncssh.SFTPError:
            return inner  # a missing directory: the operation will fail on the host
        return posixpath.join(normalise(_text(real)), name)

    async def _decided(self, client: asyncssh.SFTPClient, name: str, inner: str,
                       decide_on: Callable[[str], TransferDecision]) -> TransferDecision:
        """The decision for ``inner``, and for where it resolves on the host when that differs (a refusal wins)."""
        first = decide_on(inner)
        if first.effect is Effect.DENY:
            return first
        real = await self._host_path(client, inner)
        if real != inner:
            second = decide_on(real)
            if second.effect is Effect.DENY:
                return TransferDecision(Effect.DENY, second.rule,
                                        f"{second.reason} ({name}:{inner} leads there through a link)")
        return first

    # -- browsing -----------------------------------------------------------------------

    async def realpath(self, path: bytes) -> bytes:
        name, inner = await self._split(path)
        if self.ctx.root is not None:
            return _b(inner)  # the host's own path: the client never sees the virtual tree
        return b"/" if name is None else _b(f"/{name}{inner}".rstrip("/") or "/")

    async def stat(self, path: bytes) -> asyncssh.SFTPAttrs:
        return await self._stat(path, follow=True)

    async def lstat(self, path: bytes) -> asyncssh.SFTPAttrs:
        return await self._stat(path, follow=False)

    async def _stat(self, path: bytes, *, follow: bool) -> asyncssh.SFTPAttrs:
        name, inner = await self._split(path)
        if name is None:
            return _dir_attrs(self._now())
        target, access = self._access(name)
        client = await self._client(target)
        decision = await self._decided(client, name, inner, lambda p: check_browse(access, name, p))
        if not decision.allowed:
            raise self._refused(name, inner, decision, event="transfer.browse", action="stat")
        return await (client.stat(_b(inner)) if follow else client.lstat(_b(inner)))

    async def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
        name, inner = await self._split(path)
        if name is None:
            now = self._now()
            for entry in (".", "..", *self._targets()):
                yield asyncssh.SFTPName(_b(entry), attrs=_dir_attrs(now))
            return
        target, access = self._access(name)
        client = await self._client(target)
        decision = await self._decided(client, name, inner, lambda p: check_browse(access, name, p))
        if not decision.allowed:
            raise self._refused(name, inner, decision, event="transfer.browse", action="list")
        async for found in client.scandir(_b(inner)):
            child = _text(found.filename)
            if child in (".", "..") or check_browse(access, name, posixpath.join(inner, child)).allowed:
                yield found

    def format_user(self, uid: int | None) -> str:
        return str(uid) if uid is not None else "0"  # never the bastion's own account names

    def format_group(self, gid: int | None) -> str:
        return str(gid) if gid is not None else "0"

    # -- files ---------------------------------------------------------------------------

    async def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> Stream:
        writing = bool(pflags & _WRITE_FLAGS)
        direction = Direction.UPLOAD if writing else Direction.DOWNLOAD
        name, inner = await self._split(path)
        if name is None or inner == "/":
            raise asyncssh.SFTPPermissionDenied(
                f"{name}:/ is a directory" if self.ctx.root is not None else
                "files live inside a target's directories: use a path such as /web-1/tmp/file (`ls /` lists targets)")
        if (writing and pflags & asyncssh.FXF_READ) or pflags & asyncssh.FXF_APPEND:
            raise self._refused(name, inner, TransferDecision(
                Effect.DENY, "gateway", "the bastion opens a file either to read it whole or to write it whole "
                "(no append, no read-write)"), event="transfer", direction=direction.value)
        target, access = self._access(name)
        client = await self._client(target)
        size = None
        if writing:
            await self._refuse_link(client, name, inner)
        else:
            # The path first: a stat's "no such file" or "is a directory" would tell what exists outside it.
            by_path = check(access, name, direction, inner)
            if by_path.effect is Effect.DENY:
                raise self._refused(name, inner, by_path, event="transfer", direction=direction.value, bytes=0)
            found = await client.stat(_b(inner))
            if found.type == asyncssh.FILEXFER_TYPE_DIRECTORY:
                raise asyncssh.SFTPFailure(f"{name}:{inner} is a directory")
            size = found.size
        decision = await self._decided(client, name, inner, lambda p: check(access, name, direction, p, size=size))
        if decision.effect is Effect.DENY:
            raise self._refused(name, inner, decision, event="transfer", direction=direction.value, bytes=0)
        spec, request = None, None
        if decision.effect is Effect.APPROVAL:
            spec, request = self._approved(access, name, TransferSpec(direction, inner), decision)
        held = access.policy.approval if decision.effect is Effect.APPROVAL and spec is None and \
            access.policy is not None else None  # an upload only hashed, to file its request at close
        cap = spec.size if spec is not None and direction is Direction.UPLOAD else decision.max_size
        upstream = None
        if held is None:
            upstream = await client.open(_b(inner), pflags | asyncssh.FXF_TRUNC if writing else pflags,
                                         _safe_attrs(attrs), encoding=None,
                                         block_size=-1 if writing else READ_BLOCK_SIZE)
        self._files += 1
        stream = Stream(direction, name, inner, time.monotonic(), cap, upstream, rule=decision.rule, approved=spec,
                        request=request, held=held)
        if decision.quarantine_days and held is None:  # a held upload's bytes go nowhere, not even to disk
            where = self._quarantine.path_for(self._now(), decision.quarantine_days,
                                              f"{self.ctx.session}-{self._files}-{direction.value}-"
                                              f"{posixpath.basename(inner)}")
            stream.copy = QuarantineCopy(where)
        self.ctx.mark(f"transfer {direction.value} {name}:{inner} started ({decision.reason})")
        return stream

    async def _refuse_link(self, client: asyncssh.SFTPClient, name: str, inner: str) -> None:
        with contextlib.suppress(asyncssh.SFTPNoSuchFile):
            found = await client.lstat(_b(inner))
            if found.type == asyncssh.FILEXFER_TYPE_SYMLINK:
                raise self._refused(name, inner, TransferDecision(
                    Effect.DENY, "gateway", f"{name}:{inner} is a symbolic link; the bastion does not write "
                    "through links"), event="transfer", direction=Direction.UPLOAD.value)

    def _approved(self, access: Decision, name: str, asked: TransferSpec, decision: TransferDecision
                  ) -> tuple[TransferSpec | None, str | None]:
        """The approved spec and its request (claimed now), or (None, None) for an upload to hash and hold.

        A download without an approval files its request here and is refused.
        """
        user, now = self.ctx.identity.user, self._now()
        rule = access.policy.approval if access.policy is not None else None
        if self._requests is None or rule is None:
            raise self._refused(name, asked.path, TransferDecision(
                Effect.DENY, decision.rule, f"{decision.reason}, and requests are not available on this bastion"),
                event="transfer", direction=asked.direction.value)
        standing = self._requests.standing(user, name, asked, now)
        if standing.approved is not None:
            request, spec = standing.approved
            if self._requests.claim(request.id, now):
                self.ctx.mark(f"transfer {asked.describe()} on {name} under approved request {request.id}")
                return spec, request.id
        if standing.pending is not None:
            raise self._refused(name, asked.path, TransferDecision(
                Effect.APPROVAL, decision.rule, f"request {standing.pending.id} for {asked.describe()} on {name} "
                "is still waiting for approval; try again once it is approved"),
                event="transfer", direction=asked.direction.value, request=standing.pending.id)
        if asked.direction is Direction.UPLOAD:
            return None, None
        filed = self._file(rule, name, asked, decision.rule)
        raise self._refused(name, asked.path, TransferDecision(
            Effect.APPROVAL, decision.rule, f"{decision.reason}: request {filed} filed; download it again "
            "once it is approved"), event="transfer", direction=asked.direction.value, request=filed)

    def _file(self, rule: ApprovalRule, name: str, spec: TransferSpec, policy: str) -> str:
        """File the request for ``spec``; a refusal (no reason given, say) is refused to the client too."""
        assert self._requests is not None
        try:
            request = self._requests.file(rule, user=self.ctx.identity.user, target=name, spec=spec,
                                          reason=self._reason, policy=policy, session=self.ctx.session,
                                          now=self._now())
        except ApprovalRefused as e:
            raise self._refused(name, spec.path, TransferDecision(Effect.DENY, policy, str(e)),
                                event="transfer", direction=spec.direction.value) from None
        self.ctx.mark(f"request {request.id} filed: {spec.describe()} on {name}")
        return request.id

    @staticmethod
    def _stream(file_obj: object, direction: Direction) -> Stream:
        if not isinstance(file_obj, Stream):
            raise asyncssh.SFTPInvalidParameter("not a file this gateway opened")
        if file_obj.direction is not direction:
            raise asyncssh.SFTPPermissionDenied(f"this file was opened for {file_obj.direction.value}")
        if file_obj.failure is not None:
            raise asyncssh.SFTPPermissionDenied(file_obj.failure)
        return file_obj

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:
        stream = self._stream(file_obj, Direction.DOWNLOAD)
        size = min(size, READ_MAX)
        if stream.cap is not None and size > 0:
            size = max(min(size, stream.cap + 1 - offset), 1)  # one byte past the cap is enough to refuse
        try:
            data = await stream.read(offset, size)
        except asyncssh.SFTPEOFError:
            data = b""
        except (asyncssh.SFTPError, OSError) as e:
            await self._fail(stream, "failed", f"download of {stream.target}:{stream.path} failed: {_why(e)}")
        if data and stream.over_cap(offset, len(data)):  # clients ask past the end: nothing there is no excess
            await self._fail(stream, "deny", f"download refused: {stream.target}:{stream.path} grew past the "
                             f"{stream.cap}-byte limit of policy {stream.rule} while it was read")
        assert stream.hash is not None
        stream.hash.feed(offset, data)
        if stream.copy is not None:
            stream.copy.write(offset, data)
        return data

    async def write(self, file_obj: object, offset: int, data: bytes) -> int:
        stream = self._stream(file_obj, Direction.UPLOAD)
        if stream.over_cap(offset, len(data)):
            limit = (f"larger than the {stream.cap} bytes its approval covers" if stream.approved is not None
                     else f"over the {stream.cap}-byte limit of policy {stream.rule}")
            await self._fail(stream, "deny", f"upload refused: {stream.target}:{stream.path} is {limit}"
                             + ("" if stream.held else "; the partial file was removed"))
        try:
            await stream.write(offset, data)
        except (asyncssh.SFTPError, OSError) as e:
            await self._fail(stream, "failed", f"upload of {stream.target}:{stream.path} failed: {_why(e)}")
        return len(data)

    async def _fail(self, stream: Stream, outcome: str, reason: str) -> None:
        """End a transfer that cannot go on: stop it, remove a partial upload, audit, and raise to the client."""
        stream.failure = reason
        await self._stop(stream)
        await self._finish(stream, outcome, reason)
        self.ctx.notify(f"bastion: {reason}")
        raise asyncssh.SFTPPermissionDenied(reason)

    async def _stop(self, stream: Stream) -> None:
        """Close the upstream file; an upload that did not complete leaves nothing behind on the host."""
        await stream.close_upstream()
        client = self._clients.get(stream.target)
        if stream.direction is Direction.UPLOAD and stream.held is None and client is not None:
            with contextlib.suppress(asyncssh.SFTPError, OSError):  # already gone, or the host went away
                await client.remove(_b(stream.path))

    async def close(self, file_obj: object) -> None:
        if not isinstance(file_obj, Stream) or file_obj.finished:
            return
        stream = file_obj
        if self.client_ended:
            await self._stop(stream)
            await self._finish(stream, "interrupted", "the client went away before closing the file")
            return
        if stream.direction is Direction.DOWNLOAD:
            await stream.close_upstream()
            await self._finish(stream, "ok")
            return
        await self._flushed(stream)
        await self._close_upload(stream)

    async def _close_upload(self, stream: Stream) -> None:
        assert stream.hash is not None
        done = TransferSpec(Direction.UPLOAD, stream.path, stream.crossed, stream.hash.hexdigest())
        if done.sha256 is None:  # a gap or a rewrite: what arrived has no hash to audit or to match an approval
            await self._fail(stream, "deny", f"upload of {stream.target}:{stream.path} refused: it was not written "
                                             "front to back, so its sha256 is unknown; the file was removed")
        if stream.held is not None:  # the bytes were hashed, not sent: file the request that names them
            filed = self._file(stream.held, stream.target, done, stream.rule)
            stream.request = filed
            reason = (f"upload held: request {filed} filed for {done.describe()}; once it is approved, "
                      "upload the same file again")
            stream.failure = reason
            await self._finish(stream, "pending", reason)
            self.ctx.notify(f"bastion: {reason}")
            raise asyncssh.SFTPPermissionDenied(reason)
        problem = spec_problem(stream.approved, done) if stream.approved is not None else None
        if problem is not None:
            await self._fail(stream, "deny", f"upload refused: {problem}; the file was removed")
        try:
            await stream.close_upstream(strict=True)  # a host may report a deferred write error only here
        except (asyncssh.SFTPError, OSError) as e:
            await self._fail(stream, "failed", f"upload of {stream.target}:{stream.path} failed: {_why(e)}")
        await self._finish(stream, "ok")

    async def _finish(self, stream: Stream, outcome: str, reason: str | None = None) -> None:
        """One audit event and one marker per transfer, however it ended."""
        if stream.finished:
            return
        stream.finished = True
        assert stream.hash is not None
        digest = None
        try:
            await stream.hash.settled()  # the hashing thread is shared: wait for it here, never block the loop
            digest = stream.hash.hexdigest()
        finally:  # whatever became of the hash (even a cancelled wait), the transfer is audited
            self._audit(stream, outcome, reason, digest)

    def _audit(self, stream: Stream, outcome: str, reason: str | None, digest: str | None) -> None:
        kept = None
        if stream.copy is not None:
            with contextlib.suppress(OSError):
                kept = str(stream.copy.close(complete=outcome == "ok"))
        if outcome != "ok":
            self.failures += 1
        duration = round(time.monotonic() - stream.started, 3)
        self.runtime.store.append(
            "transfer", user=self.ctx.identity.user, source=self.ctx.peer, target=stream.target,
            session=self.ctx.session, rule=stream.rule, outcome=outcome, path=stream.path,
            direction=stream.direction.value, bytes=stream.crossed, sha256=digest, duration=duration,
            reason=reason, request=stream.request, quarantine=kept)
        self.ctx.mark(f"transfer {stream.direction.value} {stream.target}:{stream.path} {outcome}: "
                      f"{stream.crossed} bytes, sha256 {digest or '-'}, {duration:.3f}s")

    async def fstat(self, file_obj: object) -> asyncssh.SFTPAttrs:
        if not isinstance(file_obj, Stream):
            raise asyncssh.SFTPInvalidParameter("not a file this gateway opened")
        if file_obj.upstream is None:
            return asyncssh.SFTPAttrs(size=file_obj.crossed, permissions=stat.S_IFREG | 0o600)
        return await file_obj.upstream.stat()

    async def fsetstat(self, file_obj: object, attrs: asyncssh.SFTPAttrs) -> None:
        stream = self._stream(file_obj, Direction.UPLOAD)
        if stream.upstream is not None:
            await self._flushed(stream)
            await stream.upstream.setstat(_safe_attrs(attrs))

    async def fsync(self, file_obj: object) -> None:
        stream = self._stream(file_obj, Direction.UPLOAD)
        if stream.upstream is not None:
            await self._flushed(stream)
            await stream.upstream.fsync()

    async def _flushed(self, stream: Stream) -> None:
        """Every write so far is on the host; one that failed fails the transfer (its file has a hole)."""
        try:
            await stream.flush()
        except (asyncssh.SFTPError, OSError) as e:
            await self._fail(stream, "failed", f"upload of {stream.target}:{stream.path} failed: {_why(e)}")

    # -- changes -----------------------------------------------------------------------------

    async def _change(self, action: str, path: bytes, new_path: bytes | None = None
                      ) -> tuple[asyncssh.SFTPClient, str, str, str | None]:
        """Decide a change (and audit a refusal); the client, target, path and new path when allowed."""
        name, inner = await self._split(path)
        new_name, new_inner = await self._split(new_path) if new_path is not None else (name, None)
        if name is None or inner == "/" or new_name is None or new_inner == "/":
            raise asyncssh.SFTPPermissionDenied("the bastion's / and each target's / cannot be changed here")
        if new_name != name:
            raise asyncssh.SFTPOpUnsupported("a rename cannot move a file from one target to another")
        target, access = self._access(name)
        client = await self._client(target)
        if new_inner is None:
            decision = await self._decided(client, name, inner, lambda p: check_change(access, name, action, p))
        else:
            first = await self._decided(client, name, inner, lambda p: check_change(access, name, action, p))
            decision = first if not first.allowed else await self._decided(
                client, name, new_inner, lambda p: check_change(access, name, action, inner, new_name=p))
        if not decision.allowed:
            raise self._refused(name, inner, decision, event="transfer.change", action=action, new_path=new_inner)
        return client, name, inner, new_inner

    def _changed(self, action: str, name: str, inner: str, new_inner: str | None, error: Exception | None) -> None:
        outcome = "ok" if error is None else "failed"
        self.runtime.store.append("transfer.change", user=self.ctx.identity.user, source=self.ctx.peer, target=name,
                                  session=self.ctx.session, outcome=outcome, action=action, path=inner,
                                  new_path=new_inner, reason=None if error is None else _why(error))
        self.ctx.mark(f"transfer {action} {name}:{inner}{f' -> {new_inner}' if new_inner else ''} {outcome}")

    async def _apply(self, action: str, path: bytes,
                     operation: Callable[[asyncssh.SFTPClient], Callable[..., Awaitable[Any]]],
                     new_path: bytes | None = None, *args: Any) -> None:
        client, name, inner, new_inner = await self._change(action, path, new_path)
        call_args = [_b(inner)] + ([_b(new_inner)] if new_inner is not None else []) + list(args)
        try:
            await operation(client)(*call_args)
        except (asyncssh.SFTPError, OSError) as e:
            self._changed(action, name, inner, new_inner, e)
            raise
        self._changed(action, name, inner, new_inner, None)

    async def mkdir(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        await self._apply("mkdir", path, lambda c: c.mkdir, None, _safe_attrs(attrs))

    async def rmdir(self, path: bytes) -> None:
        await self._apply("rmdir", path, lambda c: c.rmdir)

    async def remove(self, path: bytes) -> None:
        await self._apply("remove", path, lambda c: c.remove)

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._apply("rename", oldpath, lambda c: c.rename, newpath)

    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._apply("rename", oldpath, lambda c: c.posix_rename, newpath)

    async def setstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        await self._apply("setstat", path, lambda c: c.setstat, None, _safe_attrs(attrs))

    async def lsetstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        await self._apply("setstat", path, lambda c: functools.partial(c.setstat, follow_symlinks=False), None,
                          _safe_attrs(attrs))

    # -- refused: nothing here may reach the bastion's own filesystem ---------------------------

    def _unsupported(self, what: str) -> asyncssh.SFTPOpUnsupported:
        return asyncssh.SFTPOpUnsupported(f"{what} is not available through the bastion")

    def open56(self, *args: Any) -> Any:
        raise self._unsupported("SFTP version 5 open")

    def readlink(self, path: bytes) -> bytes:
        raise self._unsupported("reading links")

    def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        raise self._unsupported("making links")

    def link(self, oldpath: bytes, newpath: bytes) -> None:
        raise self._unsupported("making links")

    def lock(self, *args: Any) -> None:
        raise self._unsupported("locking")

    def unlock(self, *args: Any) -> None:
        raise self._unsupported("locking")

    def statvfs(self, path: bytes) -> Any:
        raise self._unsupported("df")

    def fstatvfs(self, file_obj: object) -> Any:
        raise self._unsupported("df")

    # -- the end ---------------------------------------------------------------------------------

    async def exit(self) -> None:
        """Close every upstream connection, then send the exit status OpenSSH waits for (0 unless a transfer failed)."""
        for client in self._clients.values():
            client.exit()
        for conn in self._conns:
            conn.close()
            with contextlib.suppress(asyncssh.Error, OSError):
                await conn.wait_closed()
        self._clients.clear()
        self._conns.clear()
        chan = self.channel
        if not chan.is_closing():
            self.flush_replies()  # the last replies before the exit status, never after it
            chan.exit(1 if self.failures else 0)


def _b(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def _text(name: bytes | str) -> str:
    return name if isinstance(name, str) else name.decode("utf-8", "surrogateescape")


def _why(error: BaseException) -> str:
    return str(getattr(error, "reason", "") or error) or type(error).__name__


def _dir_attrs(now: float) -> asyncssh.SFTPAttrs:
    return asyncssh.SFTPAttrs(type=asyncssh.FILEXFER_TYPE_DIRECTORY, size=0, uid=0, gid=0, permissions=_DIR,
                              atime=int(now), mtime=int(now), nlink=2)


def _safe_attrs(attrs: asyncssh.SFTPAttrs) -> asyncssh.SFTPAttrs:
    """Only permission bits (no setuid, setgid or sticky) and times pass upstream; never owners."""
    permissions = attrs.permissions & 0o777 if attrs.permissions is not None else None
    return asyncssh.SFTPAttrs(permissions=permissions, atime=attrs.atime, mtime=attrs.mtime)

