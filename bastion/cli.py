"""``bastion …``: the admin CLI, the daemon entry point and the login client.

Thin by design: parse arguments, call the module that does the work, and turn
a :class:`~bastion.errors.BastionError` into a message and an exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from . import __version__
from .errors import BastionError, StateError

log = logging.getLogger("bastion")

Handler = Callable[[argparse.Namespace], int]


def _config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .config import config_path, load_config

    return load_config(config_path(args.config))


def _since(text: str, now: float) -> float:
    """``30m``/``2h``/``7d`` ago, or an ISO date or date-time (UTC when no zone is given)."""
    from recorders.durations import parse_moment

    try:
        return parse_moment(text, now)
    except ValueError as e:
        raise BastionError(f"--since: {e}") from None


def _show(value: object) -> str:
    """A detail value as the audit listing prints it: strings bare, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


# -- commands ------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    """Create a state directory: keys and a commented bastion.yaml."""
    from .provision import InitOptions, initialise

    options = InitOptions(Path(args.dir), args.oidc_issuer, args.oidc_client_id, args.ssh_listen, args.http_listen)
    path = initialise(options)
    keys = path.parent / "state" / "keys"
    print(f"Wrote {path} and keys in {keys}.")
    print(f"SSH targets trust the bastion through TrustedUserCAKeys: put {keys / 'target_ca.pub'} there "
          f"(`bastion target-ca -c {path}` prints it).")
    print(f"Check it with: bastion check-config -c {path}")
    return 0


