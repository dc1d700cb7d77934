"""Just-in-time access in the shell: ``request``, ``requests``, ``approve``, ``deny``, ``cancel``, ``revoke``.

Also what ``connect`` and ``sql`` do when something waits for an approver: offer a
request and wait for it (a person at a terminal), or say how to go on and exit 4
(a script). The bastion decides everything through the :class:`ShellContext`; a
refusal comes back as a :class:`ConnectOutcome` whose exit code is passed through.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import render
from .commands import EXIT_APPROVAL, EXIT_DENIED, EXIT_OK, EXIT_USAGE, Args, Result, command
from .context import ConnectOutcome, RequestView, ShellContext

if TYPE_CHECKING:
    from .sql import SqlResult

PREVIEW = 60  # characters of a held statement shown in a listing
REASON_PREVIEW = 40

_DURATION = re.compile(r"(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?")
_UNIT = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``30m``, ``2h``, ``1h30m`` or ``1d``; raises ValueError."""
    match = _DURATION.fullmatch(text)
    if text.isdigit():
        seconds = int(text)
    elif text and match is not None:
        seconds = sum(int(v) * _UNIT[unit] for unit, v in match.groupdict().items() if v)
    else:
        raise ValueError(f"{text!r} is not a duration; write it like 90s, 30m, 2h or 1h30m")
    if seconds <= 0:
        raise ValueError("a duration must be longer than 0s")
    return float(seconds)


# -- options ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """A command line split into its positional words, valued options and flags."""

    positional: tuple[str, ...]
    values: dict[str, str]
    flags: frozenset[str]
    json: bool = False


def options(line: str, usage: str, *, count: int = 1, values: Sequence[str] = (),
            flags: Sequence[str] = (), json: bool = False) -> Options | Result:
    """Parse ``line`` (the words after the command): exactly ``count`` positional words, the named options."""
    try:
        words = shlex.split(line)
    except ValueError as e:
        return Result(EXIT_USAGE, error=f"cannot parse the line: {e}")
    positional: list[str] = []
    found: dict[str, str] = {}
    set_flags: set[str] = set()
    as_json = False
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        name, eq, value = word.partition("=")
        if json and word == "--json":
            as_json = True
        elif name in values:
            if not eq:
                if i >= len(words):
                    return Result(EXIT_USAGE, error=f"{name} needs a value; usage: {usage}")
                value, i = words[i], i + 1
            found[name] = value
        elif word in flags:
            set_flags.add(word)
        elif word.startswith("--"):
            return Result(EXIT_USAGE, error=f"unknown option {name}; usage: {usage}")
        else:
            positional.append(word)
    if len(positional) != count:
        return Result(EXIT_USAGE, error=f"usage: {usage}")
    return Options(tuple(positional), found, frozenset(set_flags), as_json)


def _refused(outcome: ConnectOutcome) -> Result:
    """A context's answer that is not a request: its code and message, as they are."""
    if outcome.code == EXIT_OK:
        return Result(text=_line(outcome.message))
    return Result(outcome.code, error=outcome.message.rstrip("\n"))


def _line(text: str) -> str:
    return text if text.endswith("\n") or not text else text + "\n"


# -- showing requests --------------------------------------------------------------------


def view_json(view: RequestView, now: float) -> dict[str, Any]:
    """A request for ``--json``: times in ISO 8601 UTC, plus the seconds left while it is pending."""
    return {
        "id": view.id, "kind": view.kind, "requester": view.requester, "target": view.target,
        "reason": view.reason, "state": view.state, "created": render.iso(view.created),
        "expires": render.iso(view.expires),
        "seconds_left": int(max(0, view.expires - now)) if view.state == "pending" else None,
        "duration": view.duration, "approvers": view.approvers, "needed": view.needed,
        "approved_by": list(view.approved_by), "statement": view.statement, "decided_by": view.decided_by,
        "decision_reason": view.decision_reason, "grant": view.grant,
        "grant_ends": None if view.grant_ends is None else render.iso(view.grant_ends),
        "break_glass": view.break_glass,
    }


def _detail(view: RequestView, now: float) -> str:
    """The one thing worth knowing beyond the columns: the statement, the grant, or the decision."""
    parts = ["BREAK-GLASS"] if view.break_glass else []
    if view.statement is not None:
        parts.append("sql: " + render.clean(view.statement, PREVIEW))
    if view.grant is not None:
        ends = view.grant_ends
        left = "" if ends is None else (f", ends in {render.duration(ends - now)}" if ends > now else ", ended")
        parts.append(f"grant {view.grant}{left}")
    if view.state in ("denied", "cancelled", "expired") and (view.decided_by or view.decision_reason):
        by = f" by {render.clean(view.decided_by)}" if view.decided_by else ""
        parts.append(f"{view.state}{by}: {render.clean(view.decision_reason or '-', REASON_PREVIEW)}")
    return "; ".join(parts) or "-"


