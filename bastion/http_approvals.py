"""The approvals API on the HTTP listener: list, show, approve and deny requests, for chat buttons and tools.

Every call carries ``Authorization: Bearer <ID token>`` from the people's (or
a machine) issuer, verified exactly as ``POST /v1/certificates`` verifies one;
the caller is the token's username and groups. The approval rules decide, as
in the shell. A refused token is a 401 and an ``approval.refused`` audit
event. The token is never echoed, logged or stored.

=============================================  ===============================================
``GET /v1/requests``                           the caller's own requests and those they may decide
``GET /v1/requests/{id}``                      one request, for its requester or an approver
``POST /v1/requests/{id}/approve``             ``{"comment": "…"}`` (optional)
``POST /v1/requests/{id}/deny``                ``{"reason": "…"}`` (required)
=============================================  ===============================================
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from policies import approvals as decide
from policies.approvals import State
from policies.model import Identity

from . import approvals_view as view
from .approvals import ApprovalRefused, Approvals, UnknownRequest
from .errors import TokenError
from .http import RUNTIME, VERIFIER, error_response

log = logging.getLogger(__name__)

Endpoint = Callable[[web.Request, Approvals, Identity], Awaitable[web.Response]]


class _Refused(Exception):
    """An HTTP error answer: status and the reason a person can act on."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenError("send the ID token from your identity provider as Authorization: Bearer <token>")
    return token.strip()


async def _caller(request: web.Request) -> Identity:
    """The verified identity behind the request's bearer token; a refusal is audited and answered 401."""
    runtime = request.app[RUNTIME]
    try:
        verified = await request.app[VERIFIER].verify(_bearer(request))
    except TokenError as e:
        runtime.store.append("approval.refused", source=request.remote or "?", outcome="deny",
                             method=request.method, path=request.path, reason=str(e))
        raise _Refused(401, str(e)) from None
    return Identity(verified.username, frozenset(verified.groups))


def _refusal_status(e: ApprovalRefused) -> int:
    if isinstance(e.error, decide.ReasonRequired):
        return 400
    if isinstance(e.error, decide.NotAnApprover):  # including self-approval
        return 403
    return 409  # already voted, already decided, expired, not break-glass...


def endpoint(handler: Endpoint) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Wrap a handler: approvals must be running, the caller authenticated, refusals turned into JSON errors."""

    async def wrapped(request: web.Request) -> web.Response:
        approvals = request.app[RUNTIME].approvals
        if approvals is None:
            return error_response(503, "approvals are not enabled on this bastion")
        try:
            who = await _caller(request)
            return await handler(request, approvals, who)
        except _Refused as e:
            response = error_response(e.status, e.reason)
            if e.status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="bastion"'
            return response
        except UnknownRequest as e:
            return error_response(404, str(e))
        except ApprovalRefused as e:
            return error_response(_refusal_status(e), str(e))

    wrapped.__doc__ = handler.__doc__
    return wrapped


async def _body(request: web.Request) -> dict[str, Any]:
    """The JSON object in the body; an empty body is an empty object."""
    if not await request.read():
        return {}
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _Refused(400, "the request body must be JSON") from None
    if not isinstance(body, dict):
        raise _Refused(400, "the request body must be a JSON object")
    return body


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name, "")
    if not isinstance(value, str):
        raise _Refused(400, f"{name} must be a string")
    return value


def _answer(approvals: Approvals, request_id: str, who: Identity, now: float) -> web.Response:
    request, rule = view.load(approvals, request_id)
    grant = approvals.grant_of(request_id)
    return web.json_response({
        "request": view.request_json(request, rule, now),
        "grant": None if grant is None else view.grant_json(grant, now),
        "may_decide": (request.state is State.PENDING and not decide.is_expired(request, now)
                       and decide.may_approve(rule, request, who) and who.user not in request.approvers),
    })


@endpoint
async def list_requests(request: web.Request, approvals: Approvals, who: Identity) -> web.Response:
    """GET /v1/requests: the caller's own requests and the pending ones they may decide."""
    now = request.app[RUNTIME].clock()
    listing = approvals.list_for(who, now)
    rules = view.rules_of(approvals, [*listing.mine, *listing.to_decide])
    return web.json_response({
        "user": who.user,
        "mine": [view.request_json(r, rules.get(r.id), now) for r in listing.mine],
        "to_decide": [view.request_json(r, rules.get(r.id), now) for r in listing.to_decide],
    })


@endpoint
async def show_request(request: web.Request, approvals: Approvals, who: Identity) -> web.Response:
    """GET /v1/requests/{id}: one request, for its requester or someone who may decide it."""
    request_id, now = request.match_info["id"], request.app[RUNTIME].clock()
    found, rule = view.load(approvals, request_id)
    if who.user != found.requester and not decide.may_approve(rule, found, who):
        raise _Refused(403, f"{who.user} neither filed request {request_id} nor may decide it")
    return _answer(approvals, request_id, who, now)


def _decided(request: web.Request, approvals: Approvals, who: Identity, verb: str,
             step: Callable[[str, float], object]) -> web.Response:
    request_id, now = request.match_info["id"], request.app[RUNTIME].clock()
    step(request_id, now)
    log.info("request %s %s by %s over HTTP", request_id, verb, who.user)
    return _answer(approvals, request_id, who, now)


@endpoint
async def approve_request(request: web.Request, approvals: Approvals, who: Identity) -> web.Response:
    """POST /v1/requests/{id}/approve: add the caller's approval (body ``{"comment": …}``, optional)."""
    comment = _text(await _body(request), "comment")
    return _decided(request, approvals, who, "approved", lambda rid, now: approvals.approve(rid, who, now, comment))


@endpoint
async def deny_request(request: web.Request, approvals: Approvals, who: Identity) -> web.Response:
    """POST /v1/requests/{id}/deny: deny with a reason the requester reads (body ``{"reason": …}``)."""
    reason = _text(await _body(request), "reason")
    return _decided(request, approvals, who, "denied", lambda rid, now: approvals.deny(rid, who, reason, now))


def add_routes(app: web.Application) -> None:
    """Register the approvals API on the bastion's HTTP app."""
    app.router.add_get("/v1/requests", list_requests)
    app.router.add_get("/v1/requests/{id}", show_request)
    app.router.add_post("/v1/requests/{id}/approve", approve_request)
    app.router.add_post("/v1/requests/{id}/deny", deny_request)
