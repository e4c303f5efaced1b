"""Prometheus metrics of ``etl collect`` (``--metrics-port``), with prometheus_client.

Counters and histograms are updated by the poll loop as things happen; the rest (weight, ban,
last tick age per symbol, the staging file's rows, size and quarantine) is read when Prometheus
scrapes, on a connection of its own, so a scrape never holds up a poll.

Names follow the Prometheus conventions: the ``etl_`` prefix, ``_total`` for counters, base
units (seconds, bytes) in the name.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
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
from etl.hours import parse_time, seconds
from etl.staging.state import LAST_ROLLUP_KEY

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from etl.exchange.governor import WeightGovernor
    from etl.staging.store import Staging

# Poll latency buckets: a poll is one request and one SQLite commit, tens of milliseconds.
_POLL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_ROLLUP_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class CollectorMetrics:
    """The collector's instruments, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
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
        self.ticks = Counter("etl_ticks_stored", "Ticks committed to the staging file.", registry=r)
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
        self.clock_steps = Counter(
            "etl_clock_steps",
            "Jumps of the wall clock the collector saw (each one logged; polls follow it).",
            registry=r,
        )
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
            self.polls.labels("ok").inc()
            self.poll_seconds.observe(event.seconds)
            self.ticks.inc(event.stored)
            self.trade_holes.inc(event.totals.holes - before.holes)
            self.reconnects.inc(event.totals.reconnects - before.reconnects)
            self.caught_up.inc(event.totals.caught_up - before.caught_up)
            self._totals = event.totals
            self.last_tick_ms.update(event.last_trade_ms)
        elif isinstance(event, ClockStepped):
            self.clock_steps.inc()
        elif isinstance(event, RollupEnded):
            self.rollups.labels(event.result).inc()
            self.rollup_seconds.observe(event.seconds)
            if event.result == "ok":
                self.last_rollup_ok = event.at

    def serve(self, port: int, host: str) -> WSGIServer:
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server


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
