"""ID-token verification against a real issuer (the dev IdP on loopback): accepted, mapped, and refused."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from oidc_issuer import OidcIssuer

from bastion.config import IssuerConfig
from bastion.errors import TokenError
from bastion.oidc import OidcVerifier, VerifiedIdentity


def people(issuer: OidcIssuer, **overrides: Any) -> IssuerConfig:
    return IssuerConfig(issuer=issuer.issuer, audience="bastion", client_id="bastion", **overrides)


def verify(config: IssuerConfig, token: str, *, nonce: str | None = None,
           machines: tuple[IssuerConfig, ...] = ()) -> VerifiedIdentity:
    async def run() -> VerifiedIdentity:
        verifier = OidcVerifier(config, machines)
        try:
            return await verifier.verify(token, nonce=nonce)
        finally:
            await verifier.close()
    return asyncio.run(run())


def refusal(config: IssuerConfig, token: str, **kwargs: Any) -> str:
    """The reason ``token`` is refused; it must never repeat the token."""
    with pytest.raises(TokenError) as info:
        verify(config, token, **kwargs)
    message = str(info.value)
    assert token not in message and token.split(".")[1] not in message
    return message


def token_for(issuer: OidcIssuer, username: str = "alice", groups: list[str] | None = None, **claims: Any) -> str:
    nonce = claims.pop("nonce", None)
    return issuer.mint_id_token(issuer.standard_claims(username, groups or ["dev"], nonce=nonce, **claims))


@pytest.fixture(scope="module")
def machine_issuer() -> Iterator[OidcIssuer]:
    with OidcIssuer(client_id="ci-runner") as issuer:
        yield issuer


# --- accepted ---------------------------------------------------------------------------------


def test_valid_token_is_mapped(oidc_issuer: OidcIssuer) -> None:
    token = token_for(oidc_issuer, "Carol", ["sre", "dev", "sre"])
    identity = verify(people(oidc_issuer, groups_prefix="idp:"), token)
    assert identity.username == "carol"
    assert identity.groups == ("idp:dev", "idp:sre")
    assert identity.email == "Carol@example.test"
    assert identity.issuer == oidc_issuer.issuer and identity.subject and not identity.machine


def test_audience_as_a_one_element_list_and_nonce_round_trip(oidc_issuer: OidcIssuer) -> None:
    token = token_for(oidc_issuer, aud=["bastion"], nonce="n-123")
    assert verify(people(oidc_issuer), token, nonce="n-123").username == "alice"


def test_machine_issuer_is_flagged_and_prefixed(oidc_issuer: OidcIssuer, machine_issuer: OidcIssuer) -> None:
    machine = IssuerConfig(issuer=machine_issuer.issuer, audience="bastion", username_claim="sub",
                           username_prefix="ci-", groups_claim=None)
    token = machine_issuer.mint_id_token(machine_issuer.standard_claims(
        "x", ["ignored"], sub="Deploy-Bot", aud="bastion", azp=None))
    identity = verify(people(oidc_issuer), token, machines=(machine,))
    assert identity.machine and identity.username == "ci-deploy-bot" and identity.groups == ()
    person = verify(people(oidc_issuer), token_for(oidc_issuer), machines=(machine,))
    assert not person.machine and person.username == "alice"


def test_username_domain_is_stripped_case_insensitively(oidc_issuer: OidcIssuer) -> None:
    config = people(oidc_issuer, username_claim="email", username_domain="example.test")
    token = token_for(oidc_issuer, email="Alice.Smith@EXAMPLE.test")
    assert verify(config, token).username == "alice.smith"


@pytest.mark.parametrize("verified", [False, None, "true"])
def test_an_unverified_email_is_never_a_username(oidc_issuer: OidcIssuer, verified: object) -> None:
    config = people(oidc_issuer, username_claim="email", username_domain="example.test")
    token = token_for(oidc_issuer, email="alice@example.test", email_verified=verified)
    with pytest.raises(TokenError, match="email is not verified"):
        verify(config, token)


def test_token_without_kid_is_accepted_only_with_a_single_key() -> None:
    with OidcIssuer() as issuer:
        claims = issuer.standard_claims("alice", [])
        assert verify(people(issuer), issuer.mint_id_token(claims, kid=None)).username == "alice"
        issuer.rotate_key()
        reason = refusal(people(issuer), issuer.mint_id_token(claims, kid=None))
        assert reason == "token has no key id (kid) and the identity provider publishes 2 keys; refusing to guess"


def test_key_rotation(oidc_issuer: OidcIssuer) -> None:
    async def run() -> None:
        verifier = OidcVerifier(people(oidc_issuer))
        try:
            old = token_for(oidc_issuer)
            await verifier.verify(old)
            oidc_issuer.rotate_key()
            new = token_for(oidc_issuer)  # signed with the new kid, not yet in the cached JWKS
            assert (await verifier.verify(new)).username == "alice"
            assert (await verifier.verify(old)).username == "alice"  # the old key is still published
        finally:
            await verifier.close()
    asyncio.run(run())


# --- refused: signature, algorithm and keys ---------------------------------------------------


def test_alg_none_is_refused(oidc_issuer: OidcIssuer) -> None:
    token = oidc_issuer.mint_id_token(oidc_issuer.standard_claims("alice", []), alg="none")
    assert refusal(people(oidc_issuer), token).startswith("token algorithm none is not allowed")


def test_hs256_with_the_public_key_as_secret_is_refused(oidc_issuer: OidcIssuer) -> None:
    # The attacker's view: the public key from the JWKS, used as an HMAC secret.
    jwk = requests.get(f"{oidc_issuer.issuer}/jwks", timeout=5).json()["keys"][-1]
    pem = RSAAlgorithm.from_jwk(jwk).public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    token = oidc_issuer.mint_id_token(oidc_issuer.standard_claims("alice", []), alg="HS256", key=pem,
                                      kid=jwk["kid"])
    assert refusal(people(oidc_issuer), token).startswith("token algorithm HS256 is not allowed")
    # ...even when someone configured HS256: only asymmetric algorithms are ever used
    config = people(oidc_issuer, algorithms=("HS256", "RS256"))
    assert refusal(config, token).startswith("token algorithm HS256 is not allowed (accepted: RS256)")


def test_signature_by_another_key_with_the_same_kid_is_refused(oidc_issuer: OidcIssuer) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = oidc_issuer.mint_id_token(oidc_issuer.standard_claims("alice", []), key=other)
    assert refusal(people(oidc_issuer), token) == "token signature is invalid"


def test_unknown_kid_refetches_the_jwks_at_most_once_per_interval(oidc_issuer: OidcIssuer) -> None:
    now = [time.time()]
    claims = oidc_issuer.standard_claims("alice", [])

    async def refused(verifier: OidcVerifier, kid: str) -> str:
        with pytest.raises(TokenError) as info:
            await verifier.verify(oidc_issuer.mint_id_token(claims, kid=kid))
        return str(info.value)

    async def run() -> None:
        verifier = OidcVerifier(people(oidc_issuer), clock=lambda: now[0], jwks_refresh_interval=30)
        try:
            await verifier.verify(oidc_issuer.mint_id_token(claims))  # the first load
            before = oidc_issuer.jwks_requests
            reason = await refused(verifier, "kid-1")
            assert reason.startswith(f"token key id 'kid-1' is not published by {oidc_issuer.issuer}")
            assert oidc_issuer.jwks_requests == before + 1
            await refused(verifier, "kid-2")  # within the interval: no second refetch
            await asyncio.gather(*(refused(verifier, f"kid-{n}") for n in range(3, 8)))
            assert oidc_issuer.jwks_requests == before + 1
            now[0] += 31
            await refused(verifier, "kid-8")  # the interval has passed: one more
            assert oidc_issuer.jwks_requests == before + 2
        finally:
            await verifier.close()
    asyncio.run(run())


def test_concurrent_unknown_kids_share_one_refetch(oidc_issuer: OidcIssuer) -> None:
    claims = oidc_issuer.standard_claims("alice", [])
    tokens = [oidc_issuer.mint_id_token(claims, kid=f"concurrent-{n}") for n in range(6)]

    async def run() -> list[BaseException | VerifiedIdentity]:
        verifier = OidcVerifier(people(oidc_issuer))
        try:
            await verifier.verify(oidc_issuer.mint_id_token(claims))
            before = oidc_issuer.jwks_requests
            results = await asyncio.gather(*(verifier.verify(t) for t in tokens), return_exceptions=True)
            assert oidc_issuer.jwks_requests == before + 1
            return results
        finally:
            await verifier.close()
    assert all(isinstance(r, TokenError) for r in asyncio.run(run()))


# --- refused: claims -------------------------------------------------------------------------


def test_untrusted_issuer_is_refused(oidc_issuer: OidcIssuer) -> None:
    token = token_for(oidc_issuer, iss="https://idp.evil.example")
    assert refusal(people(oidc_issuer), token) == "token issuer 'https://idp.evil.example' is not trusted"


def test_wrong_audience_is_refused(oidc_issuer: OidcIssuer) -> None:
    token = token_for(oidc_issuer, aud="grafana", azp=None)
    assert refusal(people(oidc_issuer), token) == "audience 'grafana' is not accepted (expected 'bastion')"


def test_expired_token_is_refused(oidc_issuer: OidcIssuer) -> None:
    now = int(time.time())
    token = token_for(oidc_issuer, iat=now - 7200, exp=now - 3600)
    reason = refusal(people(oidc_issuer), token)
    assert reason.startswith("token expired at ") and reason.endswith("; run `bastion login` again")


def test_expiry_follows_the_injected_clock(oidc_issuer: OidcIssuer) -> None:
    token = token_for(oidc_issuer)  # valid for 300 s by the wall clock

    async def run() -> str:
        verifier = OidcVerifier(people(oidc_issuer), clock=lambda: time.time() + 3600)
        try:
            with pytest.raises(TokenError) as info:
                await verifier.verify(token)
            return str(info.value)
        finally:
            await verifier.close()
    assert asyncio.run(run()).startswith("token expired at ")


def test_expired_within_leeway_is_accepted(oidc_issuer: OidcIssuer) -> None:
    now = int(time.time())
    token = token_for(oidc_issuer, iat=now - 600, exp=now - 30)
    assert verify(people(oidc_issuer, leeway=60), token).username == "alice"


def test_iat_in_the_future_is_refused(oidc_issuer: OidcIssuer) -> None:
    now = int(time.time())
    token = token_for(oidc_issuer, iat=now + 3600, exp=now + 7200)
    assert refusal(people(oidc_issuer), token).startswith("token was issued in the future")


def test_nbf_in_the_future_is_refused(oidc_issuer: OidcIssuer) -> None:
    token = token_for(oidc_issuer, nbf=int(time.time()) + 3600)
    assert refusal(people(oidc_issuer), token).startswith("token is not valid before ")


@pytest.mark.parametrize("claim", ["sub", "exp", "iat", "aud"])
def test_missing_required_claim_is_refused(oidc_issuer: OidcIssuer, claim: str) -> None:
    claims: dict[str, Any] = {claim: None}
    token = token_for(oidc_issuer, **claims)
    assert refusal(people(oidc_issuer), token) == f"token is missing the required {claim} claim"


def test_wrong_nonce_is_refused(oidc_issuer: OidcIssuer) -> None:
    token = token_for(oidc_issuer, nonce="from-another-login")
    reason = refusal(people(oidc_issuer), token, nonce="this-login")
    assert reason == "token nonce does not match this login; run `bastion login` again"
    assert refusal(people(oidc_issuer), token_for(oidc_issuer), nonce="this-login") == reason


def test_token_nonce_without_caller_nonce_is_refused(oidc_issuer: OidcIssuer) -> None:
    token = token_for(oidc_issuer, nonce="n-1")
    assert refusal(people(oidc_issuer), token).startswith("token carries a nonce but none was presented")


def test_azp_of_another_client_is_refused(oidc_issuer: OidcIssuer) -> None:
    token = token_for(oidc_issuer, azp="grafana")
    assert refusal(people(oidc_issuer), token).startswith("token was issued to another client")


def test_several_audiences_without_azp_are_refused(oidc_issuer: OidcIssuer) -> None:
    token = token_for(oidc_issuer, aud=["bastion", "grafana"], azp=None)
    assert refusal(people(oidc_issuer), token) == "token has several audiences but no authorized party (azp) claim"
    with_azp = token_for(oidc_issuer, aud=["bastion", "grafana"])
    assert verify(people(oidc_issuer), with_azp).username == "alice"


def test_username_outside_the_domain_is_refused(oidc_issuer: OidcIssuer) -> None:
    config = people(oidc_issuer, username_claim="email", username_domain="example.test")
    token = token_for(oidc_issuer, email="alice@example.test.evil.example")
    assert refusal(config, token) == "token claim 'email' is not an address in example.test"


@pytest.mark.parametrize("name", ["alice smith", "../root", "-alice", "alice\n", "a" * 33, "\u212aarol", ""])
def test_username_with_illegal_characters_is_refused(oidc_issuer: OidcIssuer, name: str) -> None:
    token = token_for(oidc_issuer, preferred_username=name)
    reason = refusal(people(oidc_issuer), token)
    assert "'preferred_username'" in reason and (not name.strip() or name.strip() not in reason)


@pytest.mark.parametrize("groups", ["dev", {"dev": True}, ["dev", 1], ["dev", ""]])
def test_groups_claim_not_a_list_of_strings_is_refused(oidc_issuer: OidcIssuer, groups: object) -> None:
    claims = oidc_issuer.standard_claims("alice", [])
    token = oidc_issuer.mint_id_token({**claims, "groups": groups})
    assert refusal(people(oidc_issuer), token) == "token claim 'groups' must be a list of non-empty strings"


def test_absent_groups_claim_means_no_groups(oidc_issuer: OidcIssuer) -> None:
    claims = oidc_issuer.standard_claims("alice", ["dev"])
    del claims["groups"]
    assert verify(people(oidc_issuer), oidc_issuer.mint_id_token(claims)).groups == ()


def test_malformed_token_is_refused(oidc_issuer: OidcIssuer) -> None:
    reason = refusal(people(oidc_issuer), "garbage-header.garbage-payload.garbage-signature")
    assert reason == "token is malformed: it is not a signed JWT"


# --- refused: the issuer itself ----------------------------------------------------------------


def test_unreachable_identity_provider_is_a_clear_error() -> None:
    with OidcIssuer() as issuer:
        config = people(issuer)
        token = issuer.mint_id_token(issuer.standard_claims("alice", []))
    reason = refusal(config, token)  # the issuer has stopped: nothing listens on its port
    assert reason.startswith(f"could not reach the identity provider at {issuer.issuer}/.well-known/")


def test_plain_http_issuer_off_loopback_is_refused() -> None:
    config = IssuerConfig(issuer="http://idp.example.com", audience="bastion")
    with OidcIssuer() as issuer:
        token = issuer.mint_id_token(issuer.standard_claims("alice", [], iss="http://idp.example.com"))
    assert refusal(config, token) == ("identity provider URL http://idp.example.com/.well-known/openid-configuration"
                                      " must use https (plain http is allowed only on loopback)")


def test_discovery_naming_another_issuer_is_refused(oidc_issuer: OidcIssuer) -> None:
    # "localhost" reaches the same server, whose discovery document says 127.0.0.1
    alias = oidc_issuer.issuer.replace("127.0.0.1", "localhost")
    token = token_for(oidc_issuer, iss=alias)
    reason = refusal(IssuerConfig(issuer=alias, audience="bastion"), token)
    assert reason.startswith(f"the identity provider at {alias}/.well-known/openid-configuration names its issuer")
