"""The notebooks' access to history: the project's own configuration, Polars frames through ADBC.

>>> from etl.notebook import History                       # doctest: +SKIP
>>> h = History()                   # etl.toml / ETL_* / defaults; embedded server if no DSN
>>> h.hourly(["BTCUSDT"], days=7)   # a Polars frame of hourly bars

Relative paths in the configuration resolve against the working directory, as in every ``etl``
command (``etl notebook`` starts JupyterLab with absolute paths, so the notebooks find the same
data wherever their kernel runs). Looking creates nothing: with no warehouse, or an empty one,
:class:`NoHistory` says so in one sentence.
"""

from __future__ import annotations

import atexit
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from etl.config import Settings, load_settings
from etl.errors import EtlError, NothingStaged
from etl.warehouse import Warehouse, open_warehouse

_HELP = "no history yet in {where}: run `just seed-demo` (then `just notebook --demo`), or collect for an hour"


class NoHistory(Exception):
    """There is nothing to look at; shown as its one sentence, not a traceback."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return [str(self)]


class History:
    """Read-only access to the warehouse for exploration."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        where = self.settings.masked_dsn
        self._stack = ExitStack()
        try:
            self.wh: Warehouse = self._stack.enter_context(
                open_warehouse(self.settings, create=False, statement_timeout_s=None)
            )
        except NothingStaged:
            raise NoHistory(_HELP.format(where=where)) from None
        except EtlError as exc:
            raise NoHistory(str(exc)) from None
        atexit.register(self.close)
        if not self.wh.has_schema() or self.wh.pending_migrations():
            self.close()
            raise NoHistory(_HELP.format(where=where))
        if self.latest().is_empty():
            self.close()
            raise NoHistory(_HELP.format(where=where))

    def close(self) -> None:
        self._stack.close()

    def sql(self, query: str, params: list[Any] | None = None) -> pl.DataFrame:
        """Any read-only SQL as a Polars frame (``$1`` placeholders)."""
        return self.wh.query(query, params)

    def symbols(self) -> list[str]:
        """Every symbol with history, configured ones first."""
        stored = self.latest()["symbol"].to_list()
        configured = [s for s in self.settings.symbols if s in stored]
        return configured + [s for s in stored if s not in configured]

    @staticmethod
    def window(
        days: float | None = None, start: datetime | None = None, end: datetime | None = None
    ) -> tuple[datetime, datetime]:
        """``[start, end)``: by default the last 30 days up to now."""
        end = end or datetime.now(UTC)
        return start or end - timedelta(days=days or 30), end

    def hourly(
        self,
        symbols: list[str] | None = None,
        *,
        days: float | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> pl.DataFrame:
        """Hourly bars for ``symbols`` (default: all) in ``[start, end)`` (default: 30 days)."""
        lo, hi = self.window(days, start, end)
        return self.wh.bars(symbols or self.symbols(), lo, hi)

    def daily(
        self,
        symbols: list[str] | None = None,
        *,
        days: float | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> pl.DataFrame:
        """Daily bars for ``symbols`` (default: all) over the UTC days in ``[start, end)``."""
        lo, hi = self.window(days, start, end)
        return self.wh.bars(symbols or self.symbols(), lo, hi, daily=True)

    def latest(self) -> pl.DataFrame:
        return self.wh.latest()

    def coverage(
        self,
        symbols: list[str] | None = None,
        *,
        days: float | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> pl.DataFrame:
        """Every (symbol, hour) of the range with its bar's coverage, 0 where no bar: the same
        definition as ``etl status`` (``etl_bar_coverage`` in ``sql/``)."""
        lo, hi = self.window(days, start, end)
        return self.wh.coverage_grid(symbols or self.symbols(), lo, hi)

    def explain(self, query: str) -> list[str]:
        """``EXPLAIN`` of a query (literals, no placeholders), one line per plan row."""
        return self.wh.explain(query)
