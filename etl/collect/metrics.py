"""Prometheus metrics of ``etl collect`` (``--metrics-port``), with prometheus_client.

Counters and histograms are updated by the poll loop as things happen; the rest (weight, ban,
last tick age per symbol, the staging file's rows, size and quarantine) is read when Prometheus
scrapes, on a connection of its own, so a scrape never holds up a poll.

Names follow the Prometheus conventions: the ``etl_`` prefix, ``_total`` for counters, base
units (seconds, bytes) in the name.

The endpoint is :class:`MetricsServer`: one event-loop thread holds every connection and one
worker thread renders the answers, so no client, slow or malicious, can add threads or more than
a bounded amount of memory to the collector (docs/operating.md, "Prometheus metrics").
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import queue
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from etl.collect.events import (
    ClockStepped,
    Event,
    FeedCounts,
    Missed,
    Polled,
    RollupEnded,
    Stored,
)
from etl.errors import ConfigError
from etl.exchange.parse import SKIP_REASONS
from etl.hours import parse_time, seconds
from etl.staging.state import LAST_ROLLUP_KEY

if TYPE_CHECKING:
    from etl.exchange.governor import WeightGovernor
    from etl.staging.store import Staging

# Poll latency buckets: a poll is one request and one SQLite commit, tens of milliseconds.
_POLL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_ROLLUP_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class CollectorMetrics:
    """The collector's instruments, in a registry of their own: those of its ``source`` only
    (``poll``: polls and their duration; ``trades``: write batches, the streams and the
    catch-up), so a dashboard never shows a series that cannot move."""

    def __init__(self, source: str = "poll") -> None:
        # A counter's `_created` twin (its creation time) doubles every series for a value
        # the process start time already gives; off, as in most exporters.
        disable_created_metrics()
        self.source = source
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ticks = Counter(
            "etl_ticks_stored",
            "Ticks committed to the staging file (with --source trades: trades).",
            registry=r,
        )
        if source == "trades":
            self.batches = Counter(
                "etl_trade_batches",
                "Batches of trades committed to the staging file (source trades).",
                registry=r,
            )
            self.batch_seconds = Histogram(
                "etl_trade_batch_duration_seconds",
                "Time to commit each batch of trades to the staging file (source trades).",
                buckets=_POLL_BUCKETS,
                registry=r,
            )
            self.trade_holes = Counter(
                "etl_trade_holes",
                "Ranges of aggregate trade ids that could not be fetched (source trades).",
                registry=r,
            )
            self.reconnects = Counter(
                "etl_trade_stream_reconnects",
                "Trade stream connections lost and opened again (source trades).",
                registry=r,
            )
            self.caught_up = Counter(
                "etl_trades_caught_up",
                "Trades fetched over REST to fill what the streams missed (source trades).",
                registry=r,
            )
            self.stream_messages = Counter(
                "etl_stream_messages",
                "Messages received on the trade streams (source trades): each is a trade "
                "stored or counted in etl_stream_messages_skipped_total.",
                registry=r,
            )
            self.stream_skipped = Counter(
                "etl_stream_messages_skipped",
                "Trade stream messages not stored, by reason: bad_json, not_trade (a reply or "
                "a notice), bad_trade (invalid fields), unknown_symbol, duplicate (already "
                "staged), not_written (its batch's write failed; fetched again over REST).",
                ["reason"],
                registry=r,
            )
            for reason in SKIP_REASONS:
                self.stream_skipped.labels(reason)
        else:
            self.polls = Counter(
                "etl_polls", "Polls by result: ok (stored) or missed.", ["result"], registry=r
            )
            self.polls.labels("ok")
            self.polls.labels("missed")
            self.poll_seconds = Histogram(
                "etl_poll_duration_seconds",
                "Time from sending a poll to its ticks committed in staging.",
                buckets=_POLL_BUCKETS,
                registry=r,
            )
            self.skipped = Counter(
                "etl_bad_elements_skipped",
                "Malformed ticker elements skipped, never stored.",
                registry=r,
            )
        self.rollups = Counter(
            "etl_rollup_runs",
            "Hourly rollup children by outcome: ok, failed, or stopped past their time limit.",
            ["result"],
            registry=r,
        )
        for result in ("ok", "failed", "stopped"):
            self.rollups.labels(result)
        self.rollup_seconds = Histogram(
            "etl_rollup_duration_seconds",
            "Wall time of each hourly rollup child.",
            buckets=_ROLLUP_BUCKETS,
            registry=r,
        )
        self.clock_steps = Counter(
            "etl_clock_steps",
            "Jumps of the wall clock the collector saw (each one logged; polls follow it).",
            registry=r,
        )
        self.dropped = Counter(
            "etl_metrics_requests_dropped",
            "Connections to /metrics closed without an answer, by reason: timeout (no whole "
            "request in time, or the answer not taken in time), evicted (room made for a newer "
            "one), refused (too many busy), too_large, bad_request (answered 4xx), closed (by "
            "the client first).",
            ["reason"],
            registry=r,
        )
        for reason in DROP_REASONS:
            self.dropped.labels(reason)
        self.last_rollup_ok = 0.0
        self.started = 0.0
        self.last_tick_ms: dict[str, int] = {}
        self._totals = FeedCounts()  # the trade feed's totals at the last batch
        self._state: _State | None = None

    def watch(
        self,
        staging: Staging,
        governor: Callable[[], WeightGovernor | None],
        clock: Callable[[], float],
    ) -> None:
        """Read the rest at scrape time from these."""
        self.started = clock()
        self._state = _State(self, staging, governor, clock)
        self.registry.register(self._state)

    def on(self, event: Event) -> None:
        """Count what the collector's loop reports."""
        if isinstance(event, Polled):
            self.polls.labels("ok").inc()
            self.poll_seconds.observe(event.seconds)
            self.ticks.inc(len(event.symbols))
            self.skipped.inc(event.skipped)
            self.last_tick_ms.update(dict.fromkeys(event.symbols, event.received_ms))
        elif isinstance(event, Missed):
            self.polls.labels("missed").inc(event.slots)
        elif isinstance(event, Stored):
            before = self._totals
            self.batches.inc()
            self.batch_seconds.observe(event.seconds)
            self.ticks.inc(event.stored)
            self.trade_holes.inc(event.totals.holes - before.holes)
            self.reconnects.inc(event.totals.reconnects - before.reconnects)
            self.caught_up.inc(event.totals.caught_up - before.caught_up)
            self.stream_messages.inc(event.totals.messages - before.messages)
            for reason, n in event.totals.skipped.items():
                if n != before.skipped.get(reason, 0):
                    self.stream_skipped.labels(reason).inc(n - before.skipped.get(reason, 0))
            self._totals = event.totals
            self.last_tick_ms.update(event.last_trade_ms)
        elif isinstance(event, ClockStepped):
            self.clock_steps.inc()
        elif isinstance(event, RollupEnded):
            self.rollups.labels(event.result).inc()
            self.rollup_seconds.observe(event.seconds)
            if event.result == "ok":
                self.last_rollup_ok = event.at

    def serve(self, port: int, host: str, **bounds: Any) -> MetricsServer:
        """``/metrics`` on ``host:port`` (:class:`MetricsServer`; ``bounds`` override its
        limits, for tests). Raises OSError if the port cannot be had."""
        server = MetricsServer(
            make_wsgi_app(self.registry),
            host,
            port,
            on_drop=lambda reason: self.dropped.labels(reason).inc(),
            **bounds,
        )
        return server.start()


