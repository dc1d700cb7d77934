"""ID-token verification: discovery, JWKS and claim mapping for the issuers the bastion trusts.

:class:`OidcVerifier` checks a token against the issuer named in its ``iss``:
the signature with that issuer's published keys, then ``aud``, the times,
``azp`` and ``nonce``, and maps the claims to a :class:`VerifiedIdentity`.
Every refusal is a :class:`~bastion.errors.TokenError` whose message is safe to
show: it names at most the token's issuer, audience and key id, never the
token or its other claims.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt

from .config import IssuerConfig
from .config_schema import is_loopback
from .errors import TokenError

logger = logging.getLogger(__name__)

FETCH_TIMEOUT = 5.0  # seconds, per discovery or JWKS request
JWKS_MAX_AGE = 3600.0  # seconds before keys are fetched again even if nothing asks for a new kid
MAX_DOCUMENT_BYTES = 1 << 20
MAX_TOKEN_CHARS = 64 * 1024
USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
REQUIRED_CLAIMS = ["iss", "aud", "sub", "exp", "iat"]
# Asymmetric algorithms only: "none" and HS* are never accepted, whatever the configuration says.
SAFE_ALGORITHMS = frozenset({
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
})
_ALG_KEY_TYPE = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_PRINTABLE_ID = re.compile(r"[A-Za-z0-9._:+/=-]{1,64}")


@dataclass(frozen=True)
class VerifiedIdentity:
    """Who a verified ID token says the caller is, mapped to bastion names."""

    issuer: str
    subject: str
    username: str
    groups: tuple[str, ...]
    email: str | None
    machine: bool  # True when the token came from a machine issuer (CI, workloads)


@dataclass(frozen=True)
class _Key:
    kid: str | None
    kty: str
    alg: str | None
    key: Any  # a cryptography public key


@dataclass
class _Issuer:
    """What the verifier knows about one trusted issuer."""

    config: IssuerConfig
    machine: bool
    algorithms: tuple[str, ...]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    jwks_uri: str | None = None
    keys: list[_Key] = field(default_factory=list)
    loaded_at: float | None = None
    last_refetch: float | None = None  # last refetch caused by an unknown kid
    failures: int = 0  # fetches that failed so far
    last_failure: str = ""


def _show(value: object) -> str:
    """A claim value the caller may see (iss, aud, kid, alg), quoted and cut short."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return repr(text if len(text) <= 100 else text[:100] + "…")


def _show_alg(alg: str) -> str:
    return alg if _PRINTABLE_ID.fullmatch(alg) else "(unrecognised)"


def _when(seconds: float) -> str:
    try:
        moment = datetime.fromtimestamp(seconds, tz=UTC)
        return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return "a time out of range"


