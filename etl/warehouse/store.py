"""PostgreSQL through ADBC: connect, migrate ``sql/``, upsert bars with their ledger rows, and the
named queries every job uses. SQL against the warehouse lives here and in ``sql/``, nowhere else.

>>> with open_warehouse(load_settings()) as wh:        # doctest: +SKIP
...     wh.migrate()
...     wh.latest()
shape: (5, 3) ...

Writes go to a temporary table through ``adbc_ingest`` and then ``INSERT … ON CONFLICT DO UPDATE``
together with the ``rollup_runs`` rows, in one transaction under an advisory lock. Reads end their
transaction at once, so no connection sits "idle in transaction" blocking partition DDL.
Which of two bars for one (symbol, hour) is kept is decided by one SQL function,
``etl_bar_replaces`` (``sql/014_bar_rule_again.sql``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from etl.config import Settings
from etl.drivers import named
from etl.drivers import postgresql as pg
from etl.errors import ConfigError, DependencyError
from etl.hours import as_utc, utc
from etl.imports import deferred
from etl.warehouse import migrate
from etl.warehouse.connect import connect, first_line, is_lost
from etl.warehouse.migrate import Migrations
from etl.warehouse.queries import (
    BACKFILL_TARGETS_SQL,
    CONTESTS,
    COVERAGE_BARS_SQL,
    COVERAGE_DAYS_SQL,
    COVERAGE_SQL,
    ENSURE_STAGED_PARTITIONS,
    EXPORT_BARS_SQL,
    HOURLY_COLUMNS,
    MISSING_SQL,
    REFRESH_STAGED_DAYS,
    UPSERT_RUNS,
    inline,
    upsert_hourly,
)
from etl.warehouse.server import resolve, running

WRITE_LOCK = 0x45544C01  # pg_advisory_xact_lock key for bar writes
RUN_LOCK = 0x45544C02  # pg_advisory_lock key held by a whole rollup / backfill run
# A bar write or a partition drop waits this long for a table lock another session holds (a
# notebook's long query, a DBA's ALTER), then gives up: exit 3, nothing half-written.
LOCK_TIMEOUT_S = 60.0
SCHEMA_LOCK = 0x45544C03  # pg_advisory_lock key held while sql/ is applied
# Ledger rows from before staging files had an identity (sql/010_staging_identity.sql).
LEGACY_STAGING = "00000000-0000-0000-0000-000000000000"

if TYPE_CHECKING:
    import polars as pl
else:  # imported at the first frame made: a rollup with nothing to do makes none
    pl = deferred("polars")


class Committed(NamedTuple):
    """A committed hour of one staging file, as the ledger (``rollup_runs``) holds it."""

    max_seq: int  # the last staged row the rollup read
    ticks_read: int
    purged: bool  # its staged ticks are deleted


@dataclass
class Written:
    """What one write changed: bars inserted or updated, daily rows refreshed, and the bars that
    met another source's bar for their (symbol, hour): kept out (``lost``, by the winner's
    source, and per hour) or put in over another staging file's bar (``displaced``)."""

    bars: int = 0
    days: int = 0
    lost: dict[str, int] = field(default_factory=dict)
    lost_by_hour: dict[datetime, int] = field(default_factory=dict)
    displaced: int = 0

    @property
    def kline_kept(self) -> int:
        return self.lost.get("kline", 0)

    @property
    def lost_total(self) -> int:
        return sum(self.lost.values())


def _bound_lock_waits(cur: pg.Cursor) -> None:
    """In this transaction, give up on a table lock after ``LOCK_TIMEOUT_S``."""
    cur.execute(f"SET LOCAL lock_timeout = '{int(LOCK_TIMEOUT_S * 1000)}ms'")


