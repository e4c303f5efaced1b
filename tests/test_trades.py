"""Trades as a source (``etl collect --source trades``): every aggregate trade over real WebSockets
from the fake exchange, with its faults, into a real staging file, rolled up into a real
PostgreSQL; the hourly bars must equal the exchange's own candles, built from the whole sequence.

The fake runs on a clock of its own: hours in the past (so they are closed for the rollup) passed
at ``SPEED`` times real time, so an hour of trades streams in about half a minute.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest
import requests
from rich.console import Console

from etl.collect.loop import Collector
from etl.collect.view import CollectorView
from etl.config import Settings, load_settings
from etl.exchange.client import BinanceClient
from etl.exchange.fake.rest import FakeExchange
from etl.exchange.fake.stream import StreamRules
from etl.exchange.governor import WeightGovernor
from etl.exchange.stream import DeliveryProof, StreamTimings
from etl.hours import HOUR_MS, hour_floor, iso, utc
from etl.jobs.reconcile import run_reconcile
from etl.jobs.rollup import run_rollup
from etl.staging.store import Staging
from etl.warehouse.store import open_warehouse
from tests.conftest import etl_env, run_etl

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
SPEED = 120.0  # exchange seconds per real second
# Compressed stream timings: the server pings every second and ends a connection after 8 s
# (its "24 hours"); the client beats every 0.5 s (pings and pongs stay under 5 messages a
# second) and replaces a connection 2 s before its end.
RULES = StreamRules(ping_interval=1.0, pong_timeout=5.0, max_lifetime=8.0)
TIMINGS = StreamTimings(
    lifetime_s=8.0,
    rotate_margin_s=2.0,
    heartbeat_s=0.5,
    pong_timeout_s=1.5,
    silence_s=2.5,
    backoff_s=0.2,
    backoff_max_s=1.0,
    delivery_slack_ms=int(0.2 * SPEED * 1000),  # the fake's 50 ms pump is 6 s of its time
)


class FastClock:
    """The fake exchange's clock: from ``start`` (epoch s), ``speed`` times real time."""

    def __init__(self, start: float, speed: float = SPEED) -> None:
        self.start, self.speed, self.t0 = start, speed, time.time()

    def __call__(self) -> float:
        return self.start + (time.time() - self.t0) * self.speed


@pytest.fixture
def hour() -> int:
    """The hour to collect whole: five hours ago (closed, so the rollup takes it)."""
    return hour_floor(int(time.time() * 1000)) - 5 * HOUR_MS


@pytest.fixture
def fast(hour: int) -> Iterator[tuple[FakeExchange, FastClock]]:
    # Start 15 minutes before the hour: the collector's first start catches up from the start
    # of the hour it starts in (the hour before), then streams through the whole hour. 15
    # minutes are 7.5 s of real time for the collector to start every chain; with 3 (1.5 s), a
    # busy machine sometimes started the last symbol's chain inside the hour, and its hour
    # before rightly came out with an unknown edge.
    clock = FastClock(hour / 1000 - 900)
    with FakeExchange(SYMBOLS, trades_per_minute=30, clock=clock, ws=RULES) as ex:
        yield ex, clock


Trading = tuple[Settings, FakeExchange, FastClock]


@pytest.fixture
def trading(settings: Settings, pg_dsn: str, fast: tuple[FakeExchange, FastClock]) -> Trading:
    """Settings that collect trades from the fast fake exchange into the test warehouse."""
    ex, clock = fast
    cfg = replace(
        settings,
        symbols=SYMBOLS,
        binance_url=ex.url,
        ws_url=ex.ws_url,
        source="trades",
        pg_dsn=pg_dsn,
    )
    return cfg, ex, clock