def _require_secure_url(url: str) -> None:
    """Refuse identity-provider URLs that are not https, except http on loopback (development)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and is_loopback(parts.hostname or ""):
        return
    raise TokenError(f"identity provider URL {url} must use https (plain http is allowed only on loopback)")


class OidcVerifier:
    """Verifies ID tokens from the people's issuer and any machine issuers."""

    def __init__(
        self,
        people: IssuerConfig,
        machines: Sequence[IssuerConfig] = (),
        *,
        clock: Callable[[], float] = time.time,
        jwks_refresh_interval: float = 30.0,
    ) -> None:
        self._clock = clock
        self._refresh_interval = jwks_refresh_interval
        self._session: aiohttp.ClientSession | None = None
        self._issuers: dict[str, _Issuer] = {}
        for config, machine in [(people, False), *((m, True) for m in machines)]:
            if config.issuer in self._issuers:
                raise ValueError(f"issuer {config.issuer} is configured twice")
            allowed = tuple(a for a in config.algorithms if a in SAFE_ALGORITHMS)
            if dropped := [a for a in config.algorithms if a not in SAFE_ALGORITHMS]:
                logger.warning("issuer %s: ignoring algorithms %s (only asymmetric signatures are accepted)",
                               config.issuer, ", ".join(dropped))
            if not allowed:
                raise ValueError(f"issuer {config.issuer} allows no asymmetric signature algorithm")
            self._issuers[config.issuer] = _Issuer(config, machine, allowed)

    async def close(self) -> None:
        """Close the HTTP session used for discovery and JWKS."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def verify(self, id_token: str, *, nonce: str | None = None) -> VerifiedIdentity:
        """Verify ``id_token`` (and ``nonce``, if the login used one) and map it to an identity."""
        header, unverified = _peek(id_token)
        issuer = self._issuer_for(unverified)
        config = issuer.config
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise TokenError("token header names no signature algorithm (alg)")
        if alg not in issuer.algorithms:
            raise TokenError(f"token algorithm {_show_alg(alg)} is not allowed "
                             f"(accepted: {', '.join(issuer.algorithms)})")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenError("token key id (kid) must be a string")
        key = await self._signing_key(issuer, kid)
        if _ALG_KEY_TYPE.get(alg[:2]) != key.kty or (key.alg is not None and key.alg != alg):
            raise TokenError(f"the identity provider's key {_show(key.kid)} is not for {alg} signatures")
        claims = _decode(id_token, key, alg, config, unverified)
        self._check_times(claims, config.leeway)
        _check_azp(claims, config)
        _check_nonce(claims, nonce)
        identity = VerifiedIdentity(
            issuer=config.issuer,
            subject=claims["sub"],
            username=_username(claims, config),
            groups=_groups(claims, config),
            email=claims["email"] if isinstance(claims.get("email"), str) else None,
            machine=issuer.machine,
        )
        logger.debug("verified a token from %s for %s (kid %s)", config.issuer, identity.username, kid)
        return identity

    def _issuer_for(self, unverified: dict[str, Any]) -> _Issuer:
        iss = unverified.get("iss")
        if not isinstance(iss, str):
            raise TokenError("token has no issuer (iss) claim")
        issuer = self._issuers.get(iss)
        if issuer is None:
            raise TokenError(f"token issuer {_show(iss)} is not trusted")
        return issuer

    def _check_times(self, claims: dict[str, Any], leeway: float) -> None:
        # Checked here rather than by PyJWT, which reads the wall clock itself: one injected
        # clock governs expiry, key refetches and tests alike.
        now = self._clock()
        exp, iat = _seconds(claims, "exp"), _seconds(claims, "iat")
        if exp <= now - leeway:
            raise TokenError(f"token expired at {_when(exp)}; run `bastion login` again")
        if iat > now + leeway:
            raise TokenError(f"token was issued in the future ({_when(iat)}); "
                             "check the clocks of the bastion and the identity provider")
        if "nbf" in claims and (nbf := _seconds(claims, "nbf")) > now + leeway:
            raise TokenError(f"token is not valid before {_when(nbf)}")

    # -- keys ----------------------------------------------------------------

    async def _signing_key(self, issuer: _Issuer, kid: str | None) -> _Key:
        """The published key for ``kid``, refetching the JWKS at most once per interval for an unknown one."""
        failures_before = issuer.failures
        async with issuer.lock:  # concurrent verifications share one fetch
            if issuer.failures != failures_before:
                raise TokenError(issuer.last_failure)  # the fetch we queued behind failed; don't repeat it
            now = self._clock()
            if issuer.loaded_at is None or now - issuer.loaded_at > JWKS_MAX_AGE:
                await self._load(issuer, discover=True)
            key = _find_key(issuer, kid)
            if key is None and kid is not None and (
                issuer.last_refetch is None or now - issuer.last_refetch >= self._refresh_interval
            ):
                logger.info("key id %s is not in the JWKS of %s; fetching it again",
                            _show(kid), issuer.config.issuer)
                issuer.last_refetch = now
                await self._load(issuer, discover=False)
                key = _find_key(issuer, kid)
        if key is not None:
            return key
        if not issuer.keys:
            raise TokenError(f"the identity provider at {issuer.config.issuer} publishes no usable signing keys")
        if kid is None:
            raise TokenError(f"token has no key id (kid) and the identity provider publishes "
                             f"{len(issuer.keys)} keys; refusing to guess")
        raise TokenError(f"token key id {_show(kid)} is not published by {issuer.config.issuer}; "
                         "if it has just rotated its keys, run `bastion login` again in a minute")

    async def _load(self, issuer: _Issuer, *, discover: bool) -> None:
        try:
            if discover or issuer.jwks_uri is None:
                issuer.jwks_uri = await self._discover(issuer.config.issuer)
            keys = _parse_jwks(await self._fetch_json(issuer.jwks_uri), issuer.jwks_uri)
        except TokenError as e:
            issuer.failures += 1
            issuer.last_failure = str(e)
            raise
        issuer.keys, issuer.loaded_at = keys, self._clock()
        logger.info("loaded %d signing keys of %s", len(keys), issuer.config.issuer)

    async def _discover(self, issuer: str) -> str:
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = await self._fetch_json(url)
        if doc.get("issuer") != issuer:
            raise TokenError(f"the identity provider at {url} names its issuer {_show(doc.get('issuer'))}, "
                             f"not {_show(issuer)}; check the configured issuer URL")
        jwks_uri = doc.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise TokenError(f"the discovery document at {url} has no jwks_uri")
        return jwks_uri

    async def _fetch_json(self, url: str) -> dict[str, Any]:
        _require_secure_url(url)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT))
        try:
            headers = {"Accept": "application/json"}
            async with self._session.get(url, allow_redirects=False, headers=headers) as resp:
                if resp.status != 200:
                    raise TokenError(f"the identity provider at {url} answered HTTP {resp.status}")
                body = await resp.content.read(MAX_DOCUMENT_BYTES + 1)
        except TimeoutError as e:
            raise TokenError(f"could not reach the identity provider at {url}: "
                             f"no answer within {FETCH_TIMEOUT:g} s") from e
        except aiohttp.ClientError as e:
            raise TokenError(f"could not reach the identity provider at {url}: {e or type(e).__name__}") from e
        if len(body) > MAX_DOCUMENT_BYTES:
            raise TokenError(f"the identity provider at {url} sent more than {MAX_DOCUMENT_BYTES} bytes")
        try:
            doc = json.loads(body)
        except ValueError as e:
            raise TokenError(f"the identity provider at {url} did not answer with JSON") from e
        if not isinstance(doc, dict):
            raise TokenError(f"the identity provider at {url} did not answer with a JSON object")
        return doc


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of ``token``, unverified: only to choose the issuer and key."""
    if not isinstance(token, str) or not token:
        raise TokenError("no ID token was given")
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenError(f"token is longer than {MAX_TOKEN_CHARS} characters")
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as e:
        raise TokenError("token is malformed: it is not a signed JWT") from e
    return header, claims


