"""A Binance-compatible HTTP server on 127.0.0.1 for tests, benchmarks and ``just demo``.

It follows the documented spot REST contract (DESIGN.md, and the recorded payloads in
``../shared/fixtures/binance``): ``ping``, ``time``, ``exchangeInfo``, ``ticker/price`` (single,
list, all) and ``klines``; request weights counted per minute and reported in
``X-MBX-USED-WEIGHT-1M``; 429 past the limit and 418 for a client that ignores ``Retry-After``;
``{"code", "msg"}`` error bodies. Faults can be injected: any status with ``Retry-After``, slow
responses, dropped connections, non-JSON bodies, bad elements, a wrong shape.

Prices are a random walk per symbol on a one-minute grid, with each minute's candle (open, high,
low, close) fixed once drawn; the ticker interpolates inside the current minute's candle, so the
klines and the ticker tell the same story.

>>> with FakeExchange(symbols=["BTCUSDT", "ETHUSDT"]) as ex:     # doctest: +SKIP
...     requests.get(ex.url + "/api/v3/ticker/price?symbol=BTCUSDT").json()
{'symbol': 'BTCUSDT', 'price': '60262.05000000'}

Run it alone with ``python -m etl.fake_exchange --port 8765 --symbols 3000``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from etl.config import DEFAULT_SYMBOLS, SYMBOL_RE

MINUTE_MS = 60_000
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
WEIGHTS = {
    "/api/v3/ping": 1,
    "/api/v3/time": 1,
    "/api/v3/exchangeInfo": 20,
    "/api/v3/klines": 2,
}
_BASES = {"BTCUSDT": 60000.0, "ETHUSDT": 2600.0, "BNBUSDT": 580.0, "SOLUSDT": 150.0, "XRPUSDT": 0.6}
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
    ``Retry-After``), ``slow`` (sleep ``delay`` s, then answer), ``drop`` (close the connection
    without answering), ``garbage`` (200 with an HTML body), ``bad_elements`` (valid prices mixed
    with malformed ones), ``shape`` (200 with an object where an array belongs).
    """

    kind: str
    path: str = "/api/v3/ticker/price"
    skip: int = 0  # matching requests served normally before the fault starts
    status: int = 503
    retry_after: float | None = None
    delay: float = 6.0
    times: int = 1
    code: int = -1000


@dataclass
class Request:
    at: float
    path: str
    query: str
    status: int


@dataclass
class _Walk:
    """Minute candles of one symbol, drawn outward from an anchor minute, each drawn once."""

    anchor: int
    forward: list[tuple[float, float, float, float]]
    backward: list[tuple[float, float, float, float]]
    rng_fwd: random.Random
    rng_bwd: random.Random
    sigma: float

    def _draw(self, rng: random.Random, edge: float, forward: bool) -> tuple[float, ...]:
        step = math.exp(self.sigma * rng.gauss(0.0, 1.0))
        other = edge * step if forward else edge / step
        o, c = (edge, other) if forward else (other, edge)
        spread = self.sigma * 0.8
        h = max(o, c) * (1 + spread * abs(rng.gauss(0.0, 1.0)))
        lo = min(o, c) * (1 - spread * abs(rng.gauss(0.0, 1.0)))
        return (o, h, lo, c)

    def candle(self, minute: int) -> tuple[float, float, float, float]:
        k = minute - self.anchor
        if k >= 0:
            while len(self.forward) <= k:
                self.forward.append(self._draw(self.rng_fwd, self.forward[-1][3], True))  # type: ignore[arg-type]
            return self.forward[k]
        k = -k - 1
        while len(self.backward) <= k:
            edge = self.backward[-1][0] if self.backward else self.forward[0][0]
            self.backward.append(self._draw(self.rng_bwd, edge, False))  # type: ignore[arg-type]
        return self.backward[k]


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


