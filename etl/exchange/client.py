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
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import polars as pl
import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_random_exponential

from etl.exchange.endpoints import (
    AGG_TRADES_LIMIT,
    ENDPOINT_WEIGHTS,
    ERR_INVALID_SYMBOL,
    MAX_LISTED_SYMBOLS,
)
from etl.exchange.errors import ApiError, BadResponse, ExchangeUnavailable, Stopped, UnknownSymbols
from etl.exchange.governor import StateStore, WeightGovernor
from etl.exchange.parse import (
    ExchangeInfo,
    PricePoll,
    parse_agg_trades,
    parse_exchange_info,
    parse_prices,
)
from etl.hours import ms

if TYPE_CHECKING:
    from etl.config import Settings


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
        received_ms = ms(self.clock())
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