def wait_until(clock: FastClock, exchange_ms: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while clock() * 1000 < exchange_ms:
        assert time.monotonic() < deadline, "the fake's clock did not get there"
        time.sleep(0.05)


def candles(ex: FakeExchange, hours: list[int]) -> pl.DataFrame:
    """The exchange's 1h candles (built by the fake from every trade of the hour)."""
    rows = [(s, h, *ex.market.klines(s, HOUR_MS, h, h, 1)[0][1:9]) for s in SYMBOLS for h in hours]
    return pl.DataFrame(
        rows,
        schema=["symbol", "hour_ms", "o", "h", "l", "c", "v", "close_ms", "qv", "n"],
        orient="row",
    ).select(
        "symbol",
        "hour_ms",
        *[pl.col(c).cast(pl.Float64) for c in ("o", "h", "l", "c", "v", "qv")],
        pl.col("n").cast(pl.Int64),
    )


def assert_bars_are_the_candles(settings: Settings, ex: FakeExchange, hours: list[int]) -> None:
    result = run_rollup(settings)
    assert result.bars >= len(SYMBOLS) * len(hours), result
    with open_warehouse(settings) as wh:
        bars = wh.query(
            "SELECT symbol, (extract(epoch FROM bucket) * 1000)::bigint AS hour_ms, open, high, "
            "low, close, volume, quote_volume, trades, vwap, ids_missing, source, "
            "etl_bar_coverage(source, samples, interval_s, 5.0, ids_missing) AS coverage "
            "FROM metrics_hourly WHERE source = 'trade' ORDER BY symbol, bucket"
        )
    joined = candles(ex, hours).join(bars, on=["symbol", "hour_ms"], how="left")
    assert joined["source"].to_list() == ["trade"] * joined.height, joined
    assert joined["ids_missing"].to_list() == [0] * joined.height
    assert joined["coverage"].to_list() == [1.0] * joined.height
    for ours, theirs in (("open", "o"), ("high", "h"), ("low", "l"), ("close", "c")):
        assert joined[ours].to_list() == joined[theirs].to_list(), ours  # exact: same prices
    assert joined["trades"].to_list() == joined["n"].to_list()  # individual trades, l - f + 1
    for ours, theirs in (("volume", "v"), ("quote_volume", "qv")):
        rel = ((joined[ours] - joined[theirs]).abs() / joined[theirs]).max()
        assert rel is not None and rel < 1e-9, (ours, rel)  # float sums of 8-decimal values
    vwap = (joined["vwap"] - joined["qv"] / joined["v"]).abs() / joined["vwap"]
    assert vwap.max() < 1e-9  # type: ignore[operator]


@pytest.mark.slow
def test_trades_through_every_stream_fault_give_bars_equal_to_the_candles(
    trading: Trading, hour: int
) -> None:
    cfg, ex, clock = trading
    cfg = replace(cfg, metrics_port=0)
    screen = io.StringIO()
    collector = Collector(
        cfg,
        rollup=False,
        view=CollectorView(live=True, out=Console(file=screen, width=140, force_terminal=True)),
        trade_options={"timings": TIMINGS, "exchange_clock": clock, "hole_after_s": 60.0},
    )
    done = threading.Thread(target=collector.run, daemon=True)
    done.start()
    injected = []
    # One fault after another, inside the hour that must come out whole.
    for k, (kind, extra) in enumerate(
        [
            ("drop", {}),
            ("duplicate", {"times": 20}),
            ("reorder", {"times": 10}),
            ("silence", {"duration": 3.0}),  # past the client's pong timeout: it reconnects
            ("shutdown", {"delay": 0.5}),  # a planned disconnect: replaced before it comes
            ("rotate", {}),
            ("drop", {}),
        ]
    ):
        wait_until(clock, hour + (5 + 7 * k) * 60_000)
        injected.append(ex.inject_ws(kind, **extra))
    wait_until(clock, hour + HOUR_MS + 90_000)
    assert collector.metrics_url is not None
    scraped = requests.get(collector.metrics_url, timeout=5).text
    collector.stop.set()
    done.join(30)
    assert not done.is_alive()
    stats = collector.stats
    metric = {
        line.split()[0]: float(line.split()[1])
        for line in scraped.splitlines()
        if line and not line.startswith("#")
    }
    assert metric["etl_ticks_stored_total"] > 1000 and metric["etl_trades_caught_up_total"] > 0
    assert metric["etl_trade_stream_reconnects_total"] >= 3
    # batches of trades, not polls: no poll series, and no `_created` twin of a counter
    assert metric["etl_trade_batches_total"] == metric["etl_trade_batch_duration_seconds_count"] > 0
    assert not [name for name in metric if name.startswith(("etl_polls", "etl_poll_"))]
    assert not [name for name in metric if "_created" in name]
    drawn = screen.getvalue()  # the live table: trades per second, last trade time, lag
    for header in ("trades/s", "trades this hour", "last trade", "lag", "BTCUSDT"):
        assert header in drawn, header
    assert stats.reconnects >= 3 and stats.caught_up > 0 and stats.duplicates > 0, stats
    assert stats.holes == 0
    assert all(fault.hit for fault in injected)
    whys = {c.why for c in ex.stream.closes}  # type: ignore[union-attr]
    # The shutdown notice and the lifetime were both met by a new connection opened first and
    # the old one closed by the client, before the server would have.
    assert {"drop", "rotate"} <= whys and not whys & {"shutdown", "lifetime"}, whys
    assert_bars_are_the_candles(cfg, ex, [hour - HOUR_MS, hour])
    recon = run_reconcile(cfg, since_ms=hour - HOUR_MS, until_ms=hour + HOUR_MS)
    assert recon.height == 2 * len(SYMBOLS) and set(recon["source"]) == {"trade"}
    for field in ("open", "high", "low", "close"):
        assert recon[f"{field}_bps"].to_list() == [0.0] * recon.height  # the candle itself


@pytest.mark.slow
def test_kill_9_of_the_collector_mid_stream_then_a_restart_gives_the_same_bars(
    trading: Trading, hour: int
) -> None:
    cfg, ex, clock = trading
    env = etl_env(cfg, PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "etl", "collect", "--no-rollup"]

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    first = start()
    wait_until(clock, hour + 20 * 60_000)
    os.kill(first.pid, signal.SIGKILL)  # mid-stream, mid-batch perhaps
    first.wait(10)
    with Staging(cfg.staging_path) as st:
        killed_at = st.trades.cursors()
    assert killed_at.height == len(SYMBOLS)
    wait_until(clock, hour + 35 * 60_000)  # fifteen minutes of trades happen meanwhile
    second = start()
    wait_until(clock, hour + HOUR_MS + 90_000)
    second.send_signal(signal.SIGTERM)
    out, _ = second.communicate(timeout=20)
    assert second.returncode == 0, out
    assert "fetched over REST" in out and " 0 holes" in out, out
    assert_bars_are_the_candles(cfg, ex, [hour - HOUR_MS, hour])


def test_settings_source_and_ws_url(tmp_path: Path) -> None:
    s = load_settings(env={"ETL_SOURCE": "TRADES", "ETL_WS_URL": "ws://127.0.0.1:9/"})
    assert (s.source, s.ws_url) == ("trades", "ws://127.0.0.1:9")
    assert load_settings(env={}).source == "poll"
    bad = run_etl(["collect", "--source", "ticks"], etl_env(None, ETL_DATA_DIR=str(tmp_path)))
    assert bad.returncode == 2 and "poll, trades" in bad.stderr


@pytest.mark.slow
def test_a_hole_rest_cannot_fill_is_recorded_reported_and_backfilled_from_klines(
    trading: Trading, hour: int
) -> None:
    cfg, ex, clock = trading
    collector = Collector(
        cfg,
        rollup=False,
        view=CollectorView(live=False),
        trade_options={"timings": TIMINGS, "exchange_clock": clock, "hole_after_s": 1.0},
    )
    done = threading.Thread(target=collector.run, daemon=True)
    done.start()
    wait_until(clock, hour + 10 * 60_000)
    # The stream drops while REST answers nothing but 503: the gap cannot be fetched.
    outage = ex.inject("status", path="/api/v3/aggTrades", status=503, times=10**6)
    ex.inject_ws("drop")
    deadline = time.monotonic() + 30
    while collector.stats.holes < len(SYMBOLS):
        assert time.monotonic() < deadline, collector.stats
        time.sleep(0.1)
    outage.times = 0
    with ex._lock:
        ex.state.faults.clear()
    wait_until(clock, hour + HOUR_MS + 90_000)
    collector.stop.set()
    done.join(30)
    with Staging(cfg.staging_path) as st:
        holes = st.trades.holes()
    assert sorted(holes["symbol"]) == sorted(SYMBOLS)
    assert (holes["from_ms"] >= hour).all() and (holes["to_ms"] < hour + HOUR_MS).all()
    run_rollup(cfg)
    with open_warehouse(cfg) as wh:
        bars = wh.bars(SYMBOLS, utc(hour), utc(hour + HOUR_MS))
    minutes = range(hour // 60_000, hour // 60_000 + 60)
    assert sorted(bars["symbol"]) == sorted(SYMBOLS)  # a trade bar for each: the loop runs
    for bar in bars.iter_rows(named=True):
        made = sum(len(ex.market.trades(bar["symbol"], m)) for m in minutes)
        hole = holes.filter(pl.col("symbol") == bar["symbol"]).row(0, named=True)
        assert bar["source"] == "trade" and bar["ids_missing"] > 0
        assert bar["ids_missing"] == hole["before_id"] - hole["after_id"] - 1  # exactly the hole
        assert bar["samples"] + bar["ids_missing"] == made
    status = run_etl(["status", "--json"], etl_env(cfg))
    report = json.loads(status.stdout)
    assert status.returncode == 1 and len(report["staging"]["trade_holes_7d"]) == len(SYMBOLS)
    assert any("hole(s) in the trade ids" in p for p in report["problems"])
    filled = run_etl(
        ["backfill", "--since", iso(hour), "--until", iso(hour + HOUR_MS)], etl_env(cfg)
    )
    assert filled.returncode == 0, filled.stdout + filled.stderr
    with open_warehouse(cfg) as wh:
        after = wh.bars(SYMBOLS, utc(hour), utc(hour + HOUR_MS))
    assert after["source"].to_list() == ["kline"] * len(SYMBOLS)  # the holed bars gave way


def test_a_pong_proves_delivery_only_once_the_messages_before_it_are_read() -> None:
    """One read of the socket can hold many trades and then the pong: the library resolves the
    pong at once, while the trades still wait in its queue for our reader. The proof waits for
    them; a later pong's proof waits for its own messages, not for the end of the stream."""
    proof = DeliveryProof()
    proof.received = 3
    assert proof.pong(1_000) is None  # three messages not read yet
    assert [proof.consume(), proof.consume()] == [None, None]
    proof.received = 5
    assert proof.pong(2_000) is None
    assert proof.consume() == 1_000  # the third: the first pong's messages are all in hand
    proof.received = 9  # more arrive; the second pong needed only five
    assert proof.consume() is None and proof.consume() == 2_000
    assert proof.pong(3_000) is None and [proof.consume() for _ in range(4)][-1] == 3_000


# -- every stream message accounted for ---------------------------------------------------------


def staged_ids(path: Path) -> dict[str, list[int]]:
    """Every staged trade id, per symbol, in order."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute(
            "SELECT s.symbol, t.agg_id FROM tick_rows t JOIN symbols s ON s.id = t.sym "
            "WHERE t.agg_id IS NOT NULL ORDER BY s.symbol, t.agg_id"
        ).fetchall()
    out: dict[str, list[int]] = {}
    for symbol, agg_id in rows:
        out.setdefault(symbol, []).append(agg_id)
    return out


@pytest.mark.slow
def test_a_stream_in_spaced_json_gives_bars_equal_to_the_candles(
    settings: Settings, pg_dsn: str, hour: int
) -> None:
    """Was: a stream whose JSON had spaces after ``:`` stored 0 of about 6,000 trades and said
    "0 bad messages skipped": the byte pre-filter dropped every message. Now JSON in any
    formatting is parsed, and the whole hour comes from the stream."""
    clock = FastClock(hour / 1000 - 900)
    rules = replace(RULES, json_style="spaced")
    with FakeExchange(SYMBOLS, trades_per_minute=30, clock=clock, ws=rules) as ex:
        cfg = replace(
            settings,
            symbols=SYMBOLS,
            binance_url=ex.url,
            ws_url=ex.ws_url,
            source="trades",
            pg_dsn=pg_dsn,
        )
        out = Console(file=io.StringIO(), width=300)
        collector = Collector(
            cfg,
            rollup=False,
            view=CollectorView(live=False, out=out),
            trade_options={"timings": TIMINGS, "exchange_clock": clock, "hole_after_s": 60.0},
        )
        done = threading.Thread(target=collector.run, daemon=True)
        done.start()
        wait_until(clock, hour + HOUR_MS + 90_000)
        collector.stop.set()
        done.join(30)
        assert not done.is_alive()
        assert_bars_are_the_candles(cfg, ex, [hour - HOUR_MS, hour])
    feed = collector.feed
    assert feed is not None
    made = sum(
        len(ex.market.trades(s, m))
        for s in SYMBOLS
        for m in range(hour // 60_000, hour // 60_000 + 60)
    )
    assert feed.stats.streamed > made / 2  # the stream's own trades, not only the catch-up's
    skipped = collector.stats.stream_skipped
    assert skipped["bad_json"] == skipped["not_trade"] == skipped["bad_trade"] == 0, skipped
    assert feed.stats.messages == feed.stats.streamed + sum(skipped.values())


# Messages the stream must not store, by the reason each is counted under. The first contains
# Binance's compact aggTrade mark (the fast path), so the batch parser meets it.
BAD_MESSAGES = {
    "bad_json": [
        '{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1,"s":"BTCUSDT","a":',
        "hello",
    ],
    "not_trade": [
        '{"result": null, "id": 7}',
        '{"stream": "btcusdt@kline_1m", "data": {"e": "kline", "s": "BTCUSDT"}}',
    ],
    "bad_trade": [
        '{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1,"s":"BTCUSDT","a":900000001,'
        '"p":"0","q":"1","f":1,"l":1,"T":1,"m":true,"M":true}}'
    ],
    "unknown_symbol": [
        '{"stream": "dogeusdt@aggTrade", "data": {"e": "aggTrade", "E": 1, "s": "DOGEUSDT", '
        '"a": 900000002, "p": "0.1", "q": "1", "f": 1, "l": 1, "T": 1, "m": true, "M": true}}'
    ],
}


@pytest.mark.slow
def test_every_stream_message_not_stored_is_counted_by_reason_where_an_operator_looks(
    settings: Settings, fast: tuple[FakeExchange, FastClock], hour: int
) -> None:
    """Malformed JSON, messages that are no trade, a trade with a price of 0, a trade of a
    symbol not collected, duplicates: none is stored, each is counted under its reason in the
    summary line, the live table's header and /metrics, and every message received is either a
    trade stored or one of those."""
    ex, clock = fast
    cfg = replace(
        settings,
        symbols=SYMBOLS,
        binance_url=ex.url,
        ws_url=ex.ws_url,
        source="trades",
        metrics_port=0,
    )
    screen = io.StringIO()
    collector = Collector(
        cfg,
        rollup=False,
        view=CollectorView(live=True, out=Console(file=screen, width=300, force_terminal=True)),
        trade_options={"timings": TIMINGS, "exchange_clock": clock, "hole_after_s": 60.0},
    )
    done = threading.Thread(target=collector.run, daemon=True)
    done.start()
    try:
        wait_until(clock, hour - 600_000)
        faults = {
            reason: [ex.inject_ws("message", text=t, stream="btcusdt@aggTrade") for t in texts]
            for reason, texts in BAD_MESSAGES.items()
        }
        doubled = ex.inject_ws("duplicate", times=5)
        deadline = time.monotonic() + 20
        while not all(f.hit for fs in faults.values() for f in fs) or not doubled.hit:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # A fault hits every connection open (two while one replaces the other).
        expected = {r: sum(len(f.hit) for f in fs) for r, fs in faults.items()}
        while any(collector.stats.stream_skipped.get(r, 0) < n for r, n in expected.items()):
            assert time.monotonic() < deadline, collector.stats.stream_skipped
            time.sleep(0.05)
        assert collector.metrics_url is not None
        scraped = requests.get(collector.metrics_url, timeout=10).text
    finally:
        collector.stop.set()
        done.join(30)
    assert not done.is_alive()
    skipped = collector.stats.stream_skipped
    assert {r: skipped[r] for r in expected} == expected
    assert skipped["duplicate"] >= 5 and skipped["not_written"] == 0
    feed = collector.feed
    assert feed is not None  # every message is a trade stored or counted under a reason
    assert feed.stats.messages == feed.stats.streamed + sum(feed.stats.skipped.values())
    metric = {
        line.split()[0]: float(line.split()[1])
        for line in scraped.splitlines()
        if line and not line.startswith("#")
    }
    for reason, n in expected.items():
        assert metric[f'etl_stream_messages_skipped_total{{reason="{reason}"}}'] == n, reason
    assert metric['etl_stream_messages_skipped_total{reason="duplicate"}'] >= 5
    drawn = screen.getvalue()
    (summary,) = [line for line in drawn.splitlines() if "stopped after" in line]
    for reason, n in expected.items():
        assert f"{n} {reason}" in summary, (reason, summary)
        assert f"{n} {reason}" in drawn.replace(summary, ""), reason  # the live table's header
    assert "not stored" in drawn
    staged = staged_ids(cfg.staging_path)
    assert set(staged) == set(SYMBOLS)  # no DOGEUSDT
    assert not {900000001, 900000002} & {a for ids in staged.values() for a in ids}
    for symbol, ids in staged.items():  # and nothing else: the exchange's trades, once each
        assert len(ids) == len(set(ids)) and ids[-1] <= ex.market.last_trade_id(symbol)


@pytest.mark.slow
def test_a_first_start_checks_the_trades_streamed_before_the_rest_start_is_known(
    settings: Settings, hour: int
) -> None:
    """On a symbol's first start, the stream delivers trades before the catch-up has learnt
    where the hour began. Here REST answers 503 at first and the stream drops once, so each
    symbol holds two runs of streamed trades with a gap between them and nothing before: those
    are stored, but no cursor claims them until the REST start is known; then the catch-up
    fetches the hour from its first trade through the gap, and the ids are continuous."""
    start_hour = hour - HOUR_MS  # the fake's clock starts 40 minutes before ``hour``
    clock = FastClock(hour / 1000 - 2400)
    # 100 a minute: the hour so far is more than one page of 1,000, so the catch-up pages up to
    # the first streamed trade and must come back for the gap above it.
    with FakeExchange(SYMBOLS, trades_per_minute=100, clock=clock, ws=RULES) as ex:
        cfg = replace(
            settings, symbols=SYMBOLS, binance_url=ex.url, ws_url=ex.ws_url, source="trades"
        )
        outage = ex.inject("status", path="/api/v3/aggTrades", status=503, times=10**6)
        collector = Collector(
            cfg,
            rollup=False,
            view=CollectorView(live=False, out=Console(file=io.StringIO(), width=300)),
            trade_options={"timings": TIMINGS, "exchange_clock": clock, "hole_after_s": 120.0},
        )
        done = threading.Thread(target=collector.run, daemon=True)
        done.start()
        try:
            deadline = time.monotonic() + 30
            # REST answers nothing yet: every trade staged came from the stream.
            while collector.feed is None or collector.feed.stats.trades < 3 * len(SYMBOLS):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            feed = collector.feed
            dropped = ex.inject_ws("drop")
            while not dropped.hit:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            # Trades after the reconnect, above a gap, for every symbol (or a chain that took
            # a start from the stream alone, which the next lines refuse).
            chains = feed.chains.values
            while any(len(c.clone().above) < 2 for c in chains()):
                assert time.monotonic() < deadline, [c.above for c in chains()]
                if any(c.last_id is not None for c in chains()):
                    break
                time.sleep(0.05)
            with Staging(cfg.staging_path) as st:
                assert st.trades.cursors().height == 0  # streamed and stored, claimed by none
            assert all(c.last_id is None and not c.verified for c in chains())
            assert all(len(c.clone().above) >= 2 for c in chains())  # a gap among them
            outage.times = 0
            with ex._lock:
                ex.state.faults.clear()
            while feed.unverified():
                assert time.monotonic() < deadline + 60, [c.above for c in feed.chains.values()]
                time.sleep(0.05)
            wait_until(clock, int(clock() * 1000) + 120_000)
        finally:
            collector.stop.set()
            done.join(30)
        assert not done.is_alive()
        assert int(clock() * 1000) < hour  # all of it within the hour it started in
        staged = staged_ids(cfg.staging_path)
        with Staging(cfg.staging_path) as st:
            cursors = {r["symbol"]: r for r in st.trades.cursors().iter_rows(named=True)}
            assert st.trades.holes().height == 0
        for symbol in SYMBOLS:
            first = ex.market.last_trade_id(symbol, start_hour - 1) + 1
            ids = staged[symbol]
            assert ids == list(range(first, ids[-1] + 1)), symbol  # from the hour's first trade
            assert cursors[symbol]["since_ms"] == start_hour
            assert cursors[symbol]["last_id"] == ids[-1]
    assert collector.stats.holes == 0 and collector.stats.caught_up > 0


@pytest.mark.slow
def test_a_first_start_rest_cannot_fetch_is_said_and_starts_at_the_first_trade_streamed(
    settings: Settings, fast: tuple[FakeExchange, FastClock]
) -> None:
    """REST never answers: the streamed trades are not taken as the hour's start silently. The
    chain starts at the first trade streamed, from that trade's time (the hour's bar counts
    its unknown start), and a warning says so."""
    ex, clock = fast
    cfg = replace(settings, symbols=SYMBOLS, binance_url=ex.url, ws_url=ex.ws_url, source="trades")
    ex.inject("status", path="/api/v3/aggTrades", status=503, times=10**6)
    out = io.StringIO()
    collector = Collector(
        cfg,
        rollup=False,
        view=CollectorView(live=False, out=Console(file=out, width=400)),
        trade_options={"timings": TIMINGS, "exchange_clock": clock, "hole_after_s": 1.0},
    )
    done = threading.Thread(target=collector.run, daemon=True)
    done.start()
    try:
        deadline = time.monotonic() + 30
        while out.getvalue().count("could not be fetched") < len(SYMBOLS):
            assert time.monotonic() < deadline, out.getvalue()
            time.sleep(0.05)
    finally:
        collector.stop.set()
        done.join(30)
    staged = staged_ids(cfg.staging_path)
    with Staging(cfg.staging_path) as st:
        cursors = {r["symbol"]: r for r in st.trades.cursors().iter_rows(named=True)}
        assert st.trades.holes().height == 0
    for symbol in SYMBOLS:
        first = staged[symbol][0]  # only streamed trades: REST gave nothing
        (warning,) = [line for line in out.getvalue().splitlines() if f"{symbol}: where" in line]
        assert f"id {first} at" in warning, warning
        (trade,) = [t for t in ex.market.agg_trades(symbol, from_id=first, limit=1)]
        assert cursors[symbol]["since_ms"] == trade.T  # complete from that trade, not before


# Binance's documented limits (WebSocket Streams and the REST API's General info / LIMITS):
# at most 1024 streams on one connection, 5 incoming messages a second on a connection, 300
# connection attempts per 5 minutes from one IP, and 6,000 request weight per minute.
BINANCE_MAX_STREAMS = 1024
BINANCE_MAX_MESSAGES_PER_S = 5
BINANCE_MAX_CONNECTION_ATTEMPTS_5MIN = 300
BINANCE_WEIGHT_PER_MINUTE = 6000
MANY = 3000  # valid symbols on the trade source


@pytest.mark.slow
def test_3000_symbols_on_the_trade_source_stay_within_binance_limits(settings: Settings) -> None:
    """3,000 symbols: three connections of at most 1024 streams, no control-message burst, and a
    first start's catch-up (one aggTrades request of weight 4 per symbol: twice what a minute
    allows) spread by the weight governor over the minutes it needs, with no 429 and no trade
    lost. The exchange's clock (and the governor's minute with it) runs at 10 times real time,
    so four minutes of catch-up take half a minute."""
    now = time.time()
    hour = hour_floor(int(now * 1000)) - 3 * HOUR_MS
    clock = FastClock(hour / 1000 + 50 * 60, speed=10.0)  # 50 minutes into a closed hour
    rules = StreamRules(max_lifetime=3600.0)
    with FakeExchange(MANY, trades_per_minute=2, history_days=0.5, clock=clock, ws=rules) as ex:
        symbols = tuple(ex.market.symbols)
        assert len(symbols) == MANY
        cfg = replace(
            settings, symbols=symbols, binance_url=ex.url, ws_url=ex.ws_url, source="trades"
        )
        stop = threading.Event()
        # The governor's minutes are the exchange's: it waits for the next one in that clock's
        # seconds, which pass ten times as fast.
        governor = WeightGovernor(
            budget=cfg.weight_budget, clock=clock, sleep=lambda s: stop.wait(s / clock.speed)
        )
        client = BinanceClient(ex.url, governor=governor)
        collector = Collector(
            cfg, rollup=False, client=client, stop=stop, trade_options={"exchange_clock": clock}
        )
        done = threading.Thread(target=collector.run, daemon=True)
        done.start()
        # The first trade of the hour the collector started in, per symbol: where its
        # catch-up must begin.
        start_of = {s: ex.market.last_trade_id(s, hour - 1) + 1 for s in symbols}
        deadline = time.monotonic() + 240  # about 35 s alone, longer beside other tests
        while True:
            assert time.monotonic() < deadline, "the catch-up of 3,000 symbols did not end"
            time.sleep(2.0)
            ids = staged_frame(cfg.staging_path)
            if ids.height == MANY and ids["first"].to_list() == [
                start_of[s] for s in ids["symbol"]
            ]:
                break
        assert ex.stream is not None
        connections = ex.stream.connections  # before the stop closes them
        closes = list(ex.stream.closes)
        stop.set()
        done.join(60)
        assert not done.is_alive()
        requests_seen = ex.requests
        max_weight = ex.max_weight_used()
        violations = ex.violations
    ids = staged_frame(cfg.staging_path)
    # every symbol staged from the first trade of the hour on, not one id missing or twice
    assert ids.height == MANY and set(ids["symbol"]) == set(symbols)
    assert ids.filter(pl.col("count") != pl.col("last") - pl.col("first") + 1).is_empty(), ids
    assert collector.stats.holes == 0 and collector.stats.caught_up >= MANY
    # the streams: ceil(3000 / 1024) connections, each within the limits
    groups = -(-MANY // BINANCE_MAX_STREAMS)
    assert [c.open for c in connections].count(True) == groups, connections
    assert all(len(c.streams) <= BINANCE_MAX_STREAMS for c in connections)
    assert {s for c in connections if c.open for s in c.streams} == {
        f"{s.lower()}@aggTrade" for s in symbols
    }
    assert len(connections) < BINANCE_MAX_CONNECTION_ATTEMPTS_5MIN
    assert not [c for c in closes if c.why == "too many messages"], closes
    # the catch-up: 3,000 requests of weight 4, never past the minute's limit, never refused
    agg = [r for r in requests_seen if r.path == "/api/v3/aggTrades"]
    assert len(agg) >= MANY
    assert max_weight <= BINANCE_WEIGHT_PER_MINUTE, max_weight
    assert not [r for r in requests_seen if r.status in (418, 429)] and violations == 0


def staged_frame(path: Path) -> pl.DataFrame:
    """Per staged symbol: its first and last trade id and how many trades. Read through the
    collector's own SQLite (ADBC's): a second copy of SQLite in the process, the standard
    library's, would drop the collector's POSIX locks on the file when it closes."""
    import adbc_driver_sqlite.dbapi as adbc_sqlite

    with (
        contextlib.closing(adbc_sqlite.connect(f"file:{path}?mode=ro", autocommit=True)) as db,
        contextlib.closing(db.cursor()) as cur,
    ):
        cur.execute(
            "SELECT s.symbol, min(t.agg_id) AS first, max(t.agg_id) AS last, count(*) AS count "
            "FROM tick_rows t JOIN symbols s ON s.id = t.sym WHERE t.agg_id IS NOT NULL "
            "GROUP BY s.symbol ORDER BY s.symbol"
        )
        return pl.from_arrow(cur.fetch_arrow_table())  # type: ignore[return-value]
