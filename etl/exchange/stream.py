"""The WebSocket side of ``etl collect --source trades``: Binance's ``<symbol>@aggTrade`` streams.

One asyncio event loop on a thread of its own holds the connections; the collector's thread
takes what arrived with :meth:`TradeStream.drain`. What the exchange documents, and how it is met:

* combined streams ``/stream?streams=a/b/c`` with lower-case names, at most ``MAX_STREAMS``
  (1024) per connection: symbols are split into groups, one connection each;
* a connection lives 24 hours at most: each is replaced ``rotate_margin_s`` before that, by a new
  one opened first and the old closed after (make before break: the overlap's trades come twice
  and the second copy is dropped by its id);
* a ``serverShutdown`` event precedes a planned disconnect: it triggers the same replacement;
* the server pings every 20 s and drops a client that has not answered within a minute: the
  ``websockets`` library answers pings itself, from its own reader, whatever the collector does;
* at most 5 messages a second from a client: the subscription is in the URL, so the client only
  ever sends pongs and its own heartbeat pings (one every ``heartbeat_s``).

The heartbeat also proves delivery: when the pong of a ping sent at ``t`` comes back, every
message the server sent before answering it has been received (one TCP stream, in order); once
the reader has also taken each of them off the library's queue (:class:`DeliveryProof`), every
trade made before about ``t`` is in hand. That time, on the exchange's clock, is the connection's
``live_ms``; the trade feed lets a symbol's cursor follow it, and the rollup uses it to know that
an hour's last trade really was its last. A pong that does not come within ``pong_timeout_s``
means a dead or silent connection: it is closed and replaced.

Messages are not parsed here when they need not be: a line in Binance's compact JSON that holds
``"e":"aggTrade"`` is kept as it came and parsed in bulk by
:func:`etl.exchange.parse.parse_trade_events` (the fast path, a byte search). Anything else is
parsed as JSON: an aggTrade event written another way (spaces, several lines) is kept too,
rewritten compact; what is not one is counted by reason (``bad_json``, ``not_trade``) and handed
over with the lines, so that no message goes unaccounted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.frames import Frame, Opcode

from etl.exchange.parse import BAD_JSON, NOT_TRADE, is_trade_message

log = logging.getLogger("etl.collector")
# The library logs every connection opened and closed at INFO; the feed says what matters.
_ws_log = logging.getLogger("etl.exchange.stream.websockets")
_ws_log.setLevel(logging.WARNING)

MAX_STREAMS = 1024
LIFETIME_S = 24 * 3600.0
_TRADE_MARK = b'"e":"aggTrade"'  # the fast path: Binance writes compact JSON, one line a message
_DATA_OPCODES = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)  # with fin: a whole message in


class DeliveryProof:
    """When a pong's proof may count: only once the reader has taken every message that came
    before the pong. The library queues messages as frames arrive and resolves a pong at once;
    a read of the socket that holds many messages and then the pong would otherwise prove
    messages still waiting in the queue.

    >>> proof = DeliveryProof()
    >>> proof.received = 2  # two messages arrived, then the pong of a ping sent at 1,000
    >>> proof.pong(1_000) is None, proof.consume() is None, proof.consume()
    (True, True, 1000)
    """

    def __init__(self) -> None:
        self.received = 0  # messages the library has received (counted as frames arrive)
        self.consumed = 0  # messages the reader has taken
        self._pending: deque[tuple[int, int]] = deque()  # (messages before the pong, live_ms)

    def pong(self, live_ms: int) -> int | None:
        """A pong arrived proving ``live_ms``: the proof, if every earlier message is read."""
        self._pending.append((self.received, live_ms))
        return self._ready()

    def consume(self) -> int | None:
        """The reader took a message: a proof that now holds, if any."""
        self.consumed += 1
        return self._ready() if self._pending else None

    def _ready(self) -> int | None:
        live = None
        while self._pending and self._pending[0][0] <= self.consumed:
            live = self._pending.popleft()[1]
        return live


class _Conn(ClientConnection):
    """A client connection that notes when the server last sent anything but a pong to our
    pings (a stream whose server has gone quiet answers our pings all the same, from its
    library), and counts the messages that arrive, for :class:`DeliveryProof`."""

    heard = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.proof = DeliveryProof()

    def process_event(self, event: Any) -> None:
        super().process_event(event)
        if isinstance(event, Frame) and event.opcode is not Opcode.PONG:
            self.heard = time.monotonic()
            if event.fin and event.opcode in _DATA_OPCODES:
                self.proof.received += 1


@dataclass(frozen=True)
class StreamTimings:
    """How long things may take; Binance's figures by default, compressible for tests."""

    lifetime_s: float = LIFETIME_S
    rotate_margin_s: float = 600.0  # replace a connection this long before its lifetime ends
    heartbeat_s: float = 1.0
    pong_timeout_s: float = 10.0
    # The server pings every 20 s: nothing from it (no event, no ping) for this long is a dead
    # stream, whatever our pings get back.
    silence_s: float = 45.0
    open_timeout_s: float = 10.0
    backoff_s: float = 0.5  # first wait before reconnecting; doubles up to backoff_max_s
    backoff_max_s: float = 30.0
    # Trades made this long before a heartbeat was sent may still be on their way through the
    # exchange's own pipeline: live_ms stays behind the ping by that much.
    delivery_slack_ms: int = 1000


