"""The audit trail: one JSON object per line for every token decision, apart from server logs."""

from __future__ import annotations

import datetime as dt
import os
import sys
import threading
import time
from typing import Any

from gateway.jsontext import ascii_json

REOPEN_CHECK = 1.0  # seconds between looks for a rotated-away audit file


class AuditLog:
    """Writes audit records to standard output (`-`) or a file (reopened after rotation).

    Not through `logging`: the token endpoint writes a line per request, and the logging
    machinery (records, handler locks, formatters) cost more than the rest of a cached answer.
    A file is opened with O_APPEND and every line goes out in one write(2), so several worker
    processes can share it without tearing lines. After logrotate moves the file away, the
    next write within `REOPEN_CHECK` seconds opens a new one at the configured path (what
    `WatchedFileHandler` did, without a stat per line).
    """

    def __init__(self, target: str = "-") -> None:
        self.target = target
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._checked = 0.0
        if target != "-":
            self._open()

    def _open(self) -> None:
        fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        stat = os.fstat(fd)
        self._fd, self._identity = fd, (stat.st_dev, stat.st_ino)
        self._checked = time.monotonic()

    def _reopen_if_moved(self) -> None:
        now = time.monotonic()
        if now - self._checked < REOPEN_CHECK:
            return
        self._checked = now
        try:
            stat = os.stat(self.target)
            if (stat.st_dev, stat.st_ino) == self._identity:
                return
        except FileNotFoundError:
            pass
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._open()

    def write(self, record: dict[str, Any]) -> None:
        record = {"time": now_iso(), "log": "audit", **record}
        self.write_line(ascii_json(record))

    def write_line(self, line: str) -> None:
        """Append one already-serialised JSON record (no newline)."""
        if self.target == "-":
            out = sys.stdout
            with self._lock:
                out.write(line + "\n")
                out.flush()
            return
        data = (line + "\n").encode()
        with self._lock:
            if self._fd is None:
                return  # closed: the server is stopping
            self._reopen_if_moved()
            os.write(self._fd, data)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


_second: list[Any] = [-1, ""]  # the last whole second formatted, and its text


def now_iso() -> str:
    """The time now in UTC, RFC 3339 with milliseconds: `2026-11-27T13:22:38.123Z`."""
    now = time.time()
    second = int(now)
    if second != _second[0]:  # one strftime per second, not per line
        text = dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second[0], _second[1] = second, text
    return f"{_second[1]}.{int((now - second) * 1000):03d}Z"
