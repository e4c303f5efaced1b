"""The rollup job: staged ticks → hourly bars in PostgreSQL, then daily bars, purge, retention.

Order matters for "no data loss": bars and their ledger rows commit together; only then are
staged ticks of this staging file's ledger hours (older than ``raw_retention_h``) deleted, and
only up to the last row the rollup read. With an archive (``archive_dir``), each of those hours is
first written as Parquet and recorded in the staging file (:mod:`etl.staging.archive`), and only
recorded hours are purged. A crash anywhere leaves either the old state or the new, and a rerun
converges. The job returns a :class:`RollupResult`; the CLI draws it.

Polars and the archive's modules are imported where an hour is read: a rollup with nothing to
do makes no frame (0.12 s of its start).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from etl.config import Settings
from etl.hours import HOUR_MS, NO_UPPER, closed_range, iso, ms, utc
from etl.imports import deferred
from etl.report import NoProgress, Progress, counted
from etl.shutdown import fault_point
from etl.staging.store import Staging, open_staging
from etl.warehouse.store import Warehouse, open_warehouse

if TYPE_CHECKING:
    import polars as pl

    from etl.staging.archive import Archive, Archived
else:  # imported at the first frame made: a rollup with nothing to do makes none
    pl = deferred("polars")

log = logging.getLogger("etl.rollup")

# Ticks per rollup chunk: about an hour of 3,000 symbols at 5 s; ~650 MiB peak for the process.
CHUNK_TICKS = 2_500_000
crash_point = fault_point  # the rollup's named points: after_read, before_commit, ...


@dataclass
class RollupResult:
    """What a rollup did, for the CLI to draw and scripts to read."""

    staging: str = ""
    looked_for: str = ""
    staged_hours: int = 0
    hours: int = counted("hours rolled up")
    bars: int = counted("bars written")
    ticks: int = counted("ticks read")
    days: int = counted("daily rows refreshed")
    purged: int = counted("staged ticks purged")
    rejected: int = counted("rows quarantined (ticks_rejected)")
    kline_kept: int = counted("bars kept from kline (thinner poll bars not written)")
    lost_to_other_files: int = counted("bars kept from another staging file")
    displaced: int = counted("bars of another staging file replaced")
    dropped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    archive: Archived | None = None  # what the archiving before the purge did (None: no archive)
    future_ticks: int = 0
    skipped_hours: list[int] = field(default_factory=list)
    seconds: float = 0.0
    nothing: str = ""  # set when nothing was there to roll up: what was looked for, and where


def pending_hours(
    staging: Staging,
    wh: Warehouse,
    staged: list[int],
    lo_ms: int | None,
    hi_ms: int,
    rerun: bool,
) -> tuple[list[int], list[int]]:
    """Hours to roll up, and committed hours that must not be rolled up again.

    Pending: staged hours not in this file's ledger (with ``rerun``, every staged hour), plus
    ledger hours that gained ticks after they were read. A committed hour is only read again
    while every tick the first rollup read is still staged; once some are purged, a new bar
    would hold part of the hour, so the committed bar stays and the hour is reported instead.

    Every hour asked about here has staged ticks, so only the ledger rows from the oldest staged
    hour on are read: with ten years of ledger, all of them took 0.58 s of every rollup (bench
    part 6). The late ticks' high-water mark is the file's whole ledger's, counted by the server.
    """
    if not staged:
        return [], []
    committed = wh.committed(staging.id, since_ms=min(staged))

    def intact(hour: int) -> bool:
        max_seq, ticks_read, purged = committed[hour]
        return (
            not purged and staging.ticks.count_between(hour, hour + HOUR_MS, max_seq) == ticks_read
        )

    if rerun:
        again = [h for h in staged if h in committed]
        return [h for h in staged if h not in committed or intact(h)], [
            h for h in again if not intact(h)
        ]
    pending = {h for h in staged if h not in committed}
    high_water = wh.high_water(staging.id) if committed else 0
    late = staging.ticks.hours_with_ticks_after(high_water, hi_ms) if high_water else set()
    late = {h for h in late if h in committed and (lo_ms is None or h >= lo_ms)}
    ok = {h for h in late if intact(h)}
    return sorted(pending | ok), sorted(late - ok)


def chunked(
    hours: Sequence[int], sizes: dict[int, int], max_hours: int, max_ticks: int
) -> list[list[int]]:
    """Consecutive runs of ``hours`` holding at most ``max_hours`` hours and about ``max_ticks``
    ticks (an hour bigger than that goes alone), so memory is bounded whatever the backlog.

    >>> chunked([0, 1, 2, 3], {0: 5, 1: 5, 2: 20, 3: 1}, max_hours=3, max_ticks=10)
    [[0, 1], [2], [3]]
    """
    chunks: list[list[int]] = []
    ticks = 0
    for hour in hours:
        size = sizes.get(hour, 1)
        if chunks and len(chunks[-1]) < max_hours and ticks + size <= max_ticks:
            chunks[-1].append(hour)
            ticks += size
        else:
            chunks.append([hour])
            ticks = size
    return chunks


def _range_text(lo_ms: int | None, hi_ms: int) -> str:
    return f"closed hours from {iso(lo_ms) if lo_ms is not None else 'the first'} to {iso(hi_ms)}"


class Rollup:
    """One rollup of a staging file into a warehouse, both opened by the caller.

    >>> with open_staging(settings) as st, open_warehouse(settings) as wh:   # doctest: +SKIP
    ...     Rollup(settings, st, wh).run()
    RollupResult(hours=3, ...)
    """

    def __init__(
        self,
        settings: Settings,
        staging: Staging,
        wh: Warehouse,
        *,
        progress: Progress | None = None,
        now: Callable[[], float] = time.time,
        archive: Archive | None = None,
    ) -> None:
        self.settings = settings
        self.staging = staging
        self.wh = wh
        self.progress = progress or NoProgress()
        self.now = now
        if archive is None and settings.archive_dir:
            from etl.staging.archive import Archive

            archive = Archive(settings.archive_dir)
        self.archive = archive

    def run(
        self,
        since_ms: int | None = None,
        until_ms: int | None = None,
        *,
        rerun: bool = False,
        apply_retention: bool = True,
    ) -> RollupResult:
        """Roll up every closed hour with staged ticks that this file has not committed yet
        (or all of them, ``rerun``); then purge and apply retention."""
        started = time.perf_counter()
        staging, wh, settings = self.staging, self.wh, self.settings
        now_ms = ms(self.now())
        lo_ms, hi_ms = closed_range(now_ms, since_ms, until_ms)
        result = RollupResult(staging=staging.name, looked_for=_range_text(lo_ms, hi_ms))
        wh.migrate()
        wh.ensure_partitions_ahead()
        with wh.run_lock(lambda: log.info("another rollup is running; waiting for it")):
            staging.quarantine.sweep_out_of_range()
            sizes = staging.ticks.hour_sizes(lo_ms, hi_ms)
            result.staged_hours = len(sizes)
            hours, result.skipped_hours = pending_hours(
                staging, wh, list(sizes), lo_ms, hi_ms, rerun
            )
            result.future_ticks = staging.ticks.count_between(hi_ms + HOUR_MS, NO_UPPER)
            groups = chunked(hours, sizes, settings.rollup_chunk_hours, CHUNK_TICKS)
            self._roll(groups, result)
            wh.refresh_coverage({utc(h).date() for h in sizes} | wh.days_written)
            purge_before = utc(now_ms - int(settings.raw_retention_h * HOUR_MS))
            candidates = wh.purge_candidates(staging.id, purge_before)
            if candidates and self.archive is not None:
                from etl.staging.archive import archive_hours, check_recorded

                # Nothing is purged that is not archived: a failure here raises, and the ticks
                # stay staged for the next run.
                result.archive = archive_hours(
                    staging,
                    self.archive,
                    candidates,
                    default_interval_s=settings.interval_s,
                    now_ms=now_ms,
                    crash=crash_point,
                )
                check_recorded(staging, self.archive, [hour for hour, _ in candidates])
            crash_point("before_purge")
            if candidates:
                result.purged = staging.ticks.purge(candidates)
                crash_point("after_purge")
                wh.mark_purged(staging.id, [hour for hour, _ in candidates])
                staging.archive_log.forget_context([hour for hour, _ in candidates])
            if apply_retention:
                past = wh.retention(settings.hourly_retention_d, dry_run=False)
                result.dropped = [row["partition"] for row in past if row["action"] == "dropped"]
                result.kept = [row["partition"] for row in past if row["action"] == "kept"]
        result.seconds = time.perf_counter() - started
        return result

    def _roll(self, groups: list[list[int]], result: RollupResult) -> None:
        if not groups:
            return
        self.progress.start(sum(map(len, groups)), "rolling up hours")
        try:
            for group in groups:
                ticks, bars = self._roll_chunk(group, result)
                self.progress.advance(len(group), iso(group[-1]))
                log.info(
                    "rolled up %d hour(s) up to %s: %d ticks, %d bars",
                    len(group),
                    iso(group[-1]),
                    ticks,
                    bars,
                )
        finally:
            self.progress.finish()

    def _roll_chunk(self, group: Sequence[int], result: RollupResult) -> tuple[int, int]:
        """Read, compute and commit one chunk of hours. Its frames die when this returns, before
        the next chunk is read: holding two chunks at once fragments the heap."""
        from etl.bars import hour_ledger, hourly_bars, trade_bars, trade_context

        started_at = datetime.now(UTC)
        window = self.staging.read_hours(group)
        result.rejected += window.rejected
        crash_point("after_read")
        intervals = self.staging.state.hour_intervals(group)
        ticks = window.ticks
        trades = None
        if "agg_id" in ticks.columns:  # trades are rolled up apart: rows with an id
            trades = ticks.filter(pl.col("agg_id").is_not_null())
            ticks = ticks.filter(pl.col("agg_id").is_null())
        used = {hour: intervals.get(hour, self.settings.interval_s) for hour in group}
        bars = hourly_bars(
            ticks,
            ordered=True,  # staging reads come ordered by ts, seq
            symbols=window.symbols,
            interval_s=pl.col("bucket_ms").replace_strict(
                used, default=self.settings.interval_s, return_dtype=pl.Float64
            ),
        )
        context = None
        if trades is not None and trades.height:
            context = trade_context(
                trades,
                cursors=self.staging.trades.cursors(),
                holes=self.staging.trades.holes(min(group), max(group) + HOUR_MS),
            )
            made = trade_bars(trades, window.symbols, context=context)
            bars = pl.concat([bars, made], how="diagonal_relaxed")
        # What these bars took from outside the ticks, kept before they commit: the archive
        # carries it, so a bar rebuilt from the archive is this one (a rerun replaces it).
        self.staging.archive_log.keep_context(used, context)
        bars = bars.with_columns(staging_id=pl.lit(self.staging.id))
        # The ledger counts every tick read, so a later read of the hour can tell it is intact.
        runs = hour_ledger(bars, started_at, max_seq=window.upto).with_columns(
            staging_id=pl.lit(self.staging.id), staging_name=pl.lit(self.staging.name)
        )
        # A file that held poll ticks and trades in one hour (its collector was switched between
        # sources) has two bars for it here: the write keeps the one the bar rule ranks higher.
        written = self.wh.write_bars(bars, runs, before_commit=lambda: crash_point("before_commit"))
        crash_point("after_commit")
        result.bars += written.bars
        result.days += written.days
        result.kline_kept += written.kline_kept
        result.lost_to_other_files += written.lost_total - written.kline_kept
        result.displaced += written.displaced
        result.hours += len(group)
        result.ticks += window.ticks.height
        return window.ticks.height, bars.height


def run_rollup(
    settings: Settings,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    rerun: bool = False,
    now: Callable[[], float] = time.time,
    apply_retention: bool = True,
    progress: Progress | None = None,
) -> RollupResult:
    """Open the configured staging file and warehouse and roll up (see :class:`Rollup`).

    A missing staging file is :class:`NothingStaged`; with nothing staged in the range, the
    warehouse is not even opened (so nothing is created) and the result says what was looked
    for.
    """
    with ExitStack() as stack:
        staging = stack.enter_context(open_staging(settings, create=False))
        lo_ms, hi_ms = closed_range(ms(now()), since_ms, until_ms)
        if not staging.ticks.hour_sizes(lo_ms, hi_ms):
            return RollupResult(
                staging=staging.name,
                looked_for=_range_text(lo_ms, hi_ms),
                nothing=f"nothing staged in {staging.path} for {_range_text(lo_ms, hi_ms)}"
                + _hint(staging),
            )
        started = time.perf_counter()
        try:
            wh = stack.enter_context(open_warehouse(settings))
            result = Rollup(settings, staging, wh, progress=progress, now=now).run(
                since_ms, until_ms, rerun=rerun, apply_retention=apply_retention
            )
        except Exception as exc:
            _remember(
                staging, now, started, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            )
            raise
        _remember(staging, now, started, None)
        return result


def _remember(
    staging: Staging, now: Callable[[], float], started: float, error: str | None
) -> None:
    """Keep the outcome in the staging file, for `etl status` (best effort: a full disk or a
    broken file must not hide the rollup's own error)."""
    with contextlib.suppress(Exception):
        staging.state.remember_rollup(ms(now()), error, time.perf_counter() - started)


def _hint(staging: Staging) -> str:
    last = staging.ticks.last_tick()
    if last is None:
        return ": the file holds no ticks yet (`etl collect` fills it)"
    hours = staging.ticks.hour_sizes()
    return f"; its ticks span {iso(min(hours))} .. {iso(last)}"