@dataclass
class StreamEvent:
    """Something that happened to a group's connection: ``open`` (``replacing`` an old one that
    stays open until the new one is up, or not), ``closed`` (why), ``shutdown`` (a
    ``serverShutdown`` notice)."""

    kind: str
    group: int
    at: float
    detail: str = ""
    replacing: bool = False


@dataclass
class _Group:
    index: int
    symbols: tuple[str, ...]
    live_ms: int = 0  # exchange time up to which this group's delivery is proven
    conn: ClientConnection | None = None
    opened_at: float = 0.0
    replace: asyncio.Event | None = None


@dataclass
class Drained:
    """What :meth:`TradeStream.drain` hands over: ``aggTrade`` lines (one message each, on one
    line), the other messages counted by why they hold no trade (``bad_json``, ``not_trade``),
    what happened, and per group the delivery proof taken before the lines (so it never claims
    a line not in hand)."""

    lines: list[bytes]
    events: list[StreamEvent]
    live_ms: dict[int, int]
    groups: dict[int, tuple[str, ...]] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)


def stream_groups(symbols: Sequence[str], per_connection: int = MAX_STREAMS) -> list[list[str]]:
    """Symbols split into connections of at most ``per_connection`` streams.

    >>> [len(g) for g in stream_groups([f"S{i}" for i in range(2500)])]
    [1024, 1024, 452]
    """
    step = max(1, min(per_connection, MAX_STREAMS))
    return [list(symbols[i : i + step]) for i in range(0, len(symbols), step)]


def stream_url(base: str, symbols: Sequence[str]) -> str:
    """The combined-stream URL of ``symbols`` (names are lower case on the streams).

    >>> stream_url("wss://stream.binance.com:9443", ["BTCUSDT", "ETHUSDT"])
    'wss://stream.binance.com:9443/stream?streams=btcusdt@aggTrade/ethusdt@aggTrade'
    """
    names = "/".join(f"{s.lower()}@aggTrade" for s in symbols)
    return f"{base.rstrip('/')}/stream?streams={names}"


