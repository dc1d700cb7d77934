"""File transfer decisions: which uploads, downloads and changes a policy's ``transfer`` block allows.

Pure, like the rest of ``policies``: the caller passes the access decision the
engine made for the action ``transfer``, the path *inside the target* and, for a
download, the file's size. Paths are normalised here, once, the way a POSIX
host resolves them textually: ``.`` and empty components vanish and ``..``
never climbs above ``/``. A prefix matches whole components only (``/tmp``
covers ``/tmp/x``, never ``/tmpfoo``), and a denied prefix wins over an allowed one.

Symbolic links on the host are not visible here; the gateway checks the path
the host resolves as well as the one the client sent.

Every refusal says, to a person, which policy refused what and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .engine import Decision
from .model import Access, Effect, TransferRule


class Direction(StrEnum):
    """Which way a file crosses the bastion."""

    UPLOAD = "upload"      # from the client to the target
    DOWNLOAD = "download"  # from the target to the client


class PathError(ValueError):
    """A path no host could mean (a NUL byte, not text)."""


def normalise(path: str) -> str:
    """The absolute POSIX form of ``path``: ``.`` and empty parts dropped, ``..`` resolved, never above ``/``."""
    if "\x00" in path:
        raise PathError("a path cannot contain a NUL byte")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


def under(path: str, prefix: str) -> bool:
    """True when normalised ``path`` is ``prefix`` or inside it, comparing whole components."""
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def leads_to(path: str, prefix: str) -> bool:
    """True when normalised ``path`` is a directory on the way down to ``prefix`` (an ancestor of it)."""
    return under(prefix, path)


def blocked_extension(rule: TransferRule, path: str) -> str | None:
    """The blocked extension ``path``'s file name ends with, if any (compared without case)."""
    name = path.rsplit("/", 1)[-1].lower()
    return next((ext for ext in rule.blocked_extensions if name.endswith(ext)), None)


def denied_prefix(rule: TransferRule, path: str) -> str | None:
    """The denied prefix that covers ``path``, if any."""
    return next((p for p in rule.deny_paths if under(path, p)), None)


def allowed(rule: TransferRule, path: str) -> bool:
    """True when normalised ``path`` is under an allowed prefix and under no denied one."""
    return denied_prefix(rule, path) is None and any(under(path, p) for p in rule.allow_paths)


def browsable(rule: TransferRule, path: str) -> bool:
    """True when ``path`` may be listed or stat-ed: inside an allowed prefix, or on the way down to one."""
    if denied_prefix(rule, path) is not None:
        return False
    return any(under(path, p) or leads_to(path, p) for p in rule.allow_paths)


@dataclass(frozen=True)
class TransferDecision:
    """The outcome for one file operation: what happens, which policy said so, why, and the limits that apply."""

    effect: Effect
    rule: str
    reason: str
    max_size: int | None = None
    quarantine_days: int | None = None

    @property
    def allowed(self) -> bool:
        """True only for a plain allow."""
        return self.effect is Effect.ALLOW


def _rule(access: Decision, target: str) -> tuple[TransferRule | None, TransferDecision | None]:
    """The transfer rule that applies, or the denial when there is none."""
    if access.effect is Effect.DENY or access.policy is None:
        return None, TransferDecision(Effect.DENY, access.rule, access.reason)
    rule = access.policy.transfer
    if rule is None or not (rule.upload or rule.download):
        return None, TransferDecision(
            Effect.DENY, access.rule,
            f"policy {access.rule} does not allow file transfers with {target} (it has no transfer block)")
    return rule, None


def _path_problem(rule: TransferRule, policy: str, target: str, path: str) -> str | None:
    prefix = denied_prefix(rule, path)
    if prefix is not None:
        return f"{target}:{path} is under {prefix}, which policy {policy} denies"
    if not any(under(path, p) for p in rule.allow_paths):
        return (f"{target}:{path} is outside the paths policy {policy} allows "
                f"({', '.join(rule.allow_paths)})")
    return None


def needs_approval(access: Decision, rule: TransferRule) -> bool:
    """True when each transfer needs an approved request: the transfer rule says so, or access itself does."""
    return rule.approval or (access.policy is not None and access.policy.access is Access.APPROVAL)


