"""The collector: the poll loop (one ticker request per slot, one SQLite transaction per poll), or
with ``source = "trades"`` every aggregate trade (:mod:`etl.collect.trade_feed`, a transaction per batch).

Slots are multiples of the interval on the wall clock, so a slow poll never shifts the ones after
it. A poll that cannot be completed before the next slot is counted as missed, never retried into
the next one. The collector does not exit because the exchange is down: it says since when and
why, waits out bans, and recovers by itself. It holds an OS lock on its staging file for its
whole life, so a second collector on the same file is refused. Closed hours are rolled up by a
separate ``etl rollup`` process (so a rollup never delays a poll, and SQLite is never opened
twice in one process), watched: one that runs too long is stopped and the next hour's starts.
Both sources share all of that: the lock, the checks, signals, the live view, metrics and the
rollup child; only the loop differs.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from etl.collect.events import (
    ClockStepped,
    ClockSteppedBack,
    CollectorStats,
    Event,
    FeedCounts,
    Listener,
    Missed,
    Polled,
    Stored,
    not_stored,
)
from etl.collect.metrics import CollectorMetrics, MetricsServer
from etl.collect.rollup_child import RollupLauncher
from etl.collect.screen import PollLines, Screen
from etl.collect.trade_feed import FLUSH_S, TradeFeed
from etl.collect.view import CollectorView
from etl.config import Settings
from etl.console import age
from etl.errors import ConfigError, DiskFull, StagingCorrupt
from etl.exchange.client import BinanceClient, open_exchange
from etl.exchange.endpoints import ERR_INVALID_SYMBOL
from etl.exchange.errors import (
    ApiError,
    BinanceError,
    ExchangeUnavailable,
    RateLimited,
    Stopped,
    UnknownSymbols,
    WeightBudgetExhausted,
)
from etl.exchange.governor import WEIGHT_KEY
from etl.hours import hour_floor, iso, ms, seconds
from etl.shutdown import Interrupted, on_signal
from etl.staging.store import Staging, open_staging

# Fills the gap since the last tick in the background: (client, since_ms, stop, report).
GapFiller = Callable[[BinanceClient, int, threading.Event, Callable[[str], None]], None]


def _totals(feed: TradeFeed) -> FeedCounts:
    fs = feed.stats
    return FeedCounts(
        trades=fs.trades,
        duplicates=fs.duplicates,
        skipped=dict(fs.skipped),  # a copy: the feed's goes on counting
        caught_up=fs.caught_up,
        holes=fs.holes,
        reconnects=fs.reconnects,
        messages=fs.messages,
    )


@contextmanager
def _stop_on_signals(stop: threading.Event, waiting: Callable[[], bool]) -> Iterator[None]:
    """SIGINT / SIGTERM set ``stop``: the current write finishes, then the loop ends. A request
    waiting on the exchange (``waiting()``) is abandoned at once, so the collector stops within
    moments even when the exchange never answers; a state write is never cut short (the client
    only waits on the network outside them).

    Under the CLI, ``stop`` is set from the shutdown watcher's thread, not from the handler: the
    handler runs in the main thread, perhaps inside ``stop.wait`` holding the event's lock, where
    setting the event would wait for that lock for ever (a test saw it about once in ten Ctrl-Cs)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with on_signal(stop.set) as watched:

        def handler(signum: int, frame: Any) -> None:
            if not watched:
                stop.set()
            if waiting():
                raise Interrupted

        for sig in previous:
            signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


