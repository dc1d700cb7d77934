"""``recorder grep`` over a gigabyte of recordings: MB/s of cast searched, cold and warm.

The recordings are synthetic but realistic (benchmarks/_recording_support.py): many
interactive prompt_toolkit shells, and sessions with large log dumps, which hold most
of the bytes. They are written with the product's Writer and registered through
RecordingStore (hashed and signed) in a state directory made by ``bastion init``, so
the real ``recorder grep --state-dir DIR --stats`` sees them.

- cold: transcripts (``<id>.txt``) missing, so grep renders each cast (pyte) before
  searching. Measured on a subset of about 100 MB (``--cold-megabytes``, one user's
  recordings, selected with ``--user``), the transcripts deleted before each pattern.
- warm: transcripts present, over the whole corpus.

Both with a plain pattern and a case-insensitive one. Rendering a gigabyte takes minutes
at a few MB/s, so the corpus outside the cold subset is made of distinct recordings each
stored ``--copies`` times under other session ids (byte-identical files, rows signed for
their own id). Their transcripts are built once per distinct cast, with the same call
grep makes when one is missing (``sidecars.fresh_transcript``), in ``--workers`` processes,
timed separately, and copied: a transcript is bound to its cast's sha256, which the copies
share. ``--copies 1`` makes every recording distinct (and takes longer).

    .venv/bin/python benchmarks/recorder_grep.py [--gigabytes 1.0] [--cold-megabytes 100] [--copies 5]
        [--workers 2] [--profile DIR] [--budget 295]
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from _recording_support import (
    FakeClock,
    Session,
    mb,
    new_state,
    record,
    recorder_cli,
    summarize_profile,
    writing_store,
)
from _support import Lab, median, run_main, stop_on_signals, table

from recorders import sidecars
from recorders.signing import sign
from recorders.store import RecordingStore

PATTERNS = (("DROP TABLE", False), ("out of memory", True))  # (pattern, -i)
COLD_USER = "carol"
OTHER_USERS = ("alice", "bob", "dave", "erin", "frank", "grace")
TARGETS = ("web-1", "web-2", "db-1", "pg-prod", "k8s-prod", None)
DAY = 86400.0
BUCKETS = (("recorders/signing.py", "file_digest (sha256 of the cast)"),
           ("recorders/screen.py", "rendering (recorders/screen.py, pyte)"),
           ("search_transcript_file", "search_transcript_file (read + regex)"),
           ("recorders/store.py", "recorders/store.py"))
_STATS = re.compile(r"searched (\d+) recordings, ([\d.]+) MB in ([\d.]+) s: ([\d.]+) MB/s")


@dataclass
class Corpus:
    """What was generated."""

    cold: list[Path] = field(default_factory=list)  # the cold subset's casts
    distinct: list[Path] = field(default_factory=list)  # the other distinct casts
    copies: dict[Path, list[Path]] = field(default_factory=dict)  # distinct cast -> its copies
    cold_bytes: int = 0
    total_bytes: int = 0
    recordings: int = 0
    seconds: float = 0.0


def play_one(session: Session, size: int) -> None:
    """One recording's worth: an interactive shell, or a shell with large outputs."""
    if size < 4e6:
        while session.size() < size:
            session.command()
        return
    session.mixed(size, dumps=(1e6, 20e6))


def sizes(rng: random.Random, total: int) -> list[int]:
    """Recording sizes adding up to about ``total``: mostly small shells, some large dumps."""
    out: list[int] = []
    left = total
    while left > 0:
        size = int(rng.lognormvariate(13.0, 1.0)) if rng.random() < 0.9 else int(rng.uniform(5e6, 40e6))
        out.append(max(50_000, min(size, left)))
        left -= out[-1]
    return out


def generate(store: RecordingStore, clock: FakeClock, args: argparse.Namespace) -> Corpus:
    """The cold subset (distinct, one user), then distinct recordings and their copies."""
    rng = random.Random(1)
    corpus = Corpus()
    now = time.time()
    start = time.perf_counter()
    total = int(args.gigabytes * 1e9)
    n = 0

    def one(user: str, size: int) -> tuple[Path, int]:
        nonlocal n
        n += 1
        started = now - rng.uniform(0, 30 * DAY)
        return record(store, clock, f"{n:06d}{rng.getrandbits(40):010x}", started, user, rng.choice(TARGETS),
                      lambda s: play_one(s, size), width=rng.choice((100, 120, 160)),
                      height=rng.choice((30, 40, 48)), seed=n)

    for size in sizes(rng, int(args.cold_megabytes * 1e6)):
        path, written = one(COLD_USER, size)
        corpus.cold.append(path)
        corpus.cold_bytes += written
    corpus.total_bytes = corpus.cold_bytes
    distinct_total = max(0, total - corpus.cold_bytes) // args.copies
    for size in sizes(rng, distinct_total):
        path, written = one(rng.choice(OTHER_USERS), size)
        corpus.distinct.append(path)
        corpus.copies[path] = [copy_recording(store, path, rng, now) for _ in range(args.copies - 1)]
        corpus.total_bytes += written * args.copies
        if corpus.total_bytes >= total:
            break
    corpus.recordings = len(corpus.cold) + sum(1 + len(c) for c in corpus.copies.values())
    corpus.seconds = time.perf_counter() - start
    return corpus


