"""The ``etl`` command. Every ``just`` recipe is a thin call of it.

Global options (before the command) override the environment and ``etl.toml``::

    etl --interval-s 1 --symbols BTCUSDT,ETHUSDT collect --polls 10
"""

from __future__ import annotations

import signal
import sys
import traceback
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from etl.config import Settings, load_settings
from etl.console import error
from etl.errors import ConfigError, EtlError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Binance price pipeline: collect ticks, roll them up hourly, keep years of history.",
)
db_app = typer.Typer(no_args_is_help=True, help="Warehouse schema.")
app.add_typer(db_app, name="db")

_SETTING_OPTIONS = (
    "symbols",
    "interval_s",
    "binance_url",
    "data_dir",
    "sqlite_path",
    "pg_dsn",
    "raw_retention_h",
    "hourly_retention_d",
    "weight_budget",
)


def parse_time(text: str | None, name: str = "time") -> int | None:
    """ISO 8601 to epoch milliseconds; a naive time means UTC.

    >>> parse_time("2026-01-05T00:00:00Z")
    1767571200000
    >>> parse_time("2026-01-05")
    1767571200000
    """
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise ConfigError(
            f"--{name}: {text!r} is not an ISO 8601 time; use e.g. 2026-01-05T00:00:00Z"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def settings_of(ctx: typer.Context, **extra: Any) -> Settings:
    obj = ctx.find_root().obj or {}
    return load_settings({**obj.get("overrides", {}), **extra}, config_path=obj.get("config"))


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[str | None, typer.Option(help="Path of etl.toml (or ETL_CONFIG).")] = None,
    symbols: Annotated[str | None, typer.Option(help="Comma list of symbols.")] = None,
    interval_s: Annotated[str | None, typer.Option(help="Poll interval, seconds.")] = None,
    binance_url: Annotated[str | None, typer.Option(help="Exchange REST base URL.")] = None,
    data_dir: Annotated[
        str | None, typer.Option(help="Where staging and embedded PG live.")
    ] = None,
    sqlite_path: Annotated[str | None, typer.Option(help="Staging database file.")] = None,
    pg_dsn: Annotated[str | None, typer.Option(help="PostgreSQL URI (default: embedded).")] = None,
    raw_retention_h: Annotated[str | None, typer.Option(help="Hours of staged ticks kept.")] = None,
    hourly_retention_d: Annotated[
        str | None, typer.Option(help="Days of hourly bars kept.")
    ] = None,
    weight_budget: Annotated[str | None, typer.Option(help="Fraction of the weight limit.")] = None,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    values = locals()
    ctx.obj = {
        "config": config,
        "debug": debug,
        "overrides": {k: values[k] for k in _SETTING_OPTIONS if values[k] is not None},
    }


@app.command()
def collect(
    ctx: typer.Context,
    polls: Annotated[int | None, typer.Option(min=1, help="Stop after N polls.")] = None,
    duration: Annotated[float | None, typer.Option(min=0, help="Stop after S seconds.")] = None,
    no_rollup: Annotated[
        bool, typer.Option("--no-rollup", help="Do not roll up closed hours.")
    ] = False,
    backfill: Annotated[
        bool,
        typer.Option(
            "--backfill", help="Fill the gap since the last tick from klines, in the background."
        ),
    ] = False,
) -> None:
    """Poll the exchange into the SQLite staging store until stopped (Ctrl-C / SIGTERM)."""
    from etl.collector import Collector

    collector = Collector(settings_of(ctx), rollup=not no_rollup, backfill=backfill)
    collector.run(polls=polls, duration=duration)


@app.command()
def demo(
    ctx: typer.Context,
    polls: Annotated[int | None, typer.Option(min=1, help="Stop after N polls.")] = None,
    duration: Annotated[float | None, typer.Option(min=0, help="Stop after S seconds.")] = None,
    exchange_symbols: Annotated[int, typer.Option(min=1, help="Symbols the fake serves.")] = 50,
) -> None:
    """Collect offline from the built-in fake exchange at a 1 s interval (data in <data_dir>/demo)."""
    from etl.collector import Collector
    from etl.fake_exchange import FakeExchange

    base = settings_of(ctx)
    with FakeExchange(max(exchange_symbols, len(base.symbols)), statuses=None) as exchange:
        for symbol in base.symbols:
            exchange.set_status(symbol, "TRADING")
        settings = settings_of(
            ctx,
            binance_url=exchange.url,
            interval_s=ctx.find_root().obj["overrides"].get("interval_s", "1"),
            data_dir=str(base.data_dir / "demo"),
            sqlite_path=str(base.data_dir / "demo" / "ticks.sqlite3"),
        )
        Collector(settings).run(polls=polls, duration=duration)


@app.command()
def rollup(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option(help="First hour (ISO 8601, UTC if naive).")] = None,
    until: Annotated[str | None, typer.Option(help="End of the range (exclusive).")] = None,
    rerun: Annotated[bool, typer.Option(help="Roll up committed hours again.")] = False,
) -> None:
    """Roll up closed hours with staged ticks into PostgreSQL; then daily bars, purge, retention."""
    from etl.rollup_job import run_rollup

    settings = settings_of(ctx)
    run_rollup(
        settings,
        since_ms=parse_time(since, "since"),
        until_ms=parse_time(until, "until"),
        rerun=rerun,
    )


