"""The weight governor: keeps the per-minute request weight under a budget and holds bans, across restarts."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from etl.exchange.endpoints import DEFAULT_WEIGHT_LIMIT, WEIGHT_HEADER
from etl.exchange.errors import RateLimited, WeightBudgetExhausted
from etl.hours import ms

if TYPE_CHECKING:
    pass
# Keys of the state the client keeps in its store (the staging file) across restarts.
BAN_KEY = "binance.ban"
WEIGHT_KEY = "binance.weight"


class StateStore(Protocol):
    """Where the governor keeps the ban across restarts (the staging database)."""

    def get(self, key: str) -> Any: ...

    def set(self, key: str, value: Any, now_ms: int) -> None: ...


class WeightGovernor:
    """Keeps the minute's request weight within ``budget`` of the exchange limit; holds bans.

    Binance counts weight per calendar minute and reports the count in ``X-MBX-USED-WEIGHT-1M``.
    The governor adds each request's weight before sending and takes the larger of its own count
    and the reported one, so other clients on the same IP are accounted for too. One governor is
    shared by everything in a process that talks to the exchange (poller, backfill).
    """

    def __init__(
        self,
        budget: float = 0.5,
        limit: int = DEFAULT_WEIGHT_LIMIT,
        *,
        store: StateStore | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        self.budget = budget
        self.limit = limit
        self.store = store
        self.clock = clock
        self.sleep = sleep
        self.used = 0
        self._window = math.floor(clock() / 60)
        self._lock = threading.Lock()
        self.banned_until = 0.0
        self.ban_status = 0
        saved = store.get(BAN_KEY) if store else None
        if isinstance(saved, dict) and saved.get("until", 0) > clock():
            self.banned_until = float(saved["until"])
            self.ban_status = int(saved.get("status", 429))

    @property
    def allowed(self) -> int:
        return max(1, int(self.limit * self.budget))

    def _roll(self, now: float) -> None:
        window = math.floor(now / 60)
        if window != self._window:
            self._window, self.used = window, 0

    def check_ban(self) -> None:
        if self.clock() < self.banned_until:
            raise RateLimited(self.banned_until, self.ban_status)

    def acquire(self, weight: int, deadline: float | None = None, reserve: int = 0) -> None:
        """Reserve ``weight`` in this minute, waiting for the next minute if needed.

        ``reserve`` is weight this caller must leave for others (a background backfill leaves
        the poller its share). Raises :class:`RateLimited` during a ban and
        :class:`WeightBudgetExhausted` if the wait would pass ``deadline``.
        """
        reserve = min(reserve, max(0, self.allowed - weight))
        if weight > self.allowed:
            raise WeightBudgetExhausted(math.inf)
        while True:
            with self._lock:
                now = self.clock()
                self.check_ban()
                self._roll(now)
                if self.used + weight <= self.allowed - reserve:
                    self.used += weight
                    return
                # A small margin: the exchange's minute may turn a little after ours.
                free_at = (self._window + 1) * 60 + 0.25
            if deadline is not None and free_at > deadline:
                raise WeightBudgetExhausted(free_at)
            if self.sleep(max(0.0, free_at - now)):  # an Event's wait: True once stopped
                raise WeightBudgetExhausted(free_at)

    def refund(self, weight: int) -> None:
        """Give back the weight of a request that never reached the exchange."""
        with self._lock:
            self.used = max(0, self.used - weight)

    def observe(self, headers: Any) -> None:
        value = headers.get(WEIGHT_HEADER)
        if value is None:
            return
        try:
            reported = int(value)
        except ValueError:
            return
        with self._lock:
            self._roll(self.clock())
            self.used = max(self.used, reported)

    def ban(self, status: int, retry_after: float) -> RateLimited:
        """Record a 429/418: nothing is sent before ``retry_after`` seconds have passed."""
        now = self.clock()
        with self._lock:
            self.banned_until = max(self.banned_until, now + retry_after)
            self.ban_status = status
        if self.store is not None:
            self.store.set(BAN_KEY, {"until": self.banned_until, "status": status}, ms(now))
        return RateLimited(self.banned_until, status)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            self._roll(self.clock())
            return {
                "used": self.used,
                "limit": self.limit,
                "budget": self.allowed,
                "banned_until": self.banned_until or None,
                "ban_status": self.ban_status or None,
            }