def copy_recording(store: RecordingStore, cast: Path, rng: random.Random, now: float) -> Path:
    """A byte-identical copy of a closed recording under a new session id, indexed and signed for it."""
    original = store.get_exact(cast.stem)
    assert store.signing_key is not None and original.sha256 and original.ended is not None
    session_id = f"c{rng.getrandbits(60):015x}"
    path = cast.with_name(f"{session_id}.cast")
    shutil.copyfile(cast, path)
    path.chmod(0o600)
    shift = rng.uniform(-3 * DAY, 3 * DAY)
    started, ended = original.started + shift, round(original.ended + shift, 6)
    store.db.table("recordings").insert({
        "session_id": session_id, "user": original.user, "target": original.target,
        "started": round(started, 6), "ended": ended, "bytes": original.bytes, "sha256": original.sha256,
        "signature": sign(store.signing_key, session_id, original.sha256, original.bytes or 0, ended),
        "status": "closed", "path": path.relative_to(store.root).as_posix(), "title": original.title, "hold": 0})
    return path


def _worker_init() -> None:
    # The pool is ended with SIGTERM; this process's handlers (from _support) would print a traceback.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent ends the pool


def _build(cast: Path) -> int:
    sidecars.fresh_transcript(cast)
    return cast.stat().st_size


def build_transcripts(corpus: Corpus, workers: int) -> tuple[float, int]:
    """Transcripts of the distinct casts in ``workers`` processes, then copied to the copies; (seconds, bytes)."""
    todo = sorted(corpus.distinct, key=lambda p: p.stat().st_size, reverse=True)  # big first: balance
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(workers, _worker_init) as pool:
        built = sum(pool.imap_unordered(_build, todo))
    seconds = time.perf_counter() - start
    for cast, copies in corpus.copies.items():
        for copy in copies:
            shutil.copyfile(sidecars.transcript_path(cast), sidecars.transcript_path(copy))
    return seconds, built


@dataclass
class Grep:
    """One ``recorder grep`` run."""

    label: str
    pattern: str
    ignore_case: bool
    wall: float = 0.0
    recordings: int = 0
    cast_mb: float = 0.0
    seconds: float = 0.0  # as grep --stats reports it
    matches: int = 0

    @property
    def mbps(self) -> float:
        return self.cast_mb / self.seconds if self.seconds else 0.0


