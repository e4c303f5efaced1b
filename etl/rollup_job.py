"""The rollup job: staged ticks → hourly bars in PostgreSQL, then daily bars, purge, retention.

Order matters for "no data loss": bars and their ledger rows commit together; only then are
staged ticks of ledger hours (older than ``raw_retention_h``) deleted, and only up to the last row
the rollup read. A crash anywhere leaves either the old state or the new, and a rerun converges.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl

from etl import console
from etl.config import Settings
from etl.rollup import MAX_TS_MS, MIN_TS_MS, hour_ledger, hourly_bars
from etl.staging import HOUR_MS, Staging, hour_floor
from etl.warehouse import Warehouse, open_warehouse

# An hour is closed for the rollup this long after it ends (its last poll is committed by then).
GRACE_MS = 10_000
# Ticks per rollup chunk: about an hour of 3,000 symbols at 5 s; ~650 MiB peak for the process.
CHUNK_TICKS = 2_500_000
DAY_MS = 86_400_000
CRASH_ENV = "ETL_CRASH_AT"  # test hook: SIGKILL ourselves at a named point


def crash_point(name: str) -> None:
    """Die at once (as ``kill -9`` would) if ``ETL_CRASH_AT`` names this point."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@dataclass
class RollupSummary:
    hours: int = 0
    bars: int = 0
    ticks: int = 0
    purged: int = 0
    days: int = 0
    dropped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    future_ticks: int = 0
    ancient_hours: int = 0
    skipped_hours: list[int] = field(default_factory=list)
    kline_kept: int = 0
    seconds: float = 0.0

    def rows(self) -> list[tuple[str, object]]:
        return [
            ("hours rolled up", self.hours),
            ("bars written", self.bars),
            ("ticks read", self.ticks),
            ("daily rows refreshed", self.days),
            ("staged ticks purged", self.purged),
            ("kline bars kept over thinner poll bars", self.kline_kept),
            ("hourly partitions dropped", ", ".join(self.dropped) or 0),
            ("seconds", f"{self.seconds:.2f}"),
        ]


def pending_hours(
    staging: Staging,
    wh: Warehouse,
    staged: list[int],
    lo_ms: int | None,
    hi_ms: int,
    rerun: bool,
) -> tuple[list[int], list[int]]:
    """Hours to roll up, and committed hours that must not be rolled up again.

    Pending: staged hours not in the ledger (with ``rerun``, every staged hour), plus ledger
    hours that gained ticks after they were read. A committed hour is only read again while
    every tick the first rollup read is still staged; once some are purged, a new bar would
    hold part of the hour, so the committed bar stays and the hour is reported instead.
    """
    ledger = wh.ledger()
    committed = {
        row["hour_ms"]: (row["max_seq"], row["ticks_read"], row["purged"])
        for row in ledger.iter_rows(named=True)
    }

    def intact(hour: int) -> bool:
        max_seq, ticks_read, purged = committed[hour]
        return not purged and staging.count_between(hour, hour + HOUR_MS, max_seq) == ticks_read

    if rerun:
        again = [h for h in staged if h in committed]
        return [h for h in staged if h not in committed or intact(h)], [
            h for h in again if not intact(h)
        ]
    pending = {h for h in staged if h not in committed}
    high_water = int(ledger["max_seq"].max() or 0) if ledger.height else 0
    late = staging.hours_with_ticks_after(high_water, hi_ms) if high_water else set()
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


