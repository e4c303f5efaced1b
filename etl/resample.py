"""Bars of any width, pure Polars: frames in, frames out (no I/O, like :mod:`etl.bars`).

Widths of an hour or more are made from hourly bars (:func:`wider_bars`), exactly: the open of
the first hour, the close of the last, the highest high and lowest low, volumes and trade counts
summed, the mean weighted by samples, and the coverage carried (the hours' coverages summed over
the hours the width holds, so an hour without a bar counts 0). Widths below an hour are made from
trades (:func:`trade_bars_every`), as the exchange makes its klines.

>>> from etl.hours import utc
>>> hourly = pl.DataFrame({"symbol": ["X", "X"], "bucket": [utc(0), utc(HOUR_MS)],
...     "open": [1.0, 2.0], "high": [3.0, 4.0], "low": [0.5, 1.0], "close": [2.0, 3.0],
...     "mean": [1.5, 2.5], "samples": [1, 3], "coverage": [1.0, 0.5]},
...     schema_overrides={"bucket": UTC_US})
>>> wider_bars(hourly, "4h").select("open", "high", "low", "close", "mean", "coverage").row(0)
(1.0, 4.0, 0.5, 3.0, 2.25, 0.375)
"""

from __future__ import annotations

import polars as pl

from etl.bars import UTC_US
from etl.hours import HOUR_MS, MINUTE_MS

# Every width an export offers, in milliseconds; the names are the exchange's (and freqtrade's).
WIDTHS_MS = {
    "1m": MINUTE_MS,
    "5m": 5 * MINUTE_MS,
    "15m": 15 * MINUTE_MS,
    "1h": HOUR_MS,
    "4h": 4 * HOUR_MS,
    "1d": 24 * HOUR_MS,
    "1w": 7 * 24 * HOUR_MS,
}
SUB_HOUR = ("1m", "5m", "15m")

# The bars an export writes, whatever their width.
EXPORT_SCHEMA = {
    "symbol": pl.String,
    "bucket": UTC_US,
    "open": pl.Float64,
    "high": pl.Float64,
    "low": pl.Float64,
    "close": pl.Float64,
    "volume": pl.Float64,
    "quote_volume": pl.Float64,
    "trades": pl.Int64,
    "vwap": pl.Float64,
    "mean": pl.Float64,
    "samples": pl.Int64,
    "coverage": pl.Float64,
    "ids_missing": pl.Int64,
    "hours": pl.Int32,
    "sources": pl.String,
}


def _truncated(width: str) -> pl.Expr:
    """The start of the ``width`` bar holding ``bucket``: epoch-aligned (4h at 00, 04, ... UTC;
    1d at midnight UTC), weeks from Monday, as the exchange's klines."""
    return pl.col("bucket").dt.truncate({"1w": "1w", "1d": "1d", "4h": "4h"}.get(width, "1h"))


