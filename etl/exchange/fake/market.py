"""The fake exchange's market: symbols with prices, tick and lot sizes, minute candles and every
aggregate trade, all deterministic from a seed. The REST server (:mod:`etl.exchange.fake.rest`) and
the streams (:mod:`etl.exchange.fake.stream`) serve the same market.

Symbols are real spot pairs first (``DEFAULT_SYMBOLS``, then about a hundred well-known ones),
then generated ``<BASE><QUOTE>`` names. Each has a tick size and a lot size fitting its price.

The model, all in integer ticks and lots so that every sum is exact:

* minute candles (open, high, low, close) are a random walk per symbol, each drawn once;
* every minute holds aggregate trades, drawn lazily and deterministically per (symbol, minute):
  the first trades at the open, the last at the close, and the extremes reach the high and the
  low exactly; a kline's volume, quote volume and trade count are the sums over its trades;
* aggregate trade ids (``a``) and trade ids (``f``..``l``) run on with no holes from minute to
  minute: the counts follow a per-symbol pattern with a 97-minute period, so the first id of any
  minute is arithmetic rather than a sum over all minutes before it;
* the ticker's price at ``t`` is the price of the last trade at or before ``t``; nothing later
  than the clock's now is ever served.

>>> Market(["BTCUSDT"]).tick_size("BTCUSDT")
Decimal('0.01')
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import threading
import time
import zlib
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple

from etl.config import DEFAULT_SYMBOLS
from etl.hours import HOUR_MS, MINUTE_MS, ms

MIN_TRADES_PER_MINUTE = 4  # an open, a high, a low and a close each need a trade of their own


# Approximate prices in quote units (mid 2024): they set each symbol's level, tick and lot sizes.
_REAL_PRICES: dict[str, float] = {
    "BTCUSDT": 60000.0,
    "ETHUSDT": 2600.0,
    "BNBUSDT": 580.0,
    "SOLUSDT": 150.0,
    "XRPUSDT": 0.6,
    "DOGEUSDT": 0.12,
    "ADAUSDT": 0.35,
    "TRXUSDT": 0.15,
    "AVAXUSDT": 27.0,
    "SHIBUSDT": 0.000018,
    "DOTUSDT": 4.5,
    "LINKUSDT": 11.0,
    "BCHUSDT": 330.0,
    "LTCUSDT": 65.0,
    "NEARUSDT": 4.5,
    "POLUSDT": 0.4,
    "UNIUSDT": 7.0,
    "ICPUSDT": 8.0,
    "ETCUSDT": 19.0,
    "APTUSDT": 6.5,
    "FILUSDT": 3.6,
    "ATOMUSDT": 4.5,
    "XLMUSDT": 0.09,
    "HBARUSDT": 0.05,
    "ARBUSDT": 0.55,
    "OPUSDT": 1.5,
    "INJUSDT": 19.0,
    "SUIUSDT": 0.9,
    "PEPEUSDT": 0.000008,
    "FETUSDT": 1.2,
    "RENDERUSDT": 5.0,
    "IMXUSDT": 1.3,
    "STXUSDT": 1.6,
    "GRTUSDT": 0.15,
    "AAVEUSDT": 130.0,
    "MKRUSDT": 1900.0,
    "VETUSDT": 0.022,
    "ALGOUSDT": 0.12,
    "EGLDUSDT": 27.0,
    "SANDUSDT": 0.25,
    "MANAUSDT": 0.28,
    "AXSUSDT": 4.8,
    "THETAUSDT": 1.1,
    "FTMUSDT": 0.45,
    "RUNEUSDT": 3.5,
    "LDOUSDT": 1.0,
    "QNTUSDT": 65.0,
    "FLOWUSDT": 0.55,
    "CHZUSDT": 0.06,
    "GALAUSDT": 0.02,
    "CRVUSDT": 0.28,
    "SNXUSDT": 1.4,
    "APEUSDT": 0.6,
    "KAVAUSDT": 0.35,
    "ZECUSDT": 30.0,
    "DASHUSDT": 24.0,
    "NEOUSDT": 9.0,
    "EOSUSDT": 0.5,
    "IOTAUSDT": 0.13,
    "XTZUSDT": 0.65,
    "CAKEUSDT": 1.7,
    "1INCHUSDT": 0.25,
    "ENJUSDT": 0.14,
    "COMPUSDT": 45.0,
    "ZILUSDT": 0.013,
    "BATUSDT": 0.17,
    "WLDUSDT": 1.6,
    "SEIUSDT": 0.3,
    "TIAUSDT": 5.0,
    "JUPUSDT": 0.8,
    "WIFUSDT": 1.8,
    "BONKUSDT": 0.00002,
    "FLOKIUSDT": 0.00012,
    "ORDIUSDT": 30.0,
    "PYTHUSDT": 0.3,
    "ENAUSDT": 0.3,
    "TONUSDT": 5.5,
    "USDCUSDT": 1.0,
    "FDUSDUSDT": 1.0,
    "EURUSDT": 1.09,
    "ETHBTC": 0.043,
    "BNBBTC": 0.0095,
    "SOLBTC": 0.0025,
    "XRPBTC": 0.00001,
    "ADABTC": 0.0000058,
    "LTCBTC": 0.0011,
    "LINKBTC": 0.00018,
    "DOGEBTC": 0.000002,
    "DOTBTC": 0.000075,
    "BCHBTC": 0.0055,
    "TRXBTC": 0.0000025,
    "AVAXBTC": 0.00045,
    "BNBETH": 0.22,
    "LINKETH": 0.0042,
    "SOLETH": 0.058,
    "BTCFDUSD": 60000.0,
    "ETHFDUSD": 2600.0,
    "SOLFDUSD": 150.0,
    "BNBFDUSD": 580.0,
    "BTCUSDC": 60000.0,
    "ETHUSDC": 2600.0,
    "BTCTRY": 2050000.0,
    "ETHTRY": 88000.0,
    "USDTTRY": 34.0,
    "BNBTRY": 19700.0,
    "SOLTRY": 5100.0,
    "XRPTRY": 20.0,
    "BTCEUR": 55000.0,
    "ETHEUR": 2400.0,
    "BNBEUR": 530.0,
    "SOLEUR": 138.0,
    "XRPEUR": 0.55,
}


REAL_SYMBOLS: tuple[str, ...] = tuple(_REAL_PRICES)


def reference_price(symbol: str) -> float | None:
    """About where a real symbol traded when these figures were taken (None: not one of them);
    the fake's walks and the demo's generated history start there."""
    return _REAL_PRICES.get(symbol)


# What one unit of each quote asset is worth in USD: sizes lots and volumes alike across quotes.
_QUOTE_USD = {
    "FDUSD": 1.0,
    "USDT": 1.0,
    "USDC": 1.0,
    "TRY": 0.03,
    "EUR": 1.08,
    "BTC": 60000.0,
    "ETH": 2600.0,
    "BNB": 580.0,
}


_QUOTES_LONGEST_FIRST = sorted(_QUOTE_USD, key=len, reverse=True)


# Quotes of generated symbols, weighted roughly as Binance's listings are (out of 100).
_GENERATED_QUOTES = (("USDT", 50), ("FDUSD", 10), ("BTC", 15), ("ETH", 8), ("TRY", 10), ("EUR", 7))


_SYLLABLES = [c + v for c in "BDFGKLMNPRSTVXZ" for v in "AEIOU"]


_COUNT_PERIOD = 97  # prime: the trade-count pattern never lines up with hours or days


def _generated_quote(i: int) -> str:
    pick = (i * 37 + 11) % 100
    for quote, weight in _GENERATED_QUOTES:
        if pick < weight:
            return quote
        pick -= weight
    return "USDT"


def _generated_names() -> Iterator[str]:
    """Plausible ``<BASE><QUOTE>`` names, two syllables first, then three; never a real one."""
    real = set(REAL_SYMBOLS)
    i = 0
    for width in (2, 3):
        space = len(_SYLLABLES) ** width
        for k in range(space):
            j = (k * 2011 + 7) % space  # 2011 is prime to 75**n: a bijection that looks shuffled
            base = ""
            for _ in range(width):
                j, r = divmod(j, len(_SYLLABLES))
                base += _SYLLABLES[r]
            name = base + _generated_quote(i)
            i += 1
            if name not in real:
                yield name


def symbol_names(n: int) -> list[str]:
    """The first ``n`` symbols of the fake: real pairs (defaults first), then generated ones.

    >>> symbol_names(7)[:5] == list(DEFAULT_SYMBOLS)
    True
    """
    names = list(DEFAULT_SYMBOLS[:n])
    names += [s for s in REAL_SYMBOLS if s not in DEFAULT_SYMBOLS][: max(0, n - len(names))]
    if len(names) < n:
        gen = _generated_names()
        names += [next(gen) for _ in range(n - len(names))]
    return names


def split_symbol(symbol: str) -> tuple[str, str]:
    """``(baseAsset, quoteAsset)``: the longest known quote suffix, else the last three letters."""
    for quote in _QUOTES_LONGEST_FIRST:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    return symbol[:-3], symbol[-3:]


def fmt8(units: int) -> str:
    """An amount in units of 1e-8 as Binance writes it: ``6026205000000`` -> ``60262.05000000``."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), 100_000_000)
    return f"{sign}{whole}.{frac:08d}"