class FakeExchange:
    """The server. Start with ``with FakeExchange(...) as ex`` or ``start()``/``stop()``."""

    def __init__(
        self,
        symbols: int | Sequence[str] = DEFAULT_SYMBOLS,
        *,
        statuses: dict[str, str] | None = None,
        weight_limit: int = 6000,
        ban_s: float = 120.0,
        seed: int = 7,
        volatility: float = 0.0008,
        port: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(symbols, int):
            names = list(DEFAULT_SYMBOLS[:symbols])
            names += [f"T{i:05d}USDT" for i in range(symbols - len(names))]
        else:
            names = list(symbols)
        self.symbols: dict[str, str] = dict.fromkeys(names, "TRADING")
        self.symbols.update(statuses or {})
        self.clock = clock
        self.seed = seed
        self.volatility = volatility
        self.state = _State(weight_limit=weight_limit, ban_s=ban_s)
        self._walks: dict[str, _Walk] = {}
        self._anchor = int(clock() * 1000) // MINUTE_MS
        self._lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._server.daemon_threads = True
        self._server.exchange = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    # -- control -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeExchange:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
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

    def set_status(self, symbol: str, status: str | None) -> None:
        """Change a symbol's status; ``None`` delists it (requests for it then fail with -1121)."""
        with self._lock:
            if status is None:
                self.symbols.pop(symbol, None)
            else:
                self.symbols[symbol] = status

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

    # -- market model --------------------------------------------------------------------------

    def candle(self, symbol: str, minute: int) -> tuple[float, float, float, float]:
        with self._lock:
            walk = self._walks.get(symbol)
            if walk is None:
                rng = random.Random(f"{self.seed}:{symbol}")
                base = _BASES.get(symbol) or math.exp(rng.uniform(math.log(0.01), math.log(5e4)))
                walk = _Walk(
                    self._anchor,
                    [],
                    [],
                    random.Random(f"{self.seed}:{symbol}:fwd"),
                    random.Random(f"{self.seed}:{symbol}:bwd"),
                    self.volatility,
                )
                walk.forward.append(walk._draw(walk.rng_fwd, base, True))  # type: ignore[arg-type]
                self._walks[symbol] = walk
            return walk.candle(minute)

    def price(self, symbol: str, ts_ms: int) -> float:
        minute, into = divmod(ts_ms, MINUTE_MS)
        o, h, lo, c = self.candle(symbol, minute)
        frac = into / MINUTE_MS
        wiggle = (h - lo) * 0.5 * math.sin(ts_ms / 700.0 + len(symbol))
        return min(h, max(lo, o + (c - o) * frac + wiggle * frac * (1 - frac)))

    def klines(
        self, symbol: str, step_ms: int, start: int | None, end: int | None, limit: int
    ) -> list[list[Any]]:
        now_ms = int(self.clock() * 1000)
        last_open = min(end if end is not None else now_ms, now_ms) // step_ms * step_ms
        if start is not None:
            first = -(-start // step_ms) * step_ms
        else:
            first = last_open - (limit - 1) * step_ms
        rows = []
        for open_ms in range(first, last_open + 1, step_ms):
            if len(rows) >= limit:
                break
            minutes = [
                self.candle(symbol, m)
                for m in range(open_ms // MINUTE_MS, (open_ms + step_ms) // MINUTE_MS)
                if m * MINUTE_MS <= now_ms
            ]
            o, c = minutes[0][0], minutes[-1][3]
            h = max(x[1] for x in minutes)
            lo = min(x[2] for x in minutes)
            volume = 10.0 * len(minutes)
            rows.append(
                [
                    open_ms,
                    f"{o:.8f}",
                    f"{h:.8f}",
                    f"{lo:.8f}",
                    f"{c:.8f}",
                    f"{volume:.8f}",
                    open_ms + step_ms - 1,
                    f"{volume * c:.8f}",
                    60 * len(minutes),
                    f"{volume / 2:.8f}",
                    f"{volume * c / 2:.8f}",
                    "0",
                ]
            )
        return rows

    def exchange_info_body(self, names: Sequence[str]) -> dict[str, Any]:
        return {
            "timezone": "UTC",
            "serverTime": int(self.clock() * 1000),
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
            "symbols": [
                {
                    "symbol": s,
                    "status": self.symbols[s],
                    "baseAsset": s[:-4] if s.endswith("USDT") else s[:3],
                    "quoteAsset": "USDT" if s.endswith("USDT") else s[-3:],
                    "isSpotTradingAllowed": True,
                }
                for s in names
            ],
        }

    # -- request handling ----------------------------------------------------------------------

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
            return (
                fault.status,
                {"code": fault.code, "msg": f"Injected HTTP {fault.status}."},
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

    def _route(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any, dict[str, str]]:
        invalid = (400, {"code": -1121, "msg": "Invalid symbol."}, {})
        now_ms = int(self.clock() * 1000)
        if path == "/api/v3/ping":
            return 200, {}, {}
        if path == "/api/v3/time":
            return 200, {"serverTime": now_ms}, {}
        if path == "/api/v3/exchangeInfo":
            with self._lock:
                if "symbols" in query or "symbol" in query:
                    names = (
                        self._symbols_param(query) if "symbols" in query else query["symbol"][:1]
                    )
                    if isinstance(names, tuple):
                        return names
                    if any(n not in self.symbols for n in names):
                        return invalid
                else:
                    names = list(self.symbols)
                return 200, self.exchange_info_body(names), {}
        if path == "/api/v3/ticker/price":
            with self._lock:
                if "symbol" in query:
                    name = query["symbol"][0]
                    if name not in self.symbols:
                        return invalid
                    return 200, {"symbol": name, "price": f"{self.price(name, now_ms):.8f}"}, {}
                names = self._symbols_param(query) if "symbols" in query else list(self.symbols)
                if isinstance(names, tuple):
                    return names
                if any(n not in self.symbols for n in names):
                    return invalid
                body = ",".join(
                    f'{{"symbol":"{n}","price":"{self.price(n, now_ms):.8f}"}}' for n in names
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
            with self._lock:
                if name not in self.symbols or not SYMBOL_RE.fullmatch(name):
                    return invalid
                return 200, self.klines(name, step, start, end, limit), {}
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
        self.send_header("X-MBX-USED-WEIGHT-1M", str(exchange.weight_used()))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Binance-compatible fake exchange on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--symbols", type=int, default=len(DEFAULT_SYMBOLS))
    parser.add_argument("--weight-limit", type=int, default=6000)
    args = parser.parse_args(argv)
    exchange = FakeExchange(args.symbols, weight_limit=args.weight_limit, port=args.port)
    print(f"fake exchange serving {len(exchange.symbols)} symbols at {exchange.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        exchange._server.serve_forever()


if __name__ == "__main__":
    main()