def _row(view: RequestView, now: float) -> tuple[str, ...]:
    expires = f"in {render.duration(view.expires - now)}" if view.state == "pending" else "-"
    return (view.id, view.kind, render.clean(view.target), render.clean(view.requester), view.state,
            render.duration(now - view.created), expires, f"{len(view.approved_by)}/{view.needed}",
            render.clean(view.reason, REASON_PREVIEW) or "-", _detail(view, now))


HEADERS = ("ID", "KIND", "TARGET", "REQUESTER", "STATE", "AGE", "EXPIRES", "APPROVALS", "REASON", "DETAIL")


def approvals(view: RequestView) -> str:
    """``1 approval`` / ``2 approvals``: what the request needs."""
    return f"{view.needed} approval" + ("" if view.needed == 1 else "s")


def asked(view: RequestView) -> str:
    """Who was asked to decide ``view``, and how many of them must approve."""
    return f"asked: {render.clean(view.approvers) or 'the approvers of the policy'} ({approvals(view)} needed)"


def decision(view: RequestView) -> str:
    """How a decided request ended, with who decided and their reason."""
    if view.state == "approved":
        who = ", ".join(render.clean(a) for a in view.approved_by) or render.clean(view.decided_by or "")
        return f"request {view.id} was approved" + (f" by {who}" if who else "")
    by = f" by {render.clean(view.decided_by)}" if view.decided_by else ""
    why = f": {render.clean(view.decision_reason)}" if view.decision_reason else ""
    return f"request {view.id} was {view.state}{by}{why}"


def _filed(view: RequestView, now: float) -> str:
    """What to tell the requester about a request just filed."""
    what = f"the statement on {view.target}" if view.kind == "statement" else \
        f"{view.kind} to {view.target} for {render.duration(view.duration)}"
    return (f"request {view.id} filed: {render.clean(what)}\n"
            f"{asked(view)}\n"
            f"expires: {render.utc(view.expires)} (in {render.duration(view.expires - now)}) unless decided\n"
            f"`requests` shows it; `cancel {view.id}` withdraws it\n")


# -- the commands ------------------------------------------------------------------------

REQUEST_USAGE = "request TARGET [--reason TEXT] [--for DURATION] [--break-glass] [--json]"
BREAK_GLASS_WARNING = ("BREAK-GLASS: you granted yourself emergency access without an approver. This use is "
                       "flagged in the audit trail, the approvers have been notified, and it will be reviewed "
                       "afterwards.")


@command("request", REQUEST_USAGE, "Ask for time-boxed access to a target; --break-glass grants it at once, "
         "flagged for review.", completes_targets=True, json=True, raw=True,
         options=("--reason", "--for", "--break-glass", "--json"))
async def _request(ctx: ShellContext, args: Args) -> Result:
    opts = options(args.positional[0], REQUEST_USAGE, values=("--reason", "--for"), flags=("--break-glass",),
                   json=True)
    if isinstance(opts, Result):
        return opts
    duration = None
    if "--for" in opts.values:
        try:
            duration = parse_duration(opts.values["--for"])
        except ValueError as e:
            return Result(EXIT_USAGE, error=f"--for: {e}")
    reason = opts.values.get("--reason", "").strip()
    break_glass = "--break-glass" in opts.flags
    if break_glass and not reason:
        return Result(EXIT_USAGE, error="--break-glass needs a --reason: it is reviewed afterwards")
    view = await ctx.request_access(opts.positional[0], reason, duration, break_glass=break_glass)
    if isinstance(view, ConnectOutcome):
        return _refused(view)
    now = ctx.now()
    data = view_json(view, now)
    if view.grant is not None:
        ends = f" until {render.utc(view.grant_ends)}" if view.grant_ends is not None else ""
        text = (f"grant {view.grant}: {render.clean(view.requester)} may reach {render.clean(view.target)}{ends} "
                f"(request {view.id})\n")
        return Result(text=text, data=data, error=BREAK_GLASS_WARNING if view.break_glass else "")
    return Result(text=_filed(view, now), data=data)