class AggTrade(NamedTuple):
    """One aggregate trade as ``/api/v3/aggTrades`` serves it."""

    a: int
    p: str
    q: str
    f: int
    l: int  # noqa: E741  (Binance's field name)
    T: int
    m: bool
    M: bool = True

    def row(self) -> dict[str, Any]:
        return self._asdict()


@dataclass(frozen=True)
class _Spec:
    """What is fixed about a symbol: its assets, precisions, level, and its trade-count pattern."""

    base: str
    quote: str
    price_dp: int  # tick size 10**-price_dp
    qty_dp: int  # lot (step) size 10**-qty_dp; price_dp + qty_dp <= 8 keeps p*q exact in 1e-8
    start_ticks: int
    mean_lots: float
    key: int  # seeds each minute's trades
    agg_pre: tuple[int, ...]  # prefix sums over the period of aggregate trades per minute
    raw_pre: tuple[int, ...]  # ... and of trades per minute

    def first_ids(self, minute: int) -> tuple[int, int]:
        q, r = divmod(minute, _COUNT_PERIOD)
        return q * self.agg_pre[-1] + self.agg_pre[r], q * self.raw_pre[-1] + self.raw_pre[r]

    def minute_of(self, agg_id: int) -> int:
        q, rest = divmod(agg_id, self.agg_pre[-1])
        return q * _COUNT_PERIOD + bisect.bisect_right(self.agg_pre, rest) - 1


