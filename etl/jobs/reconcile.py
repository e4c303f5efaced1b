"""``etl reconcile``: compare recent ``poll`` and ``trade`` bars with the exchange's own 1h candles.

Per symbol and hour, the deviation of open, high, low and close in basis points of the
exchange's value. A poll bar samples the price every few seconds, so its high and low lie inside
the candle's and its open and close are the first and last samples: small deviations are the
expected cost of sampling; large ones point at a stale symbol, a clock problem or bad data. A
trade bar is built from every trade, so it shows 0 bps (anything else is a bug or a hole).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack

import polars as pl

from etl.config import Settings
from etl.exchange.client import BinanceClient, open_exchange
from etl.exchange.errors import BinanceError
from etl.exchange.parse import parse_klines
from etl.hours import HOUR_MS, closed_range, ms, utc
from etl.staging.store import open_staging
from etl.warehouse.store import Warehouse, open_warehouse


def deviations(poll: pl.DataFrame, klines: pl.DataFrame) -> pl.DataFrame:
    """Join poll bars with hourly candles (``symbol, bucket, k_open, k_high, k_low, k_close``)
    and give each field's deviation in basis points.

    >>> poll = pl.DataFrame({"symbol": ["A"], "bucket": [0], "open": [101.0], "high": [102.0],
    ...                      "low": [99.0], "close": [100.0], "samples": [720]})
    >>> k = pl.DataFrame({"symbol": ["A"], "bucket": [0], "k_open": [100.0], "k_high": [104.0],
    ...                   "k_low": [98.0], "k_close": [100.0]})
    >>> deviations(poll, k).select("open_bps", "close_bps").row(0)
    (100.0, 0.0)
    """
    bps = lambda field: (pl.col(field) - pl.col(f"k_{field}")) / pl.col(f"k_{field}") * 1e4  # noqa: E731
    return (
        poll.join(klines, on=["symbol", "bucket"], how="inner")
        .select(
            "symbol",
            "bucket",
            open_bps=bps("open"),
            high_bps=bps("high"),
            low_bps=bps("low"),
            close_bps=bps("close"),
            poll_samples=pl.col("samples").cast(pl.Int32),
        )
        .sort("symbol", "bucket")
    )


def summarize(frame: pl.DataFrame) -> pl.DataFrame:
    """Per symbol: hours compared, mean and worst absolute deviation of each field (bps)."""
    fields = ("open", "high", "low", "close")
    return (
        frame.group_by("symbol")
        .agg(
            pl.len().alias("hours"),
            *[pl.col(f"{f}_bps").abs().mean().alias(f"{f}_mean_abs_bps") for f in fields],
            *[pl.col(f"{f}_bps").abs().max().alias(f"{f}_max_abs_bps") for f in fields],
        )
        .sort("symbol")
    )


def run_reconcile(
    settings: Settings,
    *,
    hours: int = 24,
    since_ms: int | None = None,
    until_ms: int | None = None,
    now: Callable[[], float] = time.time,
) -> pl.DataFrame:
    """Compare closed hours (the last ``hours``, or ``[since, until)``) with the exchange's
    candles; store and return the per-hour deviations. Builds the parts from ``settings`` and
    hands them to :func:`reconcile`."""
    lo, hi = closed_range(ms(now()), since_ms, until_ms)
    lo = hi - hours * HOUR_MS if lo is None else lo
    with ExitStack() as stack:
        # Bars to compare must exist: never create a warehouse (or a staging file) to look.
        wh = stack.enter_context(open_warehouse(settings, create=False))
        staging = (  # keeps the exchange's bans across runs, when there is one
            stack.enter_context(open_staging(settings, create=False))
            if settings.staging_path.exists()
            else None
        )
        client = stack.enter_context(
            open_exchange(settings, staging.state if staging is not None else None)
        )
        if not wh.has_schema():
            return pl.DataFrame()
        wh.migrate()
        return reconcile(wh, client, settings.symbols, lo, hi)


def reconcile(
    wh: Warehouse, client: BinanceClient, symbols: Sequence[str], lo: int, hi: int
) -> pl.DataFrame:
    """Compare the poll and trade bars of ``symbols`` in ``[lo, hi)`` (epoch ms) with the
    exchange's 1h candles; store the deviations in ``reconciliation`` and return them with each
    bar's source (empty: nothing to compare).

    >>> reconcile(wh, client, ["BTCUSDT"], lo, hi)                  # doctest: +SKIP
    shape: (24, 8) ...
    """
    bars = wh.bars(symbols, utc(lo), utc(hi))
    poll = bars.filter(pl.col("source").is_in(["poll", "trade"]))
    candles = []
    try:
        for symbol in poll["symbol"].unique(maintain_order=True).to_list():
            rows = client.klines(symbol, "1h", lo, hi - 1, limit=1000)
            candles.append(parse_klines(rows).with_columns(symbol=pl.lit(symbol)))
    except BinanceError as exc:  # unreachable, banned, refused, or an answer of the wrong shape
        raise exc.advise("reconcile compares nothing until it answers; try again later") from None
    if not candles:
        return pl.DataFrame()
    klines = pl.concat(candles).select(
        "symbol",
        bucket=pl.from_epoch("open_ms", "ms")
        .dt.replace_time_zone("UTC")
        .cast(pl.Datetime("us", "UTC")),
        k_open="open",
        k_high="high",
        k_low="low",
        k_close="close",
    )
    result = deviations(
        poll.select("symbol", "bucket", "open", "high", "low", "close", "samples").with_columns(
            pl.col("bucket").cast(pl.Datetime("us", "UTC"))
        ),
        klines,
    )
    wh.write_reconciliation(result)
    return result.join(
        poll.select("symbol", pl.col("bucket").cast(pl.Datetime("us", "UTC")), "source"),
        on=["symbol", "bucket"],
        how="left",
    )