@command("requests", "requests [--json]", "List your requests and the ones waiting for your decision.", json=True)
async def _requests(ctx: ShellContext, args: Args) -> Result:
    mine, to_decide = ctx.requests()
    now = ctx.now()
    data = {"mine": [view_json(v, now) for v in mine], "to_decide": [view_json(v, now) for v in to_decide]}
    text = (f"Your requests\n{render.table(HEADERS, [_row(v, now) for v in mine])}\n"
            f"Waiting for your decision\n{render.table(HEADERS, [_row(v, now) for v in to_decide])}")
    return Result(text=text, data=data)


APPROVE_USAGE = "approve ID [--comment TEXT] [--json]"


@command("approve", APPROVE_USAGE, "Approve a request you may decide (never your own).", json=True, raw=True,
         options=("--comment", "--json"))
async def _approve(ctx: ShellContext, args: Args) -> Result:
    opts = options(args.positional[0], APPROVE_USAGE, values=("--comment",), json=True)
    if isinstance(opts, Result):
        return opts
    view = await ctx.decide(opts.positional[0], approve=True, text=opts.values.get("--comment", "").strip())
    if isinstance(view, ConnectOutcome):
        return _refused(view)
    votes = f"{len(view.approved_by)} of {view.needed}"
    if view.state != "approved":
        text = (f"{view.id}: your approval is recorded ({votes}); "
                f"{max(0, view.needed - len(view.approved_by))} more needed\n")
    elif view.grant is not None:
        ends = f" until {render.utc(view.grant_ends)}" if view.grant_ends is not None else ""
        text = (f"{view.id}: approved ({votes}); grant {view.grant}: {render.clean(view.requester)} may reach "
                f"{render.clean(view.target)}{ends}\n")
    else:
        text = (f"{view.id}: approved ({votes}); the held statement may now run once, byte for byte, "
                f"by {render.clean(view.requester)} on {render.clean(view.target)}\n")
    return Result(text=text, data=view_json(view, ctx.now()))


DENY_USAGE = "deny ID --reason TEXT [--json]"


@command("deny", DENY_USAGE, "Deny a request you may decide; the requester reads your reason.", json=True,
         raw=True, options=("--reason", "--json"))
async def _deny(ctx: ShellContext, args: Args) -> Result:
    opts = options(args.positional[0], DENY_USAGE, values=("--reason",), json=True)
    if isinstance(opts, Result):
        return opts
    reason = opts.values.get("--reason", "").strip()
    if not reason:
        return Result(EXIT_USAGE, error=f"a denial needs a --reason for the requester; usage: {DENY_USAGE}")
    view = await ctx.decide(opts.positional[0], approve=False, text=reason)
    if isinstance(view, ConnectOutcome):
        return _refused(view)
    return Result(text=f"{view.id}: denied; {render.clean(view.requester)} sees your reason\n",
                  data=view_json(view, ctx.now()))


CANCEL_USAGE = "cancel ID [--json]"


@command("cancel", CANCEL_USAGE, "Withdraw a request of yours that is still pending.", json=True, raw=True,
         options=("--json",))
async def _cancel(ctx: ShellContext, args: Args) -> Result:
    opts = options(args.positional[0], CANCEL_USAGE, json=True)
    if isinstance(opts, Result):
        return opts
    view = await ctx.cancel_request(opts.positional[0])
    if isinstance(view, ConnectOutcome):
        return _refused(view)
    return Result(text=f"{view.id}: {view.state}\n", data=view_json(view, ctx.now()))


REVOKE_USAGE = "revoke GRANT [--reason TEXT]"


@command("revoke", REVOKE_USAGE, "End a grant early: sessions under it end within seconds.", raw=True,
         options=("--reason",))
async def _revoke(ctx: ShellContext, args: Args) -> Result:
    opts = options(args.positional[0], REVOKE_USAGE, values=("--reason",))
    if isinstance(opts, Result):
        return opts
    return _refused(await ctx.revoke_grant(opts.positional[0], opts.values.get("--reason", "").strip()))


# -- connect and sql, when something waits for an approver --------------------------------


def request_hint(target: str) -> str:
    """How to ask for access to ``target`` from a script."""
    return f'file a request with: request {target} --reason "…" [--for 30m]'


