"""The current hour's running bar per symbol, in memory, for the live view."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from etl.hours import hour_floor


class RunningMetrics:
    """Open, high, low, last, mean and samples per symbol for the current hour, in memory.

    >>> m = RunningMetrics()
    >>> m.update(["BTCUSDT"], [10.0], 0); m.update(["BTCUSDT"], [12.0], 5000)
    >>> m.frame().row(0)
    ('BTCUSDT', 10.0, 12.0, 10.0, 12.0, 11.0, 2)
    """

    _EMPTY = pl.DataFrame(
        schema={
            "symbol": pl.String,
            "open": pl.Float64,
            "high": pl.Float64,
            "low": pl.Float64,
            "last": pl.Float64,
            "total": pl.Float64,
            "samples": pl.Int64,
        }
    )

    def __init__(self) -> None:
        self.hour: int | None = None
        self._state = self._EMPTY

    def update(self, symbols: Sequence[str], prices: Sequence[float], ts_ms: int) -> None:
        hour = hour_floor(ts_ms)
        if hour != self.hour:
            self.hour, self._state = hour, self._EMPTY
        new = pl.DataFrame(
            {"symbol": symbols, "price": prices}, schema={"symbol": pl.String, "price": pl.Float64}
        )
        price = pl.col("price")
        self._state = self._state.join(new, on="symbol", how="full", coalesce=True).select(
            "symbol",
            open=pl.coalesce("open", price),
            high=pl.max_horizontal("high", price),
            low=pl.min_horizontal("low", price),
            last=pl.coalesce(price, "last"),
            total=pl.sum_horizontal("total", price),
            samples=pl.col("samples").fill_null(0) + price.is_not_null().cast(pl.Int64),
        )

    def frame(self) -> pl.DataFrame:
        return self._state.sort("symbol").select(
            "symbol",
            "open",
            "high",
            "low",
            "last",
            mean=pl.col("total") / pl.col("samples"),
            samples="samples",
        )
