"""``etl backfill``: fill hours without a bar (or with a thin poll bar) from the exchange's klines.

Choice: 1-minute klines aggregated to the hour, not 1-hour klines. A 1h candle costs less weight
(one request of weight 2 covers 1,000 hours) but says nothing about the hour's mean; 1m candles
give the mean of the minute closes and a coverage (``samples`` = minutes, of 60) comparable to a
poll bar's. The cost: a day is 1,440 minutes, two requests of weight 2, so 4 weight per symbol
and day (about 3 over longer gaps, as pages of 1,000 minutes span days).

Backfilled bars have ``source = 'kline'``. A ``poll`` bar with full coverage is never replaced;
an hour is fetched once (``backfill_log``), so a second run fetches nothing. Bans and the
weight budget are honoured by the same :class:`WeightGovernor` the collector uses; a ban pauses
the backfill, which resumes at the page it stopped at.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl

from etl import console
from etl.binance import BinanceClient, ExchangeUnavailable, RateLimited, WeightGovernor
from etl.config import Settings
from etl.errors import DependencyError
from etl.rollup import kline_bars
from etl.rollup_job import GRACE_MS
from etl.staging import HOUR_MS, Staging, hour_floor
from etl.warehouse import Warehouse, open_warehouse

MINUTE_MS = 60_000
KLINE_LIMIT = 1000
KLINE_WEIGHT = 2
DEFAULT_DAYS = 7

_TARGETS_SQL = """
WITH syms AS (SELECT unnest(string_to_array($1, ',')) AS symbol),
hours AS (SELECT generate_series($2::timestamptz, $3::timestamptz - interval '1 hour', interval '1 hour') AS hour)
SELECT s.symbol, (extract(epoch FROM h.hour) * 1000)::bigint AS hour_ms
FROM syms s CROSS JOIN hours h
LEFT JOIN metrics_hourly m ON m.symbol = s.symbol AND m.bucket = h.hour
LEFT JOIN backfill_log b ON b.symbol = s.symbol AND b.hour = h.hour
WHERE b.hour IS NULL AND (m.bucket IS NULL OR (m.source = 'poll' AND m.samples < $4))
ORDER BY 1, 2
"""


@dataclass
class BackfillSummary:
    hours: int = 0
    bars: int = 0
    requests: int = 0
    weight: int = 0
    pauses: int = 0
    pending_rollup: int = 0

    def rows(self) -> list[tuple[str, object]]:
        return [
            ("hours fetched", self.hours),
            ("bars written (source = kline)", self.bars),
            ("kline requests", self.requests),
            ("request weight", self.weight),
            ("pauses for a ban", self.pauses),
            ("hours left to the rollup (staged, not rolled up)", self.pending_rollup),
        ]


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


def parse_klines(rows: list[list]) -> pl.DataFrame:
    """Kline rows ``[openTime, open, high, low, close, ...]`` as a typed frame."""
    return pl.DataFrame(
        {
            "open_ms": [int(r[0]) for r in rows],
            "open": [float(r[1]) for r in rows],
            "high": [float(r[2]) for r in rows],
            "low": [float(r[3]) for r in rows],
            "close": [float(r[4]) for r in rows],
        },
        schema={
            "open_ms": pl.Int64,
            "open": pl.Float64,
            "high": pl.Float64,
            "low": pl.Float64,
            "close": pl.Float64,
        },
    )


def target_hours(
    wh: Warehouse, settings: Settings, symbols: Sequence[str], lo_ms: int, hi_ms: int
) -> dict[str, list[int]]:
    """Per symbol, the hours in ``[lo_ms, hi_ms)`` without a bar or with a thin poll bar, not
    fetched before."""
    rows = wh.query(
        _TARGETS_SQL,
        [
            ",".join(symbols),
            datetime.fromtimestamp(lo_ms / 1000, UTC),
            datetime.fromtimestamp(hi_ms / 1000, UTC),
            settings.full_samples_per_hour,
        ],
    )
    out: dict[str, list[int]] = {}
    for symbol, hour in rows.iter_rows():
        out.setdefault(symbol, []).append(int(hour))
    return out


class Backfill:
    """One backfill run. ``stop`` ends it between pages (the collector's shutdown)."""

    def __init__(
        self,
        settings: Settings,
        client: BinanceClient,
        *,
        stop: threading.Event | None = None,
        report: Callable[[str], None] = console.line,
        show_progress: bool = True,
    ) -> None:
        self.settings = settings
        self.show_progress = show_progress
        self.client = client
        self.stop = stop or threading.Event()
        self.report = report
        self.summary = BackfillSummary()

    def run(
        self, wh: Warehouse, staging: Staging, symbols: Sequence[str], lo_ms: int, hi_ms: int
    ) -> BackfillSummary:
        wh.apply_schema()
        pending = set(staging.hours_with_ticks(lo_ms, hi_ms)) - set(
            wh.ledger()["hour_ms"].to_list()
        )
        targets = target_hours(wh, self.settings, symbols, lo_ms, hi_ms)
        # Hours with staged ticks not rolled up yet belong to the rollup, not to the klines.
        targets = {s: [h for h in hours if h not in pending] for s, hours in targets.items()}
        self.summary.pending_rollup = len(pending)
        total = sum(map(len, targets.values()))
        with console.progress(total, "backfilling hours", show=self.show_progress) as bar:
            for symbol, hours in targets.items():
                for start, end in runs_of(hours):
                    if not self._fill(
                        wh, symbol, start, end, lambda n: bar.advance(bar.task_ids[0], n)
                    ):
                        return self.summary
        return self.summary

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
        self.report(
            f"{console.stamp()} backfill paused: {exc}; it resumes at {console.iso(cursor)}"
        )
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
                "hour": [datetime.fromtimestamp(h / 1000, UTC) for h in hours],
                "minutes": [int(counts.get(h, 0)) for h in hours],
            },
            schema={"symbol": pl.String, "hour": pl.Datetime("us", "UTC"), "minutes": pl.Int32},
        )
        self.summary.bars += wh.write_kline_bars(
            bars, fetched, self.settings.full_samples_per_hour
        ).bars
        self.summary.hours += len(hours)


