"""``etl status``: one screen (or one JSON document) for the whole pipeline.

Every part is gathered on its own, so an unreachable warehouse or a missing staging file is
reported as a problem next to whatever else could be read.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from etl import console
from etl.binance import BAN_KEY
from etl.collector import WEIGHT_KEY
from etl.config import Settings
from etl.errors import EtlError
from etl.rollup_job import GRACE_MS
from etl.staging import HOUR_MS, Staging, hour_floor
from etl.warehouse import Warehouse, open_warehouse

LOOKBACK_DAYS = 7

_PARTITIONS_SQL = """
SELECT c.relname::text AS partition,
       pg_get_expr(c.relpartbound, c.oid) AS bound,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), $re$FROM \\('([^']+)'\\)$re$))[1]::timestamptz AS range_start
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'metrics_hourly'::regclass
ORDER BY range_start NULLS LAST
"""

_MISSING_SQL = """
WITH syms AS (SELECT unnest(string_to_array($1, ',')) AS symbol),
first_bar AS (
    SELECT s.symbol, (SELECT min(bucket) FROM metrics_hourly m WHERE m.symbol = s.symbol
                      AND m.bucket >= $2) AS first_bucket
    FROM syms s
),
hours AS (
    SELECT f.symbol, generate_series(f.first_bucket, $3 - interval '1 hour', interval '1 hour') AS bucket
    FROM first_bar f WHERE f.first_bucket IS NOT NULL
)
SELECT s.symbol,
       count(h.bucket) FILTER (WHERE m.bucket IS NULL) AS missing_hours,
       min(h.bucket) FILTER (WHERE m.bucket IS NULL) AS first_missing
FROM syms s
LEFT JOIN hours h ON h.symbol = s.symbol
LEFT JOIN metrics_hourly m ON m.symbol = h.symbol AND m.bucket = h.bucket
GROUP BY s.symbol ORDER BY s.symbol
"""

_COVERAGE_SQL = """
SELECT symbol, count(*) AS bars,
       avg(CASE WHEN source = 'kline' THEN samples / 60.0 ELSE samples / $1 END) AS coverage,
       count(*) FILTER (WHERE source = 'kline') AS kline_bars
