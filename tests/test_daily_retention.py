"""Daily downsampling, retention, `etl status` and `etl seed-demo`, against a real PostgreSQL
(the notebooks: tests/test_notebooks.py)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from etl.bars import hourly_bars
from etl.config import Settings
from etl.hours import GRACE_MS, HOUR_MS, hour_floor, iso
from etl.jobs.demo_history import generate_ticks
from etl.jobs.rollup import run_rollup
from etl.staging.store import Staging
from etl.warehouse.embedded import embedded_server
from etl.warehouse.store import open_warehouse
from tests.conftest import etl_env, run_etl
from tests.pgutil import execute, query, seed_ticks
from tests.reference import daily_reference

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


@pytest.fixture
def pgs(settings: Settings, pg_dsn: str) -> Settings:
    return replace(settings, pg_dsn=pg_dsn, symbols=tuple(SYMBOLS))


def test_daily_bars_match_a_reference_computed_from_the_hourly(pgs: Settings) -> None:
    now_hour = hour_floor(int(time.time() * 1000))
    start = now_hour - 80 * HOUR_MS
    with Staging(pgs.staging_path) as st:
        for symbol in SYMBOLS:
            st.ticks.append_frame(generate_ticks(symbol, start, now_hour - HOUR_MS, 60_000))
    run_rollup(pgs)
    hourly = query(pgs.pg_dsn, "SELECT * FROM metrics_hourly")  # type: ignore[arg-type]
    today = datetime.now(UTC).date()
    expected = {
        k: v for k, v in daily_reference(hourly.iter_rows(named=True)).items() if k[1] < today
    }
    daily = query(pgs.pg_dsn, "SELECT * FROM metrics_daily")  # type: ignore[arg-type]
    assert daily.height == len(expected) >= 3 * 3
    for row in daily.iter_rows(named=True):
        ref = expected[(row["symbol"], row["day"])]
        for key in ("open", "high", "low", "close", "samples", "hours"):
            assert row[key] == ref[key], (key, row, ref)
        assert row["mean"] == pytest.approx(ref["mean"], rel=1e-9)
    again = run_rollup(pgs, rerun=True)
    assert again.days == 0  # recomputing changes nothing


def _bars_at(day: datetime, symbols: list[str]) -> pl.DataFrame:
    start = int(day.timestamp() * 1000)
    frames = [generate_ticks(s, start, start + 2 * HOUR_MS, 600_000) for s in symbols]
    ticks = pl.concat(frames).with_row_index("seq").with_columns(pl.col("seq").cast(pl.Int64))
    return hourly_bars(ticks)


def partitions(dsn: str) -> list[str]:
    return query(
        dsn,
        "SELECT c.relname::text AS p FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'metrics_hourly'::regclass ORDER BY 1",
    )["p"].to_list()


def test_retention_drops_only_old_partitions_whose_days_are_downsampled(pgs: Settings) -> None:
    now = datetime.now(UTC)
    old_done = (now - timedelta(days=500)).replace(
        day=10, hour=0, minute=0, second=0, microsecond=0
    )
    old_missing = (now - timedelta(days=440)).replace(
        day=10, hour=0, minute=0, second=0, microsecond=0
    )
    recent = (now - timedelta(days=20)).replace(hour=0, minute=0, second=0, microsecond=0)
    written = {day: _bars_at(day, SYMBOLS) for day in (old_done, old_missing, recent)}
    with open_warehouse(pgs) as wh:
        wh.migrate()
        for bars in written.values():
            wh.write_bars(bars)  # downsamples each closed day it touches
        wh.execute("DELETE FROM metrics_daily WHERE day = $1::date", [old_missing])
    name = lambda d: f"metrics_hourly_{d:%Y%m}"  # noqa: E731
    env = etl_env(replace(pgs, hourly_retention_d=400.0))

    dry = run_etl(["retention", "--dry-run"], env)
    assert dry.returncode == 0, dry.stderr
    assert "would drop" in dry.stdout and name(old_done) in dry.stdout
    assert f"warning: {name(old_missing)} kept" in dry.stdout
    assert name(old_done) in partitions(pgs.pg_dsn)  # type: ignore[arg-type]

    done = run_etl(["retention"], env)
    assert done.returncode == 0, done.stderr
    left = partitions(pgs.pg_dsn)  # type: ignore[arg-type]
    assert name(old_done) not in left
    assert name(old_missing) in left and name(recent) in left
    daily = query(
        pgs.pg_dsn, "SELECT day, count(*) AS n FROM metrics_daily GROUP BY day ORDER BY day"
    )  # type: ignore[arg-type]
    assert daily.rows() == [(old_done.date(), 3), (recent.date(), 3)]  # daily rows stay
    recent_bars = query(
        pgs.pg_dsn, "SELECT count(*) AS n FROM metrics_hourly WHERE bucket >= $1", [recent]
    )  # type: ignore[arg-type]
    # every bar of the recent day stays (the generated ticks leave an hour out now and then:
    # was 3 * 2, which failed on the dates whose two hours had such a gap)
    assert recent_bars["n"][0] == written[recent].height > 0


def test_rollup_applies_retention(pgs: Settings) -> None:
    this_month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    old = (this_month - timedelta(days=40)).replace(day=5)  # wholly in a month before the last
    start = int(old.timestamp() * 1000)
    with Staging(pgs.staging_path) as st:
        st.ticks.append_frame(generate_ticks("BTCUSDT", start, start + 3 * HOUR_MS, 60_000))
    summary = run_rollup(replace(pgs, hourly_retention_d=2.0))
    assert summary.dropped == [f"metrics_hourly_{old:%Y%m}"]
    daily = query(pgs.pg_dsn, "SELECT count(*) AS n FROM metrics_daily")  # type: ignore[arg-type]
    assert daily["n"][0] == 1


def test_status_json_reports_every_part(pgs: Settings) -> None:
    now_hour = hour_floor(int(time.time() * 1000))
    seed_ticks(pgs.staging_path, SYMBOLS, now_hour - 6 * HOUR_MS, polls=4 * 720)
    run_rollup(pgs)
    execute(
        pgs.pg_dsn,
        f"DELETE FROM metrics_hourly WHERE symbol = 'ETHUSDT' AND bucket = to_timestamp({(now_hour - 4 * HOUR_MS) / 1000})",
    )  # type: ignore[arg-type]
    with Staging(pgs.staging_path) as st:
        st.ticks.append(SYMBOLS, [1.0, 2.0, 3.0], int(time.time() * 1000) - 2000)
    done = run_etl(["status", "--json"], etl_env(pgs))
    assert done.returncode == 1, done.stderr  # degraded: a bar is missing
    report = json.loads(done.stdout)
    staging, wh = report["staging"], report["warehouse"]
    assert staging["rows"] == 4 * 720 * 3 + 3 and staging["hours"] == 5
    assert all(0 <= age < 60 for age in staging["last_tick_age_s"].values())
    assert wh["last_committed_hour"] == datetime.fromtimestamp(
        (now_hour - 3 * HOUR_MS) / 1000, UTC
    ).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert wh["missing_hours_7d"]["ETHUSDT"]["count"] >= 1  # the deleted bar and the hours since
    assert wh["partitions_ahead"] >= 2 and wh["default_partition"] is None
    assert 0 < wh["coverage_24h"]["BTCUSDT"]["coverage"] <= 1
    assert any("backfill" in p for p in report["problems"])
    screen = run_etl(["status"], etl_env(pgs))
    assert screen.returncode == 1 and "etl status" in screen.stdout and "BTCUSDT" in screen.stdout


def test_status_says_what_is_unreachable(settings: Settings) -> None:
    env = etl_env(replace(settings, pg_dsn="postgresql://etl:pw0rd@127.0.0.1:9/etl"))
    done = run_etl(["status", "--json"], env)
    assert done.returncode == 3, done.stderr  # a part cannot be reached
    report = json.loads(done.stdout)
    assert any(
        "PostgreSQL unreachable at postgresql://etl:***@127.0.0.1:9/etl" in p
        for p in report["problems"]
    )
    assert any("no staging database" in p for p in report["problems"])
    assert "pw0rd" not in done.stdout + done.stderr


def test_seed_demo_fills_the_warehouse_and_refuses_to_overwrite(pgs: Settings) -> None:
    env = etl_env(replace(pgs, interval_s=60.0))
    done = run_etl(["seed-demo", "--days", "3", "--use-pg-dsn"], env)
    assert done.returncode == 0, done.stderr
    counts = query(
        pgs.pg_dsn,
        "SELECT symbol, count(*) AS bars, avg(samples) AS s FROM metrics_hourly GROUP BY 1 ORDER BY 1",
    )  # type: ignore[arg-type]
    assert counts["symbol"].to_list() == SYMBOLS
    assert all(66 <= b <= 72 for b in counts["bars"])  # 72 hours minus a few gaps
    assert query(pgs.pg_dsn, "SELECT count(*) AS n FROM metrics_daily")["n"][0] >= 3 * 2  # type: ignore[arg-type]
    again = run_etl(["seed-demo", "--days", "3", "--use-pg-dsn"], env)
    assert again.returncode == 2 and "already holds" in again.stderr


@pytest.mark.slow
def test_right_after_seed_demo_status_is_healthy_and_names_the_planned_gaps(
    open_dir: Path,
) -> None:
    """Was: the history stopped an hour before the last closed hour, so status said "hours
    without a bar ... run `etl backfill`" (exit 1), advice that fails offline and online
    would write real klines into fake history."""
    env = etl_env(None, ETL_DATA_DIR=str(open_dir / "data"))
    seeded = run_etl(["seed-demo", "--days", "3"], env)
    assert seeded.returncode == 0, seeded.stdout + seeded.stderr
    demo = open_dir / "data" / "demo"
    done = run_etl(["--data-dir", str(demo), "status", "--json"], env)
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["problems"] == [], report["problems"]
    assert report["demo"] is True
    last_closed = hour_floor(int(time.time() * 1000) - GRACE_MS) - HOUR_MS
    assert report["warehouse"]["last_committed_hour"] == iso(last_closed)
    planned = json.loads((demo / "etl-demo.json").read_text())["planned_gaps"]
    if any(h >= iso(last_closed - 23 * HOUR_MS) for hours in planned.values() for h in hours):
        assert any("planned gaps" in note for note in report["notes"]), report["notes"]
    text = run_etl(["--data-dir", str(demo), "status"], env)
    assert "backfill" not in text.stdout and "etl collect" not in text.stdout
    # Every price on the symbol's tick grid, as the exchange's are.
    from etl.exchange.fake.market import Market

    with embedded_server(demo / "pg") as dsn:
        closes = query(dsn, "SELECT symbol, close FROM metrics_hourly")
    ticks = {s: float(Market([s]).tick_size(s)) for s in closes["symbol"].unique()}
    for symbol, close in closes.iter_rows():
        assert abs(close / ticks[symbol] - round(close / ticks[symbol])) < 1e-6, (symbol, close)