def _parse_jwks(doc: dict[str, Any], url: str) -> list[_Key]:
    entries = doc.get("keys")
    if not isinstance(entries, list):
        raise TokenError(f"the JWKS at {url} has no keys list")
    keys = []
    for entry in entries:
        # Only asymmetric signing keys: an "oct" key here must never become an HMAC secret.
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        try:
            key = jwt.PyJWK(entry).key
        except jwt.PyJWTError as e:
            logger.debug("skipping key %s of %s: %s", _show(entry.get("kid")), url, type(e).__name__)
            continue
        kid, alg = entry.get("kid"), entry.get("alg")
        keys.append(_Key(kid if isinstance(kid, str) else None, entry["kty"],
                         alg if isinstance(alg, str) else None, key))
    return keys


def _find_key(issuer: _Issuer, kid: str | None) -> _Key | None:
    if kid is None:
        return issuer.keys[0] if len(issuer.keys) == 1 else None
    return next((k for k in issuer.keys if k.kid == kid), None)


def _decode(token: str, key: _Key, alg: str, config: IssuerConfig, unverified: dict[str, Any]) -> dict[str, Any]:
    """Check signature, iss, aud and required claims with PyJWT; map its errors to safe messages."""
    try:
        return jwt.decode(
            token, key.key, algorithms=[alg], audience=config.audience, issuer=config.issuer,
            options={"require": REQUIRED_CLAIMS, "verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
    except jwt.InvalidSignatureError as e:
        raise TokenError("token signature is invalid") from e
    except jwt.MissingRequiredClaimError as e:
        raise TokenError(f"token is missing the required {e.claim} claim") from e
    except jwt.InvalidAudienceError as e:
        raise TokenError(f"audience {_show(unverified.get('aud'))} is not accepted "
                         f"(expected {_show(config.audience)})") from e
    except jwt.InvalidIssuerError as e:
        raise TokenError(f"token issuer is not {_show(config.issuer)}") from e
    except jwt.InvalidAlgorithmError as e:
        raise TokenError(f"token algorithm {_show_alg(alg)} is not allowed") from e
    except jwt.exceptions.InvalidSubjectError as e:
        raise TokenError("token subject (sub) must be a string") from e
    except jwt.DecodeError as e:
        raise TokenError("token is malformed") from e
    except jwt.InvalidKeyError as e:
        raise TokenError(f"the identity provider's key {_show(key.kid)} cannot verify {alg} tokens") from e
    except jwt.PyJWTError as e:  # any other check PyJWT adds in a later version
        raise TokenError(f"token is invalid ({type(e).__name__})") from e


def _seconds(claims: dict[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TokenError(f"token claim {name} must be a number of seconds since the epoch")
    return float(value)


def _check_azp(claims: dict[str, Any], config: IssuerConfig) -> None:
    """OIDC Core 3.1.3.7: several audiences need an azp, and an azp must be our client."""
    aud, azp = claims["aud"], claims.get("azp")
    if isinstance(aud, list) and len(aud) > 1 and azp is None:
        raise TokenError("token has several audiences but no authorized party (azp) claim")
    expected = config.client_id or config.audience
    if azp is not None and azp != expected:
        raise TokenError(f"token was issued to another client: its authorized party (azp) "
                         f"is not {_show(expected)}")


def _check_nonce(claims: dict[str, Any], nonce: str | None) -> None:
    carried = claims.get("nonce")
    if nonce is not None:
        if not isinstance(carried, str) or not hmac.compare_digest(carried.encode(), nonce.encode()):
            raise TokenError("token nonce does not match this login; run `bastion login` again")
    elif carried is not None:
        raise TokenError("token carries a nonce but none was presented with it; send the login's nonce too")


def _username(claims: dict[str, Any], config: IssuerConfig) -> str:
    """The bastion username from ``username_claim``. Refuses rather than mangles: a collision is impersonation."""
    claim = config.username_claim
    value = claims.get(claim)
    if not isinstance(value, str) or not value:
        raise TokenError(f"token has no {claim!r} claim to take the username from")
    if claim == "email" and claims.get("email_verified") is not True:
        # An address the IdP has not verified may be anyone's: as a username it would be impersonation.
        raise TokenError("token's email is not verified by the identity provider, so it cannot be the username")
    if not value.isascii():  # str.lower() folds some non-ASCII letters into ASCII ones (K -> k)
        raise TokenError(f"token claim {claim!r} is not a valid username: it must be ASCII")
    if config.username_domain:
        suffix = "@" + config.username_domain.lower()
        if not value.lower().endswith(suffix):
            raise TokenError(f"token claim {claim!r} is not an address in {config.username_domain}")
        value = value[: -len(suffix)]
    username = config.username_prefix + value.lower()
    if not USERNAME_RE.fullmatch(username):
        raise TokenError(f"token claim {claim!r} does not make a valid username: with the prefix "
                         f"{config.username_prefix!r} it must be 1-32 of a-z 0-9 . _ -, "
                         "starting with a letter or digit")
    return username


def _groups(claims: dict[str, Any], config: IssuerConfig) -> tuple[str, ...]:
    if config.groups_claim is None:
        return ()
    raw = claims.get(config.groups_claim)
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(g, str) and g for g in raw):
        raise TokenError(f"token claim {config.groups_claim!r} must be a list of non-empty strings")
    return tuple(sorted({config.groups_prefix + g for g in raw}))