def default_range(
    settings: Settings, since_ms: int | None, until_ms: int | None, now: float
) -> tuple[int, int]:
    closed = hour_floor(int(now * 1000) - GRACE_MS)
    hi = min(closed, -(-until_ms // HOUR_MS) * HOUR_MS) if until_ms is not None else closed
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
    now: Callable[[], float] = time.time,
) -> BackfillSummary:
    """Backfill ``symbols`` (default: the configured ones) over ``[since, until)`` (default: the
    last 7 days up to the last closed hour)."""
    lo, hi = default_range(settings, since_ms, until_ms, now())
    with Staging(settings.staging_path, synchronous=settings.sqlite_synchronous) as staging:
        gov = governor or WeightGovernor(settings.weight_budget, store=staging)
        stop = stop or threading.Event()
        with (
            BinanceClient(
                settings.binance_url,
                governor=gov,
                reserve=backfill_reserve(settings),
                sleep=stop.wait,
            ) as client,
            open_warehouse(settings) as wh,
        ):
            job = Backfill(
                settings,
                client,
                stop=stop,
                report=report or console.line,
                show_progress=report is None,
            )
            while True:  # the weight limit, and a reachability check before any work
                try:
                    client.exchange_info(list(symbols or settings.symbols))
                    break
                except RateLimited as exc:
                    if not job.pause(exc, lo):
                        return job.summary
                except ExchangeUnavailable as exc:
                    raise DependencyError(
                        f"exchange unreachable at {settings.binance_url} ({exc}): try again later"
                    ) from None
            try:
                summary = job.run(wh, staging, list(symbols or settings.symbols), lo, hi)
            except ExchangeUnavailable as exc:
                raise DependencyError(
                    f"exchange unreachable during the backfill ({exc}): the hours written so far "
                    "are kept; run it again to resume"
                ) from None
    if report is None:
        console.console.print(console.table("backfill", ("what", "value"), summary.rows()))
    else:
        report("backfill done: " + ", ".join(f"{k} {v}" for k, v in summary.rows()))
    return summary
