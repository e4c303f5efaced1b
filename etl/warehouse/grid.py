"""The coverage grid of the notebooks: every (symbol, hour) of a range with its bar's source
(null: no bar) and coverage (0 without a bar), by symbol and hour.

It is made of day rows, one per (symbol, day) with the day's 24 coverages and sources: from
``coverage_daily`` (``sql/016_coverage_daily.sql``) for the closed days summarized there, and
made here from the hourly bars for the other days (the one still open, days not summarized).
Pure functions, frames in and frame out; :meth:`etl.warehouse.store.Warehouse.coverage_grid`
does the reading.

>>> from datetime import date, datetime, UTC
>>> rows = summary_days(pl.DataFrame({"symbol": ["BTCUSDT"], "day": [date(2026, 1, 5)],
...     "coverage": [[1.0] * 23 + [0.0]], "sources": ["p" * 23 + "."]}))
>>> g = cells(["BTCUSDT"], datetime(2026, 1, 5, 22, tzinfo=UTC),
...           datetime(2026, 1, 6, tzinfo=UTC), [rows])
>>> g.select("source", "coverage").rows()
[('poll', 1.0), (None, 0.0)]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta

import polars as pl

from etl.hours import as_utc

HOURS = 24
# One letter per hour in coverage_daily.sources; "." is an hour without a bar.
SOURCES = {"p": "poll", "k": "kline", "t": "trade"}
DAY_ROWS = {
    "symbol": pl.String,
    "day": pl.Date,
    "coverage": pl.List(pl.Float64),
    "source": pl.List(pl.String),
}
GRID = {
    "symbol": pl.String,
    "bucket": pl.Datetime("us", "UTC"),
    "source": pl.String,
    "coverage": pl.Float64,
}


def summarized(rows: pl.DataFrame) -> set[date]:
    """The days whose ``coverage_daily`` rows can be used: every row of the day complete (no
    coverage that needs the configured poll interval).

    >>> summarized(pl.DataFrame({"day": [date(2026, 1, 5), date(2026, 1, 6), date(2026, 1, 6)],
    ...                          "complete": [True, True, False]}))
    {datetime.date(2026, 1, 5)}
    """
    return set(rows.group_by("day").agg(pl.col("complete").all()).filter("complete")["day"])


def runs(days: Iterable[date]) -> list[tuple[date, date]]:
    """Consecutive days as ``(first, last)`` runs, each read from the bars in one statement.

    >>> runs([date(2026, 1, 1), date(2026, 1, 2), date(2026, 1, 5)])
    [(datetime.date(2026, 1, 1), datetime.date(2026, 1, 2)), \
(datetime.date(2026, 1, 5), datetime.date(2026, 1, 5))]
    """
    out: list[tuple[date, date]] = []
    for day in sorted(days):
        if out and day - out[-1][1] == timedelta(days=1):
            out[-1] = (out[-1][0], day)
        else:
            out.append((day, day))
    return out


def summary_days(rows: pl.DataFrame) -> pl.DataFrame:
    """``coverage_daily`` rows as day rows: the sources' letters as names. A day's letters are
    mostly one of a few strings, so each distinct string is spelled out once."""
    spelled = (
        rows.select("sources")
        .unique()
        .with_columns(
            source=pl.col("sources")
            .str.split("")
            .list.eval(pl.element().replace_strict(SOURCES, default=None, return_dtype=pl.String))
        )
    )
    return (
        rows.join(spelled, on="sources", how="left", maintain_order="left")
        .select("symbol", "day", "coverage", "source")
        .cast(DAY_ROWS)  # type: ignore[arg-type]
    )


def bar_days(bars: pl.DataFrame) -> pl.DataFrame:
    """Hourly bars (``symbol, bucket, source, coverage``) as day rows: each (symbol, day) with
    a bar, its 24 hours, 0 and no source where no bar."""
    hour = pl.col("bucket").dt.convert_time_zone("UTC")
    found = bars.select(
        "symbol", "source", "coverage", day=hour.dt.date(), h=hour.dt.hour().cast(pl.Int8)
    )
    hours = pl.DataFrame({"h": range(HOURS)}, schema={"h": pl.Int8})
    every = (
        found.select("symbol", "day")
        .unique()
        .sort("symbol", "day")
        .join(hours, how="cross", maintain_order="left_right")
        .join(found, on=["symbol", "day", "h"], how="left", maintain_order="left")
    )
    # 24 rows per (symbol, day), in hour order: each day's hours are one row of 24
    return every.gather_every(HOURS).select(
        "symbol",
        "day",
        coverage=every["coverage"].fill_null(0.0).reshape((-1, HOURS)).cast(pl.List(pl.Float64)),
        source=every["source"].reshape((-1, HOURS)).cast(pl.List(pl.String)),
    )


def cells(
    symbols: Sequence[str], first: datetime, hi: datetime, days: Sequence[pl.DataFrame]
) -> pl.DataFrame:
    """The grid of ``symbols`` (sorted) x the hours from ``first`` (a whole hour) to the last one
    that ends by ``hi``, from day rows (each (symbol, day) at most once; one without a row has
    no bars)."""
    last = hi - timedelta(hours=1)
    if last < first:
        return pl.DataFrame(schema=GRID)
    span = pl.date_range(first.date(), last.date(), "1d", eager=True).alias("day")
    names = sorted(symbols)
    rows = pl.concat([d.cast(DAY_ROWS) for d in days]) if days else pl.DataFrame(schema=DAY_ROWS)  # type: ignore[arg-type]
    if rows.height == len(names) * span.len() and len(set(names)) == len(names):
        every = rows.sort("symbol", "day")  # a row for every (symbol, day): nothing to fill
    else:
        every = (
            pl.DataFrame({"symbol": names}, schema={"symbol": pl.String})
            .join(span.to_frame(), how="cross", maintain_order="left_right")
            .join(rows, on=["symbol", "day"], how="left", maintain_order="left")
            .with_columns(
                pl.col("coverage").fill_null(pl.lit([0.0] * HOURS, pl.List(pl.Float64))),
                pl.col("source").fill_null(pl.lit([None] * HOURS, pl.List(pl.String))),
            )
        )
    midnight = pl.col("day").cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    return (
        every.explode("coverage", "source")
        .select(
            "symbol",
            # every day row holds 24 hours, so a row's hour is its place in the frame mod 24
            bucket=midnight + pl.duration(hours=pl.int_range(pl.len()) % HOURS),
            source="source",
            coverage="coverage",
        )
        .filter(pl.col("bucket").is_between(as_utc(first), as_utc(last)))
    )
