"""A small client for Binance's public spot REST API.

The client owns its ``requests`` session, its timeouts (connect 3 s, read 5 s) and a
:class:`WeightGovernor` that keeps the per-minute request weight under a budget and honours bans.
Failures surface as typed exceptions a caller can catch:

- :class:`ExchangeUnavailable`: connection error, timeout or 5xx, after retries (state unknown);
- :class:`RateLimited`: a 429/418 was received, or is still in force; nothing is sent until
  ``until``;
- :class:`WeightBudgetExhausted`: the budget for this minute is spent and the caller's deadline
  comes first;
- :class:`ApiError`: the exchange refused the request (``code`` and ``msg`` from its body);
- :class:`BadResponse`: the body is not JSON, or not the documented shape;
- :class:`UnknownSymbols`: symbols the exchange does not list, or that are not ``TRADING``.

>>> with BinanceClient("http://127.0.0.1:8765") as client:        # doctest: +SKIP
...     client.validate_symbols(["BTCUSDT", "ETHUSDT"])
...     poll = client.prices(["BTCUSDT", "ETHUSDT"])
...     poll.symbols, poll.prices
(['BTCUSDT', 'ETHUSDT'], [60262.05, 2594.25])
"""

from __future__ import annotations

import difflib
import json
import math
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import polars as pl
import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_random_exponential

if TYPE_CHECKING:
    from etl.config import Settings

WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
# Request weights from the official spot API docs.
ENDPOINT_WEIGHTS: dict[str, int] = {
    "/api/v3/ping": 1,
    "/api/v3/time": 1,
    "/api/v3/exchangeInfo": 20,
    "/api/v3/klines": 2,
    "/api/v3/ticker/price": 4,  # list or all; a single symbol is 2
    "/api/v3/aggTrades": 4,
}
AGG_TRADES_LIMIT = 1000  # most aggregate trades one aggTrades request returns
DEFAULT_WEIGHT_LIMIT = 6000
# Above this many symbols, one unfiltered request (same weight) beats a URL of thousands of names.
MAX_LISTED_SYMBOLS = 100
ERR_INVALID_SYMBOL = -1121
# Keys of the state the client keeps in its store (the staging file) across restarts.
BAN_KEY = "binance.ban"
WEIGHT_KEY = "binance.weight"


class BinanceError(Exception):
    """Base class of the client's errors."""


class ExchangeUnavailable(BinanceError):
    """No usable answer: connection error, timeout, or 5xx (whose outcome is unknown).

    ``reached`` is False when the request cannot have reached the exchange (name resolution,
    refused connection, connect timeout): its weight was not spent.
    """

    def __init__(self, message: str, *, reached: bool = True) -> None:
        super().__init__(message)
        self.reached = reached


class Stopped(BinanceError):
    """The caller is stopping (its wait said so): no more retries are made."""


class BadResponse(BinanceError):
    """A 2xx whose body is not JSON or not the expected shape."""


class RateLimited(BinanceError):
    """A 429 (limit broken) or 418 (IP banned) is in force until ``until`` (epoch seconds)."""

    def __init__(self, until: float, status: int) -> None:
        self.until = until
        self.status = status
        kind = "IP banned (418)" if status == 418 else "rate limited (429)"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(until))
        super().__init__(f"{kind}: no request until {stamp}")


class WeightBudgetExhausted(BinanceError):
    """This minute's weight budget is spent; it frees at ``free_at`` (epoch seconds)."""

    def __init__(self, free_at: float) -> None:
        self.free_at = free_at
        super().__init__("weight budget for this minute is spent")


class ApiError(BinanceError):
    """The exchange refused the request with an HTTP 4xx and a ``{"code", "msg"}`` body."""

    def __init__(self, status: int, code: int | None, msg: str) -> None:
        self.status, self.code, self.msg = status, code, msg
        super().__init__(f"HTTP {status} code {code}: {msg}")


