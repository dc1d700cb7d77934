"""The bastion's HTTP listener: certificate exchange, login discovery, approvals API, health and metrics.

Errors are JSON ``{"error": reason}`` with a reason a person can act on. A
request's ID token is never echoed, logged or stored.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from policies.engine import may_forward_anywhere
from policies.model import Identity

from .audit import Issuance
from .ca import CertificateAuthority, known_hosts_line, parse_user_key
from .errors import BastionError, CertificateError, TokenError
from .oidc import OidcVerifier
from .runtime import Runtime

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
RUNTIME = web.AppKey("runtime", Runtime)
VERIFIER = web.AppKey("verifier", OidcVerifier)
CA = web.AppKey("ca", CertificateAuthority)


def error_response(status: int, reason: str) -> web.Response:
    """The API's error answer: JSON ``{"error": reason}``."""
    return web.json_response({"error": reason}, status=status)


async def oidc_info(request: web.Request) -> web.Response:
    """GET /v1/oidc: what a login client needs to start the flow with the people's IdP."""
    oidc = request.app[RUNTIME].config.identity.oidc
    secret = None
    if oidc.native_client_secret is not None:
        # A native-app "secret" (Google insists on one) is public by design; see docs/configuration.md.
        secret = oidc.native_client_secret.resolve()
    return web.json_response({"issuer": oidc.issuer, "client_id": oidc.client_id,
                              "scopes": list(oidc.scopes), "client_secret": secret})


def _body_field(body: dict[str, Any], name: str, *, required: bool = True) -> Any:
    value = body.get(name)
    if required and (not isinstance(value, str) or not value):
        raise CertificateError(f"the request needs a non-empty string field {name!r}")
    return value


async def issue_certificate(request: web.Request) -> web.Response:
    """POST /v1/certificates: verify an ID token and sign the user's public key."""
    runtime, client = request.app[RUNTIME], request.remote or "?"
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return error_response(400, "the request body must be JSON")
    if not isinstance(body, dict):
        return error_response(400, "the request body must be a JSON object")
    try:
        public_key = parse_user_key(_body_field(body, "public_key"))
        id_token = _body_field(body, "id_token")
        nonce = _body_field(body, "nonce", required=False)
        ttl = body.get("ttl")
        if nonce is not None and not isinstance(nonce, str):
            raise CertificateError("nonce must be a string")
        if ttl is not None and (not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or ttl <= 0):
            raise CertificateError("ttl must be a positive number of seconds")
        verified = await request.app[VERIFIER].verify(id_token, nonce=nonce)
    except TokenError as e:
        runtime.store.append("certificate.refused", source=client, outcome="deny", reason=str(e))
        return error_response(401, str(e))
    except CertificateError as e:
        runtime.store.append("certificate.refused", source=client, outcome="deny", reason=str(e))
        return error_response(400, str(e))

    identity = Identity(verified.username, frozenset(verified.groups))
    now = runtime.clock()
    issued = request.app[CA].sign_user(
        public_key, verified.username, now=now, ttl=ttl,
        permit_port_forwarding=may_forward_anywhere(runtime.config.policies, identity, runtime.targets()))
    runtime.store.record_issuance(Issuance(
        serial=issued.serial, key_id=issued.key_id, username=verified.username,
        subject=verified.subject, issuer=verified.issuer, email=verified.email,
        groups=tuple(verified.groups), valid_after=issued.valid_after,
        valid_before=issued.valid_before, client_address=client, cert_sha256=issued.sha256,
        key_fingerprint=issued.public_key_fingerprint, issued_at=now))
    runtime.store.append(
        "certificate.issued", user=verified.username, source=client, outcome="allow",
        serial=issued.serial, key_id=issued.key_id, subject=verified.subject,
        issuer=verified.issuer, groups=list(verified.groups), machine=verified.machine,
        valid_before=issued.valid_before, key=issued.public_key_fingerprint)
    log.info("issued certificate %s to %s (%s)", issued.key_id, verified.username, client)
    config = runtime.config
    return web.json_response({
        "certificate": issued.certificate,
        "known_hosts": known_hosts_line(runtime.keys.host_ca, config.host_names, runtime.ssh_port,
                                        tuple(t.name for t, _ in runtime.visible_targets(identity) if t.kind == "ssh")),
        "principal": verified.username,
        "groups": list(verified.groups),
        "valid_before": datetime.fromtimestamp(issued.valid_before, UTC).isoformat(),
        "ssh": {"host": config.host_names[0], "port": runtime.ssh_port},
    })


async def health(request: web.Request) -> web.Response:
    """GET /healthz: liveness, and whether the audit store answers."""
    runtime = request.app[RUNTIME]
    try:
        runtime.store.db.execute("SELECT 1").fetchone()
    except Exception as e:  # noqa: BLE001 - any failure of the store is "unhealthy"; the reason goes out
        return web.json_response({"status": "unhealthy", "reason": f"audit store: {e}"}, status=503)
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text format."""
    runtime = request.app[RUNTIME]
    lines = [
        "# HELP bastion_ssh_connections Open SSH connections.",
        "# TYPE bastion_ssh_connections gauge",
        f"bastion_ssh_connections {runtime.live_connections}",
        "# HELP bastion_sessions Open sessions.",
        "# TYPE bastion_sessions gauge",
        f"bastion_sessions {sum(runtime.sessions_per_user.values())}",
    ]
    if runtime.approvals is not None:
        now = runtime.clock()
        lines += [
            "# HELP bastion_requests_pending Access and statement requests waiting for a decision.",
            "# TYPE bastion_requests_pending gauge",
            f"bastion_requests_pending {runtime.approvals.pending_count(now)}",
            "# HELP bastion_grants_active Grants in force now.",
            "# TYPE bastion_grants_active gauge",
            f"bastion_grants_active {len(runtime.approvals.grants(active_at=now))}",
        ]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except BastionError as e:
        return error_response(500, str(e))
    except Exception:
        # One bad request gets a 500; the listener and every other request carry on.
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal error; the bastion's log has the details")


def make_app(runtime: Runtime, verifier: OidcVerifier) -> web.Application:
    """The aiohttp application for the HTTP listener."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_errors])
    app[RUNTIME] = runtime
    app[VERIFIER] = verifier
    app[CA] = CertificateAuthority(runtime.keys.user_ca, runtime.config.identity.certificates)
    app.router.add_get("/v1/oidc", oidc_info)
    app.router.add_post("/v1/certificates", issue_certificate)
    from .http_approvals import add_routes as approvals_routes  # it imports this module's app keys

    approvals_routes(app)
    app.router.add_get("/healthz", health)
    app.router.add_get("/metrics", metrics)
    return app
