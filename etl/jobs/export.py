"""``etl export``: bars of any width and ticks, as files for the tools people use.

Bars of an hour or more are made from the warehouse's hourly bars (:func:`etl.resample.
wider_bars`); bars below an hour from the archive's trades (:func:`etl.resample.
trade_bars_every`), refused for a symbol that only has poll ticks there (a ticker sampled every
few seconds says nothing of the trades between samples). Ticks come from the archive, every file
checked against its manifest's sha256 (a damaged one is refused, exit 2, naming it).

Formats: ``parquet`` and ``csv`` (one file per symbol and width for bars, one per source for
ticks), and ``freqtrade``: the feather files its ``download-data`` writes (``BTC_USDT-1h.feather``:
``date`` as timestamp[ns, UTC], ``open, high, low, close, volume`` as float64), in the folder to
hand to its ``--datadir``. Every file is written under a temporary name and renamed into place,
so an export run again replaces its files whole.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.feather as feather
import pyarrow.parquet as pq

from etl.config import Settings
from etl.errors import ConfigError, DependencyError, DiskFull, NothingStaged
from etl.hours import HOUR_MS, iso, utc
from etl.report import NoProgress, Progress, counted
from etl.resample import EXPORT_SCHEMA, SUB_HOUR, WIDTHS_MS, trade_bars_every, wider_bars
from etl.staging.archive import Archive
from etl.warehouse.store import open_warehouse

FORMATS = ("parquet", "csv", "freqtrade")
TICK_FORMATS = ("parquet", "csv")
# Quote assets, longest first, to name a pair as freqtrade does (BTCUSDT -> BTC/USDT).
QUOTES = (
    "FDUSD", "USDT", "USDC", "TUSD", "BUSD", "USDP", "DAI", "EUR", "TRY", "BRL", "GBP", "JPY",
    "AUD", "BTC", "ETH", "BNB", "XRP", "TRX", "DOGE", "SOL",
)  # fmt: skip
FREQTRADE_COLUMNS = ("date", "open", "high", "low", "close", "volume")
MONDAY_MS = 4 * 24 * HOUR_MS  # 1970-01-05, the first Monday: weekly bars start on Mondays


def aligned(lo_ms: int, hi_ms: int, width: str) -> tuple[int, int]:
    """``[lo, hi)`` widened to whole bars of ``width`` (weeks from Monday, as the exchange).

    >>> aligned(HOUR_MS + 5, 3 * HOUR_MS, "4h") == (0, 4 * HOUR_MS)
    True
    """
    every = WIDTHS_MS[width]
    origin = MONDAY_MS if width == "1w" else 0
    lo = lo_ms - (lo_ms - origin) % every
    hi = hi_ms + (-(hi_ms - origin)) % every
    return lo, hi


def pair_name(symbol: str) -> str:
    """freqtrade's pair: ``BTCUSDT`` -> ``BTC/USDT`` (quote assets in :data:`QUOTES`)."""
    for quote in QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return f"{symbol[: -len(quote)]}/{quote}"
    raise ConfigError(
        f"{symbol}: its quote asset is not one of {', '.join(QUOTES)}, so it has no freqtrade "
        "pair name; export it as parquet or csv"
    )


@dataclass
class ExportResult:
    """What ``etl export bars`` wrote."""

    out: str
    width: str
    format: str
    looked_for: str = ""
    files: list[str] = field(default_factory=list)
    bars: int = counted("bars written")
    symbols: int = counted("symbols with bars")
    no_volume: int = counted("bars whose hours had no trades (volume written as 0 for freqtrade)")
    poll_only_hours: int = counted("hours with poll ticks only (no bars below an hour there)")
    hours_read: int = counted("archived hours read")
    unrecorded: int = counted("archive files skipped: no manifest names them")
    empty: list[str] = field(default_factory=list)  # symbols without a bar in the range
    seconds: float = 0.0