def grep(state: Path, label: str, pattern: str, ignore_case: bool, *extra: str,
         profile: Path | None = None) -> Grep:
    """Run the real ``recorder grep --stats``, output to a pipe; parse its stats line."""
    wall, result = recorder_cli("grep", pattern, *(["-i"] if ignore_case else []), *extra,
                                "--state-dir", str(state), "--stats", profile=profile)
    found = _STATS.search(result.stderr)
    if result.returncode not in (0, 1) or found is None:
        raise RuntimeError(f"recorder grep exited {result.returncode}: {result.stderr.strip()}")
    matches = [line for line in result.stdout.splitlines() if not line.startswith("py-spy>")]
    run = Grep(label, pattern, ignore_case, wall, int(found[1]), float(found[2]), float(found[3]), len(matches))
    if run.matches == 0:  # a small corpus may hold no needle; the throughput still counts
        print(f"warning: recorder grep {pattern!r} matched nothing in these recordings", file=sys.stderr)
    print(f"  {label:<5} {'-i ' if ignore_case else ''}{pattern!r}: {run.recordings} recordings, "
          f"{run.cast_mb:.0f} MB in {run.seconds:.2f} s = {run.mbps:.1f} MB/s, {run.matches} matches", flush=True)
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=1.0, help="cast bytes in all, in GB (1.0)")
    parser.add_argument("--cold-megabytes", type=float, default=100.0, help="the cold subset, in MB (100)")
    parser.add_argument("--copies", type=int, default=5, help="times each other distinct recording is stored (5)")
    parser.add_argument("--workers", type=int, default=2, help="processes building transcripts (2)")
    parser.add_argument("--warm-runs", type=int, default=3, help="warm runs per pattern (3)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy the first cold run and one extra warm run per pattern into DIR")
    parser.add_argument("--budget", type=float, default=295.0, help="seconds before the run gives up (295)")
    args = parser.parse_args()
    if args.copies < 1 or args.workers < 1 or args.gigabytes <= 0 or args.cold_megabytes <= 0:
        parser.error("--copies and --workers must be at least 1, sizes positive")
    stop_on_signals(args.budget)
    with Lab() as lab:
        state = new_state(lab.tmp / "bastion")
        clock = FakeClock(1000.0)
        store = writing_store(state, clock)
        print(f"generating {args.gigabytes:g} GB of recordings in {state}", flush=True)
        corpus = generate(store, clock, args)
        print(f"  {corpus.recordings} recordings, {mb(corpus.total_bytes)} MB in {corpus.seconds:.1f} s; cold subset "
              f"{len(corpus.cold)} recordings of {COLD_USER}, {mb(corpus.cold_bytes)} MB; "
              f"{len(corpus.distinct)} other distinct, each x{args.copies}", flush=True)

        print(f"cold: transcripts missing, `--user {COLD_USER}` ({mb(corpus.cold_bytes)} MB)", flush=True)
        cold = []
        for i, (pattern, ignore_case) in enumerate(PATTERNS):
            for cast in corpus.cold:
                sidecars.transcript_path(cast).unlink(missing_ok=True)
            cold.append(grep(state, "cold", pattern, ignore_case, "--user", COLD_USER,
                             profile=args.profile / f"grep_cold_{i}.txt" if args.profile else None))

        print(f"building the other transcripts in {args.workers} processes", flush=True)
        build_seconds, built = build_transcripts(corpus, args.workers)
        print(f"  {len(corpus.distinct)} distinct casts, {mb(built)} MB in {build_seconds:.1f} s "
              f"= {built / 1e6 / build_seconds:.1f} MB/s with {args.workers} workers", flush=True)

        print(f"warm: transcripts present, every recording ({mb(corpus.total_bytes)} MB)", flush=True)
        warm = [[grep(state, "warm", pattern, ignore_case) for _ in range(args.warm_runs)]
                for pattern, ignore_case in PATTERNS]
        if args.profile:  # one more warm run of each pattern, under py-spy (not in the figures)
            for i, (pattern, ignore_case) in enumerate(PATTERNS):
                grep(state, "prof", pattern, ignore_case, profile=args.profile / f"grep_warm_{i}.txt")
        report(corpus, cold, warm, build_seconds, built, args)
        if args.profile:
            for path in sorted(args.profile.glob("grep_*.txt")):
                print(f"\nprofile {path.name} (py-spy, recorder grep), % of samples:")
                print(table(("where", "%", "kind"), summarize_profile(path, BUCKETS)))
    return 0


def report(corpus: Corpus, cold: list[Grep], warm: list[list[Grep]], build_seconds: float, built: int,
           args: argparse.Namespace) -> None:
    """Cold and warm side by side, per pattern."""
    rows = []
    for c, ws in zip(cold, warm, strict=True):
        w = ws[len(ws) // 2] if len(ws) % 2 else min(ws, key=lambda g: g.seconds)
        shown = f"{'-i ' if c.ignore_case else ''}{c.pattern!r}"
        rows.append((shown, f"{c.cast_mb:.0f}", f"{c.mbps:.1f}", f"{c.cast_mb / c.wall:.1f}",
                     f"{w.cast_mb:.0f}", f"{median([g.mbps for g in ws]):.1f}",
                     f"{median([g.cast_mb / g.wall for g in ws]):.1f}", w.matches,
                     f"{median([g.mbps for g in ws]) / c.mbps:.0f}x"))
    print()
    print(f"recorder grep --stats over {corpus.recordings} recordings, {mb(corpus.total_bytes)} MB of casts "
          f"(MB/s of cast bytes; 'wall' includes process start-up)")
    print(table(("pattern", "cold MB", "cold MB/s", "cold wall", "warm MB", "warm MB/s", "warm wall", "warm matches",
                 "warm/cold"), rows))
    print(f"\ncold = transcripts rendered on the fly (pyte), one process, on {COLD_USER}'s {len(corpus.cold)} "
          f"recordings; warm = .txt sidecars present, whole corpus, median of {args.warm_runs} runs")
    print(f"transcripts for the rest: {len(corpus.distinct)} distinct casts, {mb(built)} MB, built in "
          f"{build_seconds:.1f} s by {args.workers} processes = {built / 1e6 / build_seconds:.1f} MB/s "
          f"({built / 1e6 / build_seconds / args.workers:.1f} MB/s per process), copied to "
          f"{sum(len(c) for c in corpus.copies.values())} copies")


if __name__ == "__main__":
    run_main(main)
