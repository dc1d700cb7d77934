"""Recordings on disk, their index in the audit database, and their integrity.

Files live at ``<root>/YYYY/MM/DD/<session-id>.cast`` (UTC date of the start),
directories 0700 and files 0600. One row per recording in the ``recordings``
table of the database the caller passes in: the bastion passes its audit
store's, so this module creates only its own table and reads ``events`` only
for :meth:`RecordingStore.timeline`.

At close, the store keeps the file's sha256 and size and an Ed25519 signature
(see :mod:`recorders.signing`) over the session id, sha256, size and end time.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

import sqlite_utils
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import asciicast, sidecars
from .castlines import EventWriter
from .errors import NotFound, RecorderError
from .remote import RecorderProcess, RemoteWriter
from .repair import cut_and_mark
from .signing import file_digest, load_signing_key, load_verify_key, sign, signature_ok

__all__ = ["Recording", "RecordingInfo", "RecordingStore", "load_signing_key", "load_verify_key"]

log = logging.getLogger(__name__)

LIVE, CLOSED, INTERRUPTED, PRUNED = "live", "closed", "interrupted", "pruned"
STATUSES = (LIVE, CLOSED, INTERRUPTED, PRUNED)
INTERRUPTED_MARKER = "recording interrupted: the bastion stopped unexpectedly"
FAILED_MARKER = "recording failed"
STILL_LIVE = "still live: the recording is not closed yet, so it has no hash or signature to check"
SidecarMode = Literal["now", "background", "lazy"]
_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SCHEMA: dict[str, Any] = {
    "session_id": str, "user": str, "target": str, "started": float, "ended": float, "bytes": int,
    "sha256": str, "signature": str, "status": str, "path": str, "title": str, "hold": int,
    "hold_reason": str, "pruned_at": float,
}


@dataclass(frozen=True)
class RecordingInfo:
    """One row of the recordings index."""

    session_id: str
    user: str
    target: str | None
    started: float
    ended: float | None
    bytes: int | None
    sha256: str | None
    signature: str | None
    status: str
    path: str
    title: str | None
    hold: int
    hold_reason: str | None
    pruned_at: float | None = None  # the file was deleted by retention; the row stays as evidence

    @property
    def duration(self) -> float | None:
        """Seconds from start to end, or None while live."""
        return None if self.ended is None else max(0.0, self.ended - self.started)

    def to_dict(self) -> dict[str, Any]:
        """The row as a JSON-ready dict, with the duration."""
        return {**asdict(self), "duration": self.duration}


class Recording:
    """An open recording: a writer (in this process, or the recorder worker's) and its live index row."""

    def __init__(self, store: RecordingStore, session_id: str, path: Path, file: BinaryIO | None,
                 writer: asciicast.Writer | RemoteWriter) -> None:
        self.session_id = session_id
        self.path = path
        self.writer: EventWriter = writer
        self._store = store
        self._file = file  # None when the worker holds the file
        self._closed: RecordingInfo | None = None

    def close(self, *, reason: str | None = None) -> RecordingInfo:
        """Close the file, then hash and sign it and mark it closed; idempotent.

        A recording whose writer failed is sealed ``interrupted``, cut to its last whole line and
        marked with the reason: what reached the disk is still evidence.
        """
        if self._closed is not None:
            return self._closed
        try:
            if reason:
                self.writer.marker(f"session ended: {reason}")
            self.writer.close()
        except RecorderError as e:  # the tap closed the writer first, or it failed (below)
            log.debug("recording %s: no end marker: %s", self.session_id, e)
        except OSError as e:  # a full disk must not leave the row live: seal what reached the file
            log.error("recording %s: cannot write its end: %s", self.session_id, e)
        if self._file is not None:
            try:
                self._file.close()
            except OSError as e:
                log.error("recording %s: cannot close its file: %s", self.session_id, e)
        status, ended = CLOSED, self._store._clock()
        if self.writer.failed is not None:
            status = INTERRUPTED
            try:
                cut_and_mark(self.path, f"{FAILED_MARKER}: {self.writer.failed}")
            except OSError as e:
                log.error("recording %s: cannot mark where it failed: %s", self.session_id, e)
        self._closed = self._store._seal(self.session_id, status, ended)
        return self._closed


class RecordingStore:
    """The narrow interface to recordings: one backend today (local files and SQLite)."""

    def __init__(self, root: Path, db: sqlite_utils.Database, *, signing_key: Ed25519PrivateKey | None = None,
                 verify_key: Ed25519PublicKey | None = None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, sidecars_at_close: SidecarMode = "now",
                 recorder: RecorderProcess | None = None) -> None:
        self.root = root
        # With a recorder worker, cast files are written by a child process: the daemon's choice.
        self.recorder = recorder
        # Building sidecars renders the whole session (about 1 MB/s of cast): a daemon that must not
        # stall in close() says "background"; "lazy" leaves them to the first grep or seek.
        self.sidecars_at_close = sidecars_at_close
        self._builders: builtins.list[threading.Thread] = []
        self.db = db
        # The daemon hashes and signs in worker threads (asyncio.to_thread), and a sqlite3
        # connection belongs to the thread that made it: other threads get their own
        # connection to the same file (WAL lets them share it).
        self._owner = threading.get_ident()
        self._file = next((r[2] for r in db.execute("PRAGMA database_list").fetchall() if r[1] == "main"), "")
        self._local = threading.local()
        self.signing_key = signing_key
        self.verify_key = verify_key or (signing_key.public_key() if signing_key else None)
        self._clock = clock
        self._monotonic = monotonic  # the writers' clock: event times must not jump with the wall clock
        db.table("recordings").create(_SCHEMA, pk="session_id", not_null={"status", "path", "hold"},
                                      defaults={"hold": 0}, if_not_exists=True)
        if "pruned_at" not in db.table("recordings").columns_dict:  # an index made before tombstones
            db.table("recordings").add_column("pruned_at", float)
        db.table("recordings").create_index(["started"], if_not_exists=True)
        db.table("recordings").create_index(["user"], if_not_exists=True)

    def _db(self) -> sqlite_utils.Database:
        """The database, through a connection this thread may use."""
        if threading.get_ident() == self._owner or not self._file:  # in memory: one connection only
            return self.db
        db: sqlite_utils.Database | None = getattr(self._local, "db", None)
        if db is None:
            conn = sqlite3.connect(self._file, timeout=10.0, isolation_level=None)
            db = self._local.db = sqlite_utils.Database(conn)
        return db

    # -- writing ---------------------------------------------------------------

    def open(self, session_id: str, *, user: str, target: str | None, header: asciicast.Header,
             started: float | None = None) -> Recording:
        """Create the file and its live index row, and return the open recording."""
        if not _SESSION_ID.fullmatch(session_id):
            raise RecorderError(f"session id {session_id!r} is not usable as a file name")
        start = self._clock() if started is None else started
        day = datetime.fromtimestamp(start, UTC)
        relative = Path(f"{day:%Y}", f"{day:%m}", f"{day:%d}", f"{session_id}.cast")
        path = self.root / relative
        self._make_dirs(path.parent)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as e:
            raise RecorderError(f"a recording for session {session_id} already exists at {path}") from e
        file: BinaryIO | None = os.fdopen(fd, "wb")
        if header.timestamp is None:
            header = replace(header, timestamp=int(start))
        writer: asciicast.Writer | RemoteWriter | None = None
        try:
            assert file is not None
            if self.recorder is None:
                writer = asciicast.Writer(file, header, clock=self._monotonic)
            else:
                file.write(asciicast.header_line(header))
                file.close()
                file = None
                writer = self.recorder.open(path, self._monotonic)
            self._db().table("recordings").insert({
                "session_id": session_id, "user": user, "target": target, "started": round(start, 6),
                "status": LIVE, "path": relative.as_posix(), "title": header.title, "hold": 0,
            })
        except BaseException:  # no row without a file, no file without a row
            if isinstance(writer, RemoteWriter):
                with contextlib.suppress(RecorderError):
                    writer.close()
            if file is not None:
                file.close()
            path.unlink(missing_ok=True)
            raise
        log.info("recording session %s to %s", session_id, path)
        return Recording(self, session_id, path, file, writer)

    def _make_dirs(self, directory: Path) -> None:
        """Create the date directories 0700, whatever the umask."""
        missing = [p for p in (directory, *directory.parents) if not p.exists()]
        for p in reversed(missing):
            p.mkdir(mode=0o700, exist_ok=True)
            os.chmod(p, 0o700)

    def _seal(self, session_id: str, status: str, ended: float) -> RecordingInfo:
        """Hash, sign and mark a recording ``status``; build its sidecars."""
        info = self.get_exact(session_id)
        path = self.path(info)
        ended = round(ended, 6)
        try:
            sha, size = file_digest(path)
        except FileNotFoundError:
            log.error("recording %s has no file at %s", session_id, path)
            sha, size = "", 0
        signature = sign(self.signing_key, session_id, sha, size, ended) if self.signing_key and sha else ""
        self._db().table("recordings").update(session_id, {
            "ended": ended, "bytes": size, "sha256": sha, "signature": signature, "status": status,
        })
        if sha and self.sidecars_at_close == "now":
            self._build_sidecars(path)
        elif sha and self.sidecars_at_close == "background":
            # Files only, no database: safe off the thread that owns the connection.
            builder = threading.Thread(target=self._build_sidecars, args=(path,), name=f"sidecars-{session_id}",
                                       daemon=True)
            builder.start()
            self._builders = [b for b in self._builders if b.is_alive()] + [builder]
        return self.get_exact(session_id)

    def _build_sidecars(self, path: Path) -> None:
        """Sidecars are conveniences: failing to build one must not fail a close."""
        try:
            sidecars.build(path)
        except (RecorderError, OSError, ValueError) as e:
            log.warning("cannot build sidecars for %s: %s", path, e)

    def wait_for_sidecars(self, timeout: float | None = None) -> None:
        """Wait for sidecars being built in the background (at shutdown, or in tests)."""
        for builder in self._builders:
            builder.join(timeout)
        self._builders = [b for b in self._builders if b.is_alive()]

    def close(self, timeout: float = 10.0) -> None:
        """Stop the recorder worker, if there is one; call it once every recording is closed."""
        if self.recorder is not None:
            self.recorder.stop(timeout)

    def recover(self) -> list[str]:
        """Mark every recording left live by a crash interrupted, then hash and sign it as it stands.

        Call it once at start-up, before the first :meth:`open`: every live row is taken as orphaned.
        """
        recovered = []
        live = [r["session_id"] for r in self._db().query("select session_id from recordings where status = ?", [LIVE])]
        for session_id in live:
            info = self.get_exact(session_id)
            path = self.path(info)
            last = cut_and_mark(path, INTERRUPTED_MARKER) if path.exists() else None
            ended = info.started + (last or 0.0)
            self._seal(session_id, INTERRUPTED, ended)
            log.warning("recording %s was left live: marked interrupted", session_id)
            recovered.append(session_id)
        return recovered

    # -- reading ---------------------------------------------------------------

    def list(self, *, user: str | None = None, target: str | None = None, since: float | None = None,
             until: float | None = None, status: str | None = None) -> builtins.list[RecordingInfo]:
        """Recordings matching every filter given, newest first."""
        where, params = [], []
        for clause, value in (("user = ?", user), ("target = ?", target), ("started >= ?", since),
                              ("started <= ?", until), ("status = ?", status)):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = "select * from recordings" + (" where " + " and ".join(where) if where else "")
        return [_info(r) for r in self._db().query(sql + " order by started desc, session_id", params)]

    def get_exact(self, session_id: str) -> RecordingInfo:
        """The recording with exactly this session id."""
        rows = list(self._db().query("select * from recordings where session_id = ?", [session_id]))
        if not rows:
            raise NotFound(f"no recording {session_id!r}")
        return _info(rows[0])

    def get(self, id_or_prefix: str) -> RecordingInfo:
        """The recording whose id is, or uniquely starts with, ``id_or_prefix``."""
        if not id_or_prefix:
            raise NotFound("an empty id matches nothing")
        try:
            return self.get_exact(id_or_prefix)
        except NotFound:
            pass
        rows = list(self._db().query(
            "select * from recordings where substr(session_id, 1, ?) = ? order by started desc limit 11",
            [len(id_or_prefix), id_or_prefix]))
        if not rows:
            raise NotFound(f"no recording matches {id_or_prefix!r}")
        if len(rows) > 1:
            shown = ", ".join(r["session_id"] for r in rows[:10]) + (", …" if len(rows) > 10 else "")
            raise NotFound(f"{id_or_prefix!r} is ambiguous: it matches {shown}; give more characters")
        return _info(rows[0])

    def path(self, info: RecordingInfo) -> Path:
        """The cast file of a recording."""
        return self.root / info.path

    def verify(self, info: RecordingInfo) -> builtins.list[str]:
        """What is wrong with a recording's file, hash, size, signature or schema; [] when all is good."""
        if info.status == LIVE:
            return [STILL_LIVE]
        path = self.path(info)
        if not path.exists():
            return [f"file missing: {path}"]
        problems = []
        sha, size = file_digest(path)
        if size != info.bytes:
            problems.append(f"size mismatch: the index says {info.bytes} bytes, the file has {size}")
        if sha != info.sha256:
            problems.append(f"hash mismatch: the index says sha256 {info.sha256}, the file has {sha}")
        if not info.signature:
            problems.append("not signed")
        elif self.verify_key is None:
            problems.append("signature not checked: no audit public key")
        elif not signature_ok(self.verify_key, info.signature, info.session_id, info.sha256 or "",
                              info.bytes or 0, info.ended or 0.0):
            problems.append("bad signature: not made by the audit key over this index row")
        problems.extend(f"line {p.line}: {p.message}" for p in asciicast.validate(path))
        return problems

    def timeline(self, info: RecordingInfo) -> builtins.list[dict[str, Any]]:
        """The session's audit events, oldest first (none when there is no events table)."""
        if not self._db().table("events").exists():
            return []
        rows = self._db().query(
            "select id, ts, kind, user, source, target, session, rule, outcome, detail from events"
            " where session = ? order by ts, id", [info.session_id])
        return [{**r, "detail": _detail(r["detail"])} for r in rows]

    # -- retention ---------------------------------------------------------------

    def hold(self, id_or_prefix: str, reason: str) -> RecordingInfo:
        """Put a recording under legal hold: prune skips it until released."""
        if not reason.strip():
            raise RecorderError("a hold needs a reason")
        info = self.get(id_or_prefix)
        self._db().table("recordings").update(info.session_id, {"hold": 1, "hold_reason": reason})
        log.info("recording %s held: %s", info.session_id, reason)
        return self.get_exact(info.session_id)

    def release(self, id_or_prefix: str) -> RecordingInfo:
        """Lift a legal hold."""
        info = self.get(id_or_prefix)
        self._db().table("recordings").update(info.session_id, {"hold": 0, "hold_reason": None})
        log.info("recording %s released", info.session_id)
        return self.get_exact(info.session_id)

    def prune(self, older_than: float, now: float | None = None, *,
              dry_run: bool = False) -> builtins.list[RecordingInfo]:
        """Delete ended recordings older than ``older_than`` seconds, skipping holds and live ones.

        The index row stays, marked ``pruned`` with its hash and signature: what
        existed, and when it was deleted, remains provable.
        """
        moment = self._clock() if now is None else now
        cutoff = moment - older_than
        rows = self._db().query(
            "select * from recordings where status in (?, ?) and hold = 0 and ended is not null and ended < ?"
            " order by started", [CLOSED, INTERRUPTED, cutoff])
        doomed = [_info(r) for r in rows]
        if dry_run:
            return doomed
        for info in doomed:
            path = self.path(info)
            path.unlink(missing_ok=True)
            sidecars.remove(path)
            self._db().table("recordings").update(info.session_id, {"status": PRUNED, "pruned_at": moment})
            self._remove_empty_dirs(path.parent)
            log.info("pruned recording %s", info.session_id)
        return doomed

    def _remove_empty_dirs(self, directory: Path) -> None:
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:  # not empty (or gone): stop climbing
                return
            directory = directory.parent


def _info(row: dict[str, Any]) -> RecordingInfo:
    values: dict[str, Any] = {k: row.get(k) for k in _SCHEMA}
    return RecordingInfo(**values)


def _detail(text: str | None) -> Any:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {"raw": text}
