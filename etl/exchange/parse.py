"""Payload parsers: the exchange's JSON in, typed values and Polars frames out; a bad element is skipped and counted, never stored."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl

from etl.exchange.errors import BadResponse

if TYPE_CHECKING:
    pass


@dataclass
class ExchangeInfo:
    weight_limit: int | None
    statuses: dict[str, str]
    tick_sizes: dict[str, str] = field(default_factory=dict)


@dataclass
class PricePoll:
    """One ticker/price poll: valid prices, and what was dropped."""

    symbols: list[str]
    prices: list[float]
    received_ms: int
    skipped: int = 0
    missing: list[str] = field(default_factory=list)


def _price(value: Any) -> float | None:
    if type(value) is str:
        try:
            number = float(value)
        except ValueError:
            return None
    elif type(value) in (int, float):
        number = float(value)
    else:
        return None
    return number if math.isfinite(number) and number > 0 else None


def parse_prices(
    data: Any, symbols: Sequence[str], received_ms: int, *, listed: bool = True
) -> PricePoll:
    """Validate a ticker/price array: keep elements with a known ``symbol`` and a finite price > 0.

    With ``listed`` (the request named the symbols) an element for another symbol, a duplicate or
    a malformed element counts as skipped. Without it (an unfiltered request) other symbols are
    simply not ours.

    >>> p = parse_prices([{"symbol": "BTCUSDT", "price": "60262.05"}, {"symbol": "X"}, 7],
    ...                  ["BTCUSDT", "ETHUSDT"], 0)
    >>> p.symbols, p.prices, p.skipped, p.missing
    (['BTCUSDT'], [60262.05], 2, ['ETHUSDT'])
    """
    if not isinstance(data, list):
        raise BadResponse(f"ticker/price: expected a JSON array, got {type(data).__name__}")
    wanted = set(symbols)
    seen: set[str] = set()
    out_symbols: list[str] = []
    out_prices: list[float] = []
    skipped = 0
    for element in data:
        symbol = element.get("symbol") if type(element) is dict else None
        if type(symbol) is not str:
            skipped += 1
            continue
        if symbol not in wanted:
            skipped += listed
            continue
        price = _price(element.get("price"))
        if price is None or symbol in seen:
            skipped += 1
            continue
        seen.add(symbol)
        out_symbols.append(symbol)
        out_prices.append(price)
    missing = [s for s in symbols if s not in seen] if len(seen) < len(wanted) else []
    return PricePoll(out_symbols, out_prices, received_ms, int(skipped), missing)


# A staged trade: the symbol, the exchange's trade time T (ms), price, quantity, the aggregate
# trade id and the individual trades it aggregates (l - f + 1).
TRADE_FRAME_SCHEMA = {
    "symbol": pl.String,
    "ts": pl.Int64,
    "price": pl.Float64,
    "agg_id": pl.Int64,
    "qty": pl.Float64,
    "trades": pl.Int64,
}
_EVENT_FIELDS = {
    "e": pl.String,
    "s": pl.String,
    "a": pl.Int64,
    "p": pl.String,
    "q": pl.String,
    "f": pl.Int64,
    "l": pl.Int64,
    "T": pl.Int64,
}


def _trade_columns(frame: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Raw ``s, a, p, q, f, l, T`` columns as ``TRADE_FRAME_SCHEMA``, keeping only elements that
    can be trades (an id, a time, a finite price and quantity > 0, f <= l); and how many were
    dropped."""
    price = pl.col("p").cast(pl.Float64, strict=False)
    qty = pl.col("q").cast(pl.Float64, strict=False)
    valid = (
        pl.col("s").is_not_null()
        & (pl.col("a") >= 0)
        & pl.col("T").is_not_null()
        & (price > 0)
        & price.is_finite()
        & (qty > 0)
        & qty.is_finite()
        & (pl.col("f") <= pl.col("l"))
    ).fill_null(False)
    good = frame.filter(valid).select(
        symbol="s",
        ts="T",
        price=price,
        agg_id="a",
        qty=qty,
        trades=pl.col("l") - pl.col("f") + 1,
    )
    return good, frame.height - good.height


def parse_agg_trades(data: Any, symbol: str) -> tuple[pl.DataFrame, int]:
    """Validate a REST ``aggTrades`` array of one symbol: the trades (``TRADE_FRAME_SCHEMA``,
    in id order) and the number of malformed elements skipped.

    >>> frame, skipped = parse_agg_trades([{"a": 7, "p": "1.5", "q": "2", "f": 10, "l": 11,
    ...     "T": 1000, "m": True, "M": True}, {"a": "x"}], "BTCUSDT")
    >>> frame.row(0), skipped
    (('BTCUSDT', 1000, 1.5, 7, 2.0, 2), 1)
    """
    if not isinstance(data, list):
        raise BadResponse(f"aggTrades: expected a JSON array, got {type(data).__name__}")
    rows = [
        {k: e.get(k) for k in ("a", "p", "q", "f", "l", "T")}
        for e in data
        if type(e) is dict
        and all(type(e.get(k)) is int for k in ("a", "f", "l", "T"))
        and type(e.get("p")) is str
        and type(e.get("q")) is str
    ]
    frame = pl.DataFrame(
        rows, schema={k: t for k, t in _EVENT_FIELDS.items() if k not in ("e", "s")}
    ).with_columns(s=pl.lit(symbol))
    good, dropped = _trade_columns(frame)
    return good.sort("agg_id").cast(TRADE_FRAME_SCHEMA), len(data) - len(rows) + dropped  # type: ignore[arg-type]


