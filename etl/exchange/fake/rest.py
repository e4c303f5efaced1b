"""A Binance-compatible HTTP and WebSocket server on 127.0.0.1 for tests, benchmarks and ``just demo``.

It follows the documented spot REST contract (docs/binance.md, and the recorded payloads in
``tests/fixtures/binance``): ``ping``, ``time``, ``exchangeInfo``, ``ticker/price`` (single, list,
all), ``klines`` and ``aggTrades``; request weights (the client's own endpoint table) counted per
minute and reported in ``X-MBX-USED-WEIGHT-1M``; 429 past the limit and 418 for a client that
ignores ``Retry-After``; ``{"code", "msg"}`` error bodies. Faults can be injected: any status with
``Retry-After``, slow responses, dropped connections, non-JSON bodies, bad elements, a wrong
shape. The same object serves ``<symbol>@aggTrade`` market streams over WebSocket
(:mod:`etl.exchange.fake.stream`, ``ws_url``); both serve one :class:`Market`.

>>> with FakeExchange(symbols=["BTCUSDT", "ETHUSDT"]) as ex:     # doctest: +SKIP
...     requests.get(ex.url + "/api/v3/ticker/price?symbol=BTCUSDT").json()
{'symbol': 'BTCUSDT', 'price': '60262.05000000'}

Run it alone with ``python -m etl.exchange.fake.rest --port 8765 --symbols 3000``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from etl.config import DEFAULT_SYMBOLS, SYMBOL_RE
from etl.exchange.endpoints import WEIGHT_HEADER
from etl.exchange.fake.market import Market
from etl.exchange.fake.stream import StreamRules, StreamServer, WsFault
from etl.hours import HOUR_MS, ms

KLINE_INTERVALS_MS = {
    "1m": 60_000,
    "3m": 180_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "2h": 7_200_000,
    "4h": 14_400_000,
    "1d": 86_400_000,
}


# The fake's own copy of the documented weights, not the client's table: a double that shared
# the client's figures could not catch a wrong one.
WEIGHTS = {
    "/api/v3/ping": 1,
    "/api/v3/time": 1,
    "/api/v3/exchangeInfo": 20,
    "/api/v3/klines": 2,
    "/api/v3/aggTrades": 4,
}

AGG_TRADES_LIMIT = 1000


_BAD_ELEMENTS: list[Any] = [
    {"symbol": "BTCUSDT"},  # no price
    {"price": "1.0"},  # no symbol
    {"symbol": "ETHUSDT", "price": "abc"},
    {"symbol": "ETHUSDT", "price": "-1.5"},
    {"symbol": "ETHUSDT", "price": "0"},
    {"symbol": "ETHUSDT", "price": "NaN"},
    {"symbol": "ETHUSDT", "price": "Infinity"},
    {"symbol": 42, "price": "1.0"},
    {"symbol": "NOTREQUESTED", "price": "1.0"},
    None,
    7,
    "BTCUSDT",
]


@dataclass
class Fault:
    """A misbehaviour served to the next ``times`` requests whose path starts with ``path``.

    kinds: ``status`` (HTTP ``status`` with a ``{"code","msg"}`` body and optional
    ``Retry-After``; with ``body_delay`` the status line and headers go out at once and the body
    that many seconds later), ``slow`` (sleep ``delay`` s, then answer), ``drop`` (close the
    connection without answering), ``garbage`` (200 with an HTML body), ``bad_elements`` (valid
    prices mixed with malformed ones), ``shape`` (200 with an object where an array belongs).
    """

    kind: str
    path: str = "/api/v3/ticker/price"
    skip: int = 0  # matching requests served normally before the fault starts
    status: int = 503
    retry_after: float | None = None
    delay: float = 6.0
    times: int = 1
    code: int = -1000
    body_delay: float = 0.0
    msg: str | None = None  # the error body's text (default: "Injected HTTP <status>.")


_BODY_DELAY = "X-Fake-Body-Delay"  # between handle() and the handler only; never sent


@dataclass
class Request:
    at: float
    path: str
    query: str
    status: int


@dataclass
class _State:
    weight_limit: int
    ban_s: float
    used: dict[int, int] = field(default_factory=dict)
    retry_until: float = 0.0
    banned_until: float = 0.0
    faults: list[Fault] = field(default_factory=list)
    log: list[Request] = field(default_factory=list)
    violations: int = 0


def _bad(code: int, msg: str) -> tuple[int, Any, dict[str, str]]:
    return 400, {"code": code, "msg": msg}, {}


class FakeExchange:
    """The server. Start with ``with FakeExchange(...) as ex`` or ``start()``/``stop()``.

    The market (:class:`Market`: symbols, trades, klines) is ``market``; ``symbols``,
    ``statuses``, ``seed``, ``volatility``, ``trades_per_minute``, ``history_days`` and ``clock``
    make it. ``ws`` shapes the WebSocket side (:class:`etl.exchange.fake.stream.StreamRules`: Binance's figures by
    default, compressible for tests; ``False`` serves REST only). WebSocket timers run on the real
    monotonic clock; trades follow ``clock``.
    """

    def __init__(
        self,
        symbols: int | Sequence[str] = DEFAULT_SYMBOLS,
        *,
        statuses: dict[str, str] | None = None,
        weight_limit: int = 6000,
        ban_s: float = 120.0,
        seed: int = 7,
        volatility: float = 0.0008,
        trades_per_minute: int = 20,
        history_days: float = 30.0,
        port: int = 0,
        clock: Callable[[], float] = time.time,
        ws: StreamRules | bool = True,
        levels: dict[str, float] | None = None,
    ) -> None:
        self.market = Market(
            symbols,
            statuses=statuses,
            seed=seed,
            volatility=volatility,
            trades_per_minute=trades_per_minute,
            history_days=history_days,
            clock=clock,
            levels=levels,
        )
        self.clock = clock
        self.state = _State(weight_limit=weight_limit, ban_s=ban_s)
        self._lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._server.daemon_threads = True
        self._server.exchange = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None
        self.stream: StreamServer | None = (
            StreamServer(self.market, ws if isinstance(ws, StreamRules) else None) if ws else None
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def ws_url(self) -> str:
        """``ws://127.0.0.1:PORT``: append ``/ws/<stream>`` or ``/stream?streams=a/b``."""
        if self.stream is None:
            raise RuntimeError("this FakeExchange was made with ws=False")
        return self.stream.url

    def start(self) -> FakeExchange:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        if self.stream is not None:
            self.stream.start()
        return self

    def stop(self) -> None:
        if self.stream is not None:
            self.stream.stop()
        if self._thread is not None:  # shutdown() waits for a serve_forever() that must exist
            self._server.shutdown()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> FakeExchange:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def inject(self, kind: str, **kwargs: Any) -> Fault:
        fault = Fault(kind, **kwargs)
        with self._lock:
            self.state.faults.append(fault)
        return fault

    def inject_ws(self, kind: str, **kwargs: Any) -> WsFault:
        """A WebSocket fault (see :class:`etl.exchange.fake.stream.WsFault`): ``drop``, ``silence``,
        ``duplicate``, ``reorder``, ``shutdown``, ``rotate`` or ``message`` (any text)."""
        if self.stream is None:
            raise RuntimeError("this FakeExchange was made with ws=False")
        return self.stream.inject(kind, **kwargs)

    def pump(self, timeout: float = 10.0) -> int:
        """Push every trade up to the clock's now to the WebSocket clients, now; the events sent.

        With a virtual clock, call it after moving the clock; the background pump does the same
        every ``StreamRules.pump_interval`` seconds of real time anyway."""
        if self.stream is None:
            raise RuntimeError("this FakeExchange was made with ws=False")
        return self.stream.pump(timeout)

    def set_status(self, symbol: str, status: str | None) -> None:
        """Change a symbol's status; ``None`` delists it (requests for it then fail with -1121)."""
        self.market.set_status(symbol, status)

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self.state.log)

    @property
    def violations(self) -> int:
        """Requests that arrived while a 429's or 418's ``Retry-After`` was still running."""
        return self.state.violations

    def weight_used(self, at: float | None = None) -> int:
        with self._lock:
            return self.state.used.get(int((self.clock() if at is None else at) // 60), 0)

    def max_weight_used(self) -> int:
        with self._lock:
            return max(self.state.used.values(), default=0)

    def exchange_info_body(self, names: Sequence[str]) -> dict[str, Any]:
        return {
            "timezone": "UTC",
            "serverTime": ms(self.clock()),
            "rateLimits": [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": "MINUTE",
                    "intervalNum": 1,
                    "limit": self.state.weight_limit,
                },
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                {
                    "rateLimitType": "RAW_REQUESTS",
                    "interval": "MINUTE",
                    "intervalNum": 5,
                    "limit": 61000,
                },
            ],
            "exchangeFilters": [],
            "symbols": [self.market.symbol_info(s) for s in names],
        }

    def handle(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any, dict[str, str]]:
        """Route one request: ``(status, body, extra headers)``; a ``str`` body is sent raw."""
        now = self.clock()
        with self._lock:
            st = self.state
            if now < st.banned_until or now < st.retry_until:
                st.violations += 1
                st.banned_until = max(st.banned_until, now + st.ban_s)
                return self._rate_error(418, st.banned_until - now)
            weight = self._weight(path, query)
            minute = int(now // 60)
            st.used[minute] = st.used.get(minute, 0) + weight
            if st.used[minute] > st.weight_limit:
                st.retry_until = (minute + 1) * 60
                return self._rate_error(429, st.retry_until - now)
            fault = next((f for f in st.faults if path.startswith(f.path)), None)
            if fault is not None and fault.skip > 0:
                fault.skip -= 1
                fault = None
            elif fault is not None:
                fault.times -= 1
                if fault.times <= 0:
                    st.faults.remove(fault)
        if fault is not None:
            served = self._serve_fault(fault, path, query, now)
            if served is not None:
                return served
        return self._route(path, query)

    def _weight(self, path: str, query: dict[str, list[str]]) -> int:
        if path == "/api/v3/ticker/price":
            return 2 if "symbol" in query else 4
        return WEIGHTS.get(path, 1)

    def _rate_error(self, status: int, retry_after: float) -> tuple[int, Any, dict[str, str]]:
        msg = (
            "Way too much request weight used; IP banned until later."
            if status == 418
            else f"Too much request weight used; current limit is {self.state.weight_limit} "
            "request weight per 1 MINUTE."
        )
        return (
            status,
            {"code": -1003, "msg": msg},
            {"Retry-After": str(max(1, math.ceil(retry_after)))},
        )

    def _serve_fault(
        self, fault: Fault, path: str, query: dict[str, list[str]], now: float
    ) -> tuple[int, Any, dict[str, str]] | None:
        if fault.kind == "status":
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = str(fault.retry_after)
                with self._lock:
                    if fault.status == 429:
                        self.state.retry_until = max(
                            self.state.retry_until, now + fault.retry_after
                        )
                    elif fault.status == 418:
                        self.state.banned_until = max(
                            self.state.banned_until, now + fault.retry_after
                        )
            if fault.body_delay:
                headers[_BODY_DELAY] = str(fault.body_delay)
            return (
                fault.status,
                {"code": fault.code, "msg": fault.msg or f"Injected HTTP {fault.status}."},
                headers,
            )
        if fault.kind == "slow":
            time.sleep(fault.delay)
            return None
        if fault.kind == "drop":
            return -1, None, {}
        if fault.kind == "garbage":
            return 200, "<html><body>502 Bad Gateway</body></html>", {"Content-Type": "text/html"}
        if fault.kind == "shape":
            return 200, {"symbol": "BTCUSDT", "prices": []}, {}
        if fault.kind == "bad_elements":
            status, body, headers = self._route(path, query)
            body = json.loads(body) if isinstance(body, str) else body
            headers.pop("Content-Type", None)
            if status == 200 and isinstance(body, list):
                body = body + _BAD_ELEMENTS
                if body:
                    body.append(dict(body[0]))  # a duplicate of a valid element
            return status, body, headers
        raise ValueError(f"unknown fault kind {fault.kind!r}")

    def _symbols_param(self, query: dict[str, list[str]]) -> list[str] | tuple[int, Any, dict]:
        raw = query["symbols"][0]
        try:
            names = json.loads(raw)
        except ValueError:
            names = None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
            return (
                400,
                {"code": -1100, "msg": "Illegal characters found in parameter 'symbols'."},
                {},
            )
        if len(set(names)) != len(names):
            return 400, {"code": -1151, "msg": "Duplicate values for a parameter detected."}, {}
        return names

    def _agg_trades_route(
        self, query: dict[str, list[str]], now_ms: int
    ) -> tuple[int, Any, dict[str, str]]:
        name = query.get("symbol", [""])[0]
        if not name:
            return _bad(
                -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."
            )
        ints: dict[str, int] = {}
        for param in ("fromId", "startTime", "endTime", "limit"):
            if param in query:
                raw = query[param][0]
                if not raw.isdigit() or len(raw) > 20:
                    return _bad(
                        -1100,
                        f"Illegal characters found in parameter '{param}'; "
                        "legal range is '^[0-9]{1,20}$'.",
                    )
                ints[param] = int(raw)
        limit = ints.get("limit", 500)
        if not 1 <= limit <= AGG_TRADES_LIMIT:
            return _bad(-1130, "Data sent for parameter 'limit' is not valid.")
        with self.market.lock:
            if name not in self.market.symbols or not SYMBOL_RE.fullmatch(name):
                return _bad(-1121, "Invalid symbol.")
        start, end = ints.get("startTime"), ints.get("endTime")
        if "fromId" in ints and (start is not None or end is not None):
            return _bad(-1128, "Combination of optional parameters invalid.")
        if start is not None and end is not None and end - start > HOUR_MS:
            return _bad(-1127, "More than 1 hours between startTime and endTime.")
        rows = self.market.agg_trades(
            name, from_id=ints.get("fromId"), start_ms=start, end_ms=end, limit=limit, now_ms=now_ms
        )
        body = ",".join(
            f'{{"a":{t.a},"p":"{t.p}","q":"{t.q}","f":{t.f},"l":{t.l},"T":{t.T},'
            f'"m":{"true" if t.m else "false"},"M":true}}'
            for t in rows
        )
        return 200, "[" + body + "]", {"Content-Type": "application/json;charset=UTF-8"}

    def _route(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any, dict[str, str]]:
        invalid = (400, {"code": -1121, "msg": "Invalid symbol."}, {})
        now_ms = ms(self.clock())
        if path == "/api/v3/ping":
            return 200, {}, {}
        if path == "/api/v3/time":
            return 200, {"serverTime": now_ms}, {}
        if path == "/api/v3/exchangeInfo":
            with self.market.lock:
                if "symbols" in query or "symbol" in query:
                    names = (
                        self._symbols_param(query) if "symbols" in query else query["symbol"][:1]
                    )
                    if isinstance(names, tuple):
                        return names
                    if any(n not in self.market.symbols for n in names):
                        return invalid
                else:
                    names = list(self.market.symbols)
                return 200, self.exchange_info_body(names), {}
        if path == "/api/v3/ticker/price":
            with self.market.lock:
                if "symbol" in query:
                    name = query["symbol"][0]
                    if name not in self.market.symbols:
                        return invalid
                    return 200, {"symbol": name, "price": self.market.price_text(name, now_ms)}, {}
                names = (
                    self._symbols_param(query) if "symbols" in query else list(self.market.symbols)
                )
                if isinstance(names, tuple):
                    return names
                if any(n not in self.market.symbols for n in names):
                    return invalid
                body = ",".join(
                    f'{{"symbol":"{n}","price":"{self.market.price_text(n, now_ms)}"}}'
                    for n in names
                )
            return 200, "[" + body + "]", {"Content-Type": "application/json;charset=UTF-8"}
        if path == "/api/v3/klines":
            try:
                name = query["symbol"][0]
                step = KLINE_INTERVALS_MS[query["interval"][0]]
                limit = int(query.get("limit", ["500"])[0])
                start = int(query["startTime"][0]) if "startTime" in query else None
                end = int(query["endTime"][0]) if "endTime" in query else None
            except (KeyError, ValueError):
                return (
                    400,
                    {"code": -1102, "msg": "Mandatory parameter was not sent or is invalid."},
                    {},
                )
            if not 1 <= limit <= 1000:
                return 400, {"code": -1130, "msg": "Invalid data sent for a parameter."}, {}
            with self.market.lock:
                if name not in self.market.symbols or not SYMBOL_RE.fullmatch(name):
                    return invalid
                return 200, self.market.klines(name, step, start, end, limit), {}
        if path == "/api/v3/aggTrades":
            return self._agg_trades_route(query, now_ms)
        return 404, {"code": -1000, "msg": f"Unknown path {path}."}, {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real exchange
    # One write per response, sent at once: headers and body in separate small writes meet
    # Nagle's algorithm and delayed ACKs and cost 40 ms a request.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        exchange: FakeExchange = self.server.exchange  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        status, body, headers = exchange.handle(parts.path, parse_qs(parts.query))
        with exchange._lock:
            exchange.state.log.append(Request(exchange.clock(), parts.path, parts.query, status))
        if status < 0:  # dropped: close without a byte
            self.close_connection = True
            return
        payload = (
            body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
        ).encode()
        self.send_response(status)
        self.send_header(
            "Content-Type", headers.pop("Content-Type", "application/json;charset=UTF-8")
        )
        self.send_header("Content-Length", str(len(payload)))
        self.send_header(WEIGHT_HEADER, str(exchange.weight_used()))
        body_delay = float(headers.pop(_BODY_DELAY, 0))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if body_delay:  # the status and headers now, the body later
            self.wfile.flush()
            time.sleep(body_delay)
        self.wfile.write(payload)


@contextlib.contextmanager
def served(*args: str, env: dict[str, str] | None = None) -> Iterator[tuple[str, str | None]]:
    """The fake exchange in a child process (so its work does not share the caller's GIL),
    started with the command-line ``args`` on a free port: yields its REST URL and its
    WebSocket URL (``None`` with ``--no-ws``).

    >>> with served("--symbols", "50", "--no-ws") as (url, _):  # doctest: +SKIP
    ...     requests.get(url + "/api/v3/ping")
    """
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "etl.exchange.fake.rest", "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        rest = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
        ws = None if "--no-ws" in args else proc.stdout.readline().strip().rsplit(" ", 1)[-1]
        yield rest, ws
    finally:
        proc.terminate()
        proc.wait(10)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Binance-compatible fake exchange on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--symbols", type=int, default=len(DEFAULT_SYMBOLS))
    parser.add_argument("--weight-limit", type=int, default=6000)
    parser.add_argument(
        "--trades-per-minute", type=int, default=20, help="mean aggregate trades a symbol makes"
    )
    parser.add_argument("--ws-port", type=int, default=0, help="WebSocket streams (0: any free)")
    parser.add_argument("--no-ws", action="store_true", help="serve REST only")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    exchange = FakeExchange(
        args.symbols,
        weight_limit=args.weight_limit,
        port=args.port,
        trades_per_minute=args.trades_per_minute,
        seed=args.seed,
        ws=False if args.no_ws else StreamRules(port=args.ws_port),
    )
    # The first line's last word is the URL, the second's the streams': served() reads them.
    print(
        f"fake exchange serving {len(exchange.market.symbols)} symbols at {exchange.url}",
        flush=True,
    )
    exchange.start()
    if exchange.stream is not None:
        print(f"websocket streams at {exchange.ws_url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
    exchange.stop()


if __name__ == "__main__":
    main()
