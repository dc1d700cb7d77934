"""The approvals API over real HTTP: bearer ID tokens from the issuer fixture, decisions by the approval rules."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import rsa
from oidc_issuer import OidcIssuer

from bastion.approvals import Approvals
from bastion.audit import AuditStore
from bastion.config import Config, load_config
from bastion.http import make_app
from bastion.keys import Keys, load_keys
from bastion.oidc import OidcVerifier
from bastion.provision import InitOptions, initialise
from bastion.runtime import Runtime
from policies.approvals import Request, RequestKind
from policies.model import ApprovalRule, Approvers

T = TypeVar("T")
RULE = ApprovalRule(approvers=Approvers(groups=("sre",)), max_duration=3600.0)
TWO = dataclasses.replace(RULE, min_approvals=2)
UPDATE = b"UPDATE accounts SET balance = 0 WHERE id = 7"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, oidc_issuer: OidcIssuer) -> tuple[Config, Keys]:
    """A bastion installation (config and keys) that trusts the issuer fixture; made once per module."""
    config = load_config(initialise(InitOptions(tmp_path_factory.mktemp("bastion"), issuer=oidc_issuer.issuer)))
    return config, load_keys(config.state_dir, config.host_names)


@pytest.fixture
def runtime(tmp_path: Path, installed: tuple[Config, Keys]) -> Iterator[Runtime]:
    config, keys = installed
    store = AuditStore(tmp_path / "audit.db")
    runtime = Runtime(config=config, keys=keys, store=store)
    runtime.approvals = Approvals(store)
    yield runtime
    store.close()


def serve(runtime: Runtime, scenario: Callable[[TestClient[Any, Any]], Awaitable[T]]) -> T:
    """Run the bastion's real HTTP app on a loopback port and drive it with an HTTP client."""
    async def main() -> T:
        verifier = OidcVerifier(runtime.config.identity.oidc)
        client: TestClient[Any, Any] = TestClient(TestServer(make_app(runtime, verifier)))
        await client.start_server()
        try:
            return await scenario(client)
        finally:
            await client.close()
            await verifier.close()
    return asyncio.run(main())


def bearer(issuer: OidcIssuer, user: str, groups: list[str], **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.mint_id_token(issuer.standard_claims(user, groups, **claims))}"}


def file(runtime: Runtime, rule: ApprovalRule = RULE, **kw: Any) -> Request:
    assert runtime.approvals is not None
    fields: dict[str, Any] = {"requester": "alice", "target": "pg-prod", "kind": RequestKind.ACCESS,
                              "reason": "INC-42", "policy": "dev-prod-approval", "now": time.time()}
    fields.update(kw)
    return runtime.approvals.file_request(rule, **fields)


def kinds(runtime: Runtime, prefix: str = "") -> list[str]:
    return [e.kind for e in runtime.store.events() if e.kind.startswith(prefix)]


Answer = tuple[int, dict[str, Any]]


async def call(client: TestClient[Any, Any], method: str, path: str, headers: dict[str, str] | None = None,
               **kw: Any) -> Answer:
    async with client.request(method, path, headers=headers or {}, **kw) as response:
        return response.status, await response.json()


def test_an_approver_approves_and_the_grant_exists(runtime: Runtime, oidc_issuer: OidcIssuer) -> None:
    request = file(runtime)
    carol = bearer(oidc_issuer, "carol", ["sre"])

    async def scenario(client: TestClient[Any, Any]) -> tuple[Answer, Answer]:
        approved = await call(client, "POST", f"/v1/requests/{request.id}/approve", carol, json={"comment": "ok"})
        return approved, await call(client, "GET", f"/v1/requests/{request.id}", carol)

    (status, body), (shown_status, shown) = serve(runtime, scenario)
    assert status == 200, body
    assert body["request"]["state"] == "approved"
    assert body["request"]["approvals"][0]["approver"] == "carol"
    assert body["request"]["approvals"][0]["comment"] == "ok"
    assert body["grant"]["user"] == "alice" and body["grant"]["target"] == "pg-prod" and body["grant"]["active"]
    assert body["may_decide"] is False
    assert shown_status == 200 and shown["grant"]["id"] == body["grant"]["id"]
    assert runtime.approvals is not None
    assert runtime.approvals.active_grant("alice", "pg-prod", time.time()) is not None
    event = runtime.store.events(kinds=("request.approved",))[-1]
    assert (event.user, event.detail["request"], event.outcome) == ("carol", request.id, "approved")


