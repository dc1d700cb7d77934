"""The two OAuth flows of ``bastion login``: authorization code + PKCE and device authorization.

Both end with an ID token from the identity provider; what happens with it (the
certificate exchange) lives in :mod:`bastion.login`. Everything the user must
act on is written to an ``out`` stream, with each URL and the device code on a
line of their own so a headless user can copy them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import logging
import secrets
import sys
import time
import webbrowser
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO
from urllib.parse import urlencode, urlsplit

import aiohttp
from aiohttp import web

from .config_schema import is_loopback
from .errors import LoginError

logger = logging.getLogger(__name__)

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=30)
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
FLOWS = ("auto", "device", "code")


@dataclass(frozen=True)
class IssuerInfo:
    """How to reach the identity provider: the bastion's ``/v1/oidc`` answer plus discovery."""

    issuer: str
    client_id: str
    scopes: tuple[str, ...]
    token_endpoint: str
    authorization_endpoint: str | None = None
    device_authorization_endpoint: str | None = None
    client_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class TokenResult:
    """The ID token of a finished flow and the nonce it must carry (None for the device flow)."""

    id_token: str = field(repr=False)
    nonce: str | None


class Clock(Protocol):
    """Time as the device flow's polling sees it; tests pass one that does not really sleep."""

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class RealClock:
    """The wall clock and asyncio.sleep."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def require_secure_url(url: str, what: str) -> str:
    """Return ``url`` if it is https, or plain http on a loopback host; raise LoginError otherwise."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http" and is_loopback(host):
        return url
    raise LoginError(f"refusing the {what} {url!r}: it must be an https URL (plain http only on loopback)")


def _say(out: TextIO, text: str = "", end: str = "\n") -> None:
    out.write(text + end)
    out.flush()


async def fetch_json(session: aiohttp.ClientSession, method: str, url: str, what: str,
                     **kwargs: Any) -> tuple[int, Any]:
    """Send one request and return (status, decoded JSON or None); network failures become LoginError."""
    try:
        async with session.request(method, url, timeout=HTTP_TIMEOUT, **kwargs) as resp:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = None
            return resp.status, body
    except TimeoutError as e:
        raise LoginError(f"the {what} at {url} did not answer within {HTTP_TIMEOUT.total:.0f} s") from e
    except aiohttp.ClientError as e:
        raise LoginError(f"cannot reach the {what} at {url}: {e}") from e


async def discover_issuer(session: aiohttp.ClientSession, issuer: str, client_id: str,
                          scopes: tuple[str, ...], client_secret: str | None = None) -> IssuerInfo:
    """Read the issuer's OpenID discovery document into an IssuerInfo."""
    require_secure_url(issuer, "identity provider URL")
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    status, doc = await fetch_json(session, "GET", url, "identity provider")
    if status != 200 or not isinstance(doc, dict):
        raise LoginError(f"the identity provider at {issuer} has no usable discovery document ({url}: HTTP {status})")
    if str(doc.get("issuer", "")).rstrip("/") != issuer.rstrip("/"):
        raise LoginError(f"the discovery document at {url} names issuer {doc.get('issuer')!r}, not {issuer!r}")
    endpoints: dict[str, str | None] = {}
    for name in ("token_endpoint", "authorization_endpoint", "device_authorization_endpoint"):
        value = doc.get(name)
        endpoints[name] = require_secure_url(value, f"IdP {name}") if isinstance(value, str) else None
    if endpoints["token_endpoint"] is None:
        raise LoginError(f"the identity provider at {issuer} announces no token_endpoint")
    if "openid" not in scopes:
        scopes = ("openid", *scopes)
    return IssuerInfo(issuer=issuer, client_id=client_id, scopes=tuple(scopes),
                      token_endpoint=str(endpoints["token_endpoint"]),
                      authorization_endpoint=endpoints["authorization_endpoint"],
                      device_authorization_endpoint=endpoints["device_authorization_endpoint"],
                      client_secret=client_secret)


