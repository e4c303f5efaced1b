"""The exchange's REST endpoints as data: paths, request weights and limits, from the official spot API docs."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
# Request weights from the official spot API docs.
ENDPOINT_WEIGHTS: dict[str, int] = {
    "/api/v3/ping": 1,
    "/api/v3/time": 1,
    "/api/v3/exchangeInfo": 20,
    "/api/v3/klines": 2,
    "/api/v3/ticker/price": 4,  # list or all; a single symbol is 2
    "/api/v3/aggTrades": 4,
}
AGG_TRADES_LIMIT = 1000  # most aggregate trades one aggTrades request returns
DEFAULT_WEIGHT_LIMIT = 6000
# Above this many symbols, one unfiltered request (same weight) beats a URL of thousands of names.
MAX_LISTED_SYMBOLS = 100
ERR_INVALID_SYMBOL = -1121
