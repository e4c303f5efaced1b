"""The staging file itself: its connection (one for writes, one per reader thread), transactions,
storage errors as the program's own, checkpoints and integrity checks.

Everything goes through ADBC, never stdlib ``sqlite3``: mixing the two on one file in one process
gives disk I/O errors.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from etl.drivers import sqlite as adbc_sqlite
from etl.errors import (
    ConfigError,
    DependencyError,
    DiskFull,
    NothingStaged,
    StagingCorrupt,
)
from etl.staging.lock import refuse_extra_names, refuse_network_fs

_CORRUPT = ("malformed", "not a database", "file is encrypted")


class StagingDb:
    """One SQLite file in WAL mode. Thread-safe: one connection for writes, one per reader thread.

    ``create=False`` refuses a file that does not exist (:class:`NothingStaged`), so looking
    never creates state.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        create: bool = True,
        read_only: bool = False,
    ) -> None:
        """``read_only``: open an existing file without changing a byte of it (no WAL switch),
        e.g. a backup's copy."""
        self.path = Path(path)
        self.read_only = read_only
        self._lock = threading.RLock()
        if not create and not self.path.exists():
            raise NothingStaged(f"nothing staged in {self.path}: no staging file there")
        if not read_only:  # what would lose commits is refused before the file is opened
            refuse_network_fs(self.path)
            refuse_extra_names(self.path)
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = self.connect()
        except (OSError, adbc_sqlite.Error) as exc:
            reason = getattr(exc, "strerror", None) or _first_line(exc)
            raise ConfigError(
                f"cannot open the staging database {self.path} ({reason}): "
                "set ETL_DATA_DIR or ETL_SQLITE_PATH to a writable place"
            ) from None
        if read_only:
            return
        with self.cursor() as cur:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.fetchall()
            cur.execute(f"PRAGMA synchronous={synchronous}")

    def connect(self) -> adbc_sqlite.Connection:
        # autocommit: an ADBC read otherwise leaves a transaction (and a stale WAL snapshot) open.
        target = f"file:{self.path}?mode=ro" if self.read_only else str(self.path)
        conn = adbc_sqlite.connect(target, autocommit=True)
        with conn.cursor() as cur:
            cur.execute("PRAGMA busy_timeout=10000")
        return conn

    def reader(self) -> adbc_sqlite.Connection:
        """A read connection of its own (autocommit: no snapshot held between reads), for a
        thread that must never wait on, or hold up, the writer."""
        return self.connect()

    def mapped(self, exc: Exception) -> Exception | None:
        """A storage error as one of ours: disk full (exit 3), a malformed file (exit 2)."""
        text = str(exc).lower()
        full = "database or disk is full" in text or "no space left" in text
        if full or ("i/o error" in text and _free_bytes(self.path) < 1 << 20):
            return DiskFull(
                f"disk full: {self.path} (free some space; nothing already stored is lost)"
            )
        if "i/o error" in text:
            return DependencyError(
                f"I/O error on {self.path} ({_first_line(exc)}): check the disk and its permissions"
            )
        if any(marker in text for marker in _CORRUPT):
            return StagingCorrupt(
                f"the staging file {self.path} is malformed ({_first_line(exc)}): stop the "
                f"collector, then recover it with `sqlite3 {self.path} .recover | sqlite3 "
                f"{self.path}.recovered` and move the .recovered file into its place (rows keep "
                "their seq, so the rollup's ledger stays valid)"
            )
        return None

    @contextmanager
    def cursor(self, conn: adbc_sqlite.Connection | None = None) -> Iterator[adbc_sqlite.Cursor]:
        """A cursor on this file's connection (one thread at a time), or on ``conn`` (a
        :meth:`reader` of another thread's own, which needs no lock)."""
        with (
            self._lock if conn is None else contextlib.nullcontext(),
            (conn or self._conn).cursor() as cur,
        ):
            try:
                yield cur
            except adbc_sqlite.Error as exc:
                mapped = self.mapped(exc)
                if mapped is None:
                    raise
                raise mapped from None

    @contextmanager
    def transaction(self) -> Iterator[adbc_sqlite.Cursor]:
        """One write transaction: committed on success, rolled back on any error."""
        with self.cursor() as cur:
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT (disk full): the connection must not stay inside a
                # transaction, or every later write on it would fail too.
                with contextlib.suppress(adbc_sqlite.Error):
                    cur.execute("ROLLBACK")
                raise

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self.cursor() as cur:
            cur.execute(sql, params)
            row = cur.fetchone()
        return row[0] if row else None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def checkpoint(self, *, truncate: bool = True) -> bool:
        """Fold the WAL into the file without blocking writers (a passive checkpoint); then,
        if nothing is left in it and ``truncate``, shrink it to zero, without waiting for anyone
        (a writer or a reader in the way makes that a no-op until next time). True if the WAL
        was fully folded in."""
        with self.cursor() as cur:
            cur.execute("PRAGMA wal_checkpoint(PASSIVE)")
            busy, log, folded = (int(v) for v in cur.fetchone())
            if not truncate or busy or log != folded:
                return not busy and log == folded
            cur.execute("PRAGMA busy_timeout=0")
            try:
                cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                busy = int(cur.fetchone()[0])
            finally:
                cur.execute("PRAGMA busy_timeout=10000")
        return busy == 0

    def quick_check(self) -> str:
        """``PRAGMA quick_check``: ``ok``, or the first problem found."""
        with self.cursor() as cur:
            cur.execute("PRAGMA quick_check(1)")
            return str(cur.fetchone()[0])

    def integrity_check(self) -> str:
        with self.cursor() as cur:
            cur.execute("PRAGMA integrity_check")
            return str(cur.fetchone()[0])

    def file_sizes(self) -> dict[str, int]:
        """Bytes on disk: the file, its WAL and its shared-memory index."""
        out = {}
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                out[self.path.name + suffix] = (
                    (self.path.parent / (self.path.name + suffix)).stat().st_size
                )
        return out


def _free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(path.parent).free
    except OSError:
        return 1 << 40


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
