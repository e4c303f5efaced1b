"""``etl backfill``: fill hours without a bar (or with a thin poll bar) from the exchange's klines.

Choice: 1-minute klines aggregated to the hour, not 1-hour klines. A 1h candle costs less weight
(one request of weight 2 covers 1,000 hours) but says nothing about the hour's mean; 1m candles
give the mean of the minute closes and a coverage (``samples`` = minutes, of 60) comparable to a
poll bar's. The cost: a day is 1,440 minutes, two requests of weight 2, so 4 weight per symbol
and day (about 3 over longer gaps, as pages of 1,000 minutes span days).

Backfilled bars have ``source = 'kline'``. Which bar an hour keeps is the warehouse's rule
(``etl_bar_replaces``): a ``poll`` bar with full coverage is never replaced, a thinner one is.
An hour is fetched once (``backfill_log``), so a second run fetches nothing. Bans and the weight
budget are honoured by the same :class:`WeightGovernor` the collector uses; a ban pauses the
backfill, which resumes at the page it stopped at.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

import polars as pl

from etl.bars import kline_bars
from etl.config import Settings
from etl.exchange.client import BinanceClient, open_exchange
from etl.exchange.errors import (
    BinanceError,
    RateLimited,
    UnknownSymbols,
)
from etl.exchange.governor import WeightGovernor
from etl.exchange.parse import parse_klines
from etl.hours import HOUR_MS, MINUTE_MS, closed_before, hour_ceil, hour_floor, iso, ms, utc
from etl.report import NoProgress, Progress, counted, labelled
from etl.staging.store import Staging, open_staging
from etl.warehouse.store import Warehouse, open_warehouse

log = logging.getLogger("etl.backfill")

KLINE_LIMIT = 1000
KLINE_WEIGHT = 2
DEFAULT_DAYS = 7


@dataclass
class BackfillResult:
    """What a backfill did."""

    looked_for: str = ""
    symbols: list[str] = field(default_factory=list)
    hours: int = counted("hours fetched")
    bars: int = counted("bars written (source = kline)")
    requests: int = counted("kline requests")
    weight: int = counted("request weight")
    pauses: int = counted("pauses for a ban")
    pending_rollup: int = counted("hours left to the rollup (staged, not rolled up)")


def runs_of(hours: Sequence[int]) -> list[tuple[int, int]]:
    """Contiguous runs of hour starts as ``[start, end)`` in ms.

    >>> runs_of([0, 3_600_000, 10_800_000])
    [(0, 7200000), (10800000, 14400000)]
    """
    out: list[tuple[int, int]] = []
    for hour in sorted(hours):
        if out and out[-1][1] == hour:
            out[-1] = (out[-1][0], hour + HOUR_MS)
        else:
            out.append((hour, hour + HOUR_MS))
    return out


class Backfill:
    """One backfill run. ``stop`` ends it between pages (the collector's shutdown).

    >>> Backfill(settings, client).run(wh, staging, ["BTCUSDT"], lo_ms, hi_ms)   # doctest: +SKIP
    BackfillResult(hours=24, ...)
    """

    def __init__(
        self,
        settings: Settings,
        client: BinanceClient,
        *,
        stop: threading.Event | None = None,
        report: Callable[[str], None] | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.stop = stop or threading.Event()
        self.report = report or log.info
        self.progress = progress or NoProgress()
        self.summary = BackfillResult()

    def run(
        self, wh: Warehouse, staging: Staging, symbols: Sequence[str], lo_ms: int, hi_ms: int
    ) -> BackfillResult:
        wh.migrate()
        self.summary.looked_for = f"{iso(lo_ms)} .. {iso(hi_ms)}"
        self.summary.symbols = list(symbols)
        committed = set(wh.committed(staging.id))
        pending = set(staging.ticks.hour_sizes(lo_ms, hi_ms)) - committed
        targets = wh.backfill_targets(symbols, utc(lo_ms), utc(hi_ms))
        # Hours with staged ticks not rolled up yet belong to the rollup, not to the klines.
        targets = {s: [h for h in hours if h not in pending] for s, hours in targets.items()}
        self.summary.pending_rollup = len(pending)
        self.progress.start(sum(map(len, targets.values())), "backfilling hours")
        try:
            self._fill_all(wh, targets)
        finally:
            self.progress.finish()
        wh.refresh_coverage(wh.days_written)  # also when stopped early
        return self.summary

    def _fill_all(self, wh: Warehouse, targets: dict[str, list[int]]) -> None:
        for symbol, hours in targets.items():
            for start, end in runs_of(hours):
                if not self._fill(wh, symbol, start, end, self.progress.advance):
                    return

    def _fill(
        self, wh: Warehouse, symbol: str, start: int, end: int, advance: Callable[[int], None]
    ) -> bool:
        """Fetch ``[start, end)`` page by page; write each hour once all its minutes are in."""
        buffered = parse_klines([])
        cursor = written = start  # next minute to fetch; hours before `written` are committed
        while written < end:
            if self.stop.is_set():
                return False
            if cursor < end:
                try:
                    rows = self.client.klines(symbol, "1m", cursor, end - 1, limit=KLINE_LIMIT)
                except RateLimited as exc:
                    if not self.pause(exc, cursor):
                        return False
                    continue
                self.summary.requests += 1
                self.summary.weight += KLINE_WEIGHT
                page = parse_klines(rows).filter(pl.col("open_ms").is_between(cursor, end - 1))
                buffered = pl.concat([buffered, page])
                full_page = len(rows) >= KLINE_LIMIT and page.height > 0
                cursor = int(page["open_ms"].max()) + MINUTE_MS if full_page else end
            complete = end if cursor >= end else hour_floor(cursor)
            if complete > written:
                hours = list(range(written, complete, HOUR_MS))
                self._write(wh, symbol, buffered.filter(pl.col("open_ms") < complete), hours)
                buffered = buffered.filter(pl.col("open_ms") >= complete)
                advance(len(hours))
                written = complete
        return True

    def pause(self, exc: RateLimited, cursor: int) -> bool:
        """Wait out a ban; False if stopped meanwhile."""
        self.summary.pauses += 1
        self.report(f"backfill paused: {exc}; it resumes at {iso(cursor)}")
        return not self.stop.wait(max(0.0, exc.until - self.client.clock()) + 0.1)

    def _write(self, wh: Warehouse, symbol: str, minutes: pl.DataFrame, hours: list[int]) -> None:
        if not hours:
            return
        bars = kline_bars(minutes, symbol)
        per_hour = minutes.group_by(hour=pl.col("open_ms") // HOUR_MS * HOUR_MS).len()
        counts = dict(per_hour.iter_rows())
        fetched = pl.DataFrame(
            {
                "symbol": [symbol] * len(hours),
                "hour": [utc(h) for h in hours],
                "minutes": [int(counts.get(h, 0)) for h in hours],
            },
            schema={"symbol": pl.String, "hour": pl.Datetime("us", "UTC"), "minutes": pl.Int32},
        )
        self.summary.bars += wh.write_kline_bars(bars, fetched).bars
        self.summary.hours += len(hours)


def default_range(since_ms: int | None, until_ms: int | None, now: float) -> tuple[int, int]:
    """``[since, until)`` in whole closed hours; by default the last 7 days."""
    closed = closed_before(ms(now))
    hi = min(closed, hour_ceil(until_ms)) if until_ms is not None else closed
    lo = hour_floor(since_ms) if since_ms is not None else hi - DEFAULT_DAYS * 24 * HOUR_MS
    return lo, hi


def backfill_reserve(settings: Settings) -> int:
    """Weight a backfill leaves each minute for the poller: two minutes' worth of polls."""
    return 2 * 4 * math.ceil(60 / settings.interval_s)


def run_backfill(
    settings: Settings,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    symbols: Sequence[str] | None = None,
    governor: WeightGovernor | None = None,
    stop: threading.Event | None = None,
    report: Callable[[str], None] | None = None,
    progress: Progress | None = None,
    now: Callable[[], float] = time.time,
) -> BackfillResult:
    """Backfill ``symbols`` (default: the configured ones) over ``[since, until)`` (default: the
    last 7 days up to the last closed hour), with the configured staging file, exchange and
    warehouse. Exchange trouble is a :class:`BinanceError` (exit 3); a symbol the exchange does
    not list is :class:`UnknownSymbols` (exit 2)."""
    lo, hi = default_range(since_ms, until_ms, now())
    chosen = list(symbols or settings.symbols)
    stop = stop or threading.Event()
    with ExitStack() as stack:
        # The staging file keeps the exchange's bans across runs (and says which hours are
        # still the rollup's), so a backfill opens it too.
        staging = stack.enter_context(open_staging(settings))
        client = stack.enter_context(
            open_exchange(
                settings,
                staging.state,
                governor=governor,
                reserve=backfill_reserve(settings),
                sleep=stop.wait,
            )
        )
        job = Backfill(settings, client, stop=stop, report=report, progress=progress)
        while True:  # the weight limit, the symbols, and reachability, before any work
            try:
                client.validate_symbols(chosen)
                break
            except UnknownSymbols as exc:
                raise exc.advise("backfill only symbols the exchange lists") from None
            except RateLimited as exc:
                if not job.pause(exc, lo):
                    return job.summary
            except BinanceError as exc:
                raise exc.advise(f"at {settings.binance_url}; try again later") from None
        wh = stack.enter_context(open_warehouse(settings))
        try:
            summary = job.run(wh, staging, chosen, lo, hi)
        except BinanceError as exc:
            raise exc.advise("the hours written so far are kept; run it again to resume") from None
    if report is not None:
        report("backfill done: " + ", ".join(f"{k} {v}" for k, v in labelled(summary)))
    return summary


def gap_filler(
    settings: Settings,
) -> Callable[[BinanceClient, int, threading.Event, Callable[[str], None]], None]:
    """A collector's background backfill: from the gap's first hour, with the collector's
    client (its weight governor and bans), until done or stopped."""

    def fill(
        client: BinanceClient, since_ms: int, stop: threading.Event, report: Callable[[str], None]
    ) -> None:
        run_backfill(
            settings, since_ms=since_ms, governor=client.governor, stop=stop, report=report
        )

    return fill
