"""WebSocket market streams of the fake exchange: ``<symbol>@aggTrade``, raw and combined.

Served by :class:`StreamServer`, which :class:`etl.exchange.fake.rest.FakeExchange` owns: the same
symbols and the same trades as its REST API. The documented behaviour of Binance's spot streams
(developers.binance.com, "WebSocket Streams"):

* raw streams at ``/ws/<stream>`` (several may follow: ``/ws/a/b``), combined streams at
  ``/stream?streams=a/b/c`` whose events come wrapped as ``{"stream": name, "data": event}``;
  stream names are lower case (``btcusdt@aggTrade``: ``BTCUSDT@aggTrade`` yields nothing);
* ``SUBSCRIBE``, ``UNSUBSCRIBE``, ``LIST_SUBSCRIPTIONS``, ``SET_PROPERTY``/``GET_PROPERTY``
  (``combined``) as JSON messages; at most ``max_streams`` (1024) streams per connection;
* a ping frame every ``ping_interval`` (20 s); a client that leaves one unanswered for
  ``pong_timeout`` (60 s) is dropped;
* at most ``max_messages_per_s`` (5) messages a second from a client, pings, pongs and JSON
  alike; one more closes the connection (1008, "Too many requests");
* a connection lives ``max_lifetime`` (24 h) at most;
* a ``serverShutdown`` event precedes a planned disconnect.

Events are written in Binance's compact JSON, or with ``StreamRules.json_style`` spaced or
indented over several lines (JSON all the same, which a client must read too). Events are pushed
by a pump: every ``pump_interval`` seconds of real time it sends each trade
that happened since the last pump, up to the exchange clock's now, with ``E`` that now. With a
virtual clock, move the clock and call :meth:`StreamServer.pump` (``FakeExchange.pump``) to have
the trades up to the new now on their way before it returns. Connection timers (pings, pong
timeout, lifetime, rate limit) run on the real monotonic clock, whatever the exchange clock.

Choices where Binance documents nothing: a URL with more than ``max_streams`` streams is refused
with HTTP 400; a ``SUBSCRIBE`` past the limit is answered ``{"code": 2, "msg": ..., "id": ...}``
and changes nothing; a pong timeout closes with 1008, the lifetime and ``rotate`` with 1000,
``shutdown`` with 1001.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import websockets.http11
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State

from etl.hours import ms

if TYPE_CHECKING:
    from etl.exchange.fake.market import Market

WS_FAULT_KINDS = ("drop", "silence", "duplicate", "reorder", "shutdown", "rotate", "message")
# How events are written (StreamRules.json_style): Binance's compact JSON, or the same values
# with spaces after ``,`` and ``:``, or indented over several lines: JSON all the same, which a
# client must read as well.
JSON_STYLES: dict[str, dict[str, Any]] = {
    "compact": {"separators": (",", ":")},
    "spaced": {"separators": (", ", ": ")},
    "pretty": {"indent": 2},
}
_COUNTED = {Opcode.PING, Opcode.PONG, Opcode.TEXT, Opcode.BINARY}
_ALL = 10**9  # no limit on the trades a pump may push

# A combined URL naming 1024 streams is about 20 kB, past the library's 8 kB request-line limit;
# the limit is read at parse time, so raising the module's value is enough.
websockets.http11.MAX_LINE_LENGTH = max(websockets.http11.MAX_LINE_LENGTH, 64 * 1024)


@dataclass
class WsFault:
    """A WebSocket misbehaviour. It fires at the first pump that finds a matching connection open
    (one subscribed to ``stream``, or any if ``None``) and hits every matching connection open.

    kinds: ``drop`` (the TCP connection is cut, no close frame), ``silence`` (nothing at all is
    sent, no events, no pings, no replies, for ``duration`` s or for good if ``None``; events of
    that time are lost), ``duplicate`` (the next ``times`` events are each sent twice),
    ``reorder`` (the next ``times`` pairs of consecutive events are swapped), ``shutdown`` (a
    ``serverShutdown`` event, then a close after ``delay`` s), ``rotate`` (the close that ends a
    connection's lifetime, now), ``message`` (``text`` sent as it is, ``times`` times: a
    malformed message, an event of another kind, a trade of a symbol not subscribed...).
    """

    kind: str
    stream: str | None = None
    times: int = 1
    duration: float | None = None
    delay: float = 0.2
    text: str = ""
    hit: list[int] = field(default_factory=list)  # ids of the connections it hit once fired

    def __post_init__(self) -> None:
        if self.kind not in WS_FAULT_KINDS:
            raise ValueError(f"unknown WebSocket fault kind {self.kind!r}")


@dataclass
class WsClose:
    """A connection the server ended, and why: ``drop``, ``pong timeout``, ``too many
    messages``, ``lifetime``, ``rotate``, ``shutdown``, ``stop``."""

    conn: int
    at: float  # time.monotonic()
    why: str


@dataclass
class WsConnection:
    """What the server knows of one connection, for tests to look at."""

    id: int
    path: str
    combined: bool
    streams: tuple[str, ...]
    opened: float  # time.monotonic()
    open: bool
    messages_in: int  # frames counted against the rate limit
    pings: int
    pongs: int
    events: int  # messages sent, events and replies


class _Conn(ServerConnection):
    """A server connection that sees each frame the client sends, for the rate limit and pongs."""

    fake: _State | None = None
    pending: tuple[bool, list[str]] | None = None
    owner: StreamServer | None = None

    def process_event(self, event: Any) -> None:
        super().process_event(event)
        state, owner = self.fake, self.owner
        if state is None or owner is None or not isinstance(event, Frame):
            return
        if event.opcode in _COUNTED:
            owner._on_frame(state, event.opcode)


@dataclass
class _State:
    id: int
    ws: _Conn
    path: str
    combined: bool
    opened: float
    streams: dict[str, str | None] = field(default_factory=dict)  # name -> symbol with events
    last_ping: float = 0.0
    awaiting_since: float | None = None  # when the oldest unanswered ping went out
    recent: deque[float] = field(default_factory=deque)
    silent_until: float | None = None
    duplicate_left: int = 0
    reorder_left: int = 0
    close_at: tuple[float, int, str, str] | None = None  # (when, code, reason, why)
    closing: bool = False
    messages_in: int = 0
    pings: int = 0
    pongs: int = 0
    events: int = 0

    def silent(self, now: float) -> bool:
        return self.silent_until is not None and now < self.silent_until


def _error(code: int, msg: str, mid: Any) -> str:
    return json.dumps({"code": code, "msg": msg, "id": mid}, separators=(",", ":"))


@dataclass(frozen=True)
class StreamRules:
    """How the streams behave: Binance's documented figures by default (see the module's
    docstring), compressible for tests (a 2 s "24 h" rotation, a ping every 0.1 s)."""

    port: int = 0
    ping_interval: float = 20.0
    pong_timeout: float = 60.0
    max_lifetime: float = 24 * 3600.0
    max_streams: int = 1024
    max_messages_per_s: int = 5
    pump_interval: float = 0.05
    json_style: str = "compact"  # a key of JSON_STYLES: how events are written

    def __post_init__(self) -> None:
        if self.json_style not in JSON_STYLES:
            raise ValueError(f"json_style must be one of {', '.join(JSON_STYLES)}")


class StreamServer:
    """The WebSocket side of the fake exchange: the streams of a :class:`Market`, on their own
    thread and event loop."""

    def __init__(self, market: Market, rules: StreamRules | None = None) -> None:
        self.market = market
        self.rules = rules or StreamRules()
        port = self.rules.port
        # Bound now, as the HTTP server is, so that the URL is known before start().
        self._sock = socket.create_server(("127.0.0.1", port))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Server | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._ping_ids = itertools.count(1)
        self._states: dict[int, _State] = {}
        self._cursor: dict[str, int] = {}  # symbol -> id of the last trade pushed
        self._faults: list[WsFault] = []
        self._mutex = threading.Lock()  # faults and the close log, shared with other threads
        self.closes: list[WsClose] = []

    @property
    def url(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"ws://{host}:{port}"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._server = loop.run_until_complete(self._serve())
            self._pump_task = loop.create_task(self._pump_forever())
            ready.set()
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="fake-exchange-ws", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the WebSocket server did not start")

    async def _serve(self) -> Server:
        return await serve(
            self._handler,
            sock=self._sock,
            process_request=self._process_request,
            process_response=self._process_response,
            create_connection=_Conn,
            ping_interval=None,  # pings and pong timeouts are ours, with Binance's figures
            ping_timeout=None,
            compression=None,
            close_timeout=1.0,
            max_size=1 << 16,
        )

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            self._sock.close()
            return

        async def shutdown() -> None:
            if self._pump_task is not None:
                self._pump_task.cancel()
            for state in self._states.values():
                if not state.closing:
                    self._log(state, "stop")
            if self._server is not None:
                self._server.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._server.wait_closed(), 5)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        self._sock.close()
        self._loop = self._thread = None

    # -- control from other threads -----------------------------------------------------------

    def inject(self, kind: str, **kwargs: Any) -> WsFault:
        fault = WsFault(kind, **kwargs)
        with self._mutex:
            self._faults.append(fault)
        return fault

    def pump(self, timeout: float = 10.0) -> int:
        """Run one pump now (faults, pings, timeouts, events up to the clock's now) and wait for
        it: every message it sends is written to its socket on return. The messages sent."""
        if self._loop is None:
            raise RuntimeError("the WebSocket server is not running")
        return asyncio.run_coroutine_threadsafe(self._tick(), self._loop).result(timeout)

    @property
    def connections(self) -> list[WsConnection]:
        """Every connection so far, open or not, oldest first."""
        with self._mutex:
            states = list(self._states.values())
        return [
            WsConnection(
                s.id,
                s.path,
                s.combined,
                tuple(s.streams),
                s.opened,
                s.ws.state is State.OPEN and not s.closing,
                s.messages_in,
                s.pings,
                s.pongs,
                s.events,
            )
            for s in states
        ]

    def wait_for_connections(self, n: int, timeout: float = 5.0) -> list[WsConnection]:
        """Block until at least ``n`` connections are open; the open ones."""
        deadline = time.monotonic() + timeout
        while True:
            open_ = [c for c in self.connections if c.open]
            if len(open_) >= n or time.monotonic() > deadline:
                return open_
            time.sleep(0.01)

    # -- handshake and messages ---------------------------------------------------------------

    def _parse_path(self, raw: str) -> tuple[bool, list[str]] | None:
        parts = urlsplit(raw)
        path = parts.path.rstrip("/")
        if path == "/ws":
            return False, []
        if path.startswith("/ws/"):
            return False, [s for s in path[4:].split("/") if s]
        if path == "/stream":
            streams = parse_qs(parts.query).get("streams", [""])[0]
            return True, [s for s in streams.split("/") if s]
        return None

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parsed = self._parse_path(request.path)
        if parsed is None:
            return connection.respond(404, f"Unknown path {urlsplit(request.path).path}\n")
        streams = list(dict.fromkeys(parsed[1]))
        if len(streams) > self.rules.max_streams:
            return connection.respond(
                400,
                json.dumps(
                    {
                        "code": 2,
                        "msg": f"Invalid request: at most {self.rules.max_streams} streams "
                        f"per connection, got {len(streams)}",
                    }
                ),
            )
        connection.pending = (parsed[0], streams)  # type: ignore[attr-defined]
        return None

    def _process_response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> Response | None:
        # Registered before the 101 goes out: a client whose connect() returned is in the next
        # pump, even one run at once from another thread.
        conn: _Conn = connection  # type: ignore[assignment]
        if response.status_code != 101 or conn.pending is None:
            return None
        combined, streams = conn.pending
        now = time.monotonic()
        state = _State(next(self._ids), conn, request.path, combined, now, last_ping=now)
        self._subscribe(state, streams)
        conn.owner = self
        conn.fake = state
        with self._mutex:
            self._states[state.id] = state
        return None

    def _symbol_of(self, stream: str) -> str | None:
        name, _, kind = stream.partition("@")
        if kind != "aggTrade" or name != name.lower():
            return None
        symbol = name.upper()
        return symbol if symbol in self.market.symbols else None

    def _subscribe(self, state: _State, streams: list[str]) -> None:
        now_ms = None
        for stream in streams:
            symbol = self._symbol_of(stream)
            state.streams[stream] = symbol
            if symbol is not None and symbol not in self._cursor:
                if now_ms is None:
                    now_ms = ms(self.market.clock())
                self._cursor[symbol] = self.market.last_trade_id(symbol, now_ms)

    def _on_frame(self, state: _State, opcode: Opcode) -> None:
        now = time.monotonic()
        state.messages_in += 1
        if opcode is Opcode.PONG:
            state.pongs += 1
            state.awaiting_since = None
        recent = state.recent
        recent.append(now)
        while recent and recent[0] <= now - 1.0:
            recent.popleft()
        if len(recent) > self.rules.max_messages_per_s and not state.closing:
            self._close(state, 1008, "Too many requests", "too many messages")

    async def _handler(self, ws: ServerConnection) -> None:
        conn: _Conn = ws  # type: ignore[assignment]
        state = conn.fake
        if state is None:
            return
        with contextlib.suppress(ConnectionClosed):
            async for message in conn:
                reply = self._control(state, message)
                if reply is not None and not state.silent(time.monotonic()) and not state.closing:
                    state.events += 1
                    await conn.send(reply)

    def _control(self, state: _State, message: str | bytes) -> str | None:
        try:
            msg = json.loads(message)
        except ValueError as exc:
            return json.dumps({"code": 3, "msg": f"Invalid JSON: {exc}"})
        if not isinstance(msg, dict) or "method" not in msg:
            return _error(2, "Invalid request: missing field `method`", None)
        mid, method, params = msg.get("id"), msg["method"], msg.get("params", [])
        if not isinstance(params, list):
            return _error(2, "Invalid request: params must be an array", mid)
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not all(isinstance(p, str) for p in params):
                return _error(2, "Invalid request: stream names must be strings", mid)
            if method == "UNSUBSCRIBE":
                for name in params:
                    state.streams.pop(name, None)
                return json.dumps({"result": None, "id": mid})
            new = [p for p in dict.fromkeys(params) if p not in state.streams]
            if len(state.streams) + len(new) > self.rules.max_streams:
                return _error(
                    2,
                    f"Invalid request: at most {self.rules.max_streams} streams per connection",
                    mid,
                )
            self._subscribe(state, new)
            return json.dumps({"result": None, "id": mid})
        if method == "LIST_SUBSCRIPTIONS":
            return json.dumps({"result": list(state.streams), "id": mid})
        if method in ("SET_PROPERTY", "GET_PROPERTY"):
            if not params or params[0] != "combined":
                return _error(0, "Unknown property", mid)
            if method == "GET_PROPERTY":
                return json.dumps({"result": state.combined, "id": mid})
            if len(params) != 2 or not isinstance(params[1], bool):
                return _error(1, "Invalid value type: expected Boolean", mid)
            state.combined = params[1]
            return json.dumps({"result": None, "id": mid})
        return _error(
            2,
            f"Invalid request: unknown variant `{method}`, expected one of `SUBSCRIBE`, "
            "`UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`",
            mid,
        )

    # -- the pump ------------------------------------------------------------------------------

    async def _pump_forever(self) -> None:
        while True:
            await asyncio.sleep(self.rules.pump_interval)
            try:
                await self._tick()
            except Exception as exc:  # a bug here must not stop the streams silently forever
                print(f"fake exchange: WebSocket pump failed: {exc!r}", flush=True)

    def _log(self, state: _State, why: str) -> None:
        with self._mutex:
            self.closes.append(WsClose(state.id, time.monotonic(), why))

    def _close(self, state: _State, code: int, reason: str, why: str) -> None:
        state.closing = True
        self._log(state, why)
        if why == "drop":
            transport = state.ws.transport
            if transport is not None:
                transport.abort()
            return
        assert self._loop is not None
        self._loop.create_task(state.ws.close(code, reason))

    def _apply_faults(self, states: list[_State], now: float, now_ms: int) -> None:
        with self._mutex:
            faults = list(self._faults)
        for fault in faults:
            hit = [s for s in states if fault.stream is None or fault.stream in s.streams]
            if not hit:
                continue
            with self._mutex:
                self._faults.remove(fault)
            for state in hit:
                fault.hit.append(state.id)
                if fault.kind == "drop":
                    self._close(state, 1006, "", "drop")
                elif fault.kind == "rotate":
                    self._close(state, 1000, "Connection lifetime reached", "rotate")
                elif fault.kind == "silence":
                    state.silent_until = now + (
                        math.inf if fault.duration is None else fault.duration
                    )
                elif fault.kind == "duplicate":
                    state.duplicate_left += fault.times
                elif fault.kind == "reorder":
                    state.reorder_left += fault.times
                elif fault.kind == "shutdown":
                    event = f'{{"e":"serverShutdown","E":{now_ms}}}'
                    if state.combined:
                        event = f'{{"stream":"!serverShutdown","data":{event}}}'
                    broadcast([state.ws], event)
                    state.events += 1
                    state.close_at = (now + fault.delay, 1001, "Server shutdown", "shutdown")
                elif fault.kind == "message":
                    for _ in range(fault.times):
                        broadcast([state.ws], fault.text)
                    state.events += fault.times

    async def _keepalive(self, states: list[_State], now: float) -> None:
        for state in states:
            if state.closing:
                continue
            if now - state.opened >= self.rules.max_lifetime:
                self._close(state, 1000, "Connection lifetime reached", "lifetime")
                continue
            if state.close_at is not None and now >= state.close_at[0]:
                _, code, reason, why = state.close_at
                self._close(state, code, reason, why)
                continue
            if state.silent(now):
                # nothing is sent, so nothing is owed: the ping clock starts again afterwards
                state.awaiting_since = None
                state.last_ping = now
                continue
            if (
                state.awaiting_since is not None
                and now - state.awaiting_since > self.rules.pong_timeout
            ):
                self._close(state, 1008, "Pong timeout", "pong timeout")
                continue
            if now - state.last_ping >= self.rules.ping_interval:
                state.last_ping = now
                if state.awaiting_since is None:
                    state.awaiting_since = now
                state.pings += 1
                with contextlib.suppress(ConnectionClosed, RuntimeError):
                    await state.ws.ping(str(next(self._ping_ids)))

    def _new_trades(self, states: list[_State], now_ms: int) -> dict[str, list[tuple[int, str]]]:
        """Per symbol, ``(trade time, event JSON)`` of every trade since the last pump."""
        market = self.market
        wanted = {sym for s in states for sym in s.streams.values() if sym is not None}
        for gone in set(self._cursor) - wanted:
            del self._cursor[gone]
        out: dict[str, list[tuple[int, str]]] = {}
        with market.lock:
            for symbol in wanted:
                if symbol not in market.symbols:
                    continue
                cursor = self._cursor.get(symbol)
                if cursor is None:
                    cursor = self._cursor[symbol] = market.last_trade_id(symbol, now_ms)
                trades = market.agg_trades(symbol, from_id=cursor + 1, limit=_ALL, now_ms=now_ms)
                if not trades:
                    continue
                self._cursor[symbol] = trades[-1].a
                head = f'{{"e":"aggTrade","E":{now_ms},"s":"{symbol}","a":'
                out[symbol] = [
                    (
                        t.T,
                        f'{head}{t.a},"p":"{t.p}","q":"{t.q}","f":{t.f},"l":{t.l},"T":{t.T},'
                        f'"m":{"true" if t.m else "false"},"M":true}}',
                    )
                    for t in trades
                ]
        return out

    def _deliver(self, state: _State, fresh: dict[str, list[tuple[int, str]]], now: float) -> int:
        batch: list[tuple[int, int, str]] = []
        for k, (stream, symbol) in enumerate(state.streams.items()):
            if symbol is None or symbol not in fresh:
                continue
            for t, event in fresh[symbol]:
                text = f'{{"stream":"{stream}","data":{event}}}' if state.combined else event
                batch.append((t, k, text))
        if not batch or state.silent(now):
            return 0
        batch.sort(key=lambda x: (x[0], x[1]))  # stable: each symbol's trades stay in id order
        texts = [text for _, _, text in batch]
        if state.reorder_left:
            i = 0
            while state.reorder_left and i + 1 < len(texts):
                texts[i], texts[i + 1] = texts[i + 1], texts[i]
                state.reorder_left -= 1
                i += 2
        if state.duplicate_left:
            doubled = min(state.duplicate_left, len(texts))
            state.duplicate_left -= doubled
            texts = [t for text in texts[:doubled] for t in (text, text)] + texts[doubled:]
        if self.rules.json_style != "compact":  # the same values, written another way
            style = JSON_STYLES[self.rules.json_style]
            texts = [json.dumps(json.loads(text), **style) for text in texts]
        for text in texts:
            broadcast([state.ws], text)
        state.events += len(texts)
        return len(texts)

    async def _tick(self) -> int:
        now = time.monotonic()
        now_ms = ms(self.market.clock())
        with self._mutex:
            for sid in [sid for sid, s in self._states.items() if s.ws.state is State.CLOSED]:
                self._states[sid].closing = True
            states = [s for s in self._states.values() if not s.closing]
        states = [s for s in states if s.ws.state is State.OPEN]
        self._apply_faults(states, now, now_ms)
        await self._keepalive(states, now)
        states = [s for s in states if not s.closing]
        fresh = self._new_trades(states, now_ms)
        sent = sum(self._deliver(s, fresh, now) for s in states)
        if now_ms % 60_000 >= 40_000:
            # the next minute's trades, a few symbols a pump, rather than all at its first pump
            self.market.prefetch(
                sorted(self._cursor), now_ms // 60_000 + 1, self.rules.pump_interval / 5
            )
        return sent
