"""Drain a guest's serial console into a log file and watch it for trouble.

QEMU writes the serial console to a pipe; if nobody reads it the pipe fills and the
guest stalls in its console driver, so a reader thread drains it from launch to exit.
Each line is appended to the per-VM log (flushed at once, so the path printed in a
failure is complete) and matched against the kernel's known failure strings, the way
syzkaller's vm/qemu and QEMU's tests/functional do: a panicking guest fails the run at
once with the excerpt instead of at the SSH timeout.
"""
from __future__ import annotations

import collections
import os
import re
import threading
import time
from pathlib import Path
from typing import BinaryIO

READY_MARKER = "KBOX_GUEST_READY"

# Known bad output. "Kernel panic" covers "Kernel panic - not syncing"; "---[ end trace"
# ends every WARN/BUG/Oops report, which is where the excerpt becomes complete.
CRASH_RE = re.compile(r"Kernel panic|\bBUG:|\bOops\b|---\[ end trace|\bWARNING: CPU:")
# How many lines before and after the first crash line make the excerpt.
_EXCERPT_BEFORE = 5
_EXCERPT_AFTER = 40
# After the first crash line, wait this long for the rest of the report before declaring
# the crash (panic output is written in one burst; 0.5 s is generous even under TCG).
CRASH_SETTLE_S = 0.5


class Console:
    """Reads `stream` on a daemon thread until EOF, teeing into `log_path`."""

    def __init__(self, stream: BinaryIO, log_path: Path, tail_lines: int = 200) -> None:
        self.log_path = log_path
        self._stream = stream
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._crash_lines: list[str] | None = None
        self._crash_at: float | None = None
        self._ready = False
        self._eof = False
        self._listeners: list[re.Pattern[str]] = []
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab", buffering=0)
        self._thread = threading.Thread(target=self._drain, name=f"console:{log_path.name}",
                                        daemon=True)
        self._thread.start()

    # -- reader thread ------------------------------------------------------------------
    def _drain(self) -> None:
        fd = self._stream.fileno()
        pending = b""
        try:
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                self._log.write(chunk)
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    self._line(raw.decode("utf-8", "replace").rstrip("\r"))
            if pending:
                self._line(pending.decode("utf-8", "replace").rstrip("\r"))
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()
            self._log.close()

    def _line(self, line: str) -> None:
        with self._cond:
            self._tail.append(line)
            if self._crash_lines is not None:
                if len(self._crash_lines) < _EXCERPT_BEFORE + _EXCERPT_AFTER:
                    self._crash_lines.append(line)
            elif CRASH_RE.search(line):
                self._crash_lines = list(self._tail)[-(_EXCERPT_BEFORE + 1):]
                self._crash_at = time.monotonic()
            if READY_MARKER in line:
                self._ready = True
            self._cond.notify_all()

    # -- queries --------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        with self._lock:
            return self._ready

    @property
    def eof(self) -> bool:
        with self._lock:
            return self._eof

    def crash_excerpt(self) -> str | None:
        """The crash report once it has settled (or the stream ended), else None."""
        with self._lock:
            if self._crash_lines is None or self._crash_at is None:
                return None
            if not self._eof and time.monotonic() - self._crash_at < CRASH_SETTLE_S:
                return None
            return "\n".join(self._crash_lines)

    def tail(self, n: int = 40) -> str:
        with self._lock:
            return "\n".join(list(self._tail)[-n:])

    def wait(self, timeout: float) -> None:
        """Sleep until new console output, EOF or `timeout` seconds, whichever is first."""
        with self._cond:
            if not self._eof:
                self._cond.wait(timeout)

    def close(self, timeout: float = 2.0) -> None:
        """Wait (bounded) for the reader to see EOF once QEMU has exited."""
        self._thread.join(timeout)
