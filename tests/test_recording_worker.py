"""The recorder worker: the same casts as in process, in order, under backpressure; failures are never silent."""

from __future__ import annotations

import asyncio
import os
import random
import resource
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlite_utils
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from recorders.asciicast import Header, iter_events
from recorders.errors import RecorderError
from recorders.follow import follow
from recorders.remote import RecorderProcess
from recorders.store import FAILED_MARKER, INTERRUPTED, RecordingStore
from recorders.tap import SessionTap

T0 = 1_780_000_000.0


class Clock:
    """A hand-driven clock, shared by the store and its writers."""

    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def recorder() -> Iterator[RecorderProcess]:
    process = RecorderProcess(stall_timeout=20)
    yield process
    process.stop()


def new_store(directory: Path, clock: Clock, recorder: RecorderProcess | None = None) -> RecordingStore:
    directory.mkdir(parents=True, exist_ok=True)
    return RecordingStore(directory / "recordings", sqlite_utils.Database(directory / "audit.db"),
                          signing_key=Ed25519PrivateKey.generate(), clock=clock, monotonic=clock, recorder=recorder,
                          sidecars_at_close="lazy")  # rendering is not what these tests are about


def session(store: RecordingStore, clock: Clock, session_id: str, seed: int, *, chunks: int = 300) -> list[bytes]:
    """A session with every kind of event, UTF-8 split across chunks, echo-off typing; the output sent."""
    rng = random.Random(seed)
    rec = store.open(session_id, user="alice", target=None, header=Header(80, 24), started=clock.t)
    tap = SessionTap(rec.writer, onlcr=seed % 2 == 0, clock=clock)
    tap.marker("session started")
    sent = []
    for i in range(chunks):
        clock.t += rng.random() / 10
        data = f"é€😀 line {i} \x1b[1;31m\"quoted\"\\ \t\r\n".encode() * rng.randint(1, 200)
        cut = rng.randint(0, len(data))
        for part in (data[:cut], data[cut:]):  # a character may be split between two events
            tap.output(part)
            sent.append(part)
        if i % 37 == 0:
            tap.input(b"ls\r")
            tap.resize(80 + i % 50, 24 + i % 10)
        if i % 53 == 0:
            tap.input(b"hunter2")  # never echoed: redacted once the echo window passes
            clock.t += 1.0
            tap.tick()
    tap.marker("session ended")
    tap.close()
    rec.close()
    return sent


def test_worker_writes_the_same_cast_as_the_writer_in_process(tmp_path: Path, recorder: RecorderProcess) -> None:
    inline_clock, worker_clock = Clock(), Clock()
    inline = new_store(tmp_path / "inline", inline_clock)
    worker = new_store(tmp_path / "worker", worker_clock, recorder)
    for seed in (1, 2):
        session(inline, inline_clock, f"s{seed}", seed)
        session(worker, worker_clock, f"s{seed}", seed)
        a, b = inline.get_exact(f"s{seed}"), worker.get_exact(f"s{seed}")
        assert inline.path(a).read_bytes() == worker.path(b).read_bytes()
        assert b.status == "closed" and b.sha256 == a.sha256 and worker.verify(b) == []
    assert recorder.pid is not None


def test_a_tiny_backlog_waits_but_loses_and_reorders_nothing(tmp_path: Path) -> None:
    """A 64 KiB backlog in front of a 1 MiB pipe, 30 MB as fast as possible: senders wait, bytes stay in order."""
    recorder = RecorderProcess(max_backlog=64 * 1024)
    try:
        clock = Clock()
        store = new_store(tmp_path, clock, recorder)
        sent = session(store, clock, "big", 4, chunks=3000)
        info = store.get_exact("big")
        shown = "".join(e.data for e in iter_events(store.path(info)) if e.code == "o")
        assert shown.encode() == b"".join(part.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for part in sent)
        assert recorder.stats()["waits"] > 0  # the slow path really ran
    finally:
        recorder.stop()


def test_the_event_loop_writes_the_backlog_while_sessions_go_on(tmp_path: Path) -> None:
    """With a loop, a full pipe does not block the sender: the loop drains it; close() from a thread waits."""

    async def main() -> int:
        recorder = RecorderProcess(loop=asyncio.get_running_loop(), max_backlog=256 << 20)
        clock = Clock()
        store = new_store(tmp_path, clock, recorder)
        rec = store.open("loop", user="alice", target=None, header=Header(80, 24), started=clock.t)
        chunk = b"".join(b"%07d\n" % i for i in range(4096))
        for _ in range(400):  # 13 MB at once, far beyond the pipe
            rec.writer.output(chunk)
            clock.t += 0.001
        backlog = recorder._link._backlog_size if recorder._link else 0
        await asyncio.sleep(0.05)
        info = await asyncio.to_thread(rec.close)
        recorder.stop()
        assert backlog > 0 and info.status == "closed"
        return len([e for e in iter_events(store.path(info)) if e.code == "o"])

    assert asyncio.run(main()) == 400


