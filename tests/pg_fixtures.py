"""pytest fixtures for PostgreSQL: one real server per test session, and the proxy on a loopback port.

Use from a test module with ``pytest_plugins = ["pg_fixtures"]`` (tests/ is on
sys.path, as for ``oidc_issuer``); pytest registers the plugin once, so every
module shares the one server.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from bastion.devdb import PgServer, PgUnavailable
from bastion.proxies.base import Inspector, Upstream
from bastion.proxies.postgres import serve_tcp


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL (scram-sha-256, TLS on) on a random loopback port, for the whole session."""
    try:
        server = PgServer()
    except PgUnavailable as e:
        pytest.skip(str(e))
    with server:
        yield server


class ProxyLoop:
    """An asyncio loop in a thread that runs proxy listeners for synchronous test clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="pg-proxy-loop", daemon=True)
        self._thread.start()
        self._servers: list[asyncio.Server] = []

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the proxy loop and wait for its result."""
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def serve(self, upstream: Upstream, inspector_factory: Callable[[], Inspector], **kwargs: Any) -> int:
        """Start a loopback listener; return its port."""
        server = self.call(serve_tcp(upstream, inspector_factory, **kwargs))
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def close(self) -> None:
        """Stop every listener, end the connections still open, and stop the loop."""
        async def _close() -> None:
            for server in self._servers:
                server.close()
                await server.wait_closed()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if tasks:  # let connections whose clients just left finish on their own
                await asyncio.wait(tasks, timeout=5)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.call(_close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="session")
def proxy_loop() -> Iterator[ProxyLoop]:
    """One proxy event loop thread for the session."""
    loop = ProxyLoop()
    try:
        yield loop
    finally:
        loop.close()
