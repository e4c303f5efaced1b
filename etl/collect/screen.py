"""What a person watching ``etl collect`` sees, made from the loop's events: a line per poll and
the exchange's outages (:class:`PollLines`), and on a terminal the live table's header and rows
(:class:`Screen`). Both draw through the :class:`~etl.collect.view.CollectorView`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from etl.collect.events import (
    ClockStepped,
    ClockSteppedBack,
    CollectorStats,
    Event,
    Missed,
    Polled,
    not_stored,
)
from etl.collect.running import RunningMetrics
from etl.collect.view import CollectorView
from etl.console import age
from etl.errors import DiskFull
from etl.exchange.errors import RateLimited, WeightBudgetExhausted
from etl.hours import hour_floor, hour_label, iso, ms, stamp

if TYPE_CHECKING:
    from etl.collect.trade_feed import TradeFeed
    from etl.config import Settings
    from etl.exchange.governor import WeightGovernor

OFFLINE_HINT = "; no network? `just demo` collects from a built-in fake exchange, offline"


class PollLines:
    """One line per poll (when no live table shows it), and a line of its own when the exchange
    becomes unreachable or reachable again."""

    def __init__(self, view: CollectorView) -> None:
        self.view = view
        self.unreachable_since: float | None = None

    def on(self, event: Event) -> None:
        if isinstance(event, Polled):
            if event.outage_s is not None:
                self.view.event(f"exchange reachable again after {age(event.outage_s)}")
            self.unreachable_since = None
            note = f", {event.skipped} bad element(s) skipped" if event.skipped else ""
            if event.missing:
                note += f", missing: {', '.join(event.missing[:5])}"
            used, limit = event.weight
            self.view.poll_line(
                f"poll ok: {len(event.symbols)} prices in {event.seconds * 1000:.1f} ms, "
                f"weight {used}/{limit}{note}"
            )
        elif isinstance(event, Missed) and event.error is not None:
            self._missed(event)
        elif isinstance(event, ClockStepped):
            way = "back" if event.seconds < 0 else "forward"
            self.view.event(
                f"the wall clock stepped {way} by {age(abs(event.seconds))}: polls follow it from "
                "the next slot"
                + (
                    "; none is stored before the newest tick already stored"
                    if way == "back"
                    else ""
                ),
                logging.WARNING,
            )

    def _missed(self, event: Missed) -> None:
        error = event.error
        if isinstance(error, RateLimited | WeightBudgetExhausted | ClockSteppedBack):
            self.view.poll_line(f"poll skipped: {error}")
        elif isinstance(error, DiskFull):
            self.view.event(f"poll not stored: {error}", logging.WARNING)
        elif event.outage_since is not None:
            self.unreachable_since = event.outage_since
            hint = OFFLINE_HINT if event.offline else ""
            self.view.event(
                f"exchange unreachable since {iso(ms(event.outage_since))}: {error}{hint}",
                logging.WARNING,
            )
        elif self.unreachable_since is not None:
            self.view.poll_line(
                f"exchange unreachable since {iso(ms(self.unreachable_since))}: {error}"
            )


class Screen:
    """The live table on a terminal: a header of the run's state and a row per symbol (this
    hour's running bar, or with source trades each symbol's trade activity)."""

    def __init__(
        self,
        view: CollectorView,
        settings: Settings,
        stats: CollectorStats,
        governor: Callable[[], WeightGovernor | None],
        staging_path: str,
        clock: Callable[[], float],
        seen: Callable[[], bool] = lambda: True,
    ) -> None:
        """``seen()``: whether the exchange has answered yet (its limits are unknown before)."""
        self.view, self.settings, self.stats = view, settings, stats
        self.governor, self.staging_path, self.clock = governor, staging_path, clock
        self.seen = seen
        self.bars = RunningMetrics()
        self.feed: TradeFeed | None = None

    def on(self, event: Event) -> None:
        if isinstance(event, Polled):
            self.bars.update(event.symbols, event.prices, event.received_ms)

    def draw(self) -> None:
        gov = self.governor()
        if not self.view.live_mode or gov is None:  # piped: one log line per poll says it all
            return
        if self.feed is not None:
            self._draw_trades(gov, self.feed)
            return
        status = "ok"
        if gov.banned_until > self.clock():
            status = f"rate limited ({gov.ban_status}) until {iso(ms(gov.banned_until))}"
        elif self.stats.unreachable_since is not None:
            status = f"exchange unreachable since {iso(ms(self.stats.unreachable_since))}"
        s, now_ms = self.stats, ms(self.clock())
        weight = f"{gov.used} / {gov.limit} this minute (budget {gov.allowed})"
        if not self.seen():
            status = status if s.unreachable_since is not None else "not reached yet"
            weight = "- (the exchange's limit is read from it once it answers)"
        header = {
            "exchange": f"{self.settings.binance_url}: {status}",
            "polls": f"{s.polls_ok} ok, {s.polls_missed} missed, {s.ticks} ticks, "
            f"{s.skipped} bad elements skipped",
            "weight": weight,
            "last error": s.last_error or "-",
            "staging": self.staging_path,
            "hour": f"{hour_label(self.bars.hour or hour_floor(now_ms))}, "
            f"updated {stamp(self.clock())} UTC",
        }
        self.view.refresh(header, self.bars.frame())

    def _draw_trades(self, gov: WeightGovernor, feed: TradeFeed) -> None:
        s = self.stats
        status = f"{len(feed.stream.open_groups())} of {len(feed.stream.groups)} connection(s) open"
        waiting = feed.unverified()
        if waiting:
            status += f", {waiting} symbol(s) catching up"
        exchange_now = feed.exchange_ms()
        header = {
            "streams": f"{self.settings.ws_url}: {status}",
            "trades": f"{s.ticks} stored, {s.duplicates} duplicates dropped, {s.caught_up} "
            f"fetched over REST, {s.reconnects} reconnects, {s.holes} holes",
            "not stored": f"{not_stored(s.stream_skipped)} (of {s.messages} stream messages)",
            "weight": f"{gov.used} / {gov.limit} this minute (budget {gov.allowed})",
            "last error": s.last_error or "-",
            "staging": self.staging_path,
            "hour": f"{hour_label(hour_floor(exchange_now))}, updated {stamp(self.clock())} UTC",
        }
        frame = feed.activity.frame(exchange_now, time.monotonic())
        self.view.refresh(header, frame, trades=True)
