"""Rich output: a live table on a terminal, plain timestamped lines otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import polars as pl
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

MAX_LIVE_ROWS = 20

# Piped to a file or another program, tables get room instead of 80 columns of ellipses.
_PIPE_WIDTH = None if sys.stdout.isatty() else 160
console = Console(highlight=False, width=_PIPE_WIDTH)
err_console = Console(stderr=True, highlight=False, width=_PIPE_WIDTH)


def stamp(epoch_s: float | None = None) -> str:
    return time.strftime(
        "%Y-%m-%d %H:%M:%S", time.gmtime(time.time() if epoch_s is None else epoch_s)
    )


def iso(epoch_ms: int | float | None) -> str:
    if epoch_ms is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_ms / 1000))


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)


def line(message: str) -> None:
    """A log line: one line whatever the terminal width, so a piped log greps well."""
    console.print(message, soft_wrap=True)


def is_terminal() -> bool:
    return console.is_terminal and sys.stdout.isatty()


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    out = Table(title=title, title_justify="left")
    for name in columns:
        out.add_column(name, justify="left" if name in ("symbol", "what", "hour") else "right")
    for row in rows:
        out.add_row(*("-" if v is None else str(v) for v in row))
    return out


class CollectorView:
    """The collector's screen: a header of counters and one row per symbol for this hour."""

    def __init__(self, live: bool | None = None, out: Console | None = None) -> None:
        self.live_mode = is_terminal() if live is None else live
        self.out = out or console
        self._live: Live | None = None

    def __enter__(self) -> CollectorView:
        if self.live_mode:
            self._live = Live(Text("starting…"), console=self.out, auto_refresh=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def event(self, message: str, style: str = "") -> None:
        """Something worth a line of its own (start-up, errors, recoveries)."""
        line = f"{stamp()} {message}"
        if self._live is not None:
            self._live.console.print(Text(line, style=style))
        else:
            self.out.print(line, markup=False, soft_wrap=True)

    def poll_line(self, message: str) -> None:
        if self._live is None:
            self.out.print(f"{stamp()} {message}", markup=False, soft_wrap=True)

    def refresh(self, header: dict[str, Any], metrics: pl.DataFrame) -> None:
        if self._live is None:
            return
        head = Table.grid(padding=(0, 2))
        for key, value in header.items():
            head.add_row(Text(key, style="bold"), Text(str(value)))
        body = Table(title="this hour", title_justify="left")
        for name in ("symbol", "open", "high", "low", "last", "mean", "samples"):
            body.add_column(name, justify="left" if name == "symbol" else "right")
        for row in metrics.head(MAX_LIVE_ROWS).iter_rows():
            body.add_row(row[0], *(f"{v:.8g}" for v in row[1:6]), str(row[6]))
        extra = (
            [Text(f"… and {metrics.height - MAX_LIVE_ROWS} more symbols")]
            if metrics.height > MAX_LIVE_ROWS
            else []
        )
        self._live.update(Group(head, body, *extra), refresh=True)


def progress(total: int, description: str, *, show: bool = True) -> Progress:
    """A progress bar over ``total`` items; a no-op display when stdout is not a terminal (or
    ``show`` is false, e.g. a job running under the collector's live table)."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
        console=console,
        disable=not (show and is_terminal()),
        transient=False,
    )
    bar.add_task(description, total=total, note="")
    return bar
