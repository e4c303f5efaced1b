"""Pure Polars transforms: frames in, frames out. No I/O here, so every rule is testable alone.

>>> ticks = pl.DataFrame({"seq": [1, 2, 3], "symbol": ["BTCUSDT"] * 3,
...                       "ts": [0, 1_000, 3_599_999], "price": [10.0, 12.0, 11.0]})
>>> hourly_bars(ticks).select("open", "high", "low", "close", "samples").row(0)
(10.0, 12.0, 10.0, 11.0, 3)
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from etl.hours import HOUR_MS, MINUTE_MS

UTC_US = pl.Datetime("us", "UTC")

BAR_SCHEMA = {
    "symbol": pl.String,
    "bucket": UTC_US,
    "open": pl.Float64,
    "high": pl.Float64,
    "low": pl.Float64,
    "close": pl.Float64,
    "mean": pl.Float64,
    "samples": pl.Int32,
    "first_at": UTC_US,
    "last_at": UTC_US,
    "max_gap_s": pl.Float64,
    "source": pl.String,
    "interval_s": pl.Float64,
}


def _utc(col: str | pl.Expr) -> pl.Expr:
    expr = pl.col(col) if isinstance(col, str) else col
    return pl.from_epoch(expr, "ms").dt.replace_time_zone("UTC").cast(UTC_US)


def _price_aggs() -> dict[str, pl.Expr]:
    """The aggregates every bar shares, over ticks in time order within a group."""
    price, ts = pl.col("price"), pl.col("ts")
    return {
        "open": price.first(),
        "high": price.max(),
        "low": price.min(),
        "close": price.last(),
        "mean": price.mean(),
        "samples": pl.len().cast(pl.Int32),
        "first_ts": ts.first(),
        "last_ts": ts.last(),
        "inner_gap": ts.diff().max(),
    }


def _bar_times(bucket_ms: str) -> dict[str, pl.Expr]:
    """``bucket``, ``first_at``, ``last_at`` and ``max_gap_s`` (the longest stretch of the hour
    without a tick, counting from the hour's start and to its end) from epoch-ms columns."""
    start = pl.col(bucket_ms)
    return {
        "bucket": _utc(bucket_ms),
        "first_at": _utc("first_ts"),
        "last_at": _utc("last_ts"),
        "max_gap_s": pl.max_horizontal(
            pl.col("first_ts") - start, pl.col("inner_gap"), start + HOUR_MS - pl.col("last_ts")
        ).cast(pl.Float64)
        / 1000,
    }


def hourly_bars(
    ticks: pl.DataFrame | pl.LazyFrame,
    source: str = "poll",
    *,
    ordered: bool = False,
    symbols: pl.DataFrame | None = None,
    interval_s: float | pl.Expr | None = None,
) -> pl.DataFrame:
    """One bar per symbol and UTC hour from ticks ``[seq,] symbol, ts (epoch ms), price``.

    Within a symbol, ticks are ordered by ``ts`` then ``seq`` (the staging row id), so equal
    timestamps resolve deterministically: the first written is the earlier. ``max_gap_s`` is the
    longest stretch without a sample, counting from the hour's start and up to its end, so a
    single sample at half past has a gap of 1800 s. ``max_seq`` is the bar's last staging row
    (null without a ``seq`` column). ``interval_s`` is the poll interval the ticks were collected
    at (a number, or an expression of ``bucket_ms``), kept with the bar for its coverage.

    Symbols come as names (``symbol``), or as ids (``sym``) with ``symbols`` mapping ``sym`` to
    ``symbol``, as the staging store reads them. ``ordered=True`` promises the input is already
    ordered by ``ts, seq`` (as staging reads are): a stable sort by symbol then suffices, which
    is about twice as fast.
    """
    frame = ticks.lazy()
    names = frame.lazy()
    if symbols is not None:
        # Group on the staging file's integer symbol ids; names join the bars afterwards.
        frame = frame.rename({"sym": "code"})
        names = symbols.lazy().select(code="sym", symbol="symbol")
    else:
        # Group on the symbol's dictionary code, not the string: sorting and gathering 2 M
        # integers is several times cheaper than 2 M strings.
        frame = frame.with_columns(code=pl.col("symbol").cast(pl.Categorical).to_physical())
        names = frame.select("code", "symbol").unique("code")
    has_seq = "seq" in frame.collect_schema().names()
    seq = pl.col("seq") if has_seq else pl.lit(None, dtype=pl.Int64)
    frame = frame.select("code", seq.alias("seq"), "ts", "price")
    if ordered:
        frame = frame.sort("code", maintain_order=True)
    else:
        frame = frame.sort("code", "ts", "seq") if has_seq else frame.sort("code", "ts")
    bars = (
        frame.group_by_dynamic(
            "ts", every=f"{HOUR_MS}i", closed="left", label="left", group_by="code"
        )
        .agg(**_price_aggs(), max_seq=pl.col("seq").max())
        .join(names, on="code")
    )
    if interval_s is None:
        interval = pl.lit(None, dtype=pl.Float64)
    elif isinstance(interval_s, pl.Expr):
        interval = interval_s
    else:
        interval = pl.lit(float(interval_s))
    return (
        bars.with_columns(bucket_ms=pl.col("ts"))
        .with_columns(
            **_bar_times("ts"),
            source=pl.lit(source),
            interval_s=interval,
        )
        .select(*BAR_SCHEMA, "max_seq")
        .cast({**BAR_SCHEMA, "max_seq": pl.Int64})  # type: ignore[arg-type]
        .collect()
    )


def hour_ledger(
    bars: pl.DataFrame, started_at: datetime, *, max_seq: int | None = None
) -> pl.DataFrame:
    """The ``rollup_runs`` rows for the hours in ``bars``: symbols, bars, ticks read, max seq.

    ``max_seq`` overrides the bars' own: a read that saw every row of its hours up to a bound
    records that bound.
    """
    return (
        bars.group_by(hour="bucket")
        .agg(
            symbols=pl.col("symbol").n_unique().cast(pl.Int32),
            rows=pl.len().cast(pl.Int32),
            ticks_read=pl.col("samples").sum().cast(pl.Int64),
            max_seq=pl.col("max_seq").max() if max_seq is None else pl.lit(max_seq, pl.Int64),
        )
        .with_columns(started_at=pl.lit(started_at, dtype=UTC_US))
        .sort("hour")
    )


def kline_bars(klines: pl.DataFrame, symbol: str) -> pl.DataFrame:
    """Hourly bars (``source = 'kline'``) from 1-minute klines ``open_ms, open, high, low, close``.

    The mean is the mean of the minute closes; ``samples`` is the number of minutes (an
    ``interval_s`` of 60), so a kline bar's coverage is ``samples / 60``.
    """
    minutes = klines.lazy().select(
        seq=pl.col("open_ms"),
        symbol=pl.lit(symbol),
        ts=pl.col("open_ms"),
        open=pl.col("open"),
        high=pl.col("high"),
        low=pl.col("low"),
        close=pl.col("close"),
    )
    bars = (
        minutes.sort("ts")
        .with_columns(at=_utc("ts"))
        .group_by_dynamic("at", every="1h", closed="left", label="left", group_by="symbol")
        .agg(
            open=pl.col("open").first(),
            high=pl.col("high").max(),
            low=pl.col("low").min(),
            close=pl.col("close").last(),
            mean=pl.col("close").mean(),
            samples=pl.len().cast(pl.Int32),
            first_ts=pl.col("ts").first(),
            last_ts=pl.col("ts").last() + MINUTE_MS,
            inner_gap=(pl.col("ts").diff().max() - MINUTE_MS),
        )
        .rename({"at": "bucket"})
    )
    bucket_ms = pl.col("bucket").dt.epoch("ms")
    return (
        bars.with_columns(
            first_at=_utc("first_ts"),
            last_at=_utc(pl.col("last_ts") - 1),
            max_gap_s=pl.max_horizontal(
                pl.col("first_ts") - bucket_ms,
                pl.col("inner_gap"),
                bucket_ms + HOUR_MS - pl.col("last_ts"),
                pl.lit(0, dtype=pl.Int64),
            ).cast(pl.Float64)
            / 1000,
            source=pl.lit("kline"),
            interval_s=pl.lit(60.0),  # a kline bar's samples are minutes
        )
        .select(list(BAR_SCHEMA))
        .cast(BAR_SCHEMA)  # type: ignore[arg-type]
        .collect()
    )


# Columns only trade bars fill (sql/013_trade_bars.sql); NULL in poll and kline bars.
TRADE_COLUMNS = {
    "volume": pl.Float64,
    "quote_volume": pl.Float64,
    "trades": pl.Int64,
    "vwap": pl.Float64,
    "ids_missing": pl.Int32,
}
TRADE_BAR_SCHEMA = {**BAR_SCHEMA, **TRADE_COLUMNS}


def id_gaps(trades: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    """Aggregate trade ids missing per symbol and hour, from the staged ids alone: ``sym,
    bucket_ms, missing``.

    Between two consecutive staged ids of a symbol, the ids between are missing: they count in
    the hour of the later trade, and also in the earlier one's when the two lie in different
    hours (the missing trades may belong to either).

    >>> t = pl.DataFrame({"sym": [1, 1, 1], "ts": [0, 10, 3_600_000], "agg_id": [1, 4, 6]})
    >>> id_gaps(t).sort("bucket_ms").collect().rows()
    [(1, 0, 3), (1, 3600000, 1)]
    """
    same = pl.col("sym") == pl.col("sym").shift(1)
    seq = (
        trades.lazy()
        .select("sym", "ts", "agg_id")
        .sort("sym", "agg_id")
        .with_columns(bucket_ms=pl.col("ts") - pl.col("ts") % HOUR_MS)
        .with_columns(
            gap=pl.when(same).then(pl.col("agg_id") - pl.col("agg_id").shift(1) - 1).otherwise(0),
            prev_bucket=pl.when(same).then(pl.col("bucket_ms").shift(1)),
        )
    )
    own = seq.select("sym", "bucket_ms", missing="gap")
    earlier = seq.filter(
        (pl.col("gap") > 0) & (pl.col("prev_bucket") != pl.col("bucket_ms"))
    ).select("sym", bucket_ms="prev_bucket", missing="gap")
    return (
        pl.concat([own, earlier])
        .group_by("sym", "bucket_ms")
        .agg(pl.col("missing").sum().cast(pl.Int64))
    )


def edge_missing(
    hours: pl.LazyFrame, cursors: pl.DataFrame | None, holes: pl.DataFrame | None
) -> pl.LazyFrame:
    """What the staged ids cannot show, per ``sym, bucket_ms`` of ``hours``: ``edges`` (1 if the
    symbol's chain began after the hour started, or has not been seen past its end: some trades
    may be missing, how many is unknown) and ``holed`` (ids of recorded holes overlapping it).

    ``cursors``: ``sym, last_ts, since_ms, live_ms`` (the trade feed's); ``holes``: ``sym,
    after_id, before_id, from_ms, to_ms``.
    """
    end = pl.col("bucket_ms") + HOUR_MS
    cur = (cursors if cursors is not None else pl.DataFrame(schema=_CURSOR_COLS)).lazy()
    out = hours.join(
        cur.select(*_CURSOR_COLS).cast(_CURSOR_COLS),  # type: ignore[arg-type]
        on="sym",
        how="left",
    ).with_columns(
        edges=(
            pl.col("since_ms").is_null()
            | (pl.col("since_ms") > pl.col("bucket_ms"))
            | ((pl.col("last_ts") < end) & (pl.col("live_ms") < end))
        ).cast(pl.Int64)
    )
    hole_cols = {"sym": pl.Int64, "after_id": pl.Int64, "before_id": pl.Int64}
    hole_cols |= {"from_ms": pl.Int64, "to_ms": pl.Int64}
    recorded = (holes if holes is not None else pl.DataFrame(schema=hole_cols)).lazy()
    holed = (
        hours.join(recorded.select(*hole_cols).cast(hole_cols), on="sym")  # type: ignore[arg-type]
        .filter((pl.col("from_ms") < end) & (pl.col("to_ms") >= pl.col("bucket_ms")))
        .group_by("sym", "bucket_ms")
        .agg(holed=(pl.col("before_id") - pl.col("after_id") - 1).clip(0).sum())
    )
    return out.join(holed, on=["sym", "bucket_ms"], how="left").select(
        "sym", "bucket_ms", "edges", pl.col("holed").fill_null(0)
    )


_CURSOR_COLS = {"sym": pl.Int64, "last_ts": pl.Int64, "since_ms": pl.Int64, "live_ms": pl.Int64}


TRADE_CONTEXT_SCHEMA = {
    "sym": pl.Int64,
    "bucket_ms": pl.Int64,
    "gaps": pl.Int64,
    "edges": pl.Int64,
    "holed": pl.Int64,
}


def inner_gaps(trades: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    """Aggregate trade ids missing between consecutive staged ids of one symbol within one hour,
    from that hour's trades alone: ``sym, bucket_ms, inner``.

    >>> t = pl.DataFrame({"sym": [1, 1, 1], "ts": [0, 10, 3_600_000], "agg_id": [1, 4, 6]})
    >>> inner_gaps(t).sort("bucket_ms").collect().rows()
    [(1, 0, 2), (1, 3600000, 0)]
    """
    keys = pl.struct("sym", "bucket_ms")
    same = keys == keys.shift(1)
    return (
        trades.lazy()
        .select("sym", "ts", "agg_id")
        .with_columns(bucket_ms=pl.col("ts") - pl.col("ts") % HOUR_MS)
        .sort("sym", "bucket_ms", "agg_id")
        .with_columns(
            gap=pl.when(same).then(pl.col("agg_id") - pl.col("agg_id").shift(1) - 1).otherwise(0)
        )
        .group_by("sym", "bucket_ms")
        .agg(inner=pl.col("gap").sum().cast(pl.Int64))
    )


def trade_context(
    trades: pl.DataFrame | pl.LazyFrame,
    *,
    cursors: pl.DataFrame | None = None,
    holes: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """What a trade bar's ``ids_missing`` takes from outside its own hour's trades, per ``sym,
    bucket_ms`` (:data:`TRADE_CONTEXT_SCHEMA`): ``gaps``, the ids missing at the hour's edges
    against the neighbouring staged trades read with it (:func:`id_gaps` over ``trades`` less
    :func:`inner_gaps`), and ``edges`` and ``holed`` (:func:`edge_missing`, from the trade
    feed's ``cursors`` and recorded ``holes``).

    With it, :func:`trade_bars` needs nothing but the hour's own trades: the rollup keeps it,
    the archive carries it, and a bar rebuilt from the archive is the bar the rollup made.
    """
    ordered = trades.lazy().select("sym", "ts", "agg_id")
    hours = (
        ordered.select("sym", bucket_ms=pl.col("ts") - pl.col("ts") % HOUR_MS)
        .unique()
        .sort("sym", "bucket_ms")
    )
    return (
        hours.join(id_gaps(ordered), on=["sym", "bucket_ms"], how="left")
        .join(inner_gaps(ordered), on=["sym", "bucket_ms"], how="left")
        .join(edge_missing(hours, cursors, holes), on=["sym", "bucket_ms"], how="left")
        .select(
            "sym",
            "bucket_ms",
            gaps=pl.col("missing").fill_null(0) - pl.col("inner").fill_null(0),
            edges=pl.col("edges").fill_null(1),
            holed=pl.col("holed").fill_null(0),
        )
        .cast(TRADE_CONTEXT_SCHEMA)  # type: ignore[arg-type]
        .collect()
    )


def trade_bars(
    trades: pl.DataFrame | pl.LazyFrame,
    symbols: pl.DataFrame,
    *,
    cursors: pl.DataFrame | None = None,
    holes: pl.DataFrame | None = None,
    context: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """One ``source = 'trade'`` bar per symbol and UTC hour from staged trades ``sym, ts, price,
    agg_id, qty, trades`` (``symbols`` maps ``sym`` to ``symbol``).

    Trades are taken in id order (the exchange's order; trade times can tie). ``open`` / ``close``
    are the first / last trade's price, ``mean`` the mean of the trades' prices, ``samples`` the
    aggregate trades, ``trades`` the individual ones (``l - f + 1`` summed, as in the exchange's
    kline), ``volume`` / ``quote_volume`` the sums of quantity and of price × quantity, ``vwap``
    their ratio. ``ids_missing`` counts the ids of the hour not staged: gaps in the sequence
    (:func:`id_gaps`), or recorded holes, whichever is larger, plus 1 for an edge the sequence
    cannot vouch for (:func:`edge_missing`); 0 means the hour is complete.

    ``context`` (:func:`trade_context`) gives what lies outside the hour's own trades; without
    it, it is worked out from ``trades``, ``cursors`` and ``holes``. An hour the context does
    not name counts an unvouched edge.
    """
    if context is None:
        context = trade_context(trades, cursors=cursors, holes=holes)
    ordered = (
        trades.lazy()
        .select("sym", "ts", "price", "agg_id", "qty", "trades")
        .sort("sym", "agg_id")
        .with_columns(bucket_ms=pl.col("ts") - pl.col("ts") % HOUR_MS)
    )
    price, qty = pl.col("price"), pl.col("qty")
    bars = ordered.group_by("sym", "bucket_ms").agg(
        **_price_aggs(),
        volume=qty.sum(),
        quote_volume=(price * qty).sum(),
        trades=pl.col("trades").fill_null(1).sum(),
    )
    missing = (
        bars.select("sym", "bucket_ms")
        .join(inner_gaps(ordered), on=["sym", "bucket_ms"], how="left")
        .join(
            context.lazy().select(*TRADE_CONTEXT_SCHEMA).cast(TRADE_CONTEXT_SCHEMA),  # type: ignore[arg-type]
            on=["sym", "bucket_ms"],
            how="left",
        )
        .select(
            "sym",
            "bucket_ms",
            ids_missing=pl.max_horizontal(
                pl.col("inner").fill_null(0) + pl.col("gaps").fill_null(0),
                pl.col("holed").fill_null(0),
            )
            + pl.col("edges").fill_null(1),
        )
    )
    return (
        bars.join(missing, on=["sym", "bucket_ms"], how="left")
        .join(symbols.lazy().select("sym", "symbol"), on="sym")
        .with_columns(
            **_bar_times("bucket_ms"),
            source=pl.lit("trade"),
            interval_s=pl.lit(None, dtype=pl.Float64),
            vwap=pl.col("quote_volume") / pl.col("volume"),
            max_seq=pl.lit(None, dtype=pl.Int64),
        )
        .select(*TRADE_BAR_SCHEMA, "max_seq")
        .cast({**TRADE_BAR_SCHEMA, "max_seq": pl.Int64})  # type: ignore[arg-type]
        .sort("symbol", "bucket")
        .collect()
    )