class Collector:
    """Polls the exchange into the staging store until stopped.

    ``staging`` and ``client`` may be handed in (built once by the caller); by default
    :meth:`run` opens the configured ones. ``gap_filler`` (e.g. :func:`etl.jobs.backfill.gap_filler`)
    fills the gap since the last staged tick in a thread sharing the client.

    >>> Collector(load_settings()).run(polls=3)        # doctest: +SKIP
    CollectorStats(polls_ok=3, ...)
    """

    def __init__(
        self,
        settings: Settings,
        *,
        staging: Staging | None = None,
        client: BinanceClient | None = None,
        rollup: bool = True,
        gap_filler: GapFiller | None = None,
        view: CollectorView | None = None,
        clock: Callable[[], float] = time.time,
        stop: threading.Event | None = None,
        wait: Callable[[float], bool] | None = None,
        trade_options: dict[str, Any] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` (the wall clock, which stamps ticks), ``monotonic`` (time that only passes,
        which tells a jump of the wall clock) and ``wait`` (sleep up to N s, True if stopped) can
        be virtual in tests; ``trade_options`` go to :class:`etl.collect.trade_feed.TradeFeed`."""
        self.settings = settings
        self.symbols = list(settings.symbols)
        self.staging = staging
        self.client = client
        self.rollup = rollup
        self.gap_filler = gap_filler
        self.view = view or CollectorView()
        self.clock = clock
        self.monotonic = monotonic
        self.stop = stop or threading.Event()
        self.wait = wait or self.stop.wait
        self.stats = CollectorStats(started=clock())
        self.exchange_seen = False
        self.instruments: CollectorMetrics | None = None
        self.metrics_server: MetricsServer | None = None
        self.metrics_url: str | None = None
        self.trade_options = trade_options or {}
        self.feed: TradeFeed | None = None
        self.screen: Screen | None = None
        self.listeners: list[Listener] = []
        self.newest_ms = 0  # the newest tick this run stored
        self.hold_until_ms = 0  # after the clock stepped back: no stamp before this is stored

    # -- main loop -----------------------------------------------------------------------------

    def run(self, polls: int | None = None, duration: float | None = None) -> CollectorStats:
        self.stats = CollectorStats(started=self.clock())
        self.listeners = [self.stats, PollLines(self.view)]
        end = self.clock() + duration if duration is not None else math.inf
        with ExitStack() as stack:
            if self.staging is None:
                self.staging = stack.enter_context(open_staging(self.settings, writer=True))
            staging = self.staging
            staging.become_writer()
            stack.callback(staging.lock.release)
            self._check(staging)
            if self.client is None:
                self.client = stack.enter_context(
                    open_exchange(self.settings, staging.state, clock=self.clock, sleep=self.wait)
                )
            stack.enter_context(
                _stop_on_signals(
                    self.stop, lambda: self.client is not None and self.client.in_flight.is_set()
                )
            )
            stack.enter_context(self.view)
            client = self.client
            self.screen = Screen(
                self.view,
                self.settings,
                self.stats,
                lambda: client.governor,
                str(staging.path),
                self.clock,
                seen=lambda: self.exchange_seen,
            )
            self.listeners.append(self.screen)
            if self.settings.metrics_port is not None:
                stack.callback(self._serve_metrics(staging).shutdown)
            launcher = (
                RollupLauncher(
                    self.settings, self.view, self.clock, emit=self._emit, staging=staging
                )
                if self.rollup
                else None
            )
            completed = False
            try:
                if self.settings.source == "trades":
                    self._collect_trades(staging, launcher, end, polls)
                else:
                    self._collect_polls(staging, launcher, end, polls)
                completed = True
            finally:
                if launcher is not None:
                    self.stats.rollups = launcher.launched
                    self.stats.rollups_failed = launcher.failed
                    self.stats.rollups_stopped = launcher.stopped
                staging_path = staging.path
                stack.close()  # the live table's last frame first, then the summary below it
                if completed or self.stats.polls:  # ended by an error: what it did is still news
                    self._summary(staging_path)
        return self.stats

    def _collect_polls(
        self, staging: Staging, launcher: RollupLauncher | None, end: float, polls: int | None
    ) -> None:
        """Poll every ``interval_s`` until stopped, ``end`` or ``polls`` polls."""
        interval = self.settings.interval_s
        staging.state.record_interval(interval, ms(self.clock()))
        self.view.event(
            f"collecting {len(self.symbols)} symbol(s) every {interval:g} s from "
            f"{self.settings.binance_url} into {staging.path}"
        )
        gap_since = self._report_gap(staging)
        backfill_stop = threading.Event()
        backfiller: threading.Thread | None = None
        validated = False
        slot = math.floor(self.clock() / interval) + 1
        mark = (self.clock(), self.monotonic())
        try:
            while not self.stop.is_set():
                wait = min(slot * interval, end) - self.clock()
                if wait > 0 and self.wait(wait):
                    break
                if self.clock() >= end:
                    break
                step, mark = self._clock_step(mark, interval)
                if step:  # slots follow the wall clock from the next one; none is caught up
                    slot = math.floor(self.clock() / interval) + 1
                    continue
                deadline = (slot + 1) * interval - min(0.05 * interval, 0.25)
                if not validated:
                    validated = self._validate(deadline)
                if validated:
                    self._poll(deadline)
                    self._still_at_its_path(staging)
                    if self.gap_filler and gap_since is not None and backfiller is None:
                        backfiller = self._start_backfill(gap_since, backfill_stop)
                self._draw()
                if launcher is not None and validated:
                    launcher.tick()
                if polls is not None and self.stats.polls >= polls:
                    break
                next_slot = math.floor(self.clock() / interval) + 1
                overran = max(0, next_slot - slot - 1)  # slots we overran
                if overran:
                    self._emit(Missed(self.clock(), slots=overran))
                slot = next_slot
        except Interrupted:
            pass  # a signal abandoned a request: nothing was being written
        finally:
            backfill_stop.set()
            if backfiller is not None:
                backfiller.join(timeout=3)  # every command answers a signal within 5 s

    def _collect_trades(
        self, staging: Staging, launcher: RollupLauncher | None, end: float, polls: int | None
    ) -> None:
        """Store every trade until stopped, ``end``, or ``polls`` batches written."""
        assert self.client is not None
        self.view.event(
            f"collecting every trade of {len(self.symbols)} symbol(s) from "
            f"{self.settings.ws_url} (catch-up from {self.settings.binance_url}) into "
            f"{staging.path}"
        )
        try:
            while not self.stop.is_set() and self.clock() < end:
                if self._validate(self.clock() + 10):
                    break
                self._draw()
                if self.wait(2.0):
                    return
        except Interrupted:
            return
        if self.stop.is_set():
            return
        self.feed = feed = TradeFeed(
            staging,
            self.client,
            self.settings.ws_url,
            self.symbols,
            event=self.view.event,
            **self.trade_options,
        )
        if self.screen is not None:
            self.screen.feed = feed
        feed.start()
        try:
            while not self.stop.is_set() and self.clock() < end:
                if self.wait(FLUSH_S):
                    break
                self._store_batch(feed)
                self._still_at_its_path(staging)
                if launcher is not None:
                    launcher.tick()
                if polls is not None and self.stats.polls_ok >= polls:
                    break
        finally:
            feed.close()
            self.stats.take(_totals(feed))  # what the last batch's close flushed too

    def _store_batch(self, feed: TradeFeed) -> None:
        began, started = self.clock(), time.perf_counter()
        try:
            stored = feed.flush()
        except Exception as exc:  # a full disk, a write refused: missed, not a crash
            self._missed(exc, began)
            return
        self._emit(self._stored(feed, stored, time.perf_counter() - started))
        self._draw()

    def _stored(self, feed: TradeFeed, stored: int, seconds: float) -> Stored:
        """A trade batch's event: the feed's running totals and each symbol's last trade."""
        last = {s: e[2] - feed.offset_ms for s, e in feed.activity.state.items()}
        return Stored(self.clock(), stored, seconds, _totals(feed), last)

    def _still_at_its_path(self, staging: Staging) -> None:
        """A staging file renamed or replaced under a running collector: its write-ahead log
        would stay under the old name, so fold it into the file and stop (exit 2)."""
        if staging.lock.still_at_its_path():
            return
        staging.db.checkpoint()
        raise ConfigError(
            f"the staging file {staging.path} was renamed or replaced while collecting: the "
            "collector folded its write-ahead log into the file and stopped; start it again "
            "with ETL_SQLITE_PATH naming where the file is now"
        )

    def _emit(self, event: Event) -> None:
        for listener in self.listeners:
            listener.on(event)

    def _draw(self) -> None:
        if self.screen is not None:
            self.screen.draw()

    # -- steps ---------------------------------------------------------------------------------

    def _serve_metrics(self, staging: Staging) -> MetricsServer:
        """Start ``/metrics`` (Prometheus); returns the server, to shut down on the way out."""
        self.instruments = CollectorMetrics(self.settings.source)
        self.listeners.append(self.instruments)
        self.instruments.watch(
            staging, lambda: self.client.governor if self.client else None, self.clock
        )
        try:
            server = self.instruments.serve(
                int(self.settings.metrics_port or 0), self.settings.metrics_host
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {self.settings.metrics_host}:"
                f"{self.settings.metrics_port} ({exc.strerror}): choose another ETL_METRICS_PORT"
            ) from None
        self.metrics_server = server
        host, port = server.server_address[:2]
        self.metrics_url = f"http://{host}:{port}/metrics"
        self.view.event(f"Prometheus metrics at {self.metrics_url}")
        return server

    def _check(self, staging: Staging) -> None:
        """Refuse a malformed staging file before writing to it."""
        started = time.perf_counter()
        verdict = staging.db.quick_check()
        if verdict != "ok":
            raise StagingCorrupt(
                f"the staging file {staging.path} is malformed ({verdict}): recover it with "
                f"`sqlite3 {staging.path} .recover | sqlite3 {staging.path}.recovered`, then move "
                "the .recovered file into its place (rows keep their seq, so the ledger stays "
                "valid)"
            )
        took = time.perf_counter() - started
        if took > 1:
            self.view.event(f"checked {staging.path} in {took:.1f} s: sound")

    def _report_gap(self, staging: Staging) -> int | None:
        """Say how long the collector was away, and how to fill the hole; the gap's first hour."""
        last = staging.ticks.last_tick()
        if last is None:
            return None
        gap_s = self.clock() - seconds(last)
        if gap_s <= max(3 * self.settings.interval_s, 60):
            return None
        hint = (
            "filling it in the background"
            if self.gap_filler
            else (
                f"`{self.settings.command('backfill', '--since', iso(hour_floor(last)))}` (or "
                f"`{self.settings.command('collect', '--backfill')}`) fills it"
            )
        )
        self.view.event(
            f"no ticks staged since {iso(last)} ({age(gap_s)} ago): {hint}", logging.WARNING
        )
        return hour_floor(last)

    def _start_backfill(self, since_ms: int, stop: threading.Event) -> threading.Thread:
        """Fill the gap in a thread sharing this collector's client (so its weight governor and
        bans): the filler leaves the polls their share of the budget."""
        assert self.client is not None and self.gap_filler is not None
        client, fill = self.client, self.gap_filler

        def work() -> None:
            try:
                fill(client, since_ms, stop, self.view.event)
            except Exception as exc:  # the poller goes on, whatever the backfill does
                self.view.event(f"backfill failed: {exc}", logging.WARNING)

        thread = threading.Thread(target=work, name="backfill", daemon=True)
        thread.start()
        return thread

    def _validate(self, deadline: float) -> bool:
        assert self.client is not None
        began = self.clock()
        try:
            info = self.client.validate_symbols(self.symbols, deadline=deadline)
        except UnknownSymbols as exc:
            raise exc.advise("fix the configured symbols") from None
        except Stopped:  # stopping between retries: nothing was missed
            return False
        except BinanceError as exc:
            self._missed(exc, began)
            return False
        self.exchange_seen = True
        self.view.set_tick_sizes(info.tick_sizes)
        self.view.event(f"symbols checked against exchangeInfo: {len(self.symbols)} trading")
        return True

    def _clock_step(
        self, mark: tuple[float, float], interval: float
    ) -> tuple[float, tuple[float, float]]:
        """How far the wall clock jumped since ``mark`` beyond the time that passed (0: it did
        not), and the new mark. A jump back holds stamps until the newest stored tick's time,
        so no tick lands in an hour before ticks already stored (one a rollup may have closed)."""
        wall, mono = self.clock(), self.monotonic()
        step = (wall - mark[0]) - (mono - mark[1])
        if abs(step) <= max(2.0, interval):
            return 0.0, (wall, mono)
        if step < 0:
            self.hold_until_ms = max(self.hold_until_ms, self.newest_ms)
        self._emit(ClockStepped(wall, step))
        return step, (wall, mono)

    def _poll(self, deadline: float) -> None:
        assert self.client is not None and self.staging is not None
        started, began = time.perf_counter(), self.clock()
        if ms(began) <= self.hold_until_ms:  # no request: it would be stamped too early
            self._missed(ClockSteppedBack(self.hold_until_ms), began)
            return
        try:
            poll = self.client.prices(self.symbols, deadline=deadline)
        except ApiError as exc:
            if exc.code != ERR_INVALID_SYMBOL or not self._drop_delisted(deadline):
                self._missed(exc, began)
                return
            return self._poll(deadline)
        except Stopped:  # stopping between retries: nothing was missed
            return
        except BinanceError as exc:
            self._missed(exc, began)
            return
        state = {WEIGHT_KEY: {**self.client.governor.snapshot(), "at": poll.received_ms}}
        try:
            self.staging.ticks.append(poll.symbols, poll.prices, poll.received_ms, state=state)
        except DiskFull as exc:  # the disk may free up: a missed poll, named as what it is
            self._missed(exc, began)
            return
        except Exception as exc:  # any other failed write is a missed poll too, not a crash
            self._missed(exc, began)
            return
        self.newest_ms = max(self.newest_ms, poll.received_ms)
        gov, since = self.client.governor, self.stats.unreachable_since
        self._emit(
            Polled(
                at=self.clock(),
                received_ms=poll.received_ms,
                symbols=poll.symbols,
                prices=poll.prices,
                seconds=time.perf_counter() - started,
                skipped=poll.skipped,
                missing=poll.missing,
                weight=(gov.used, gov.limit),
                outage_s=None if since is None else self.clock() - since,
            )
        )

    def _drop_delisted(self, deadline: float) -> bool:
        """After -1121 on the list: re-read exchangeInfo and drop the symbols no longer listed."""
        assert self.client is not None
        try:
            info = self.client.exchange_info(None, deadline=deadline)
        except BinanceError as exc:
            self._missed(exc, self.clock())
            return False
        gone = [s for s in self.symbols if s not in info.statuses]
        if not gone:
            return False
        self.symbols = [s for s in self.symbols if s in info.statuses]
        self.view.event(
            f"dropped delisted symbol(s) {', '.join(gone)}; the others go on", logging.WARNING
        )
        if not self.symbols:
            raise ConfigError("every configured symbol was delisted: configure symbols that trade")
        return True

    def _missed(self, exc: BaseException, began: float) -> None:
        """A missed poll; ``began`` is when it started (an outage began no later)."""
        starts_outage = self.stats.unreachable_since is None and not isinstance(
            exc, RateLimited | WeightBudgetExhausted | DiskFull | ClockSteppedBack
        )
        offline = (
            not self.exchange_seen and isinstance(exc, ExchangeUnavailable) and not exc.reached
        )
        since = began if starts_outage else None
        self._emit(Missed(self.clock(), exc, outage_since=since, offline=offline))

    def _summary(self, staging_path: Path) -> None:
        s = self.stats
        if self.settings.source == "trades":
            self.view.event(
                f"stopped after {age(self.clock() - s.started)}: {s.ticks} trades stored in "
                f"{s.polls_ok} batches, {s.duplicates} duplicates dropped, {s.caught_up} fetched "
                f"over REST, {s.reconnects} reconnects, {s.holes} holes recorded, stream "
                f"messages not stored: {not_stored(s.stream_skipped)} (of {s.messages}), "
                f"{s.rollups} rollup(s) started; staging {staging_path}"
            )
            return
        self.view.event(
            f"stopped after {age(self.clock() - s.started)}: {s.polls_ok} polls ok, "
            f"{s.polls_missed} missed, {s.ticks} ticks stored, {s.skipped} bad elements skipped, "
            f"{s.rollups} rollup(s) started; staging {staging_path}"
        )