class _State(Collector):
    """Gauges read at scrape time."""

    def __init__(
        self,
        metrics: CollectorMetrics,
        staging: Staging,
        governor: Callable[[], WeightGovernor | None],
        clock: Callable[[], float],
    ) -> None:
        self.metrics = metrics
        self.staging = staging
        self.governor = governor
        self.clock = clock
        self._lock = threading.Lock()
        self._conn = None

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected lazily: describing would read the database at registration

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        gov = self.governor()
        if gov is not None:
            snap = gov.snapshot()
            yield _gauge(
                "etl_request_weight_used", "Request weight used this minute.", snap["used"]
            )
            yield _gauge(
                "etl_request_weight_limit", "The exchange's weight limit per minute.", snap["limit"]
            )
            yield _gauge(
                "etl_request_weight_budget",
                "The weight this collector may use per minute.",
                snap["budget"],
            )
            until = snap["banned_until"] or 0.0
            yield _gauge(
                "etl_ban_active", "1 while a 429/418 ban is in force.", 1.0 if until > now else 0.0
            )
            yield _gauge(
                "etl_ban_until_timestamp_seconds",
                "When the last ban ends (Unix time, 0: none).",
                until,
            )
        ages = GaugeMetricFamily(
            "etl_last_tick_age_seconds",
            "Seconds since each symbol's newest stored tick.",
            labels=["symbol"],
        )
        for symbol, ms in sorted(self.metrics.last_tick_ms.items()):
            ages.add_metric([symbol], max(0.0, now - seconds(ms)))
        yield ages
        with self._lock:
            rows, rejected = self._counts()
            last_ok = self._last_rollup_ok()
        yield _gauge(
            "etl_rollup_last_success_timestamp_seconds",
            "When a rollup of this staging file last succeeded, hourly child or `etl rollup` run "
            "by hand or cron (Unix time; before any, when this collector started).",
            max(self.metrics.last_rollup_ok, last_ok or self.metrics.started),
        )
        yield _gauge("etl_staged_rows", "Ticks in the staging file.", rows)
        yield _gauge(
            "etl_quarantined_rows",
            "Rows in ticks_rejected (docs/how-it-works.md, The staging file).",
            rejected,
        )
        yield _gauge(
            "etl_staging_bytes",
            "Size of the staging file with its WAL.",
            sum(self.staging.db.file_sizes().values()),
        )

    def _reader(self) -> Any:
        """A read connection of our own: a scrape never waits for, or holds up, a poll."""
        if self._conn is None:
            self._conn = self.staging.db.reader()
        return self._conn

    def _counts(self) -> tuple[int, int]:
        reader = self._reader()
        return self.staging.ticks.count(reader), self.staging.quarantine.count(reader)

    def _last_rollup_ok(self) -> float | None:
        """The last success any rollup recorded in the staging file (it outlives a restart)."""
        state = self.staging.state.get(LAST_ROLLUP_KEY, self._reader()) or {}
        at = state.get("last_ok_at") or (state.get("at") if state.get("ok") else None)
        if not isinstance(at, str):
            return None
        try:
            ms = parse_time(at)
        except ConfigError:  # written by hand: no time to read
            return None
        return seconds(ms) if ms is not None else None


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


