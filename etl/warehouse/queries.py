"""The warehouse's named statements: SQL text only, no connection.

Which of two bars for one (symbol, hour) is kept is decided in one place, SQL
(``etl_bar_rank`` and ``etl_bar_replaces``, ``sql/014_bar_rule_again.sql``): against a bar
already stored, and among the staged bars of one write (a staging file that held poll ticks and
trades in one hour, when its collector was switched between sources)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from etl.hours import as_utc

HOURLY_COLUMNS = (
    "symbol",
    "bucket",
    "open",
    "high",
    "low",
    "close",
    "mean",
    "samples",
    "first_at",
    "last_at",
    "max_gap_s",
    "source",
    "staging_id",
    "interval_s",
    "volume",
    "quote_volume",
    "trades",
    "vwap",
    "ids_missing",
)


def replaces(new: str, old: str, params: str = "$1, $2") -> str:
    """``etl_bar_replaces`` of bar ``new`` over bar ``old`` (table aliases); ``params`` are the
    configured interval and the full-coverage fraction (placeholders, or literals where a
    statement must report its row count: ADBC does not for bound statements)."""
    cols = ("source", "staging_id", "samples", "interval_s")
    args = ", ".join([*(f"{new}.{c}" for c in cols), *(f"{old}.{c}" for c in cols)])
    return f"etl_bar_replaces({args}, {params}, {new}.ids_missing, {old}.ids_missing)"


def staged(params: str = "$1, $2") -> str:
    """The staged bars, one per (symbol, hour): where a write holds two, the one the rule ranks
    highest (on a tie, the poll bar); ``params`` as for :func:`replaces`."""
    return (
        "SELECT DISTINCT ON (symbol, bucket) symbol, bucket, open, high, low, close, mean, "
        "samples, first_at, last_at, max_gap_s, source, staging_id::uuid AS staging_id, "
        "interval_s, volume, quote_volume, trades, vwap, ids_missing FROM etl_stage_hourly "
        f"ORDER BY symbol, bucket, etl_bar_rank(source, samples, interval_s, {params}, "
        "ids_missing) DESC, source"
    )


def upsert_hourly(rule: Sequence[float]) -> str:
    cols = ", ".join(HOURLY_COLUMNS)
    literals = ", ".join(f"{float(v)!r}::float8" for v in rule)
    updates = ", ".join(f"{c} = excluded.{c}" for c in HOURLY_COLUMNS[2:])
    values = ", ".join(f"m.{c}" for c in HOURLY_COLUMNS[2:])
    new = ", ".join(f"excluded.{c}" for c in HOURLY_COLUMNS[2:])
    # Only a changed bar that wins is touched, so a rerun leaves the table (updated_at included)
    # as it was, and a losing bar never overwrites a better one.
    return (
        f"INSERT INTO metrics_hourly AS m ({cols}) {staged(literals)} "
        f"ON CONFLICT (symbol, bucket) DO UPDATE SET {updates}, updated_at = now() "
        f"WHERE ({values}) IS DISTINCT FROM ({new}) AND {replaces('excluded', 'm', literals)}"
    )


# Per existing bar of another producer the new one meets and differs from: does it lose, or
# does it displace another staging file's? (Two producers that agree lose nothing.)
CONTESTS = f"""
SELECT s.bucket, m.staging_id AS old_staging, m.source AS old_source,
       NOT {replaces("s", "m")} AS lost
FROM ({staged()}) s JOIN metrics_hourly m USING (symbol, bucket)
WHERE NOT (s.source = m.source AND s.staging_id IS NOT DISTINCT FROM m.staging_id)
  AND (s.open, s.high, s.low, s.close, s.mean, s.samples, s.first_at, s.last_at)
      IS DISTINCT FROM (m.open, m.high, m.low, m.close, m.mean, m.samples, m.first_at, m.last_at)