def run_rollup(
    settings: Settings,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    rerun: bool = False,
    now: Callable[[], float] = time.time,
    apply_retention: bool = True,
) -> RollupSummary:
    """Roll up every closed hour with staged ticks that is not committed yet (or all, ``rerun``)."""
    started = time.perf_counter()
    summary = RollupSummary()
    now_ms = int(now() * 1000)
    closed = hour_floor(now_ms - GRACE_MS)  # hours starting before this have ended
    hi_ms = min(closed, -(-until_ms // HOUR_MS) * HOUR_MS) if until_ms is not None else closed
    lo_ms = hour_floor(since_ms) if since_ms is not None else None
    with (
        Staging(settings.staging_path, synchronous=settings.sqlite_synchronous) as staging,
        open_warehouse(settings) as wh,
    ):
        wh.apply_schema()
        with wh.run_lock(lambda: console.line("another rollup is running; waiting for it")):
            sizes = staging.hour_sizes(lo_ms, hi_ms)
            hours, skipped = pending_hours(staging, wh, list(sizes), lo_ms, hi_ms, rerun)
            summary.skipped_hours = skipped
            summary.ancient_hours = sum(1 for h in hours if h < MIN_TS_MS)
            hours = [h for h in hours if MIN_TS_MS <= h <= MAX_TS_MS]
            summary.future_ticks = staging.count_between(closed + HOUR_MS, None)
            groups = chunked(hours, sizes, settings.rollup_chunk_hours, CHUNK_TICKS)
            _roll_hours(staging, wh, groups, settings.full_samples_per_hour, summary)
            purge_before = utc(now_ms - int(settings.raw_retention_h * HOUR_MS))
            candidates = wh.purge_candidates(purge_before)
            crash_point("before_purge")
            if candidates:
                summary.purged = staging.purge(candidates)
                crash_point("after_purge")
                wh.mark_purged(purge_before)
            if apply_retention:
                result = wh.retention(settings.hourly_retention_d, dry_run=False)
                summary.dropped = result.filter(pl.col("action") == "dropped")[
                    "partition"
                ].to_list()
                summary.kept = result.filter(pl.col("action") == "kept")["partition"].to_list()
    summary.seconds = time.perf_counter() - started
    _report(summary)
    return summary


def _roll_hours(
    staging: Staging, wh: Warehouse, groups: list[list[int]], full: int, summary: RollupSummary
) -> None:
    if not groups:
        return
    with console.progress(sum(map(len, groups)), "rolling up hours") as bar:
        for group in groups:
            ticks, bars = _roll_chunk(staging, wh, group, full, summary)
            bar.advance(bar.task_ids[0], len(group))
            bar.update(bar.task_ids[0], note=console.iso(group[-1]))
            if bar.disable:
                console.line(
                    f"{console.stamp()} rolled up {len(group)} hour(s) up to "
                    f"{console.iso(group[-1])}: {ticks} ticks, {bars} bars"
                )


def _roll_chunk(
    staging: Staging, wh: Warehouse, group: Sequence[int], full: int, summary: RollupSummary
) -> tuple[int, int]:
    """Read, compute and commit one chunk of hours. Its frames die when this returns, before the
    next chunk is read: holding two chunks at once fragments the heap and memory creeps up."""
    started_at = datetime.now(UTC)
    ticks = staging.read_hours(group)
    crash_point("after_read")
    bars = hourly_bars(ticks, ordered=True)  # staging reads come ordered by ts, seq
    runs = hour_ledger(bars, started_at)
    written = wh.write_bars(
        bars, runs, full_samples=full, before_commit=lambda: crash_point("before_commit")
    )
    summary.bars += written.bars
    summary.days += written.days
    summary.kline_kept += written.kline_kept
    crash_point("after_commit")
    summary.hours += len(group)
    summary.ticks += ticks.height
    return ticks.height, bars.height


def _report(summary: RollupSummary) -> None:
    out = console
    console.console.print(console.table("rollup", ("what", "value"), summary.rows()))
    for name in summary.kept:
        out.line(
            f"[yellow]warning:[/] hourly partition {name} is past retention but some of its days "
            "are missing from metrics_daily: kept"
        )
    if summary.future_ticks:
        out.line(
            f"[yellow]warning:[/] {summary.future_ticks} staged tick(s) are stamped in the future "
            "(clock skew or a bad writer): set aside until their hour closes"
        )
    if summary.ancient_hours:
        out.line(
            f"[yellow]warning:[/] {summary.ancient_hours} staged hour(s) before 1970 set aside: "
            "their ts is not epoch milliseconds"
        )
    for hour in summary.skipped_hours:
        out.line(
            f"[yellow]warning:[/] {console.iso(hour)} is committed and some of its ticks are "
            "purged: its bar stays as committed; the ticks that arrived since stay staged"
        )
