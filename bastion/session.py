"""What an SSH session channel becomes: the interactive shell, or one command (exec).

Every byte to the user goes through :meth:`BastionSession.send`, and every byte
from the user arrives in :meth:`BastionSession.data_received`: the one place a
recording tap attaches.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import shlex
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol, cast

import asyncssh
from prompt_toolkit.application.current import AppSession, create_app_session
from prompt_toolkit.data_structures import Size
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output.vt100 import Vt100_Output

from recorders.asciicast import Header
from recorders.errors import RecorderError
from recorders.store import Recording
from recorders.tap import SessionTap
from shell import commands
from shell.app import interact
from shell.commands import EXIT_ERROR, EXIT_USAGE, Result

from .errors import BastionError
from .proxies.ssh import Terminal
from .session_context import SessionContext
from .transfer import GatewayContext
from .transfer_channel import TransferChannel, connector_opener, is_scp

if TYPE_CHECKING:
    from .server import ConnectionHandler

log = logging.getLogger(__name__)

MAX_EXEC_COMMAND = 4096
MAX_STDIN = 16 * 1024 * 1024  # SQL for one-shot commands; more is refused, not truncated
EXIT_ENDED_BY_BASTION = 255  # what OpenSSH itself returns when a connection fails


class InputSink(Protocol):
    """Where the user's input goes while :meth:`BastionSession.divert_input` holds it (an SSH relay)."""

    def data(self, data: bytes) -> None: ...

    def eof(self) -> None: ...

    def resize(self, columns: int, rows: int) -> None: ...


class _ChannelWriter:
    """The file-like object Vt100_Output writes to: text in, CRLF-translated UTF-8 to the channel."""

    def __init__(self, session: BastionSession) -> None:
        self._session = session

    def write(self, data: str) -> int:
        self._session.send(data.replace("\n", "\r\n").encode("utf-8", "replace"))
        return len(data)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True

    @property
    def encoding(self) -> str:
        return "utf-8"