def test_self_approval_is_refused(runtime: Runtime, oidc_issuer: OidcIssuer) -> None:
    request = file(runtime)  # alice is in sre too: an approver, but not of her own request
    alice = bearer(oidc_issuer, "alice", ["dev", "sre"])

    async def scenario(client: TestClient[Any, Any]) -> Answer:
        return await call(client, "POST", f"/v1/requests/{request.id}/approve", alice, json={})

    status, body = serve(runtime, scenario)
    assert status == 403
    assert "no self-approval" in body["error"]
    assert runtime.approvals is not None and runtime.approvals.get(request.id).state.value == "pending"
    assert runtime.store.events(kinds=("request.refused",))[-1].user == "alice"


def test_someone_who_is_not_an_approver_is_refused(runtime: Runtime, oidc_issuer: OidcIssuer) -> None:
    request = file(runtime)
    bob = bearer(oidc_issuer, "bob", ["dev"])

    async def scenario(client: TestClient[Any, Any]) -> tuple[Answer, Answer]:
        return (await call(client, "POST", f"/v1/requests/{request.id}/approve", bob),
                await call(client, "GET", f"/v1/requests/{request.id}", bob))

    (status, body), (shown_status, shown) = serve(runtime, scenario)
    assert status == 403 and "bob is not an approver for pg-prod" in body["error"]
    assert shown_status == 403 and "bob neither filed request" in shown["error"]


def test_two_approvals_are_needed_when_the_rule_says_two(runtime: Runtime, oidc_issuer: OidcIssuer) -> None:
    request = file(runtime, TWO)
    carol, dave = bearer(oidc_issuer, "carol", ["sre"]), bearer(oidc_issuer, "dave", ["sre"])
    path = f"/v1/requests/{request.id}/approve"

    async def scenario(client: TestClient[Any, Any]) -> list[Answer]:
        return [await call(client, "POST", path, carol), await call(client, "POST", path, carol),
                await call(client, "POST", path, dave), await call(client, "POST", path, dave)]

    first, again, second, late = serve(runtime, scenario)
    assert first[0] == 200
    assert first[1]["request"]["state"] == "pending" and first[1]["grant"] is None
    assert (len(first[1]["request"]["approvals"]), first[1]["request"]["needed"]) == (1, 2)
    assert again[0] == 409 and "carol already approved" in again[1]["error"]
    assert second[0] == 200 and second[1]["request"]["state"] == "approved"
    assert second[1]["grant"]["user"] == "alice"
    assert late[0] == 409 and "already approved" in late[1]["error"]
    assert [e.outcome for e in runtime.store.events(kinds=("request.approved",))] == ["partial", "approved"]


def test_deny_needs_a_reason_and_the_requester_sees_it(runtime: Runtime, oidc_issuer: OidcIssuer) -> None:
    request = file(runtime, kind=RequestKind.STATEMENT, statement=UPDATE)
    carol, alice = bearer(oidc_issuer, "carol", ["sre"]), bearer(oidc_issuer, "alice", ["dev"])
    path = f"/v1/requests/{request.id}/deny"

    async def scenario(client: TestClient[Any, Any]) -> list[Answer]:
        return [await call(client, "POST", path, carol, json={}),
                await call(client, "POST", path, carol, json={"reason": 7}),
                await call(client, "POST", path, carol, data=b"not json"),
                await call(client, "POST", path, carol, json={"reason": "use the migration, not a hotfix"}),
                await call(client, "GET", "/v1/requests", alice)]

    empty, wrong_type, not_json, denied, listing = serve(runtime, scenario)
    assert empty[0] == 400 and "a denial needs a reason" in empty[1]["error"]
    assert wrong_type[0] == 400 and "reason must be a string" in wrong_type[1]["error"]
    assert not_json[0] == 400 and "must be JSON" in not_json[1]["error"]
    assert denied[0] == 200 and denied[1]["request"]["state"] == "denied"
    mine = listing[1]["mine"]
    assert [(r["id"], r["state"], r["decision_reason"], r["statement"]) for r in mine] == [
        (request.id, "denied", "use the migration, not a hotfix", UPDATE.decode())]
    assert runtime.store.events(kinds=("request.denied",))[-1].user == "carol"