# Why a message of the trade stream was not stored, each counted (the collector's summary, its
# live table, etl_stream_messages_skipped_total{reason}): not JSON at all; JSON but no aggTrade
# event (a reply, a notice such as serverShutdown, a raw event outside the combined stream's
# envelope); an aggTrade whose fields cannot be a trade (no id, a price of 0...); a trade of a
# symbol not collected; a trade already staged; a trade whose batch could not be written (the
# catch-up fetches it again over REST).
BAD_JSON = "bad_json"
NOT_TRADE = "not_trade"
BAD_TRADE = "bad_trade"
UNKNOWN_SYMBOL = "unknown_symbol"
DUPLICATE = "duplicate"
NOT_WRITTEN = "not_written"
SKIP_REASONS = (BAD_JSON, NOT_TRADE, BAD_TRADE, UNKNOWN_SYMBOL, DUPLICATE, NOT_WRITTEN)


def classify_message(data: bytes) -> str | None:
    """Why a stream message that is not a trade line is not one (``BAD_JSON`` or
    ``NOT_TRADE``), or None if it is an aggTrade event after all (written another way).

    >>> classify_message(b'{"result": null, "id": 1}'), classify_message(b'{"e":')
    ('not_trade', 'bad_json')
    >>> classify_message(b'{"stream": "x", "data": {"e": "aggTrade"}}') is None
    True
    """
    try:
        msg: Any = json.loads(data)
    except ValueError:  # UnicodeDecodeError too
        return BAD_JSON
    return None if is_trade_message(msg) else NOT_TRADE


def is_trade_message(msg: Any) -> bool:
    """Whether a parsed stream message is an aggTrade event in the combined stream's envelope."""
    event = msg.get("data") if isinstance(msg, dict) else None
    return isinstance(event, dict) and event.get("e") == "aggTrade"


def parse_trade_events(lines: Sequence[str | bytes]) -> tuple[pl.DataFrame, dict[str, int]]:
    """Combined-stream ``aggTrade`` messages (``{"stream": ..., "data": {...}}``, one per item,
    each on one line) as trades (``TRADE_FRAME_SCHEMA``), parsed in bulk; and how many were
    skipped, by reason (``BAD_JSON``, ``NOT_TRADE``, ``BAD_TRADE``).

    The hot path of the trade collector: the lines are joined and parsed by Polars' NDJSON
    reader in one go. A batch it cannot read (a malformed line) is parsed line by line, so one
    bad message costs only itself.

    >>> frame, skipped = parse_trade_events([b'{"data":{"e":"aggTrade","s":"X","a":1,'
    ...     b'"p":"2","q":"1","f":1,"l":1,"T":5}}', b'{"data":{"e":"aggTrade"}}', b'nope'])
    >>> frame.height, skipped
    (1, {'bad_json': 1, 'not_trade': 0, 'bad_trade': 1})
    """
    skipped = dict.fromkeys((BAD_JSON, NOT_TRADE, BAD_TRADE), 0)
    if not lines:
        return pl.DataFrame(schema=TRADE_FRAME_SCHEMA), skipped
    schema = {"data": pl.Struct(_EVENT_FIELDS)}
    texts = [x if isinstance(x, bytes) else x.encode() for x in lines]
    try:
        raw = pl.read_ndjson(b"\n".join(texts), schema=schema).unnest("data")
    except Exception:  # a malformed message: find it, keep the rest
        good = []
        for text in texts:
            try:
                good.append(pl.read_ndjson(text, schema=schema))
            except Exception:
                # JSON that Polars cannot read into the schema is a trade with a field of the
                # wrong kind, or not a trade; anything else is not JSON.
                skipped[classify_message(text) or BAD_TRADE] += 1
        raw = pl.concat(good).unnest("data") if good else pl.DataFrame(schema=_EVENT_FIELDS)
    events = raw.filter(pl.col("e") == "aggTrade")
    skipped[NOT_TRADE] += raw.height - events.height
    trades, dropped = _trade_columns(events)
    skipped[BAD_TRADE] += dropped
    return trades.cast(TRADE_FRAME_SCHEMA), skipped  # type: ignore[arg-type]


def parse_exchange_info(data: Any) -> ExchangeInfo:
    if not isinstance(data, dict) or not isinstance(data.get("symbols"), list):
        raise BadResponse("exchangeInfo: expected an object with a 'symbols' array")
    limit = None
    for entry in data.get("rateLimits") or []:
        if (
            isinstance(entry, dict)
            and entry.get("rateLimitType") == "REQUEST_WEIGHT"
            and entry.get("interval") == "MINUTE"
            and isinstance(entry.get("limit"), int)
        ):
            limit = int(entry["limit"]) // max(1, int(entry.get("intervalNum") or 1))
    symbols = [
        s for s in data["symbols"] if isinstance(s, dict) and isinstance(s.get("symbol"), str)
    ]
    statuses = {s["symbol"]: str(s.get("status")) for s in symbols}
    tick_sizes = {
        s["symbol"]: str(f["tickSize"])
        for s in symbols
        for f in s.get("filters") or []
        if isinstance(f, dict) and f.get("filterType") == "PRICE_FILTER" and f.get("tickSize")
    }
    return ExchangeInfo(limit, statuses, tick_sizes)


def parse_klines(rows: list[list[Any]]) -> pl.DataFrame:
    """Kline rows ``[openTime, open, high, low, close, ...]`` as a typed frame
    ``open_ms, open, high, low, close``."""
    return pl.DataFrame(
        {
            "open_ms": [int(r[0]) for r in rows],
            "open": [float(r[1]) for r in rows],
            "high": [float(r[2]) for r in rows],
            "low": [float(r[3]) for r in rows],
            "close": [float(r[4]) for r in rows],
        },
        schema={
            "open_ms": pl.Int64,
            "open": pl.Float64,
            "high": pl.Float64,
            "low": pl.Float64,
            "close": pl.Float64,
        },
    )
