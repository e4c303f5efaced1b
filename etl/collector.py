"""The poll loop: one ticker request per slot, one SQLite transaction per poll.

Slots are multiples of the interval on the wall clock, so a slow poll never shifts the ones after
it. A poll that cannot be completed before the next slot is counted as missed, never retried into
the next one. The collector does not exit because the exchange is down: it says since when, waits
out bans, and recovers by itself. Closed hours are rolled up by a separate ``etl rollup`` process
so a rollup never delays a poll (and SQLite is never opened twice in one process).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from etl.binance import (
    ERR_INVALID_SYMBOL,
    ApiError,
    BinanceClient,
    BinanceError,
    RateLimited,
    UnknownSymbols,
    WeightBudgetExhausted,
    WeightGovernor,
)
from etl.config import Settings
from etl.console import CollectorView, age, iso
from etl.errors import ConfigError
from etl.staging import Staging, hour_floor

# A closed hour is rolled up this long after it ends: its last poll is committed well before.
ROLLUP_GRACE_S = 10.0
ROLLUP_RETRY_S = 300.0
WEIGHT_KEY = "binance.weight"


class RunningMetrics:
    """Open, high, low, last, mean and samples per symbol for the current hour, in memory.

    >>> m = RunningMetrics()
    >>> m.update(["BTCUSDT"], [10.0], 0); m.update(["BTCUSDT"], [12.0], 5000)
    >>> m.frame().row(0)
    ('BTCUSDT', 10.0, 12.0, 10.0, 12.0, 11.0, 2)
    """

    _EMPTY = pl.DataFrame(
        schema={
            "symbol": pl.String,
            "open": pl.Float64,
            "high": pl.Float64,
            "low": pl.Float64,
            "last": pl.Float64,
            "total": pl.Float64,
            "samples": pl.Int64,
        }
    )

    def __init__(self) -> None:
        self.hour: int | None = None
        self._state = self._EMPTY

    def update(self, symbols: Sequence[str], prices: Sequence[float], ts_ms: int) -> None:
        hour = hour_floor(ts_ms)
        if hour != self.hour:
            self.hour, self._state = hour, self._EMPTY
        new = pl.DataFrame(
            {"symbol": symbols, "price": prices}, schema={"symbol": pl.String, "price": pl.Float64}
        )
        price = pl.col("price")
        self._state = self._state.join(new, on="symbol", how="full", coalesce=True).select(
            "symbol",
            open=pl.coalesce("open", price),
            high=pl.max_horizontal("high", price),
            low=pl.min_horizontal("low", price),
            last=pl.coalesce(price, "last"),
            total=pl.sum_horizontal("total", price),
            samples=pl.col("samples").fill_null(0) + price.is_not_null().cast(pl.Int64),
        )

    def frame(self) -> pl.DataFrame:
        return self._state.sort("symbol").select(
            "symbol",
            "open",
            "high",
            "low",
            "last",
            mean=pl.col("total") / pl.col("samples"),
            samples="samples",
        )


@dataclass
class CollectorStats:
    started: float = field(default_factory=time.time)
    polls_ok: int = 0
    polls_missed: int = 0
    ticks: int = 0
    skipped: int = 0
    last_error: str | None = None
    unreachable_since: float | None = None
    rollups: int = 0
    last_poll_ms: float | None = None

    @property
    def polls(self) -> int:
        return self.polls_ok + self.polls_missed


class RollupLauncher:
    """Starts ``etl rollup`` in a child process once each hour has closed."""

    def __init__(self, settings: Settings, view: CollectorView, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.view = view
        self.clock = clock
        self.log_path = settings.data_dir / "rollup.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.done_boundary: int | None = None
        self.not_before = 0.0
        self.launched = 0

    def tick(self) -> None:
        now = self.clock()
        if self.proc is not None:
            code = self.proc.poll()
            if code is None:
                return
            self.proc = None
            if code == 0:
                self.view.event(f"rollup finished (log: {self.log_path})")
            else:
                self.view.event(
                    f"rollup failed with exit {code}; retrying in {ROLLUP_RETRY_S:.0f} s "
                    f"(details in {self.log_path})",
                    "yellow",
                )
                self.done_boundary = None
                self.not_before = now + ROLLUP_RETRY_S
                return
        boundary = hour_floor(int((now - ROLLUP_GRACE_S) * 1000))
        if now < self.not_before or boundary == self.done_boundary:
            return
        self.done_boundary = boundary
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "etl", "rollup"],
                env={**os.environ, **self.settings.env()},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C of the collector must not cut a rollup short
            )
        self.launched += 1
        self.view.event(f"rollup started for hours before {iso(boundary)}")


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Collector:
    """Polls the exchange into the staging store until stopped.

    >>> Collector(load_settings()).run(polls=3)        # doctest: +SKIP
    CollectorStats(polls_ok=3, ...)
    """

    def __init__(
        self,
        settings: Settings,
        *,
        rollup: bool = True,
        backfill: bool = False,
        view: CollectorView | None = None,
        clock: Callable[[], float] = time.time,
        stop: threading.Event | None = None,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        """``clock`` and ``wait`` (sleep up to N s, True if stopped) can be virtual in tests."""
        self.settings = settings
        self.symbols = list(settings.symbols)
        self.rollup = rollup
        self.backfill = backfill
        self.view = view or CollectorView()
        self.clock = clock
        self.stop = stop or threading.Event()
        self.wait = wait or self.stop.wait
        self.stats = CollectorStats(started=clock())
        self.metrics = RunningMetrics()

    # -- main loop -----------------------------------------------------------------------------

    def run(self, polls: int | None = None, duration: float | None = None) -> CollectorStats:
        interval = self.settings.interval_s
        self.stats = CollectorStats(started=self.clock())
        end = self.clock() + duration if duration is not None else math.inf
        with (
            Staging(
                self.settings.staging_path, synchronous=self.settings.sqlite_synchronous
            ) as staging,
            _stop_on_signals(self.stop),
            self.view,
        ):
            self.staging = staging
            governor = WeightGovernor(
                self.settings.weight_budget, store=staging, clock=self.clock, sleep=self.wait
            )
            self.client = BinanceClient(
                self.settings.binance_url, governor=governor, clock=self.clock, sleep=self.wait
            )
            launcher = RollupLauncher(self.settings, self.view, self.clock) if self.rollup else None
            self.view.event(
                f"collecting {len(self.symbols)} symbol(s) every {interval:g} s from "
                f"{self.settings.binance_url} into {self.settings.staging_path}"
            )
            gap_since = self._report_gap(staging)
            backfill_stop = threading.Event()
            backfiller: threading.Thread | None = None
            validated = False
            slot = math.floor(self.clock() / interval) + 1
            try:
                while not self.stop.is_set():
                    wait = slot * interval - self.clock()
                    if wait > 0 and self.wait(wait):
                        break
                    if self.clock() >= end:
                        break
                    deadline = (slot + 1) * interval - min(0.05 * interval, 0.25)
                    if not validated:
                        validated = self._validate(deadline)
                    if validated:
                        self._poll(deadline)
                        if self.backfill and gap_since is not None and backfiller is None:
                            backfiller = self._start_backfill(gap_since, backfill_stop)
                    self._refresh()
                    if launcher is not None and validated:
                        launcher.tick()
                    if polls is not None and self.stats.polls >= polls:
                        break
                    next_slot = math.floor(self.clock() / interval) + 1
                    self.stats.polls_missed += max(0, next_slot - slot - 1)  # slots we overran
                    slot = next_slot
            finally:
                backfill_stop.set()
                if backfiller is not None:
                    backfiller.join(timeout=30)
                self.client.close()
                if launcher is not None:
                    self.stats.rollups = launcher.launched
        self._summary()
        return self.stats

    # -- steps ---------------------------------------------------------------------------------

    def _report_gap(self, staging: Staging) -> int | None:
        """Say how long the collector was away, and how to fill the hole; the gap's first hour."""
        last = staging.last_tick()
        if last is None:
            return None
        gap_s = self.clock() - last / 1000
        if gap_s <= max(3 * self.settings.interval_s, 60):
            return None
        hint = (
            "filling it in the background"
            if self.backfill
            else (
                f"`etl backfill --since {iso(hour_floor(last))}` (or `etl collect --backfill`) fills it"
            )
        )
        self.view.event(f"no ticks staged since {iso(last)} ({age(gap_s)} ago): {hint}", "yellow")
        return hour_floor(last)

    def _start_backfill(self, since_ms: int, stop: threading.Event) -> threading.Thread:
        """Backfill the gap in a thread sharing this collector's weight governor: it leaves the
        polls their share of the budget and waits out the same bans."""
        from etl.backfill import run_backfill

        def work() -> None:
            try:
                run_backfill(
                    self.settings,
                    since_ms=since_ms,
                    governor=self.client.governor,
                    stop=stop,
                    report=self.view.event,
                )
            except Exception as exc:  # the poller goes on, whatever the backfill does
                self.view.event(f"backfill failed: {exc}", "yellow")

        thread = threading.Thread(target=work, name="backfill", daemon=True)
        thread.start()
        return thread

    def _validate(self, deadline: float) -> bool:
        began = self.clock()
        try:
            self.client.validate_symbols(self.symbols, deadline=deadline)
        except UnknownSymbols as exc:
            raise ConfigError(f"{exc}: remove them from the configured symbols") from None
        except BinanceError as exc:
            self._missed(exc, began)
            return False
        self.view.event(f"symbols checked against exchangeInfo: {len(self.symbols)} trading")
        return True

    def _poll(self, deadline: float) -> None:
        started, began = time.perf_counter(), self.clock()
        try:
            poll = self.client.prices(self.symbols, deadline=deadline)
        except ApiError as exc:
            if exc.code != ERR_INVALID_SYMBOL or not self._drop_delisted(deadline):
                self._missed(exc, began)
                return
            return self._poll(deadline)
        except BinanceError as exc:
            self._missed(exc, began)
            return
        state = {WEIGHT_KEY: {**self.client.governor.snapshot(), "at": poll.received_ms}}
        try:
            self.staging.append(poll.symbols, poll.prices, poll.received_ms, state=state)
        except Exception as exc:  # a failed write (disk full, …) is a missed poll, not a crash
            self._missed(exc, began)
            return
        self.metrics.update(poll.symbols, poll.prices, poll.received_ms)
        if self.stats.unreachable_since is not None:
            self.view.event(
                f"exchange reachable again after {age(self.clock() - self.stats.unreachable_since)}",
                "green",
            )
            self.stats.unreachable_since = None
        self.stats.polls_ok += 1
        self.stats.ticks += len(poll.symbols)
        self.stats.skipped += poll.skipped
        self.stats.last_poll_ms = poll.received_ms
        note = f", {poll.skipped} bad element(s) skipped" if poll.skipped else ""
        if poll.missing:
            note += f", missing: {', '.join(poll.missing[:5])}"
        self.view.poll_line(
            f"poll ok: {len(poll.symbols)} prices in {(time.perf_counter() - started) * 1000:.1f} ms, "
            f"weight {self.client.governor.used}/{self.client.governor.limit}{note}"
        )

    def _drop_delisted(self, deadline: float) -> bool:
        """After -1121 on the list: re-read exchangeInfo and drop the symbols no longer listed."""
        try:
            info = self.client.exchange_info(None, deadline=deadline)
        except BinanceError as exc:
            self._missed(exc, self.clock())
            return False
        gone = [s for s in self.symbols if s not in info.statuses]
        if not gone:
            return False
        self.symbols = [s for s in self.symbols if s in info.statuses]
        self.view.event(f"dropped delisted symbol(s) {', '.join(gone)}; the others go on", "yellow")
        if not self.symbols:
            raise ConfigError("every configured symbol was delisted: configure symbols that trade")
        return True

    def _missed(self, exc: BaseException, began: float) -> None:
        """Count a missed poll; ``began`` is when it started (the outage began no later)."""
        now = self.clock()
        self.stats.polls_missed += 1
        self.stats.last_error = f"{time.strftime('%H:%M:%S', time.gmtime(now))} {exc}"
        if isinstance(exc, RateLimited | WeightBudgetExhausted):
            self.view.poll_line(f"poll skipped: {exc}")
            return
        if self.stats.unreachable_since is None:
            self.stats.unreachable_since = began
            self.view.event(f"exchange unreachable since {iso(began * 1000)}: {exc}", "yellow")
        else:
            self.view.poll_line(
                f"exchange unreachable since {iso(self.stats.unreachable_since * 1000)}: {exc}"
            )

    def _refresh(self) -> None:
        if not self.view.live_mode:  # piped: one log line per poll says it all
            return
        gov = self.client.governor
        status = "ok"
        if gov.banned_until > self.clock():
            status = f"rate limited ({gov.ban_status}) until {iso(gov.banned_until * 1000)}"
        elif self.stats.unreachable_since is not None:
            status = f"exchange unreachable since {iso(self.stats.unreachable_since * 1000)}"
        header = {
            "exchange": f"{self.settings.binance_url}: {status}",
            "polls": f"{self.stats.polls_ok} ok, {self.stats.polls_missed} missed, "
            f"{self.stats.ticks} ticks, {self.stats.skipped} bad elements skipped",
            "weight": f"{gov.used} / {gov.limit} this minute (budget {gov.allowed})",
            "last error": self.stats.last_error or "-",
            "staging": str(self.settings.staging_path),
        }
        self.view.refresh(header, self.metrics.frame())

    def _summary(self) -> None:
        s = self.stats
        self.view.event(
            f"stopped after {age(self.clock() - s.started)}: {s.polls_ok} polls ok, "
            f"{s.polls_missed} missed, {s.ticks} ticks stored, {s.skipped} bad elements skipped, "
            f"{s.rollups} rollup(s) started; staging {Path(self.settings.staging_path)}"
        )