"""
UPSERT_RUNS = (
    "INSERT INTO rollup_runs AS r (staging_id, staging_name, hour, symbols, rows, ticks_read, "
    "max_seq, bars_lost, started_at, finished_at) "
    "SELECT staging_id::uuid, staging_name, hour, symbols, rows, ticks_read, max_seq, bars_lost, "
    "started_at, now() FROM etl_stage_runs "
    "ON CONFLICT (staging_id, hour) DO UPDATE SET staging_name = excluded.staging_name, "
    "symbols = excluded.symbols, rows = excluded.rows, ticks_read = excluded.ticks_read, "
    "max_seq = excluded.max_seq, bars_lost = excluded.bars_lost, "
    "started_at = excluded.started_at, finished_at = excluded.finished_at, purged_at = NULL"
)
ENSURE_STAGED_PARTITIONS = (
    "SELECT count(etl_ensure_hourly_partitions(month, month)) FROM "
    "(SELECT DISTINCT date_trunc('month', bucket, 'UTC') AS month FROM etl_stage_hourly) months"
)
REFRESH_STAGED_DAYS = (
    "SELECT coalesce(sum(etl_refresh_daily(day, day + 1)), 0) FROM "
    "(SELECT DISTINCT (bucket AT TIME ZONE 'UTC')::date AS day FROM etl_stage_hourly) days"
)
# Hours without a bar, per symbol, from the first hour any of the symbols has a bar in the range
# (so a new store has no gaps, and a symbol with no bar at all has every hour missing). The join
# repeats the range on the bars so that only its partitions are read: joined on the hours alone,
# every partition was (8.8 M bars, 2.8 s for a year of 1,000 symbols; bench part 6).
MISSING_SQL = """
WITH syms AS (SELECT unnest(string_to_array($1, ',')) AS symbol),
start AS (
    SELECT min(bucket) AS first_bucket FROM metrics_hourly
    WHERE bucket >= $2 AND bucket < $3 AND symbol = ANY(string_to_array($1, ','))
),
hours AS (
    SELECT generate_series(first_bucket, $3 - interval '1 hour', interval '1 hour') AS bucket
    FROM start WHERE first_bucket IS NOT NULL
)
SELECT s.symbol,
       count(h.bucket) FILTER (WHERE m.bucket IS NULL) AS missing_hours,
       min(h.bucket) FILTER (WHERE m.bucket IS NULL) AS first_missing
FROM syms s
CROSS JOIN hours h
LEFT JOIN metrics_hourly m ON m.symbol = s.symbol AND m.bucket = h.bucket
                          AND m.bucket >= $2 AND m.bucket < $3
GROUP BY s.symbol
UNION ALL
SELECT s.symbol, 0, NULL FROM syms s WHERE NOT EXISTS (SELECT 1 FROM hours)
ORDER BY 1
"""
# Coverage over a range: an hour without a bar counts as 0.
COVERAGE_SQL = """
WITH syms AS (SELECT unnest(string_to_array($4, ',')) AS symbol)
SELECT s.symbol, count(m.bucket) AS bars,
       coalesce(sum(etl_bar_coverage(m.source, m.samples, m.interval_s, $1, m.ids_missing)), 0)
           / greatest(1, extract(epoch FROM $3::timestamptz - $2::timestamptz) / 3600) AS coverage,
       count(m.bucket) FILTER (WHERE m.source = 'kline') AS kline_bars
FROM syms s
LEFT JOIN metrics_hourly m ON m.symbol = s.symbol AND m.bucket >= $2 AND m.bucket < $3
GROUP BY s.symbol ORDER BY s.symbol
"""
# Hourly bars and their coverage, for exports of any width (etl/resample.py aggregates them).
EXPORT_BARS_SQL = """
SELECT symbol, bucket, open, high, low, close, mean, samples, volume, quote_volume, trades,
       ids_missing::bigint AS ids_missing, source,
       etl_bar_coverage(source, samples, interval_s, $1, ids_missing) AS coverage