async def approval_needed(ctx: ShellContext, target: str, outcome: ConnectOutcome) -> Result:
    """``connect`` on a target that needs an approved request: offer one and wait, or say how."""
    if not ctx.interactive:
        return Result(EXIT_APPROVAL, error=f"{outcome.message.rstrip()}\n{request_hint(target)}")
    from . import waiting  # prompt-toolkit at the terminal; a one-shot command never gets here

    waiting.say(outcome.message.rstrip(), "class:wait.hint")
    reason = await waiting.ask(f"Reason for a request for {target} (Enter or Ctrl-C: no request): ")
    if not reason or not reason.strip():
        return Result(EXIT_APPROVAL, error=f"no request filed; {request_hint(target)}")
    duration: float | None = None
    while True:
        answer = await waiting.ask("For how long? (e.g. 30m, 2h; Enter: as long as the policy allows): ")
        if answer is None:
            return Result(EXIT_APPROVAL, error=f"no request filed; {request_hint(target)}")
        try:
            duration = parse_duration(answer.strip()) if answer.strip() else None
            break
        except ValueError as e:
            waiting.say(str(e), "class:wait.refused")
    view = await ctx.request_access(target, reason.strip(), duration)
    if isinstance(view, ConnectOutcome):
        return _refused(view)
    waiting.say(f"request {view.id} filed", "class:wait.asked")
    final = await waiting.wait_for(view, ctx.wait_request, ctx.now)
    if final is None or final.state == "pending":
        return Result(EXIT_APPROVAL, error=stopped(view.id, f"run `connect {target}` again once it is approved"))
    if final.state != "approved":
        return Result(EXIT_DENIED, error=decision(final))
    waiting.say(f"{decision(final)}; connecting to {target}", "class:wait.approved")
    again = await ctx.connect(target)
    return _refused(again)


def stopped(request_id: str, then: str) -> str:
    """What to say when a person stops waiting: the request is still there."""
    return (f"stopped waiting; request {request_id} stays pending (`requests` shows it, "
            f"`cancel {request_id}` withdraws it); {then}")


def held_request(results: list[SqlResult]) -> str | None:
    """The request id of the first held statement among ``results``."""
    return next((r.request for r in results if r.held and r.request), None)


def held_hint(request_id: str) -> str:
    """What a script should do about a held statement."""
    return (f"held for review: request {request_id}. Once it is approved (`requests` shows it), run exactly "
            "the same SQL again; or add --wait to wait for the decision.")


def sql_refused(target: str, outcome: ConnectOutcome) -> Result:
    """``sql`` on a target that policy or the target refused; for an approval target, how to ask."""
    result = _refused(outcome)
    if outcome.code == EXIT_APPROVAL:
        return Result(EXIT_APPROVAL, error=f"{result.error}\n{request_hint(target)}")
    return result


async def request_for_sql(ctx: ShellContext, target: str, reason: str, wait: bool,
                          timeout: float | None) -> Result | None:
    """``sql`` on an approval target: file (or find) my access request; None once a grant exists.

    Without ``--wait`` this exits 4 naming the request; with it, it waits for the decision.
    """
    mine, _ = ctx.requests()
    pending = next((v for v in mine if v.target == target and v.kind == "access" and v.state == "pending"), None)
    if pending is None:
        filed = await ctx.request_access(target, reason)  # the policy decides whether a reason is required
        if isinstance(filed, ConnectOutcome):
            return _refused(filed)
        pending = filed
    if not wait:
        return Result(EXIT_APPROVAL, error=f"{target} needs an approved request: request {pending.id} is pending "
                                           f"({asked(pending)}); run this again once it is approved, "
                                           "or add --wait to wait for the decision")
    view = await ctx.wait_request(pending.id, timeout)
    if view.state == "pending":
        waited = "" if timeout is None else f" after {render.duration(timeout)}"
        return Result(EXIT_APPROVAL, error=f"request {pending.id} is still pending{waited}")
    if view.state != "approved":
        return Result(EXIT_DENIED, error=decision(view))
    return None


async def wait_and_rerun(ctx: ShellContext, target: str, sql: str, request_id: str,
                         timeout: float | None) -> list[SqlResult] | Result:
    """``sql --wait``: wait for the held statement's decision, then run the byte-identical SQL once more."""
    if ctx.interactive:  # a person: the countdown, and Ctrl-C to stop waiting
        from . import waiting

        current = await ctx.wait_request(request_id, 0)
        view = current if current.state != "pending" else \
            await waiting.wait_for(current, ctx.wait_request, ctx.now, timeout)
        if view is None:
            return Result(EXIT_APPROVAL, error=stopped(request_id, "run the same SQL again once it is approved"))
    else:
        view = await ctx.wait_request(request_id, timeout)
    if view.state == "pending":
        waited = "" if timeout is None else f" after {render.duration(timeout)}"
        return Result(EXIT_APPROVAL, error=f"request {request_id} is still pending{waited}; "
                                           f"{held_hint(request_id)}")
    if view.state != "approved":
        return Result(EXIT_DENIED, error=decision(view))
    again = await ctx.run_sql(target, sql)  # the approval covers exactly this text, once
    return sql_refused(target, again) if isinstance(again, ConnectOutcome) else again