class TradeStream:
    """The aggregate-trade streams of ``symbols`` from ``base_url``, on a thread of its own.

    ``exchange_ms`` gives the exchange's clock (epoch ms), for ``live_ms``.
    """

    def __init__(
        self,
        base_url: str,
        symbols: Sequence[str],
        *,
        exchange_ms: Callable[[], int],
        timings: StreamTimings | None = None,
        per_connection: int = MAX_STREAMS,
    ) -> None:
        self.base_url = base_url
        self.exchange_ms = exchange_ms
        self.timings = timings or StreamTimings()
        self.groups = [
            _Group(i, tuple(g)) for i, g in enumerate(stream_groups(symbols, per_connection))
        ]
        self._lock = threading.Lock()
        self._lines: list[bytes] = []
        self._skipped: dict[str, int] = {}
        self._events: list[StreamEvent] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- the consumer's side -------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._tasks = [loop.create_task(self._keep(g)) for g in self.groups]
            ready.set()
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="trade-stream", daemon=True)
        self._thread.start()
        ready.wait(5)

    def stop(self, timeout: float = 3.0) -> None:
        """Close every connection and end the thread (within ``timeout``: every command answers
        a signal within 5 s)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            for task in self._tasks:
                task.cancel()
            await asyncio.wait(self._tasks, timeout=timeout / 2)
            for g in self.groups:
                if g.conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(g.conn.close(), timeout / 4)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None

    def drain(self) -> Drained:
        """Everything that arrived since the last call, with each group's delivery proof as it
        stood before the first of these lines was taken."""
        with self._lock:
            live = {g.index: g.live_ms for g in self.groups}
            lines, self._lines = self._lines, []
            skipped, self._skipped = self._skipped, {}
            events, self._events = self._events, []
        return Drained(lines, events, live, {g.index: g.symbols for g in self.groups}, skipped)

    def open_groups(self) -> list[int]:
        return [g.index for g in self.groups if g.conn is not None]

    # -- the event loop's side -----------------------------------------------------------------

    def _event(self, kind: str, group: _Group, detail: str = "", replacing: bool = False) -> None:
        with self._lock:
            self._events.append(StreamEvent(kind, group.index, time.time(), detail, replacing))

    async def _keep(self, group: _Group) -> None:
        """:meth:`_keep_open`, started again should it ever fail (a bug must not end a group's
        stream for the rest of the run)."""
        while True:
            try:
                await self._keep_open(group)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("trade stream %d failed (%r): starting it again", group.index, exc)
                if group.conn is not None:
                    group.conn.transport.abort()
                    group.conn = None
                    self._event("closed", group, f"failed: {exc!r}")
                await asyncio.sleep(self.timings.backoff_s)

    async def _keep_open(self, group: _Group) -> None:
        """Keep one connection of the group open for ever: open, read, replace before its
        lifetime ends or on a shutdown notice, reconnect (with backoff) after a loss."""
        backoff = self.timings.backoff_s
        reader: asyncio.Task[str] | None = None
        while True:
            replacing = reader is not None and not reader.done()
            try:
                conn = await connect(
                    stream_url(self.base_url, group.symbols),
                    ping_interval=None,  # our heartbeat below; server pings are answered anyway
                    compression=None,
                    open_timeout=self.timings.open_timeout_s,
                    close_timeout=1.0,
                    max_size=1 << 20,
                    max_queue=None,  # never stop reading: a full queue would stall the pongs
                    logger=_ws_log,
                    create_connection=_Conn,
                )
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
                if reader is None or reader.done():
                    reader = None
                self._event("failed", group, f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.timings.backoff_max_s)
                continue
            backoff = self.timings.backoff_s
            old, old_reader = group.conn, reader
            group.conn, group.opened_at = conn, time.monotonic()
            group.replace = asyncio.Event()
            self._event("open", group, replacing=replacing)
            reader = asyncio.create_task(self._read(group, conn))
            if old is not None and old_reader is not None:
                # The new connection is reading: the old one may go.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(old.close(), 2.0)
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(old_reader, 1.0)
            lifetime = self.timings.lifetime_s - self.timings.rotate_margin_s
            replace_wait = asyncio.create_task(group.replace.wait())
            try:
                done, _ = await asyncio.wait(
                    {reader, replace_wait},
                    timeout=max(0.0, lifetime - (time.monotonic() - group.opened_at)),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                replace_wait.cancel()
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    reader.cancel()
            if reader in done:
                why = reader.result() if not reader.cancelled() else "cancelled"
                group.conn = None
                self._event("closed", group, why)
                reader = None
                await asyncio.sleep(min(backoff, 0.1))
            # else: lifetime nearly over, or a shutdown notice: open the next one, then close
            # this one (reader still running)

    async def _read(self, group: _Group, conn: ClientConnection) -> str:
        """Read until the connection ends; why it ended."""
        beat = asyncio.create_task(self._heartbeat(group, conn))
        try:
            async for message in conn:
                data = message if isinstance(message, bytes) else message.encode()
                # A compact line goes as it came; one with a newline would split in the NDJSON
                # batch, so it takes the slow path like any other message.
                if _TRADE_MARK not in data or b"\n" in data:
                    data = self._other(group, data)
                with self._lock:
                    if data is not None:
                        self._lines.append(data)
                    self._consumed(group, conn)
        except ConnectionClosed as exc:
            return f"closed ({exc})"
        finally:
            beat.cancel()
        return f"closed by the server ({conn.close_code} {conn.close_reason})".replace(" )", ")")

    @staticmethod
    def _consumed(group: _Group, conn: ClientConnection) -> None:
        """The reader took one of ``conn``'s messages (under the lock): a pong's proof that
        now holds moves the group's ``live_ms``."""
        assert isinstance(conn, _Conn)
        live = conn.proof.consume()
        if live is not None and group.conn is conn:
            group.live_ms = max(group.live_ms, live)

    def _other(self, group: _Group, data: bytes) -> bytes | None:
        """A message off the fast path: an aggTrade event written another way, as a compact
        line; anything else counted (and a ``serverShutdown`` notice acted on): None."""
        try:
            msg: Any = json.loads(data)
        except ValueError:  # UnicodeDecodeError too
            self._skip(BAD_JSON)
            return None
        if is_trade_message(msg):  # one compact line, as the batch parser reads them
            return json.dumps(msg, separators=(",", ":")).encode()
        self._skip(NOT_TRADE)
        event = msg.get("data", msg) if isinstance(msg, dict) else None
        if isinstance(event, dict) and event.get("e") == "serverShutdown":
            self._event("shutdown", group, "serverShutdown: replacing the connection")
            if group.replace is not None:
                group.replace.set()
        return None

    def _skip(self, why: str) -> None:
        with self._lock:
            self._skipped[why] = self._skipped.get(why, 0) + 1

    async def _heartbeat(self, group: _Group, conn: ClientConnection) -> None:
        t = self.timings
        assert isinstance(conn, _Conn)
        conn.heard = time.monotonic()
        while True:
            if time.monotonic() - conn.heard > t.silence_s:
                log.warning("nothing from the trade stream for %.0f s: reconnecting", t.silence_s)
                conn.transport.abort()
                return
            sent_ms = self.exchange_ms()
            try:
                pong = await conn.ping()
                await asyncio.wait_for(pong, t.pong_timeout_s)
            except TimeoutError:
                log.warning(
                    "no pong from the trade stream within %.0f s: reconnecting", t.pong_timeout_s
                )
                conn.transport.abort()  # a silent peer would not answer a close either
                return
            except ConnectionClosed:
                return
            if group.conn is conn and time.monotonic() - conn.heard <= t.silence_s:
                with self._lock:
                    live = conn.proof.pong(sent_ms - t.delivery_slack_ms)
                    if live is not None:
                        group.live_ms = max(group.live_ms, live)
            await asyncio.sleep(t.heartbeat_s)
