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

import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_random_exponential

WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
# Request weights from the official spot API docs (DESIGN.md).
ENDPOINT_WEIGHTS: dict[str, int] = {
    "/api/v3/ping": 1,
    "/api/v3/time": 1,
    "/api/v3/exchangeInfo": 20,
    "/api/v3/klines": 2,
    "/api/v3/ticker/price": 4,  # list or all; a single symbol is 2
}
DEFAULT_WEIGHT_LIMIT = 6000
# Above this many symbols, one unfiltered request (same weight) beats a URL of thousands of names.
MAX_LISTED_SYMBOLS = 100
ERR_INVALID_SYMBOL = -1121
BAN_KEY = "binance.ban"


class BinanceError(Exception):
    """Base class of the client's errors."""


class ExchangeUnavailable(BinanceError):
    """No usable answer: connection error, timeout, or 5xx (whose outcome is unknown)."""


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
    """Symbols that are unknown to the exchange or not trading, with the reason for each."""

    def __init__(self, bad: dict[str, str]) -> None:
        self.bad = bad
        listed = ", ".join(f"{s} ({why})" for s, why in bad.items())
        super().__init__(f"symbol(s) not trading on the exchange: {listed}")


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
    statuses = {
        s["symbol"]: str(s.get("status"))
        for s in data["symbols"]
        if isinstance(s, dict) and isinstance(s.get("symbol"), str)
    }
    return ExchangeInfo(limit, statuses)


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
    ) -> None:
        """``reserve``: weight per minute this client leaves to others sharing the governor."""
        self.base_url = base_url.rstrip("/")
        self.reserve = reserve
        self.governor = governor or WeightGovernor(clock=clock, sleep=sleep)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_backoff = max_backoff
        self.clock = clock
        self.sleep = sleep
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "etl-price-pipeline/0.1"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> BinanceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -----------------------------------------------------------------------------

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
            resp = self.session.get(
                self.base_url + path,
                params=params,
                timeout=(min(self.connect_timeout, read_timeout), read_timeout),
            )
        except requests.Timeout:
            raise ExchangeUnavailable(f"{path}: timed out after {read_timeout:.1f} s") from None
        except requests.RequestException as exc:
            reason = type(exc).__name__
            raise ExchangeUnavailable(f"{path}: connection failed ({reason})") from None
        self.governor.observe(resp.headers)
        status = resp.status_code
        if status in (418, 429):
            try:
                retry_after = float(resp.headers.get("Retry-After", "60"))
            except ValueError:
                retry_after = 60.0
            raise self.governor.ban(status, retry_after)
        if status >= 500:
            raise ExchangeUnavailable(f"{path}: HTTP {status}")
        if status >= 400:
            code, msg = _error_body(resp)
            raise ApiError(status, code, msg)
        try:
            return resp.json()
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

        retrying = Retrying(
            retry=retry_if_exception_type(ExchangeUnavailable),
            wait=wait_random_exponential(multiplier=0.25, max=self.max_backoff),
            stop=out_of_time,
            sleep=self.sleep,
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
            raise UnknownSymbols(bad)
        return info

    def prices(self, symbols: Sequence[str], deadline: float | None = None) -> PricePoll:
        """One ``GET /api/v3/ticker/price`` for all ``symbols`` (weight 4, whatever their number)."""
        listed = len(symbols) <= MAX_LISTED_SYMBOLS
        params = {"symbols": json.dumps(list(symbols), separators=(",", ":"))} if listed else None
        data = self.request("/api/v3/ticker/price", params, deadline=deadline)
        received_ms = int(self.clock() * 1000)
        return parse_prices(data, symbols, received_ms, listed=listed)

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
