"""What the CLI draws for each job's result: tables and warnings, printed literally.

Jobs return typed results and never print; this module turns them into rich renderables, so
the same result can also go out as JSON or into metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from etl.console import age, kv_table, size, table
from etl.hours import iso
from etl.report import labelled

if TYPE_CHECKING:  # only the types: a command loads the jobs it runs, not every job
    import polars as pl

    from etl.config import Settings
    from etl.jobs.backfill import BackfillResult
    from etl.jobs.backup import BackupResult, RestoreResult
    from etl.jobs.db_access import Initialised
    from etl.jobs.export import ExportResult, TickExportResult
    from etl.jobs.jupyter import Executed, LabCommand
    from etl.jobs.rebuild import RebuildResult
    from etl.jobs.retention import RetentionResult
    from etl.jobs.rollup import RollupResult
    from etl.jobs.status import Status


def warning(message: str) -> Text:
    line = Text("warning: ", style="yellow")
    line.append(message)
    return line


def kept_partition(name: str, missing_days: int | None, start: Any, end: Any) -> Text:
    """The one wording of "a partition past retention was kept"."""
    count = f"{missing_days} symbol-day(s)" if missing_days is not None else "some of its days"
    return warning(
        f"{name} kept: it is past retention, but {count} are missing from metrics_daily; "
        f"recompute them with SELECT etl_refresh_daily('{start}', '{end}');"
    )


def rollup(result: RollupResult) -> list[RenderableType]:
    if result.nothing:
        return [Text(result.nothing)]
    out: list[RenderableType] = [
        kv_table(
            f"rollup of {result.staging}",
            [
                *labelled(result),
                ("hourly partitions dropped", ", ".join(result.dropped) or 0),
                ("seconds", f"{result.seconds:.2f}"),
            ],
        )
    ]
    if not result.hours and not result.skipped_hours:
        out.append(Text(f"every staged hour of {result.looked_for} was already rolled up"))
    done = result.archive
    if done is not None:
        line = (
            f"archived {done.hours} hour(s) before the purge: {done.files} file(s), "
            f"{done.rows:,} ticks, {size(done.bytes)} in {done.seconds:.2f} s"
        )
        if done.already:
            line += f"; {done.already} hour(s) already archived (not written again)"
        if done.rewritten:
            line += f"; {done.rewritten} rolled up again since, archived anew"
        if done.empty:
            line += f"; {done.empty} with no tick left to archive (a manifest without files)"
        out.append(Text(line))
        if done.context_at_archive:
            out.append(
                warning(
                    f"{done.context_at_archive} hour(s) were rolled up before etl kept their bar "
                    "context: worked out when archived (docs/archive.md: Rebuilding)"
                )
            )
    out += [kept_partition(name, None, "FIRST_DAY", "DAY_AFTER") for name in result.kept]
    if result.future_ticks:
        out.append(
            warning(
                f"{result.future_ticks} staged tick(s) are stamped in the future (clock skew or "
                "a bad writer): set aside until their hour closes"
            )
        )
    if result.rejected:
        out.append(
            warning(
                f"{result.rejected} staged row(s) could not be ticks and were moved to "
                "ticks_rejected (docs/how-it-works.md: The staging file)"
            )
        )
    out += [
        warning(
            f"{iso(hour)} is committed and some of its ticks are purged: its bar stays as "
            "committed; the ticks that arrived since stay staged"
        )
        for hour in result.skipped_hours
    ]
    return out


def rebuild(result: RebuildResult) -> list[RenderableType]:
    if result.nothing:
        return [Text(result.nothing)]
    out: list[RenderableType] = [
        kv_table(
            f"bars rebuilt from {result.archive}",
            [*labelled(result), ("seconds", f"{result.seconds:.2f}")],
        ),
        Text(f"staging files in the archive: {', '.join(result.staging_files)}"),
    ]
    if result.unrecorded:
        out.append(
            warning(
                f"{result.unrecorded} archive file(s) in {result.looked_for} are named by no "
                "manifest (a write a crash cut short, or not etl's): skipped"
            )
        )
    return out


def exported(result: ExportResult) -> list[RenderableType]:
    out: list[RenderableType] = [
        kv_table(
            f"{result.width} bars, {result.looked_for}, as {result.format} in {result.out}",
            [*labelled(result), ("seconds", f"{result.seconds:.2f}")],
        )
    ]
    if result.empty:
        out.append(warning(f"no bars in {result.looked_for} for {', '.join(result.empty)}"))
    if result.unrecorded:
        out.append(warning(f"{result.unrecorded} archive file(s) named by no manifest: skipped"))
    out += [Text(f"wrote {path}") for path in result.files]
    return out


def ticks_exported(result: TickExportResult) -> list[RenderableType]:
    out: list[RenderableType] = [
        kv_table(
            f"ticks, {result.looked_for}, as {result.format} in {result.out}",
            [*labelled(result), ("seconds", f"{result.seconds:.2f}")],
        )
    ]
    if result.empty:
        out.append(Text(f"no {' or '.join(result.empty)} ticks archived for these symbols"))
    if result.unrecorded:
        out.append(warning(f"{result.unrecorded} archive file(s) named by no manifest: skipped"))
    out += [Text(f"wrote {path}") for path in result.files]
    return out


def backfill(result: BackfillResult) -> list[RenderableType]:
    out: list[RenderableType] = [kv_table("backfill", labelled(result))]
    if not result.hours:
        out.append(
            Text(
                f"nothing to fill for {', '.join(result.symbols)} in {result.looked_for}: every "
                "hour has a bar at least as good as a kline bar, or was fetched before"
            )
        )
    return out


def reconcile(result: pl.DataFrame, per_symbol: pl.DataFrame, hours_text: str) -> RenderableType:
    if result.is_empty():
        return Text(f"no poll or trade bars to compare in {hours_text}")
    renamed = per_symbol.rename(
        {
            c: c.replace("_mean_abs_bps", " avg").replace("_max_abs_bps", " max")
            for c in per_symbol.columns
        }
    )
    rows = [[f"{v:.2f}" if isinstance(v, float) else v for v in row] for row in renamed.rows()]
    return table(
        f"poll and trade bars vs 1h klines, {hours_text} (|deviation| in bps)",
        renamed.columns,
        rows,
    )


def retention(done: RetentionResult) -> list[RenderableType]:
    result = done.partitions
    if result.is_empty():
        return [Text("nothing is past retention")]
    out: list[RenderableType] = [
        table(f"hourly partitions past {done.keep_days:g} days", result.columns, result.rows())
    ]
    for row in result.filter(result["action"] == "kept").iter_rows(named=True):
        out.append(
            kept_partition(
                row["partition"],
                row["missing_days"],
                row["range_start"].date(),
                row["range_end"].date(),
            )
        )
    return out


def _span(first: str | None, last: str | None) -> str:
    return f"{first} .. {last}" if first and last else "none"


def status(report: Status) -> RenderableType:
    st, wh = report.staging, report.warehouse
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold", no_wrap=True)
    head.add_column(overflow="fold")  # a long path breaks over lines, never loses its end

    def row(key: str, value: str, style: str = "") -> None:
        head.add_row(key, Text(value, style=style))

    row("checked at", report.checked_at)
    row(
        "health",
        report.health,
        {"healthy": "green", "degraded": "yellow"}.get(report.health, "red"),
    )
    if st.exists:
        row(
            "staging",
            f"{st.path} ({st.name}): {st.rows:,} ticks in {st.hours} hour(s), "
            f"{_span(st.oldest_hour, st.newest_hour)}",
        )
        row("staging size", ", ".join(f"{k} {size(v)}" for k, v in st.bytes.items()))
        if st.interval_s:
            row("poll interval", f"{st.interval_s:g} s (as recorded by the collector)")
        if st.trade_holes_7d:
            holes = st.trade_holes_7d
            row(
                "trade holes",
                f"{len(holes)} in 7 days, {sum(h['ids'] for h in holes):,} ids (last: "
                f"{holes[-1]['symbol']} {holes[-1]['from']} .. {holes[-1]['to']})",
                "yellow",
            )
    elif report.demo:
        row("staging", "none (a demo's data dir: `etl demo` collects into it)")
    else:
        row("staging", "none (see problems)")
    if st.weight.get("used") is not None:
        row(
            "weight",
            f"{st.weight['used']} / {st.weight['limit']} (budget {st.weight['budget']}) "
            f"at {st.weight['at']}",
        )
    ban = st.ban
    row(
        "ban",
        f"active (HTTP {ban['status']}) until {ban['until']}" if ban.get("active") else "none",
        "red" if ban.get("active") else "",
    )
    if st.last_rollup:
        last = st.last_rollup
        row(
            "last rollup",
            f"{'ok' if last.get('ok') else 'FAILED'} at {last.get('at')}"
            + (f": {last.get('error')}" if last.get("error") else ""),
        )
    if wh.exists:
        row(
            "warehouse",
            f"{wh.server}: last committed hour {wh.last_committed_hour or 'none'} "
            f"({wh.committed_hours} hour(s) of this staging file in the ledger), "
            f"{size(wh.bytes)}",
        )
        first = wh.partitions[0] if wh.partitions else "-"
        last_part = wh.partitions[-1] if wh.partitions else "-"
        row(
            "partitions",
            f"{len(wh.partitions)} ({first} .. {last_part}), {wh.partitions_ahead} ahead",
        )
    elif wh.problem:  # said whole once, under problems
        row("warehouse", f"{wh.server}: unreachable (see problems)", "red")
    else:
        row("warehouse", f"{wh.server}: {wh.note or 'none yet'}")
    ar = report.archive
    if ar.enabled:
        text = (
            f"{ar.target}: {ar.hours} hour(s), {ar.files} file(s), {ar.rows:,} ticks, "
            f"{size(ar.bytes)}; newest hour {ar.newest_hour or 'none'}"
        )
        if ar.unarchived_hours:
            text += f"; {len(ar.unarchived_hours)} hour(s) rolled up, not archived yet"
        row("archive", text, "yellow" if ar.overdue_hours else "")
    elif ar.hours:
        row("archive", f"off (ETL_ARCHIVE_DIR unset); {ar.hours} hour(s) archived before")
    if report.logs:
        row("logs", ", ".join(f"{k} {size(v)}" for k, v in report.logs.items()))

    per_symbol = Table(title="per symbol", title_justify="left")
    for name in ("symbol", "last tick", "bars 24h", "coverage 24h", "missing 24h", "first missing"):
        per_symbol.add_column(name, justify="left" if name == "symbol" else "right")
    for symbol in st.last_tick_age_s or {
        s: None for s in list(wh.coverage_24h) or list(wh.missing_hours_24h)
    }:
        cov = wh.coverage_24h.get(symbol) or {}
        gap = wh.missing_hours_24h.get(symbol) or {}
        tick_age = (st.last_tick_age_s or {}).get(symbol)
        per_symbol.add_row(
            symbol,
            f"{age(tick_age)} ago" if tick_age is not None else "never",
            str(cov.get("bars", 0)) if cov else "-",
            f"{cov['coverage']:.1%}" if cov else "-",
            str(gap.get("count", "-")),
            gap.get("first") or "-",
        )
    problems = Text(
        "\n".join(f"• {p}" for p in report.problems) or "none",
        style="yellow" if report.problems else "green",
    )
    parts: list[RenderableType] = [Panel(head, title="etl status"), per_symbol]
    if report.notes:
        parts.append(Panel(Text("\n".join(f"• {n}" for n in report.notes)), title="notes"))
    parts.append(Panel(problems, title="problems"))
    return Group(*parts)


def lines(items: Sequence[RenderableType]) -> Group:
    return Group(*items)


def db_init(done: Initialised) -> list[RenderableType]:
    out: list[RenderableType] = [
        Text(
            f"applied {', '.join(done.migrations.applied) or 'nothing new'} to {done.label} "
            f"({len(done.migrations.present)} applied before)"
        ),
        Text(f"hourly partitions: {', '.join(done.partitions)}"),
    ]
    out += [
        warning(f"sql/{name} changed since it was applied; put changes in a new file")
        for name in done.migrations.changed
    ]
    return out


def serving(uri: str) -> Text:
    return Text(f"the embedded PostgreSQL is up at {uri}: Ctrl-C stops it")


def notebooks_copied(lab: LabCommand) -> Text:
    return Text(f"copied {', '.join(lab.copied)} to {lab.folder} (yours to edit)")


def executed(done: Sequence[Executed]) -> list[RenderableType]:
    return [Text(f"ran {run.notebook.name} in {run.seconds:.1f} s: {run.html}") for run in done]


def demo_done(home: Settings, demo: Settings) -> Text:
    """What ``etl demo`` made, and the commands to look at it (``home``: the settings it was
    given, ``demo``: moved to the demo's data dir)."""
    return Text(
        f"demo data in {demo.data_dir}: see it with `{demo.command('status')}`; charts once an "
        f"hour has closed: `{home.command('notebook', '--demo')}` (or "
        f"`{home.command('seed-demo')}` for 60 days of generated history now)"
    )


def seeded(home: Settings, demo: Settings) -> Text:
    return Text(
        f"demo history in {demo.masked_dsn}: charts with `{home.command('notebook', '--demo')}`; "
        f"status with `{demo.command('status')}`"
    )


def _n(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _manifest(m: dict[str, Any]) -> list[Text]:
    rows, st = m["rows"], m["staging"]
    out = [
        Text(f"  taken {m['created_at']} by etl {m['etl_version']}"),
        Text(
            f"  staging {st['name']} ({st['id']}): {_n(rows['ticks'])} ticks, "
            f"{_n(rows['ticks_rejected'])} rejected, up to row {_n(st['max_seq'])}"
        ),
    ]
    pg = m.get("postgresql")
    if pg:
        out.append(
            Text(
                f"  warehouse PostgreSQL {pg['version']}: {_n(rows['metrics_hourly'])} hourly "
                f"bars, {_n(rows['metrics_daily'])} daily bars, {_n(rows['rollup_runs'])} "
                "ledger rows"
            )
        )
    return out


def backup(done: BackupResult) -> list[RenderableType]:
    total = sum(f["bytes"] for f in done.manifest["files"].values())
    return [
        Text(f"backup written to {done.dest} ({size(total)}) in {done.seconds:.1f} s"),
        *_manifest(done.manifest),
        Text(f"restore with: etl restore {done.dest} --data-dir NEW_DIR"),
    ]


def restore(done: RestoreResult) -> list[RenderableType]:
    where = done.warehouse or "no warehouse (the backup had none)"
    return [
        Text(
            f"restored {done.src} in {done.seconds:.1f} s: staging {done.staging_path}, "
            f"warehouse {where}"
        ),
        *_manifest(done.manifest),
        Text(
            "the ticks collected after the backup was taken are not in it; "
            "`etl status` shows where it stands"
        ),
    ]
