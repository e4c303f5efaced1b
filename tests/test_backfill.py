"""Gaps: backfill from klines (paginated, with faults and bans) and reconcile against candles,
on the fake exchange over real HTTP and a real PostgreSQL."""

from __future__ import annotations

import io
import json
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime

import polars as pl
import pytest
from rich.console import Console

from etl.collect.loop import Collector
from etl.collect.view import CollectorView
from etl.config import Settings
from etl.exchange.fake.rest import FakeExchange
from etl.hours import HOUR_MS, hour_floor
from etl.jobs.backfill import gap_filler, run_backfill, runs_of
from etl.jobs.rollup import run_rollup
from etl.staging.store import Staging
from tests.conftest import etl_env, run_etl
from tests.pgutil import query

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


def utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def stage_from_exchange(
    ex: FakeExchange, path, start: int, end: int, every_ms: int = 60_000, offset: int = 30_000
) -> None:
    """Stage what a collector polling the fake every minute would have stored."""
    stamps = range(start + offset, end, every_ms)
    frame = pl.DataFrame(
        [(s, ts, ex.market.price(s, ts)) for ts in stamps for s in SYMBOLS],
        schema=["symbol", "ts", "price"],
        orient="row",
    )
    with Staging(path) as st:
        st.ticks.append_frame(frame)


@pytest.fixture
def gap(settings: Settings, pg_dsn: str) -> tuple[Settings, FakeExchange, int]:
    """4 polled hours, a 30-hour hole, 5 polled hours; one thin hour (20 of 60 samples)."""
    ex = FakeExchange(list(SYMBOLS)).start()
    now_hour = hour_floor(int(time.time() * 1000))
    s = replace(settings, binance_url=ex.url, pg_dsn=pg_dsn, symbols=SYMBOLS, interval_s=60.0)
    h = lambda k: now_hour - k * HOUR_MS  # noqa: E731
    stage_from_exchange(ex, s.staging_path, h(40), h(38))
    stage_from_exchange(ex, s.staging_path, h(38), h(38) + 20 * 60_000)  # thin
    stage_from_exchange(ex, s.staging_path, h(37), h(36))
    stage_from_exchange(ex, s.staging_path, h(6), h(1))
    run_rollup(s)
    yield s, ex, now_hour
    ex.stop()


def kline_requests(ex: FakeExchange) -> int:
    return sum(1 for r in ex.requests if r.path == "/api/v3/klines")


def bars(dsn: str) -> pl.DataFrame:
    return query(dsn, "SELECT * FROM metrics_hourly ORDER BY symbol, bucket").drop("updated_at")


def test_a_30_hour_gap_is_filled_and_a_second_run_fetches_nothing(
    gap: tuple[Settings, FakeExchange, int],
) -> None:
    s, ex, now_hour = gap
    before = bars(s.pg_dsn)  # type: ignore[arg-type]
    full_poll = before.filter((pl.col("source") == "poll") & (pl.col("samples") >= 54))
    summary = run_backfill(s, since_ms=now_hour - 40 * HOUR_MS, until_ms=now_hour - HOUR_MS)
    after = bars(s.pg_dsn)  # type: ignore[arg-type]
    kline = after.filter(pl.col("source") == "kline")
    assert kline.height == 3 * (30 + 1)  # the hole and the thin hour, for every symbol
    assert summary.requests == 3 * (
        2 + 1
    )  # 1,800 minutes take two pages of 1,000; the thin hour one
    assert summary.weight == 2 * summary.requests
    assert set(kline["samples"].to_list()) == {60}
    # complete poll bars are untouched, byte for byte
    assert (
        after.filter(pl.col("source") == "poll")
        .sort("symbol", "bucket")
        .equals(full_poll.sort("symbol", "bucket"))
    )
    hourly_gap = after.filter(
        pl.col("bucket").is_between(utc(now_hour - 36 * HOUR_MS), utc(now_hour - 7 * HOUR_MS))
    )
    assert hourly_gap.height == 3 * 30 and set(hourly_gap["source"]) == {"kline"}

    sent = kline_requests(ex)
    again = run_backfill(s, since_ms=now_hour - 40 * HOUR_MS, until_ms=now_hour - HOUR_MS)
    assert again.requests == 0 and kline_requests(ex) == sent
    assert bars(s.pg_dsn).equals(after)  # type: ignore[arg-type]


