"""Trade bars and trade continuity, part by part: the pure transforms against plain-Python
references, hole detection, the chain of ids, the parsers, connection groups over real sockets,
and the bar rule in a real PostgreSQL (a complete trade bar beats a poll bar; one with a hole
does not)."""

from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest

from etl.bars import edge_missing, id_gaps, trade_bars
from etl.collect.trade_feed import Chain, runs
from etl.config import Settings
from etl.exchange.fake.rest import FakeExchange
from etl.exchange.fake.stream import StreamRules
from etl.exchange.parse import parse_agg_trades, parse_trade_events
from etl.exchange.stream import MAX_STREAMS, TradeStream, stream_groups, stream_url
from etl.hours import HOUR_MS, hour_floor
from etl.jobs.rollup import run_rollup
from etl.staging.store import Staging
from tests.conftest import VirtualClock
from tests.pgutil import query, seed_ticks

H = 1_767_225_600_000  # 2026-01-01T00:00Z


def random_trades(seed: int, holes: bool) -> pl.DataFrame:
    """Two symbols over three hours, ids in order with times, some ids missing if ``holes``."""
    rng = random.Random(seed)
    rows = []
    for sym in (1, 2):
        agg, ts = 1000 * sym, H + rng.randrange(0, 60_000)
        while ts < H + 3 * HOUR_MS:
            if not (holes and rng.random() < 0.01):
                price = round(rng.uniform(90, 110), 2)
                rows.append(
                    (sym, ts, price, agg, round(rng.uniform(0.001, 3), 3), rng.randint(1, 4))
                )
            agg += 1
            ts += rng.choice([0, 0, 1, 250, 4_000, 30_000])
    rng.shuffle(rows)  # the rollup must not rely on the order it reads
    return pl.DataFrame(
        rows, schema=["sym", "ts", "price", "agg_id", "qty", "trades"], orient="row"
    )


