"""PostgreSQL through ADBC: connect, apply ``sql/``, upsert bars with their ledger rows, retention.

>>> with open_warehouse(load_settings()) as wh:        # doctest: +SKIP
...     wh.apply_schema()
...     wh.query("SELECT * FROM latest_price")
shape: (5, 3) ...

Writes go to a temporary table through ``adbc_ingest`` and then ``INSERT … ON CONFLICT DO UPDATE``
together with the ``rollup_runs`` rows, in one transaction under an advisory lock. Reads end their
transaction at once, so no connection sits "idle in transaction" blocking partition DDL.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import adbc_driver_postgresql.dbapi as pg
import polars as pl

from etl.config import Settings, mask_dsn
from etl.errors import ConfigError, DependencyError

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
WRITE_LOCK = 0x45544C01  # pg_advisory_xact_lock key for bar writes
RUN_LOCK = 0x45544C02  # pg_advisory_lock key held by a whole rollup / backfill run
SCHEMA_LOCK = 0x45544C03  # pg_advisory_lock key held while sql/ is applied
HOURLY_COLUMNS = (
    "symbol",
    "bucket",
    "open",
    "high",
    "low",
    "close",
    "mean",
    "samples",
    "first_at",
    "last_at",
    "max_gap_s",
    "source",
)
_DSN_ERRORS = ("invalid connection option", "invalid uri", "invalid integer value", 'missing "="')


def _upsert_hourly(where: str = "") -> str:
    cols = ", ".join(HOURLY_COLUMNS)
    updates = ", ".join(f"{c} = excluded.{c}" for c in HOURLY_COLUMNS[2:])
    values = ", ".join(f"m.{c}" for c in HOURLY_COLUMNS[2:])
    new = ", ".join(f"excluded.{c}" for c in HOURLY_COLUMNS[2:])
    # Only a changed bar is touched, so a rerun leaves the table (updated_at included) as it was.
    return (
        f"INSERT INTO metrics_hourly AS m ({cols}) SELECT {cols} FROM etl_stage_hourly "
        f"ON CONFLICT (symbol, bucket) DO UPDATE SET {updates}, updated_at = now() "
        f"WHERE ({values}) IS DISTINCT FROM ({new}) {where}"
    )


_UPSERT_RUNS = (
    "INSERT INTO rollup_runs AS r (hour, symbols, rows, ticks_read, max_seq, started_at, finished_at) "
    "SELECT hour, symbols, rows, ticks_read, max_seq, started_at, now() FROM etl_stage_runs "
    "ON CONFLICT (hour) DO UPDATE SET symbols = excluded.symbols, rows = excluded.rows, "
    "ticks_read = excluded.ticks_read, max_seq = excluded.max_seq, "
    "started_at = excluded.started_at, finished_at = excluded.finished_at, purged_at = NULL"
)
_ENSURE_STAGED_PARTITIONS = (
    "SELECT count(etl_ensure_hourly_partitions(month, month)) FROM "
    "(SELECT DISTINCT date_trunc('month', bucket, 'UTC') AS month FROM etl_stage_hourly) months"
)


_REFRESH_STAGED_DAYS = (
    "SELECT coalesce(sum(etl_refresh_daily(day, day + 1)), 0) FROM "
    "(SELECT DISTINCT (bucket AT TIME ZONE 'UTC')::date AS day FROM etl_stage_hourly) days"
)


class Written(NamedTuple):
    """What one write changed: bars inserted or updated, daily rows refreshed, kline bars kept."""

    bars: int = 0
    days: int = 0
    kline_kept: int = 0


def connect(dsn: str) -> pg.Connection:
    """Open an ADBC connection; a bad DSN is a :class:`ConfigError`, an unreachable server a
    :class:`DependencyError`, both one line with the password masked."""
    try:
        conn = pg.connect(dsn)
        with conn.cursor() as cur:  # every date and hour is UTC, whatever the server's zone
            cur.execute("SET TIME ZONE 'UTC'")
        conn.commit()
        return conn
    except pg.Error as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        reason = reason.replace(dsn, mask_dsn(dsn))
        if any(marker in reason.lower() for marker in _DSN_ERRORS):
            raise ConfigError(f"bad PostgreSQL DSN {mask_dsn(dsn)}: {reason}") from None
        raise DependencyError(
            f"PostgreSQL unreachable at {mask_dsn(dsn)} ({reason}): start it or fix ETL_PG_DSN"
        ) from None


def sql_files(directory: Path = SQL_DIR) -> list[Path]:
    return sorted(p for p in directory.glob("*.sql") if re.match(r"\d{3}_", p.name))


class Warehouse:
    """One ADBC connection to the warehouse (autocommit off; every method ends its transaction)."""

    def __init__(self, conn: pg.Connection, label: str = "") -> None:
        self.conn = conn
        self.label = label

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[pg.Cursor]:
        cur = self.conn.cursor()
        try:
            yield cur
            self.conn.commit()
        except pg.OperationalError as exc:
            self._rollback()
            raise self._lost(exc) from None
        except BaseException:
            self._rollback()
            raise
        finally:
            cur.close()

    def _rollback(self) -> None:
        with contextlib.suppress(pg.Error):
            self.conn.rollback()

    def _lost(self, exc: Exception) -> DependencyError:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return DependencyError(
            f"PostgreSQL failed at {self.label} ({reason}): nothing partial was committed; "
            "run the command again once it is back"
        )

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one statement in its own transaction and return its rows (if any)."""
        with self.transaction() as cur:
            cur.execute(sql, parameters=params)
            return cur.fetchall() if cur.description else []

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
        """A read as a Polars frame; the transaction is ended at once."""
        try:
            options = {"parameters": list(params)} if params else None
            return pl.read_database(sql, self.conn, execute_options=options)
        except pg.OperationalError as exc:
            raise self._lost(exc) from None
        finally:
            self._rollback()

    # -- schema --------------------------------------------------------------------------------

    def apply_schema(self, directory: Path = SQL_DIR) -> list[str]:
        """Apply every ``sql/NNN_*.sql`` in order. The files are idempotent.

        A session-level advisory lock keeps two processes from racing on the same DDL (a
        transaction-level one would not do: ``executescript`` commits before it runs).
        """
        files = sql_files(directory)
        self.execute("SELECT pg_advisory_lock($1)", [SCHEMA_LOCK])
        try:
            with self.transaction() as cur:
                for path in files:
                    cur.executescript(path.read_text())
        finally:
            self.execute("SELECT pg_advisory_unlock($1)", [SCHEMA_LOCK])
        return [p.name for p in files]

    # -- rollup writes -------------------------------------------------------------------------

    def write_bars(
        self,
        bars: pl.DataFrame,
        runs: pl.DataFrame | None = None,
        *,
        full_samples: int | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> Written:
        """Upsert hourly bars and their ``rollup_runs`` rows in one transaction.

        Partitions for every month in ``bars`` are created first, and the closed days the bars
        touch are recomputed into ``metrics_daily`` last, all in the same transaction: a crash
        leaves either none of it or all of it. With ``full_samples``, a ``kline`` bar is not
        replaced by a poll bar with fewer samples (a backfilled hour beats a thin rerun).
        """
        if bars.is_empty() and (runs is None or runs.is_empty()):
            return Written()
        where = ""
        if full_samples is not None:
            where = f"AND NOT (m.source = 'kline' AND excluded.samples < {int(full_samples)})"
        with self.transaction() as cur:
            written = self._upsert_bars(cur, bars, where, kline_below=full_samples)
            if runs is not None and not runs.is_empty():
                cur.adbc_ingest("etl_stage_runs", runs.to_arrow(), mode="replace", temporary=True)
                cur.execute(_UPSERT_RUNS)
            if before_commit is not None:
                before_commit()
        return written

    def write_kline_bars(
        self, bars: pl.DataFrame, fetched: pl.DataFrame, full_samples: int
    ) -> Written:
        """Upsert backfilled bars and their ``backfill_log`` rows in one transaction.

        A ``poll`` bar with at least ``full_samples`` samples is never replaced.
        """
        with self.transaction() as cur:
            written = self._upsert_bars(
                cur, bars, f"AND NOT (m.source = 'poll' AND m.samples >= {int(full_samples)})"
            )
            cur.adbc_ingest("etl_stage_fetched", fetched.to_arrow(), mode="replace", temporary=True)
            cur.execute(
                "INSERT INTO backfill_log (symbol, hour, minutes, written) "
                "SELECT f.symbol, f.hour, f.minutes, NOT EXISTS ("
                "  SELECT 1 FROM metrics_hourly m WHERE m.symbol = f.symbol AND m.bucket = f.hour"
                "  AND m.source = 'poll') FROM etl_stage_fetched f "
                "ON CONFLICT (symbol, hour) DO UPDATE SET minutes = excluded.minutes, "
                "written = excluded.written, fetched_at = now()"
            )
        return written

    def write_reconciliation(self, frame: pl.DataFrame) -> None:
        if frame.is_empty():
            return
        cols = ("symbol", "bucket", "open_bps", "high_bps", "low_bps", "close_bps", "poll_samples")
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols[2:])
        with self.transaction() as cur:
            cur.adbc_ingest(
                "etl_stage_recon", frame.select(cols).to_arrow(), mode="replace", temporary=True
            )
            cur.execute(
                f"INSERT INTO reconciliation ({', '.join(cols)}) SELECT {', '.join(cols)} "
                f"FROM etl_stage_recon ON CONFLICT (symbol, bucket) DO UPDATE SET {updates}, "
                "checked_at = now()"
            )

    def _upsert_bars(
        self, cur: pg.Cursor, bars: pl.DataFrame, where: str = "", kline_below: int | None = None
    ) -> Written:
        cur.execute("SELECT pg_advisory_xact_lock($1)", parameters=[WRITE_LOCK])
        cur.fetchall()
        cur.execute("SET LOCAL lock_timeout = '60s'")
        if bars.is_empty():
            return Written()
        cur.adbc_ingest(
            "etl_stage_hourly",
            bars.select(HOURLY_COLUMNS).to_arrow(),
            mode="replace",
            temporary=True,
        )
        cur.execute(_ENSURE_STAGED_PARTITIONS)
        cur.fetchall()
        kept = 0
        if kline_below is not None:
            cur.execute(
                "SELECT count(*) FROM etl_stage_hourly s JOIN metrics_hourly m USING (symbol, bucket) "
                f"WHERE m.source = 'kline' AND s.samples < {int(kline_below)}"
            )
            kept = int(cur.fetchall()[0][0])
        cur.execute(_upsert_hourly(where))
        bars_written = max(cur.rowcount, 0)
        cur.execute(_REFRESH_STAGED_DAYS)
        days = int(cur.fetchall()[0][0])
        return Written(bars_written, days, kept)

    def ledger(self) -> pl.DataFrame:
        """``rollup_runs`` as ``hour_ms, max_seq, ticks_read, purged``."""
        return self.query(
            "SELECT (extract(epoch FROM hour) * 1000)::bigint AS hour_ms, max_seq, ticks_read, "
            "purged_at IS NOT NULL AS purged FROM rollup_runs ORDER BY hour"
        )

    def purge_candidates(self, before: datetime) -> list[tuple[int, int]]:
        """Committed hours that ended before ``before`` and whose ticks are still staged."""
        rows = self.execute(
            "SELECT (extract(epoch FROM hour) * 1000)::bigint, max_seq FROM rollup_runs "
            "WHERE purged_at IS NULL AND hour + interval '1 hour' <= $1 ORDER BY hour",
            [before],
        )
        return [(int(h), int(s)) for h, s in rows]

    def mark_purged(self, before: datetime) -> None:
        self.execute(
            "UPDATE rollup_runs SET purged_at = now() "
            "WHERE purged_at IS NULL AND hour + interval '1 hour' <= $1",
            [before],
        )

    def retention(self, keep_days: float, *, dry_run: bool) -> pl.DataFrame:
        with self.transaction() as cur:
            cur.execute("SET LOCAL lock_timeout = '60s'")
            cur.execute(
                "SELECT * FROM etl_hourly_retention($1, $2)", parameters=[float(keep_days), dry_run]
            )
            table = cur.fetch_arrow_table()
        return pl.from_arrow(table)  # type: ignore[return-value]

    @contextmanager
    def run_lock(self, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the run lock for a whole job, so two rollups started together run one after the
        other and the second finds nothing left to do.

        Polled rather than blocking: a process waiting inside libpq would not see a SIGTERM
        until the lock came free.
        """
        waiting = False
        while not self.execute("SELECT pg_try_advisory_lock($1)", [RUN_LOCK])[0][0]:
            if not waiting and on_wait is not None:
                on_wait()
            waiting = True
            time.sleep(0.25)
        try:
            yield
        finally:
            self.execute("SELECT pg_advisory_unlock($1)", [RUN_LOCK])


@contextmanager
def open_warehouse(settings: Settings) -> Iterator[Warehouse]:
    """The configured warehouse: ``pg_dsn`` if set, else the embedded server in ``<data_dir>/pg``."""
    if settings.pg_dsn:
        wh = Warehouse(connect(settings.pg_dsn), mask_dsn(settings.pg_dsn))
        try:
            yield wh
        finally:
            wh.close()
        return
    from etl.embedded_pg import embedded_server

    with embedded_server(settings.embedded_pgdata) as uri:
        wh = Warehouse(connect(uri), f"embedded ({settings.embedded_pgdata})")
        try:
            yield wh
        finally:
            wh.close()
