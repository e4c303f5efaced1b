"""The fake exchange's market model over real HTTP: realistic symbols with tick sizes, aggregate
trades that add up to the klines exactly, and ``/api/v3/aggTrades`` as Binance serves it."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import requests

from etl.config import DEFAULT_SYMBOLS, SYMBOL_RE
from etl.exchange.fake.market import REAL_SYMBOLS, Market, split_symbol
from etl.exchange.fake.rest import FakeExchange, served
from tests.conftest import FIXTURES, VirtualClock

MINUTE = 60_000
HOUR = 3_600_000
SYMBOLS = ["BTCUSDT", "XRPUSDT", "ETHBTC", "SHIBUSDT", "BTCTRY"]


def get(ex: FakeExchange, path: str, **params: Any) -> requests.Response:
    return requests.get(ex.url + path, params=params, timeout=10)


def ok(ex: FakeExchange, path: str, **params: Any) -> Any:
    resp = get(ex, path, **params)
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.fixture
def fake(vclock: VirtualClock) -> Iterator[FakeExchange]:
    vclock.now += 25.5  # mid-minute: the current minute is partly traded
    with FakeExchange(SYMBOLS, clock=vclock, ws=False) as ex:
        yield ex


def now_ms(ex: FakeExchange) -> int:
    return int(ex.clock() * 1000)


def page_from(ex: FakeExchange, symbol: str, first_id: int, until_ms: int) -> list[dict]:
    """Every aggregate trade from ``first_id`` to ``until_ms``, paged by ``fromId``."""
    rows: list[dict] = []
    cursor = first_id
    while True:
        page = ok(ex, "/api/v3/aggTrades", symbol=symbol, fromId=cursor, limit=1000)
        rows += [r for r in page if r["T"] <= until_ms]
        if not page or page[-1]["T"] > until_ms or len(page) < 1000:
            return rows
        cursor = page[-1]["a"] + 1


def trades_between(ex: FakeExchange, symbol: str, start: int, end: int) -> list[dict]:
    first = ok(
        ex, "/api/v3/aggTrades", symbol=symbol, startTime=start, endTime=start + HOUR, limit=1
    )
    return page_from(ex, symbol, first[0]["a"], end)


def aggregate(trades: list[dict]) -> tuple[Decimal, ...]:
    """A kline's open, high, low, close, volume, quote volume, count, taker buy base and quote."""
    prices = [Decimal(t["p"]) for t in trades]
    qty = [Decimal(t["q"]) for t in trades]
    buy = [not t["m"] for t in trades]
    return (
        prices[0],
        max(prices),
        min(prices),
        prices[-1],
        sum(qty, Decimal(0)),
        sum((p * q for p, q in zip(prices, qty, strict=True)), Decimal(0)),
        Decimal(sum(t["l"] - t["f"] + 1 for t in trades)),
        sum((q for q, b in zip(qty, buy, strict=True) if b), Decimal(0)),
        sum((p * q for p, q, b in zip(prices, qty, buy, strict=True) if b), Decimal(0)),
    )


def kline_fields(row: list[Any]) -> tuple[Decimal, ...]:
    return tuple(Decimal(str(row[i])) for i in (1, 2, 3, 4, 5, 7, 8, 9, 10))


# -- symbols -----------------------------------------------------------------------------------


def test_symbols_are_real_pairs_first_then_plausible_generated_ones() -> None:
    ex = FakeExchange(3000, ws=False)
    names = list(ex.market.symbols)
    assert names[:5] == list(DEFAULT_SYMBOLS)
    assert len(names) == len(set(names)) == 3000
    assert {"DOGEUSDT", "ADAUSDT", "ETHBTC", "BNBBTC"} <= set(names[:110])
    assert names[: len(REAL_SYMBOLS)] == list(DEFAULT_SYMBOLS) + [
        s for s in REAL_SYMBOLS if s not in DEFAULT_SYMBOLS
    ]
    assert len(REAL_SYMBOLS) >= 100
    generated = names[len(REAL_SYMBOLS) :]
    assert all(SYMBOL_RE.fullmatch(s) for s in names)
    quotes = [split_symbol(s)[1] for s in generated]
    assert set(quotes) == {"USDT", "BTC", "ETH", "FDUSD", "TRY", "EUR"}
    assert quotes.count("USDT") > len(quotes) / 3
    assert all(3 <= len(split_symbol(s)[0]) <= 6 for s in generated)
    assert list(FakeExchange(3000, ws=False).market.symbols) == names  # deterministic
    ex.stop()


