"""The collector's live view: a rich table on a terminal, one log line per poll when piped."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, ClassVar

import polars as pl
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from etl.console import console, is_terminal
from etl.hours import seconds, stamp

MAX_LIVE_ROWS = 20


def decimals(tick_size: str | None) -> int | None:
    """Decimals a price shows at this tick size: ``"0.01000000"`` → 2."""
    if not tick_size:
        return None
    try:
        exponent = Decimal(tick_size).normalize().as_tuple().exponent
    except ArithmeticError:
        return None
    return max(0, -int(exponent)) if isinstance(exponent, int) else None


class CollectorView:
    """The collector's screen: a header of counters and one row per symbol for this hour.

    Prices show to each symbol's tick size; column widths only ever grow, so the table does
    not jump between frames.
    """

    COLUMNS = ("symbol", "open", "high", "low", "last", "mean", "samples")
    SHORT: ClassVar[dict[str, str]] = {
        "samples": "n",
        "trades/s": "/s",
        "trades this hour": "this hour",
        "last trade": "at",
    }
    TRADE_COLUMNS = ("symbol", "last", "trades/s", "trades this hour", "last trade", "lag")

    def __init__(self, live: bool | None = None, out: Console | None = None) -> None:
        """``out``: print lines there (tests); by default they are log records of
        ``etl.collector``, in whatever format the command chose."""
        self.live_mode = is_terminal() if live is None else live
        self.out = out or console
        self._log = None if out is not None else logging.getLogger("etl.collector")
        self._live: Live | None = None
        self._widths: dict[str, int] = {}
        self.tick_decimals: dict[str, int] = {}

    def __enter__(self) -> CollectorView:
        if self.live_mode:
            self._live = Live(Text("starting…"), console=self.out, auto_refresh=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def event(self, message: str, level: int = logging.INFO) -> None:
        """Something worth a line of its own (start-up, errors, recoveries)."""
        if self._log is not None:
            self._log.log(level, message)
            return
        style = "yellow" if level >= logging.WARNING else ""
        self.out.print(
            Text(f"{stamp()} {message}", style=style), soft_wrap=True, markup=False, highlight=False
        )

    def poll_line(self, message: str) -> None:
        """A line per poll, when there is no live table to show it."""
        if self._live is None:
            self.event(message)

    def set_tick_sizes(self, tick_sizes: Mapping[str, str]) -> None:
        self.tick_decimals = {s: d for s, t in tick_sizes.items() if (d := decimals(t)) is not None}

    def _price(self, symbol: str, value: float | None) -> str:
        if value is None:
            return "-"
        places = self.tick_decimals.get(symbol)
        return f"{value:,.{places}f}" if places is not None else f"{value:.8g}"

    def rows(self, metrics: pl.DataFrame) -> list[list[str]]:
        out = []
        for symbol, *prices, samples in metrics.head(MAX_LIVE_ROWS).iter_rows():
            places = self.tick_decimals.get(symbol)
            cells = [self._price(symbol, p) for p in prices[:4]]
            mean = prices[4]
            # The mean gets two digits more than the tick: it is not a traded price.
            cells.append(f"{mean:,.{places + 2}f}" if places is not None else f"{mean:.8g}")
            out.append([symbol, *cells, str(samples)])
        return out

    def trade_rows(self, activity: pl.DataFrame) -> list[list[str]]:
        """Rows of the trade collector's table from ``symbol, last, trades_per_s, hour_trades,
        last_trade_ms, lag_s``: the last trade's time on the exchange's clock, to the
        millisecond, and how far behind it the exchange's now is."""
        out = []
        for symbol, last, rate, count, at_ms, lag in activity.head(MAX_LIVE_ROWS).iter_rows():
            at = f"{stamp(seconds(at_ms))[11:]}.{at_ms % 1000:03d}" if at_ms is not None else "-"
            out.append(
                [
                    symbol,
                    self._price(symbol, last),
                    f"{rate:,.1f}",
                    f"{count:,}",
                    at,
                    f"{lag:.1f} s",
                ]
            )
        return out

    def refresh(
        self, header: dict[str, Any], metrics: pl.DataFrame, *, trades: bool = False
    ) -> None:
        """Draw the header and the table: this hour's bars per symbol, or (``trades``) each
        symbol's trade activity (:meth:`trade_rows`)."""
        if self._live is None:
            return
        head = Table.grid(padding=(0, 2))
        for key, value in header.items():
            head.add_row(Text(key, style="bold"), Text(str(value)))
        columns = self.TRADE_COLUMNS if trades else self.COLUMNS
        rows = self.trade_rows(metrics) if trades else self.rows(metrics)
        for row in rows:
            for name, value in zip(columns, row, strict=True):
                self._widths[name] = max(self._widths.get(name, len(name)), len(value))
        # Boxed, the columns want their widths plus 3 each; on a narrow terminal the table
        # drops its box and shortens its headers rather than a column.
        wanted = sum(self._widths.get(n, len(n)) + 3 for n in columns) + 1
        compact = wanted > self.out.width
        body = Table(
            title="this hour",
            title_justify="left",
            box=None if compact else box.HEAVY_HEAD,
            padding=(0, 1),
        )
        for name in columns:
            body.add_column(
                self.SHORT.get(name, name) if compact else name,
                justify="left" if name == "symbol" else "right",
                min_width=self._widths.get(name, len(name)) if not compact else None,
                no_wrap=True,
            )
        for row in rows:
            body.add_row(*(Text(v) for v in row))
        extra = (
            [Text(f"… and {metrics.height - MAX_LIVE_ROWS} more symbols")]
            if metrics.height > MAX_LIVE_ROWS
            else []
        )
        self._live.update(Group(head, body, *extra), refresh=True)
