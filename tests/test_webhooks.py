"""bastion.webhooks: real aiohttp receivers on loopback get Slack-compatible payloads, retried, never blocking."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bastion.approvals import Approvals, Change
from bastion.audit import AuditStore
from bastion.webhooks import WebhookNotifier, WebhookSettings, payload, redact_url
from policies import approvals as ap
from policies.approvals import RequestKind
from policies.model import ApprovalRule, Approvers, Identity

RULE = ApprovalRule(approvers=Approvers(users=("lead",)), max_duration=7200.0, break_glass=True)
LINK = "https://bastion.example.com/approvals/{id}"


class Receiver:
    """A webhook endpoint on loopback that answers with the statuses it is given, then 200, and records each POST."""

    def __init__(self, statuses: list[int] | None = None, delay: float = 0.0) -> None:
        self.statuses = list(statuses or [])
        self.delay = delay
        self.hits: list[tuple[float, dict[str, Any]]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append((time.monotonic(), await request.json()))
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200, text="ok")


@asynccontextmanager
async def receiving(*receivers: Receiver) -> AsyncIterator[None]:
    runners = []
    for receiver in receivers:
        app = web.Application()
        app.router.add_post("/services/T000/B000/SECRETTOKEN", receiver.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        receiver.url = f"http://127.0.0.1:{port}/services/T000/B000/SECRETTOKEN"
        runners.append(runner)
    try:
        yield
    finally:
        for runner in runners:
            await runner.cleanup()


@asynccontextmanager
async def notifying(settings: WebhookSettings) -> AsyncIterator[WebhookNotifier]:
    notifier = WebhookNotifier(settings)
    await notifier.start()
    try:
        yield notifier
    finally:
        await notifier.close(timeout=0.1)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


@pytest.fixture
def approvals(tmp_path: Path) -> Approvals:
    return Approvals(AuditStore(tmp_path / "audit.db"))


def test_every_receiver_gets_the_request_with_an_approve_link(approvals: Approvals) -> None:
    one, two = Receiver(), Receiver()

    async def scenario() -> None:
        async with receiving(one, two):
            settings = WebhookSettings(urls=(one.url, two.url), link=LINK)
            async with notifying(settings) as notifier:
                approvals.add_listener(notifier.on_change)
                r = approvals.file_request(RULE, requester="alice", target="pg-prod", kind=RequestKind.ACCESS,
                                           reason="INC-42 <!channel>", now=time.time(), duration=1800.0,
                                           policy="dba-prod")
                approvals.approve(r.id, Identity("lead"), time.time())  # not a notified kind
                await notifier.join()
                assert notifier.counters.sent == 2 and notifier.counters.queued == 2
        for receiver in (one, two):
            [(_, body)] = receiver.hits
            assert body["text"].startswith("alice requests access to pg-prod for 30m: INC-42 &lt;!channel&gt;")
            assert f"<https://bastion.example.com/approvals/{r.id}|Approve or deny {r.id}>" in body["text"]
            assert body["event"] == "request.filed"
            assert body["request"]["id"] == r.id and body["request"]["reason"] == "INC-42 <!channel>"
            assert body["request"]["url"] == f"https://bastion.example.com/approvals/{r.id}"
            assert body["blocks"][-1]["elements"][0]["url"] == body["request"]["url"]

    run(scenario)


def test_500_is_retried_with_backoff_and_the_caller_is_not_blocked(approvals: Approvals) -> None:
    flaky = Receiver(statuses=[500, 500, 503])

    async def scenario() -> None:
        async with receiving(flaky):
            settings = WebhookSettings(urls=(flaky.url,), backoff=0.1, retries=5)
            async with notifying(settings) as notifier:
                approvals.add_listener(notifier.on_change)
                started = time.monotonic()
                r = approvals.file_request(RULE, requester="alice", target="pg-prod", kind=RequestKind.ACCESS,
                                           reason="INC-42", now=time.time())
                filed_in = time.monotonic() - started
                assert filed_in < 0.1  # the whole retry sequence takes 0.7 s; filing did not wait for it
                assert approvals.get(r.id) == r
                await notifier.join()
                c = notifier.counters
                assert (c.sent, c.retried, c.failed) == (1, 3, 0)
        times = [t for t, _ in flaky.hits]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(flaky.hits) == 4 and all(body["request"]["id"] == r.id for _, body in flaky.hits)
        assert gaps[0] >= 0.09 and gaps[1] >= 0.19 and gaps[2] >= 0.39  # 0.1, 0.2, 0.4: doubling

    run(scenario)


def test_gives_up_after_the_retries_and_logs_without_the_token(caplog: pytest.LogCaptureFixture) -> None:
    down = Receiver(statuses=[500] * 10)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_url = f"http://127.0.0.1:{closed.getsockname()[1]}/services/T000/B000/SECRETTOKEN"
    closed.close()  # nothing listens there now: connection refused

    async def scenario() -> None:
        async with receiving(down):
            settings = WebhookSettings(urls=(down.url, dead_url), backoff=0.02, retries=2)
            async with notifying(settings) as notifier:
                notifier.submit({"text": "hello", "request": {"id": "r-1"}})
                await notifier.join()
                assert (notifier.counters.sent, notifier.counters.retried, notifier.counters.failed) == (0, 4, 2)
        assert len(down.hits) == 3

    with caplog.at_level(logging.WARNING, logger="bastion.webhooks"):
        run(scenario)
    assert "gave up" in caplog.text and "ClientConnectorError" in caplog.text and "HTTP 500" in caplog.text
    assert "SECRETTOKEN" not in caplog.text and "127.0.0.1" in caplog.text


def test_client_error_is_not_retried() -> None:
    gone = Receiver(statuses=[404])

    async def scenario() -> None:
        async with receiving(gone):
            async with notifying(WebhookSettings(urls=(gone.url,), backoff=0.01)) as notifier:
                notifier.submit({"text": "hello"})
                await notifier.join()
                assert (notifier.counters.retried, notifier.counters.failed) == (0, 1)
        assert len(gone.hits) == 1

    run(scenario)


def test_a_full_queue_drops_notifications_without_blocking() -> None:
    slow = Receiver(delay=0.3)

    async def scenario() -> None:
        async with receiving(slow):
            settings = WebhookSettings(urls=(slow.url,), queue_size=1, concurrency=1)
            async with notifying(settings) as notifier:
                started = time.monotonic()
                for i in range(5):
                    notifier.submit({"text": f"n{i}"})
                assert time.monotonic() - started < 0.05
                assert (notifier.counters.queued, notifier.counters.dropped) == (1, 4)
                await notifier.join()
                assert notifier.counters.sent == 1
        assert [body["text"] for _, body in slow.hits] == ["n0"]

    run(scenario)


def test_submit_from_another_thread() -> None:
    receiver = Receiver()

    async def scenario() -> None:
        async with receiving(receiver):
            async with notifying(WebhookSettings(urls=(receiver.url,))) as notifier:
                thread = threading.Thread(target=notifier.submit, args=({"text": "from a thread"},))
                thread.start()
                thread.join()
                for _ in range(100):
                    if notifier.counters.sent:
                        break
                    await asyncio.sleep(0.02)
        assert [body["text"] for _, body in receiver.hits] == ["from a thread"]

    run(scenario)


def test_submit_before_start_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError, match="start"):
        WebhookNotifier(WebhookSettings(urls=("http://127.0.0.1:9/",))).submit({"text": "x"})


def test_payload_for_break_glass_and_held_statements() -> None:
    glass = ap.break_glass(RULE, id="r-9", kind=RequestKind.ACCESS, requester="alice", target="pg-prod",
                           reason="outage", now=0.0, duration=900.0)
    body = payload(Change("breakglass.used", glass), link=LINK)
    assert body["text"].startswith(":rotating_light: BREAK-GLASS: alice granted themselves access to pg-prod for 15m")
    assert "Approve or deny" not in body["text"] and body["request"]["break_glass"] is True
    held = ap.new_request(RULE, id="r-8", kind=RequestKind.STATEMENT, requester="alice", target="pg-prod",
                          reason="fix", now=0.0, statement=b"UPDATE t SET a = '<x>' WHERE id = 1")
    body = payload(Change("request.filed", held), link=LINK)
    assert body["request"]["statement"] == "UPDATE t SET a = '<x>' WHERE id = 1"
    assert body["blocks"][1]["text"]["text"] == "```UPDATE t SET a = '&lt;x&gt;' WHERE id = 1```"
    hidden = payload(Change("request.filed", held), include_statement=False)
    assert "statement" not in hidden["request"] and len(hidden["blocks"]) == 1  # no link, no statement


def test_redact_url() -> None:
    assert redact_url("https://hooks.slack.com/services/T0/B0/XYZ") == "https://hooks.slack.com/…"