class BastionSession(asyncssh.SSHServerSession):  # type: ignore[misc]
    """One session channel of an authenticated connection."""

    def __init__(self, handler: ConnectionHandler) -> None:
        assert handler.auth is not None
        self.handler = handler
        self.runtime = handler.runtime
        self.auth = handler.auth
        self.session_id = secrets.token_hex(8)
        self.chan: asyncssh.SSHServerChannel[bytes] | None = None
        self.command: str | None = None
        self.task: asyncio.Task[None] | None = None
        self._input: PipeInput | None = None
        self._sink: InputSink | None = None  # while set, input goes there instead of the shell or stdin
        self._app_session: AppSession | None = None
        self._counted = False
        self.recording: Recording | None = None
        self.tap: SessionTap | None = None
        self.unrecordable: str | None = None  # why the recording failed: nothing more is shown or run
        self._stdin = bytearray()
        self._stdin_closed = asyncio.Event()
        self.transfer: TransferChannel | None = None  # the sftp subsystem or an scp command: the file gateway
        self.transfer_root: str | None = None  # a target whose / is the client's / there (ssh -J); None: all

    # -- asyncssh callbacks ----------------------------------------------------

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self.chan = chan

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Any) -> bool:
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        if len(command) > MAX_EXEC_COMMAND:
            return False
        self.command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        return subsystem == "sftp"  # served by the file-transfer gateway (bastion/transfer.py)

    def session_started(self) -> None:
        assert self.chan is not None
        user = self.auth.identity.user
        if not self.runtime.open_session(user):
            limit = self.runtime.config.limits.sessions_per_user
            self._finish(f"bastion: {user} already has {limit} open sessions; close one first.\r\n", 1)
            return
        self._counted = True
        self.handler.session_listeners.add(self.end)
        sftp, scp = self.chan.get_subsystem() == "sftp", is_scp(self.command)
        mode = "sftp" if sftp else "scp" if scp else "exec" if self.command is not None else "shell"
        try:
            self._start_recording(mode)
        except (RecorderError, OSError) as e:
            # Every session is recorded: one that cannot be is refused, not run unseen.
            log.error("cannot record session %s: %s", self.session_id, e)
            self.runtime.store.append("session.refused", user=user, source=self.handler.peer,
                                      session=self.session_id, outcome="deny", reason=f"recording failed: {e}")
            self._finish("bastion: this session cannot be recorded, so it is refused; "
                         "the bastion's log has the details.\r\n", 1)
            return
        self.runtime.store.append("session.started", user=user, source=self.handler.peer,
                                  session=self.session_id, connection=self.handler.conn_id, mode=mode)
        if sftp or scp:
            self._start_transfer()
            return
        runner = self._run_exec() if self.command is not None else self._run_shell()
        self.task = asyncio.get_running_loop().create_task(runner)

    def data_received(self, data: bytes, datatype: Any) -> None:
        if self.transfer is not None:  # SFTP/SCP protocol bytes: each transfer is marked, not the bytes
            self.transfer.data_received(data, datatype)
            return
        if self.tap is not None:
            try:
                self.tap.input(data)
            except (RecorderError, OSError) as e:
                self._recording_failed(str(e))
                return  # an unrecorded keystroke goes nowhere
        if self._sink is not None:
            self._sink.data(data)
        elif self._input is not None:
            self._input.send_bytes(data)
        elif self.command is not None and len(self._stdin) <= MAX_STDIN:
            self._stdin += data

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self.tap is not None:
            with contextlib.suppress(RecorderError, OSError):  # a failure ends the session (on_failure)
                self.tap.resize(width, height)
        if self._sink is not None:
            self._sink.resize(width, height)
        elif self._app_session is not None and self._app_session.app is not None:
            self._app_session.app._on_resize()

    def eof_received(self) -> bool:
        self._stdin_closed.set()
        if self.transfer is not None:
            return self.transfer.eof_received()
        if self._sink is not None:
            self._sink.eof()
        elif self._input is not None:
            self._input.send_text("\x04")  # like Ctrl-D at the prompt
        return True

    def pause_writing(self) -> None:
        if self.transfer is not None:
            self.transfer.pause_writing()

    def resume_writing(self) -> None:
        if self.transfer is not None:
            self.transfer.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transfer is not None:
            self.transfer.connection_lost(exc)
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.handler.session_listeners.discard(self.end)
        if self._counted:
            self.runtime.close_session(self.auth.identity.user)
            self.runtime.store.append("session.ended", user=self.auth.identity.user,
                                      source=self.handler.peer, session=self.session_id)
        if self.tap is not None and self.recording is not None:
            with contextlib.suppress(RecorderError, OSError):  # sealed as interrupted, with the reason
                self.tap.marker("session ended")
            self.runtime.taps.discard(self.tap)
            self.runtime.background(self._close_recording(self.tap, self.recording),
                                    f"closing recording {self.session_id}")
            self.tap = None

    # -- output ------------------------------------------------------------------

    def send(self, data: bytes, *, stderr: bool = False) -> None:
        """Write to the user. The single exit point for session output."""
        if self.chan is None or self.chan.is_closing():
            return
        if self.tap is not None:
            try:
                self.tap.output(data)
            except (RecorderError, OSError) as e:
                self._recording_failed(str(e))
                return  # fail closed: what cannot be recorded is not shown
        try:
            self.chan.write(data, asyncssh.EXTENDED_DATA_STDERR if stderr else None)
        except (asyncssh.Error, OSError, BrokenPipeError):
            pass  # the channel went away; connection_lost will clean up

    def backlog(self) -> int:
        """Bytes written to the user that their client has not taken yet."""
        return 0 if self.chan is None else int(self.chan.get_write_buffer_size())

    def pause_input(self, paused: bool) -> None:
        """Stop (or resume) reading from the user, while what they send cannot be passed on fast enough."""
        if self.chan is not None and not self.chan.is_closing():
            if paused:
                self.chan.pause_reading()
            else:
                self.chan.resume_reading()

    @contextlib.contextmanager
    def divert_input(self, sink: InputSink) -> Iterator[None]:
        """While the block runs, keystrokes (or stdin), EOF and window changes go to ``sink``, not the shell.

        Still recorded on the way, as every input is. In a one-shot command, the
        stdin that arrived before goes first, and an EOF already seen is passed on.
        """
        assert self._sink is None, "input is already diverted"
        self._sink = sink
        try:
            if self.command is not None:
                if self._stdin:
                    sink.data(bytes(self._stdin))
                    self._stdin.clear()
                if self._stdin_closed.is_set():
                    sink.eof()
            yield
        finally:
            self._sink = None
            self.pause_input(False)

    def terminal(self) -> Terminal | None:
        """The user's terminal, when the session has one."""
        chan = self.chan
        term = None if chan is None else chan.get_terminal_type()
        if chan is None or term is None:
            return None
        columns, rows = self.size_pair()
        return Terminal(term, columns, rows, dict(chan.get_terminal_modes()))

    def mark(self, label: str) -> None:
        """Put a marker in this session's recording."""
        if self.tap is not None:
            try:
                self.tap.marker(label)
            except (RecorderError, OSError) as e:
                self._recording_failed(str(e))

    def end(self, message: str) -> None:
        """End this session from the bastion's side, telling the user why; a forced end is an audit event."""
        self.runtime.store.append("session.cut", user=self.auth.identity.user, source=self.handler.peer,
                                  session=self.session_id, outcome="ended", reason=message)
        self.mark(f"session ending: {message}")
        if self.transfer is not None:  # stdout carries SFTP/SCP packets: the reason goes to stderr
            self.send(f"bastion: {message}\r\n".encode(), stderr=True)
        else:
            self.send(f"\r\n\x1b[1mbastion: {message}\x1b[0m\r\n".encode())
        self._finish("", EXIT_ENDED_BY_BASTION)

    def _finish(self, message: str, status: int) -> None:
        if message:
            self.send(message.encode(), stderr=True)
        if self.chan is not None and not self.chan.is_closing():
            self.chan.exit(status)

    # -- recording ---------------------------------------------------------------

    def _start_recording(self, mode: str) -> None:
        assert self.chan is not None and self.runtime.recordings is not None
        settings = self.runtime.config.recording
        user = self.auth.identity.user
        width, height, _, _ = self.chan.get_terminal_size()
        term = self.chan.get_terminal_type()
        header = Header(
            width=width or 80, height=height or 24, timestamp=int(self.runtime.clock()),
            idle_time_limit=settings.idle_time_limit, command=self.command,
            title=f"{user}@{self.runtime.config.host_names[0]} ({mode})",
            env={"TERM": term, "SHELL": "bastion"} if term else {"SHELL": "bastion"})
        self.recording = self.runtime.recordings.open(self.session_id, user=user, target=None, header=header)
        self.tap = SessionTap(self.recording.writer, redact_echo_off=settings.redact_echo_off,
                              onlcr=term is None)
        loop = asyncio.get_running_loop()

        def failed(reason: str) -> None:  # told from the recorder's reader thread: hop onto the loop
            loop.call_soon_threadsafe(self._recording_failed, reason)

        self.recording.writer.on_failure = failed
        self.runtime.taps.add(self.tap)
        self.tap.marker(f"session started: {user} ({', '.join(sorted(self.auth.identity.groups)) or '-'}) "
                        f"from {self.handler.peer}")

    def _start_transfer(self) -> None:
        """Hand this channel to the SFTP/scp gateway, which reaches each target with the SSH proxy's login."""
        assert self.chan is not None
        user, peer = self.auth.identity, self.handler.peer
        opener = connector_opener(self.runtime, user, self.session_id, peer, self.mark)
        self.transfer = TransferChannel(GatewayContext(
            self.runtime, user, self.session_id, peer, self.mark,
            lambda line: self.send(f"{line}\n".encode(), stderr=True), opener, root=self.transfer_root))
        self.transfer.start(self.chan)

    def _recording_failed(self, reason: str) -> None:
        """Fail closed: a session that can no longer be recorded ends now, telling the user why."""
        if self.unrecordable is not None:
            return
        self.unrecordable = reason
        log.error("session %s can no longer be recorded: %s", self.session_id, reason)
        self.runtime.store.append("recording.failed", user=self.auth.identity.user, source=self.handler.peer,
                                  session=self.session_id, outcome="ended", reason=f"recording failed: {reason}")
        if self.task is not None and not self.task.done():
            self.task.cancel()  # nothing more runs unseen: the shell or command stops here
        if self.chan is not None and not self.chan.is_closing():
            try:  # straight to the channel: send() would try to record it
                self.chan.write(b"\r\nbastion: this session can no longer be recorded, so it has ended; "
                                b"the bastion's log has the details.\r\n", asyncssh.EXTENDED_DATA_STDERR)
                self.chan.exit(EXIT_ENDED_BY_BASTION)
            except (asyncssh.Error, OSError):
                pass  # the channel went away; connection_lost will clean up

    async def _close_recording(self, tap: SessionTap, recording: Recording) -> None:
        # Hashing and signing read the whole file: off the event loop.
        info = await asyncio.to_thread(_close, tap, recording)
        self.runtime.store.append("recording.closed", user=self.auth.identity.user, session=self.session_id,
                                  sha256=info.sha256, bytes=info.bytes, status=info.status)

    # -- the two modes -------------------------------------------------------------

    async def _run_shell(self) -> None:
        assert self.chan is not None
        if self.chan.get_terminal_type() is None:
            self._finish("bastion: the shell needs a terminal. Use `ssh -t`, or run one command, "
                         "for example `ssh bastion targets --json`.\r\n", EXIT_USAGE)
            return
        ctx = SessionContext(self)
        self.runtime.notice_boards.add(ctx.post_notice)
        # Cursor-position reports let prompt_toolkit size the toolbar; a client that cannot
        # answer them (a test harness, some serial consoles) says so with PROMPT_TOOLKIT_NO_CPR=1.
        enable_cpr = self.chan.get_environment().get("PROMPT_TOOLKIT_NO_CPR") != "1"
        output = Vt100_Output(cast(Any, _ChannelWriter(self)), self._size,
                              term=self.chan.get_terminal_type(), enable_cpr=enable_cpr)
        status = 0
        try:
            with create_pipe_input() as pipe, create_app_session(input=pipe, output=output) as app_session:
                self._input, self._app_session = pipe, app_session
                await interact(ctx, self._history(), ctx.record)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug in the shell ends this one session, with a log line; the daemon stays up.
            log.exception("shell session %s failed", self.session_id)
            status = 1
        finally:
            self._input = None
            self.runtime.notice_boards.discard(ctx.post_notice)
        self._finish("", status)

    async def _run_exec(self) -> None:
        assert self.command is not None
        ctx = SessionContext(self)
        try:
            result = await commands.run_line(ctx, self.command)
        except BastionError as e:
            result = Result(EXIT_ERROR, error=str(e))
        except Exception:
            # A bug ends this one command with a clear error; the daemon and other sessions carry on.
            log.exception("command %r failed in session %s", self.command[:80], self.session_id)
            result = Result(EXIT_ERROR, error="internal error in the bastion; its log has the details")
        if result is None:
            result = Result(EXIT_USAGE, error="no command given; try `help`")
        ctx.record(self.command, result)
        if result.data is not None and self._wants_json():
            self.send((json.dumps(result.data, indent=2, sort_keys=True) + "\n").encode())
        elif result.text:
            self.send(result.text.encode())
        self._finish(f"{result.error}\n" if result.error else "", result.code)

    def _wants_json(self) -> bool:
        assert self.command is not None
        try:
            return "--json" in shlex.split(self.command)
        except ValueError:
            return False

    def _size(self) -> Size:
        assert self.chan is not None
        width, height, _, _ = self.chan.get_terminal_size()
        return Size(rows=height or 24, columns=width or 80)

    async def stdin_text(self) -> str:
        """What the client sent on stdin, once it closed it (one-shot commands only)."""
        await self._stdin_closed.wait()
        if len(self._stdin) > MAX_STDIN:
            raise BastionError(f"stdin is larger than {MAX_STDIN // (1024 * 1024)} MiB")
        return self._stdin.decode("utf-8", "replace")

    def size_pair(self) -> tuple[int, int]:
        """(columns, rows) of the user's terminal."""
        size = self._size()
        return size.columns, size.rows

    def _history(self) -> History:
        return self.history(f"{self.auth.identity.user}.shell")

    def history(self, name: str) -> History:
        """A history file of this user's, kept on the bastion."""
        directory = self.runtime.config.state_dir / "history"
        try:
            directory.mkdir(mode=0o700, exist_ok=True)
            return FileHistory(str(directory / name))
        except OSError as e:
            log.warning("history unavailable for %s: %s", self.auth.identity.user, e)
            return InMemoryHistory()


def _close(tap: SessionTap, recording: Recording) -> Any:
    try:
        tap.close()
    except (RecorderError, OSError) as e:  # the recording failed: close() seals it as interrupted
        log.debug("recording %s: cannot settle the tap: %s", recording.session_id, e)
    return recording.close()
