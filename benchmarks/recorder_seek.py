"""Seeking to the last minute of a 100 MB recording: with the keyframe index, against replaying from zero.

One realistic recording (benchmarks/_recording_support.py: prompt_toolkit shells, large
log dumps, a full-screen monitor, resizes) of ``--megabytes`` is written through the
store on a fake clock, so its timeline runs for hours. Then ``play --from`` to
duration - 60 s is timed to its first frame, in this process, the way ``recorder play``
does it (recorders/cli.py ``cmd_play``), with the real :class:`recorders.player.Player`:

- index: ``keyframe_index`` (the ``.idx`` sidecar, checked fresh against the cast's sha256),
  ``keyframe_before``, events read from the keyframe's byte offset, the keyframe drawn and
  the events up to T written at once;
- from zero: no keyframe; every event up to T is written at once.

The player writes to a fake terminal whose first ``flush()`` (the player flushes once the
screen at T is drawn) records the time and stops it; its clock and sleep are fakes, so
nothing sleeps. Both outputs are then fed to the product's VT emulator (recorders.vt,
pyte) and the two screens compared cell by cell. Verification, which ``recorder play``
runs first unless ``--no-verify``, is timed on its own.

    .venv/bin/python benchmarks/recorder_seek.py [--megabytes 100] [--runs 5]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO, cast

from _recording_support import (
    FakeClock,
    FakeTty,
    FirstFrame,
    mb,
    new_state,
    record,
    same_screen,
    screen_of,
    writing_store,
)
from _support import Lab, median, ms, run_main, stop_on_signals, table

from recorders import asciicast, sidecars
from recorders.player import Player
from recorders.signing import file_digest
from recorders.statedir import open_store

BUDGET = 295.0


@dataclass
class Seek:
    """Runs of one way of seeking."""

    name: str
    seconds: list[float] = field(default_factory=list)  # to the first frame
    index_seconds: list[float] = field(default_factory=list)  # of which: loading the keyframe index
    written: int = 0  # characters the player wrote before the first frame
    tty: FakeTty | None = None


def seek(path: Path, start: float, header: asciicast.Header, *, index: bool,
         sealed: str | None = None) -> tuple[float, float, FakeTty]:
    """Time ``play --from start`` to its first frame; (seconds, of which loading the index, the output)."""
    tty = FakeTty()
    clock = FakeClock()
    began = time.perf_counter()
    keyframe = None
    if index:
        # As `recorder play` does: the index is checked against the sha256 sealed at close.
        keyframe = sidecars.keyframe_before(sidecars.keyframe_index(path, sealed_sha256=sealed), start)
    loaded = time.perf_counter()
    events = asciicast.iter_events(path, start_offset=keyframe.offset if keyframe else None)
    player = Player(cast(TextIO, tty), None, clock=clock, sleep=clock.advance)
    try:
        player.play(events, start=start, keyframe=keyframe, speed=1.0, idle_time_limit=header.idle_time_limit,
                    size=(header.width, header.height))
    except FirstFrame:
        pass
    if tty.first_frame_at is None:
        raise RuntimeError("the player never flushed a first frame")
    return tty.first_frame_at - began, loaded - began if index else 0.0, tty


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=100.0, help="size of the recording, in MB (100)")
    parser.add_argument("--runs", type=int, default=5, help="timed seeks of each kind, interleaved (5)")
    parser.add_argument("--before-end", type=float, default=60.0, help="seek to this many seconds before the end (60)")
    args = parser.parse_args()
    if args.runs < 1 or args.megabytes <= 0:
        parser.error("--runs and --megabytes must be positive")
    stop_on_signals(BUDGET)
    with Lab() as lab:
        state = new_state(lab.tmp / "bastion")
        clock = FakeClock(1000.0)
        store = writing_store(state, clock)
        print(f"writing a {args.megabytes:g} MB recording", flush=True)
        began = time.perf_counter()
        path, size = record(store, clock, "seek0000000000001", time.time() - 6 * 3600, "alice", "web-1",
                            lambda s: s.mixed(int(args.megabytes * 1e6)), width=120, height=40, seed=42)
        written = time.perf_counter() - began
        header = asciicast.read_header(path)
        events = 0
        duration = 0.0
        resizes = 0
        for ev in asciicast.iter_events(path):
            events += 1
            duration = ev.time
            resizes += ev.code == "r"
        print(f"  {mb(size)} MB, {events} events, {resizes} resizes, {duration / 60:.1f} min of timeline, "
              f"written in {written:.1f} s", flush=True)

        print("building the keyframe index (`recorder` does it the first time it is needed)", flush=True)
        began = time.perf_counter()
        sidecars.build_index(path)
        build = time.perf_counter() - began
        idx_size = sidecars.index_path(path).stat().st_size
        frames = sidecars.keyframe_index(path, persist=False)
        print(f"  {len(frames)} keyframes, {mb(idx_size)} MB, built in {build:.1f} s", flush=True)

        began = time.perf_counter()
        reader = open_store(state)
        problems = reader.verify(reader.get(path.stem))
        verify = time.perf_counter() - began
        if problems:
            raise RuntimeError(f"the recording does not verify: {problems}")
        began = time.perf_counter()
        file_digest(path)
        digest = time.perf_counter() - began

        start = max(0.0, duration - args.before_end)
        print(f"seeking to {start:.1f} s ({args.before_end:g} s before the end), {args.runs} runs each", flush=True)
        with_index, from_zero = Seek("keyframe index"), Seek("from zero (no index)")
        for i in range(args.runs):
            for kind in (with_index, from_zero) if i % 2 == 0 else (from_zero, with_index):
                seconds, loading, tty = seek(path, start, header, index=kind is with_index,
                                             sealed=reader.get(path.stem).sha256)
                kind.seconds.append(seconds)
                kind.index_seconds.append(loading)
                kind.written, kind.tty = tty.size, tty
            print(f"  index {ms(with_index.seconds[-1])} ms, from zero {ms(from_zero.seconds[-1])} ms", flush=True)

        print("comparing the two first frames (both outputs through recorders.vt)", flush=True)
        assert with_index.tty is not None and from_zero.tty is not None
        same, detail = same_screen(screen_of(with_index.tty.parts, header.width, header.height),
                                   screen_of(from_zero.tty.parts, header.width, header.height))
        report(args, with_index, from_zero, start, duration, size, verify, digest, same, detail)
    return 0 if same else 1


def report(args: argparse.Namespace, with_index: Seek, from_zero: Seek, start: float, duration: float, size: int,
           verify: float, digest: float, same: bool, detail: str) -> None:
    """Both seeks side by side, the ratio, and what verification adds."""
    def row(seek: Seek) -> tuple[object, ...]:
        return (seek.name, len(seek.seconds), ms(median(seek.seconds)), ms(min(seek.seconds)), ms(max(seek.seconds)),
                ms(median(seek.index_seconds)) if seek is with_index else "-", f"{seek.written / 1e3:.0f}")

    a, b = median(with_index.seconds), median(from_zero.seconds)
    print()
    print(f"play --from {start:.0f}s on a {mb(size)} MB recording of {duration / 60:.0f} min, to the first frame "
          f"(--no-verify)")
    print(table(("seek", "runs", "median ms", "min ms", "max ms", "of which index ms", "kB written"),
                [row(with_index), row(from_zero)]))
    print(f"\nindex / from zero = 1/{b / a:.0f} = {a / b:.3f} (goal: 1/20 or less)")
    print(f"same screen: {'yes' if same else 'NO'}: {detail}")
    print(f"sha256 of the cast alone (keyframe_index checks the .idx is fresh with it): {ms(digest)} ms")
    print(f"verification, which `recorder play` runs first without --no-verify: {ms(verify)} ms; "
          f"with it, index / from zero = {(a + verify) / (b + verify):.2f}")


if __name__ == "__main__":
    run_main(main)
