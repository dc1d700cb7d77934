"""A DEVELOPMENT-ONLY OpenID Connect identity provider. NEVER USE IT IN PRODUCTION.

It signs in anyone who clicks a button: there are no passwords. It exists so
that ``bastion demo`` and the test suite have a real issuer to talk to over
HTTP on loopback. Every page carries a banner saying so, and :meth:`start`
logs a warning.

What it serves (issuer ``http://HOST:PORT``):

``GET /.well-known/openid-configuration``, ``GET /jwks``
    Discovery and the public signing keys (RSA, RS256, with ``kid``).
``POST /device/authorize``  (form: ``client_id``, ``scope``)
    RFC 8628 device authorization: ``device_code``, ``user_code`` (``ABCD-EFGH``),
    ``verification_uri``, ``verification_uri_complete``, ``expires_in``, ``interval``.
    ``interval`` and ``expires_in`` may be fractional when configured so (tests).
``GET /device[?user_code=…]``, ``POST /device``
    The approval page. POST fields: ``user_code``, ``username``, ``groups``
    (repeated, may be absent), ``action`` = ``approve`` | ``deny``. The username
    must be a configured user, the groups among the configured ones.
``GET /authorize``, ``POST /authorize``
    Authorization code + PKCE. Query (GET) or form (POST) fields: ``client_id``,
    ``redirect_uri`` (loopback ``http://127.0.0.1|[::1]|localhost:PORT/…``, RFC 8252),
    ``response_type=code``, ``code_challenge``, ``code_challenge_method=S256``,
    ``state``, ``nonce``, ``scope``; the POST adds ``username``, ``groups`` and
    ``action`` as above. Approval redirects (302) to ``redirect_uri?code=…&state=…``;
    denial to ``redirect_uri?error=access_denied&state=…``. A bad ``client_id`` or
    ``redirect_uri`` gets a 400 page instead of a redirect.
``POST /token``  (form; ``client_id``, optional ``client_secret`` = client_secret_post)
    ``grant_type=authorization_code`` with ``code``, ``redirect_uri``, ``code_verifier``;
    or ``grant_type=urn:ietf:params:oauth:grant-type:device_code`` with ``device_code``.
    Returns ``{id_token, access_token, token_type, expires_in}``, or a JSON error:
    ``authorization_pending``, ``slow_down``, ``access_denied``, ``expired_token``,
    ``invalid_grant``, ``invalid_request``, ``invalid_client``, ``unsupported_grant_type``.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import logging
import math
import secrets
import time
import uuid
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm, get_default_algorithms
from yarl import URL

from . import devidp_pages as pages
from .devidp_flows import PKCE_RE, CodeFlows, DeviceFlows, FlowError, b64url, is_loopback_redirect

logger = logging.getLogger(__name__)

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_USERS: dict[str, list[str]] = {"alice": ["dev"], "bob": ["sre"], "carol": ["dev", "sre"]}
_AUTHORIZE_FIELDS = (
    "client_id", "redirect_uri", "response_type", "code_challenge",
    "code_challenge_method", "state", "nonce", "scope",
)


class _Default(enum.Enum):
    CURRENT = enum.auto()


CURRENT_KEY = _Default.CURRENT
"""The default ``kid`` of :meth:`DevIdentityProvider.mint_id_token`: the current key's id."""


class _AuthorizeError(Exception):
    """An /authorize request that cannot proceed; ``redirect`` says whether to tell the client."""

    def __init__(self, error: str, description: str, *, redirect: bool) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.redirect = redirect


def _seconds(value: float) -> int | float:
    """A duration for JSON: an integer when whole (as RFC 8628 expects), else as configured."""
    return int(value) if float(value).is_integer() else value


