"""What ``nimrag up`` shows the person, and where the services' full logs go.

Each service's output goes, line by line, to its log file; the console gets only its log records at WARNING or
above (every line with ``verbose``), prefixed with the service's name. Library chatter written straight to
stderr (exporter warnings, progress bars) and access-log lines stay in the files. Lines are held back while
``hold()`` is on, so that an answer printed meanwhile is never interleaved with them.
"""

from __future__ import annotations

import contextlib
import re
import sys
import threading
from pathlib import Path
from typing import IO

import orjson

SHOWN_LEVELS = {"WARNING", "ERROR", "CRITICAL"}
COLOURS = {"embed": 34, "rerank": 35, "llm": 32, "pipeline": 36}
# nimrag.services.common.logs' text format: "2025-01-31 12:00:00,123 WARNING logger.name: message"
TEXT_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?P<level>[A-Z]+) ")


def record_level(line: str) -> str | None:
    """The level of a log record the services write (JSON or text), or None for any other line."""
    if line.startswith("{"):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            return None
        return record.get("level") if isinstance(record, dict) else None
    match = TEXT_RECORD.match(line)
    return match["level"] if match else None


def readable(line: str) -> str:
    """A line as a person reads it: a JSON record as its level, logger and message (and the exception's last
    line); any other line as it is."""
    if not line.startswith("{"):
        return line.strip()
    try:
        record = orjson.loads(line)
        text = f"{record['level']} {record['logger']}: {record['msg']}"
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return line.strip()
    exc = str(record.get("exc") or "").strip().splitlines()
    return f"{text} ({exc[-1]})" if exc else text


class Console:
    """The person's terminal (stderr): serialised lines, held back on request."""

    def __init__(self, stream: IO[str] | None = None, verbose: bool = False):
        self.stream = stream or sys.stderr
        self.verbose = verbose
        self.colour = self.stream.isatty()
        self._lock = threading.Lock()
        self._held: list[str] | None = None

    def service_line(self, name: str, line: str) -> None:
        if self.verbose or record_level(line) in SHOWN_LEVELS:
            prefix = f"\x1b[{COLOURS.get(name, 0)}m{name:>8}\x1b[0m" if self.colour else f"{name:>8}"
            self._write(f"{prefix} | {line}")

    def note(self, text: str) -> None:
        """A line of nimrag's own (a service ready, the platform ready)."""
        self._write(f"nimrag: {text}")

    def _write(self, text: str) -> None:
        with self._lock:
            if self._held is not None:
                self._held.append(text)
            else:
                self.stream.write(text + "\n")
                self.stream.flush()

    @contextlib.contextmanager
    def hold(self):
        """Keep service lines back while the block runs (the demo's answer), then show them."""
        with self._lock:
            self._held = []
        try:
            yield
        finally:
            with self._lock:
                held, self._held = self._held, None
                for text in held:
                    self.stream.write(text + "\n")
                self.stream.flush()


class ServiceLog:
    """One service's output: every line to its log file, some to the console; the last line kept for errors."""

    def __init__(self, name: str, path: Path, console: Console):
        self.name = name
        self.path = path
        self.console = console
        self._file = path.open("w", encoding="utf-8", errors="replace")
        self._last = ""
        self._thread: threading.Thread | None = None

    def follow(self, stream: IO[bytes]) -> None:
        self._thread = threading.Thread(target=self._relay, args=(stream,), name=f"log-{self.name}", daemon=True)
        self._thread.start()

    def _relay(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            self._file.write(line + "\n")
            self._file.flush()
            if line.strip():
                self._last = line  # rendered only when asked for (readable() parses JSON)
            self.console.service_line(self.name, line)

    def last_line(self, wait_s: float = 2.0) -> str:
        """The last non-empty line the service wrote (after its output has ended, if it does within ``wait_s``)."""
        if self._thread:
            self._thread.join(wait_s)
        return readable(self._last)

    def close(self) -> None:
        if self._thread:
            self._thread.join(5)
        if not (self._thread and self._thread.is_alive()):  # else a grandchild holds the pipe: leave it be
            self._file.close()
