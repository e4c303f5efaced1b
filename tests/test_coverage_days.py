"""The coverage grid's day rows (``coverage_daily``, ``sql/016_coverage_daily.sql``).

Closed days come from them, written once a run by the jobs that write bars; the open day and any
closed day whose bars changed since come from the bars. Whatever the way, the grid is the one
SQL made before 016 (every (symbol, hour) joined to the bars): the oracle here."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from unittest import mock

import adbc_driver_postgresql.dbapi as pg
import polars as pl

from bench.history_bench import GRID_BEFORE
from etl.config import Settings
from etl.hours import hour_floor
from etl.jobs.rollup import run_rollup
from etl.warehouse import migrate as migrations
from etl.warehouse.store import Warehouse, open_warehouse
from tests.pgutil import execute, query, seed_ticks
from tests.test_history import bars

SYMBOLS = ["ADAUSDT", "BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]


def now_hour() -> datetime:
    return datetime.fromtimestamp(hour_floor(int(time.time() * 1000)) / 1000, UTC)


def today() -> datetime:
    return now_hour().replace(hour=0)


def mixed(start: datetime, hours: int, legacy_day: datetime) -> pl.DataFrame:
    """Bars of every kind from ``start``: full poll bars (BTC), thin ones (ETH), kline bars (SOL),
    trade bars, two with a hole (XRP), poll bars without a recorded interval on ``legacy_day``
    only (ADA), and an hour without a bar for each."""
    frame = bars(SYMBOLS, start, hours).with_columns(
        samples=pl.when(pl.col("symbol") == "ETHUSDT").then(400).otherwise(pl.col("samples")),
        source=pl.col("symbol").replace_strict(
            {"SOLUSDT": "kline", "XRPUSDT": "trade"}, default="poll", return_dtype=pl.String
        ),
        interval_s=pl.when(pl.col("symbol") == "SOLUSDT")
        .then(None)
        .when(
            (pl.col("symbol") == "ADAUSDT")
            & (pl.col("bucket") >= legacy_day)
            & (pl.col("bucket") < legacy_day + timedelta(days=1))
        )
        .then(None)
        .otherwise(pl.col("interval_s")),
        ids_missing=pl.when((pl.col("symbol") == "XRPUSDT") & (pl.col("bucket").dt.hour() < 2))
        .then(3)
        .when(pl.col("symbol") == "XRPUSDT")
        .then(0)
        .cast(pl.Int32),
    )
    # one hour without a bar per symbol, each a different hour
    gap = pl.col("bucket") == start + timedelta(hours=5) + pl.duration(
        hours=pl.col("symbol").rank("dense").cast(pl.Int64) * 7
    )
    return frame.filter(~gap)


def grid_is_the_one_sql_made(wh: Warehouse, dsn: str, lo: datetime, hi: datetime) -> None:
    symbols = [*SYMBOLS, "DOGEUSDT"]  # one without any bar
    grid = wh.coverage_grid(symbols, lo, hi)
    made_by_sql = query(dsn, GRID_BEFORE, [wh.rule[0], lo, hi, ",".join(symbols)])
    assert grid.schema == made_by_sql.schema
    assert grid.rows() == made_by_sql.rows()


def days_summarized(dsn: str) -> list[date]:
    return query(dsn, "SELECT DISTINCT day FROM coverage_daily ORDER BY 1")["day"].to_list()


def test_closed_days_come_from_their_rows_and_the_grid_is_the_one_sql_made(pgs: Settings) -> None:
    dsn, first, day = str(pgs.pg_dsn), today() - timedelta(days=5), today()
    hours = int((now_hour() - first) / timedelta(hours=1))
    with open_warehouse(pgs) as wh:
        wh.migrate()
        wh.write_bars(mixed(first, hours, legacy_day=first + timedelta(days=2)))
        assert days_summarized(dsn) == []  # written by the job's run, once
        wh.refresh_coverage(wh.days_written)
        # every closed day is summarized, for every symbol with bars; the open day is not
        assert days_summarized(dsn) == [(first + timedelta(days=k)).date() for k in range(5)]
        rows = query(dsn, "SELECT count(*) AS n FROM coverage_daily")["n"][0]
        assert rows == 5 * len(SYMBOLS)
        incomplete = query(
            dsn,
            "SELECT symbol, day FROM coverage_daily WHERE array_position(coverage, NULL) > 0",
        )
        assert incomplete.rows() == [("ADAUSDT", (first + timedelta(days=2)).date())]
        for lo, hi in (
            (first, now_hour()),  # whole days, then the open day's closed hours
            (first - timedelta(hours=3), day + timedelta(hours=30)),  # beyond both ends
            (first + timedelta(hours=30, minutes=20), day - timedelta(hours=5, minutes=30)),
            (first + timedelta(days=1), first + timedelta(days=1)),  # empty
        ):
            grid_is_the_one_sql_made(wh, dsn, lo, hi)
        # a configured interval of 60 s changes the legacy day only, read from its bars
        with open_warehouse(replace(pgs, interval_s=60.0)) as other:
            grid_is_the_one_sql_made(other, dsn, first, now_hour())
        # the closed days are read from their rows: one changed by hand shows in the grid ...
        execute(
            dsn,
            "UPDATE coverage_daily SET coverage[1] = 0.5 "
            f"WHERE symbol = 'BTCUSDT' AND day = '{(first + timedelta(days=1)).date()}'",
        )
        grid = wh.coverage_grid(["BTCUSDT"], first, now_hour())
        at = grid.filter(pl.col("bucket") == first + timedelta(days=1))
        assert at["coverage"].to_list() == [0.5]
        # ... until a refresh makes it again from the bars (a day with rows is left alone by
        # the jobs' refresh: rows of a day whose bars changed are gone)
        assert wh.refresh_coverage([first.date() + timedelta(days=1)]) == 0
        execute(dsn, f"SELECT etl_refresh_coverage('{first.date()}', '{day.date()}')")
        grid_is_the_one_sql_made(wh, dsn, first, now_hour())


def test_a_change_to_a_closed_days_bars_sends_the_day_back_to_the_bars(pgs: Settings) -> None:
    dsn, first = str(pgs.pg_dsn), today() - timedelta(days=4)
    with open_warehouse(pgs) as wh:
        wh.migrate()
        wh.write_bars(mixed(first, 4 * 24, legacy_day=first - timedelta(days=9)))
        wh.refresh_coverage(wh.days_written)
        assert len(days_summarized(dsn)) == 4
        at = [first + timedelta(days=k, hours=10) for k in range(3)]
        execute(dsn, f"DELETE FROM metrics_hourly WHERE symbol = 'BTCUSDT' AND bucket = '{at[0]}'")
        execute(dsn, f"UPDATE metrics_hourly SET samples = 60 WHERE bucket = '{at[1]}'")
        with pg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:  # a restore's COPY
            cur.adbc_ingest(
                "metrics_hourly", bars(["DOGEUSDT"], at[2], 3).to_arrow(), mode="append"
            )
        # the three days' rows are gone, for every symbol; the fourth day's stay
        assert days_summarized(dsn) == [(first + timedelta(days=3)).date()]
        grid_is_the_one_sql_made(wh, dsn, first, first + timedelta(days=4))
        four = [first.date() + timedelta(days=k) for k in range(4)]
        assert wh.refresh_coverage(four) == 3 * len(SYMBOLS) + 1  # the three days, DOGE too
        assert len(days_summarized(dsn)) == 4
        grid_is_the_one_sql_made(wh, dsn, first, first + timedelta(days=4))
        # etl's own write to a closed day deletes its rows too, until its run's refresh
        wh.write_bars(bars(["BTCUSDT"], at[0], 1, price=300.0))
        assert len(days_summarized(dsn)) == 3
        grid_is_the_one_sql_made(wh, dsn, first, first + timedelta(days=4))
        wh.refresh_coverage(wh.days_written)
        assert len(days_summarized(dsn)) == 4
        grid_is_the_one_sql_made(wh, dsn, first, first + timedelta(days=4))


def test_retention_deletes_the_rows_of_the_days_it_drops(pgs: Settings) -> None:
    dsn, old, recent = str(pgs.pg_dsn), today() - timedelta(days=100), today() - timedelta(days=2)
    with open_warehouse(pgs) as wh:
        wh.migrate()
        wh.write_bars(bars(SYMBOLS, old, 48))
        wh.write_bars(bars(SYMBOLS, recent, 48))
        wh.refresh_coverage(wh.days_written)
        assert days_summarized(dsn) == [
            old.date(),
            (old + timedelta(days=1)).date(),
            recent.date(),
            (recent + timedelta(days=1)).date(),
        ]
        gone = [r for r in wh.retention(45, dry_run=False) if r["action"] == "dropped"]
        assert gone
        assert days_summarized(dsn) == [recent.date(), (recent + timedelta(days=1)).date()]
        grid_is_the_one_sql_made(wh, dsn, old, today())


def test_a_warehouse_of_the_previous_release_is_summarized_for_its_last_31_days(
    pgs: Settings,
) -> None:
    dsn, first = str(pgs.pg_dsn), today() - timedelta(days=40)
    every = migrations.shipped()
    with (
        mock.patch.object(migrations, "shipped", lambda: tuple(m for m in every if m.name < "016")),
        open_warehouse(pgs) as wh,
    ):
        wh.migrate()
        wh.write_bars(bars(SYMBOLS[:2], first, 40 * 24))
    with open_warehouse(pgs) as wh:
        assert wh.migrate().applied == ["016_coverage_daily.sql"]
        assert days_summarized(dsn) == [
            (today() - timedelta(days=k)).date() for k in range(31, 0, -1)
        ]
        grid_is_the_one_sql_made(wh, dsn, first, now_hour())
        assert wh.migrate().applied == []


def test_a_rollup_summarizes_its_closed_days_and_makes_up_for_a_run_that_did_not(
    pgs: Settings,
) -> None:
    dsn, yesterday = str(pgs.pg_dsn), today() - timedelta(days=1)
    start = int((yesterday + timedelta(hours=10)).timestamp() * 1000)
    seed_ticks(pgs.staging_path, SYMBOLS[:3], start, polls=3 * 720)
    assert run_rollup(pgs).hours == 3
    assert days_summarized(dsn) == [yesterday.date()]
    with open_warehouse(pgs) as wh:
        grid_is_the_one_sql_made(wh, dsn, yesterday, now_hour())
    execute(dsn, "DELETE FROM coverage_daily")  # as a run that wrote, then failed, leaves it
    assert run_rollup(pgs).hours == 0  # nothing to roll up; the staged day is summarized again
    assert days_summarized(dsn) == [yesterday.date()]
    with open_warehouse(pgs) as wh:
        grid_is_the_one_sql_made(wh, dsn, yesterday, now_hour())
