"""The tap between a session channel and its recording, with echo-off redaction.

A terminal application shows what you type by echoing it. When it stops
echoing (a password prompt), the keystrokes are secret. The tap cannot read
the application's terminal modes (they live in the application, or on a
remote host), so it watches for the echo itself: printable keystrokes are held
until the output shows them, and written as typed; keystrokes still unechoed
after the echo window are written as :data:`~recorders.asciicast.REDACTED`.
Control keys (Enter, Ctrl-C, arrows) are never secret and are written at once.

Errs towards privacy: type-ahead that a busy application echoes only after the
window is redacted too.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from .castlines import EventWriter

ECHO_WINDOW = 0.5  # seconds a keystroke waits for its echo
_ANSI = re.compile(rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_SEEN_LIMIT = 8192  # visible output kept while keystrokes wait for their echo


def _printable(data: bytes) -> str:
    text = _ANSI.sub(b"", data).decode("utf-8", "replace")
    return "".join(ch for ch in text if ch.isprintable())


@dataclass
class _Pending:
    data: bytes
    text: str
    since: float


class SessionTap:
    """Feeds one session's output, keystrokes, resizes and markers into a writer."""

    def __init__(self, writer: EventWriter, *, redact_echo_off: bool = True, onlcr: bool = False,
                 clock: Callable[[], float] = time.monotonic, echo_window: float = ECHO_WINDOW) -> None:
        self.writer = writer
        # Without a PTY the user's own terminal turned "\n" into "\r\n"; record what they saw.
        # The writer translates, where it encodes: off the daemon's event loop with the recorder worker.
        self._onlcr = onlcr
        self.redact_echo_off = redact_echo_off
        self._clock = clock
        self._window = echo_window
        self._pending: list[_Pending] = []
        self._seen = ""  # visible output since the oldest pending keystroke
        self._redacting = False  # the last event written was a redaction: merge the next into it

    def output(self, data: bytes) -> None:
        """What the user saw."""
        if self._pending:
            self._seen = (self._seen + _printable(data))[-_SEEN_LIMIT:]
            self._drain(force=False)
        self._redacting = False
        self.writer.output(data, onlcr=self._onlcr)

    def input(self, data: bytes) -> None:
        """What the user typed."""
        if not self.redact_echo_off:
            self._write_input(data)
            return
        text = _printable(data)
        if not text and not self._pending:
            self._write_input(data)  # a control key with nothing held before it
            return
        if not self._pending:
            self._seen = ""
        # Control keys queue behind held keystrokes so that the recording keeps their order.
        self._pending.append(_Pending(data, text, self._clock()))

    def resize(self, cols: int, rows: int) -> None:
        """The user's terminal changed size."""
        self._redacting = False
        self.writer.resize(cols, rows)

    def marker(self, label: str) -> None:
        """A moment worth finding again; written (and flushed) at once."""
        self._drain(force=False)
        self._redacting = False
        self.writer.marker(label)

    def tick(self) -> None:
        """Redact keystrokes whose echo window has passed; call this periodically."""
        self._drain(force=False)

    def close(self) -> None:
        """Settle every held keystroke and close the writer."""
        self._drain(force=True)
        self.writer.close()

    def _drain(self, *, force: bool) -> None:
        now = self._clock()
        while self._pending:
            head = self._pending[0]
            if not head.text:
                self._write_input(head.data)
            elif head.text in self._seen:
                self._seen = self._seen[self._seen.index(head.text) + len(head.text):]
                self._write_input(head.data)
            elif force or now - head.since >= self._window:
                if not self._redacting:  # one marker for a run: never the secret's length
                    self.writer.input_redacted()
                    self._redacting = True
            else:
                return
            self._pending.pop(0)

    def _write_input(self, data: bytes) -> None:
        self._redacting = False
        self.writer.input(data)