class DevIdentityProvider:
    """A development-only OIDC issuer: discovery, JWKS, device flow, auth code + PKCE, tokens."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        client_id: str = "bastion",
        users: dict[str, list[str]] | None = None,
        token_ttl: float = 300.0,
        client_secret: str | None = None,
        device_code_ttl: float = 600.0,
        device_interval: float = 5.0,
        auth_code_ttl: float = 60.0,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self.users = {name: list(groups) for name, groups in (users or DEFAULT_USERS).items()}
        self.token_ttl = token_ttl
        self.client_secret = client_secret
        self.issuer = ""
        self.jwks_requests = 0  # how often /jwks was served; tests count refetches with it
        self._keys: list[tuple[str, rsa.RSAPrivateKey]] = []
        self.devices = DeviceFlows(ttl=device_code_ttl, interval=device_interval)
        self.codes = CodeFlows(ttl=auth_code_ttl)
        self._runner: web.AppRunner | None = None
        self.rotate_key()

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> str:
        """Bind and serve; return the issuer URL ``http://HOST:PORT``."""
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_post("/device/authorize", self._device_authorize)
        app.router.add_get("/device", self._device_page)
        app.router.add_post("/device", self._device_decide)
        app.router.add_get("/authorize", self._authorize_page)
        app.router.add_post("/authorize", self._authorize_decide)
        app.router.add_post("/token", self._token)
        # No access log: request lines carry codes a developer may paste around.
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        port = self._runner.addresses[0][1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.issuer = f"http://{host}:{port}"
        logger.warning("development identity provider at %s: it signs in anyone, never use it in production",
                       self.issuer)
        return self.issuer

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- keys and tokens -----------------------------------------------------

    def rotate_key(self) -> str:
        """Start signing with a new RSA key under a new kid; old keys stay in the JWKS. Returns the kid."""
        kid = f"dev-{secrets.token_hex(4)}"
        self._keys.append((kid, rsa.generate_private_key(public_exponent=65537, key_size=2048)))
        logger.info("development identity provider now signs with key %s", kid)
        return kid

    def standard_claims(self, username: str, groups: list[str], *, nonce: str | None = None,
                        **overrides: Any) -> dict[str, Any]:
        """The claims of a normal ID token for ``username``; an override of ``None`` removes that claim."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.client_id,
            "azp": self.client_id,
            "sub": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{username}.example.test")),
            "preferred_username": username,
            "email": f"{username}@example.test",
            "email_verified": True,
            "groups": list(groups),
            "iat": now,
            "auth_time": now,
            "exp": now + math.ceil(self.token_ttl),
        }
        if nonce is not None:
            claims["nonce"] = nonce
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def mint_id_token(
        self,
        claims: dict[str, Any],
        *,
        alg: str = "RS256",
        kid: str | _Default | None = CURRENT_KEY,
        key: object | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str:
        """Sign ``claims`` as a JWT. By default with the current key; tests forge hostile tokens with the options.

        ``alg="none"`` gives an unsigned token. ``HS*`` signs with ``key`` as the
        HMAC secret (bytes or str, e.g. the RSA public key PEM), which PyJWT
        itself would refuse to do. ``kid=None`` leaves the kid out; ``key`` may be
        any private key object; ``headers`` are merged into the header last.
        """
        current_kid, current_key = self._keys[-1]
        header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
        if kid is CURRENT_KEY:
            header["kid"] = current_kid
        elif kid is not None:
            header["kid"] = kid
        header.update(headers or {})
        signing_input = ".".join(
            b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        ).encode("ascii")
        if alg == "none":
            signature = b""
        elif alg.startswith("HS"):
            secret = key.encode() if isinstance(key, str) else key
            if not isinstance(secret, bytes):
                raise TypeError("an HS* token needs key= as bytes or str")
            signature = hmac.new(secret, signing_input, getattr(hashlib, "sha" + alg[2:])).digest()
        else:
            algorithm = get_default_algorithms()[alg]
            signature = algorithm.sign(signing_input, algorithm.prepare_key(key or current_key))
        return f"{signing_input.decode('ascii')}.{b64url(signature)}"

    def approve_device(self, user_code: str, username: str, groups: list[str]) -> None:
        """Approve a pending device code as ``username`` with ``groups`` (tests; no checks on either)."""
        self.devices.decide(user_code, approve=True, username=username, groups=groups)
        logger.info("device code approved for %s", username)

    def _issue(self, username: str, groups: list[str], nonce: str | None) -> web.Response:
        body = {
            "id_token": self.mint_id_token(self.standard_claims(username, groups, nonce=nonce)),
            "access_token": secrets.token_urlsafe(32),
            "token_type": "Bearer",
            "expires_in": math.ceil(self.token_ttl),
        }
        logger.info("issued an ID token for %s", username)
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    # -- discovery -----------------------------------------------------------

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response({
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            "device_authorization_endpoint": f"{self.issuer}/device/authorize",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "grant_types_supported": ["authorization_code", DEVICE_GRANT],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_post"],
            "scopes_supported": ["openid", "profile", "email", "groups"],
            "claims_supported": ["iss", "aud", "azp", "sub", "preferred_username", "email", "groups",
                                 "iat", "exp", "auth_time", "nonce"],
        })

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_requests += 1
        keys = []
        for kid, private in self._keys:
            jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return web.json_response({"keys": keys})

    # -- device flow (RFC 8628) ----------------------------------------------

    async def _device_authorize(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("client_id") != self.client_id:
            return _oauth_error("invalid_client", "unknown client_id", status=401)
        grant = self.devices.start()
        verification_uri = f"{self.issuer}/device"
        return web.json_response({
            "device_code": grant.device_code,
            "user_code": grant.user_code,
            "verification_uri": verification_uri,
            "verification_uri_complete": str(URL(verification_uri).with_query(user_code=grant.user_code)),
            "expires_in": _seconds(self.devices.ttl),
            "interval": _seconds(self.devices.interval),
        }, headers={"Cache-Control": "no-store"})

    async def _device_page(self, request: web.Request) -> web.Response:
        user_code = request.query.get("user_code", "")
        if not user_code:
            return _html(pages.enter_code_page())
        grant = self.devices.pending(user_code)
        if grant is None:
            return _html(pages.enter_code_page("That code is unknown, expired or already used."), status=404)
        return _html(pages.pick_user_page(
            title="Sign in a device",
            prompt=f"A device showing the code {grant.user_code} asks to sign in. Who are you?",
            action="/device",
            hidden={"user_code": grant.user_code},
            users=self.users,
        ))

    async def _device_decide(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant = self.devices.pending(str(form.get("user_code", "")))
        if grant is None:
            return _html(pages.enter_code_page("That code is unknown, expired or already used."), status=404)
        action = form.get("action")
        if action == "deny":
            self.devices.decide(grant.user_code, approve=False)
            logger.info("device code denied")
            return _html(pages.message_page("Denied", "The device was not signed in."))
        if action != "approve":
            return _html(pages.message_page("Bad request", "action must be approve or deny."), status=400)
        username, groups = str(form.get("username", "")), [str(g) for g in form.getall("groups", [])]
        problem = self._check_person(username, groups)
        if problem:
            return _html(pages.message_page("Bad request", problem), status=400)
        self.approve_device(grant.user_code, username, groups)
        return _html(pages.message_page("Approved", "You are signed in. Return to your terminal."))

    def _check_person(self, username: str, groups: list[str]) -> str:
        """Why the form's username/groups cannot be used, or "" when they can."""
        if username not in self.users:
            return "username must be one of the configured users."
        offered = {g for gs in self.users.values() for g in gs}
        if any(g not in offered for g in groups):
            return "groups must be among the configured groups."
        return ""

    # -- authorization code + PKCE -------------------------------------------

    def _authorize_params(self, source: Any) -> dict[str, str]:
        """The validated /authorize parameters; raises _AuthorizeError."""
        params = {name: str(source.get(name, "")) for name in _AUTHORIZE_FIELDS}
        if params["client_id"] != self.client_id:
            raise _AuthorizeError("invalid_client", "unknown client_id", redirect=False)
        if not is_loopback_redirect(params["redirect_uri"]):
            raise _AuthorizeError("invalid_request", "redirect_uri must be a loopback http URL (RFC 8252)",
                                  redirect=False)
        if params["response_type"] != "code":
            raise _AuthorizeError("unsupported_response_type", "response_type must be code", redirect=True)
        if params["code_challenge_method"] != "S256" or not PKCE_RE.fullmatch(params["code_challenge"]):
            raise _AuthorizeError("invalid_request", "PKCE with code_challenge_method=S256 is required",
                                  redirect=True)
        return params

    async def _authorize_page(self, request: web.Request) -> web.Response:
        try:
            params = self._authorize_params(request.query)
        except _AuthorizeError as e:
            return _authorize_failure(e, request.query)
        return _html(pages.pick_user_page(
            title="Sign in",
            prompt="The bastion login client asks you to sign in. Who are you?",
            action="/authorize",
            hidden={k: v for k, v in params.items() if v},
            users=self.users,
        ))

    async def _authorize_decide(self, request: web.Request) -> web.Response:
        form = await request.post()
        try:
            params = self._authorize_params(form)
        except _AuthorizeError as e:
            return _authorize_failure(e, form)
        if form.get("action") != "approve":
            return _redirect(params["redirect_uri"], error="access_denied", state=params["state"])
        username, groups = str(form.get("username", "")), [str(g) for g in form.getall("groups", [])]
        problem = self._check_person(username, groups)
        if problem:
            return _html(pages.message_page("Bad request", problem), status=400)
        code = self.codes.issue(client_id=params["client_id"], redirect_uri=params["redirect_uri"],
                                code_challenge=params["code_challenge"], nonce=params["nonce"] or None,
                                username=username, groups=groups)
        logger.info("authorization code issued for %s", username)
        return _redirect(params["redirect_uri"], code=code, state=params["state"])

    # -- token endpoint ------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("client_id") != self.client_id:
            return _oauth_error("invalid_client", "unknown client_id", status=401)
        secret = form.get("client_secret")
        if secret is not None and self.client_secret is not None and not hmac.compare_digest(
            str(secret).encode(), self.client_secret.encode()
        ):
            return _oauth_error("invalid_client", "wrong client_secret", status=401)
        grant_type = form.get("grant_type")
        try:
            if grant_type == "authorization_code":
                code = self.codes.redeem(str(form.get("code", "")), client_id=str(form.get("client_id")),
                                         redirect_uri=str(form.get("redirect_uri", "")),
                                         code_verifier=str(form.get("code_verifier", "")))
                return self._issue(code.username, list(code.groups), code.nonce)
            if grant_type == DEVICE_GRANT:
                device = self.devices.poll(str(form.get("device_code", "")))
                return self._issue(device.username, device.groups, None)
        except FlowError as e:
            return _oauth_error(e.error, e.description)
        return _oauth_error("unsupported_grant_type", "grant_type must be authorization_code or device_code")


def _html(text: str, *, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html",
                        headers={"Cache-Control": "no-store"})


def _oauth_error(error: str, description: str, *, status: int = 400) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status,
                             headers={"Cache-Control": "no-store"})


def _redirect(uri: str, **params: str) -> web.Response:
    url = URL(uri).update_query({k: v for k, v in params.items() if v})
    return web.Response(status=302, headers={"Location": str(url), "Cache-Control": "no-store"})


def _authorize_failure(e: _AuthorizeError, source: Any) -> web.Response:
    if e.redirect:  # RFC 6749 4.1.2.1: errors go back to a verified redirect_uri
        return _redirect(str(source.get("redirect_uri")), error=e.error, error_description=e.description,
                         state=str(source.get("state", "")))
    return _html(pages.message_page("Bad request", e.description), status=400)


__all__ = ["CURRENT_KEY", "DEFAULT_USERS", "DEVICE_GRANT", "DevIdentityProvider", "is_loopback_redirect"]