# The endpoint's bounds (docs/operating.md, "Prometheus metrics"). 256 connections take a burst
# of 200 scrapes at once without evicting any, and stay far below the 1,024 open files a systemd
# service gets by default (the collector's own files and sockets need the rest); 5 s for a
# request head is far more than Prometheus or curl need (they send it at once); a head is a few
# hundred bytes.
MAX_CONNECTIONS = 256
REQUEST_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 10.0
MAX_HEAD_BYTES = 16 * 1024
# Why a connection ended without an answer: etl_metrics_requests_dropped_total{reason}.
# What makes two requests' answers the same.
_RENDER_KEY = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "HTTP_ACCEPT", "HTTP_ACCEPT_ENCODING")
DROP_REASONS = ("timeout", "evicted", "refused", "too_large", "bad_request", "closed")


def default_max_connections() -> int:
    """``MAX_CONNECTIONS``, or a quarter of the open files this process may have if that is
    less: idle scrapers must never take the sockets the collector itself needs."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(8, min(MAX_CONNECTIONS, soft // 4))


class _Exchange(WSGIRequestHandler):
    """wsgiref's request handler (the one prometheus_client's own server uses), run on bytes: the
    request head the event loop has read in, and the response written to memory. HTTP parsing,
    the WSGI call and the response's form stay the standard library's."""

    bad = False

    def setup(self) -> None:
        self.rfile = io.BytesIO(self.request)
        self.wfile = io.BytesIO()

    def finish(self) -> None:
        pass  # the event loop writes the answer and closes the connection

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        self.bad = True  # a malformed request: answered with its 4xx, counted as bad_request
        super().send_error(code, message, explain)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a line per scrape would drown the collector's own lines


class _Worker:
    """One daemon thread that runs calls in turn. Not a ThreadPoolExecutor: its threads are
    joined at interpreter exit, so a render stuck in the staging file would hold up the
    collector's exit; this one is waited for a bounded time only."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple] | None] = (
            queue.SimpleQueue()
        )
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._calls.put((future, fn, args))
        return future

    def stop(self, timeout: float) -> None:
        self._calls.put(None)
        if self.thread.is_alive():
            self.thread.join(timeout)

    def _run(self) -> None:
        while (call := self._calls.get()) is not None:
            future, fn, args = call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the awaiting connection
                future.set_exception(exc)


