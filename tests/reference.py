"""Independent plain-Python references for the Polars transforms (no Polars here)."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime

HOUR_MS = 3_600_000


def hourly_reference(ticks: Iterable[tuple[int, str, int, float]]) -> dict[tuple[str, int], dict]:
    """Bars keyed by (symbol, hour start ms) from (seq, symbol, ts, price) ticks."""
    groups: dict[tuple[str, int], list[tuple[int, int, float]]] = defaultdict(list)
    for seq, symbol, ts, price in ticks:
        groups[(symbol, ts // HOUR_MS * HOUR_MS)].append((ts, seq, price))
    bars = {}
    for (symbol, bucket), rows in groups.items():
        rows.sort()
        prices = [p for _, _, p in rows]
        stamps = [t for t, _, _ in rows]
        gaps = [stamps[0] - bucket, bucket + HOUR_MS - stamps[-1]]
        gaps += [b - a for a, b in itertools.pairwise(stamps)]
        bars[(symbol, bucket)] = {
            "open": prices[0],
            "high": max(prices),
            "low": min(prices),
            "close": prices[-1],
            "mean": math.fsum(prices) / len(prices),
            "samples": len(prices),
            "first_at": stamps[0],
            "last_at": stamps[-1],
            "max_gap_s": max(gaps) / 1000,
            "max_seq": max(seq for _, seq, _ in rows),
        }
    return bars


def daily_reference(bars: Iterable[dict]) -> dict[tuple[str, date], dict]:
    """Daily rows keyed by (symbol, UTC day) from hourly bar dicts with a ``bucket`` datetime."""
    groups: dict[tuple[str, date], list[dict]] = defaultdict(list)
    for bar in bars:
        groups[(bar["symbol"], bar["bucket"].astimezone(UTC).date())].append(bar)
    out = {}
    for key, rows in groups.items():
        rows.sort(key=lambda b: b["bucket"])
        samples = sum(b["samples"] for b in rows)
        out[key] = {
            "open": rows[0]["open"],
            "high": max(b["high"] for b in rows),
            "low": min(b["low"] for b in rows),
            "close": rows[-1]["close"],
            "mean": math.fsum(b["mean"] * b["samples"] for b in rows) / samples,
            "samples": samples,
            "hours": len(rows),
        }
    return out


def ms(value: datetime) -> int:
    return round(value.timestamp() * 1000)