def reference(trades: pl.DataFrame) -> dict[tuple[int, int], dict]:
    """The bars and missing ids in plain Python, one trade at a time."""
    out: dict[tuple[int, int], dict] = {}
    ordered = sorted(trades.rows(), key=lambda r: (r[0], r[3]))
    prev = None
    for sym, ts, price, agg, qty, n in ordered:
        key = (sym, ts // HOUR_MS * HOUR_MS)
        bar = out.setdefault(
            key,
            {"prices": [], "qty": 0.0, "quote": 0.0, "n": 0, "missing": 0, "ts": []},
        )
        bar["prices"].append(price)
        bar["ts"].append(ts)
        bar["qty"] += qty
        bar["quote"] += price * qty
        bar["n"] += n
        if prev is not None and prev[0] == sym and agg - prev[3] > 1:
            bar["missing"] += agg - prev[3] - 1
            earlier = (sym, prev[1] // HOUR_MS * HOUR_MS)
            if earlier != key:
                out[earlier]["missing"] += agg - prev[3] - 1
        prev = (sym, ts, price, agg)
    return out


@pytest.mark.parametrize("holes", [False, True])
def test_trade_bars_equal_a_plain_python_reference(holes: bool) -> None:
    trades = random_trades(7, holes)
    symbols = pl.DataFrame({"sym": [1, 2], "symbol": ["AAAUSDT", "BBBUSDT"]})
    cursors = pl.DataFrame(
        {"sym": [1, 2], "last_ts": [H + 9 * HOUR_MS] * 2, "since_ms": [H] * 2, "live_ms": [0, 0]}
    )
    bars = trade_bars(trades, symbols, cursors=cursors)
    ref = reference(trades)
    assert bars.height == len(ref) == 6
    names = {1: "AAAUSDT", 2: "BBBUSDT"}
    for bar in bars.iter_rows(named=True):
        sym = 1 if bar["symbol"] == "AAAUSDT" else 2
        want = ref[(sym, int(bar["bucket"].timestamp() * 1000))]
        p = want["prices"]
        assert bar["symbol"] == names[sym] and bar["source"] == "trade"
        assert (bar["open"], bar["high"], bar["low"], bar["close"]) == (p[0], max(p), min(p), p[-1])
        assert bar["samples"] == len(p) and bar["trades"] == want["n"]
        assert bar["mean"] == pytest.approx(sum(p) / len(p), rel=1e-12)
        assert bar["volume"] == pytest.approx(want["qty"], rel=1e-12)
        assert bar["quote_volume"] == pytest.approx(want["quote"], rel=1e-12)
        assert bar["vwap"] == pytest.approx(want["quote"] / want["qty"], rel=1e-12)
        assert int(bar["first_at"].timestamp() * 1000) == want["ts"][0]
        assert int(bar["last_at"].timestamp() * 1000) == want["ts"][-1]
        assert bar["ids_missing"] == want["missing"]
        assert bar["interval_s"] is None
    assert (bars["ids_missing"].sum() > 0) == holes


def test_hole_detection_from_ids_cursors_and_recorded_holes() -> None:
    # ids 1..3 in hour 0; 7 in hour 1 (4..6 missing: both hours); 8 in hour 2
    t = pl.DataFrame(
        {
            "sym": [1, 1, 1, 1, 1],
            "ts": [0, 5, 10, HOUR_MS + 1, 2 * HOUR_MS],
            "agg_id": [1, 2, 3, 7, 8],
        }
    )
    assert id_gaps(t).sort("bucket_ms").collect().rows() == [
        (1, 0, 3),
        (1, HOUR_MS, 3),
        (1, 2 * HOUR_MS, 0),
    ]
    hours = pl.LazyFrame({"sym": [1, 1, 1], "bucket_ms": [0, HOUR_MS, 2 * HOUR_MS]})
    cursors = pl.DataFrame(
        {"sym": [1], "last_ts": [2 * HOUR_MS], "since_ms": [HOUR_MS], "live_ms": [2 * HOUR_MS + 5]}
    )
    holes = pl.DataFrame(
        {
            "sym": [1],
            "after_id": [10],
            "before_id": [20],
            "from_ms": [HOUR_MS + 9],
            "to_ms": [HOUR_MS + 99],
        }
    )
    edges = edge_missing(hours, cursors, holes).sort("bucket_ms").collect().rows()
    # hour 0 began before the chain; hour 2 is not proven past its end (live and last trade
    # inside it); hour 1 overlaps a recorded hole of 9 ids
    assert edges == [(1, 0, 1, 0), (1, HOUR_MS, 0, 9), (1, 2 * HOUR_MS, 1, 0)]
    no_cursor = edge_missing(hours, None, None).collect()
    assert no_cursor["edges"].to_list() == [1, 1, 1]  # nothing vouches for any edge


def test_the_chain_joins_runs_in_any_order_and_jumps_a_hole_only_when_told() -> None:
    chain = Chain(1, "BTCUSDT", last_id=100, last_ts=5)
    chain.add(104, 110, 40, 50)
    chain.add(90, 100, 1, 5)  # already staged: nothing moves
    assert (chain.last_id, chain.above) == (100, [[104, 110, 40, 50]])
    chain.add(102, 102, 30, 30)
    assert chain.above == [[102, 102, 30, 30], [104, 110, 40, 50]]
    chain.add(101, 101, 20, 20)
    assert (chain.last_id, chain.last_ts, chain.above) == (102, 30, [[104, 110, 40, 50]])
    assert chain.jump() == (102, 104, 30, 40)  # the hole: ids 103 only
    assert (chain.last_id, chain.last_ts, chain.above) == (110, 50, [])
    assert chain.jump() is None
    fresh = Chain(2, "ETHUSDT")
    fresh.add(50, 60, 1, 2)
    fresh.start(39, 0, 0)  # the first start's catch-up says where the chain begins
    assert (fresh.last_id, fresh.above) == (39, [[50, 60, 1, 2]])
    fresh.add(40, 49, 0, 1)
    assert (fresh.last_id, fresh.above) == (60, [])
    r = runs(
        pl.DataFrame({"sym": [2, 1, 1, 1, 1], "agg_id": [5, 9, 5, 6, 6], "ts": [4, 3, 1, 2, 2]})
    )
    assert r.rows() == [(1, 5, 6, 1, 2), (1, 9, 9, 3, 3), (2, 5, 5, 4, 4)]


def test_parsers_keep_good_trades_and_count_bad_ones() -> None:
    good = (
        '{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":2,"s":"BTCUSDT","a":12,'
        '"p":"60262.05","q":"0.001","f":100,"l":102,"T":1,"m":true,"M":true}}'
    )
    bad_price = good.replace('"60262.05"', '"-1"')
    reply = '{"result":null,"id":1,"x":"\\"e\\":\\"aggTrade\\""}'  # the mark, in a string
    frame, skipped = parse_trade_events(
        [good, "not json", bad_price, good.replace("12", "13"), reply]
    )
    assert frame.rows() == [
        ("BTCUSDT", 1, 60262.05, 12, 0.001, 3),
        ("BTCUSDT", 1, 60262.05, 13, 0.001, 3),
    ]
    assert skipped == {"bad_json": 1, "not_trade": 1, "bad_trade": 1}
    wrong_kind = good.replace('"a":12', '"a":"twelve"')  # JSON, but a field Polars cannot read
    assert parse_trade_events([good, wrong_kind])[1] == {
        "bad_json": 0,
        "not_trade": 0,
        "bad_trade": 1,
    }
    rest, skipped = parse_agg_trades(
        [
            {"a": 2, "p": "1", "q": "1", "f": 1, "l": 1, "T": 5},
            {"a": 1, "p": "1", "q": "0", "f": 1, "l": 1, "T": 4},
            7,
        ],
        "ETHUSDT",
    )
    assert rest.rows() == [("ETHUSDT", 5, 1.0, 2, 1.0, 1)] and skipped == 2


def test_the_trade_stream_reads_json_in_any_formatting_and_counts_what_holds_no_trade(
    vclock: VirtualClock,
) -> None:
    """Was: a stream whose JSON had spaces after ``:`` gave 0 trades and "0 bad messages
    skipped" (a byte pre-filter dropped every message, uncounted). Now indented JSON over
    several lines gives every trade, and the messages with none are counted by reason."""
    symbols = ["BTCUSDT", "ETHUSDT"]
    rules = StreamRules(json_style="pretty", ping_interval=1.0)
    with FakeExchange(symbols, clock=vclock, ws=rules, trades_per_minute=60) as ex:
        first = {s: ex.market.last_trade_id(s) + 1 for s in symbols}
        stream = TradeStream(ex.ws_url, symbols, exchange_ms=lambda: int(vclock.now * 1000))
        stream.start()
        lines: list[bytes] = []
        skipped: dict[str, int] = {}
        try:
            ex.stream.wait_for_connections(1)  # type: ignore[union-attr]
            for text in ("not json", '{"result": null, "id": 1}', '{"e": "aggTrade"}'):
                ex.inject_ws("message", text=text)
            vclock.now += 120
            ex.pump()
            deadline = time.monotonic() + 10
            while len(lines) < 240 or sum(skipped.values()) < 3:
                assert time.monotonic() < deadline, (len(lines), skipped)
                drained = stream.drain()
                lines += drained.lines
                for reason, n in drained.skipped.items():
                    skipped[reason] = skipped.get(reason, 0) + n
                time.sleep(0.05)
        finally:
            stream.stop()
        last = {s: ex.market.last_trade_id(s) for s in symbols}
    assert skipped == {"bad_json": 1, "not_trade": 2}  # a raw event is not the combined stream's
    trades, bad = parse_trade_events(lines)
    assert bad == {"bad_json": 0, "not_trade": 0, "bad_trade": 0}
    for symbol in symbols:
        ids = trades.filter(pl.col("symbol") == symbol)["agg_id"].to_list()
        assert ids == list(range(first[symbol], last[symbol] + 1))


def test_more_than_1024_symbols_take_more_connections_each_within_the_limit() -> None:
    assert [len(g) for g in stream_groups([f"S{i}" for i in range(2049)])] == [1024, 1024, 1]
    assert stream_url("ws://h:1/", ["BTCUSDT"]) == "ws://h:1/stream?streams=btcusdt@aggTrade"
    with FakeExchange(1100, ws=StreamRules(ping_interval=1.0)) as ex:
        symbols = sorted(ex.market.symbols)
        stream = TradeStream(ex.ws_url, symbols, exchange_ms=lambda: int(time.time() * 1000))
        stream.start()
        try:
            conns = ex.stream.wait_for_connections(2)  # type: ignore[union-attr]
            assert sorted(len(c.streams) for c in conns) == [1100 - MAX_STREAMS, MAX_STREAMS]
            assert all(c.combined for c in conns)
            deadline = time.monotonic() + 10
            while not stream.drain().lines:  # trades flow on both
                assert time.monotonic() < deadline
                time.sleep(0.1)
        finally:
            stream.stop()


def stage_trades(path: Path, hour: int, *, hole: bool) -> None:
    """A trade collector's file: an hour of BTCUSDT trades (every 5 s) and one in the next
    hour, the cursor past it; ``hole`` leaves ids out of the hour."""
    ids = [i for i in range(721) if not (hole and 300 <= i < 310)]
    with Staging(path) as st:
        (sym,) = st.ticks.symbol_ids(["BTCUSDT"])
        st.trades.append(
            pl.DataFrame(
                {
                    "sym": [sym] * len(ids),
                    "ts": [hour + 5_000 * i + 1 for i in ids],
                    "price": [100.0 + (i % 7) for i in ids],
                    "agg_id": [10_000 + i for i in ids],
                    "qty": [0.5] * len(ids),
                    "trades": [2] * len(ids),
                }
            ),
            pl.DataFrame(
                {
                    "sym": [sym],
                    "last_id": [10_720],
                    "last_ts": [hour + HOUR_MS + 1],
                    "since_ms": [hour],
                    "live_ms": [hour + HOUR_MS + 1],
                }
            ),
        )


@pytest.mark.parametrize("hole", [False, True])
def test_a_complete_trade_bar_beats_a_poll_bar_and_one_with_a_hole_does_not(
    settings: Settings, pg_dsn: str, tmp_path: Path, hole: bool
) -> None:
    hour = hour_floor(int(time.time() * 1000)) - 3 * HOUR_MS
    poll = replace(settings, pg_dsn=pg_dsn, data_dir=tmp_path / "poll", interval_s=5.0)
    trades = replace(settings, pg_dsn=pg_dsn, data_dir=tmp_path / "trades", source="trades")
    seed_ticks(poll.staging_path, ["BTCUSDT"], hour, polls=720)  # a complete poll bar
    stage_trades(trades.staging_path, hour, hole=hole)
    run_rollup(poll)
    run_rollup(trades)
    bar = query(
        pg_dsn,
        "SELECT (extract(epoch FROM bucket) * 1000)::bigint AS hour_ms, source, samples, trades, "
        "volume, ids_missing, etl_bar_coverage(source, samples, interval_s, 5.0, ids_missing) "
        "AS coverage FROM metrics_hourly ORDER BY bucket",
    ).filter(pl.col("hour_ms") == hour)
    row = bar.row(0, named=True)
    if hole:
        assert row["source"] == "poll"  # kept: the trade bar misses 10 ids
        lost = query(pg_dsn, "SELECT sum(bars_lost) AS n FROM rollup_runs")["n"][0]
        assert lost == 1
        with Staging(trades.staging_path) as st:
            assert st.trades.cursors().height == 1
    else:
        assert (row["source"], row["samples"], row["trades"], row["volume"]) == (
            "trade",
            721 - 1,  # the trade of the next hour is its own bar
            2 * 720,
            0.5 * 720,
        )
        assert (row["ids_missing"], row["coverage"]) == (0, 1.0)