@dataclass(eq=False)
class _Conn:
    task: asyncio.Task[None]
    reading: bool = True  # still waiting for its request head: may be evicted
    evicted: bool = False


class MetricsServer:
    """Serves a WSGI ``app`` (prometheus_client's ``make_wsgi_app``) over HTTP/1.0, bounded.

    * One asyncio event loop on one thread holds every connection: an idle or half-sent one
      costs a socket and a coroutine, never a thread.
    * A request head must arrive whole within ``request_timeout_s`` (slowloris) and be at most
      ``max_head_bytes``; the answer must be taken within ``write_timeout_s``.
    * At most ``max_connections`` are open: a new one past that evicts the oldest still sending
      its request (so a flood of idle sockets cannot lock Prometheus out), or is refused if none.
    * Answers are rendered one at a time on one worker thread, in arrival order: a burst of
      scrapes queues (each queued one holds a bounded head), it does not add threads, and the
      collector's poll thread shares the interpreter with at most that one renderer.

    Every connection closed without an answer is counted under a reason (``on_drop``). The
    socket is bound here, so a port in use raises OSError before anything starts.
    """

    def __init__(
        self,
        app: Callable[..., Any],
        host: str,
        port: int,
        *,
        on_drop: Callable[[str], None] = lambda reason: None,
        max_connections: int | None = None,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        write_timeout_s: float = WRITE_TIMEOUT_S,
        max_head_bytes: int = MAX_HEAD_BYTES,
    ) -> None:
        self.app = app
        self.on_drop = on_drop
        self.max_connections = max_connections or default_max_connections()
        self.request_timeout_s = request_timeout_s
        self.write_timeout_s = write_timeout_s
        self.max_head_bytes = max_head_bytes
        family, _, _, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        self._sock = socket.create_server(addr[:2], family=family, backlog=128)
        self.server_address: tuple[str, int] = self._sock.getsockname()[:2]
        # What wsgiref's WSGIServer.setup_environ gives every request (its server name without
        # the reverse DNS look-up).
        self.base_environ = {
            "SERVER_NAME": self.server_address[0],
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PORT": str(self.server_address[1]),
            "REMOTE_HOST": "",
            "CONTENT_LENGTH": "",
            "SCRIPT_NAME": "",
        }
        self._arrived = 0.0  # when the request being answered arrived (the worker's)
        self._last: tuple[Any, float, str, list[Any], bytes] | None = None  # the last render
        self._open: dict[_Conn, None] = {}  # insertion-ordered: the oldest first
        self._worker = _Worker("metrics-render")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    def get_app(self) -> Callable[..., Any]:
        return self._shared  # what wsgiref's handler asks its server for

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def start(self) -> MetricsServer:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._server = loop.run_until_complete(
                asyncio.start_server(self._serve, sock=self._sock, limit=self.max_head_bytes)
            )
            ready.set()
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="metrics-http", daemon=True)
        self._thread.start()
        self._worker.thread.start()
        if not ready.wait(10):
            raise RuntimeError("the metrics server did not start")
        return self

    def shutdown(self) -> None:
        """Stop listening, close every connection, end both threads: at once, or within about
        5 s if a render is stuck (every command answers a signal within 5 s)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            self._sock.close()
            return

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [conn.task for conn in self._open]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=1)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), loop).result(2)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(1)
        if not thread.is_alive():
            loop.close()
        self._worker.stop(2)
        self._sock.close()
        self._loop = self._thread = None

    # -- the event loop's side -----------------------------------------------------------------

    def _drop(self, reason: str) -> None:
        with contextlib.suppress(Exception):  # counting must never break the server
            self.on_drop(reason)

    def _evict(self) -> bool:
        """Make room: close the oldest connection still sending its request head."""
        for conn in self._open:
            if conn.reading:
                conn.evicted = True
                del self._open[conn]
                conn.task.cancel()
                return True
        return False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conn = _Conn(task)
        if len(self._open) >= self.max_connections and not self._evict():
            self._drop("refused")
            writer.transport.abort()
            return
        self._open[conn] = None
        try:
            async with asyncio.timeout(self.request_timeout_s):
                head = await self._read_head(reader)
            if head is None:
                return
            conn.reading = False
            peer = writer.get_extra_info("peername") or ("", 0)
            arrived = time.monotonic()
            answer, bad = await asyncio.wrap_future(
                self._worker.submit(self._answer, head, peer, arrived)
            )
            if bad or not answer:
                self._drop("bad_request")
            if answer:
                writer.write(answer)
                async with asyncio.timeout(self.write_timeout_s):
                    await writer.drain()
        except TimeoutError:
            self._drop("timeout")
        except asyncio.CancelledError:
            if not conn.evicted:
                raise  # shutting down
            self._drop("evicted")
        except OSError:
            self._drop("closed")  # reset by the client
        finally:
            self._open.pop(conn, None)
            writer.transport.abort()  # no lingering close: the answer, if any, is written

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes | None:
        """The request line and headers up to the blank line; None (counted) if the client
        closed first or sent more than ``max_head_bytes``."""
        head = bytearray()
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # one line past the reader's limit
                self._drop("too_large")
                return None
            if not line.endswith(b"\n"):
                self._drop("closed")
                return None
            head += line
            if len(head) > self.max_head_bytes:
                self._drop("too_large")
                return None
            if line in (b"\r\n", b"\n"):
                return bytes(head)

    # -- the worker's side ---------------------------------------------------------------------

    def _answer(self, head: bytes, peer: tuple[str, int], arrived: float) -> tuple[bytes, bool]:
        """The whole HTTP answer to ``head``, made by wsgiref around the app; and whether the
        request was malformed."""
        self._arrived = arrived
        exchange = _Exchange(head, peer, self)  # type: ignore[arg-type]
        assert isinstance(exchange.wfile, io.BytesIO)
        return exchange.wfile.getvalue(), exchange.bad

    def _shared(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        """The app, its output shared by the requests of a burst: a request is answered with the
        last output if that was rendered after the request arrived (so it is never older than
        the request), else with a new one. 200 scrapes at once cost a few renders, not 200
        reads of the staging file. Runs on the single worker: no lock."""
        key = tuple(environ.get(k) for k in _RENDER_KEY)
        last = self._last
        if last is not None and last[0] == key and last[1] >= self._arrived:
            start_response(last[2], last[3])
            return [last[4]]
        began = time.monotonic()
        answer: list[Any] = []
        body = b"".join(
            self.app(environ, lambda status, headers, *_: answer.extend((status, headers)))
        )
        self._last = (key, began, answer[0], answer[1], body)
        start_response(answer[0], answer[1])
        return [body]