@dataclass
class _Walk:
    """Minute candles of one symbol in ticks, drawn outward from an anchor minute, each once."""

    anchor: int
    forward: list[tuple[int, int, int, int]]
    backward: list[tuple[int, int, int, int]]
    rng_fwd: random.Random
    rng_bwd: random.Random
    sigma: float

    def _draw(self, rng: random.Random, edge: int, forward: bool) -> tuple[int, int, int, int]:
        step = math.exp(self.sigma * rng.gauss(0.0, 1.0))
        other = max(1, round(edge * step if forward else edge / step))
        o, c = (edge, other) if forward else (other, edge)
        spread = self.sigma * 0.8
        h = round(max(o, c) * (1 + spread * abs(rng.gauss(0.0, 1.0))))
        lo = max(1, round(min(o, c) * (1 - spread * abs(rng.gauss(0.0, 1.0)))))
        return (o, h, lo, c)

    def candle(self, minute: int) -> tuple[int, int, int, int]:
        k = minute - self.anchor
        if k >= 0:
            while len(self.forward) <= k:
                self.forward.append(self._draw(self.rng_fwd, self.forward[-1][3], True))
            return self.forward[k]
        k = -k - 1
        while len(self.backward) <= k:
            edge = self.backward[-1][0] if self.backward else self.forward[0][0]
            self.backward.append(self._draw(self.rng_bwd, edge, False))
        return self.backward[k]


