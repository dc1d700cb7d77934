"""``bastion requests|approve|deny|revoke|revoke-cert|break-glass``: just-in-time access from the host.

The host admin works on the state directory's audit store, beside the running
daemon (every step takes the database's write lock, so neither races the
other). Approving, denying and reviewing are done *as* a named approver, with
the groups the identity provider gave that person at their latest login (their
newest issuance record): the approval rules apply exactly as in the shell.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from policies.approvals import Request, RequestKind, State
from policies.model import ApprovalRule, Identity

from . import approvals_view as view
from .approvals import Approvals
from .audit import AuditStore, Issuance
from .config import config_path, load_config
from .config_schema import format_duration
from .errors import BastionError, StateError

Handler = Callable[[argparse.Namespace], int]
AddCommand = Callable[[str, Handler, str], argparse.ArgumentParser]

PREVIEW = 120  # characters of a held statement or a reason in the text listing
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class UsageError(BastionError):
    """Options that do not go together."""

    exit_code = 2


# -- helpers -------------------------------------------------------------------


@contextlib.contextmanager
def _opened(args: argparse.Namespace) -> Iterator[tuple[AuditStore, Approvals]]:
    """The audit store named by the config's state_dir, and the approvals kept in it."""
    config = load_config(config_path(args.config))
    path = config.state_dir / "audit.db"
    if not path.exists():
        raise StateError(f"no audit store at {path}; is state_dir in {config.path} right?")
    store = AuditStore(path)
    try:
        yield store, Approvals(store)
    finally:
        store.close()


def _clean(text: str, limit: int | None = None) -> str:
    """Text from a requester, safe for a terminal: control characters escaped, one line, maybe shortened."""
    text = _CONTROL.sub(lambda m: "\\n" if m.group() == "\n" else f"\\x{ord(m.group()):02x}", text)
    return text if limit is None or len(text) <= limit else text[:limit - 1] + "…"


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _span(seconds: float) -> str:
    return format_duration(max(0, round(seconds)))


def acting_as(store: AuditStore, user: str) -> tuple[Identity, Issuance | None]:
    """``user`` with the groups of their newest certificate: what the IdP said at their latest login."""
    issued = store.issuances(user=user)
    latest = issued[0] if issued else None
    return Identity(user, frozenset(latest.groups) if latest else frozenset()), latest


def _announce(identity: Identity, issuance: Issuance | None) -> None:
    if issuance is None:
        print(f"note: {identity.user} never logged in to this bastion; acting with no groups", file=sys.stderr)
    else:
        groups = ", ".join(sorted(identity.groups)) or "none"
        print(f"note: acting as {identity.user}, groups {groups} (from their login at {_when(issuance.issued_at)})",
              file=sys.stderr)


def _admin(args: argparse.Namespace) -> str:
    """Who the audit trail names for a revocation from the host."""
    return str(args.by or getpass.getuser())


# -- requests --------------------------------------------------------------------


def cmd_requests(args: argparse.Namespace) -> int:
    """List pending requests (or all of them)."""
    now = time.time()
    with _opened(args) as (_, approvals):
        found = view.find(approvals, pending_at=None if args.all else now, requester=args.user)
    if args.json:
        for request, rule in found:
            print(json.dumps(view.request_json(request, rule, now), sort_keys=True))
        return 0
    if not found:
        print("No requests." if args.all else "No pending requests.")
        return 0
    print(f"{'ID':<13} {'KIND':<9} {'STATE':<9} {'REQUESTER':<12} {'TARGET':<12} {'AGE':>7} {'EXPIRES':>9} "
          f"{'VOTES':>5}  REASON")
    for request, rule in found:
        print(_request_line(request, rule, now))
        for line in _request_details(request):
            print(f"    {line}")
    return 0


def _request_line(request: Request, rule: ApprovalRule, now: float) -> str:
    state = view.shown_state(request, now)
    expires = f"in {_span(request.expires - now)}" if state == State.PENDING.value else "-"
    votes = f"{len(request.approvers)}/{max(1, rule.min_approvals)}"
    reason = _clean(request.reason, 60) or "-"
    return (f"{request.id:<13} {request.kind.value:<9} {state:<9} {_clean(request.requester):<12} "
            f"{_clean(request.target):<12} {_span(now - request.created):>7} {expires:>9} {votes:>5}  {reason}")