@dataclass
class TickExportResult:
    """What ``etl export ticks`` wrote."""

    out: str
    format: str
    looked_for: str = ""
    files: list[str] = field(default_factory=list)
    ticks: int = counted("ticks written")
    hours_read: int = counted("archived hours read")
    files_read: int = counted("archive files read, each checked against its sha256")
    unrecorded: int = counted("archive files skipped: no manifest names them")
    empty: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _out_dir(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot make the export folder {out} ({exc.strerror})") from None
    return out


def _replace(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)


def _failed(path: Path, exc: OSError) -> Exception:
    if exc.errno == 28:
        return DiskFull(f"disk full writing {path}: free some space, then export again")
    return DependencyError(f"cannot write {path} ({exc.strerror or exc})")


def write_table(table: pa.Table, path: Path, fmt: str) -> None:
    """``table`` to ``path`` as ``fmt`` (parquet, csv, feather), whole or not at all."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if fmt == "parquet":
            pq.write_table(table, tmp, compression="zstd")
        elif fmt == "csv":
            pacsv.write_csv(table, tmp)
        else:  # freqtrade writes its feather files with lz4, as pandas' to_feather does
            feather.write_feather(table, tmp, compression="lz4")
        _replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _failed(path, exc) from None


def freqtrade_table(bars: pl.DataFrame) -> pa.Table:
    """The columns and types freqtrade's feather files hold: ``date`` timestamp[ns, UTC],
    ``open, high, low, close, volume`` float64 (a bar without trades: volume 0)."""
    frame = bars.select(
        date=pl.col("bucket").dt.cast_time_unit("ns").dt.convert_time_zone("UTC"),
        open="open",
        high="high",
        low="low",
        close="close",
        volume=pl.col("volume").fill_null(0.0),
    )
    return frame.to_arrow().cast(
        pa.schema(
            [("date", pa.timestamp("ns", tz="UTC"))]
            + [(c, pa.float64()) for c in FREQTRADE_COLUMNS[1:]]
        )
    )


def _file_name(symbol: str, width: str, fmt: str) -> str:
    if fmt == "freqtrade":
        return f"{pair_name(symbol).replace('/', '_')}-{width}.feather"
    return f"{symbol}-{width}.{fmt}"


def export_bars(
    settings: Settings,
    *,
    symbols: Sequence[str],
    since_ms: int,
    until_ms: int,
    width: str,
    fmt: str,
    out: Path,
    progress: Progress | None = None,
) -> ExportResult:
    """Bars of ``width`` for ``symbols`` over ``[since, until)`` (widened to whole bars), one
    file per symbol in ``out``."""
    if width not in WIDTHS_MS:
        raise ConfigError(f"--width {width!r} must be one of {', '.join(WIDTHS_MS)}")
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} must be one of {', '.join(FORMATS)}")
    if fmt == "freqtrade":
        for symbol in symbols:
            pair_name(symbol)  # refuse a symbol freqtrade cannot name before writing anything
    started = time.perf_counter()
    lo, hi = aligned(since_ms, until_ms, width)
    result = ExportResult(
        out=str(out), width=width, format=fmt, looked_for=f"{iso(lo)} .. {iso(hi)}"
    )
    if width in SUB_HOUR:
        bars = _sub_hour_bars(settings, symbols, lo, hi, width, result)
    else:
        try:
            with open_warehouse(settings, create=False) as wh:
                hourly = wh.bars_with_coverage(symbols, utc(lo), utc(hi))
        except NothingStaged as exc:
            raise ConfigError(f"nothing to export: {exc}") from None
        bars = wider_bars(hourly, width) if hourly.height else pl.DataFrame(schema=EXPORT_SCHEMA)
    _out_dir(out)
    bar = progress or NoProgress()
    bar.start(len(symbols), f"writing {width} bars")
    try:
        for symbol in symbols:
            mine = bars.filter(pl.col("symbol") == symbol)
            bar.advance(1, symbol)
            if not mine.height:
                result.empty.append(symbol)
                continue
            path = out / _file_name(symbol, width, fmt)
            if fmt == "freqtrade":
                table = freqtrade_table(mine)
                result.no_volume += int(mine["volume"].null_count())
            else:
                table = mine.to_arrow()
            write_table(table, path, fmt)
            result.files.append(str(path))
            result.bars += mine.height
            result.symbols += 1
    finally:
        bar.finish()
    result.seconds = time.perf_counter() - started
    return result


def _archive(settings: Settings, what: str) -> Archive:
    if not settings.archive_dir:
        raise ConfigError(f"{what} come from the archive: set ETL_ARCHIVE_DIR (archive_dir)")
    return Archive(settings.archive_dir)


def _sub_hour_bars(
    settings: Settings,
    symbols: Sequence[str],
    lo: int,
    hi: int,
    width: str,
    result: ExportResult,
) -> pl.DataFrame:
    """Bars below an hour from the archive's trades; a symbol with poll ticks and no trades
    there is refused (exit 2)."""
    archive = _archive(settings, f"{width} bars")
    manifests = archive.manifests(lo, hi)
    result.unrecorded = len(archive.unrecorded(manifests, lo, hi))
    wanted = pl.Series(list(symbols)).implode()
    trades, polled = [], []
    for m in manifests:
        hour = archive.read_hour(m)
        result.hours_read += 1
        mine = hour.trades.filter(pl.col("symbol").is_in(wanted))
        trades.append(mine)
        with_trades = set(mine["symbol"].unique().to_list())
        polled += [
            (s, m.hour)
            for s in hour.polls.filter(pl.col("symbol").is_in(wanted))["symbol"].unique()
            if s not in with_trades
        ]
    traded = set(pl.concat(trades)["symbol"].unique().to_list()) if trades else set()
    refused = sorted({s for s, _ in polled} - traded)
    if refused:
        raise ConfigError(
            f"{', '.join(refused)} {'is' if len(refused) == 1 else 'are'} poll-sourced in "
            f"{iso(lo)} .. {iso(hi)}: {width} bars are made from trades, and a poll tick is the "
            "ticker sampled every interval_s, not the trades between; collect with "
            "`--source trades`, or export --width 1h or wider"
        )
    result.poll_only_hours = len(polled)
    if not traded:
        return pl.DataFrame(schema=EXPORT_SCHEMA)
    return trade_bars_every(pl.concat(trades), width)


def export_ticks(
    settings: Settings,
    *,
    symbols: Sequence[str],
    since_ms: int,
    until_ms: int,
    sources: Sequence[str],
    fmt: str,
    out: Path,
    progress: Progress | None = None,
) -> TickExportResult:
    """The archived ticks of ``symbols`` over ``[since, until)``, one file per source
    (``ticks-poll.parquet``, ``ticks-trade.csv``, ...), streamed an hour at a time."""
    if fmt not in TICK_FORMATS:
        raise ConfigError(f"--format {fmt!r} must be one of {', '.join(TICK_FORMATS)} for ticks")
    started = time.perf_counter()
    archive = _archive(settings, "ticks")
    lo = since_ms - since_ms % HOUR_MS
    result = TickExportResult(out=str(out), format=fmt, looked_for=f"{iso(lo)} .. {iso(until_ms)}")
    manifests = archive.manifests(lo, until_ms)
    result.unrecorded = len(archive.unrecorded(manifests, lo, until_ms))
    for m in manifests:  # every file checked before anything is written
        for entry in m.files:
            if entry["source"] in sources:
                archive.verify(entry)
    _out_dir(out)
    wanted = pl.Series(list(symbols)).implode()
    writers: dict[str, tuple[Path, Path, object]] = {}
    counts = dict.fromkeys(sources, 0)
    bar = progress or NoProgress()
    bar.start(len(manifests), "exporting ticks")
    try:
        for m in manifests:
            hour = archive.read_hour(m, sources=sources)
            result.hours_read += 1
            for source, frame in (("poll", hour.polls), ("trade", hour.trades)):
                if source not in sources:
                    continue
                result.files_read += any(f["source"] == source for f in m.files)
                rows = frame.filter(
                    pl.col("symbol").is_in(wanted)
                    & (pl.col("ts") >= since_ms)
                    & (pl.col("ts") < until_ms)
                )
                if not rows.height:
                    continue
                table = _tick_table(rows, source)
                if source not in writers:
                    path = out / f"ticks-{source}.{fmt}"
                    tmp = path.with_name(f".{path.name}.tmp")
                    try:
                        writer: object = (
                            pq.ParquetWriter(tmp, table.schema, compression="zstd")
                            if fmt == "parquet"
                            else pacsv.CSVWriter(tmp, table.schema)
                        )
                    except OSError as exc:
                        raise _failed(path, exc) from None
                    writers[source] = (path, tmp, writer)
                try:
                    writers[source][2].write_table(table)  # type: ignore[attr-defined]
                except OSError as exc:
                    raise _failed(writers[source][0], exc) from None
                counts[source] += table.num_rows
            bar.advance(1, iso(m.hour))
        for path, tmp, writer in writers.values():
            writer.close()  # type: ignore[attr-defined]
            _replace(tmp, path)
            result.files.append(str(path))
    finally:
        bar.finish()
        for _, tmp, _ in writers.values():
            tmp.unlink(missing_ok=True)
    result.ticks = sum(counts.values())
    result.empty = [s for s in sources if not counts[s]]
    result.seconds = time.perf_counter() - started
    return result


def _tick_table(rows: pl.DataFrame, source: str) -> pa.Table:
    cols = ["symbol", "ts", "price", "seq"]
    if source == "trade":
        cols += ["agg_id", "qty", "trades"]
    frame = rows.select(cols).with_columns(ts=pl.from_epoch("ts", "ms").dt.replace_time_zone("UTC"))
    return frame.to_arrow()
