"""Rich output: the consoles, one-line errors, tables, the collector's live table, progress bars.

Everything a user reads is printed literally (``markup=False``): a value holding ``[/]`` or a
``[libpq]`` prefix is text, never rich markup.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import polars as pl
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichBar
from rich.table import Table
from rich.text import Text

from etl.hours import stamp

MAX_LIVE_ROWS = 20

# Piped to a file or another program, tables get room instead of 80 columns of ellipses.
_PIPE_WIDTH = None if sys.stdout.isatty() else 160
console = Console(highlight=False, width=_PIPE_WIDTH)
err_console = Console(stderr=True, highlight=False, width=_PIPE_WIDTH)


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def size(n: int | None) -> str:
    """Bytes for people: ``1.2 MiB``."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def error(message: str) -> None:
    """One line on stderr: ``error: message``, printed literally."""
    line = Text("error: ", style="bold red")
    line.append(message)
    err_console.print(line, soft_wrap=True, markup=False, highlight=False)


def say(message: str, style: str = "") -> None:
    """A line of output (not a log record): printed literally, never wrapped."""
    console.print(Text(message, style=style), soft_wrap=True, markup=False, highlight=False)


def is_terminal() -> bool:
    return console.is_terminal and sys.stdout.isatty()


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    out = Table(title=title, title_justify="left")
    for name in columns:
        out.add_column(name, justify="left" if name in ("symbol", "what", "hour") else "right")
    for row in rows:
        out.add_row(*(Text(cell(v)) for v in row))
    return out


def kv_table(title: str, rows: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> Table:
    items = rows.items() if isinstance(rows, Mapping) else rows
    return table(title, ("what", "value"), items)


def _plain(value: Any) -> str:
    return value.plain if isinstance(value, Text) else str(value)


def records(item: Any) -> list[tuple[str, dict[str, Any]]]:
    """What a printed result says, as ``(message, fields)`` log records (``--log-format json``):
    a ``what / value`` table becomes one record whose fields are its rows, another table one
    record with a ``rows`` list, a line its text; anything else its plain rendering."""
    if isinstance(item, Group):
        return [r for sub in item.renderables for r in records(sub)]
    if isinstance(item, Table):
        headers = [_plain(c.header) for c in item.columns]
        rows = [
            [_plain(v) for v in row] for row in zip(*(c.cells for c in item.columns), strict=True)
        ]
        title = _plain(item.title or "table")
        if headers == ["what", "value"]:
            return [(title, {"result": dict(rows)})]  # type: ignore[arg-type]
        return [(title, {"rows": [dict(zip(headers, row, strict=True)) for row in rows]})]
    if isinstance(item, str | Text):
        return [(_plain(item), {})]
    capture = Console(file=io.StringIO(), width=160, color_system=None, highlight=False)
    capture.print(item)
    return [(capture.file.getvalue().rstrip(), {})]  # type: ignore[attr-defined]


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
            at = f"{stamp(at_ms / 1000)[11:]}.{at_ms % 1000:03d}" if at_ms is not None else "-"
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
        body = Table(title="this hour", title_justify="left")
        for name in columns:
            body.add_column(
                name,
                justify="left" if name == "symbol" else "right",
                min_width=self._widths.get(name, len(name)),
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


class BarProgress:
    """A rich progress bar on a terminal; nothing when piped (the job's log lines say it)."""

    def __init__(self, show: bool = True) -> None:
        self.show = show and is_terminal()
        self._bar: RichBar | None = None

    def start(self, total: int, description: str) -> None:
        if not self.show:
            return
        self._bar = RichBar(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}"),
            console=console,
            transient=False,
        )
        self._bar.add_task(description, total=total, note="")
        self._bar.start()

    def advance(self, n: int, note: str = "") -> None:
        if self._bar is not None:
            task = self._bar.task_ids[0]
            self._bar.update(task, advance=n, note=note)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