def test_kline_bars_agree_with_the_exchange_hourly_candles(
    gap: tuple[Settings, FakeExchange, int],
) -> None:
    s, ex, now_hour = gap
    run_backfill(s, since_ms=now_hour - 36 * HOUR_MS, until_ms=now_hour - 30 * HOUR_MS)
    got = bars(s.pg_dsn).filter(pl.col("source") == "kline")  # type: ignore[arg-type]
    for symbol in SYMBOLS:
        candles = ex.market.klines(
            symbol, HOUR_MS, now_hour - 36 * HOUR_MS, now_hour - 30 * HOUR_MS - 1, 1000
        )
        mine = got.filter(pl.col("symbol") == symbol).sort("bucket")
        assert [int(b.timestamp() * 1000) for b in mine["bucket"]] == [c[0] for c in candles]
        for field, index in (("open", 1), ("high", 2), ("low", 3), ("close", 4)):
            assert mine[field].to_list() == [float(c[index]) for c in candles]


def test_poll_and_kline_bars_are_never_mixed_silently(
    gap: tuple[Settings, FakeExchange, int],
) -> None:
    s, _, now_hour = gap
    run_backfill(s, since_ms=now_hour - 40 * HOUR_MS, until_ms=now_hour - 35 * HOUR_MS)
    thin = query(
        s.pg_dsn,
        "SELECT source, samples FROM metrics_hourly WHERE bucket = $1",
        [utc(now_hour - 38 * HOUR_MS)],
    )  # type: ignore[arg-type]
    assert thin.rows() == [("kline", 60)] * 3  # the thin poll bar was replaced whole, not merged
    log = query(s.pg_dsn, "SELECT hour, minutes, written FROM backfill_log ORDER BY hour")  # type: ignore[arg-type]
    assert set(log["minutes"]) == {60} and all(log["written"])
    report = json.loads(run_etl(["status", "--json"], etl_env(s)).stdout)
    assert report["warehouse"]["missing_hours_7d"]["BTCUSDT"]["count"] >= 29  # the rest of the hole


@pytest.mark.slow
def test_a_ban_pauses_the_backfill_which_resumes_where_it_stopped(
    gap: tuple[Settings, FakeExchange, int],
) -> None:
    s, ex, now_hour = gap
    ex.inject("status", path="/api/v3/klines", status=418, retry_after=2, code=-1003, skip=2)
    ex.inject("status", path="/api/v3/klines", status=503, skip=0)  # and a transient error after it
    started = time.monotonic()
    summary = run_backfill(s, since_ms=now_hour - 40 * HOUR_MS, until_ms=now_hour - HOUR_MS)
    assert summary.pauses == 1 and time.monotonic() - started >= 2
    assert ex.violations == 0
    banned = next(r.at for r in ex.requests if r.status == 418)
    assert not [r for r in ex.requests if banned < r.at < banned + 2]
    assert bars(s.pg_dsn).filter(pl.col("source") == "kline").height == 3 * 31  # type: ignore[arg-type]
    fetched = [r.query for r in ex.requests if r.path == "/api/v3/klines" and r.status == 200]
    assert len(fetched) == len(set(fetched))  # no page fetched twice