def test_exchange_info_carries_price_and_lot_filters_like_the_recorded_one(
    fake: FakeExchange,
) -> None:
    recorded = json.loads((FIXTURES / "exchange_info_excerpt_2025.json").read_text())["symbols"][0]
    served = ok(fake, "/api/v3/exchangeInfo")["symbols"]
    recorded_filters = {f["filterType"]: f for f in recorded["filters"]}
    for info in served:
        assert set(info) <= set(recorded)
        assert {"baseAsset", "quoteAsset", "status", "filters"} <= set(info)
        assert info["baseAsset"] + info["quoteAsset"] == info["symbol"]
        filters = {f["filterType"]: f for f in info["filters"]}
        for kind in ("PRICE_FILTER", "LOT_SIZE"):
            assert set(filters[kind]) == set(recorded_filters[kind])
        tick = filters["PRICE_FILTER"]["tickSize"]
        assert Decimal(tick) == fake.market.tick_size(info["symbol"])
        assert Decimal(filters["LOT_SIZE"]["stepSize"]) == fake.market.step_size(info["symbol"])
    ticks = {i["symbol"]: i["filters"][0]["tickSize"] for i in served}
    assert ticks["BTCUSDT"] == "0.01000000"
    assert ticks["XRPUSDT"] == "0.00010000"
    assert ticks["ETHBTC"] == recorded_filters["PRICE_FILTER"]["tickSize"] == "0.00001000"
    assert ticks["SHIBUSDT"] == "0.00000001"


def test_ticker_prices_are_multiples_of_the_tick_with_eight_decimals(vclock: VirtualClock) -> None:
    with FakeExchange(300, clock=vclock, ws=False) as ex:
        for _ in range(3):
            vclock.now += 17.3
            for row in ok(ex, "/api/v3/ticker/price"):
                whole, _, frac = row["price"].partition(".")
                assert whole.isdigit() and len(frac) == 8, row
                price = Decimal(row["price"])
                assert price > 0 and price % ex.market.tick_size(row["symbol"]) == 0, row


# -- trades and klines -------------------------------------------------------------------------