def _request_details(request: Request) -> Iterator[str]:
    if request.break_glass:
        yield "BREAK-GLASS: self-granted emergency access"
    text = view.statement_text(request)
    if text is not None:
        yield f"statement: {_clean(text, PREVIEW)}"
    for vote in request.votes:
        yield f"approved by {vote.approver} at {_when(vote.at)}" + (f": {_clean(vote.comment)}" if vote.comment else "")
    if request.state in (State.DENIED, State.CANCELLED, State.EXPIRED):
        by = f" by {request.decided_by}" if request.decided_by else ""
        yield f"{request.state.value}{by}: {_clean(request.decision_reason)}"


# -- deciding ------------------------------------------------------------------------


def cmd_approve(args: argparse.Namespace) -> int:
    """Approve a request as a named approver."""
    with _opened(args) as (store, approvals):
        identity, issuance = acting_as(store, args.as_user)
        _announce(identity, issuance)
        request = approvals.approve(args.id, identity, time.time(), args.comment or "")
        _, rule = view.load(approvals, request.id)
        grant = approvals.grant_of(request.id)
    needed = max(1, rule.min_approvals)
    if request.state is not State.APPROVED:
        print(f"{request.id}: approval by {identity.user} recorded ({len(request.approvers)} of {needed}); "
              f"{needed - len(request.approvers)} more needed")
        return 0
    print(f"{request.id}: approved by {', '.join(sorted(request.approvers))}")
    if grant is not None:
        print(f"grant {grant.id}: {grant.user} may reach {grant.target} until {_when(grant.ends)}")
    elif request.kind is RequestKind.STATEMENT and request.window_ends is not None:
        print(f"the held statement may run once, by {request.requester} on {request.target}, "
              f"until {_when(request.window_ends)}")
    return 0


def cmd_deny(args: argparse.Namespace) -> int:
    """Deny a request as a named approver, with the reason the requester will read."""
    with _opened(args) as (store, approvals):
        identity, issuance = acting_as(store, args.as_user)
        _announce(identity, issuance)
        request = approvals.deny(args.id, identity, args.reason, time.time())
    print(f"{request.id}: denied by {identity.user}: {_clean(request.decision_reason)}")
    return 0


# -- revoking ---------------------------------------------------------------------------


def cmd_revoke(args: argparse.Namespace) -> int:
    """End a grant early."""
    with _opened(args) as (_, approvals):
        grant = approvals.revoke_grant(args.grant_id, _admin(args), time.time(), args.reason or "")
    print(f"grant {grant.id} revoked: {grant.user} may no longer reach {grant.target} "
          f"(it ran until {_when(grant.ends)}); their sessions under it end within seconds")
    return 0


def cmd_revoke_cert(args: argparse.Namespace) -> int:
    """Revoke one certificate serial, or every unexpired certificate of a user."""
    now, by = time.time(), _admin(args)
    reason = args.reason or "revoked with bastion revoke-cert"
    with _opened(args) as (store, _):
        if args.serial is not None:
            one = store.issuance(args.serial)
            if one is None:
                raise BastionError(f"no certificate with serial {args.serial} was issued by this bastion")
            certificates = [one]
        else:
            certificates = [i for i in store.issuances(user=args.user) if i.valid_before > now]
            if not certificates:
                raise BastionError(f"{args.user} holds no unexpired certificate from this bastion")
        for cert in certificates:
            what = f"serial {cert.serial} ({cert.key_id}) of {cert.username}"
            if store.is_revoked(cert.serial):
                print(f"{what}: already revoked")
                continue
            store.revoke(cert.serial, by=by, reason=reason, now=now)
            store.append("certificate.revoked", user=by, outcome="revoke", ts=now, serial=cert.serial,
                         key_id=cert.key_id, holder=cert.username, valid_before=cert.valid_before, reason=reason,
                         via="admin-cli")
            expired = " (already expired)" if cert.valid_before <= now else ""
            print(f"{what}: revoked{expired}")
    print("Live sessions with these certificates end within seconds; logins with them are refused.")
    return 0


# -- break-glass ---------------------------------------------------------------------------