def cmd_target_ca(args: argparse.Namespace) -> int:
    """Print the target CA's public key line, for a target's TrustedUserCAKeys."""
    from .keys import target_ca_line

    print(target_ca_line(_config(args).state_dir))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config file."""
    config = _config(args)
    print(f"{config.path}: OK ({len(config.targets)} targets, {len(config.policies)} policies)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the daemon until SIGINT or SIGTERM."""
    from .daemon import serve

    config = _config(args)
    main = serve(config, Path(args.ready_file) if args.ready_file else None)
    if args.event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            main.close()
            raise StateError("--event-loop uvloop needs the uvloop package: pip install 'bastion[fast]'") from None
        uvloop.run(main)  # measured in benchmarks/README.md; the default loop stays the reference
    else:
        asyncio.run(main)
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    """Log in through the IdP and get a short-lived SSH certificate."""
    from .login import login

    flow = args.flow or "auto"
    asyncio.run(login(
        args.bastion, key_path=Path(args.key).expanduser() if args.key else None, flow=flow,
        open_browser=not args.no_browser, agent=args.agent, ttl=args.ttl,
        client_secret=os.environ.get("BASTION_CLIENT_SECRET"),
        known_hosts=Path(args.known_hosts).expanduser() if args.known_hosts else None))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """Query or verify the audit trail."""
    from .audit import AuditStore, iter_json

    config = _config(args)
    store = AuditStore(config.state_dir / "audit.db")
    try:
        if args.action == "verify":
            report = store.verify_chain()
            if report.ok:
                print(f"audit chain OK: {report.events} events")
                return 0
            print(f"audit chain BROKEN at event {report.broken_at}: {report.problem}", file=sys.stderr)
            return 1
        since = _since(args.since, time.time()) if args.since else None
        kinds = tuple(k for k in (args.kind or "").split(",") if k)
        events = store.events(user=args.user, since=since, kinds=kinds, limit=args.limit)
        if args.json:
            for line in iter_json(events):
                print(line)
            return 0
        for e in events:
            when = datetime.fromtimestamp(e.ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
            detail = " ".join(f"{k}={_show(v)}" for k, v in e.detail.items())
            print(f"{when}  {e.kind:<26} {e.user or '-':<12} {e.source or '-':<15} "
                  f"{e.target or '-':<10} {e.outcome or '-':<8} {detail}".rstrip())
        return 0
    finally:
        store.close()


def cmd_policy_explain(args: argparse.Namespace) -> int:
    """Explain what policy decides for a statement."""
    from .explain import run_explain

    return run_explain(args)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo: local CA, dev-only IdP, bastion with sample targets."""
    from .demo import run_demo

    return asyncio.run(run_demo(Path(args.dir), ssh_port=args.ssh_port, http_port=args.http_port,
                                idp_port=args.idp_port, pg_port=args.pg_port))


def cmd_version(args: argparse.Namespace) -> int:
    """Print the version."""
    print(f"bastion {__version__}")
    return 0


# -- parser ----------------------------------------------------------------------


def _with_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", metavar="FILE",
                   help="config file (default: $BASTION_CONFIG, then /etc/bastion/bastion.yaml)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every subcommand has help text (tests check it)."""
    parser = argparse.ArgumentParser(prog="bastion", description="An SSH bastion that ends standing access.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    p = add("init", cmd_init, "Create keys and a commented bastion.yaml in a new directory.")
    p.add_argument("--dir", required=True, help="directory to create (refuses to overwrite)")
    p.add_argument("--oidc-issuer", default="http://127.0.0.1:8081", help="the people's OIDC issuer URL")
    p.add_argument("--oidc-client-id", default="bastion", help="the OIDC client id of the login client")
    p.add_argument("--ssh-listen", default="127.0.0.1:2222", metavar="HOST:PORT", help="SSH listen address")
    p.add_argument("--http-listen", default="127.0.0.1:8080", metavar="HOST:PORT", help="HTTP listen address")

    _with_config(add("check-config", cmd_check_config,
                     "Validate a config file and report the first problem with file:line."))

    _with_config(add("target-ca", cmd_target_ca,
                     "Print the target CA's public key: the line an SSH target's sshd trusts in TrustedUserCAKeys."))

    p = add("serve", cmd_serve, "Run the bastion daemon (SSH and HTTP listeners).")
    _with_config(p)
    p.add_argument("--ready-file", metavar="FILE", help="write the bound ports as JSON once listening")
    p.add_argument("--event-loop", choices=("asyncio", "uvloop"), default="asyncio",
                   help="the event loop to run on (default asyncio; uvloop needs the 'fast' extra)")

    p = add("login", cmd_login, "Log in through your identity provider and get a short-lived SSH certificate.")
    p.add_argument("--bastion", required=True, metavar="URL", help="the bastion's HTTP URL")
    p.add_argument("--key", metavar="PATH", help="SSH key to certify (default ~/.ssh/id_ed25519; created if missing)")
    p.add_argument("--flow", choices=["device", "code"], help="OIDC flow (default: code with a browser, else device)")
    p.add_argument("--no-browser", action="store_true", help="print the URL instead of opening a browser")
    p.add_argument("--agent", action="store_true", help="also load key and certificate into ssh-agent")
    p.add_argument("--ttl", type=float, metavar="SECONDS", help="ask for a shorter certificate lifetime")
    p.add_argument("--known-hosts", metavar="PATH", help="known_hosts file to update (default ~/.ssh/known_hosts)")

    p = add("audit", cmd_audit, "Show audit events, or `audit verify` to check the hash chain.")
    _with_config(p)
    p.add_argument("action", nargs="?", choices=["verify"], help="verify: check the chain, exit 1 on a break")
    p.add_argument("--user", help="only this user's events")
    p.add_argument("--since", metavar="T", help="a duration ago (2h, 7d) or a date (2026-11-29)")
    p.add_argument("--kind", metavar="K1,K2", help="only these event kinds; a glob like 'request.*' matches a family")
    p.add_argument("--limit", type=int, metavar="N", help="only the last N events")
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    policy = sub.add_parser("policy", help="Test policies before you roll them out.",
                            description="Test policies before you roll them out.")
    policy_sub = policy.add_subparsers(dest="policy_command", metavar="COMMAND")
    policy_sub.required = True
    explain_help = ("Print the decision for a SQL statement (or one per line with --each), the rule "
                    "that made it and why. Exit codes: 0 allow, 3 deny, 4 review.")
    p = policy_sub.add_parser("explain", help=explain_help, description=explain_help)
    p.set_defaults(handler=cmd_policy_explain)
    _with_config(p)
    from .explain import add_arguments as explain_arguments

    explain_arguments(p)

    from .cli_access import register as access_commands

    access_commands(add, _with_config)

    p = add("demo", cmd_demo, "Run a demo: local CA, a dev-only identity provider and sample targets.")
    p.add_argument("--dir", default=".bastion-demo", help="demo directory (default ./.bastion-demo)")
    p.add_argument("--ssh-port", type=int, default=2222, help="SSH port (default 2222)")
    p.add_argument("--http-port", type=int, default=8080, help="HTTP port (default 8080)")
    p.add_argument("--idp-port", type=int, default=8081, help="dev identity provider port (default 8081)")
    p.add_argument("--pg-port", type=int, default=15432, help="the demo PostgreSQL's port (default 15432)")

    add("version", cmd_version, "Print the version.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bastion`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not args.verbose:
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        return int(args.handler(args))
    except BastionError as e:
        print(f"bastion: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