def test_every_minute_of_trades_aggregates_to_its_kline_exactly(fake: FakeExchange) -> None:
    now = now_ms(fake)
    end = now // MINUTE * MINUTE  # the current minute is still open
    start = end - 90 * MINUTE
    for symbol in SYMBOLS:
        klines = ok(
            fake, "/api/v3/klines", symbol=symbol, interval="1m", startTime=start, limit=1000
        )
        closed = [k for k in klines if k[0] < end]
        assert [k[0] for k in closed] == list(range(start, end, MINUTE))
        trades = trades_between(fake, symbol, start, end - 1)
        for k in closed:
            minute = [t for t in trades if k[0] <= t["T"] <= k[6]]
            assert len(minute) >= 4
            assert aggregate(minute) == kline_fields(k), (symbol, k[0])
            assert [t.row() for t in fake.market.trades(symbol, k[0] // MINUTE)] == minute


def test_hourly_bars_from_trades_equal_the_1h_klines(fake: FakeExchange) -> None:
    end = now_ms(fake) // HOUR * HOUR
    start = end - 3 * HOUR
    for symbol in SYMBOLS:
        hours = ok(fake, "/api/v3/klines", symbol=symbol, interval="1h", startTime=start)
        closed = [k for k in hours if k[0] < end]
        assert len(closed) == 3
        trades = trades_between(fake, symbol, start, end - 1)
        for k in closed:
            assert aggregate([t for t in trades if k[0] <= t["T"] <= k[6]]) == kline_fields(k)


def test_the_open_minute_shows_only_what_has_traded(fake: FakeExchange) -> None:
    now = now_ms(fake)
    for symbol in SYMBOLS:
        kline = ok(fake, "/api/v3/klines", symbol=symbol, interval="1m", limit=1)[-1]
        assert kline[0] == now // MINUTE * MINUTE
        so_far = [t for t in fake.market.trades(symbol, now // MINUTE) if now >= t.T]
        assert so_far and len(so_far) < len(fake.market.trades(symbol, now // MINUTE))
        assert kline_fields(kline) == aggregate([t.row() for t in so_far])
        ticker = ok(fake, "/api/v3/ticker/price", symbol=symbol)["price"]
        assert ticker == so_far[-1].p  # the price of the last trade at or before now
        recent = ok(fake, "/api/v3/aggTrades", symbol=symbol)
        assert len(recent) == 500 and recent[-1]["a"] == so_far[-1].a
        assert fake.market.last_trade_id(symbol) == so_far[-1].a


def test_future_trades_are_never_served(fake: FakeExchange, vclock: VirtualClock) -> None:
    now = now_ms(fake)
    last = fake.market.last_trade_id("BTCUSDT")
    later = ok(fake, "/api/v3/aggTrades", symbol="BTCUSDT", fromId=last - 2, limit=1000)
    assert [r["a"] for r in later] == [last - 2, last - 1, last]
    assert ok(fake, "/api/v3/aggTrades", symbol="BTCUSDT", fromId=last + 1) == []
    window = ok(
        fake, "/api/v3/aggTrades", symbol="BTCUSDT", startTime=now - 50_000, endTime=now + 60_000
    )
    assert window and max(r["T"] for r in window) <= now
    vclock.now += 120
    moved = ok(fake, "/api/v3/aggTrades", symbol="BTCUSDT", fromId=last + 1, limit=1000)
    assert moved[0]["a"] == last + 1 and max(r["T"] for r in moved) <= now_ms(fake)


def test_the_ticker_follows_the_trades_as_the_clock_moves(
    fake: FakeExchange, vclock: VirtualClock
) -> None:
    for _ in range(40):
        vclock.now += 1.7
        at = now_ms(fake)
        price = ok(fake, "/api/v3/ticker/price", symbol="XRPUSDT")["price"]
        minute = fake.market.trades("XRPUSDT", at // MINUTE)
        done = [t for t in minute if at >= t.T]
        expected = done[-1].p if done else fake.market.trades("XRPUSDT", at // MINUTE - 1)[-1].p
        assert price == expected
        assert fake.market.price("XRPUSDT", at) == float(expected)


# -- aggTrades paging, windows, weight, errors ---------------------------------------------------


def test_paging_by_from_id_gives_every_id_once_and_in_order(fake: FakeExchange) -> None:
    now = now_ms(fake)
    first = fake.market.agg_trades(
        "ETHBTC", start_ms=now - 3 * HOUR, end_ms=now - 2 * HOUR, limit=1
    )
    rows = page_from(fake, "ETHBTC", first[0].a, now)
    ids = [r["a"] for r in rows]
    assert len(ids) > 2000  # several pages of 1000
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert ids[-1] == fake.market.last_trade_id("ETHBTC")
    assert all(b["f"] == a["l"] + 1 for a, b in itertools.pairwise(rows))
    assert all(r["l"] >= r["f"] for r in rows)
    assert all(b["T"] >= a["T"] for a, b in itertools.pairwise(rows))
    assert all(set(r) == {"a", "p", "q", "f", "l", "T", "m", "M"} and r["M"] is True for r in rows)


def test_the_first_trade_is_at_the_listing(fake: FakeExchange) -> None:
    first = fake.market.first_trade_id("BTCUSDT")
    rows = ok(fake, "/api/v3/aggTrades", symbol="BTCUSDT", fromId=0, limit=3)
    assert [r["a"] for r in rows] == [first, first + 1, first + 2]
    assert rows[0]["T"] // MINUTE == fake.market.listing_minute


def test_start_and_end_time_select_an_inclusive_window(fake: FakeExchange) -> None:
    now = now_ms(fake)
    minute = (now - 2 * HOUR) // MINUTE
    model = [t for m in range(minute, minute + 3) for t in fake.market.trades("SHIBUSDT", m)]
    start, end = model[5].T, model[-5].T  # boundaries on trade times: inclusive
    rows = ok(fake, "/api/v3/aggTrades", symbol="SHIBUSDT", startTime=start, endTime=end)
    assert [r["a"] for r in rows] == [t.a for t in model if start <= t.T <= end]
    assert rows[0]["T"] == start and rows[-1]["T"] == end
    limited = ok(
        fake, "/api/v3/aggTrades", symbol="SHIBUSDT", startTime=start, endTime=end, limit=7
    )
    assert limited == rows[:7]
    only_start = ok(fake, "/api/v3/aggTrades", symbol="SHIBUSDT", startTime=start, limit=1000)
    assert only_start[: len(rows)] == rows and all(r["T"] >= start for r in only_start)
    exactly_an_hour = get(
        fake, "/api/v3/aggTrades", symbol="SHIBUSDT", startTime=start, endTime=start + HOUR
    )
    assert exactly_an_hour.status_code == 200


def test_agg_trades_weight_is_counted(fake: FakeExchange) -> None:
    before = fake.weight_used()
    used = []
    for _ in range(3):
        resp = get(fake, "/api/v3/aggTrades", symbol="BTCUSDT", limit=10)
        used.append(int(resp.headers["X-MBX-USED-WEIGHT-1M"]))
    assert used == [before + 4, before + 8, before + 12]
    assert fake.weight_used() == before + 12


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({}, -1102),
        ({"symbol": "NOPEUSDT"}, -1121),
        ({"symbol": "BTCUSDT", "limit": 0}, -1130),
        ({"symbol": "BTCUSDT", "limit": 1001}, -1130),
        ({"symbol": "BTCUSDT", "fromId": "abc"}, -1100),
        ({"symbol": "BTCUSDT", "startTime": -5}, -1100),
        ({"symbol": "BTCUSDT", "fromId": 5, "startTime": 0}, -1128),
        ({"symbol": "BTCUSDT", "startTime": 0, "endTime": HOUR + 1}, -1127),
    ],
)
def test_agg_trades_bad_parameters_get_binance_error_codes(
    fake: FakeExchange, params: dict[str, Any], code: int
) -> None:
    resp = get(fake, "/api/v3/aggTrades", **params)
    body = resp.json()
    assert resp.status_code == 400 and set(body) == {"code", "msg"}
    assert body["code"] == code and body["msg"]
    assert int(resp.headers["X-MBX-USED-WEIGHT-1M"]) >= 4


# -- determinism and cost ----------------------------------------------------------------------


def test_trades_are_deterministic_per_symbol_and_minute(vclock: VirtualClock) -> None:
    one = Market(SYMBOLS, clock=vclock)
    two = Market(list(reversed(SYMBOLS)), clock=vclock)
    minute = int(vclock.now // 60) - 30
    two.trades("BTCUSDT", minute + 5)  # drawn in another order
    for symbol in SYMBOLS:
        assert one.trades(symbol, minute) == two.trades(symbol, minute)
    other_seed = Market(SYMBOLS, clock=vclock, seed=8)
    assert other_seed.trades("BTCUSDT", minute) != one.trades("BTCUSDT", minute)


def test_a_minute_of_a_thousand_symbols_gives_twenty_thousand_trades(vclock: VirtualClock) -> None:
    # How fast they come is the 3,000-symbol trade test's business (and a bench's), not a timer's
    # here: a timed unit test fails on a busy machine without anything being wrong.
    market = Market(1000, clock=vclock, trades_per_minute=20)
    minute = int(vclock.now // 60)
    per_symbol = [len(market.trades(symbol, minute + 1)) for symbol in market.symbols]
    assert sum(per_symbol) > 15_000
    assert min(per_symbol) > 0  # every symbol trades


def test_command_line_serves_trades_and_streams() -> None:
    with served("--symbols", "50", "--trades-per-minute", "120") as (url, ws):
        assert ws is not None and ws.startswith("ws://127.0.0.1:")
        info = requests.get(url + "/api/v3/exchangeInfo", timeout=10).json()
        assert len(info["symbols"]) == 50
        rows = requests.get(url + "/api/v3/aggTrades?symbol=DOGEUSDT&limit=5", timeout=10).json()
        assert len(rows) == 5
