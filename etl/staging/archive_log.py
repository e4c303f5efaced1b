"""What the staging file knows of its archive: which hours are archived, in which files (rows,
bytes, first and last times and ids, sha256), and, per rolled-up hour, what its bars took from
outside its ticks (the poll interval; per symbol, the trade context of
:func:`etl.bars.trade_context`), which the archive must carry so a rebuilt bar is the bar the
rollup made.

The tables are made with their first use, so a file that never rolled up stays as it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from etl.imports import deferred
from etl.staging.db import StagingDb

if TYPE_CHECKING:
    import polars as pl
else:  # imported at the first frame made: a rollup with nothing to do makes none
    pl = deferred("polars")

_DDL = (
    # Each hour archived: its ledger max_seq, what went out, and where its manifest is.
    "CREATE TABLE IF NOT EXISTS archive_hours (hour_ms INTEGER PRIMARY KEY,"
    " max_seq INTEGER NOT NULL, rows INTEGER NOT NULL, files INTEGER NOT NULL,"
    " bytes INTEGER NOT NULL, manifest TEXT NOT NULL, archived_ms INTEGER NOT NULL) STRICT",
    # Each archived file (one per source with rows in the hour).
    "CREATE TABLE IF NOT EXISTS archive_files (hour_ms INTEGER NOT NULL, source TEXT NOT NULL,"
    " path TEXT NOT NULL, rows INTEGER NOT NULL, bytes INTEGER NOT NULL, sha256 TEXT NOT NULL,"
    " min_ts INTEGER, max_ts INTEGER, min_seq INTEGER, max_seq INTEGER, min_id INTEGER,"
    " max_id INTEGER, PRIMARY KEY (hour_ms, source)) STRICT",
    # Per rolled-up hour, the poll interval its poll bars were measured against.
    "CREATE TABLE IF NOT EXISTS bar_context (hour_ms INTEGER PRIMARY KEY,"
    " interval_s REAL NOT NULL) STRICT",
    # Per rolled-up (hour, symbol) of trades: etl.bars.trade_context's columns.
    "CREATE TABLE IF NOT EXISTS trade_context (hour_ms INTEGER NOT NULL, sym INTEGER NOT NULL,"
    " gaps INTEGER NOT NULL, edges INTEGER NOT NULL, holed INTEGER NOT NULL,"
    " PRIMARY KEY (hour_ms, sym)) STRICT",
)

FILE_COLUMNS = (
    "source",
    "path",
    "rows",
    "bytes",
    "sha256",
    "min_ts",
    "max_ts",
    "min_seq",
    "max_seq",
    "min_id",
    "max_id",
)


class ArchiveLog:
    """The ``archive_hours``, ``archive_files``, ``bar_context`` and ``trade_context`` tables of
    one staging file."""

    def __init__(self, db: StagingDb) -> None:
        self.db = db
        self._made = False

    def _tables(self) -> bool:
        """Whether the tables exist (without making them)."""
        if not self._made:
            self._made = (
                self.db.scalar("SELECT count(*) FROM sqlite_master WHERE name = 'archive_hours'")
                == 1
            )
        return self._made

    def _make(self, cur: Any) -> None:
        if not self._tables():
            for ddl in _DDL:
                cur.execute(ddl)

    # -- at rollup: what the bars took from outside the ticks ---------------------------------

    def keep_context(self, intervals: dict[int, float], trades: pl.DataFrame | None) -> None:
        """Keep, for the hours just rolled up, the poll interval of each (``hour_ms ->
        interval_s``) and the trade context (``sym, bucket_ms, gaps, edges, holed``), replacing
        what an earlier rollup of the same hours kept. One transaction."""
        with self.db.transaction() as cur:
            self._make(cur)
            for hour, interval in intervals.items():
                cur.execute(
                    "INSERT OR REPLACE INTO bar_context (hour_ms, interval_s) VALUES (?, ?)",
                    (int(hour), float(interval)),
                )
            if trades is not None and trades.height:
                table = trades.select(
                    hour_ms="bucket_ms", sym="sym", gaps="gaps", edges="edges", holed="holed"
                ).to_arrow()
                cur.adbc_ingest("context_batch", table, mode="replace", temporary=True)
                cur.execute(
                    "INSERT OR REPLACE INTO trade_context (hour_ms, sym, gaps, edges, holed) "
                    "SELECT hour_ms, sym, gaps, edges, holed FROM temp.context_batch"
                )
        self._made = True

    def context(self, hour: int) -> tuple[float | None, pl.DataFrame]:
        """The poll interval kept for ``hour`` (None: none kept) and its trade context
        (:data:`etl.bars.TRADE_CONTEXT_SCHEMA`)."""
        from etl.bars import TRADE_CONTEXT_SCHEMA

        empty = pl.DataFrame(schema=TRADE_CONTEXT_SCHEMA)
        if not self._tables():
            return None, empty
        interval = self.db.scalar("SELECT interval_s FROM bar_context WHERE hour_ms = ?", (hour,))
        with self.db.cursor() as cur:
            cur.execute(
                "SELECT sym, hour_ms AS bucket_ms, gaps, edges, holed FROM trade_context "
                "WHERE hour_ms = ? ORDER BY sym",
                (hour,),
            )
            rows = cur.fetchall()
        frame = pl.DataFrame(rows, schema=TRADE_CONTEXT_SCHEMA, orient="row") if rows else empty
        return (None if interval is None else float(interval)), frame

    def forget_context(self, hours: Iterable[int]) -> None:
        """Drop the context of purged hours (their bars will not be made again from here)."""
        hours = list(hours)
        if not hours or not self._tables():
            return
        with self.db.transaction() as cur:
            for hour in hours:
                cur.execute("DELETE FROM bar_context WHERE hour_ms = ?", (hour,))
                cur.execute("DELETE FROM trade_context WHERE hour_ms = ?", (hour,))

    # -- the record of what is archived --------------------------------------------------------

    def record(
        self,
        hour: int,
        max_seq: int,
        manifest: str,
        files: Sequence[dict[str, Any]],
        now_ms: int,
    ) -> None:
        """Record an archived hour and its files (``FILE_COLUMNS`` each), in one transaction:
        only then may its ticks be purged."""
        with self.db.transaction() as cur:
            self._make(cur)
            cur.execute("DELETE FROM archive_files WHERE hour_ms = ?", (hour,))
            for f in files:
                cur.execute(
                    f"INSERT INTO archive_files (hour_ms, {', '.join(FILE_COLUMNS)}) "
                    f"VALUES (?{', ?' * len(FILE_COLUMNS)})",
                    (hour, *(f[c] for c in FILE_COLUMNS)),
                )
            cur.execute(
                "INSERT OR REPLACE INTO archive_hours (hour_ms, max_seq, rows, files, bytes, "
                "manifest, archived_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    hour,
                    max_seq,
                    sum(int(f["rows"]) for f in files),
                    len(files),
                    sum(int(f["bytes"]) for f in files),
                    manifest,
                    now_ms,
                ),
            )
        self._made = True

    def archived(self, hours: Iterable[int] | None = None) -> dict[int, int]:
        """Archived hours (all, or those of ``hours``) and the ``max_seq`` each was archived up
        to."""
        if not self._tables():
            return {}
        with self.db.cursor() as cur:
            cur.execute("SELECT hour_ms, max_seq FROM archive_hours")
            found = {int(h): int(s) for h, s in cur.fetchall()}
        if hours is None:
            return found
        return {h: found[h] for h in hours if h in found}

    def files(self, hour: int | None = None) -> pl.DataFrame:
        """The recorded files (of one hour, or all): ``hour_ms`` and ``FILE_COLUMNS``."""
        schema = {
            "hour_ms": pl.Int64,
            "source": pl.String,
            "path": pl.String,
            "rows": pl.Int64,
            "bytes": pl.Int64,
            "sha256": pl.String,
            **{c: pl.Int64 for c in FILE_COLUMNS[5:]},
        }
        if not self._tables():
            return pl.DataFrame(schema=schema)
        where, params = ("WHERE hour_ms = ?", (hour,)) if hour is not None else ("", ())
        with self.db.cursor() as cur:
            cur.execute(
                f"SELECT hour_ms, {', '.join(FILE_COLUMNS)} FROM archive_files {where} "
                "ORDER BY hour_ms, source",
                params,
            )
            rows = cur.fetchall()
        return pl.DataFrame(rows, schema=schema, orient="row")

    def summary(self) -> dict[str, Any]:
        """``hours, files, rows, bytes, newest_hour_ms`` of what this file archived."""
        if not self._tables():
            return {"hours": 0, "files": 0, "rows": 0, "bytes": 0, "newest_hour_ms": None}
        with self.db.cursor() as cur:
            cur.execute(
                "SELECT count(*), coalesce(sum(files), 0), coalesce(sum(rows), 0), "
                "coalesce(sum(bytes), 0), max(hour_ms) FROM archive_hours"
            )
            hours, files, rows, size, newest = cur.fetchone()
        return {
            "hours": int(hours),
            "files": int(files),
            "rows": int(rows),
            "bytes": int(size),
            "newest_hour_ms": None if newest is None else int(newest),
        }
