"""One logging setup for every command.

Log records go to standard output: readable lines on a terminal (with colour), plain
``YYYY-MM-DD HH:MM:SS message`` lines when piped, or JSON lines (``--log-format json``) that
journald, Docker and Loki take as they are. Errors that end a command are not log records: they
are one line on standard error (``etl.console.error``). Every handler scrubs the passwords the
process knows of (:mod:`etl.redact`) from what it writes, the JSON fields included.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from etl import redact

FORMATS = ("auto", "rich", "plain", "json")
_STYLES = {logging.WARNING: "yellow", logging.ERROR: "red", logging.CRITICAL: "bold red"}
# Fields a caller may attach with ``extra={"fields": {...}}``; they become JSON keys.
FIELDS = "fields"


def _when(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.created))


def _prefix(record: logging.LogRecord) -> str:
    if record.levelno >= logging.ERROR:
        return "error: "
    if record.levelno >= logging.WARNING:
        return "warning: "
    return ""


class PlainHandler(logging.Handler):
    """``2026-11-30 10:00:05 message``, one line per record, printed literally."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = self.stream or sys.stdout
            stream.write(redact.scrub(f"{_when(record)} {_prefix(record)}{record.getMessage()}\n"))
            stream.flush()
        except Exception:  # a log line must never take the process down
            self.handleError(record)


class RichHandler(logging.Handler):
    """The same lines on a terminal, coloured by level, through the shared rich console (so they
    appear above a live table instead of tearing it)."""

    def emit(self, record: logging.LogRecord) -> None:
        from rich.text import Text

        from etl.console import console

        try:
            line = Text(redact.scrub(f"{_when(record)} {_prefix(record)}{record.getMessage()}"))
            line.stylize(_STYLES.get(record.levelno, ""))
            console.print(line, soft_wrap=True, markup=False, highlight=False)
        except Exception:
            self.handleError(record)


class JsonHandler(logging.Handler):
    """One JSON object per line: ``time`` (ISO 8601 UTC), ``level``, ``logger``, ``message``,
    and any ``fields`` the caller attached."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            ms = int(record.created * 1000) % 1000
            out = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                + f".{ms:03d}Z",
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
                **getattr(record, FIELDS, {}),
            }
            stream = self.stream or sys.stdout
            # After dumping: JSON escapes a password (quotes, non-ASCII), and redact knows
            # those spellings too.
            stream.write(redact.scrub(json.dumps(out, default=str)) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def resolve(fmt: str) -> str:
    """``auto`` is ``rich`` on a terminal and ``plain`` otherwise."""
    if fmt == "auto":
        return "rich" if sys.stdout.isatty() else "plain"
    return fmt


_active = "auto"


def active() -> str:
    """The format :func:`setup` chose last (``auto`` before it ran)."""
    return _active


def setup(fmt: str = "auto", level: int = logging.INFO) -> str:
    """Route every ``etl.*`` logger to one handler of the chosen format; returns the format."""
    global _active
    chosen = _active = resolve(fmt)
    handler: logging.Handler = {"rich": RichHandler, "plain": PlainHandler, "json": JsonHandler}[
        chosen
    ]()
    root = logging.getLogger("etl")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    return chosen


def rotate(path: Path, max_bytes: int, keep: int) -> bool:
    """Once ``path`` holds ``max_bytes`` or more, shift it to ``path.1`` (``path.1`` to
    ``path.2``, ... the oldest beyond ``keep`` is dropped). True if it rotated."""
    try:
        if path.stat().st_size < max_bytes:
            return False
    except FileNotFoundError:
        return False
    for k in range(keep, 0, -1):
        older = path.with_name(f"{path.name}.{k}")
        newer = path.with_name(f"{path.name}.{k - 1}") if k > 1 else path
        with contextlib.suppress(FileNotFoundError):
            newer.replace(older)
    return True
