"""The notebooks' access to history: the project's own configuration, Polars frames through ADBC,
and the few chart helpers both notebooks share.

>>> from etl.notebook import History                       # doctest: +SKIP
>>> h = History()                   # doctest: +SKIP
>>> h.hourly(["BTCUSDT"], days=7)   # doctest: +SKIP

``History()`` reads etl.toml, ``ETL_*`` and the defaults (the embedded server if no DSN is
set); ``h.hourly`` gives a Polars frame of hourly bars.

Relative paths in the configuration resolve against the working directory when ``History()`` is
made, as in every ``etl`` command (a kernel's working directory is the notebook's folder;
``etl notebook`` hands the kernels absolute paths, so they find the same data wherever they
run). Nothing here changes the working directory. Looking creates nothing: with no warehouse, or
an empty one, :class:`NoHistory` says so in one sentence.
"""

from __future__ import annotations

import atexit
from contextlib import ExitStack
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partialmethod
from typing import TYPE_CHECKING, Any

import polars as pl

from etl.config import Settings, load_settings
from etl.errors import EtlError, NothingStaged
from etl.warehouse.store import Warehouse, open_warehouse

if TYPE_CHECKING:
    from matplotlib.axes import Axes

_HELP = (
    "no history yet in {where}: run `just seed-demo` then `just notebook --demo` "
    "(or collect for an hour with `just collect`, then `just notebook`); elsewhere? set "
    "ETL_DATA_DIR (a relative one is read from the notebook's folder) or ETL_PG_DSN, or run "
    "them with `etl notebook --execute`"
)
# The planner's cost of a random page read in the notebooks' session (see History.__init__).
RANDOM_PAGE_COST = 1.1
# Quote assets, longest first, to name the unit of a symbol's price.
_QUOTES = (
    "FDUSD",
    "USDT",
    "USDC",
    "BUSD",
    "TUSD",
    "USDP",
    "EUR",
    "TRY",
    "BRL",
    "GBP",
    "JPY",
    "BTC",
    "ETH",
    "BNB",
    "DAI",
)


class NoHistory(Exception):
    """There is nothing to look at; shown as its one sentence, not a traceback."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return [str(self)]


def _absolute(settings: Settings) -> Settings:
    """Relative paths resolved against the working directory now, once."""
    return replace(
        settings,
        data_dir=settings.data_dir.resolve(),
        sqlite_path=settings.sqlite_path.resolve() if settings.sqlite_path else None,
    )


class History:
    """Read-only access to the warehouse for exploration."""

    def __init__(self, settings: Settings | None = None) -> None:
        try:
            self.settings = _absolute(settings or load_settings())
        except EtlError as exc:
            raise NoHistory(str(exc)) from None
        where = self.settings.masked_dsn  # the password hidden; the data dir absolute
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
        try:
            # This session reads bars that are in memory or on SSD, where reading an index in
            # key order costs about what a sequential read does; PostgreSQL's default (4, for
            # spinning disks) had it fetch a window of bars by bitmap and sort them instead:
            # every symbol's last 24 h of 1,000 symbols took 23 ms on the server rather than 7
            # (bench part 6).
            self.wh.execute(f"SET random_page_cost = {RANDOM_PAGE_COST}")
            empty = (
                not self.wh.has_schema() or self.wh.pending_migrations() or self.latest().is_empty()
            )
        except EtlError as exc:
            self.close()
            raise NoHistory(str(exc)) from None
        if empty:
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

    def end(self) -> datetime:
        """The end of the newest hourly bar's hour (UTC): where a chart of recent history ends."""
        newest: datetime = self.latest()["at"].max()  # type: ignore[assignment]
        return newest.astimezone(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(
            hours=1
        )

    @staticmethod
    def window(
        days: float | None = None, start: datetime | None = None, end: datetime | None = None
    ) -> tuple[datetime, datetime]:
        """``[start, end)``: by default the last 30 days up to now."""
        end = end or datetime.now(UTC)
        return start or end - timedelta(days=days or 30), end

    def frame(
        self,
        kind: str,
        symbols: list[str] | None = None,
        *,
        days: float | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> pl.DataFrame:
        """``kind`` over ``[start, end)`` (default: the last 30 days) for ``symbols`` (default:
        all): ``hourly`` or ``daily`` bars, or ``coverage``, every (symbol, hour) with its bar's
        coverage, 0 where no bar (the same definition as ``etl status``: ``etl_bar_coverage``
        in ``sql/``). ``h.hourly(...)``, ``h.daily(...)`` and ``h.coverage(...)`` say it
        shorter."""
        lo, hi = self.window(days, start, end)
        chosen = symbols or self.symbols()
        if kind == "coverage":
            return self.wh.coverage_grid(chosen, lo, hi)
        return self.wh.bars(chosen, lo, hi, daily=kind == "daily")

    hourly = partialmethod(frame, "hourly")
    daily = partialmethod(frame, "daily")
    coverage = partialmethod(frame, "coverage")

    def latest(self) -> pl.DataFrame:
        return self.wh.latest()

    def explain(self, query: str) -> list[str]:
        """``EXPLAIN`` of a query (literals, no placeholders), one line per plan row."""
        return self.wh.explain(query)


# -- chart helpers (matplotlib is imported only when a chart is drawn) ---------------------------


def quote_asset(symbol: str) -> str:
    """The currency a symbol's price is in.

    >>> quote_asset("BTCUSDT"), quote_asset("ETHBTC"), quote_asset("ABC")
    ('USDT', 'BTC', 'quote currency')
    """
    for quote in _QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return quote
    return "quote currency"


def time_axis(ax: Axes, start: datetime, end: datetime) -> None:
    """Show exactly ``[start, end)`` on ``ax``'s x axis, with dates that never run together."""
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(minticks=3, maxticks=9)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, show_offset=True))
    ax.set_xlim(start, end)
    ax.set_xlabel("time (UTC)")


def candles(
    ax: Axes, bars: pl.DataFrame, at: str, width: timedelta, *, legend: bool = False
) -> None:
    """OHLC candles of ``bars`` (one per row, centred on column ``at``, ``width`` wide) and
    their ``mean`` as a line. Green: closed at or above the open; red: below."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    centre = bars[at].to_numpy()
    ax.vlines(centre, bars["low"].to_numpy(), bars["high"].to_numpy(), color="grey", linewidth=0.6)
    body = bars.select(
        bottom=pl.min_horizontal("open", "close"),
        height=(pl.col("close") - pl.col("open")).abs(),
        color=pl.when(pl.col("close") >= pl.col("open"))
        .then(pl.lit("tab:green"))
        .otherwise(pl.lit("tab:red")),
    )
    ax.bar(
        centre,
        body["height"].to_numpy(),
        bottom=body["bottom"].to_numpy(),
        width=width * 0.8,
        color=body["color"].to_list(),
    )
    ax.plot(centre, bars["mean"].to_numpy(), color="tab:blue", linewidth=0.8)
    if legend:
        ax.legend(
            handles=[
                Patch(color="tab:green", label="close ≥ open"),
                Patch(color="tab:red", label="close < open"),
                Line2D([], [], color="grey", linewidth=0.6, label="low to high"),
                Line2D([], [], color="tab:blue", linewidth=0.8, label="mean"),
            ],
            loc="upper left",
            ncols=4,
            fontsize="small",
        )
