"""Rich output: the consoles, one-line errors, tables, the collector's live table, progress bars.

Everything a user reads is printed literally: the consoles interpret neither markup nor emoji
codes, so a value holding ``[/]``, a ``[libpq]`` prefix or ``:smile:`` is text, whatever printed it
(``make_console`` is the one way this program makes a console).
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichBar
from rich.table import Table
from rich.text import Text

# Piped to a file or another program, tables get room instead of 80 columns of ellipses (or the
# width COLUMNS asks for).
_PIPE_WIDTH = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS") or 0) or 160


def make_console(**options: Any) -> Console:
    """A console that prints text as it is: no markup, no emoji codes, no highlighting."""
    return Console(markup=False, emoji=False, highlight=False, **options)


console = make_console(width=_PIPE_WIDTH)
err_console = make_console(stderr=True, width=_PIPE_WIDTH)


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
    capture = make_console(file=io.StringIO(), width=160, color_system=None)
    capture.print(item)
    return [(capture.file.getvalue().rstrip(), {})]  # type: ignore[attr-defined]


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