def cmd_break_glass(args: argparse.Namespace) -> int:
    """List break-glass uses awaiting review, or review one."""
    if args.review is None:
        if args.as_user or args.comment:
            raise UsageError("--as and --comment go with --review ID")
        return _list_break_glass(args)
    if not args.as_user:
        raise UsageError("--review needs --as USER: the approver who reviews it")
    with _opened(args) as (store, approvals):
        identity, issuance = acting_as(store, args.as_user)
        _announce(identity, issuance)
        request = approvals.review_break_glass(args.review, identity, time.time(), args.comment or "")
    print(f"{request.id}: break-glass use by {request.requester} on {request.target} reviewed by {identity.user}")
    return 0


def _list_break_glass(args: argparse.Namespace) -> int:
    now = time.time()
    with _opened(args) as (_, approvals):
        uses = approvals.break_glass_to_review()
        grants = {r.id: approvals.grant_of(r.id) for r in uses}
    if args.json:
        for request in uses:
            grant = grants[request.id]
            print(json.dumps({**view.request_json(request, None, now),
                              "grant": None if grant is None else view.grant_json(grant, now)}, sort_keys=True))
        return 0
    if not uses:
        print("No break-glass use awaits review.")
        return 0
    print(f"{'ID':<13} {'USED AT':<20} {'REQUESTER':<12} {'TARGET':<12} {'GRANT':<13} {'UNTIL':<20}  REASON")
    for request in uses:
        grant = grants[request.id]
        until = "-" if grant is None else _when(grant.revoked_at or grant.ends)
        print(f"{request.id:<13} {_when(request.created):<20} {_clean(request.requester):<12} "
              f"{_clean(request.target):<12} {grant.id if grant else '-':<13} {until:<20}  "
              f"{_clean(request.reason, 60)}")
    return 0


# -- parser -------------------------------------------------------------------------------------


def register(add: AddCommand, with_config: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add these subcommands to ``bastion``'s parser."""
    p = add("requests", cmd_requests, "List pending access requests and held statements (or all with --all).")
    with_config(p)
    p.add_argument("--all", action="store_true", help="every request, whatever its state")
    p.add_argument("--user", metavar="U", help="only requests filed by U")
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    p = add("approve", cmd_approve, "Approve a request as a named approver (the approval rules apply).")
    with_config(p)
    p.add_argument("id", metavar="ID", help="the request id (r-…)")
    p.add_argument("--as", dest="as_user", required=True, metavar="USER",
                   help="the approver; their groups are those of their latest login")
    p.add_argument("--comment", help="a comment the audit trail keeps with the approval")

    p = add("deny", cmd_deny, "Deny a request as a named approver, with a reason the requester reads.")
    with_config(p)
    p.add_argument("id", metavar="ID", help="the request id (r-…)")
    p.add_argument("--as", dest="as_user", required=True, metavar="USER",
                   help="the approver; their groups are those of their latest login")
    p.add_argument("--reason", required=True, help="why; the requester sees it")

    p = add("revoke", cmd_revoke, "End a grant early; sessions under it are cut.")
    with_config(p)
    p.add_argument("grant_id", metavar="GRANT_ID", help="the grant id (g-…)")
    p.add_argument("--reason", help="why; the user whose sessions end reads it")
    p.add_argument("--by", metavar="NAME", help="who revokes, for the audit trail (default: your login name)")

    p = add("revoke-cert", cmd_revoke_cert,
            "Revoke a certificate serial, or every unexpired certificate of a user; live sessions are cut.")
    with_config(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("serial", nargs="?", type=int, metavar="SERIAL", help="the certificate's serial number")
    which.add_argument("--user", metavar="U", help="every unexpired certificate issued to U")
    p.add_argument("--reason", help="why, for the audit trail")
    p.add_argument("--by", metavar="NAME", help="who revokes, for the audit trail (default: your login name)")

    p = add("break-glass", cmd_break_glass, "List break-glass uses awaiting review, or review one.")
    with_config(p)
    p.add_argument("--review", metavar="ID", help="mark this break-glass request as reviewed")
    p.add_argument("--as", dest="as_user", metavar="USER", help="the reviewing approver (with --review)")
    p.add_argument("--comment", help="the review's comment (with --review)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")