FROM metrics_hourly
WHERE bucket >= $2 AND bucket < $3 AND symbol = ANY(string_to_array($4, ','))
GROUP BY symbol ORDER BY symbol
"""


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def staging_status(settings: Settings, now_ms: int) -> dict[str, Any]:
    path = settings.staging_path
    if not path.exists():
        return {"path": str(path), "problem": f"no staging database at {path}: run `etl collect`"}
    with Staging(path, synchronous=settings.sqlite_synchronous) as st:
        hours = st.hours_with_ticks()
        last = st.last_ticks(now_ms - 24 * HOUR_MS, now_ms)
        weight = st.get_state(WEIGHT_KEY) or {}
        ban = st.get_state(BAN_KEY) or {}
        rows = st.count()
    closed = hour_floor(now_ms - GRACE_MS)
    return {
        "path": str(path),
        "rows": rows,
        "hours": len(hours),
        "closed_hours": [h for h in hours if h < closed],
        "oldest_hour": console.iso(hours[0]) if hours else None,
        "newest_hour": console.iso(hours[-1]) if hours else None,
        "last_tick_age_s": {
            s: (round((now_ms - last[s]) / 1000, 1) if s in last else None)
            for s in settings.symbols
        },
        "weight": {k: weight.get(k) for k in ("used", "limit", "budget", "at")},
        "ban": {
            "active": bool(ban) and ban.get("until", 0) * 1000 > now_ms,
            "until": console.iso(ban["until"] * 1000) if ban.get("until") else None,
            "status": ban.get("status"),
        },
    }


def warehouse_status(
    wh: Warehouse, settings: Settings, now: datetime, staged_closed: list[int]
) -> dict[str, Any]:
    if wh.execute("SELECT to_regclass('metrics_hourly') IS NOT NULL")[0][0] is False:
        return {"problem": "the warehouse has no tables yet: run `etl db init` or `etl rollup`"}
    symbols = ",".join(settings.symbols)
    last_closed = datetime.fromtimestamp(
        hour_floor(int(now.timestamp() * 1000) - GRACE_MS) / 1000, UTC
    )
    committed = set(wh.ledger()["hour_ms"].to_list())
    missing = wh.query(_MISSING_SQL, [symbols, now - timedelta(days=LOOKBACK_DAYS), last_closed])
    coverage = wh.query(
        _COVERAGE_SQL,
        [
            settings.expected_samples_per_hour,
            last_closed - timedelta(hours=24),
            last_closed,
            symbols,
        ],
    )
    parts = wh.query(_PARTITIONS_SQL)
    this_month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    default = parts.filter(pl.col("bound") == "DEFAULT")["partition"].to_list()
    default_rows = (
        int(wh.execute(f'SELECT count(*) FROM "{default[0]}"')[0][0]) if default else None
    )
    dated = parts.filter(pl.col("range_start").is_not_null())
    return {
        "server": wh.label,
        "last_committed_hour": console.iso(max(committed)) if committed else None,
        "committed_hours": len(committed),
        "pending_hours": [console.iso(h) for h in staged_closed if h not in committed],
        "missing_hours_7d": {
            r["symbol"]: {"count": int(r["missing_hours"] or 0), "first": _iso(r["first_missing"])}
            for r in missing.iter_rows(named=True)
        },
        "coverage_24h": {
            r["symbol"]: {
                "bars": int(r["bars"]),
                "coverage": round(float(r["coverage"]), 4),
                "kline_bars": int(r["kline_bars"]),
            }
            for r in coverage.iter_rows(named=True)
        },
        "partitions": dated["partition"].to_list(),
        "partitions_ahead": int(dated.filter(pl.col("range_start") > this_month).height),
        "default_partition": default[0] if default else None,
        "default_partition_rows": default_rows,
    }


def gather(settings: Settings, now: float | None = None) -> dict[str, Any]:
    """Everything ``etl status`` shows, as plain data."""
    now = time.time() if now is None else now
    now_ms = int(now * 1000)
    out: dict[str, Any] = {"checked_at": console.iso(now_ms), "problems": []}
    try:
        out["staging"] = staging_status(settings, now_ms)
    except EtlError as exc:
        out["staging"] = {"problem": str(exc)}
    if "problem" in out["staging"]:
        out["problems"].append(out["staging"]["problem"])
    staged_closed = out["staging"].get("closed_hours", [])
    try:
        with open_warehouse(settings) as wh:
            out["warehouse"] = warehouse_status(
                wh, settings, datetime.fromtimestamp(now, UTC), staged_closed
            )
    except EtlError as exc:
        out["warehouse"] = {"server": settings.masked_dsn, "problem": str(exc)}
    if "problem" in out["warehouse"]:
        out["problems"].append(out["warehouse"]["problem"])
    out["staging"].pop("closed_hours", None)
    ban = out["staging"].get("ban") or {}
    if ban.get("active"):
        out["problems"].append(f"the exchange has banned us ({ban['status']}) until {ban['until']}")
    wh = out["warehouse"]
    if wh.get("pending_hours"):
        out["problems"].append(
            f"{len(wh['pending_hours'])} closed hour(s) staged but not rolled up: run `etl rollup`"
        )
    gaps = {s: m["count"] for s, m in (wh.get("missing_hours_7d") or {}).items() if m["count"]}
    if gaps:
        out["problems"].append(
            f"hours without a bar in the last {LOOKBACK_DAYS} days: {gaps}: run `etl backfill`"
        )
    if wh.get("partitions_ahead") is not None and wh["partitions_ahead"] < 2:
        out["problems"].append("fewer than 2 monthly partitions ahead: run `etl db init`")
    if wh.get("default_partition_rows"):
        out["problems"].append(f"{wh['default_partition_rows']} row(s) in the default partition")
    return out


def render(status: dict[str, Any]) -> Group:
    st, wh = status["staging"], status["warehouse"]
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("checked at", status["checked_at"])
    head.add_row(
        "staging",
        st.get("problem")
        or f"{st['path']}: {st['rows']:,} ticks in {st['hours']} hour(s) ({st['oldest_hour']} .. {st['newest_hour']})",
    )
    weight = st.get("weight") or {}
    if weight.get("used") is not None:
        head.add_row(
            "weight",
            f"{weight['used']} / {weight['limit']} (budget {weight['budget']}) at {console.iso(weight['at'])}",
        )
    ban = st.get("ban") or {}
    head.add_row(
        "ban",
        f"[red]active ({ban['status']}) until {ban['until']}[/]" if ban.get("active") else "none",
    )
    head.add_row(
        "warehouse",
        wh.get("problem")
        or f"{wh['server']}: last committed hour {wh['last_committed_hour']} ({wh['committed_hours']} in the ledger)",
    )
    if "partitions" in wh:
        head.add_row(
            "partitions",
            f"{len(wh['partitions'])} ({wh['partitions'][0] if wh['partitions'] else '-'} .. {wh['partitions'][-1] if wh['partitions'] else '-'}), {wh['partitions_ahead']} ahead; default partition: {wh['default_partition'] or 'none'}",
        )

    per_symbol = Table(title="per symbol", title_justify="left")
    for name in (
        "symbol",
        "last tick age",
        "bars 24h",
        "coverage 24h",
        f"missing hours {LOOKBACK_DAYS}d",
        "first missing",
    ):
        per_symbol.add_column(name, justify="left" if name == "symbol" else "right")
    ages = st.get("last_tick_age_s") or {}
    coverage = wh.get("coverage_24h") or {}
    missing = wh.get("missing_hours_7d") or {}
    for symbol in sorted(set(ages) | set(coverage) | set(missing)):
        cov = coverage.get(symbol) or {}
        gap = missing.get(symbol) or {}
        per_symbol.add_row(
            symbol,
            console.age(ages.get(symbol)),
            str(cov.get("bars", 0)),
            f"{cov['coverage']:.1%}" if cov else "-",
            str(gap.get("count", "-")),
            gap.get("first") or "-",
        )
    problems = Text(
        "\n".join(f"• {p}" for p in status["problems"]) or "none",
        style="yellow" if status["problems"] else "green",
    )
    return Group(Panel(head, title="etl status"), per_symbol, Panel(problems, title="problems"))