def check(access: Decision, target: str, direction: Direction, path: str, *,
          size: int | None = None) -> TransferDecision:
    """May this file cross? ``path`` is inside ``target``; ``size`` is known for a download, not for an upload."""
    rule, denied = _rule(access, target)
    if rule is None:
        assert denied is not None
        return denied
    policy = access.rule
    path = normalise(path)
    to_from = "to" if direction is Direction.UPLOAD else "from"
    if not (rule.upload if direction is Direction.UPLOAD else rule.download):
        return TransferDecision(Effect.DENY, policy,
                                f"policy {policy} does not allow {direction.value}s {to_from} {target}")
    problem = _path_problem(rule, policy, target, path)
    if problem is not None:
        return TransferDecision(Effect.DENY, policy, f"{direction.value} refused: {problem}")
    ext = blocked_extension(rule, path)
    if ext is not None:
        return TransferDecision(Effect.DENY, policy,
                                f"{direction.value} refused: files ending in {ext} may not be moved {to_from} "
                                f"{target} (policy {policy} blocks {', '.join(rule.blocked_extensions)})")
    if size is not None and rule.max_size is not None and size > rule.max_size:
        return TransferDecision(Effect.DENY, policy, f"{direction.value} refused: {target}:{path} is "
                                f"{size} bytes, over the {rule.max_size}-byte limit of policy {policy}")
    limits = {"max_size": rule.max_size, "quarantine_days": rule.quarantine_days}
    if needs_approval(access, rule):
        return TransferDecision(Effect.APPROVAL, policy, f"policy {policy} requires an approved request to "
                                f"{direction.value} {target}:{path}", **limits)
    return TransferDecision(Effect.ALLOW, policy, f"policy {policy} allows {direction.value}s {to_from} {target}",
                            **limits)


def check_change(access: Decision, target: str, action: str, path: str, *, new_name: str | None = None
                 ) -> TransferDecision:
    """May ``action`` (mkdir, rmdir, remove, rename, setstat) change ``path`` on ``target``?

    A change needs what an upload needs: uploads allowed, an allowed path, and,
    for the new name of a rename, an extension that is not blocked. Where each
    upload needs approval, changes are refused: only an approved upload changes
    files there.
    """
    rule, denied = _rule(access, target)
    if rule is None:
        assert denied is not None
        return denied
    policy = access.rule
    if not rule.upload:
        return TransferDecision(Effect.DENY, policy, f"{action} refused: policy {policy} does not allow "
                                f"changes on {target} (uploads are not allowed)")
    for each in (path, new_name) if new_name is not None else (path,):
        problem = _path_problem(rule, policy, target, normalise(each))
        if problem is not None:
            return TransferDecision(Effect.DENY, policy, f"{action} refused: {problem}")
    if new_name is not None:
        ext = blocked_extension(rule, normalise(new_name))
        if ext is not None:
            return TransferDecision(Effect.DENY, policy, f"{action} refused: names ending in {ext} are blocked "
                                    f"on {target} by policy {policy}")
    if needs_approval(access, rule):
        return TransferDecision(Effect.DENY, policy, f"{action} refused: policy {policy} requires approval for "
                                f"each transfer with {target}, so only an approved upload may change files there")
    return TransferDecision(Effect.ALLOW, policy, f"policy {policy} allows {action} on {target}")


def check_browse(access: Decision, target: str, path: str) -> TransferDecision:
    """May the client list or stat ``path`` on ``target``? Inside allowed prefixes, and on the way to them."""
    rule, denied = _rule(access, target)
    if rule is None:
        assert denied is not None
        return denied
    path = normalise(path)
    if not browsable(rule, path):
        problem = _path_problem(rule, access.rule, target, path)
        return TransferDecision(Effect.DENY, access.rule, f"listing refused: {problem}")
    return TransferDecision(Effect.ALLOW, access.rule, f"policy {access.rule} allows browsing {target}:{path}")


def may_transfer_with(access: Decision) -> bool:
    """True when this target belongs in the gateway's root listing (allowed or by approval, with a transfer rule)."""
    rule, _ = _rule(access, "")
    return rule is not None


@dataclass(frozen=True)
class TransferSpec:
    """What a transfer request asks for, and what an approval then covers exactly."""

    direction: Direction
    path: str                 # inside the target, normalised
    size: int | None = None   # uploads: the exact size approved
    sha256: str | None = None  # uploads: the exact content approved

    def describe(self) -> str:
        """For approvers: ``upload /tmp/report.csv (1234 bytes, sha256 ab12…)``."""
        if self.size is None:
            return f"{self.direction.value} {self.path}"
        digest = f", sha256 {self.sha256}" if self.sha256 else ""
        return f"{self.direction.value} {self.path} ({self.size} bytes{digest})"


def spec_problem(approved: TransferSpec, asked: TransferSpec) -> str | None:
    """Why an approval of ``approved`` does not cover the transfer ``asked``, or None when it does.

    ``asked`` may leave size and sha256 unknown (at open, before the bytes); the
    gateway asks again at close with both known.
    """
    if approved.direction is not asked.direction or approved.path != asked.path:
        return f"the approval covers {approved.describe()}, not {asked.describe()}"
    if approved.direction is Direction.UPLOAD:
        if approved.size is None or approved.sha256 is None:
            return "an approved upload must name the file's size and sha256"
        if asked.size is not None and asked.size != approved.size:
            return f"the file is {asked.size} bytes; the approval covers exactly {approved.size}"
        if asked.sha256 is not None and asked.sha256 != approved.sha256:
            return f"the file's sha256 is {asked.sha256}; the approval covers {approved.sha256}"
    return None