class UnknownSymbols(BinanceError):
    """Symbols that are unknown to the exchange or not trading, with the reason for each.

    The message names the first few (with a close listed name, if any) and counts the rest.
    """

    SHOWN = 5

    def __init__(self, bad: dict[str, str], listed: Sequence[str] = ()) -> None:
        self.bad = bad
        names = list(listed)

        def why(symbol: str) -> str:
            reason = bad[symbol]
            if reason == "unknown" and names:
                close = difflib.get_close_matches(symbol, names, n=1, cutoff=0.75)
                if close:
                    return f"unknown; did you mean {close[0]}?"
            return reason

        shown = ", ".join(f"{s} ({why(s)})" for s in list(bad)[: self.SHOWN])
        more = f" and {len(bad) - self.SHOWN:,} more" if len(bad) > self.SHOWN else ""
        super().__init__(f"{len(bad):,} symbol(s) not trading on the exchange: {shown}{more}")


class StateStore(Protocol):
    """Where the governor keeps the ban across restarts (the staging database)."""

    def get_state(self, key: str) -> Any: ...

    def set_state(self, key: str, value: Any, now_ms: int) -> None: ...


class WeightGovernor:
    """Keeps the minute's request weight within ``budget`` of the exchange limit; holds bans.

    Binance counts weight per calendar minute and reports the count in ``X-MBX-USED-WEIGHT-1M``.
    The governor adds each request's weight before sending and takes the larger of its own count
    and the reported one, so other clients on the same IP are accounted for too. One governor is
    shared by everything in a process that talks to the exchange (poller, backfill).
    """

    def __init__(
        self,
        budget: float = 0.5,
        limit: int = DEFAULT_WEIGHT_LIMIT,
        *,
        store: StateStore | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        self.budget = budget
        self.limit = limit
        self.store = store
        self.clock = clock
        self.sleep = sleep
        self.used = 0
        self._window = math.floor(clock() / 60)
        self._lock = threading.Lock()
        self.banned_until = 0.0
        self.ban_status = 0
        saved = store.get_state(BAN_KEY) if store else None
        if isinstance(saved, dict) and saved.get("until", 0) > clock():
            self.banned_until = float(saved["until"])
            self.ban_status = int(saved.get("status", 429))

    @property
    def allowed(self) -> int:
        return max(1, int(self.limit * self.budget))

    def _roll(self, now: float) -> None:
        window = math.floor(now / 60)
        if window != self._window:
            self._window, self.used = window, 0

    def check_ban(self) -> None:
        if self.clock() < self.banned_until:
            raise RateLimited(self.banned_until, self.ban_status)

    def acquire(self, weight: int, deadline: float | None = None, reserve: int = 0) -> None:
        """Reserve ``weight`` in this minute, waiting for the next minute if needed.

        ``reserve`` is weight this caller must leave for others (a background backfill leaves
        the poller its share). Raises :class:`RateLimited` during a ban and
        :class:`WeightBudgetExhausted` if the wait would pass ``deadline``.
        """
        reserve = min(reserve, max(0, self.allowed - weight))
        if weight > self.allowed:
            raise WeightBudgetExhausted(math.inf)
        while True:
            with self._lock:
                now = self.clock()
                self.check_ban()
                self._roll(now)
                if self.used + weight <= self.allowed - reserve:
                    self.used += weight
                    return
                # A small margin: the exchange's minute may turn a little after ours.
                free_at = (self._window + 1) * 60 + 0.25
            if deadline is not None and free_at > deadline:
                raise WeightBudgetExhausted(free_at)
            if self.sleep(max(0.0, free_at - now)):  # an Event's wait: True once stopped
                raise WeightBudgetExhausted(free_at)

    def refund(self, weight: int) -> None:
        """Give back the weight of a request that never reached the exchange."""
        with self._lock:
            self.used = max(0, self.used - weight)

    def observe(self, headers: Any) -> None:
        value = headers.get(WEIGHT_HEADER)
        if value is None:
            return
        try:
            reported = int(value)
        except ValueError:
            return
        with self._lock:
            self._roll(self.clock())
            self.used = max(self.used, reported)

    def ban(self, status: int, retry_after: float) -> RateLimited:
        """Record a 429/418: nothing is sent before ``retry_after`` seconds have passed."""
        now = self.clock()
        with self._lock:
            self.banned_until = max(self.banned_until, now + retry_after)
            self.ban_status = status
        if self.store is not None:
            self.store.set_state(
                BAN_KEY, {"until": self.banned_until, "status": status}, int(now * 1000)
            )
        return RateLimited(self.banned_until, status)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            self._roll(self.clock())
            return {
                "used": self.used,
                "limit": self.limit,
                "budget": self.allowed,
                "banned_until": self.banned_until or None,
                "ban_status": self.ban_status or None,
            }


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


def parse_trade_events(lines: Sequence[str | bytes]) -> tuple[pl.DataFrame, int]:
    """Combined-stream ``aggTrade`` messages (``{"stream": ..., "data": {...}}``, one per item)
    as trades (``TRADE_FRAME_SCHEMA``), parsed in bulk; and the number skipped.

    The hot path of the trade collector: the lines are joined and parsed by Polars' NDJSON
    reader in one go. A batch it cannot read (a malformed line) is parsed line by line, so one
    bad message costs only itself.
    """
    if not lines:
        return pl.DataFrame(schema=TRADE_FRAME_SCHEMA), 0
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
                continue
        raw = pl.concat(good).unnest("data") if good else pl.DataFrame(schema=_EVENT_FIELDS)
    raw = raw.filter(pl.col("e") == "aggTrade")
    trades, dropped = _trade_columns(raw)
    return trades.cast(TRADE_FRAME_SCHEMA), len(texts) - raw.height + dropped  # type: ignore[arg-type]


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


def _failure(exc: requests.RequestException, url: str, timeout: float) -> ExchangeUnavailable:
    """What went wrong on the way, in words: name resolution, refused, TLS, timeout."""
    host = urlsplit(url).netloc
    chain: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo:  # the exception, what it wraps (reason, args) and what it was raised from
        seen = todo.pop(0)
        if seen in chain:
            continue
        chain.append(seen)
        reason = getattr(seen, "reason", None)
        todo += [e for e in (reason, *seen.args) if isinstance(e, BaseException)]
        todo += [e for e in (seen.__cause__, seen.__context__) if e is not None]
    kinds = [type(e).__name__ for e in chain]
    if isinstance(exc, requests.ConnectTimeout):
        return ExchangeUnavailable(f"{host}: no connection within {timeout:.1f} s", reached=False)
    if isinstance(exc, requests.Timeout):
        return ExchangeUnavailable(f"{host}: no answer within {timeout:.1f} s")
    if any(isinstance(e, socket.gaierror) for e in chain) or "NameResolutionError" in kinds:
        return ExchangeUnavailable(f"name resolution failed for {host}", reached=False)
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return ExchangeUnavailable(f"connection refused by {host}", reached=False)
    if isinstance(exc, requests.exceptions.SSLError) or any(
        isinstance(e, ssl.SSLError) for e in chain
    ):
        return ExchangeUnavailable(f"TLS failed with {host} ({chain[-1]})", reached=False)
    if any(isinstance(e, ConnectionResetError | BrokenPipeError) for e in chain) or any(
        k in ("RemoteDisconnected", "ProtocolError") for k in kinds
    ):
        return ExchangeUnavailable(f"{host} closed the connection without an answer")
    return ExchangeUnavailable(f"{host}: connection failed ({kinds[-1]})", reached=False)


def _error_body(resp: requests.Response) -> tuple[int | None, str]:
    try:
        body = resp.json()
    except ValueError:
        return None, resp.text[:200].strip() or resp.reason
    if isinstance(body, dict):
        code = body.get("code")
        return (code if isinstance(code, int) else None), str(body.get("msg", ""))
    return None, str(body)[:200]


class BinanceClient:
    """Binance spot REST client: one session, bounded timeouts, retries, weight governor."""

    def __init__(
        self,
        base_url: str,
        *,
        governor: WeightGovernor | None = None,
        connect_timeout: float = 3.0,
        read_timeout: float = 5.0,
        max_backoff: float = 4.0,
        reserve: int = 0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Any] = time.sleep,
        session: requests.Session | None = None,
    ) -> None:
        """``reserve``: weight per minute this client leaves to others sharing the governor.
        ``session``: the transport (a ``requests.Session``, perhaps with an adapter mounted that
        answers without a socket); by default a new one, owned and closed by the client."""
        self.base_url = base_url.rstrip("/")
        self.reserve = reserve
        self.governor = governor or WeightGovernor(clock=clock, sleep=sleep)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_backoff = max_backoff
        self.clock = clock
        self.sleep = sleep
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = "etl-price-pipeline/0.1"
        self.in_flight = threading.Event()  # set while a request waits on the network

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> BinanceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -----------------------------------------------------------------------------

    @contextmanager
    def _waiting(self) -> Iterator[None]:
        """Mark the time spent waiting on the network: ``in_flight`` is set only then, so a
        signal handler may abandon the wait (raise) without cutting a state write short."""
        self.in_flight.set()
        try:
            yield
        finally:
            self.in_flight.clear()

    def _send(
        self, path: str, params: dict[str, Any] | None, weight: int, deadline: float | None
    ) -> Any:
        self.governor.acquire(weight, deadline, self.reserve)
        read_timeout = self.read_timeout
        if deadline is not None:
            left = deadline - self.clock()
            if left <= 0.01:
                raise ExchangeUnavailable("no time left before the deadline")
            read_timeout = min(read_timeout, left)
        try:
            # stream=True: the status and headers are acted on before the body is read, so a
            # ban is stored the moment it arrives (a crash while the body streams keeps it).
            with self._waiting():
                resp = self.session.get(
                    self.base_url + path,
                    params=params,
                    timeout=(min(self.connect_timeout, read_timeout), read_timeout),
                    stream=True,
                )
        except requests.RequestException as exc:
            failure = _failure(exc, self.base_url, read_timeout)
            if not failure.reached:
                self.governor.refund(weight)
            raise failure from None
        with resp:
            status = resp.status_code
            if status in (418, 429):
                try:
                    retry_after = float(resp.headers.get("Retry-After", "60"))
                except ValueError:
                    retry_after = 60.0
                raise self.governor.ban(status, retry_after)
            self.governor.observe(resp.headers)
            try:
                with self._waiting():
                    body = resp.content
            except requests.RequestException as exc:
                raise _failure(exc, self.base_url, read_timeout) from None
        if status >= 500:
            raise ExchangeUnavailable(f"{path}: HTTP {status}")
        if status >= 400:
            code, msg = _error_body(resp)
            raise ApiError(status, code, msg)
        try:
            return json.loads(body)
        except ValueError:
            raise BadResponse(f"{path}: the body is not JSON") from None

    def request(
        self,
        path: str,
        params: dict[str, Any] | None = None,
        *,
        weight: int | None = None,
        deadline: float | None = None,
    ) -> Any:
        """GET ``path`` and return its JSON, retrying transient failures until ``deadline``.

        Connection errors, timeouts and 5xx are retried with capped exponential backoff and full
        jitter; without a deadline, four attempts are made.
        """
        weight = ENDPOINT_WEIGHTS.get(path, 1) if weight is None else weight

        def out_of_time(state: RetryCallState) -> bool:
            if deadline is None:
                return state.attempt_number >= 4
            return self.clock() + state.upcoming_sleep >= deadline - 0.01

        def pause(seconds: float) -> None:
            if self.sleep(seconds):  # an Event's wait says True once its owner is stopping
                raise Stopped("stopping: no more retries")

        retrying = Retrying(
            retry=retry_if_exception_type(ExchangeUnavailable),
            wait=wait_random_exponential(multiplier=0.25, max=self.max_backoff),
            stop=out_of_time,
            sleep=pause,
            reraise=True,
        )
        return retrying(self._send, path, params, weight, deadline)

    # -- endpoints -----------------------------------------------------------------------------

    def ping(self, deadline: float | None = None) -> None:
        self.request("/api/v3/ping", deadline=deadline)

    def server_time(self, deadline: float | None = None) -> int:
        data = self.request("/api/v3/time", deadline=deadline)
        if not isinstance(data, dict) or not isinstance(data.get("serverTime"), int):
            raise BadResponse("time: expected {'serverTime': int}")
        return int(data["serverTime"])

    def exchange_info(
        self, symbols: Sequence[str] | None = None, deadline: float | None = None
    ) -> ExchangeInfo:
        params = None
        if symbols and len(symbols) <= MAX_LISTED_SYMBOLS:
            params = {"symbols": json.dumps(list(symbols), separators=(",", ":"))}
        info = parse_exchange_info(self.request("/api/v3/exchangeInfo", params, deadline=deadline))
        if info.weight_limit:
            self.governor.limit = info.weight_limit
        return info

    def validate_symbols(
        self, symbols: Sequence[str], deadline: float | None = None
    ) -> ExchangeInfo:
        """Check every symbol is listed and ``TRADING``; raise :class:`UnknownSymbols` naming all
        that are not."""
        try:
            info = self.exchange_info(symbols, deadline=deadline)
        except ApiError as exc:
            if exc.code != ERR_INVALID_SYMBOL:
                raise
            # The filtered request fails whole on one bad name: ask for everything to name them.
            info = self.exchange_info(None, deadline=deadline)
        bad = {
            s: ("unknown" if s not in info.statuses else f"status {info.statuses[s]}")
            for s in symbols
            if info.statuses.get(s) != "TRADING"
        }
        if bad:
            if not any(v == "unknown" for v in bad.values()) or len(info.statuses) > len(symbols):
                raise UnknownSymbols(bad, list(info.statuses))
            # The filtered answer lists only what we asked for: ask for all, to suggest names.
            everything = self.exchange_info(None, deadline=deadline)
            raise UnknownSymbols(bad, list(everything.statuses))
        return info

    def prices(self, symbols: Sequence[str], deadline: float | None = None) -> PricePoll:
        """One ``GET /api/v3/ticker/price`` for all ``symbols`` (weight 4, whatever their number)."""
        listed = len(symbols) <= MAX_LISTED_SYMBOLS
        params = {"symbols": json.dumps(list(symbols), separators=(",", ":"))} if listed else None
        data = self.request("/api/v3/ticker/price", params, deadline=deadline)
        received_ms = int(self.clock() * 1000)
        return parse_prices(data, symbols, received_ms, listed=listed)

    def agg_trades(
        self,
        symbol: str,
        *,
        from_id: int | None = None,
        start_ms: int | None = None,
        limit: int = AGG_TRADES_LIMIT,
        deadline: float | None = None,
    ) -> tuple[pl.DataFrame, int]:
        """One page of ``GET /api/v3/aggTrades`` (weight 4): from id ``from_id``, from time
        ``start_ms``, or the most recent ``limit``. The trades (see :func:`parse_agg_trades`)
        and the malformed elements skipped."""
        params: dict[str, Any] = {"symbol": symbol, "limit": limit}
        if from_id is not None:
            params["fromId"] = from_id
        elif start_ms is not None:
            params["startTime"] = start_ms
        data = self.request("/api/v3/aggTrades", params, deadline=deadline)
        return parse_agg_trades(data, symbol)

    def klines(
        self,
        symbol: str,
        interval: str,
        start_ms: int,
        end_ms: int,
        *,
        limit: int = 1000,
        deadline: float | None = None,
    ) -> list[list[Any]]:
        """Candles ``[openTime, open, high, low, close, volume, closeTime, ...]`` (one page)."""
        params = {
            "symbol": symbol,
            "interval": interval,
            "startTime": start_ms,
            "endTime": end_ms,
            "limit": limit,
        }
        data = self.request("/api/v3/klines", params, deadline=deadline)
        if not isinstance(data, list) or not all(isinstance(r, list) and len(r) >= 7 for r in data):
            raise BadResponse("klines: expected an array of arrays")
        return data


def open_exchange(
    settings: Settings,
    store: StateStore | None = None,
    *,
    reserve: int = 0,
    governor: WeightGovernor | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Any] = time.sleep,
) -> BinanceClient:
    """The configured exchange: a client with a weight governor that keeps its bans in
    ``store`` (the staging file), so every process honours them across restarts."""
    gov = governor or WeightGovernor(settings.weight_budget, store=store, clock=clock, sleep=sleep)
    return BinanceClient(
        settings.binance_url, governor=gov, reserve=reserve, clock=clock, sleep=sleep
    )