class Warehouse:
    """One ADBC connection to the warehouse (autocommit off; every method ends its transaction).

    ``default_interval_s`` and ``full_coverage`` are the parameters of the bar rule: the poll
    interval assumed for bars that did not record theirs, and the coverage that makes a poll bar
    complete.
    """

    def __init__(
        self,
        conn: pg.Connection,
        label: str = "",
        *,
        default_interval_s: float = 5.0,
        full_coverage: float = 0.9,
    ) -> None:
        self.conn = conn
        self.label = label
        self.rule = [float(default_interval_s), float(full_coverage)]
        self.days_written: set[date] = set()  # the days of the bars written: refresh_coverage

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[pg.Cursor]:
        cur = self.conn.cursor()
        try:
            yield cur
            self.conn.commit()
        except pg.Error as exc:
            self._rollback()
            if is_lost(exc):
                raise self._lost(exc) from None
            raise
        except BaseException:
            self._rollback()
            raise
        finally:
            cur.close()

    def _rollback(self) -> None:
        with contextlib.suppress(pg.Error):
            self.conn.rollback()

    def _lost(self, exc: Exception) -> DependencyError:
        reason = first_line(exc)
        if "lock timeout" in reason.lower():
            return DependencyError(
                f"PostgreSQL at {self.label}: another session held a lock etl needs for "
                f"{LOCK_TIMEOUT_S:g} s ({reason}); nothing partial was committed: end that "
                "session's long query or transaction (pg_stat_activity), then run the command again"
            )
        if "statement timeout" in reason.lower():
            return DependencyError(
                f"PostgreSQL at {self.label} did not finish in time ({reason}): nothing partial "
                "was committed; check the server's load and locks, then run the command again"
            )
        return DependencyError(
            f"PostgreSQL failed at {self.label} ({reason}): nothing partial was committed; "
            "run the command again once it is back"
        )

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one statement in its own transaction and return its rows (if any)."""
        with self.transaction() as cur:
            cur.execute(sql, parameters=params)
            return cur.fetchall() if cur.description else []

    def rows(self, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """A small read as named rows, no frame: what `etl status` and the rollup's bookkeeping
        read (a command that makes no frame never imports Polars)."""
        with self.transaction() as cur:
            cur.execute(sql, parameters=params)
            return named(cur)

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
        """A read as a Polars frame; the transaction is ended at once."""
        # Straight from the cursor: pl.read_database imports SQLAlchemy whenever it is installed
        # (to ask whether the connection is one of its async ones), 0.15 s of a command's start.
        try:
            with self.conn.cursor() as cur:
                cur.execute(sql, parameters=list(params) if params else None)
                table = cur.fetch_arrow_table()
            return pl.from_arrow(table)  # type: ignore[return-value]
        except pg.Error as exc:
            if is_lost(exc):
                raise self._lost(exc) from None
            raise
        finally:
            self._rollback()

    def read(self, sql: str, params: Sequence[Any]) -> pl.DataFrame:
        """A large read as a Polars frame: ``params`` written into the statement as literals
        (:func:`etl.warehouse.queries.inline`), so ADBC reads the rows through binary COPY
        rather than row by row (a year of daily bars of 1,000 symbols: 0.17 s instead of 0.3 s;
        bench part 6)."""
        return self.query(inline(sql, params))

    # -- schema --------------------------------------------------------------------------------

    def migrate(self) -> Migrations:
        """Apply each shipped ``sql/NNN_*.sql`` not applied yet, in order, once, recording its
        checksum and the etl version that applied it in ``etl_migrations``. Each file and its
        ledger row commit together.

        A warehouse from before the ledger has its tables and no ledger: its files were written
        to be idempotent, so applying them all once records them without changing a row. A
        warehouse a newer etl migrated is refused before anything is written (:class:`ConfigError`).
        """
        from etl import version

        migrations = migrate.shipped()
        with self._session_lock(SCHEMA_LOCK):
            self.refuse_downgrade()
            self.execute(
                "CREATE TABLE IF NOT EXISTS etl_migrations (name text PRIMARY KEY, "
                "checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            self.execute("ALTER TABLE etl_migrations ADD COLUMN IF NOT EXISTS etl_version text")
            done = self._applied()
            applied = []
            for migration in migrations:
                if migration.name in done:
                    continue
                with self.transaction() as cur:
                    cur.executescript(migration.text)
                    cur.execute(
                        "INSERT INTO etl_migrations (name, checksum, etl_version) "
                        "VALUES ($1, $2, $3)",
                        parameters=[migration.name, migration.checksum, version()],
                    )
                applied.append(migration.name)
        present = [m.name for m in migrations if m.name in done]
        return Migrations(applied, present, migrate.changed(migrations, done, applied))

    def refuse_downgrade(self) -> None:
        """A warehouse migrated by a newer etl than this one: :class:`ConfigError` (exit 2),
        naming both versions."""
        from etl import version

        newer = migrate.unknown(self._applied(), migrate.shipped())
        if not newer:
            return
        by = self.schema_version()[1]
        raise ConfigError(
            f"the warehouse {self.label} has schema {newer[-1]}"
            + (f" (from etl {by})" if by else "")
            + f", newer than this etl {version()} knows (up to {migrate.newest()}): install "
            "that etl or a newer one, or restore the backup taken before the upgrade"
        )

    def ensure_partitions_ahead(self, months: int = 2) -> int:
        """Partitions for this month and the next ``months`` (new ones counted)."""
        return int(
            self.execute(
                "SELECT etl_ensure_hourly_partitions(now(), now() + make_interval(months => $1::int))",
                [months],
            )[0][0]
        )

    def _applied(self) -> dict[str, str]:
        if not self.execute("SELECT to_regclass('etl_migrations') IS NOT NULL")[0][0]:
            return {}
        return dict(self.execute("SELECT name, checksum FROM etl_migrations"))

    def schema_version(self) -> tuple[str | None, str | None]:
        """The newest applied migration (``None``: none yet) and the etl version that applied it
        (``None`` if unknown: applied before versions were recorded)."""
        if not self.execute("SELECT to_regclass('etl_migrations') IS NOT NULL")[0][0]:
            return None, None
        rows = self.execute(
            "SELECT name, to_jsonb(m) ->> 'etl_version' FROM etl_migrations m "
            "ORDER BY name DESC LIMIT 1"
        )
        return (str(rows[0][0]), rows[0][1]) if rows else (None, None)

    def pending_migrations(self) -> list[str]:
        """Shipped ``sql/`` files not applied yet (read-only)."""
        done = self._applied()
        return [m.name for m in migrate.shipped() if m.name not in done]

    def changed_migrations(self) -> list[str]:
        """Applied ``sql/`` files whose content changed since (read-only)."""
        return migrate.changed(migrate.shipped(), self._applied())

    def newer_migrations(self) -> list[str]:
        """Applied files newer than this etl ships (a downgrade; read-only)."""
        return migrate.unknown(self._applied(), migrate.shipped())

    def has_schema(self) -> bool:
        return bool(self.execute("SELECT to_regclass('metrics_hourly') IS NOT NULL")[0][0])

    # -- rollup writes -------------------------------------------------------------------------

    def write_bars(
        self,
        bars: pl.DataFrame,
        runs: pl.DataFrame | None = None,
        *,
        before_commit: Callable[[], None] | None = None,
    ) -> Written:
        """Upsert hourly bars and their ``rollup_runs`` rows in one transaction.

        Partitions for every month in ``bars`` are created first, and the closed days the bars
        touch are recomputed into ``metrics_daily`` last, all in the same transaction: a crash
        leaves either none of it or all of it. Where a bar meets another source's bar for its
        (symbol, hour), ``etl_bar_replaces`` decides; the loser is counted in its file's ledger
        row (``bars_lost``), on either side.
        """
        if bars.is_empty() and (runs is None or runs.is_empty()):
            return Written()
        with self.transaction() as cur:
            written = self._upsert_bars(cur, bars)
            if runs is not None and not runs.is_empty():
                lost = pl.DataFrame(
                    {
                        "hour": list(written.lost_by_hour),
                        "bars_lost": list(written.lost_by_hour.values()),
                    },
                    schema={"hour": runs.schema["hour"], "bars_lost": pl.Int32},
                )
                runs = runs.join(lost, on="hour", how="left").with_columns(
                    pl.col("bars_lost").fill_null(0)
                )
                cur.adbc_ingest("etl_stage_runs", runs.to_arrow(), mode="replace", temporary=True)
                cur.execute(UPSERT_RUNS)
            if before_commit is not None:
                before_commit()
        return written

    def write_kline_bars(self, bars: pl.DataFrame, fetched: pl.DataFrame) -> Written:
        """Upsert backfilled bars and their ``backfill_log`` rows in one transaction."""
        with self.transaction() as cur:
            written = self._upsert_bars(cur, bars)
            cur.adbc_ingest("etl_stage_fetched", fetched.to_arrow(), mode="replace", temporary=True)
            cur.execute(
                "INSERT INTO backfill_log (symbol, hour, minutes, written) "
                "SELECT f.symbol, f.hour, f.minutes, EXISTS ("
                "  SELECT 1 FROM metrics_hourly m WHERE m.symbol = f.symbol AND m.bucket = f.hour"
                "  AND m.source = 'kline') FROM etl_stage_fetched f "
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

    def _upsert_bars(self, cur: pg.Cursor, bars: pl.DataFrame) -> Written:
        from etl.bars import TRADE_COLUMNS

        cur.execute("SELECT pg_advisory_xact_lock($1)", parameters=[WRITE_LOCK])
        cur.fetchall()
        _bound_lock_waits(cur)
        if bars.is_empty():
            return Written()
        frame = bars.with_columns(
            staging_id=pl.col("staging_id") if "staging_id" in bars.columns else pl.lit(None),
            interval_s=pl.col("interval_s") if "interval_s" in bars.columns else pl.lit(None),
            **{c: pl.lit(None, dtype=t) for c, t in TRADE_COLUMNS.items() if c not in bars.columns},
        )
        frame = frame.select(HOURLY_COLUMNS).cast(
            {"staging_id": pl.String, "interval_s": pl.Float64, **TRADE_COLUMNS}
        )
        cur.adbc_ingest("etl_stage_hourly", frame.to_arrow(), mode="replace", temporary=True)
        cur.execute(ENSURE_STAGED_PARTITIONS)
        cur.fetchall()
        written = Written()
        cur.execute(CONTESTS, parameters=self.rule)
        displaced: dict[tuple[Any, datetime], int] = {}
        for bucket, old_staging, old_source, lost in cur.fetchall():
            if lost:
                written.lost[old_source] = written.lost.get(old_source, 0) + 1
                written.lost_by_hour[bucket] = written.lost_by_hour.get(bucket, 0) + 1
            elif old_staging is not None:
                displaced[(old_staging, bucket)] = displaced.get((old_staging, bucket), 0) + 1
        for (old_staging, bucket), n in displaced.items():
            cur.execute(
                "UPDATE rollup_runs SET bars_lost = bars_lost + $1 "
                "WHERE staging_id = $2::uuid AND hour = $3",
                parameters=[n, str(old_staging), bucket],
            )
        written.displaced = sum(displaced.values())
        cur.execute(upsert_hourly(self.rule))
        written.bars = max(cur.rowcount, 0)
        cur.execute(REFRESH_STAGED_DAYS)
        written.days = int(cur.fetchall()[0][0])
        self.days_written.update(frame["bucket"].dt.date().unique().to_list())
        return written

    def refresh_coverage(self, days: Iterable[date]) -> int:
        """Write the coverage rows (``coverage_daily``, ``etl_refresh_coverage``) of those of
        ``days`` that are closed and have none: a write to a closed day's bars deletes its rows,
        so a day with rows is up to date. What a rollup (its staged days and the days it wrote,
        so a run that failed is made up for by the next), a backfill and a rebuild do once a run
        (``days_written``). Until then the notebooks read those days from their bars. Returns
        the rows written."""
        wanted = ",".join(sorted(d.isoformat() for d in set(days)))
        if not wanted:
            return 0
        with self.transaction() as cur:
            # After any write of bars in flight has committed, and before the next one starts:
            # a refresh that read a day's bars while another session wrote them would keep rows
            # that miss them, and the next refresh would skip the day (it has rows).
            cur.execute("SELECT pg_advisory_xact_lock($1)", parameters=[WRITE_LOCK])
            cur.fetchall()
            cur.execute(
                "SELECT coalesce(sum(etl_refresh_coverage(d, d + 1)), 0) "
                "FROM unnest(string_to_array($1, ',')::date[]) AS d "
                "WHERE d < (now() AT TIME ZONE 'UTC')::date "
                "AND NOT EXISTS (SELECT 1 FROM coverage_daily c WHERE c.day = d)",
                parameters=[wanted],
            )
            return int(cur.fetchall()[0][0])

    # -- the ledger and the purge --------------------------------------------------------------

    def ledger_counts(self, staging_id: str | None, since: datetime) -> dict[str, Any]:
        """What `etl status` says of the ledger (``rollup_runs``), counted by the server: years
        of it are 10^5 rows. ``newest_ms``: the newest hour any staging file committed (``None``:
        none yet); ``hours``: the hours ``staging_id`` committed; ``bars_lost``: the bars it
        lost to another file's from ``since`` on."""
        return self.rows(
            "SELECT (extract(epoch FROM max(hour)) * 1000)::bigint AS newest_ms, "
            "count(*) FILTER (WHERE staging_id = $1::uuid) AS hours, "
            "coalesce(sum(bars_lost) FILTER (WHERE staging_id = $1::uuid AND hour >= $2), 0) "
            "AS bars_lost FROM rollup_runs",
            [staging_id, since],
        )[0]

    def committed(self, staging_id: str, since_ms: int | None = None) -> dict[int, Committed]:
        """This staging file's committed hours (from ``since_ms`` on, if given) in the ledger:
        ``{hour_ms: (max_seq, ticks_read, purged)}``, as plain rows (a rollup with nothing to do
        makes no frame)."""
        since = "" if since_ms is None else "AND hour >= $2"
        rows = self.execute(
            "SELECT (extract(epoch FROM hour) * 1000)::bigint, max_seq, ticks_read, "
            f"purged_at IS NOT NULL FROM rollup_runs WHERE staging_id = $1::uuid {since} "
            "ORDER BY hour",
            [staging_id] if since_ms is None else [staging_id, utc(since_ms)],
        )
        return {int(h): Committed(int(s), int(t), bool(p)) for h, s, t, p in rows}

    def high_water(self, staging_id: str) -> int:
        """The highest staging row (``max_seq``) any rollup of this file read; 0 if none."""
        return int(
            self.execute(
                "SELECT coalesce(max(max_seq), 0) FROM rollup_runs WHERE staging_id = $1::uuid",
                [staging_id],
            )[0][0]
        )

    def purge_candidates(self, staging_id: str, before: datetime) -> list[tuple[int, int]]:
        """This staging file's committed hours that ended before ``before`` and whose ticks are
        still staged: ``(hour_ms, max_seq)``."""
        rows = self.execute(
            "SELECT (extract(epoch FROM hour) * 1000)::bigint, max_seq FROM rollup_runs "
            "WHERE staging_id = $1::uuid AND purged_at IS NULL "
            "AND hour + interval '1 hour' <= $2 ORDER BY hour",
            [staging_id, before],
        )
        return [(int(h), int(s)) for h, s in rows]

    def mark_purged(self, staging_id: str, hours: Sequence[int]) -> None:
        if not hours:
            return
        self.execute(
            "UPDATE rollup_runs SET purged_at = now() WHERE staging_id = $1::uuid "
            "AND purged_at IS NULL AND hour = ANY($2::timestamptz[])",
            [staging_id, [utc(h) for h in hours]],
        )

    def retention(self, keep_days: float, *, dry_run: bool) -> list[dict[str, Any]]:
        """Drop (or, dry, list) the hourly partitions past ``keep_days`` whose days are in
        ``metrics_daily`` (``sql/006_retention.sql``): one row per partition past it,
        ``partition, range_start, range_end, action, missing_days``."""
        with self.transaction() as cur:
            _bound_lock_waits(cur)
            cur.execute(
                "SELECT * FROM etl_hourly_retention($1, $2)", parameters=[float(keep_days), dry_run]
            )
            return named(cur)

    @contextmanager
    def _session_lock(self, key: int, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold a session advisory lock. Polled rather than blocking: a process waiting inside
        libpq would not see a SIGTERM until the lock came free."""
        said = False
        while not self.execute("SELECT pg_try_advisory_lock($1)", [key])[0][0]:
            if not said and on_wait is not None:
                on_wait()
            said = True
            time.sleep(0.25)
        try:
            yield
        finally:
            self.execute("SELECT pg_advisory_unlock($1)", [key])

    @contextmanager
    def run_lock(self, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the run lock for a whole job, so two rollups started together run one after the
        other and the second finds nothing left to do."""
        with self._session_lock(RUN_LOCK, on_wait):
            yield

    # -- named reads ---------------------------------------------------------------------------

    def partitions(self) -> list[dict[str, Any]]:
        """``partition, range_start, range_end`` of ``metrics_hourly``'s partitions, oldest
        first (the default partition, if any, with no range)."""
        return self.rows("SELECT * FROM etl_hourly_partitions()")

    def count_rows(self, table: str) -> int:
        return int(self.execute(f'SELECT count(*) FROM "{table}"')[0][0])

    def missing_hours(
        self, symbols: Sequence[str], lo: datetime, hi: datetime
    ) -> list[dict[str, Any]]:
        """Per symbol, hours in ``[first bar of any symbol after lo, hi)`` without a bar:
        ``symbol, missing_hours, first_missing``."""
        return self.rows(MISSING_SQL, [",".join(symbols), lo, hi])

    def coverage(self, symbols: Sequence[str], lo: datetime, hi: datetime) -> list[dict[str, Any]]:
        """Per symbol over ``[lo, hi)``: ``symbol, bars, coverage`` (hours without a bar count as
        0, each bar's as ``etl_bar_coverage``) ``, kline_bars``."""
        return self.rows(COVERAGE_SQL, [self.rule[0], lo, hi, ",".join(symbols)])

    def coverage_grid(
        self, symbols: Sequence[str], lo: datetime, hi: datetime, *, summaries: bool = True
    ) -> pl.DataFrame:
        """Every (symbol, hour) in ``[lo, hi)`` (from ``lo``'s hour), by symbol and hour: the
        bar's source (null: no bar) and coverage (0 without a bar, ``etl_bar_coverage``).

        Closed days come from ``coverage_daily``; the others (the open day, days not summarized,
        days with a bar whose coverage needs the configured interval) from the bars; with
        ``summaries=False``, every day."""
        from etl.warehouse import grid

        first = as_utc(lo).replace(minute=0, second=0, microsecond=0)
        hi = as_utc(hi)
        last = hi - timedelta(hours=1)
        if last < first:
            return grid.cells(symbols, first, hi, [])
        names = ",".join(symbols)
        known: set[date] = set()
        days: list[pl.DataFrame] = []
        if summaries:
            rows = self.read(COVERAGE_DAYS_SQL, [first.date(), last.date(), names])
            known = grid.summarized(rows)
            days.append(grid.summary_days(rows.filter(pl.col("day").is_in(known))))
        span = (
            first.date() + timedelta(days=k) for k in range((last.date() - first.date()).days + 1)
        )
        for start, end in grid.runs(d for d in span if d not in known):
            since = max(first, datetime.combine(start, datetime.min.time(), UTC))
            until = min(hi, datetime.combine(end + timedelta(days=1), datetime.min.time(), UTC))
            bars = self.read(COVERAGE_BARS_SQL, [self.rule[0], since, until, names])
            days.append(grid.bar_days(bars))
        return grid.cells(symbols, first, hi, days)

    def backfill_targets(
        self, symbols: Sequence[str], lo: datetime, hi: datetime
    ) -> dict[str, list[int]]:
        """Per symbol, the hours in ``[lo, hi)`` where a kline bar would be kept (no bar, or one
        the rule ranks below a kline bar), not fetched before."""
        rows = self.query(BACKFILL_TARGETS_SQL, [*self.rule, ",".join(symbols), lo, hi])
        out: dict[str, list[int]] = {}
        for symbol, hour in rows.iter_rows():
            out.setdefault(symbol, []).append(int(hour))
        return out

    def bars(
        self,
        symbols: Sequence[str],
        lo: datetime,
        hi: datetime,
        *,
        source: str | None = None,
        daily: bool = False,
    ) -> pl.DataFrame:
        """Hourly (or daily) bars of ``symbols`` in ``[lo, hi)``, by symbol and time."""
        table, column, cast = (
            ("metrics_daily", "day", "::date") if daily else ("metrics_hourly", "bucket", "")
        )
        where = "AND source = $4" if source else ""
        params: list[Any] = [lo, hi, ",".join(symbols)]
        return self.read(
            f"SELECT * FROM {table} WHERE {column} >= $1{cast} AND {column} < $2{cast} "
            f"AND symbol = ANY(string_to_array($3, ',')) {where} ORDER BY symbol, {column}",
            [*params, source] if source else params,
        )

    def bars_with_coverage(
        self, symbols: Sequence[str], lo: datetime, hi: datetime
    ) -> pl.DataFrame:
        """Hourly bars of ``symbols`` in ``[lo, hi)`` with each bar's coverage by the bar rule
        (``etl_bar_coverage``), by symbol and hour: what wider bars are made from."""
        return self.query(EXPORT_BARS_SQL, [self.rule[0], lo, hi, ",".join(symbols)])

    def count_bars(self, symbols: Sequence[str], since: datetime) -> int:
        return int(
            self.execute(
                "SELECT count(*) FROM metrics_hourly WHERE bucket >= $1 "
                "AND symbol = ANY(string_to_array($2, ','))",
                [since, ",".join(symbols)],
            )[0][0]
        )

    def latest(self) -> pl.DataFrame:
        """``symbol, price, at``: the newest committed close of every symbol."""
        return self.query("SELECT symbol, price, at FROM latest_price ORDER BY symbol")

    def explain(self, query: str) -> list[str]:
        """``EXPLAIN`` of a query (literals, no placeholders), one line per plan row."""
        return self.query("SELECT etl_explain($1) AS plan", [query])["plan"].to_list()

    def server_version(self) -> tuple[int, str]:
        """``(major, text)`` of the server's PostgreSQL (``(18, "18.4")``)."""
        number, text = self.execute(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version')"
        )[0]
        return int(number) // 10000, str(text).split(" ", 1)[0]

    def public_objects(self) -> int:
        """Tables, views and sequences in schema ``public`` (where a dump of etl restores)."""
        return int(
            self.execute(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')"
            )[0][0]
        )

    @contextmanager
    def exported_snapshot(self, tables: Sequence[str]) -> Iterator[tuple[str, dict[str, int]]]:
        """A repeatable-read snapshot exported for ``pg_dump --snapshot`` and held for the block,
        with the row counts of ``tables`` in it (those that exist): what the dump will hold."""
        with self.transaction() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            # This session only keeps the snapshot alive while pg_dump reads it; connect() ends
            # idle transactions after 10 minutes, and a big dump takes longer.
            cur.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
            cur.execute("SELECT pg_export_snapshot()")
            snapshot = str(cur.fetchall()[0][0])
            counts = {}
            for table in tables:
                cur.execute("SELECT to_regclass($1) IS NOT NULL", parameters=[table])
                if cur.fetchall()[0][0]:
                    cur.execute(f'SELECT count(*) FROM "{table}"')
                    counts[table] = int(cur.fetchall()[0][0])
            yield snapshot, counts

    def sizes(self) -> dict[str, int]:
        """Bytes of the warehouse's database."""
        return {"database": int(self.execute("SELECT pg_database_size(current_database())")[0][0])}


@contextmanager
def open_warehouse(
    settings: Settings,
    *,
    create: bool = True,
    statement_timeout_s: float | None = 600.0,
    borrow: bool = False,
) -> Iterator[Warehouse]:
    """The configured warehouse (:func:`etl.warehouse.server.resolve`), connected.

    ``create=False`` (commands that only look) refuses to create an embedded server that does not
    exist yet (:class:`NothingStaged`). ``statement_timeout_s`` bounds any single statement.
    ``borrow``: a running embedded server is used without joining it (see
    :func:`~etl.warehouse.server.running`).
    """
    server = resolve(settings)
    with running(server, create=create, borrow=borrow) as dsn:
        conn = connect(
            dsn,
            connect_timeout_s=settings.pg_connect_timeout_s,
            statement_timeout_s=statement_timeout_s,
        )
        wh = Warehouse(
            conn,
            server.label,
            default_interval_s=settings.interval_s,
            full_coverage=settings.backfill_min_coverage,
        )
        try:
            yield wh
        finally:
            wh.close()