def test_reconcile_reports_deviations_from_the_candles(
    gap: tuple[Settings, FakeExchange, int],
) -> None:
    s, ex, now_hour = gap
    done = run_etl(["reconcile", "--hours", "6", "--json"], etl_env(s))
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert len(rows) == 3 * 5  # hours H-6 .. H-1 have poll bars
    poll = query(
        s.pg_dsn,
        "SELECT * FROM metrics_hourly WHERE source = 'poll' AND bucket >= $1",
        [utc(now_hour - 6 * HOUR_MS)],
    )  # type: ignore[arg-type]
    for row in rows:
        bucket = datetime.fromisoformat(row["bucket"])
        hour_ms = int(bucket.timestamp() * 1000)
        candle = ex.market.klines(row["symbol"], HOUR_MS, hour_ms, hour_ms + HOUR_MS - 1, 1)[0]
        mine = poll.filter((pl.col("symbol") == row["symbol"]) & (pl.col("bucket") == bucket)).row(
            0, named=True
        )
        for field, index in (("open", 1), ("high", 2), ("low", 3), ("close", 4)):
            expected = (mine[field] - float(candle[index])) / float(candle[index]) * 1e4
            assert row[f"{field}_bps"] == pytest.approx(expected, abs=1e-9)
        assert row["high_bps"] <= 1e-6 and row["low_bps"] >= -1e-6  # samples lie inside the candle
        assert abs(row["close_bps"]) < 100
    stored = query(s.pg_dsn, "SELECT count(*) AS n FROM reconciliation")  # type: ignore[arg-type]
    assert stored["n"][0] == 15
    screen = run_etl(["reconcile", "--hours", "6"], etl_env(s))
    assert screen.returncode == 0 and "BTCUSDT" in screen.stdout and "close avg" in screen.stdout


def test_collector_fills_the_gap_since_its_last_tick_in_the_background(
    settings: Settings, pg_dsn: str
) -> None:
    with FakeExchange(list(SYMBOLS)) as ex:
        now_hour = hour_floor(int(time.time() * 1000))
        s = replace(settings, binance_url=ex.url, pg_dsn=pg_dsn, symbols=SYMBOLS, interval_s=0.2)
        stage_from_exchange(ex, s.staging_path, now_hour - 12 * HOUR_MS, now_hour - 11 * HOUR_MS)
        # The backfill's first klines request takes 2 s: ten polling slots at 0.2 s.
        ex.inject("slow", path="/api/v3/klines", delay=2.0)
        out = Console(file=io.StringIO(), width=200)
        stop = threading.Event()
        collector = Collector(
            s,
            rollup=False,
            gap_filler=gap_filler(s),
            view=CollectorView(live=False, out=out),
            stop=stop,
        )
        thread = threading.Thread(target=collector.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        polls_at_start = None
        while "backfill done" not in out.file.getvalue():  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, out.file.getvalue()  # type: ignore[attr-defined]
            if polls_at_start is None and "filling it in the background" in out.file.getvalue():  # type: ignore[attr-defined]
                polls_at_start = collector.stats.polls_ok
            time.sleep(0.05)
        polls_during = collector.stats.polls_ok - (polls_at_start or 0)
        stop.set()
        thread.join(20)
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert "no ticks staged since" in text and "filling it in the background" in text
    # Polls went on while the backfill waited (none would, were it on the polling thread); a
    # busy machine may miss a slot or two, so the bound is a third of the ten.
    assert polls_at_start is not None and polls_during >= 3, (polls_during, collector.stats)
    kline = query(pg_dsn, "SELECT count(*) AS n FROM metrics_hourly WHERE source = 'kline'")
    assert kline["n"][0] == 3 * 11  # hours H-11 .. H-1; H-12 is staged and left to the rollup


def test_runs_of_contiguous_hours() -> None:
    assert runs_of([]) == []
    assert runs_of([5 * HOUR_MS, 3 * HOUR_MS, 4 * HOUR_MS]) == [(3 * HOUR_MS, 6 * HOUR_MS)]


@pytest.mark.slow
def test_etl_collect_backfill_from_the_command_line(settings: Settings, pg_dsn: str) -> None:
    with FakeExchange(list(SYMBOLS)) as ex:
        now_hour = hour_floor(int(time.time() * 1000))
        s = replace(settings, binance_url=ex.url, pg_dsn=pg_dsn, symbols=SYMBOLS, interval_s=0.5)
        stage_from_exchange(ex, s.staging_path, now_hour - 4 * HOUR_MS, now_hour - 3 * HOUR_MS)
        done = run_etl(["collect", "--no-rollup", "--backfill", "--duration", "8"], etl_env(s))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "filling it in the background" in done.stdout and "backfill done" in done.stdout
    kline = query(pg_dsn, "SELECT count(*) AS n FROM metrics_hourly WHERE source = 'kline'")
    assert kline["n"][0] == 3 * 3