def can_open_browser(open_browser: bool, environ: Mapping[str, str],
                     browser_opener: Callable[[str], bool] | None = None) -> bool:
    """Whether a browser can be opened here: allowed, and an opener, a display or BROWSER is present."""
    if not open_browser:
        return False
    if browser_opener is not None or sys.platform in ("darwin", "win32"):
        return True
    return any(environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER"))


def choose_flow(info: IssuerInfo, flow: str, *, browser: bool) -> str:
    """Resolve "auto" to "code" or "device", and check the IdP supports the chosen flow."""
    if flow not in FLOWS:
        raise LoginError(f"unknown login flow {flow!r}; choose one of {', '.join(FLOWS)}")
    has_code = info.authorization_endpoint is not None
    has_device = info.device_authorization_endpoint is not None
    if flow == "auto":
        if has_code and (browser or not has_device):
            return "code"
        if has_device:
            return "device"
        raise LoginError(f"the identity provider at {info.issuer} supports neither the code nor the device flow")
    if flow == "code" and not has_code:
        raise LoginError(f"the identity provider at {info.issuer} has no authorization_endpoint; use the device flow")
    if flow == "device" and not has_device:
        raise LoginError(f"the identity provider at {info.issuer} has no device_authorization_endpoint; "
                         "use the code flow")
    return flow


async def obtain_id_token(info: IssuerInfo, flow: str = "auto", *,
                          session: aiohttp.ClientSession | None = None, out: TextIO = sys.stderr,
                          open_browser: bool = True, environ: Mapping[str, str] | None = None,
                          browser_opener: Callable[[str], bool] | None = None, timeout: float = 600.0,
                          clock: Clock | None = None) -> TokenResult:
    """Run the chosen OAuth flow with the identity provider and return its ID token."""
    env = environ if environ is not None else {}
    browser = can_open_browser(open_browser, env, browser_opener)
    chosen = choose_flow(info, flow, browser=browser)
    logger.debug("login flow %s with issuer %s", chosen, info.issuer)
    own_session = session is None
    http = session if session is not None else aiohttp.ClientSession()
    try:
        if chosen == "code":
            opener = (browser_opener or webbrowser.open) if browser else None
            return await code_flow(info, http, out=out, opener=opener, timeout=timeout)
        return await device_flow(info, http, out=out, timeout=timeout, clock=clock or RealClock())
    finally:
        if own_session:
            await http.close()


def _client_auth(info: IssuerInfo) -> dict[str, str]:
    # client_secret_post: native apps at some IdPs (Google) are given a "secret" that is not secret.
    auth = {"client_id": info.client_id}
    if info.client_secret:
        auth["client_secret"] = info.client_secret
    return auth


def _oauth_error(body: Any) -> tuple[str, str]:
    if not isinstance(body, dict):
        return "invalid_response", ""
    return str(body.get("error", "invalid_response")), str(body.get("error_description", ""))


def _token_refused(body: Any) -> LoginError:
    error, description = _oauth_error(body)
    return LoginError(f"the identity provider refused to issue a token: {error}"
                      + (f" ({description})" if description else ""))


def _id_token_from(status: int, body: Any, info: IssuerInfo) -> str:
    if status != 200:
        raise _token_refused(body)
    token = body.get("id_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise LoginError(f"the identity provider at {info.issuer} returned no ID token; "
                         "check that the client may use the 'openid' scope")
    return token


# --- authorization code + PKCE (RFC 7636) with a loopback redirect (RFC 8252) ---------------

_PAGE = ("<!doctype html><html><head><meta charset='utf-8'><title>bastion login</title></head>"
         "<body style='font-family:sans-serif;margin:3em'><h1>{title}</h1><p>{text}</p></body></html>")


def _page(title: str, text: str, status: int = 200) -> web.Response:
    return web.Response(status=status, content_type="text/html",
                        text=_PAGE.format(title=html.escape(title), text=html.escape(text)))


def pkce_pair() -> tuple[str, str]:
    """A fresh PKCE (code_verifier, S256 code_challenge)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _callback_handler(state: str, result: asyncio.Future[str]) -> Callable[[web.Request], Any]:
    async def callback(request: web.Request) -> web.Response:
        if result.done():
            return _page("Already done", "This login has finished; you can close this tab.")
        query = request.query
        if not secrets.compare_digest(query.get("state", ""), state):
            result.set_exception(LoginError("the login redirect carried the wrong state parameter "
                                            "(a stale or forged redirect); run bastion login again"))
            return _page("Login refused", "The redirect did not match this login. Run bastion login again.", 400)
        error = query.get("error")
        if error:
            if error == "access_denied":
                message = "the identity provider denied the login"
            else:
                description = query.get("error_description", "")
                message = f"the identity provider returned an error: {error}" + (
                    f" ({description})" if description else "")
            result.set_exception(LoginError(message))
            return _page("Login failed", message[0].upper() + message[1:] + ".", 400)
        code = query.get("code")
        if not code:
            result.set_exception(LoginError("the identity provider redirected back without a code"))
            return _page("Login failed", "The identity provider sent no authorization code.", 400)
        result.set_result(code)
        return _page("Login received", "You can close this tab and return to the terminal.")
    return callback


async def code_flow(info: IssuerInfo, session: aiohttp.ClientSession, *, out: TextIO,
                    opener: Callable[[str], bool] | None, timeout: float) -> TokenResult:
    """Authorization code + PKCE: print the URL, open a browser if allowed, wait for the loopback redirect."""
    assert info.authorization_endpoint is not None  # choose_flow checked it
    loop = asyncio.get_running_loop()
    result: asyncio.Future[str] = loop.create_future()
    state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    verifier, challenge = pkce_pair()
    app = web.Application()
    app.router.add_get("/callback", _callback_handler(state, result))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        redirect_uri = f"http://127.0.0.1:{port}/callback"
        params = {"response_type": "code", "client_id": info.client_id, "redirect_uri": redirect_uri,
                  "scope": " ".join(info.scopes), "state": state, "nonce": nonce,
                  "code_challenge": challenge, "code_challenge_method": "S256"}
        endpoint = info.authorization_endpoint
        url = endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)
        _say(out, "To log in, open this URL in a browser (waiting for its redirect to this machine):")
        _say(out, url)
        if opener is not None:
            await _open(opener, url, out)
        try:
            code = await asyncio.wait_for(result, timeout)
        except TimeoutError as e:
            raise LoginError(f"no login arrived from the browser within {timeout:g} s; "
                             "run bastion login again") from e
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "code_verifier": verifier, **_client_auth(info)}
        status, body = await fetch_json(session, "POST", info.token_endpoint, "identity provider", data=form)
        return TokenResult(_id_token_from(status, body, info), nonce)
    finally:
        await runner.cleanup()


async def _open(opener: Callable[[str], bool], url: str, out: TextIO) -> None:
    try:
        # webbrowser.open may start a process and wait for it: keep it off the event loop.
        opened = await asyncio.to_thread(opener, url)
    except (webbrowser.Error, OSError) as e:  # the user can still open the printed URL by hand
        logger.debug("opening a browser failed: %s", e)
        opened = False
    if not opened:
        _say(out, "Could not open a browser; open the URL above yourself.")


# --- device authorization grant (RFC 8628) ---------------------------------------------------

async def device_flow(info: IssuerInfo, session: aiohttp.ClientSession, *, out: TextIO,
                      timeout: float, clock: Clock) -> TokenResult:
    """Device flow: print the verification URL and code, then poll the token endpoint until approved."""
    assert info.device_authorization_endpoint is not None  # choose_flow checked it
    form = {"scope": " ".join(info.scopes), **_client_auth(info)}
    status, body = await fetch_json(session, "POST", info.device_authorization_endpoint,
                                    "identity provider", data=form)
    if status != 200 or not isinstance(body, dict) or "device_code" not in body or "user_code" not in body:
        error, description = _oauth_error(body)
        raise LoginError(f"the identity provider refused to start a device login (HTTP {status}): {error}"
                         + (f" ({description})" if description else ""))
    # Google names it verification_url; RFC 8628 says verification_uri.
    uri = body.get("verification_uri_complete") or body.get("verification_uri") or body.get("verification_url")
    if not isinstance(uri, str):
        raise LoginError("the identity provider started a device login but gave no verification URL")
    user_code = str(body["user_code"])
    interval = float(body.get("interval") or 5)
    expires_in = float(body.get("expires_in") or timeout)
    _say(out, "To log in, open this URL on any device and confirm the code:")
    _say(out, uri)
    _say(out, f"Code: {user_code}")
    _say(out, "Waiting for approval", end="")
    poll = {"grant_type": DEVICE_GRANT, "device_code": str(body["device_code"]), **_client_auth(info)}
    start = clock.monotonic()
    try:
        while True:
            elapsed = clock.monotonic() - start
            if elapsed + interval > min(timeout, expires_in):
                if expires_in <= timeout:
                    raise LoginError("the code expired; run bastion login again")
                raise LoginError(f"no approval arrived within {timeout:g} s; run bastion login again")
            await clock.sleep(interval)
            status, body = await fetch_json(session, "POST", info.token_endpoint, "identity provider", data=poll)
            if status == 200:
                return TokenResult(_id_token_from(status, body, info), None)
            error, _ = _oauth_error(body)
            if error == "authorization_pending":
                _say(out, ".", end="")
            elif error == "slow_down":
                interval += 5  # RFC 8628 3.5: for this and every later request
                _say(out, ".", end="")
                logger.debug("IdP asked to slow down; polling every %.0f s", interval)
            elif error == "access_denied":
                raise LoginError("the identity provider denied the login")
            elif error == "expired_token":
                raise LoginError("the code expired; run bastion login again")
            else:
                raise _token_refused(body)
    finally:
        _say(out)
