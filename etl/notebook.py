"""Helpers for the notebooks: the project's own configuration, Polars frames through ADBC.

>>> from etl.notebook import History                       # doctest: +SKIP
>>> h = History()                   # etl.toml / ETL_* / defaults; embedded server if no DSN
>>> h.hourly(["BTCUSDT"], days=7)   # a Polars frame of hourly bars
"""

from __future__ import annotations

import atexit
import os
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from etl.config import Settings, load_settings
from etl.warehouse import Warehouse, open_warehouse


def project_root(start: Path | None = None) -> Path:
    """The directory holding ``pyproject.toml`` above ``start`` (default: the working directory)."""
    here = (start or Path.cwd()).resolve()
    for path in (here, *here.parents):
        if (path / "pyproject.toml").exists() and (path / "etl").is_dir():
            return path
    return here


class History:
    """Read-only access to the warehouse for exploration.

    Paths in the configuration are relative to the project root, as for ``just`` recipes, so the
    working directory moves there.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        os.chdir(project_root())
        self.settings = settings or load_settings()
        self._stack = ExitStack()
        self.wh: Warehouse = self._stack.enter_context(open_warehouse(self.settings))
        atexit.register(self.close)

    def close(self) -> None:
        self._stack.close()

    def sql(self, query: str, params: list[Any] | None = None) -> pl.DataFrame:
        """Any read-only SQL as a Polars frame (``$1`` placeholders)."""
        return self.wh.query(query, params)

    def symbols(self) -> list[str]:
        return self.sql("SELECT symbol FROM latest_price ORDER BY symbol")["symbol"].to_list()

    def _window(
        self,
        table: str,
        column: str,
        symbols: list[str] | None,
        days: float | None,
        start: datetime | None,
        end: datetime | None,
    ) -> pl.DataFrame:
        end = end or datetime.now(UTC)
        start = start or end - timedelta(days=days or 30)
        cast = "::date" if column == "day" else ""
        return self.sql(
            f"SELECT * FROM {table} WHERE {column} >= $1{cast} AND {column} < $2{cast} "
            f"AND symbol = ANY(string_to_array($3, ',')) ORDER BY symbol, {column}",
            [start, end, ",".join(symbols or self.symbols())],
        )

    def hourly(
        self,
        symbols: list[str] | None = None,
        *,
        days: float | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> pl.DataFrame:
        """Hourly bars for ``symbols`` (default: all) in ``[start, end)`` (default: 30 days)."""
        return self._window("metrics_hourly", "bucket", symbols, days, start, end)

    def daily(
        self,
        symbols: list[str] | None = None,
        *,
        days: float | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> pl.DataFrame:
        """Daily bars for ``symbols`` (default: all) over the UTC days in ``[start, end)``."""
        return self._window("metrics_daily", "day", symbols, days, start, end)

    def latest(self) -> pl.DataFrame:
        return self.sql("SELECT * FROM latest_price ORDER BY symbol")

    def coverage(self, hourly: pl.DataFrame) -> pl.DataFrame:
        """Each bar's coverage: samples against the expected count (a kline bar: of 60 minutes)."""
        expected = (
            pl.when(pl.col("source") == "kline")
            .then(60.0)
            .otherwise(self.settings.expected_samples_per_hour)
        )
        return hourly.with_columns(coverage=(pl.col("samples") / expected).clip(upper_bound=1.0))

    def explain(self, query: str) -> list[str]:
        """``EXPLAIN`` of a query (literals, no placeholders), one line per plan row."""
        return self.sql("SELECT etl_explain($1) AS plan", [query])["plan"].to_list()