class _Minute:
    """One symbol's aggregate trades in one minute, as parallel lists (trade order = id order)."""

    __slots__ = ("first_a", "first_f", "lots", "maker", "prices", "raws", "stats", "times")

    def __init__(self, first_a: int, first_f: int) -> None:
        self.first_a = first_a
        self.first_f = first_f
        self.times = array("q")
        self.prices = array("q")  # ticks
        self.lots = array("q")
        self.raws = array("q")  # trades in each aggregate trade (l - f + 1)
        self.maker: list[bool] = []
        # (volume lots, quote volume in ticks*lots, trades, taker buy lots, taker buy ticks*lots)
        self.stats: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)

    def sums(self, upto: int) -> tuple[int, int, int, int, int]:
        """Volume sums over the first ``upto`` trades."""
        if upto >= len(self.times):
            return self.stats
        vol = quote = count = tb_vol = tb_quote = 0
        for i in range(upto):
            lots, notional = self.lots[i], self.lots[i] * self.prices[i]
            vol += lots
            quote += notional
            count += self.raws[i]
            if not self.maker[i]:
                tb_vol += lots
                tb_quote += notional
        return vol, quote, count, tb_vol, tb_quote


class Market:
    """The symbols and their trades. Thread-safe (one lock for the caches).

    ``trades_per_minute`` is the mean number of aggregate trades per symbol and minute (at least
    4); ``history_days`` how far back before the start trades and klines exist (the listing);
    ``clock`` the market's now (trades after it are never served).
    """

    def __init__(
        self,
        symbols: int | Sequence[str] = DEFAULT_SYMBOLS,
        *,
        statuses: dict[str, str] | None = None,
        seed: int = 7,
        volatility: float = 0.0008,
        trades_per_minute: int = 20,
        history_days: float = 30.0,
        clock: Callable[[], float] = time.time,
        levels: dict[str, float] | None = None,
    ) -> None:
        """``levels``: where symbols trade now (default: their reference prices), e.g. the last
        closes of a demo's history, so the live prices go on from them."""
        names = symbol_names(symbols) if isinstance(symbols, int) else list(symbols)
        self.levels = dict(levels or {})
        self.symbols: dict[str, str] = dict.fromkeys(names, "TRADING")
        self.symbols.update(statuses or {})
        self.clock = clock
        self.seed = seed
        self.volatility = volatility
        self.trades_per_minute = max(MIN_TRADES_PER_MINUTE, int(trades_per_minute))
        self._specs: dict[str, _Spec] = {}
        self._walks: dict[str, _Walk] = {}
        # Trades are regenerated on demand, so both caches are bounded; summaries are small.
        self._minutes: OrderedDict[tuple[str, int], _Minute] = OrderedDict()
        # Bounded in trades, not minutes: at thousands of trades a second a minute is large.
        # Three minutes of every symbol fit: the last, the current and the next (prefetched).
        self._cached_trades = 0
        self._cache_cap = max(250_000, 3 * len(names) * self.trades_per_minute)
        self._anchor = ms(clock()) // MINUTE_MS
        self.listing_minute = self._anchor - int(history_days * 1440)
        self.lock = threading.RLock()

    def set_status(self, symbol: str, status: str | None) -> None:
        """Change a symbol's status; ``None`` delists it."""
        with self.lock:
            if status is None:
                self.symbols.pop(symbol, None)
            else:
                self.symbols[symbol] = status

    def _spec(self, symbol: str) -> _Spec:
        spec = self._specs.get(symbol)
        if spec is not None:
            return spec
        rng = random.Random(f"{self.seed}:{symbol}")
        base, quote = split_symbol(symbol)
        quote_usd = _QUOTE_USD.get(quote, 1.0)
        level = self.levels.get(symbol) or _REAL_PRICES.get(symbol)
        if level is None:
            level = math.exp(rng.uniform(math.log(0.001), math.log(5e4))) / quote_usd
        # Binance keeps about four to five significant digits in the tick, never finer than 1e-8
        # nor coarser than a cent: BTCUSDT 0.01, XRPUSDT 0.0001, ETHBTC 0.00001.
        price_dp = min(8, max(2, 3 - math.floor(math.log10(level))))
        level_usd = level * quote_usd
        qty_dp = min(8 - price_dp, max(0, math.floor(math.log10(level_usd)) + 1))
        notional_usd = math.exp(rng.uniform(math.log(50.0), math.log(5000.0)))
        counts = random.Random(f"{self.seed}:{symbol}:counts")
        agg_pre, raw_pre = [0], [0]
        for _ in range(_COUNT_PERIOD):
            n = max(MIN_TRADES_PER_MINUTE, round(self.trades_per_minute * counts.uniform(0.5, 1.5)))
            agg_pre.append(agg_pre[-1] + n)
            raw_pre.append(raw_pre[-1] + n + round(n * counts.uniform(0.0, 0.8)))
        spec = _Spec(
            base=base,
            quote=quote,
            price_dp=price_dp,
            qty_dp=qty_dp,
            start_ticks=max(1, round(level * 10**price_dp)),
            mean_lots=max(1.0, notional_usd / (level_usd * 10.0**-qty_dp)),
            key=zlib.crc32(f"{self.seed}:{symbol}".encode()),
            agg_pre=tuple(agg_pre),
            raw_pre=tuple(raw_pre),
        )
        self._specs[symbol] = spec
        return spec

    def tick_size(self, symbol: str) -> Decimal:
        """The symbol's ``PRICE_FILTER`` ``tickSize``: every price it trades at is a multiple.

        >>> Market(["BTCUSDT"]).tick_size("BTCUSDT")
        Decimal('0.01')
        """
        with self.lock:
            return Decimal(1).scaleb(-self._spec(symbol).price_dp)

    def step_size(self, symbol: str) -> Decimal:
        """The symbol's ``LOT_SIZE`` ``stepSize``: every quantity is a multiple."""
        with self.lock:
            return Decimal(1).scaleb(-self._spec(symbol).qty_dp)

    def _ticks(self, symbol: str, minute: int) -> tuple[int, int, int, int]:
        walk = self._walks.get(symbol)
        if walk is None:
            walk = _Walk(
                self._anchor,
                [],
                [],
                random.Random(f"{self.seed}:{symbol}:fwd"),
                random.Random(f"{self.seed}:{symbol}:bwd"),
                self.volatility,
            )
            walk.forward.append(walk._draw(walk.rng_fwd, self._spec(symbol).start_ticks, True))
            self._walks[symbol] = walk
        return walk.candle(minute)

    def candle(self, symbol: str, minute: int) -> tuple[float, float, float, float]:
        """The minute's whole candle (open, high, low, close), known before its trades happen."""
        with self.lock:
            scale = 10 ** self._spec(symbol).price_dp
            o, h, lo, c = self._ticks(symbol, minute)
            return (o / scale, h / scale, lo / scale, c / scale)

    def _minute(self, symbol: str, minute: int) -> _Minute:
        key = (symbol, minute)
        got = self._minutes.get(key)
        if got is not None:
            self._minutes.move_to_end(key)
            return got
        got = self._draw_trades(symbol, minute)
        self._minutes[key] = got
        self._cached_trades += len(got.times)
        while self._cached_trades > self._cache_cap and len(self._minutes) > 1:
            self._cached_trades -= len(self._minutes.popitem(last=False)[1].times)
        return got

    def prefetch(self, symbols: Sequence[str], minute: int, budget_s: float) -> int:
        """Draw the trades of ``minute`` ahead of time for as many of ``symbols`` as
        ``budget_s`` allows; how many were drawn. Spreads the work of a minute boundary."""
        deadline = time.perf_counter() + budget_s
        drawn = 0
        for symbol in symbols:
            if time.perf_counter() > deadline:
                break
            with self.lock:
                if (symbol, minute) not in self._minutes and symbol in self.symbols:
                    self._minute(symbol, minute)
                    drawn += 1
        return drawn

    def _draw_trades(self, symbol: str, minute: int) -> _Minute:
        spec = self._spec(symbol)
        o, h, lo, c = self._ticks(symbol, minute)
        first_a, first_f = spec.first_ids(minute)
        next_a, next_f = spec.first_ids(minute + 1)
        n, extra = next_a - first_a, (next_f - first_f) - (next_a - first_a)
        rng = random.Random((spec.key << 32) | (minute & 0xFFFFFFFF))
        rand, randrange = rng.random, rng.randrange
        out = _Minute(first_a, first_f)
        start = minute * MINUTE_MS
        times = sorted(start + randrange(MINUTE_MS) for _ in range(n))
        # The open first, the close last, the high and the low somewhere between; the rest
        # wander along the straight lines joining them, never outside the candle.
        i_h, i_l = rng.sample(range(1, n - 1), 2)
        anchors = sorted(((0, o), (i_h, h), (i_l, lo), (n - 1, c)))
        noise = (h - lo) * 0.25
        prices = [0] * n
        for (i0, p0), (i1, p1) in itertools.pairwise(anchors):
            prices[i0] = p0
            for i in range(i0 + 1, i1):
                mid = p0 + (p1 - p0) * (i - i0) / (i1 - i0) + noise * (2 * rand() - 1)
                prices[i] = min(h, max(lo, round(mid)))
        prices[n - 1] = c
        raws = [1] * n
        for _ in range(extra):
            raws[randrange(n)] += 1
        lam = 1.0 / spec.mean_lots
        lots = [1 + int(rng.expovariate(lam)) for _ in range(n)]
        maker = []
        prev = o
        for p in prices:
            # a trade below the last one hit the bids: the buyer was the maker
            maker.append(p < prev or (p == prev and rand() < 0.5))
            prev = p
        # arrays: a tenth of the memory of lists of int objects
        out.times, out.prices = array("q", times), array("q", prices)
        out.lots, out.raws = array("q", lots), array("q", raws)
        out.maker = maker
        out.stats = _full_sums(out)
        return out

    def trades(self, symbol: str, minute: int) -> list[AggTrade]:
        """All of the minute's aggregate trades (the model: future ones too, unlike the REST API)."""
        with self.lock:
            return self._agg_rows(symbol, self._minute(symbol, minute), 0, None)

    def _agg_rows(self, symbol: str, mt: _Minute, lo: int, hi: int | None) -> list[AggTrade]:
        spec = self._spec(symbol)
        p_scale, q_scale = 10 ** (8 - spec.price_dp), 10 ** (8 - spec.qty_dp)
        rows = []
        f = mt.first_f + sum(mt.raws[:lo])
        for i in range(lo, len(mt.times) if hi is None else hi):
            raw = mt.raws[i]
            rows.append(
                AggTrade(
                    mt.first_a + i,
                    fmt8(mt.prices[i] * p_scale),
                    fmt8(mt.lots[i] * q_scale),
                    f,
                    f + raw - 1,
                    mt.times[i],
                    mt.maker[i],
                )
            )
            f += raw
        return rows

    def price_ticks(self, symbol: str, ts_ms: int) -> int:
        """The price of the last trade at or before ``ts_ms``, in ticks."""
        with self.lock:
            minute = ts_ms // MINUTE_MS
            mt = self._minute(symbol, minute)
            i = bisect.bisect_right(mt.times, ts_ms)
            # before the minute's first trade: the last close, which is this minute's open
            return mt.prices[i - 1] if i else self._ticks(symbol, minute)[0]

    def price(self, symbol: str, ts_ms: int) -> float:
        """The price of the last trade at or before ``ts_ms``."""
        with self.lock:
            return self.price_ticks(symbol, ts_ms) / 10 ** self._spec(symbol).price_dp

    def price_text(self, symbol: str, ts_ms: int) -> str:
        """:meth:`price` as the ticker writes it: ``"60262.05000000"``."""
        with self.lock:
            return fmt8(self.price_ticks(symbol, ts_ms) * 10 ** (8 - self._spec(symbol).price_dp))

    def first_trade_id(self, symbol: str) -> int:
        """The id of the symbol's first aggregate trade (at its listing)."""
        with self.lock:
            return self._spec(symbol).first_ids(self.listing_minute)[0]

    def last_trade_id(self, symbol: str, ts_ms: int | None = None) -> int:
        """The id of the last aggregate trade at or before ``ts_ms`` (default: the clock's now)."""
        with self.lock:
            ts = ms(self.clock()) if ts_ms is None else ts_ms
            mt = self._minute(symbol, ts // MINUTE_MS)
            return mt.first_a + bisect.bisect_right(mt.times, ts) - 1

    def agg_trades(
        self,
        symbol: str,
        *,
        from_id: int | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int = 500,
        now_ms: int | None = None,
    ) -> list[AggTrade]:
        """What ``/api/v3/aggTrades`` answers (parameters already checked): never past ``now``.

        ``from_id``: from that id on; ``start_ms``/``end_ms``: the trades in that window,
        oldest first; neither: the most recent ``limit``."""
        with self.lock:
            now = ms(self.clock()) if now_ms is None else now_ms
            spec = self._spec(symbol)
            listing = self.listing_minute
            last_minute = now // MINUTE_MS
            rows: list[AggTrade] = []
            if from_id is not None:
                first = max(from_id, spec.first_ids(listing)[0])
                minute = spec.minute_of(first)
                while len(rows) < limit and minute <= last_minute:
                    mt = self._minute(symbol, minute)
                    lo = max(0, first - mt.first_a)
                    hi = bisect.bisect_right(mt.times, now)
                    if lo < hi:
                        rows += self._agg_rows(symbol, mt, lo, min(hi, lo + limit - len(rows)))
                    minute += 1
                return rows
            if start_ms is None and end_ms is None:
                minute = last_minute
                chunks: list[list[AggTrade]] = []
                got = 0
                while got < limit and minute >= listing:
                    mt = self._minute(symbol, minute)
                    hi = bisect.bisect_right(mt.times, now)
                    lo = max(0, hi - (limit - got))
                    chunks.append(self._agg_rows(symbol, mt, lo, hi))
                    got += hi - lo
                    minute -= 1
                return [row for chunk in reversed(chunks) for row in chunk]
            if start_ms is None:
                start_ms = end_ms - HOUR_MS  # type: ignore[operator]
            if end_ms is None:
                end_ms = start_ms + HOUR_MS
            end = min(end_ms, now)
            minute = max(start_ms // MINUTE_MS, listing)
            while len(rows) < limit and minute <= end // MINUTE_MS:
                mt = self._minute(symbol, minute)
                lo = bisect.bisect_left(mt.times, start_ms)
                hi = bisect.bisect_right(mt.times, end)
                if lo < hi:
                    rows += self._agg_rows(symbol, mt, lo, min(hi, lo + limit - len(rows)))
                minute += 1
            return rows

    def _minute_bar(
        self, symbol: str, minute: int, now_ms: int
    ) -> tuple[int, int, int, int, tuple[int, int, int, int, int]]:
        """(open, high, low, close) in ticks and the volume sums of the minute's trades so far."""
        o, h, lo, c = self._ticks(symbol, minute)
        if now_ms >= (minute + 1) * MINUTE_MS - 1:
            return o, h, lo, c, self._minute(symbol, minute).stats
        mt = self._minute(symbol, minute)
        upto = bisect.bisect_right(mt.times, now_ms)
        if upto == 0:  # no trade yet: a flat bar at the last close, as Binance shows one
            return o, o, o, o, (0, 0, 0, 0, 0)
        seen = mt.prices[:upto]
        return o, max(seen), min(seen), seen[-1], mt.sums(upto)

    def klines(
        self, symbol: str, step_ms: int, start: int | None, end: int | None, limit: int
    ) -> list[list[Any]]:
        now_ms = ms(self.clock())
        listing_ms = self.listing_minute * MINUTE_MS
        last_open = min(end if end is not None else now_ms, now_ms) // step_ms * step_ms
        if start is not None:
            first = -(-start // step_ms) * step_ms
        else:
            first = last_open - (limit - 1) * step_ms
        first = max(first, listing_ms // step_ms * step_ms)
        rows: list[list[Any]] = []
        with self.lock:
            spec = self._spec(symbol)
            p_scale, q_scale = 10 ** (8 - spec.price_dp), 10 ** (8 - spec.qty_dp)
            pq_scale = 10 ** (8 - spec.price_dp - spec.qty_dp)
            for open_ms in range(first, last_open + 1, step_ms):
                if len(rows) >= limit:
                    break
                lo_min = max(open_ms // MINUTE_MS, self.listing_minute)
                hi_min = min((open_ms + step_ms) // MINUTE_MS, now_ms // MINUTE_MS + 1)
                bars = [self._minute_bar(symbol, m, now_ms) for m in range(lo_min, hi_min)]
                o, c = bars[0][0], bars[-1][3]
                h = max(b[1] for b in bars)
                lo = min(b[2] for b in bars)
                vol = sum(b[4][0] for b in bars)
                quote = sum(b[4][1] for b in bars)
                count = sum(b[4][2] for b in bars)
                tb_vol = sum(b[4][3] for b in bars)
                tb_quote = sum(b[4][4] for b in bars)
                rows.append(
                    [
                        open_ms,
                        fmt8(o * p_scale),
                        fmt8(h * p_scale),
                        fmt8(lo * p_scale),
                        fmt8(c * p_scale),
                        fmt8(vol * q_scale),
                        open_ms + step_ms - 1,
                        fmt8(quote * pq_scale),
                        count,
                        fmt8(tb_vol * q_scale),
                        fmt8(tb_quote * pq_scale),
                        "0",
                    ]
                )
        return rows

    def symbol_info(self, symbol: str) -> dict[str, Any]:
        spec = self._spec(symbol)
        tick = fmt8(10 ** (8 - spec.price_dp))
        step = fmt8(10 ** (8 - spec.qty_dp))
        return {
            "symbol": symbol,
            "status": self.symbols[symbol],
            "baseAsset": spec.base,
            "baseAssetPrecision": 8,
            "quoteAsset": spec.quote,
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"],
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": tick,
                    "maxPrice": "1000000.00000000",
                    "tickSize": tick,
                },
                {
                    "filterType": "LOT_SIZE",
                    "minQty": step,
                    "maxQty": "9000000.00000000",
                    "stepSize": step,
                },
            ],
            "permissions": [],
            "permissionSets": [["SPOT"]],
        }


def _full_sums(mt: _Minute) -> tuple[int, int, int, int, int]:
    vol = quote = tb_vol = tb_quote = 0
    for lots, price, maker in zip(mt.lots, mt.prices, mt.maker, strict=True):
        notional = lots * price
        vol += lots
        quote += notional
        if not maker:
            tb_vol += lots
            tb_quote += notional
    return vol, quote, sum(mt.raws), tb_vol, tb_quote
