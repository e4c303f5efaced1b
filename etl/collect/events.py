"""What the collector's loop reports: one event per poll (or trade batch, or rollup child), which
each of its listeners consumes in its own way: the run's counters (:class:`CollectorStats`), the
live table's running bars, the Prometheus instruments and the per-poll log lines.

>>> stats = CollectorStats()
>>> stats.on(Polled(at=0.0, received_ms=0, symbols=("BTCUSDT",), prices=(1.0,), seconds=0.01))
>>> stats.polls_ok, stats.ticks
(1, 1)
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Polled:
    """A poll's ticks were committed. ``outage_s``: it ended an outage that long."""

    at: float
    received_ms: int
    symbols: Sequence[str]
    prices: Sequence[float]
    seconds: float
    skipped: int = 0
    missing: Sequence[str] = ()
    weight: tuple[int, int] = (0, 0)
    outage_s: float | None = None


@dataclass(frozen=True)
class Missed:
    """A poll slot went by without ticks stored: ``error`` says why (``None``: the loop overran
    ``slots`` slots). ``outage_since``: set when this miss starts an outage of the exchange;
    ``offline``: the exchange was never reached, not even this time (no network?)."""

    at: float
    error: BaseException | None = None
    slots: int = 1
    outage_since: float | None = None
    offline: bool = False


@dataclass(frozen=True)
class FeedCounts:
    """The trade feed's running totals (source trades); ``skipped``: the stream's messages not
    stored, by reason (:data:`etl.exchange.parse.SKIP_REASONS`), of ``messages`` received."""

    trades: int = 0
    duplicates: int = 0
    skipped: Mapping[str, int] = field(default_factory=dict)
    caught_up: int = 0
    holes: int = 0
    reconnects: int = 0
    messages: int = 0


def not_stored(skipped: Mapping[str, int]) -> str:
    """Stream messages not stored, as words: the reasons that happened, largest first.

    >>> not_stored({"bad_json": 2, "duplicate": 5, "not_trade": 0}), not_stored({})
    ('5 duplicate, 2 bad_json', 'none')
    """
    seen = sorted(((n, r) for r, n in skipped.items() if n), key=lambda x: -x[0])
    return ", ".join(f"{n} {reason}" for n, reason in seen) or "none"


@dataclass(frozen=True)
class Stored:
    """A batch of trades was committed (source trades)."""

    at: float
    stored: int
    seconds: float
    totals: FeedCounts
    last_trade_ms: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RollupEnded:
    """An hourly rollup child ended: ``ok``, ``failed``, or ``stopped`` past its time limit."""

    at: float
    result: str
    seconds: float


@dataclass(frozen=True)
class ClockStepped:
    """The wall clock jumped by ``seconds`` (negative: back) beyond the time that passed."""

    at: float
    seconds: float


class ClockSteppedBack(Exception):
    """Why a poll is not taken: its stamp would lie before ticks already stored."""

    def __init__(self, until_ms: int) -> None:
        self.until_ms = until_ms
        super().__init__(
            "the wall clock stepped back: no tick is stored before the newest one already "
            f"stored, until {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(until_ms / 1000))}"
        )


Event = Polled | Missed | Stored | RollupEnded | ClockStepped


class Listener(Protocol):
    def on(self, event: Event) -> None: ...


@dataclass
class CollectorStats:
    """What a run did, counted from its events (the summary at the end, ``--polls``)."""

    started: float = field(default_factory=time.time)
    polls_ok: int = 0
    polls_missed: int = 0
    ticks: int = 0
    skipped: int = 0
    last_error: str | None = None
    unreachable_since: float | None = None
    rollups: int = 0  # the rollup children's, copied from their launcher at the end
    rollups_failed: int = 0
    rollups_stopped: int = 0
    # source trades: ``ticks`` counts trades newly staged, ``polls_ok`` batches written
    duplicates: int = 0
    caught_up: int = 0
    holes: int = 0
    reconnects: int = 0
    clock_steps: int = 0
    messages: int = 0  # stream messages received
    stream_skipped: dict[str, int] = field(default_factory=dict)  # not stored, by reason

    @property
    def polls(self) -> int:
        return self.polls_ok + self.polls_missed

    def on(self, event: Event) -> None:
        if isinstance(event, Polled):
            self.polls_ok += 1
            self.ticks += len(event.symbols)
            self.skipped += event.skipped
            self.unreachable_since = None
        elif isinstance(event, Missed):
            self.polls_missed += event.slots
            if event.error is not None:
                self.last_error = (
                    f"{time.strftime('%H:%M:%S', time.gmtime(event.at))} {event.error}"
                )
            if event.outage_since is not None:
                self.unreachable_since = event.outage_since
        elif isinstance(event, Stored):
            self.polls_ok += 1
            self.take(event.totals)
        elif isinstance(event, ClockStepped):
            self.clock_steps += 1

    def take(self, totals: FeedCounts) -> None:
        """The trade feed's totals as this run's (source trades); ``skipped``: every stream
        message not stored, whatever the reason."""
        self.ticks, self.duplicates = totals.trades, totals.duplicates
        self.stream_skipped, self.messages = dict(totals.skipped), totals.messages
        self.skipped = sum(totals.skipped.values())
        self.caught_up, self.holes, self.reconnects = (
            totals.caught_up,
            totals.holes,
            totals.reconnects,
        )