def test_a_dead_worker_fails_its_recordings_and_a_new_one_starts(tmp_path: Path, recorder: RecorderProcess) -> None:
    clock = Clock()
    store = new_store(tmp_path, clock, recorder)
    rec = store.open("doomed", user="alice", target=None, header=Header(80, 24), started=clock.t)
    told = threading.Event()
    reasons: list[str] = []
    rec.writer.on_failure = lambda reason: (reasons.append(reason), told.set())
    rec.writer.output(b"evidence before the crash\r\n")
    clock.t += 1
    rec.writer.marker("before")
    time.sleep(0.3)
    pid = recorder.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert told.wait(5), "nobody was told the worker died"
    assert "exited" in reasons[0] or "gone" in reasons[0]
    with pytest.raises(RecorderError):
        rec.writer.output(b"unrecorded")  # the daemon ends the session instead of showing this

    info = rec.close()
    assert info.status == INTERRUPTED
    events = list(iter_events(store.path(info)))
    assert "evidence before the crash" in "".join(e.data for e in events if e.code == "o")
    assert events[-1].code == "m" and events[-1].data.startswith(FAILED_MARKER)
    assert store.verify(info) == []  # cut to whole lines, hashed and signed

    session(store, clock, "after", 3, chunks=20)  # the next recording gets a new worker
    assert recorder.pid not in (None, pid) and store.get_exact("after").status == "closed"


def test_a_disk_error_in_the_worker_fails_that_recording_only(tmp_path: Path, recorder: RecorderProcess) -> None:
    clock = Clock()
    store = new_store(tmp_path, clock, recorder)
    small = store.open("small", user="alice", target=None, header=Header(80, 24), started=clock.t)
    small.writer.output(b"short\r\n")
    pid = recorder.pid
    assert pid is not None
    # Files may not grow past 64 KiB in the worker: its writes fail with EFBIG, as on a full disk.
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
    big = store.open("big", user="alice", target=None, header=Header(80, 24), started=clock.t)
    told = threading.Event()
    big.writer.on_failure = lambda reason: told.set()
    big.writer.output(b"x" * 200_000)
    assert told.wait(5) and big.writer.failed is not None and "cannot write" in big.writer.failed
    with pytest.raises(RecorderError):
        big.writer.output(b"more")
    assert big.close().status == INTERRUPTED
    small.writer.output(b"still recorded\r\n")
    info = small.close()
    assert info.status == "closed" and recorder.pid == pid
    assert "still recorded" in "".join(e.data for e in iter_events(store.path(info)))


def test_follow_sees_a_live_recording_within_a_second(tmp_path: Path, recorder: RecorderProcess) -> None:
    clock = Clock()
    store = new_store(tmp_path, clock, recorder)
    rec = store.open("live", user="alice", target=None, header=Header(80, 24), started=clock.t)
    rec.writer.output(b"first\r\n")
    seen: list[tuple[float, str]] = []
    live = True

    def watch() -> None:
        for event in follow(rec.path, lambda: live, poll=0.05):
            seen.append((time.monotonic(), event.data))

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.3)
    sent = time.monotonic()
    rec.writer.output(b"second\r\n")  # no flush call: the worker writes what it reads
    deadline = sent + 1.0
    while not any(data == "second\r\n" for _, data in seen) and time.monotonic() < deadline:
        time.sleep(0.02)
    arrived = next((t for t, data in seen if data == "second\r\n"), None)
    live = False
    rec.close()
    watcher.join(5)
    assert arrived is not None and arrived - sent < 1.0
    assert [data for _, data in seen][:2] == ["first\r\n", "second\r\n"]


def test_recover_seals_what_the_worker_wrote_before_the_daemon_died(tmp_path: Path,
                                                                    recorder: RecorderProcess) -> None:
    clock = Clock()
    store = new_store(tmp_path, clock, recorder)
    rec = store.open("crash", user="alice", target=None, header=Header(80, 24), started=clock.t)
    rec.writer.output(b"before the crash\r\n")
    recorder.stop()  # as at the daemon's death: the pipe closes, the worker writes what it read and exits
    again = RecordingStore(store.root, store.db, signing_key=store.signing_key, clock=clock, monotonic=clock)
    assert again.recover() == ["crash"]
    info = again.get_exact("crash")
    assert info.status == INTERRUPTED and again.verify(info) == []
    assert "before the crash" in "".join(e.data for e in iter_events(again.path(info)))


def test_the_worker_gets_none_of_the_daemons_environment(recorder: RecorderProcess) -> None:
    os.environ["PG_PROD_PASSWORD"] = "not-for-children"  # a target credential, as config may read it
    try:
        recorder.start()
        assert recorder.pid is not None
        environ = Path(f"/proc/{recorder.pid}/environ").read_bytes()
    finally:
        del os.environ["PG_PROD_PASSWORD"]
    names = {entry.split(b"=", 1)[0] for entry in environ.split(b"\0") if entry}
    assert names == {b"PYTHONPATH"} and b"not-for-children" not in environ
