"""A real OIDC issuer for tests: bastion.devidp's DevIdentityProvider in a background thread.

The provider runs on its own event loop, so synchronous tests (requests) and
async tests (their own loop) can both talk to it. Every call into the provider
goes through that loop, so its state is only ever touched from one thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from bastion.devidp import CURRENT_KEY, DevIdentityProvider

T = TypeVar("T")


class OidcIssuer:
    """Start/stop a DevIdentityProvider on loopback port 0 and call it thread-safely."""

    def __init__(self, **options: Any) -> None:
        self.idp = DevIdentityProvider(**options)
        self.issuer = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        """Run the provider; return its issuer URL."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="oidc-issuer", daemon=True)
        self._thread.start()
        self.issuer = asyncio.run_coroutine_threadsafe(self.idp.start(), self._loop).result(timeout=10)
        return self.issuer

    def stop(self) -> None:
        """Stop the provider and its thread."""
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.idp.stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> OidcIssuer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        assert self._loop is not None, "the issuer is not running"

        async def run() -> T:
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    @property
    def client_id(self) -> str:
        """The client id the provider accepts (and puts in aud/azp)."""
        return self.idp.client_id

    @property
    def jwks_requests(self) -> int:
        """How many times /jwks has been served."""
        return self._call(lambda: self.idp.jwks_requests)

    def mint_id_token(self, claims: dict[str, Any], *, alg: str = "RS256", kid: Any = CURRENT_KEY,
                      key: object | None = None, headers: dict[str, Any] | None = None) -> str:
        """See DevIdentityProvider.mint_id_token."""
        return self._call(self.idp.mint_id_token, claims, alg=alg, kid=kid, key=key, headers=headers)

    def standard_claims(self, username: str, groups: list[str], *, nonce: str | None = None,
                        **overrides: Any) -> dict[str, Any]:
        """See DevIdentityProvider.standard_claims."""
        return self._call(self.idp.standard_claims, username, groups, nonce=nonce, **overrides)

    def rotate_key(self) -> str:
        """See DevIdentityProvider.rotate_key."""
        return self._call(self.idp.rotate_key)

    def approve_device(self, user_code: str, username: str, groups: list[str]) -> None:
        """See DevIdentityProvider.approve_device."""
        self._call(self.idp.approve_device, user_code, username, groups)
