"""``etl status``: the whole pipeline on one screen (or in one JSON document), and a health check.

Every part is gathered on its own, so an unreachable warehouse or a missing staging file is
reported next to whatever else could be read. The verdict is an exit code that supervisors read
(systemd, Docker HEALTHCHECK, cron, Nagios-style checks): 0 healthy, 1 degraded (every problem
listed), 3 a part cannot be reached. Times are ISO 8601 UTC throughout; the JSON document follows
``docs/status.schema.json``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

from etl.config import Settings
from etl.errors import DependencyError, ExitCode, NothingStaged
from etl.exchange.governor import BAN_KEY, WEIGHT_KEY
from etl.hours import HOUR_MS, closed_before, iso, iso_or_none, ms, to_ms, utc
from etl.staging.state import LAST_ROLLUP_KEY
from etl.staging.store import Staging, open_staging
from etl.warehouse.store import Warehouse, open_warehouse

LOOKBACK_HOURS = 24
HEALTH = {
    ExitCode.OK: "healthy",
    ExitCode.DEGRADED: "degraded",
    ExitCode.UNAVAILABLE: "unreachable",
}
# A closed hour not rolled up this long after it ended is overdue (the collector starts its
# rollup 10 s after the hour; a cron rollup may come later).
ROLLUP_OVERDUE_MS = 15 * 60_000
HOLES_REPORTED_MS = 7 * 24 * HOUR_MS
# With source trades a symbol is quiet while nobody trades it: stale only after this long.
TRADES_STALE_S = 300.0


@dataclass
class StagingStatus:
    path: str
    exists: bool = False
    name: str | None = None
    id: str | None = None
    rows: int = 0
    hours: int = 0
    oldest_hour: str | None = None
    newest_hour: str | None = None
    interval_s: float | None = None
    last_tick: dict[str, str | None] = field(default_factory=dict)
    last_tick_age_s: dict[str, float | None] = field(default_factory=dict)
    weight: dict[str, Any] = field(default_factory=dict)
    ban: dict[str, Any] = field(default_factory=dict)
    rejected: int = 0
    rejected_reasons: list[dict[str, Any]] = field(default_factory=list)
    last_rollup: dict[str, Any] | None = None
    bytes: dict[str, int] = field(default_factory=dict)
    problem: str | None = None
    # source trades: holes in the aggregate trade ids that could not be fetched, the last 7 days
    trade_holes_7d: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class WarehouseStatus:
    server: str
    reachable: bool = False
    exists: bool = False
    last_committed_hour: str | None = None
    committed_hours: int = 0
    pending_hours: list[str] = field(default_factory=list)
    overdue_hours: list[str] = field(default_factory=list)
    bars_lost_7d: int = 0
    missing_hours_24h: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing_hours_7d: dict[str, dict[str, Any]] = field(default_factory=dict)
    coverage_24h: dict[str, dict[str, Any]] = field(default_factory=dict)
    partitions: list[str] = field(default_factory=list)
    partitions_ahead: int | None = None
    default_partition: str | None = None
    default_partition_rows: int | None = None
    changed_sql_files: list[str] = field(default_factory=list)
    bytes: int | None = None
    problem: str | None = None
    note: str | None = None  # a state worth saying that is no problem (no warehouse made yet)


@dataclass
class ArchiveStatus:
    """The Parquet archive, as this staging file recorded it (no listing of the target)."""

    enabled: bool = False
    target: str | None = None
    hours: int = 0
    files: int = 0
    rows: int = 0
    bytes: int = 0
    newest_hour: str | None = None
    # rolled up, ticks still staged, not archived yet (the purge archives them first)
    unarchived_hours: list[str] = field(default_factory=list)
    # ... of those, the ones past raw_retention_h: the purge is waiting for the archive
    overdue_hours: list[str] = field(default_factory=list)
    problem: str | None = None


@dataclass
class Status:
    checked_at: str
    health: str
    exit_code: int
    problems: list[str]
    staging: StagingStatus
    warehouse: WarehouseStatus
    archive: ArchiveStatus = field(default_factory=ArchiveStatus)
    logs: dict[str, int] = field(default_factory=dict)
    # A demo's data dir (`etl demo`, `etl seed-demo`): its advice never points at the exchange.
    demo: bool = False
    notes: list[str] = field(default_factory=list)  # worth saying, no problem

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def staging_status(staging: Staging, settings: Settings, now_ms: int) -> StagingStatus:
    sizes = staging.ticks.hour_sizes()
    hours = sorted(sizes)
    last = staging.ticks.last_ticks(
        now_ms - LOOKBACK_HOURS * HOUR_MS, now_ms, wanted=settings.symbols
    )
    weight = staging.state.get(WEIGHT_KEY) or {}
    ban = staging.state.get(BAN_KEY) or {}
    intervals = staging.state.intervals()
    meta = staging.meta()
    holes = staging.trades.hole_rows(now_ms - HOLES_REPORTED_MS, now_ms)
    return StagingStatus(
        path=str(staging.path),
        exists=True,
        name=staging.name,
        id=meta.get("staging_id"),
        rows=staging.ticks.count(),
        hours=len(hours),
        oldest_hour=iso_or_none(hours[0]) if hours else None,
        newest_hour=iso_or_none(hours[-1]) if hours else None,
        interval_s=intervals[-1][1] if intervals else None,
        last_tick={s: iso_or_none(last.get(s)) for s in settings.symbols},
        last_tick_age_s={
            s: (round((now_ms - last[s]) / 1000, 1) if s in last else None)
            for s in settings.symbols
        },
        weight={
            "used": weight.get("used"),
            "limit": weight.get("limit"),
            "budget": weight.get("budget"),
            "at": iso_or_none(weight.get("at")),
        },
        ban={
            "active": bool(ban) and ban.get("until", 0) * 1000 > now_ms,
            "until": iso_or_none(ms(ban["until"])) if ban.get("until") else None,
            "status": ban.get("status"),
        },
        rejected=staging.quarantine.count(),
        rejected_reasons=[
            {
                "reason": r["reason"],
                "rows": r["rows"],
                "first_moved": iso_or_none(r["first_moved_ms"]),
                "last_moved": iso_or_none(r["last_moved_ms"]),
            }
            for r in staging.quarantine.reasons()
        ],
        last_rollup=staging.state.get(LAST_ROLLUP_KEY),
        bytes=staging.db.file_sizes(),
        trade_holes_7d=[
            {
                "symbol": h["symbol"],
                "ids": h["before_id"] - h["after_id"] - 1,
                "from": iso_or_none(h["from_ms"]),
                "to": iso_or_none(h["to_ms"]),
                "reason": h["reason"],
            }
            for h in holes
        ],
    )


def _pending(
    out: WarehouseStatus, staging: Staging, now_ms: int, wh: Warehouse | None = None
) -> None:
    """The closed hours ``staging`` holds that ``wh``'s ledger does not have, and those
    overdue."""
    staged = staging.ticks.hour_sizes(None, closed_before(now_ms))
    if wh is not None and staged:
        committed = wh.committed(staging.id, since_ms=min(staged))
        staged = {h: n for h, n in staged.items() if h not in committed}
    out.pending_hours = [iso(h) for h in staged]
    out.overdue_hours = [iso(h) for h in staged if h + HOUR_MS + ROLLUP_OVERDUE_MS < now_ms]


def warehouse_status(
    wh: Warehouse, settings: Settings, staging: Staging | None, now_ms: int
) -> WarehouseStatus:
    out = WarehouseStatus(server=wh.label, reachable=True)
    if not wh.has_schema():
        out.problem = "the warehouse has no tables yet: `etl db init` or `etl rollup` makes them"
        return out
    out.exists = True
    behind = wh.pending_migrations()
    if behind:
        out.problem = (
            f"the warehouse schema is {len(behind)} sql/ file(s) behind ({behind[0]} ...): "
            "`etl db init` (or the next rollup) applies them"
        )
        return out
    closed = closed_before(now_ms)
    counts = wh.ledger_counts(staging.id if staging else None, utc(now_ms - 7 * 24 * HOUR_MS))
    out.last_committed_hour = iso_or_none(counts["newest_ms"])
    if staging is not None:
        out.committed_hours = int(counts["hours"])
        out.bars_lost_7d = int(counts["bars_lost"])
        _pending(out, staging, now_ms, wh)
    lo, hi = utc(closed - LOOKBACK_HOURS * HOUR_MS), utc(closed)
    out.missing_hours_24h = _missing(wh, settings, lo, hi)
    out.missing_hours_7d = _missing(wh, settings, utc(closed - 7 * 24 * HOUR_MS), hi)
    for row in wh.coverage(settings.symbols, lo, hi):
        out.coverage_24h[row["symbol"]] = {
            "bars": int(row["bars"]),
            "coverage": round(min(1.0, float(row["coverage"])), 4),
            "kline_bars": int(row["kline_bars"]),
        }
    parts = wh.partitions()
    dated = [p for p in parts if p["range_start"] is not None]
    out.partitions = [p["partition"] for p in dated]
    this_month = utc(now_ms).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    out.partitions_ahead = sum(p["range_start"] > this_month for p in dated)
    defaults = [p["partition"] for p in parts if p["range_start"] is None]
    out.default_partition = defaults[0] if defaults else None
    out.default_partition_rows = wh.count_rows(defaults[0]) if defaults else None
    out.changed_sql_files = wh.changed_migrations()
    out.bytes = wh.sizes()["database"]
    return out


def _missing(
    wh: Warehouse, settings: Settings, lo: datetime, hi: datetime
) -> dict[str, dict[str, Any]]:
    return {
        row["symbol"]: {
            "count": int(row["missing_hours"] or 0),
            "first": iso_or_none(to_ms(row["first_missing"])) if row["first_missing"] else None,
        }
        for row in wh.missing_hours(settings.symbols, lo, hi)
    }


def archive_status(
    settings: Settings, staging: Staging | None, wh: Warehouse | None, now_ms: int
) -> ArchiveStatus:
    """What this staging file archived, and the hours rolled up (in ``wh``'s ledger, ticks
    still staged) that are not archived yet; overdue once past ``raw_retention_h``."""
    out = ArchiveStatus(enabled=bool(settings.archive_dir), target=settings.archive_dir)
    if staging is None:
        return out
    done = staging.archive_log.summary()
    out.hours, out.files, out.rows, out.bytes = (
        done["hours"],
        done["files"],
        done["rows"],
        done["bytes"],
    )
    out.newest_hour = iso_or_none(done["newest_hour_ms"])
    if not out.enabled or wh is None:
        return out
    archived = staging.archive_log.archived()
    waiting = sorted(
        hour
        for hour, held in wh.committed(staging.id).items()
        if not held.purged and hour not in archived
    )
    due = now_ms - int(settings.raw_retention_h * HOUR_MS) - ROLLUP_OVERDUE_MS
    out.unarchived_hours = [iso(h) for h in waiting]
    out.overdue_hours = [iso(h) for h in waiting if h + HOUR_MS <= due]
    if out.overdue_hours:
        out.problem = (
            f"{len(out.overdue_hours)} hour(s) rolled up and past raw_retention_h are not "
            f"archived (oldest {out.overdue_hours[0]}): their ticks stay staged until the "
            f"archive at {out.target} takes them; see the last rollup's error"
        )
    return out


def log_sizes(settings: Settings) -> dict[str, int]:
    """Bytes of every log the pipeline writes under the data dir."""
    return {str(path): path.stat().st_size for path in settings.paths.logs()}


def problems_of(
    st: StagingStatus,
    wh: WarehouseStatus,
    settings: Settings,
    demo: dict[str, Any] | None = None,
    archive: ArchiveStatus | None = None,
) -> tuple[list[str], list[str]]:
    """Every condition a supervisor should hear about, in words, with what to do; and the
    notes, worth saying but no problem. In a demo's data dir (``demo``: what its marker says)
    the advice names the demo's commands, never the exchange, and the gaps its generated history
    leaves on purpose are notes."""
    out: list[str] = []
    notes: list[str] = []

    def run(*words: str) -> str:  # advice that works as written, where these settings point
        return f"`{settings.command(*words)}`"

    def run_demo(*words: str) -> str:  # a demo's own commands take the data dir it lives in
        home = replace(settings, data_dir=settings.data_dir.parent, sqlite_path=None)
        return f"`{home.command(*words)}`"

    collector = run_demo("demo") if demo is not None else run("collect")
    if st.problem and demo is not None and not st.exists:
        notes.append(
            f"a demo's data dir with no staging file: {run_demo('demo')} collects into it, "
            f"{run_demo('seed-demo')} made its history"
        )
    elif st.problem:
        out.append(st.problem)
    if archive is not None and archive.problem:
        out.append(archive.problem)
    if wh.problem:
        out.append(wh.problem)
    limit = 3 * (st.interval_s or settings.interval_s)
    if settings.source == "trades":
        limit = max(limit, TRADES_STALE_S)
    stale = [
        f"{s} ({'never' if age is None else f'{age:.0f} s ago'})"
        for s, age in st.last_tick_age_s.items()
        if age is None or age > limit
    ]
    if st.exists and stale:
        out.append(
            f"no tick for more than 3 intervals: {', '.join(stale[:5])}"
            + (f" and {len(stale) - 5} more" if len(stale) > 5 else "")
            + f": is {collector} running?"
        )
    if st.trade_holes_7d:
        first = st.trade_holes_7d[0]
        fill = (
            "the demo's fake exchange made it"
            if demo is not None
            else f"{run('backfill', '--since', first['from'])} fills those hours from klines"
        )
        out.append(
            f"{len(st.trade_holes_7d)} hole(s) in the trade ids in the last 7 days (first: "
            f"{first['symbol']}, {first['ids']} ids from {first['from']}, {first['reason']}): "
            + fill
        )
    if st.ban.get("active"):
        out.append(f"the exchange has banned us (HTTP {st.ban['status']}) until {st.ban['until']}")
    if wh.overdue_hours:
        out.append(
            f"{len(wh.overdue_hours)} closed hour(s) staged but not rolled up "
            f"(oldest {wh.overdue_hours[0]}): run {run('rollup')}"
        )
    last = st.last_rollup or {}
    if last and not last.get("ok", True):
        out.append(
            f"the last rollup failed at {last.get('at')} ({last.get('error', 'see rollup.log')}): "
            f"run {run('rollup')} to see why"
        )
    gaps, planned = _unplanned_gaps(wh, demo)
    if planned:
        notes.append(
            f"{planned} hour(s) without a bar in the last {LOOKBACK_HOURS} h are the demo "
            "history's planned gaps (what real downtime looks like)"
        )
    if gaps:
        listed = ", ".join(f"{s} {n}" for s, n in list(gaps.items())[:5])
        fill = (
            f"a demo's hours have bars only while {run_demo('demo')} runs "
            f"({run_demo('seed-demo', '--force')} generates history again)"
            if demo is not None
            else f"run {run('backfill')}"
        )
        out.append(f"hours without a bar in the last {LOOKBACK_HOURS} h: {listed}: {fill}")
    if st.rejected:
        out.append(
            f"{st.rejected:,} staged row(s) quarantined in ticks_rejected "
            f"({st.rejected_reasons[0]['reason']}{', ...' if len(st.rejected_reasons) > 1 else ''}): "
            "see docs/how-it-works.md, The staging file"
        )
    if wh.bars_lost_7d:
        out.append(
            f"{wh.bars_lost_7d} bar(s) of this staging file lost to better bars from another "
            "source in the last 7 days (see rollup_runs.bars_lost): is another collector polling "
            "the same symbols?"
        )
    if wh.partitions_ahead is not None and wh.partitions_ahead < 2:
        out.append(f"fewer than 2 monthly partitions ahead: run {run('db', 'init')}")
    if wh.default_partition_rows:
        out.append(f"{wh.default_partition_rows} row(s) in the default partition")
    if wh.changed_sql_files:
        out.append(
            f"sql/ file(s) changed after they were applied: {', '.join(wh.changed_sql_files)} "
            "(files are applied once; put changes in a new file)"
        )
    return out, notes


def _unplanned_gaps(wh: WarehouseStatus, demo: dict[str, Any] | None) -> tuple[dict[str, int], int]:
    """Hours without a bar in the lookback per symbol, less the demo history's planned ones;
    and how many planned ones there were."""
    planned_all = (demo or {}).get("planned_gaps") or {}
    gaps, planned = {}, 0
    for symbol, missing in wh.missing_hours_24h.items():
        first = missing.get("first")
        ours = [h for h in planned_all.get(symbol, []) if first is not None and h >= first]
        planned += min(len(ours), missing["count"])
        if missing["count"] > len(ours):
            gaps[symbol] = missing["count"] - len(ours)
    return gaps, planned


def gather(settings: Settings, now: float | None = None) -> Status:
    """Everything ``etl status`` shows, and the verdict. Creates nothing: a missing staging file
    or embedded warehouse is reported, not made."""
    now = time.time() if now is None else now
    now_ms = ms(now)
    unreachable = False
    staging: Staging | None = None
    ars = ArchiveStatus(enabled=bool(settings.archive_dir), target=settings.archive_dir)
    try:
        staging = open_staging(settings, create=False)
        st = staging_status(staging, settings, now_ms)
    except NothingStaged:
        st = StagingStatus(
            path=str(settings.staging_path),
            problem=f"no staging database at {settings.staging_path}: start `etl collect` "
            "(or point ETL_DATA_DIR / ETL_SQLITE_PATH at yours)",
        )
    try:
        try:
            with open_warehouse(settings, create=False, statement_timeout_s=30, borrow=True) as wh:
                whs = warehouse_status(wh, settings, staging, now_ms)
                ars = archive_status(settings, staging, wh if whs.exists else None, now_ms)
        except NothingStaged as exc:  # not made yet: a problem only once hours wait for it
            whs = WarehouseStatus(server=settings.masked_dsn, note=str(exc))
            ars = archive_status(settings, staging, None, now_ms)
            if staging is not None:
                _pending(whs, staging, now_ms)
        except DependencyError as exc:
            unreachable = True
            whs = WarehouseStatus(server=settings.masked_dsn, problem=str(exc))
            ars = archive_status(settings, staging, None, now_ms)
    finally:
        if staging is not None:
            staging.close()
    demo = settings.paths.demo_info()
    problems, notes = problems_of(st, whs, settings, demo, ars)
    code = ExitCode.UNAVAILABLE if unreachable else ExitCode.DEGRADED if problems else ExitCode.OK
    return Status(
        checked_at=iso(now_ms),
        health=HEALTH[code],
        exit_code=code,
        problems=problems,
        staging=st,
        warehouse=whs,
        archive=ars,
        logs=log_sizes(settings),
        demo=demo is not None,
        notes=notes,
    )
