"""``etl rollup --from-archive``: make the bars of archived hours again from the archive alone,
through the rollup's bar code, and write them as a rollup would.

>>> run_rebuild(load_settings(), since_ms=hours_ago)             # doctest: +SKIP
RebuildResult(hours=5, files=5, ...)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl

from etl.bars import hourly_bars, trade_bars
from etl.config import Settings
from etl.errors import ConfigError
from etl.hours import iso, ms
from etl.report import NoProgress, Progress, counted
from etl.staging.archive import Archive, HourFrames, Manifest
from etl.warehouse.store import open_warehouse

log = logging.getLogger("etl.rollup")


@dataclass
class RebuildResult:
    """What ``etl rollup --from-archive`` did."""

    archive: str = ""
    looked_for: str = ""
    hours: int = counted("archived hours read")
    files: int = counted("files read, each checked against its sha256")
    ticks: int = counted("ticks read")
    made: int = counted("bars made")
    bars: int = counted("bars written (new or changed)")
    days: int = counted("daily rows refreshed")
    lost: int = counted("bars kept out by a better bar already stored")
    unrecorded: int = counted("files skipped: no manifest names them")
    context_at_archive: int = counted(
        "hours whose bar context was worked out when archived (rolled up before it was kept)"
    )
    staging_files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    nothing: str = ""


def rebuilt_bars(hour: HourFrames) -> pl.DataFrame:
    """The bars of an archived hour, made by the rollup's own code from the archived ticks and
    the context the manifest carries (the poll interval; per symbol the trade context): equal,
    bit for bit, to the bars the rollup made from the staged ticks."""
    m = hour.manifest
    names = (
        pl.concat([hour.polls.select("symbol"), hour.trades.select("symbol")])
        .unique()
        .sort("symbol")
        .with_row_index("sym", offset=1)
        .with_columns(pl.col("sym").cast(pl.Int64))
    )
    parts = []
    if hour.polls.height:
        ticks = (
            hour.polls.join(names, on="symbol")
            .sort("ts", "seq")  # as the staging read comes: by ts, seq
            .select("sym", "seq", "ts", "price")
        )
        parts.append(hourly_bars(ticks, ordered=True, symbols=names, interval_s=m.interval_s))
    if hour.trades.height:
        context = m.context.join(names, on="symbol").select(
            "sym", bucket_ms=pl.lit(m.hour, pl.Int64), gaps="gaps", edges="edges", holed="holed"
        )
        trades = hour.trades.join(names, on="symbol").select(
            "sym", "ts", "price", "agg_id", "qty", "trades"
        )
        parts.append(trade_bars(trades, names, context=context))
    if not parts:
        return pl.DataFrame()
    return pl.concat(parts, how="diagonal_relaxed").with_columns(staging_id=pl.lit(m.staging_id))


def run_rebuild(
    settings: Settings,
    *,
    since_ms: int | None,
    until_ms: int | None = None,
    now: Callable[[], float] = time.time,
    progress: Progress | None = None,
) -> RebuildResult:
    """Make the bars of every archived hour in ``[since, until)`` again, from the archive alone
    (every file checked against its manifest's sha256 first: a damaged one stops the run, exit
    2, naming it), and write them as the rollup does (the bar rule decides against what is
    stored; the ledger and the staging file are not touched)."""
    if not settings.archive_dir:
        raise ConfigError("--from-archive needs an archive: set ETL_ARCHIVE_DIR (archive_dir)")
    if since_ms is None:
        raise ConfigError("--from-archive needs --since (and --until, default now)")
    started = time.perf_counter()
    archive = Archive(settings.archive_dir)
    hi_ms = until_ms if until_ms is not None else ms(now())
    result = RebuildResult(
        archive=settings.archive_dir,
        looked_for=f"archived hours from {iso(since_ms)} to {iso(hi_ms)}",
    )
    manifests = archive.manifests(since_ms, hi_ms)
    result.unrecorded = len(archive.unrecorded(manifests, since_ms, hi_ms))
    if not manifests:
        result.nothing = (
            f"no archived hour in {archive.target} from {iso(since_ms)} to {iso(hi_ms)}"
        )
        return result
    # Check every file before writing anything (a damaged archive changes nothing), then read
    # them again a chunk at a time (memory stays bounded whatever the range).
    for m in manifests:
        for entry in m.files:
            archive.verify(entry)
        result.files += len(m.files)
    result.staging_files = sorted({f"{m.staging_name} ({m.staging_id})" for m in manifests})
    bar = progress or NoProgress()
    with open_warehouse(settings) as wh:
        wh.migrate()
        wh.ensure_partitions_ahead()
        with wh.run_lock(lambda: log.info("another rollup is running; waiting for it")):
            bar.start(len(manifests), "rebuilding hours from the archive")
            try:
                by_file: dict[str, list[Manifest]] = {}
                for m in manifests:
                    by_file.setdefault(m.staging_id, []).append(m)
                for hours in by_file.values():
                    for start in range(0, len(hours), settings.rollup_chunk_hours):
                        chunk = [
                            archive.read_hour(m)
                            for m in hours[start : start + settings.rollup_chunk_hours]
                        ]
                        made = [b for b in map(rebuilt_bars, chunk) if b.height]
                        for hour in chunk:
                            result.ticks += hour.polls.height + hour.trades.height
                            result.context_at_archive += hour.manifest.context_from != "rollup"
                        if made:
                            bars = pl.concat(made, how="diagonal_relaxed")
                            written = wh.write_bars(bars)
                            result.made += bars.height
                            result.bars += written.bars
                            result.days += written.days
                            result.lost += written.lost_total
                        result.hours += len(chunk)
                        bar.advance(len(chunk), iso(chunk[-1].manifest.hour))
                wh.refresh_coverage(wh.days_written)
            finally:
                bar.finish()
    result.seconds = time.perf_counter() - started
    return result
