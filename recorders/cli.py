"""``recorder …``: list, show, play, search, export, verify, watch and prune session recordings.

Thin by design: parse arguments, call the module that does the work, and turn a
:class:`~recorders.errors.RecorderError` into ``recorder: message`` and an exit
code (0 ok, 1 failure, 2 usage or not found, 3 refused to play).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from . import asciicast
from .durations import format_offset, format_size, format_time, parse_age, parse_moment
from .errors import IntegrityError, RecorderError
from .export import export_cast, export_text
from .follow import follow
from .player import KeyReader, Player, marker_time, parse_offset, resize_sequence, terminal_keys
from .report import ls_table, show_text, with_offsets
from .search import Stats, grep
from .sidecars import keyframe_before, keyframe_index
from .statedir import config_path, open_store, state_dir_from_config
from .store import LIVE, PRUNED, STATUSES, RecordingInfo, RecordingStore

log = logging.getLogger("recorders")

Handler = Callable[[argparse.Namespace], int]


class UsageError(RecorderError):
    """Arguments that make no sense for this recording (a marker it lacks, a bad pattern)."""

    exit_code = 2


def _store(args: argparse.Namespace) -> RecordingStore:
    state = Path(args.state_dir) if args.state_dir else state_dir_from_config(config_path(args.config, os.environ))
    return open_store(state)


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


# -- commands ------------------------------------------------------------------------


def cmd_ls(args: argparse.Namespace) -> int:
    """List recordings, newest first."""
    infos = _store(args).list(user=args.user, target=args.target, since=args.since,
                              until=args.until, status=args.status)
    if args.status is None:  # tombstones of pruned recordings only when asked for
        infos = [i for i in infos if i.status != PRUNED]
    if args.json:
        for info in infos:
            _out(json.dumps(info.to_dict()))
        return 0
    for line in ls_table(infos):
        _out(line)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Metadata, verification and the audit timeline of one recording."""
    store = _store(args)
    info = store.get(args.id)
    problems = store.verify(info)
    timeline = with_offsets(info, store.timeline(info))
    if args.json:
        _out(json.dumps({"recording": {**info.to_dict(), "file": str(store.path(info))},
                         "verified": not problems, "problems": problems, "timeline": timeline}))
        return 0
    for line in show_text(info, store.path(info), problems, timeline):
        _out(line)
    return 0


def _verified(store: RecordingStore, info: RecordingInfo) -> None:
    """Raise IntegrityError (exit 3) with every reason when a recording fails verification."""
    problems = store.verify(info)
    if problems:
        raise IntegrityError(f"refusing to play {info.session_id}: {'; '.join(problems)}"
                             " (--no-verify plays it anyway)")


def cmd_play(args: argparse.Namespace) -> int:
    """Replay a recording in this terminal."""
    store = _store(args)
    info = store.get(args.id)
    if not args.no_verify:
        _verified(store, info)
    path = store.path(info)
    header = asciicast.read_header(path)
    start = args.start or 0.0
    if args.from_marker is not None:
        try:
            start = marker_time(asciicast.iter_events(path), args.from_marker)
        except RecorderError as e:
            raise UsageError(str(e)) from e
    sealed = info.status != LIVE
    frames = keyframe_index(path, persist=sealed, sealed_sha256=info.sha256 if sealed else None) if start else []
    keyframe = keyframe_before(frames, start) if start else None
    events = asciicast.iter_events(path, start_offset=keyframe.offset if keyframe else None)
    with _keys() as keys:
        Player(sys.stdout, keys).play(events, start=start, keyframe=keyframe, speed=args.speed,
                                      idle_time_limit=args.idle_limit or header.idle_time_limit,
                                      size=(header.width, header.height))
    return 0


def _keys() -> AbstractContextManager[KeyReader | None]:
    """Keys from the terminal when stdin is one; none (plain playback) when it is a pipe or file."""
    try:
        interactive = sys.stdin.isatty()
    except (OSError, ValueError):  # closed, or a stand-in without a file descriptor
        interactive = False
    return terminal_keys() if interactive else nullcontext(None)


def cmd_cat(args: argparse.Namespace) -> int:
    """Print the output stream, or the plain text."""
    store = _store(args)
    info = store.get(args.id)
    path = store.path(info)
    if args.plain:
        export_text(path, sys.stdout, persist=info.status != LIVE)
        return 0
    for ev in asciicast.iter_events(path):
        if ev.code == "o":
            sys.stdout.write(ev.data)
    sys.stdout.flush()
    return 0


