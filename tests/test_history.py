"""Years of history through the notebooks' path: the symbol list behind ``latest_price``
(``sql/015_symbols.sql``), the coverage grid placed in Polars, large reads through COPY, and the
notebooks' session. Timings are bench part 6's; here only what must hold."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import adbc_driver_postgresql.dbapi as pg
import polars as pl
import pytest

from bench.history_bench import GRID_BEFORE, LATEST_BEFORE  # the previous release's statements
from etl.bars import UTC_US
from etl.config import Settings
from etl.notebook import RANDOM_PAGE_COST, History
from etl.warehouse.store import open_warehouse
from tests.pgutil import LEGACY, execute, query, restore_dump

START = datetime(2026, 1, 31, 18, tzinfo=UTC)  # six hours before a partition boundary


def bars(symbols: list[str], start: datetime, hours: int, price: float = 100.0) -> pl.DataFrame:
    """Full hourly poll bars (720 samples at 5 s), the close rising by 1 an hour."""
    rows = [
        {
            "symbol": s,
            "bucket": start + timedelta(hours=k),
            "open": price + k,
            "high": price + k + 1,
            "low": price + k,
            "close": price + k + 1,
            "mean": price + k + 0.5,
            "samples": 720 - 100 * (i % 2),
            "first_at": start + timedelta(hours=k, seconds=2),
            "last_at": start + timedelta(hours=k, seconds=3597),
            "max_gap_s": 5.0,
            "source": "poll",
            "interval_s": 5.0,
        }
        for i, s in enumerate(symbols)
        for k in range(hours)
    ]
    types = {"bucket": UTC_US, "first_at": UTC_US, "last_at": UTC_US, "samples": pl.Int32}
    return pl.DataFrame(rows, schema_overrides=types)


def test_latest_price_lists_every_symbol_however_its_bars_came_and_reads_the_list(
    pgs: Settings,
) -> None:
    dsn = str(pgs.pg_dsn)
    with open_warehouse(pgs) as wh:
        wh.migrate()
        wh.write_bars(bars(["BTCUSDT", "ETHUSDT"], START, 10))  # the rollup's upsert
        wh.write_bars(bars(["BTCUSDT"], START + timedelta(hours=10), 2, price=200.0))
    execute(  # a DBA's INSERT
        dsn,
        "INSERT INTO metrics_hourly (symbol, bucket, open, high, low, close, mean, samples, "
        "first_at, last_at, source) VALUES ('DOGEUSDT', '2026-01-31 20:00+00', 1, 1, 1, 0.25, "
        "1, 60, '2026-01-31 20:00+00', '2026-01-31 20:59+00', 'kline')",
    )
    with pg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:  # COPY, as a restore
        cur.adbc_ingest(
            "metrics_hourly",
            bars(["SOLUSDT"], START, 3).drop("interval_s").to_arrow(),
            mode="append",
        )
    listed = query(dsn, "SELECT symbol FROM etl_symbols ORDER BY 1")["symbol"].to_list()
    assert listed == ["BTCUSDT", "DOGEUSDT", "ETHUSDT", "SOLUSDT"]
    latest = query(dsn, "SELECT symbol, price, at FROM latest_price ORDER BY symbol")
    assert latest.rows() == query(dsn, LATEST_BEFORE).rows()
    assert latest.filter(pl.col("symbol") == "BTCUSDT")["price"].to_list() == [202.0]
    plan = "\n".join(query(dsn, "SELECT etl_explain('SELECT * FROM latest_price') AS p")["p"])
    assert "etl_symbols" in plan and "Recursive" not in plan, plan
    h = History(pgs)  # the notebooks' session: index reads costed for cached pages
    try:
        assert (
            float(h.sql("SELECT current_setting('random_page_cost') AS c")["c"][0])
            == RANDOM_PAGE_COST
        )
        assert h.symbols() == ["BTCUSDT", "ETHUSDT", "DOGEUSDT", "SOLUSDT"]  # configured first
    finally:
        h.close()


def test_a_warehouse_of_the_previous_release_lists_its_symbols_and_keeps_its_latest_prices(
    pg_dsn: str, settings: Settings
) -> None:
    restore_dump(pg_dsn, LEGACY / "warehouse_v0_3.sql.gz")
    before = query(pg_dsn, "SELECT symbol, price, at FROM latest_price ORDER BY symbol")
    assert before.height > 0
    with open_warehouse(replace(settings, pg_dsn=pg_dsn)) as wh:
        assert "015_symbols.sql" in wh.migrate().applied
        assert wh.migrate().applied == []  # once
    after = query(pg_dsn, "SELECT symbol, price, at FROM latest_price ORDER BY symbol")
    assert after.rows() == before.rows()
    listed = query(pg_dsn, "SELECT count(*) AS n FROM etl_symbols")["n"][0]
    assert listed == query(pg_dsn, "SELECT count(DISTINCT symbol) AS n FROM metrics_hourly")["n"][0]


@pytest.mark.parametrize(
    ("lo", "hi"),
    [
        (START + timedelta(minutes=20), START + timedelta(hours=14, minutes=30)),  # unaligned
        (START - timedelta(hours=3), START + timedelta(hours=12)),  # before the first bar
        (START + timedelta(hours=5), START + timedelta(hours=5)),  # empty
    ],
)
def test_the_coverage_grid_is_the_one_sql_made(pgs: Settings, lo: datetime, hi: datetime) -> None:
    dsn = str(pgs.pg_dsn)
    with open_warehouse(pgs) as wh:
        wh.migrate()
        wh.write_bars(bars(["ETHUSDT", "BTCUSDT"], START, 12))
        execute(
            dsn,
            "DELETE FROM metrics_hourly WHERE symbol = 'ETHUSDT' AND bucket = "
            f"'{START + timedelta(hours=7)}'",
        )
        symbols = ["ETHUSDT", "XRPUSDT", "BTCUSDT"]  # one without any bar
        grid = wh.coverage_grid(symbols, lo, hi)
    made_by_sql = query(dsn, GRID_BEFORE, [pgs.interval_s, lo, hi, ",".join(symbols)])
    assert grid.schema == made_by_sql.schema
    assert grid.rows() == made_by_sql.rows()
    if hi > lo:
        assert grid.filter(pl.col("source").is_null()).height > 0


def test_a_read_through_copy_carries_every_value_as_it_is(pg_dsn: str, settings: Settings) -> None:
    text = "it's a \\ back'slash, ünïcode, $1 and a\nnewline"
    values = [text, 1.5, datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC), date(2026, 3, 1), 7]
    with open_warehouse(replace(settings, pg_dsn=pg_dsn), create=False) as wh:
        got = wh.read(
            "SELECT $1::text AS s, $2 AS f, $3 AS t, $4::date AS d, $5::int AS n, $1 = $1 AS same",
            values,
        )
        assert got.row(0) == (*values, True)
        with pytest.raises(ValueError, match="NUL"):
            wh.read("SELECT $1::text AS s", ["a\x00b"])
        # A naive time is UTC, as everywhere in etl, whatever zone the session is in
        wh.execute("SET TimeZone = 'America/New_York'")
        naive = datetime(2026, 3, 1, 12)
        assert wh.read("SELECT $1 AS t", [naive])["t"][0] == naive.replace(tzinfo=UTC)


def test_status_and_backfill_read_only_the_partitions_of_their_range(pgs: Settings) -> None:
    """Was: the missing-hours and backfill statements joined the hours of a range to every
    partition (a year of 1,000 symbols: 2.8 s a statement, twice per `etl status`)."""
    from etl.warehouse.queries import BACKFILL_TARGETS_SQL, MISSING_SQL, inline

    dsn = str(pgs.pg_dsn)
    with open_warehouse(pgs) as wh:
        wh.migrate()
        wh.write_bars(bars(["BTCUSDT"], START - timedelta(days=62), 2))  # two months earlier
        wh.write_bars(bars(["BTCUSDT"], START, 12))
    lo, hi = START + timedelta(hours=7), START + timedelta(hours=12)  # February only
    for sql, params in (
        (MISSING_SQL, ["BTCUSDT", lo, hi]),
        (BACKFILL_TARGETS_SQL, [5.0, 0.9, "BTCUSDT", lo, hi]),
    ):
        plan = "\n".join(
            query(dsn, "SELECT etl_explain($1) AS p", [inline(sql, params)])["p"].to_list()
        )
        assert "metrics_hourly_202602" in plan, plan
        assert "metrics_hourly_202511" not in plan and "metrics_hourly_202601" not in plan, plan
