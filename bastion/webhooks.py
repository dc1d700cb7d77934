"""Slack-compatible webhooks for approval requests: queued, retried with backoff, never in a caller's way.

``WebhookNotifier.on_change`` is an ``Approvals`` listener. It only puts the
payload on a bounded queue and returns; a background task POSTs it to every
configured URL, retrying failures with exponential backoff. When the queue is
full the notification is dropped and counted, never the request: that is in
the database already, and ``requests`` shows it.

A webhook URL is a secret (Slack's carries its token in the path), so logs name
only its scheme and host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from policies.approvals import RequestKind, State

from .approvals import Change
from .config_schema import format_duration

log = logging.getLogger(__name__)

NOTIFY = ("request.filed", "breakglass.used")  # the changes an approver must hear about
STATEMENT_PREVIEW = 2000  # characters of a held statement shown in the payload


@dataclass(frozen=True)
class WebhookSettings:
    """Where and how to POST notifications."""

    urls: tuple[str, ...]
    link: str | None = None            # e.g. "https://bastion.example.com/approvals/{id}"
    kinds: tuple[str, ...] = NOTIFY    # which Change kinds are sent
    retries: int = 5                   # attempts after the first
    backoff: float = 1.0               # seconds before the first retry; doubles each time
    max_backoff: float = 60.0
    timeout: float = 10.0              # seconds for one attempt
    queue_size: int = 1000
    concurrency: int = 4               # deliveries in flight at once
    include_statement: bool = True     # show a held statement's text (truncated) to the approvers


@dataclass
class Counters:
    """What the notifier has done since it started, for metrics."""

    queued: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    dropped: int = 0


def redact_url(url: str) -> str:
    """A webhook URL fit for a log line: scheme and host, never the path that carries the token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}/…"


def _escape(text: str) -> str:
    # Slack's mrkdwn control characters: a reason must not turn into <!channel> or a disguised link.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _headline(change: Change) -> str:
    r = change.request
    what = {RequestKind.ACCESS: "access to", RequestKind.TRANSFER: "file transfer with",
            RequestKind.STATEMENT: "to run a held statement on"}[r.kind]
    who, target, reason = _escape(r.requester), _escape(r.target), _escape(r.reason or "no reason given")
    if change.kind == "breakglass.used":
        return (f":rotating_light: BREAK-GLASS: {who} granted themselves {what} {target} "
                f"for {format_duration(r.duration)}: {reason}")
    if change.kind == "request.filed":
        return f"{who} requests {what} {target} for {format_duration(r.duration)}: {reason}"
    return f"Request {r.id} by {who} for {target} is {r.state.value}"


def payload(change: Change, *, link: str | None = None, include_statement: bool = True) -> dict[str, Any]:
    """The JSON body of one notification: Slack's ``text`` and ``blocks``, and the request in ``request``."""
    r = change.request
    url = link.format(id=r.id) if link else None
    text = _headline(change)
    if url and r.state is State.PENDING:
        text += f" <{url}|Approve or deny {r.id}>"
    details: dict[str, Any] = {
        "id": r.id, "kind": r.kind.value, "state": r.state.value, "requester": r.requester, "target": r.target,
        "policy": r.policy, "reason": r.reason, "duration": r.duration, "created": r.created,
        "expires": r.expires, "break_glass": r.break_glass, "approved_by": sorted(r.approvers), "url": url,
    }
    if r.statement is not None and include_statement:
        details["statement"] = r.statement.decode("utf-8", "replace")[:STATEMENT_PREVIEW]
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    if "statement" in details:
        blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                                   "text": f"```{_escape(details['statement'])}```"}})
    if url and r.state is State.PENDING:
        blocks.append({"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Review request"}, "url": url}]})
    return {"text": text, "blocks": blocks, "event": change.kind, "request": details}


class WebhookNotifier:
    """POSTs each notification to every URL from a background task; ``on_change`` never waits."""

    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        self.counters = Counters()
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(settings.queue_size)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Open the HTTP client and start delivering."""
        self._loop = asyncio.get_running_loop()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.timeout))
        self._dispatcher = asyncio.create_task(self._dispatch(), name="webhooks")

    async def close(self, timeout: float = 5.0) -> None:
        """Give queued notifications up to ``timeout`` seconds, then stop and close the client."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)
        tasks = [t for t in (self._dispatcher, *self._deliveries) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def join(self) -> None:
        """Wait until everything queued so far was delivered or given up on."""
        await self._queue.join()

    def on_change(self, change: Change) -> None:
        """The ``Approvals`` listener: queue a notification for the changes approvers must hear about."""
        if change.kind in self.settings.kinds:
            self.submit(payload(change, link=self.settings.link, include_statement=self.settings.include_statement))

    def submit(self, body: dict[str, Any]) -> None:
        """Queue ``body`` for every URL; safe from any thread, never blocks."""
        if self._loop is None:
            raise RuntimeError("WebhookNotifier.start() was not awaited")
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._enqueue(body)
        else:
            self._loop.call_soon_threadsafe(self._enqueue, body)

    def _enqueue(self, body: dict[str, Any]) -> None:
        for url in self.settings.urls:
            try:
                self._queue.put_nowait((url, body))
                self.counters.queued += 1
            except asyncio.QueueFull:
                self.counters.dropped += 1
                log.error("webhook queue full (%d); notification of request %s to %s dropped",
                          self.settings.queue_size, body.get("request", {}).get("id"), redact_url(url))

    async def _dispatch(self) -> None:
        slots = asyncio.Semaphore(self.settings.concurrency)
        while True:
            url, body = await self._queue.get()
            await slots.acquire()
            task = asyncio.create_task(self._deliver(url, body, slots))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, url: str, body: dict[str, Any], slots: asyncio.Semaphore) -> None:
        try:
            await self._post_with_retries(url, body)
        finally:
            slots.release()
            self._queue.task_done()

    async def _post_with_retries(self, url: str, body: dict[str, Any]) -> None:
        assert self._session is not None
        s, delay = self.settings, self.settings.backoff
        request_id = body.get("request", {}).get("id")
        for attempt in range(s.retries + 1):
            wait = min(delay, s.max_backoff)
            try:
                async with self._session.post(url, json=body) as response:
                    if response.status < 300:
                        self.counters.sent += 1
                        return
                    problem = f"HTTP {response.status}"
                    if 400 <= response.status < 500 and response.status not in (408, 429):
                        break  # the receiver refuses this payload or URL; retrying will not change its mind
                    with contextlib.suppress(ValueError):
                        wait = min(max(wait, float(response.headers.get("Retry-After", ""))), s.max_backoff)
            except (aiohttp.ClientError, TimeoutError) as e:
                problem = type(e).__name__  # str(e) may quote the URL, and with it the token
            if attempt == s.retries:
                break
            self.counters.retried += 1
            log.warning("webhook %s for request %s failed (%s); retry %d of %d in %.1f s",
                        redact_url(url), request_id, problem, attempt + 1, s.retries, wait)
            await asyncio.sleep(wait)
            delay *= 2
        self.counters.failed += 1
        log.error("webhook %s for request %s failed (%s); gave up", redact_url(url), request_id, problem)