def wider_bars(hourly: pl.DataFrame, width: str) -> pl.DataFrame:
    """Bars of ``width`` (1h, 4h, 1d, 1w) from hourly bars ``symbol, bucket, open, high, low,
    close, mean, samples`` and optionally ``volume, quote_volume, trades, ids_missing, coverage,
    source`` (:data:`EXPORT_SCHEMA` out, ordered by symbol and bucket).

    A width of one hour gives the hourly bars themselves. Volumes, trade counts and missing ids
    are summed over the hours that have them (null when none has: poll and kline bars carry no
    volume); ``hours`` counts the hourly bars in each and ``sources`` names their sources.
    """
    if width not in WIDTHS_MS or width in SUB_HOUR:
        raise ValueError(f"{width!r} is not a width of an hour or more")
    hours_in = WIDTHS_MS[width] // HOUR_MS
    frame = hourly.lazy().with_columns(
        **{
            c: pl.col(c) if c in hourly.columns else pl.lit(None, dtype=t)
            for c, t in {
                "volume": pl.Float64,
                "quote_volume": pl.Float64,
                "trades": pl.Int64,
                "ids_missing": pl.Int64,
                "coverage": pl.Float64,
                "source": pl.String,
            }.items()
        }
    )

    def summed(col: str) -> pl.Expr:
        return pl.when(pl.col(col).is_not_null().any()).then(pl.col(col).sum())

    samples = pl.col("samples").cast(pl.Int64)
    one = pl.len() == 1
    bars = (
        frame.sort("symbol", "bucket")
        .with_columns(wide=_truncated(width))
        .group_by("symbol", "wide", maintain_order=True)
        .agg(
            open=pl.col("open").first(),
            high=pl.col("high").max(),
            low=pl.col("low").min(),
            close=pl.col("close").last(),
            volume=summed("volume"),
            quote_volume=summed("quote_volume"),
            trades=summed("trades"),
            # One hour: its own mean, not (mean × samples) / samples, which can differ in the
            # last bit.
            mean=pl.when(one)
            .then(pl.col("mean").first())
            .otherwise((pl.col("mean") * samples).sum() / samples.sum()),
            samples=samples.sum(),
            coverage=pl.when(pl.col("coverage").is_not_null().any()).then(
                pl.col("coverage").fill_null(0.0).sum() / hours_in
            ),
            ids_missing=summed("ids_missing"),
            hours=pl.len().cast(pl.Int32),
            sources=pl.col("source").drop_nulls().unique().sort().str.join(","),
        )
    )
    return (
        bars.with_columns(
            bucket=pl.col("wide"),
            vwap=pl.col("quote_volume") / pl.col("volume"),
            sources=pl.when(pl.col("sources") != "").then(pl.col("sources")),
        )
        .select(list(EXPORT_SCHEMA))
        .cast(EXPORT_SCHEMA)  # type: ignore[arg-type]
        .collect()
    )


def trade_bars_every(trades: pl.DataFrame | pl.LazyFrame, width: str) -> pl.DataFrame:
    """Bars of ``width`` (1m, 5m, 15m; any width in :data:`WIDTHS_MS` works) from trades
    ``symbol, ts (epoch ms), price, agg_id, qty, trades``, in id order as the exchange counts
    them: open / close the first / last trade's price, volume and quote volume summed, trades
    the individual trades, samples the aggregate trades, ``ids_missing`` the ids missing
    between consecutive ones (counted in the bucket of each side of the gap). Only buckets with
    a trade have a bar. :data:`EXPORT_SCHEMA` out, ordered by symbol and bucket.
    """
    every = WIDTHS_MS[width]
    price, qty = pl.col("price"), pl.col("qty")
    ordered = (
        trades.lazy()
        .select("symbol", "ts", "price", "agg_id", "qty", "trades")
        .sort("symbol", "agg_id")
        .with_columns(bucket_ms=pl.col("ts") - pl.col("ts") % every)
    )
    same = pl.col("symbol") == pl.col("symbol").shift(1)
    gaps = ordered.with_columns(
        gap=pl.when(same).then(pl.col("agg_id") - pl.col("agg_id").shift(1) - 1).otherwise(0),
        prev=pl.when(same).then(pl.col("bucket_ms").shift(1)),
    )
    missing = (
        pl.concat(
            [
                gaps.select("symbol", "bucket_ms", "gap"),
                gaps.filter((pl.col("gap") > 0) & (pl.col("prev") != pl.col("bucket_ms"))).select(
                    "symbol", bucket_ms="prev", gap="gap"
                ),
            ]
        )
        .group_by("symbol", "bucket_ms")
        .agg(ids_missing=pl.col("gap").sum())
    )
    bars = ordered.group_by("symbol", "bucket_ms", maintain_order=True).agg(
        open=price.first(),
        high=price.max(),
        low=price.min(),
        close=price.last(),
        volume=qty.sum(),
        quote_volume=(price * qty).sum(),
        trades=pl.col("trades").fill_null(1).sum(),
        mean=price.mean(),
        samples=pl.len(),
    )
    return (
        bars.join(missing, on=["symbol", "bucket_ms"], how="left")
        .with_columns(
            bucket=pl.from_epoch("bucket_ms", "ms").dt.replace_time_zone("UTC"),
            vwap=pl.col("quote_volume") / pl.col("volume"),
            coverage=pl.lit(None, dtype=pl.Float64),
            hours=pl.lit(None, dtype=pl.Int32),
            sources=pl.lit("trade"),
        )
        .select(list(EXPORT_SCHEMA))
        .cast(EXPORT_SCHEMA)  # type: ignore[arg-type]
        .sort("symbol", "bucket")
        .collect()
    )