def cmd_grep(args: argparse.Namespace) -> int:
    """Search the plain text of recordings; exit 1 when nothing matches, like grep."""
    try:
        pattern = re.compile(args.pattern, re.IGNORECASE if args.ignore_case else 0)
    except re.error as e:
        raise UsageError(f"bad pattern {args.pattern!r}: {e}") from e
    store = _store(args)
    infos = store.list(user=args.user, target=args.target, since=args.since)
    stats = Stats()
    found = 0
    for m in grep(store, pattern, infos, stats):
        found += 1
        if args.json:
            _out(json.dumps({"session_id": m.session_id, "time": m.time, "offset": m.offset,
                             "from": format_offset(m.offset, tenths=True), "line": m.line}))
        else:
            _out(f"{m.session_id}  {format_offset(m.offset, tenths=True)}  {m.line}")
    if args.stats:
        print(f"recorder: searched {stats.recordings} recordings, {stats.cast_bytes / 1e6:.1f} MB in "
              f"{stats.seconds:.2f} s: {stats.mb_per_second:.1f} MB/s", file=sys.stderr)
    return 0 if found else 1


def cmd_export(args: argparse.Namespace) -> int:
    """Write a recording as a .cast for asciinema 2.x, or as plain text."""
    store = _store(args)
    info = store.get(args.id)
    path = store.path(info)
    persist = info.status != LIVE
    if args.output:
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        if args.format == "cast":
            with os.fdopen(fd, "wb") as binary:
                export_cast(path, binary)
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as text:
                export_text(path, text, persist=persist)
    elif args.format == "cast":
        sys.stdout.flush()
        export_cast(path, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        export_text(path, sys.stdout, persist=persist)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check hash, signature and schema; exit 1 on any failure."""
    store = _store(args)
    infos = store.list() if args.all else [store.get(args.id)]
    failed = 0
    for info in infos:
        if info.status == LIVE:
            _out(f"{info.session_id}: live, not closed yet: nothing to verify")
            continue
        if info.status == PRUNED:
            _out(f"{info.session_id}: pruned (file deleted by retention); its sha256 and signature remain")
            continue
        problems = store.verify(info)
        _out(f"{info.session_id}: {'OK' if not problems else 'FAILED'}")
        for p in problems:
            _out(f"  - {p}")
        failed += bool(problems)
    if args.all:
        _out(f"{len(infos)} recordings, {failed} failed")
    return 1 if failed else 0


def cmd_watch(args: argparse.Namespace) -> int:
    """Follow a live recording as it is written."""
    store = _store(args)
    info = store.get(args.id)
    if info.status != LIVE:
        print(f"recorder: {info.session_id} is {info.status}, not live: printing it whole", file=sys.stderr)

    def live() -> bool:
        return store.get_exact(info.session_id).status == LIVE

    for ev in follow(store.path(info), live, poll=args.poll):
        size = asciicast.parse_resize(ev.data) if ev.code == "r" else None
        if ev.code == "o" or size:
            sys.stdout.write(ev.data if size is None else resize_sequence(*size))
            sys.stdout.flush()
    print(f"\r\nrecorder: {info.session_id} ended", file=sys.stderr)
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """Delete recordings older than a duration, except held and live ones."""
    gone = _store(args).prune(args.older_than, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    for info in gone:
        _out(f"{verb} {info.session_id}  {info.user}  {format_time(info.started)}  {format_size(info.bytes)}")
    _out(f"{verb}: {len(gone)} recording(s)")
    return 0


def cmd_hold(args: argparse.Namespace) -> int:
    """Put a recording under legal hold."""
    info = _store(args).hold(args.id, args.reason)
    _out(f"held {info.session_id}: {info.hold_reason}")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    """Lift a legal hold."""
    info = _store(args).release(args.id)
    _out(f"released {info.session_id}")
    return 0


# -- parser ------------------------------------------------------------------------


def _arg(parse: Callable[[str], float]) -> Callable[[str], float]:
    """An argparse type from a parser that raises ValueError with a message for people."""
    def convert(text: str) -> float:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from e

    return convert


def _positive_number(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"{text} is not a positive number")
    return value


_offset = _arg(parse_offset)
_moment = _arg(lambda text: parse_moment(text, time.time()))
_age = _arg(lambda text: parse_age(text, time.time()))
_positive = _arg(_positive_number)


def _where(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("-c", "--config", metavar="FILE", default=default,
                   help="bastion config file (default: $BASTION_CONFIG, then /etc/bastion/bastion.yaml)")
    p.add_argument("--state-dir", metavar="DIR", default=default,
                   help="the bastion's state directory (instead of -c)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every subcommand has help text (tests check it)."""
    parser = argparse.ArgumentParser(prog="recorder", description="Replay, search and verify session recordings.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    _where(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, handler: Handler, help_text: str, *, with_id: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        if with_id:
            p.add_argument("id", metavar="ID", help="session id or a unique prefix of one")
        _where(p, argparse.SUPPRESS)  # given after the command, or before it: either works
        return p

    def filters(p: argparse.ArgumentParser) -> None:
        p.add_argument("--user", help="only this user's recordings")
        p.add_argument("--target", help="only recordings of this target")
        p.add_argument("--since", type=_moment, metavar="T",
                       help="started after: a duration ago (2h, 7d) or a date (2026-11-29)")

    p = add("ls", cmd_ls, "List recordings, newest first.", with_id=False)
    filters(p)
    p.add_argument("--until", type=_moment, metavar="T", help="started before: a duration ago (2h, 7d) or a date")
    p.add_argument("--status", choices=STATUSES, help="only recordings with this status")
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    p = add("show", cmd_show, "Show a recording's metadata, verification and audit timeline.")
    p.add_argument("--json", action="store_true", help="one JSON object")

    p = add("play", cmd_play, "Replay a recording in this terminal (verifies it first).")
    p.add_argument("--speed", type=_positive, default=1.0, metavar="X", help="playback speed (default 1)")
    p.add_argument("--idle-limit", type=_positive, metavar="S", help="cap pauses at S seconds")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from", dest="start", type=_offset, metavar="OFFSET",
                       help="start at this offset: 1m30s, 90s, 1:30 or 90")
    start.add_argument("--from-marker", type=int, metavar="N", help="start at the Nth marker (1 is the first)")
    p.add_argument("--no-verify", action="store_true", help="play even if the hash, signature or schema fails")

    p = add("cat", cmd_cat, "Print a recording's output stream, or its plain text.")
    p.add_argument("--plain", action="store_true", help="the text that was on screen, line by line")

    p = add("grep", cmd_grep, "Search the plain text of recordings; prints SESSION OFFSET LINE.", with_id=False)
    p.add_argument("pattern", metavar="PATTERN", help="a Python regular expression")
    filters(p)
    p.add_argument("-i", "--ignore-case", action="store_true", help="match case-insensitively")
    p.add_argument("--json", action="store_true", help="one JSON object per match")
    p.add_argument("--stats", action="store_true", help="report recordings and MB searched, and MB/s, on stderr")

    p = add("export", cmd_export, "Export a recording as a .cast for asciinema 2.x, or as plain text.")
    p.add_argument("--format", choices=("cast", "txt"), default="cast", help="cast (default) or txt")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (mode 0600) instead of stdout")

    p = add("verify", cmd_verify, "Check recordings' hash, signature and schema; exit 1 on any failure.",
            with_id=False)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("id", metavar="ID", nargs="?", help="session id or a unique prefix of one")
    which.add_argument("--all", action="store_true", help="verify every recording")

    p = add("watch", cmd_watch, "Follow a live recording as it is written, like tail -f.")
    p.add_argument("--poll", type=_positive, default=0.2, metavar="S", help=argparse.SUPPRESS)

    p = add("prune", cmd_prune, "Delete old recordings, except those on hold or still live.", with_id=False)
    p.add_argument("--older-than", required=True, type=_age, metavar="AGE", help="a duration (90d, 12w, 2h) or a date")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")

    p = add("hold", cmd_hold, "Put a recording under legal hold: prune skips it.")
    p.add_argument("--reason", required=True, help="why (a case or ticket reference)")

    add("release", cmd_release, "Lift a legal hold.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``recorder`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="recorder: %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.handler(args))
    except RecorderError as e:
        print(f"recorder: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `recorder cat … | head`: the reader left; keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
