"""The grant bookkeeping of the DEVELOPMENT-ONLY identity provider in :mod:`bastion.devidp`.

Pure state, no HTTP: device codes (RFC 8628) and authorization codes with PKCE
(RFC 7636). A refusal raises :class:`FlowError` carrying the OAuth error code
that the token endpoint returns.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from yarl import URL

from .config_schema import is_loopback

USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"  # RFC 8628 6.1: no vowels, no look-alikes
PKCE_RE = re.compile(r"[A-Za-z0-9._~-]{43,128}")  # RFC 7636 4.1


class FlowError(Exception):
    """A grant request refused with an OAuth ``error`` code and a description."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


def b64url(data: bytes) -> str:
    """Unpadded base64url, as JOSE and PKCE use it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def normalize_user_code(code: str) -> str:
    """``abcd efgh`` and ``ABCDEFGH`` both become ``ABCD-EFGH``."""
    letters = re.sub(r"[^A-Z]", "", code.upper())
    return f"{letters[:4]}-{letters[4:]}" if len(letters) == 8 else letters


def is_loopback_redirect(uri: str) -> bool:
    """Whether ``uri`` is an RFC 8252 loopback redirect: ``http`` to 127.0.0.0/8, ::1 or localhost."""
    try:
        url = URL(uri)
    except ValueError:
        return False
    if url.scheme != "http" or url.fragment or url.user or not url.host:
        return False
    return is_loopback(url.host)


@dataclass
class DeviceGrant:
    """One device authorization, from /device/authorize until its token is collected."""

    device_code: str
    user_code: str
    expires_at: float
    status: str = "pending"  # pending | approved | denied
    last_poll: float | None = None
    username: str = ""
    groups: list[str] = field(default_factory=list)


class DeviceFlows:
    """Device codes: issue, approve or deny by user code, and answer polls by device code."""

    def __init__(self, *, ttl: float, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.interval = interval
        self._clock = clock
        self._grants: dict[str, DeviceGrant] = {}  # by device_code

    def start(self) -> DeviceGrant:
        """A new pending grant with a fresh device code and user code."""
        now = self._clock()
        self._grants = {c: g for c, g in self._grants.items() if g.expires_at > now}
        user_code = "-".join("".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(4)) for _ in range(2))
        grant = DeviceGrant(secrets.token_urlsafe(32), user_code, now + self.ttl)
        self._grants[grant.device_code] = grant
        return grant

    def pending(self, user_code: str) -> DeviceGrant | None:
        """The unexpired grant still waiting for an answer under ``user_code``, if any."""
        code, now = normalize_user_code(user_code), self._clock()
        for grant in self._grants.values():
            if grant.user_code == code and grant.status == "pending" and now < grant.expires_at:
                return grant
        return None

    def decide(self, user_code: str, *, approve: bool, username: str = "",
               groups: list[str] | None = None) -> None:
        """Approve (as ``username`` with ``groups``) or deny a pending grant; ValueError if there is none."""
        grant = self.pending(user_code)
        if grant is None:
            raise ValueError("unknown, expired or already decided user code")
        if approve:
            grant.status, grant.username, grant.groups = "approved", username, list(groups or [])
        else:
            grant.status = "denied"

    def poll(self, device_code: str) -> DeviceGrant:
        """The approved grant (consumed), or FlowError per RFC 8628 3.5."""
        grant = self._grants.get(device_code)
        if grant is None:
            raise FlowError("invalid_grant", "unknown or already used device_code")
        now = self._clock()
        if now >= grant.expires_at:
            del self._grants[device_code]
            raise FlowError("expired_token", "the device code expired; start again")
        too_fast = grant.last_poll is not None and now - grant.last_poll < self.interval
        grant.last_poll = now
        if grant.status == "denied":
            raise FlowError("access_denied", "the user denied the request")
        if too_fast:
            raise FlowError("slow_down", f"poll at most every {self.interval:g} s")
        if grant.status == "pending":
            raise FlowError("authorization_pending", "the user has not answered yet")
        del self._grants[device_code]
        return grant


@dataclass(frozen=True)
class AuthCode:
    """What an authorization code stands for until the token endpoint redeems it."""

    client_id: str
    redirect_uri: str
    code_challenge: str
    nonce: str | None
    username: str
    groups: tuple[str, ...]
    expires_at: float


class CodeFlows:
    """Authorization codes: short-lived, single-use, bound to redirect_uri and a PKCE challenge."""

    def __init__(self, *, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._codes: dict[str, AuthCode] = {}

    def issue(self, *, client_id: str, redirect_uri: str, code_challenge: str, nonce: str | None,
              username: str, groups: list[str]) -> str:
        """A new code for an approved authorization request."""
        now = self._clock()
        self._codes = {c: a for c, a in self._codes.items() if a.expires_at > now}
        code = secrets.token_urlsafe(32)
        self._codes[code] = AuthCode(client_id, redirect_uri, code_challenge, nonce, username, tuple(groups),
                                     now + self.ttl)
        return code

    def redeem(self, code: str, *, client_id: str, redirect_uri: str, code_verifier: str) -> AuthCode:
        """The grant behind ``code`` if everything matches, else FlowError(invalid_grant)."""
        # Single use: the code is gone whatever the outcome, so a wrong guess burns it.
        grant = self._codes.pop(code, None)
        if grant is None or self._clock() >= grant.expires_at:
            raise FlowError("invalid_grant", "unknown, expired or already used code")
        if redirect_uri != grant.redirect_uri or client_id != grant.client_id:
            raise FlowError("invalid_grant", "redirect_uri or client_id differs from the authorization request")
        challenge = b64url(hashlib.sha256(code_verifier.encode("utf-8")).digest())
        if not PKCE_RE.fullmatch(code_verifier) or not hmac.compare_digest(challenge, grant.code_challenge):
            raise FlowError("invalid_grant", "code_verifier does not match the code_challenge")
        return grant