FROM metrics_hourly
WHERE bucket >= $2 AND bucket < $3 AND symbol = ANY(string_to_array($4, ','))
ORDER BY symbol, bucket
"""
# The notebook's coverage grid (every symbol x every hour, 0 where no bar) is made in Polars
# (``etl.warehouse.grid``) of day rows, one per (symbol, day) with its 24 hours: coverage_daily's
# for the closed days summarized there (``sql/016_coverage_daily.sql``), and for the other days
# (the open one, days not summarized) made of their bars with their coverage. Made in SQL by a
# join of every (symbol, hour) to the bars, 336,000 cells took 3.1 s on the server; from the bars
# placed by Polars, 0.26 s end to end; now, see docs/performance.md (bench part 6).
COVERAGE_DAYS_SQL = """
SELECT symbol, day, coverage, sources, array_position(coverage, NULL) IS NULL AS complete
FROM coverage_daily
WHERE day >= $1 AND day <= $2 AND symbol = ANY(string_to_array($3, ','))
"""
# $2 is a whole hour, made by the caller: date_trunc of a timestamptz is only stable, so
# with it the partitions were pruned at each execution's start, not once when planned.
COVERAGE_BARS_SQL = """
SELECT symbol, bucket, source,
       etl_bar_coverage(source, samples, interval_s, $1, ids_missing) AS coverage
FROM metrics_hourly
WHERE bucket >= $2 AND bucket < $3 AND symbol = ANY(string_to_array($4, ','))
"""
BACKFILL_TARGETS_SQL = """
WITH syms AS (SELECT unnest(string_to_array($3, ',')) AS symbol),
hours AS (SELECT generate_series($4::timestamptz, $5::timestamptz - interval '1 hour', interval '1 hour') AS hour)
SELECT s.symbol, (extract(epoch FROM h.hour) * 1000)::bigint AS hour_ms
FROM syms s CROSS JOIN hours h
LEFT JOIN metrics_hourly m ON m.symbol = s.symbol AND m.bucket = h.hour
                          AND m.bucket >= $4 AND m.bucket < $5
LEFT JOIN backfill_log b ON b.symbol = s.symbol AND b.hour = h.hour
WHERE b.hour IS NULL
  AND (m.bucket IS NULL OR etl_bar_replaces('kline', NULL, 60, 60.0,
                                            m.source, m.staging_id, m.samples, m.interval_s, $1, $2,
                                            NULL, m.ids_missing))
ORDER BY 1, 2
"""


def literal(value: Any) -> str:
    """``value`` as a SQL literal: ``NULL``, a number, a quoted string (an escape string, its
    quotes and backslashes doubled, so it means the same whatever ``standard_conforming_strings``
    says), a typed timestamp or date.

    >>> literal("it's"), literal(5.0), literal(7), literal(None)
    ("E'it''s'", "'5.0'::float8", '7', 'NULL')
    """
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"'{value!r}'::float8"
    if isinstance(value, datetime):  # naive: UTC, whatever the session's zone
        return f"'{as_utc(value).isoformat()}'::timestamptz"
    if isinstance(value, date):
        return f"'{value.isoformat()}'::date"
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("a string with a NUL character cannot be sent to PostgreSQL")
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    raise TypeError(f"no SQL literal for a {type(value).__name__}")


def inline(sql: str, params: Sequence[Any]) -> str:
    """``sql`` with each ``$n`` replaced by the literal of ``params[n - 1]``: a statement without
    parameters, which ADBC reads through ``COPY ... TO STDOUT (FORMAT binary)`` (a bound one
    comes back row by row: 1.5 times slower for 300,000 rows). For the named statements here,
    whose text holds no ``$n`` inside a string.

    >>> inline("SELECT $1::date, $2", [datetime(2026, 1, 5), "BTCUSDT"])
    "SELECT '2026-01-05T00:00:00+00:00'::timestamptz::date, E'BTCUSDT'"
    """
    return re.sub(r"\$(\d+)\b", lambda m: literal(params[int(m.group(1)) - 1]), sql)