def test_listing_shows_mine_and_what_i_may_decide(runtime: Runtime, oidc_issuer: OidcIssuer) -> None:
    alices = file(runtime)
    bobs = file(runtime, requester="bob", target="web-1")
    carol = bearer(oidc_issuer, "carol", ["sre"])
    alice = bearer(oidc_issuer, "alice", ["dev"])

    async def scenario(client: TestClient[Any, Any]) -> tuple[Answer, Answer]:
        return await call(client, "GET", "/v1/requests", carol), await call(client, "GET", "/v1/requests", alice)

    (status, for_carol), (_, for_alice) = serve(runtime, scenario)
    assert status == 200 and for_carol["user"] == "carol"
    assert for_carol["mine"] == []
    assert [r["id"] for r in for_carol["to_decide"]] == [alices.id, bobs.id]
    assert for_carol["to_decide"][0]["needed"] == 1
    assert [r["id"] for r in for_alice["mine"]] == [alices.id] and for_alice["to_decide"] == []


def test_unknown_request_is_404(runtime: Runtime, oidc_issuer: OidcIssuer) -> None:
    carol = bearer(oidc_issuer, "carol", ["sre"])

    async def scenario(client: TestClient[Any, Any]) -> list[Answer]:
        return [await call(client, "GET", "/v1/requests/r-0000000000", carol),
                await call(client, "POST", "/v1/requests/r-0000000000/approve", carol),
                await call(client, "POST", "/v1/requests/r-0000000000/deny", carol, json={"reason": "x"})]

    for status, body in serve(runtime, scenario):
        assert status == 404 and body["error"] == "no request r-0000000000"


def test_an_expired_request_cannot_be_approved(runtime: Runtime, oidc_issuer: OidcIssuer) -> None:
    request = file(runtime, now=time.time() - 2 * RULE.request_ttl)
    carol = bearer(oidc_issuer, "carol", ["sre"])

    async def scenario(client: TestClient[Any, Any]) -> Answer:
        return await call(client, "POST", f"/v1/requests/{request.id}/approve", carol)

    status, body = serve(runtime, scenario)
    assert status == 409 and "expired" in body["error"]
    assert runtime.approvals is not None and runtime.approvals.get(request.id).state.value == "expired"


def _forged(issuer: OidcIssuer) -> str:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return issuer.mint_id_token(issuer.standard_claims("carol", ["sre"]), key=other)


def _expired(issuer: OidcIssuer) -> str:
    past = int(time.time()) - 3600
    return issuer.mint_id_token(issuer.standard_claims("carol", ["sre"], iat=past - 600, auth_time=past - 600,
                                                       exp=past))


@pytest.mark.parametrize(("case", "authorization", "fragment"), [
    ("forged", lambda i: f"Bearer {_forged(i)}", "signature"),
    ("expired", lambda i: f"Bearer {_expired(i)}", "expired"),
    ("missing", lambda i: "", "Authorization: Bearer"),
    ("not bearer", lambda i: "Basic Y2Fyb2w6cGFzcw==", "Authorization: Bearer"),
])
def test_a_bad_token_is_401_audited_and_never_echoed(
    runtime: Runtime, oidc_issuer: OidcIssuer, case: str, authorization: Callable[[OidcIssuer], str],
    fragment: str,
) -> None:
    request = file(runtime)
    header = authorization(oidc_issuer)

    async def scenario(client: TestClient[Any, Any]) -> tuple[int, dict[str, Any], str | None]:
        headers = {"Authorization": header} if header else {}
        async with client.post(f"/v1/requests/{request.id}/approve", headers=headers) as response:
            return response.status, await response.json(), response.headers.get("WWW-Authenticate")

    status, body, challenge = serve(runtime, scenario)
    assert status == 401, body
    assert fragment in body["error"]
    assert challenge is not None and challenge.startswith("Bearer")
    assert runtime.approvals is not None and runtime.approvals.get(request.id).state.value == "pending"
    refused = runtime.store.events(kinds=("approval.refused",))
    assert len(refused) == 1 and refused[0].outcome == "deny" and fragment in refused[0].detail["reason"]
    token = header.partition(" ")[2]
    if token:
        stored = " ".join(str(e.detail) for e in runtime.store.events())
        assert token not in body["error"] and token not in stored
        assert token.split(".")[-1] not in stored


def test_without_approvals_the_api_answers_503(runtime: Runtime, oidc_issuer: OidcIssuer) -> None:
    runtime.approvals = None
    carol = bearer(oidc_issuer, "carol", ["sre"])

    async def scenario(client: TestClient[Any, Any]) -> Answer:
        return await call(client, "GET", "/v1/requests", carol)

    status, body = serve(runtime, scenario)
    assert status == 503 and "approvals are not enabled" in body["error"]
