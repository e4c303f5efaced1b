"""Time: hour arithmetic, the rollup grace, UTC conversions. Every module takes time from here.

Times inside the pipeline are integers: epoch milliseconds, UTC. An hour is ``[h, h + HOUR_MS)``
with ``h`` a multiple of ``HOUR_MS``. An hour is *closed* once it ended ``GRACE_MS`` ago: by then
its last poll is committed, so a rollup never reads an hour that is still being written.

>>> hour_floor(1_767_225_900_000) == 1_767_225_600_000
True
>>> iso(1_767_225_600_000)
'2026-01-01T00:00:00Z'
>>> iso(last_closed_hour(1_767_229_205_000))  # 5 s after 01:00: 00:00-01:00 not closed yet
'2025-12-31T23:00:00Z'
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from etl.errors import ConfigError

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
# An hour is closed for the rollup this long after it ends (its last poll is committed by then).
GRACE_MS = 10_000
# Ticks the warehouse cannot place: before 1970 or after 9999-12-31.
MIN_TS_MS = 0
MAX_TS_MS = 253_402_300_799_999
# Open bounds for ranges given as "no limit".
NO_LOWER = -(2**62)
NO_UPPER = 2**62


def hour_floor(ts_ms: int) -> int:
    """Start of the hour holding ``ts_ms``."""
    return ts_ms // HOUR_MS * HOUR_MS


def hour_ceil(ts_ms: int) -> int:
    """Start of the first hour that begins at or after ``ts_ms``."""
    return -(-ts_ms // HOUR_MS) * HOUR_MS


def closed_before(now_ms: int) -> int:
    """Hours starting before this have ended (and their grace has passed)."""
    return hour_floor(now_ms - GRACE_MS)


def last_closed_hour(now_ms: int) -> int:
    """Start of the newest closed hour."""
    return closed_before(now_ms) - HOUR_MS


def closed_range(now_ms: int, since_ms: int | None, until_ms: int | None) -> tuple[int | None, int]:
    """``[lo, hi)`` of whole closed hours for ``--since`` / ``--until`` (either may be ``None``)."""
    hi = closed_before(now_ms)
    if until_ms is not None:
        hi = min(hi, hour_ceil(until_ms))
    return (hour_floor(since_ms) if since_ms is not None else None), hi


def now_ms() -> int:
    return ms(time.time())


def ms(epoch_s: float) -> int:
    """Epoch seconds (a clock's reading) as epoch milliseconds: how time is kept inside."""
    return int(epoch_s * 1000)


def seconds(epoch_ms: float) -> float:
    """Epoch milliseconds as epoch seconds (what clocks and ``time`` functions take)."""
    return epoch_ms / 1000


def utc(ms: int) -> datetime:
    """Epoch milliseconds as an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, UTC)


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive one is UTC already, as everywhere in etl.

    >>> as_utc(datetime(2026, 1, 5)).isoformat()
    '2026-01-05T00:00:00+00:00'
    """
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def to_ms(value: datetime) -> int:
    """An aware datetime as epoch milliseconds."""
    return round(value.timestamp() * 1000)


def iso(ms: int | float | None) -> str:
    """Epoch milliseconds as ISO 8601 UTC, to the second; ``-`` for ``None``."""
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def iso_or_none(ms: int | float | None) -> str | None:
    """Like :func:`iso`, but ``None`` stays ``None`` (for JSON)."""
    return None if ms is None else iso(ms)


def hour_label(hour_ms: int) -> str:
    """``10:00-11:00 UTC`` for the hour starting at ``hour_ms``."""
    start = time.gmtime(hour_ms / 1000)
    end = time.gmtime((hour_ms + HOUR_MS) / 1000)
    return f"{time.strftime('%H:%M', start)}-{time.strftime('%H:%M', end)} UTC"


def stamp(epoch_s: float | None = None) -> str:
    """A log line's time: ``YYYY-MM-DD HH:MM:SS`` UTC."""
    return time.strftime(
        "%Y-%m-%d %H:%M:%S", time.gmtime(time.time() if epoch_s is None else epoch_s)
    )


def parse_time(text: str | None, name: str = "time") -> int | None:
    """ISO 8601 to epoch milliseconds; a naive time means UTC. A bad time names the flag.

    >>> parse_time("2026-01-05T00:00:00Z")
    1767571200000
    >>> parse_time("2026-01-05")
    1767571200000
    """
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise ConfigError(
            f"--{name}: {text!r} is not an ISO 8601 time; use e.g. 2026-01-05T00:00:00Z"
        ) from None
    return int(as_utc(value).timestamp() * 1000)


def parse_range(since: str | None, until: str | None) -> tuple[int | None, int | None]:
    """``--since`` and ``--until`` as epoch ms; refuses a range that ends before it starts."""
    lo, hi = parse_time(since, "since"), parse_time(until, "until")
    if lo is not None and hi is not None and lo >= hi:
        raise ConfigError(
            f"--since {since} is not before --until {until}: swap them, or leave one out"
        )
    return lo, hi
