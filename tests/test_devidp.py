"""The development identity provider, driven over plain HTTP: discovery, device flow, auth code + PKCE."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
from oidc_issuer import OidcIssuer

from bastion.config import IssuerConfig
from bastion.devidp_pages import BANNER
from bastion.oidc import OidcVerifier, VerifiedIdentity

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
INTERVAL = 0.2
REDIRECT = "http://127.0.0.1:53682/callback"


@pytest.fixture(scope="module")
def idp() -> Iterator[OidcIssuer]:
    with OidcIssuer(device_interval=INTERVAL) as issuer:
        yield issuer


def claims_of(id_token: str) -> dict[str, Any]:
    return jwt.decode(id_token, options={"verify_signature": False})


def verified(issuer: str, id_token: str, nonce: str | None = None) -> VerifiedIdentity:
    async def run() -> VerifiedIdentity:
        verifier = OidcVerifier(IssuerConfig(issuer=issuer, audience="bastion", client_id="bastion"))
        try:
            return await verifier.verify(id_token, nonce=nonce)
        finally:
            await verifier.close()
    return asyncio.run(run())


def test_discovery_and_jwks(idp: OidcIssuer) -> None:
    doc = requests.get(f"{idp.issuer}/.well-known/openid-configuration", timeout=5).json()
    assert doc["issuer"] == idp.issuer
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert DEVICE_GRANT in doc["grant_types_supported"]
    for name in ("authorization_endpoint", "token_endpoint", "device_authorization_endpoint", "jwks_uri"):
        assert doc[name].startswith(idp.issuer + "/")
    keys = requests.get(doc["jwks_uri"], timeout=5).json()["keys"]
    assert keys and all(k["kty"] == "RSA" and k["use"] == "sig" and k["alg"] == "RS256" and k["kid"] for k in keys)
    assert all("d" not in k for k in keys)  # public halves only


# --- device flow --------------------------------------------------------------------------


def start_device(issuer: str) -> dict[str, Any]:
    resp = requests.post(f"{issuer}/device/authorize", data={"client_id": "bastion", "scope": "openid"}, timeout=5)
    assert resp.status_code == 200
    return resp.json()


def poll(issuer: str, device_code: str) -> requests.Response:
    return requests.post(f"{issuer}/token", timeout=5,
                         data={"grant_type": DEVICE_GRANT, "device_code": device_code, "client_id": "bastion"})


def test_device_flow_approved_through_the_form(idp: OidcIssuer) -> None:
    grant = start_device(idp.issuer)
    assert re.fullmatch(r"[A-Z]{4}-[A-Z]{4}", grant["user_code"])
    assert grant["verification_uri"] == f"{idp.issuer}/device"
    assert grant["verification_uri_complete"] == f"{idp.issuer}/device?user_code={grant['user_code']}"
    assert grant["interval"] == INTERVAL and grant["expires_in"] == 600

    first = poll(idp.issuer, grant["device_code"])
    assert first.status_code == 400 and first.json()["error"] == "authorization_pending"
    assert poll(idp.issuer, grant["device_code"]).json()["error"] == "slow_down"  # polled too soon

    page = requests.get(grant["verification_uri_complete"], timeout=5)
    assert page.status_code == 200
    assert BANNER in page.text and grant["user_code"] in page.text and "Approve as carol" in page.text
    approve = requests.post(f"{idp.issuer}/device", timeout=5, data=[
        ("user_code", grant["user_code"].lower()), ("username", "carol"), ("groups", "dev"), ("groups", "sre"),
        ("action", "approve")])
    assert approve.status_code == 200 and "Approved" in approve.text and BANNER in approve.text

    time.sleep(INTERVAL)
    done = poll(idp.issuer, grant["device_code"])
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["token_type"] == "Bearer" and body["access_token"] and body["expires_in"] == 300
    claims = claims_of(body["id_token"])
    assert claims["preferred_username"] == "carol" and claims["groups"] == ["dev", "sre"]
    assert "nonce" not in claims
    identity = verified(idp.issuer, body["id_token"])
    assert identity.username == "carol" and identity.groups == ("dev", "sre")
    assert poll(idp.issuer, grant["device_code"]).json()["error"] == "invalid_grant"  # collected once only


def test_device_flow_programmatic_approval(idp: OidcIssuer) -> None:
    grant = start_device(idp.issuer)
    idp.approve_device(grant["user_code"], "dave", ["ops"])
    claims = claims_of(poll(idp.issuer, grant["device_code"]).json()["id_token"])
    assert claims["preferred_username"] == "dave" and claims["groups"] == ["ops"]


def test_device_flow_denied(idp: OidcIssuer) -> None:
    grant = start_device(idp.issuer)
    deny = requests.post(f"{idp.issuer}/device", data={"user_code": grant["user_code"], "action": "deny"}, timeout=5)
    assert deny.status_code == 200 and "Denied" in deny.text
    resp = poll(idp.issuer, grant["device_code"])
    assert resp.status_code == 400 and resp.json()["error"] == "access_denied"
    # a decided code cannot be approved afterwards
    late = requests.post(f"{idp.issuer}/device", timeout=5,
                         data={"user_code": grant["user_code"], "username": "alice", "action": "approve"})
    assert late.status_code == 404


def test_device_flow_expires() -> None:
    with OidcIssuer(device_interval=0.05, device_code_ttl=0.3) as short:
        grant = start_device(short.issuer)
        assert grant["expires_in"] == 0.3
        time.sleep(0.35)
        resp = poll(short.issuer, grant["device_code"])
        assert resp.status_code == 400 and resp.json()["error"] == "expired_token"
        assert requests.get(grant["verification_uri_complete"], timeout=5).status_code == 404


def test_device_form_refuses_unknown_users_and_groups(idp: OidcIssuer) -> None:
    grant = start_device(idp.issuer)
    for person in ({"username": "mallory"}, {"username": "alice", "groups": "admin"}):
        resp = requests.post(f"{idp.issuer}/device", timeout=5,
                             data={"user_code": grant["user_code"], "action": "approve", **person})
        assert resp.status_code == 400
    assert poll(idp.issuer, grant["device_code"]).json()["error"] == "authorization_pending"


def test_device_page_escapes_what_it_echoes(idp: OidcIssuer) -> None:
    page = requests.get(f"{idp.issuer}/device", params={"user_code": "<script>alert(1)</script>"}, timeout=5)
    assert page.status_code == 404 and "<script>" not in page.text and BANNER in page.text
    assert requests.post(f"{idp.issuer}/device/authorize", data={"client_id": "other"}, timeout=5).status_code == 401


# --- authorization code + PKCE ----------------------------------------------------------------


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize(issuer: str, challenge: str, *, action: str = "approve", redirect_uri: str = REDIRECT,
              **extra: str) -> requests.Response:
    """What the browser does: open /authorize, then press a button on the page."""
    params = {"client_id": "bastion", "redirect_uri": redirect_uri, "response_type": "code", "scope": "openid",
              "code_challenge": challenge, "code_challenge_method": "S256", "state": "st-1", "nonce": "nn-1", **extra}
    page = requests.get(f"{issuer}/authorize", params=params, timeout=5, allow_redirects=False)
    if page.status_code != 200:
        return page
    assert BANNER in page.text and 'name="code_challenge"' in page.text
    form = [*params.items(), ("username", "alice"), ("groups", "dev"), ("action", action)]
    return requests.post(f"{issuer}/authorize", data=form, timeout=5, allow_redirects=False)


def code_from(resp: requests.Response) -> str:
    assert resp.status_code == 302, resp.text
    location = resp.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    query = parse_qs(urlsplit(location).query)
    assert query["state"] == ["st-1"]
    return query["code"][0]


def redeem(issuer: str, code: str, verifier: str, redirect_uri: str = REDIRECT) -> requests.Response:
    return requests.post(f"{issuer}/token", timeout=5, data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
        "code_verifier": verifier, "client_id": "bastion"})


def test_code_flow_issues_a_token_once(idp: OidcIssuer) -> None:
    verifier, challenge = pkce()
    code = code_from(authorize(idp.issuer, challenge))
    resp = redeem(idp.issuer, code, verifier)
    assert resp.status_code == 200, resp.text
    identity = verified(idp.issuer, resp.json()["id_token"], nonce="nn-1")
    assert identity.username == "alice" and identity.groups == ("dev",)
    reuse = redeem(idp.issuer, code, verifier)
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"


def test_code_flow_refuses_a_wrong_verifier(idp: OidcIssuer) -> None:
    verifier, challenge = pkce()
    code = code_from(authorize(idp.issuer, challenge))
    wrong = redeem(idp.issuer, code, pkce()[0])
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    assert "code_verifier" in wrong.json()["error_description"]
    assert redeem(idp.issuer, code, verifier).json()["error"] == "invalid_grant"  # the guess burnt the code


def test_code_flow_refuses_another_redirect_uri_at_the_token_endpoint(idp: OidcIssuer) -> None:
    verifier, challenge = pkce()
    code = code_from(authorize(idp.issuer, challenge))
    resp = redeem(idp.issuer, code, verifier, redirect_uri="http://127.0.0.1:1/other")
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"


@pytest.mark.parametrize("redirect_uri", [
    "https://evil.example/callback", "http://evil.example/callback", "http://127.0.0.1.evil.example/cb",
    "http://user@127.0.0.1:5/cb", "javascript:alert(1)", ""])
def test_code_flow_refuses_non_loopback_redirects(idp: OidcIssuer, redirect_uri: str) -> None:
    resp = authorize(idp.issuer, pkce()[1], redirect_uri=redirect_uri)
    assert resp.status_code == 400 and "Location" not in resp.headers
    assert "loopback" in resp.text and BANNER in resp.text


def test_code_flow_requires_s256(idp: OidcIssuer) -> None:
    resp = authorize(idp.issuer, pkce()[1], code_challenge_method="plain")
    query = parse_qs(urlsplit(resp.headers["Location"]).query)
    assert resp.status_code == 302 and query["error"] == ["invalid_request"] and query["state"] == ["st-1"]


def test_code_flow_denied(idp: OidcIssuer) -> None:
    resp = authorize(idp.issuer, pkce()[1], action="deny")
    assert resp.status_code == 302
    assert parse_qs(urlsplit(resp.headers["Location"]).query) == {"error": ["access_denied"], "state": ["st-1"]}


def test_unknown_client_is_refused(idp: OidcIssuer) -> None:
    resp = authorize(idp.issuer, pkce()[1], client_id="grafana")
    assert resp.status_code == 400 and "Location" not in resp.headers
    token = requests.post(f"{idp.issuer}/token", data={"grant_type": "authorization_code", "client_id": "x"},
                          timeout=5)
    assert token.status_code == 401 and token.json()["error"] == "invalid_client"
