"""The exchange client's errors: what went wrong talking to the exchange, as a caller can catch
it. They belong to the program's one error tree (:mod:`etl.errors`): most are a dependency
unavailable (exit 3); symbols the exchange does not list are a configuration error (exit 2).
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Sequence

from etl.errors import ConfigError, DependencyError


class BinanceError(DependencyError):
    """Base class of the client's errors."""


class ExchangeUnavailable(BinanceError):
    """No usable answer: connection error, timeout, or 5xx (whose outcome is unknown).

    ``reached`` is False when the request cannot have reached the exchange (name resolution,
    refused connection, connect timeout): its weight was not spent.
    """

    def __init__(self, message: str, *, reached: bool = True) -> None:
        super().__init__(message)
        self.reached = reached


class Stopped(BinanceError):
    """The caller is stopping (its wait said so): no more retries are made."""


class BadResponse(BinanceError):
    """A 2xx whose body is not JSON or not the expected shape."""


class RateLimited(BinanceError):
    """A 429 (limit broken) or 418 (IP banned) is in force until ``until`` (epoch seconds)."""

    def __init__(self, until: float, status: int) -> None:
        self.until = until
        self.status = status
        kind = "IP banned (418)" if status == 418 else "rate limited (429)"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(until))
        super().__init__(f"{kind}: no request until {stamp}")


class WeightBudgetExhausted(BinanceError):
    """This minute's weight budget is spent; it frees at ``free_at`` (epoch seconds)."""

    def __init__(self, free_at: float) -> None:
        self.free_at = free_at
        super().__init__("weight budget for this minute is spent")


class ApiError(BinanceError):
    """The exchange refused the request with an HTTP 4xx and a ``{"code", "msg"}`` body."""

    def __init__(self, status: int, code: int | None, msg: str) -> None:
        self.status, self.code, self.msg = status, code, msg
        super().__init__(f"HTTP {status} code {code}: {msg}")


class UnknownSymbols(ConfigError, BinanceError):
    """Symbols that are unknown to the exchange or not trading, with the reason for each.

    The message names the first few (with a close listed name, if any) and counts the rest.
    """

    SHOWN = 5

    def __init__(self, bad: dict[str, str], listed: Sequence[str] = ()) -> None:
        self.bad = bad
        names = list(listed)

        def why(symbol: str) -> str:
            reason = bad[symbol]
            if reason == "unknown" and names:
                close = difflib.get_close_matches(symbol, names, n=1, cutoff=0.75)
                if close:
                    return f"unknown; did you mean {close[0]}?"
            return reason

        shown = ", ".join(f"{s} ({why(s)})" for s in list(bad)[: self.SHOWN])
        more = f" and {len(bad) - self.SHOWN:,} more" if len(bad) > self.SHOWN else ""
        super().__init__(f"{len(bad):,} symbol(s) not trading on the exchange: {shown}{more}")
