"""The bastion daemon: one process serving SSH and HTTP until told to stop."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path

import asyncssh
from aiohttp import web

from recorders.errors import RecorderError
from recorders.remote import RecorderProcess
from recorders.store import RecordingStore, load_signing_key

from .approvals import Approvals, Change
from .approvals_view import load
from .audit import AuditStore
from .config import Config
from .errors import StateError
from .http import make_app
from .keys import KeyPaths, load_keys
from .oidc import OidcVerifier
from .runtime import Runtime
from .server import start_ssh_server
from .webhooks import WebhookNotifier, WebhookSettings

log = logging.getLogger(__name__)


class Daemon:
    """Owns the listeners and the runtime; ``start`` then ``stop``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.runtime: Runtime | None = None
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._http: web.AppRunner | None = None
        self._verifier: OidcVerifier | None = None
        self.http_port = 0
        self._flusher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load keys and the audit store, then listen for SSH and HTTP."""
        config = self.config
        keys = load_keys(config.state_dir, config.host_names)
        store = AuditStore(config.state_dir / "audit.db")
        runtime = self.runtime = Runtime(config=config, keys=keys, store=store)
        recorder = RecorderProcess(loop=asyncio.get_running_loop())
        runtime.recordings = RecordingStore(
            config.state_dir / "recordings", store.db,
            signing_key=load_signing_key(KeyPaths(config.state_dir).audit_key),
            # Sidecars render the whole session through pyte: in a daemon thread that starves the
            # event loop (GIL), so `recorder` builds them when first needed instead.
            sidecars_at_close="lazy",
            # Cast files are encoded and written by a child process: off this loop, and out of its GIL.
            recorder=recorder)
        for session_id in await asyncio.to_thread(runtime.recordings.recover):
            store.append("recording.interrupted", session=session_id, outcome="interrupted",
                         reason="the bastion stopped while the session was open")
            log.warning("recording %s was interrupted by a crash; sealed as it stood", session_id)
        try:
            recorder.start()
        except RecorderError as e:  # sessions will be refused, each with its reason, until it starts
            log.error("%s", e)
        await self._start_approvals(runtime)
        self._flusher = asyncio.get_running_loop().create_task(self._flush_recordings())
        self._verifier = OidcVerifier(config.identity.oidc, config.identity.machine_issuers)
        try:
            self._acceptor = await start_ssh_server(runtime)
            runtime.ssh_port = self._acceptor.sockets[0].getsockname()[1]
            self._http = web.AppRunner(make_app(runtime, self._verifier), access_log=None)
            await self._http.setup()
            site = web.TCPSite(self._http, config.listen.http.host, config.listen.http.port)
            await site.start()
        except OSError as e:
            await self.stop()
            raise StateError(f"cannot listen: {e.strerror or e}") from e
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else config.listen.http.port
        store.append("daemon.started", ssh=f"{config.listen.ssh.host}:{runtime.ssh_port}",
                     http=f"{config.listen.http.host}:{self.http_port}", pid=os.getpid())
        log.info("listening: ssh %s:%d, http %s:%d (event loop: %s)", config.listen.ssh.host, runtime.ssh_port,
                 config.listen.http.host, self.http_port, type(asyncio.get_running_loop()).__module__)

    async def _start_approvals(self, runtime: Runtime) -> None:
        """Requests and grants, their webhooks, and the notice lines in approvers' shells."""
        approvals = runtime.approvals = Approvals(runtime.store, clock=runtime.clock)
        settings = self.config.approvals
        urls = settings.webhook_urls()
        if urls:
            runtime.notifier = WebhookNotifier(WebhookSettings(
                urls=urls, link=settings.link, retries=settings.retries, backoff=settings.backoff,
                max_backoff=settings.max_backoff, timeout=settings.timeout, queue_size=settings.queue_size,
                include_statement=settings.include_statement))
            await runtime.notifier.start()
            approvals.add_listener(runtime.notifier.on_change)

        def tell_shells(change: Change) -> None:
            if not runtime.notice_boards:
                return
            _, rule = load(approvals, change.request.id)
            for board in list(runtime.notice_boards):
                board(change, rule)

        approvals.add_listener(tell_shells)

    async def _flush_recordings(self) -> None:
        """Write buffered recording events at least once per flush interval; end revoked sessions and grants."""
        assert self.runtime is not None
        runtime, interval = self.runtime, self.config.recording.flush_interval
        while True:
            await asyncio.sleep(interval)
            self._end_revoked(runtime)
            try:
                self._end_grants(runtime)
            except Exception:  # a failing check must not stop recordings from being flushed
                log.exception("checking grants failed")
            for tap in list(runtime.taps):
                try:
                    tap.tick()
                    tap.writer.flush()
                except (OSError, RecorderError) as e:  # its session is ended (on_failure); the others go on
                    log.error("cannot flush a recording: %s", e)

    async def stop(self) -> None:
        """Stop listening, end open sessions (sealing their recordings), close the store."""
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        if self.runtime is not None:
            await self._end_connections(self.runtime)
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        if self.runtime is not None and self.runtime.recordings is not None:
            await asyncio.to_thread(self.runtime.recordings.close)  # the worker writes what is left, then exits
        if self._http is not None:
            await self._http.cleanup()
            self._http = None
        if self._verifier is not None:
            await self._verifier.close()
            self._verifier = None
        if self.runtime is not None and self.runtime.notifier is not None:
            await self.runtime.notifier.close(5.0)  # the requests are in the store whatever it could not send
            self.runtime.notifier = None
        if self.runtime is not None:
            self.runtime.store.append("daemon.stopped", pid=os.getpid())
            self.runtime.store.close()
            self.runtime = None

    @staticmethod
    def _end_grants(runtime: Runtime) -> None:
        """A session never outlives its grant: expire what is due, end the uses of grants that ended."""
        approvals = runtime.approvals
        if approvals is None:
            return
        now = runtime.clock()
        approvals.expire_due(now)
        for grant_id in approvals.ended_among(set(runtime.grant_uses), now):
            grant = approvals.grant(grant_id)
            why = (f"grant {grant_id} was revoked by {grant.revoked_by}"
                   + (f": {grant.revoke_reason}" if grant.revoke_reason else "")
                   if grant.revoked_at is not None else f"grant {grant_id} for {grant.target} has expired")
            for end in list(runtime.grant_uses.pop(grant_id, ())):
                end(why)

    @staticmethod
    def _end_revoked(runtime: Runtime) -> None:
        """A session never outlives a revocation: end live connections whose certificate was revoked."""
        live = {h.auth.cert.serial: h for h in runtime.connections if h.auth is not None}
        for serial in runtime.store.revoked_among(set(live)):
            handler = live[serial]
            if handler.closing_reason is None:
                handler.end("revoked", f"certificate serial {serial} was revoked",
                            user_message="your certificate has been revoked; this session is over.")

    @staticmethod
    async def _end_connections(runtime: Runtime) -> None:
        for handler in list(runtime.connections):
            if handler.auth is not None:
                handler.end("shutdown", "the bastion is shutting down",
                            user_message="the bastion is shutting down; connect again in a moment.")
            elif handler.conn is not None:
                handler.conn.disconnect(asyncssh.DISC_BY_APPLICATION, "the bastion is shutting down")
        deadline = asyncio.get_running_loop().time() + 5
        while (runtime.connections or runtime.tasks) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        if runtime.tasks:
            log.warning("%d background tasks still running at shutdown", len(runtime.tasks))

    def write_ready_file(self, path: Path) -> None:
        """Write the bound ports as JSON, for orchestration and tests that listen on port 0."""
        assert self.runtime is not None
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"ssh_port": self.runtime.ssh_port, "http_port": self.http_port,
                                   "pid": os.getpid()}))
        os.replace(tmp, path)


async def until_stopped() -> None:
    """Return once SIGINT or SIGTERM arrives."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve(config: Config, ready_file: Path | None = None) -> None:
    """Run until SIGINT or SIGTERM."""
    daemon = Daemon(config)
    await daemon.start()
    if ready_file is not None:
        daemon.write_ready_file(ready_file)
    try:
        await until_stopped()
    finally:
        log.info("stopping")
        await daemon.stop()
