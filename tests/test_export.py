"""`etl export`: bars of any width (exact against plain-Python references), sub-hour bars from
archived trades and refused for poll-sourced symbols, the freqtrade layout read back by
freqtrade's own loader, ticks from the archive. Real SQLite, real PostgreSQL, real processes."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.feather as feather
import pytest

from etl.bars import UTC_US
from etl.config import Settings
from etl.hours import HOUR_MS, hour_floor, iso, now_ms
from etl.jobs.export import aligned, pair_name
from etl.jobs.rollup import run_rollup
from etl.resample import trade_bars_every, wider_bars
from tests.conftest import etl_env, one_line, run_etl
from tests.pgutil import query
from tests.test_archive import POLLED, TRADED, stage

MONDAY = datetime(2026, 1, 5, tzinfo=UTC)


def random_hourly(seed: int, hours: int = 24 * 17) -> pl.DataFrame:
    """Hourly bars of two symbols with holes, poll and trade sources, thin and full."""
    rng = random.Random(seed)
    rows = []
    for symbol in ("AAAUSDT", "BBBUSDT"):
        for h in range(hours):
            if rng.random() < 0.1:
                continue  # an hour without a bar
            o, c = rng.uniform(90, 110), rng.uniform(90, 110)
            trade = rng.random() < 0.5
            rows.append(
                {
                    "symbol": symbol,
                    "bucket": MONDAY - timedelta(days=3) + timedelta(hours=h),
                    "open": o,
                    "high": max(o, c) + rng.random(),
                    "low": min(o, c) - rng.random(),
                    "close": c,
                    "mean": rng.uniform(min(o, c), max(o, c)),
                    "samples": rng.randint(1, 720),
                    "volume": rng.uniform(0, 50) if trade else None,
                    "quote_volume": rng.uniform(0, 5000) if trade else None,
                    "trades": rng.randint(1, 900) if trade else None,
                    "ids_missing": rng.choice([0, 0, 3]) if trade else None,
                    "source": "trade" if trade else "poll",
                    "coverage": rng.random(),
                }
            )
    return pl.DataFrame(rows, schema_overrides={"bucket": UTC_US, "samples": pl.Int32})


def start_of(at: datetime, width: str) -> datetime:
    if width == "1w":
        day = at - timedelta(days=at.weekday())
        return day.replace(hour=0)
    if width == "1d":
        return at.replace(hour=0)
    if width == "4h":
        return at.replace(hour=at.hour - at.hour % 4)
    return at


@pytest.mark.parametrize("width", ["1h", "4h", "1d", "1w"])
def test_wider_bars_equal_a_plain_python_aggregate_of_the_hours(width: str) -> None:
    hourly = random_hourly(3)
    got = wider_bars(hourly, width)
    hours_in = {"1h": 1, "4h": 4, "1d": 24, "1w": 168}[width]
    groups: dict[tuple[str, datetime], list[dict]] = {}
    for bar in hourly.sort("symbol", "bucket").iter_rows(named=True):
        groups.setdefault((bar["symbol"], start_of(bar["bucket"], width)), []).append(bar)
    assert got.height == len(groups)
    for row in got.iter_rows(named=True):
        hs = groups[(row["symbol"], row["bucket"])]
        assert (row["open"], row["close"]) == (hs[0]["open"], hs[-1]["close"])
        assert row["high"] == max(h["high"] for h in hs)
        assert row["low"] == min(h["low"] for h in hs)
        assert row["samples"] == sum(h["samples"] for h in hs) and row["hours"] == len(hs)
        traded = [h for h in hs if h["volume"] is not None]
        assert row["trades"] == (sum(h["trades"] for h in traded) if traded else None)
        assert row["ids_missing"] == (sum(h["ids_missing"] for h in traded) if traded else None)
        if traded:
            assert row["volume"] == pytest.approx(sum(h["volume"] for h in traded), rel=1e-12)
            assert row["vwap"] == pytest.approx(row["quote_volume"] / row["volume"], rel=1e-12)
        else:
            assert row["volume"] is None and row["vwap"] is None
        weighted = sum(h["mean"] * h["samples"] for h in hs) / sum(h["samples"] for h in hs)
        assert row["mean"] == (hs[0]["mean"] if len(hs) == 1 else pytest.approx(weighted))
        assert row["coverage"] == pytest.approx(sum(h["coverage"] for h in hs) / hours_in)
        assert row["sources"] == ",".join(sorted({h["source"] for h in hs}))
    if width == "1h":  # an hour is its own bar, bit for bit
        assert got.select("open", "high", "low", "close", "mean").equals(
            hourly.sort("symbol", "bucket").select("open", "high", "low", "close", "mean")
        )
    if width == "1w":
        assert all(b.weekday() == 0 and b.hour == 0 for b in got["bucket"])


def random_trades(seed: int) -> pl.DataFrame:
    rng = random.Random(seed)
    rows, agg = [], 100
    base = int(MONDAY.timestamp() * 1000)
    ts = base
    while ts < base + 2 * HOUR_MS:
        if rng.random() > 0.02:
            rows.append(
                ("AAAUSDT", ts, round(rng.uniform(9, 11), 2), agg, rng.uniform(0.1, 2), 1 + agg % 3)
            )
        agg += 1
        ts += rng.choice([0, 150, 2_000, 20_000])
    return pl.DataFrame(
        rows, schema=["symbol", "ts", "price", "agg_id", "qty", "trades"], orient="row"
    )


@pytest.mark.parametrize("width", ["1m", "5m", "15m"])
def test_sub_hour_bars_from_trades_equal_a_plain_python_reference(width: str) -> None:
    trades = random_trades(11)
    every = {"1m": 60_000, "5m": 300_000, "15m": 900_000}[width]
    got = trade_bars_every(trades.sample(fraction=1.0, shuffle=True, seed=2), width)
    ref: dict[int, list[tuple]] = {}
    for row in sorted(trades.rows(), key=lambda r: r[3]):
        ref.setdefault(row[1] - row[1] % every, []).append(row)
    assert got.height == len(ref)
    for bar in got.iter_rows(named=True):
        ts = ref[int(bar["bucket"].timestamp() * 1000)]
        prices = [t[2] for t in ts]
        assert (bar["open"], bar["high"], bar["low"], bar["close"]) == (
            prices[0],
            max(prices),
            min(prices),
            prices[-1],
        )
        assert bar["samples"] == len(ts) and bar["trades"] == sum(t[5] for t in ts)
        assert bar["volume"] == pytest.approx(sum(t[4] for t in ts), rel=1e-12)
    # sub-hour bars roll up into the hour's trade bar
    hourly = wider_bars(got.rename({"sources": "source"}).drop("hours", "coverage"), "1h")
    hour_ref = trade_bars_every(trades, "1h")
    assert hourly.select("open", "high", "low", "close", "trades", "samples").equals(
        hour_ref.select("open", "high", "low", "close", "trades", "samples")
    )


def test_ranges_widen_to_whole_bars_and_pairs_take_freqtrades_names() -> None:
    monday = int(MONDAY.timestamp() * 1000)
    assert aligned(monday + 5, monday + 3 * 24 * HOUR_MS, "1w") == (monday, monday + 7 * 86_400_000)
    assert aligned(monday + 5 * HOUR_MS, monday + 6 * HOUR_MS, "1d") == (
        monday,
        monday + 86_400_000,
    )
    assert aligned(monday, monday + 86_400_000, "1d") == (monday, monday + 86_400_000)
    assert [pair_name(s) for s in ("BTCUSDT", "ETHBTC", "SOLFDUSD")] == [
        "BTC/USDT",
        "ETH/BTC",
        "SOL/FDUSD",
    ]


@pytest.fixture
def live(pgs: Settings, tmp_path: Path) -> tuple[Settings, int]:
    """Five hours of poll and trade ticks rolled up, archived and purged."""
    first = hour_floor(now_ms()) - 6 * HOUR_MS
    settings = replace(pgs, archive_dir=str(tmp_path / "archive"), interval_s=5.0)
    stage(settings.staging_path, first, 5)
    run_rollup(replace(settings, raw_retention_h=0.5))
    return settings, first


FREQTRADE_SCHEMA = pa.schema(
    [("date", pa.timestamp("ns", tz="UTC"))]
    + [(c, pa.float64()) for c in ("open", "high", "low", "close", "volume")]
)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "freqtrade"])
def test_export_bars_writes_one_file_per_symbol_in_each_format(
    live: tuple[Settings, int], tmp_path: Path, fmt: str
) -> None:
    settings, first = live
    out = tmp_path / "out"
    symbols = (*POLLED, *TRADED)
    env = etl_env(replace(settings, symbols=symbols))
    args = ["export", "bars", "--since", iso(first), "--width", "4h", "--format", fmt]
    done = run_etl([*args, "--out", str(out)], env)
    assert done.returncode == 0, done.stderr
    hourly = query(
        settings.pg_dsn,  # type: ignore[arg-type]
        "SELECT symbol, bucket, open, high, low, close, volume FROM metrics_hourly "
        "ORDER BY symbol, bucket",
    )
    for symbol in symbols:
        mine = hourly.filter(pl.col("symbol") == symbol)
        if fmt == "freqtrade":
            path = out / f"{pair_name(symbol).replace('/', '_')}-4h.feather"
            table = feather.read_table(path)
            assert table.schema.equals(FREQTRADE_SCHEMA)  # what freqtrade's download-data writes
            frame = pl.from_arrow(table)
            assert isinstance(frame, pl.DataFrame)
            if symbol in POLLED:
                assert set(frame["volume"].to_list()) == {0.0}  # no trades: volume 0
        else:
            path = out / f"{symbol}-4h.{fmt}"
            frame = pl.read_parquet(path) if fmt == "parquet" else pl.read_csv(path)
        assert frame["open"][0] == mine["open"][0] and frame["close"][-1] == mine["close"][-1]
        assert frame["high"].max() == mine["high"].max()
    assert "bars written" in done.stdout


def test_freqtrades_own_loader_reads_the_export(live: tuple[Settings, int], tmp_path: Path) -> None:
    history = pytest.importorskip(
        "freqtrade.data.history",
        reason="freqtrade is not installed (pip install -e '.[freqtrade]'); the schema is "
        "checked by test_export_bars_writes_one_file_per_symbol_in_each_format either way",
    )
    settings, first = live
    out = tmp_path / "user_data" / "data" / "binance"
    env = etl_env(replace(settings, symbols=("SOLUSDT",)))
    for width in ("1h", "5m"):
        args = ["export", "bars", "--since", iso(first), "--width", width]
        done = run_etl([*args, "--format", "freqtrade", "--out", str(out)], env)
        assert done.returncode == 0, done.stderr
    ours = pl.from_arrow(feather.read_table(out / "SOL_USDT-1h.feather"))
    loaded = history.load_pair_history(
        pair="SOL/USDT", timeframe="1h", datadir=out, data_format="feather", fill_up_missing=False
    )
    assert list(loaded.columns) == ["date", "open", "high", "low", "close", "volume"]
    assert len(loaded) == ours.height == 5
    assert loaded["close"].tolist() == ours["close"].to_list()
    assert loaded["volume"].tolist() == ours["volume"].to_list()
    assert [int(d.timestamp() * 1000) for d in loaded["date"]] == [
        first + k * HOUR_MS for k in range(5)
    ]
    five = history.load_pair_history(
        pair="SOL/USDT", timeframe="5m", datadir=out, data_format="feather", fill_up_missing=False
    )
    assert len(five) == 4 * 12 + 6  # from half past the first hour, every 5 minutes


def test_sub_hour_bars_of_a_trade_symbol_come_from_its_archived_trades(
    live: tuple[Settings, int], tmp_path: Path
) -> None:
    settings, first = live
    env = etl_env(replace(settings, symbols=("XRPUSDT",)))
    out = tmp_path / "out"
    args = ["export", "bars", "--since", iso(first), "--width", "1m", "--out", str(out)]
    done = run_etl(args, env)
    assert done.returncode == 0, done.stderr
    got = pl.read_parquet(out / "XRPUSDT-1m.parquet")
    assert got.height == 5 * 60 - 1  # a trade every 10 s, but for the gap of a minute in hour 2
    assert got["ids_missing"].sum() == 2 * 6  # the minute's 6 ids, in the bars on either side
    hourly = query(
        settings.pg_dsn,  # type: ignore[arg-type]
        "SELECT open, close, high, low, trades FROM metrics_hourly WHERE symbol = 'XRPUSDT' "
        "ORDER BY bucket",
    )
    per_hour = got.group_by(pl.col("bucket").dt.truncate("1h"), maintain_order=True).agg(
        pl.col("open").first(),
        pl.col("close").last(),
        pl.col("high").max(),
        pl.col("low").min(),
        pl.col("trades").sum(),
    )
    assert per_hour.drop("bucket").rows() == hourly.rows()


def test_sub_hour_bars_of_a_poll_sourced_symbol_are_refused(
    live: tuple[Settings, int], tmp_path: Path
) -> None:
    settings, first = live
    env = etl_env(replace(settings, symbols=("BTCUSDT", "XRPUSDT")))
    done = run_etl(
        ["export", "bars", "--since", iso(first), "--width", "5m", "--out", str(tmp_path / "o")],
        env,
    )
    assert done.returncode == 2
    line = one_line(done)
    assert "BTCUSDT is poll-sourced" in line and "5m bars are made from trades" in line
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_export_ticks_gives_back_every_archived_tick(
    live: tuple[Settings, int], tmp_path: Path
) -> None:
    settings, first = live
    env = etl_env(replace(settings, symbols=("BTCUSDT", "SOLUSDT")))
    out = tmp_path / "ticks"
    done = run_etl(
        ["export", "ticks", "--since", iso(first), "--out", str(out), "--format", "csv"], env
    )
    assert done.returncode == 0, done.stderr
    polls = pl.read_csv(out / "ticks-poll.csv", try_parse_dates=True)
    trades = pl.read_csv(out / "ticks-trade.csv", try_parse_dates=True)
    assert polls["symbol"].unique().to_list() == ["BTCUSDT"]
    assert polls.height == 5 * 720 + 1  # five hours of polls and the tie
    assert trades["symbol"].unique().to_list() == ["SOLUSDT"]
    assert trades["agg_id"].is_sorted() and trades.columns[-3:] == ["agg_id", "qty", "trades"]