@db_app.command("init")
def db_init(ctx: typer.Context) -> None:
    """Apply sql/ (idempotent); also done at the start of every rollup."""
    from etl.console import console
    from etl.warehouse import open_warehouse

    settings = settings_of(ctx)
    with open_warehouse(settings) as wh:
        applied = wh.apply_schema()
        parts = wh.query(
            "SELECT c.relname AS partition FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'metrics_hourly'::regclass ORDER BY 1"
        )
    console.print(f"applied {', '.join(applied)} to {wh.label}")
    console.print(f"hourly partitions: {', '.join(parts['partition'].to_list())}")


@app.command()
def retention(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option(help="List what would be dropped; change nothing.")
    ] = False,
) -> None:
    """Apply (or list) the retention policy for hourly partitions."""
    from etl.console import console, table
    from etl.warehouse import open_warehouse

    settings = settings_of(ctx)
    with open_warehouse(settings) as wh:
        wh.apply_schema()
        result = wh.retention(settings.hourly_retention_d, dry_run=dry_run)
    title = f"hourly partitions past {settings.hourly_retention_d:g} days"
    console.print(table(title, result.columns, result.rows()))
    for row in result.filter(result["action"] == "kept").iter_rows(named=True):
        start, end = row["range_start"].date(), row["range_end"].date()
        console.print(
            f"[yellow]warning:[/] {row['partition']} kept: {row['missing_days']} symbol-day(s) "
            f"missing from metrics_daily; recompute them with "
            f"SELECT etl_refresh_daily('{start}', '{end}');"
        )
    if result.is_empty():
        console.print("nothing is past retention")


@app.command()
def status(
    ctx: typer.Context,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """One screen for the whole pipeline: staging, exchange weight and ban, warehouse, gaps."""
    import json

    from etl.console import console
    from etl.status import gather, render

    report = gather(settings_of(ctx))
    if json_output:
        print(json.dumps(report, indent=2, default=str))
    else:
        console.print(render(report))


@app.command()
def backfill(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option(help="First hour (default: 7 days ago).")] = None,
    until: Annotated[
        str | None, typer.Option(help="End (exclusive; default: last closed hour).")
    ] = None,
    symbols: Annotated[str | None, typer.Option(help="Comma list (default: configured).")] = None,
) -> None:
    """Fill hours without a bar (or with thin coverage) from 1m klines (source = 'kline')."""
    from etl.backfill import run_backfill
    from etl.config import load_settings as _load

    settings = settings_of(ctx)
    chosen = _load({"symbols": symbols}, env={}).symbols if symbols else None
    run_backfill(
        settings,
        since_ms=parse_time(since, "since"),
        until_ms=parse_time(until, "until"),
        symbols=chosen,
    )


@app.command()
def reconcile(
    ctx: typer.Context,
    hours: Annotated[int, typer.Option(min=1, max=1000, help="Closed hours to compare.")] = 24,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Compare recent poll bars with the exchange's 1h candles (deviations in basis points)."""
    import json

    from etl.console import console, table
    from etl.reconcile import run_reconcile, summarize

    result = run_reconcile(settings_of(ctx), hours=hours)
    if json_output:
        print(json.dumps(result.to_dicts(), indent=2, default=str))
        return
    if result.is_empty():
        console.print(f"no poll bars to compare in the last {hours} hour(s)")
        return
    per_symbol = summarize(result)
    per_symbol = per_symbol.rename(
        {
            c: c.replace("_mean_abs_bps", " avg").replace("_max_abs_bps", " max")
            for c in per_symbol.columns
        }
    )
    rows = [[f"{v:.2f}" if isinstance(v, float) else v for v in row] for row in per_symbol.rows()]
    console.print(
        table(
            f"poll bars vs 1h klines, last {hours} h (|deviation| in bps)", per_symbol.columns, rows
        )
    )


@app.command("seed-demo")
def seed_demo_command(
    ctx: typer.Context,
    days: Annotated[int, typer.Option(min=1, max=3650, help="Days of history.")] = 60,
    force: Annotated[bool, typer.Option(help="Seed even if bars exist in the range.")] = False,
) -> None:
    """Generate realistic history offline into the configured warehouse, through the rollup."""
    from etl.demo_history import seed_demo

    seed_demo(settings_of(ctx), days=days, force=force)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one clear line and an exit code for every expected failure."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    # SIGTERM exits like Ctrl-C: finally blocks run, the embedded server's handle is released.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        app(args=argv, prog_name="etl", standalone_mode=False)
    except EtlError as exc:
        if debug:
            traceback.print_exc()
        error(str(exc))
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        error("interrupted")
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors: unknown option, bad value, ...
        error(exc.format_message() if hasattr(exc, "format_message") else str(exc))
        sys.exit(getattr(exc, "exit_code", 2) or 2)
    except Exception as exc:  # the last line of defence: one line, no traceback unless asked
        if debug:
            traceback.print_exc()
        error(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)")
        sys.exit(1)
