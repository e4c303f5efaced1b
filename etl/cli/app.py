"""The ``etl`` command. Every ``just`` recipe is a thin call of it, and every command a thin call
of one library function; this module parses, calls, and draws the result.

Every setting is an option before the command and after it (``etl --symbols BTCUSDT collect`` and
``etl collect --symbols BTCUSDT`` mean the same), generated from the declarations in
``etl.config``::

    etl --interval-s 1 collect --symbols BTCUSDT,ETHUSDT --polls 10
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from etl import logs, redact, shutdown
from etl.config import Settings, load_settings, setting_fields, shown_default
from etl.errors import DependencyError, EtlError, ExitCode
from etl.hours import parse_range
from etl.imports import without

# click, not typer: typer's current release builds a pydantic validator for every option, which
# costs 80 ms of every command's start (docs/performance.md); the options here need none of it.
_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
_SETTINGS = {spec.name for spec in setting_fields()}
_EPILOG = "Every setting (--symbols, --data-dir, --pg-dsn, ...) is taken here too: see etl --help."


def _setting_options(*, hidden: bool = False) -> list[click.Option]:
    """One ``--name`` option per declared setting, with its metavar, env var and default.
    ``hidden``: taken, but not listed in the help (a command's help points to ``etl --help``).
    The value stays text: :func:`etl.config.load_settings` parses and checks it."""
    options = []
    for spec in setting_fields():
        meta = spec.metadata
        options.append(
            click.Option(
                [f"--{spec.name.replace('_', '-')}", spec.name],
                metavar=meta["metavar"],
                help=f"{meta['help'][0].upper()}{meta['help'][1:]}. "
                f"[env: {meta['env']}; default: {shown_default(spec)}]",
                hidden=hidden,
            )
        )
    return options


def _common_options() -> list[click.Option]:
    """``--config`` and ``--debug``: taken after a command's name as well as before it."""
    return [
        click.Option(
            ["--config"],
            metavar="FILE",
            help="Path of etl.toml. [env: ETL_CONFIG; default: ./etl.toml]",
        ),
        click.Option(["--debug"], is_flag=True, help="Show tracebacks (passwords still masked)."),
    ]


def command(
    group: click.Group | None = None, name: str | None = None, *, passthrough: bool = False
) -> Callable[[Callable], click.Command]:
    """Register ``func(ctx, **its options)`` as a command that also takes every setting (and
    ``--config``, ``--debug``) after its name. ``passthrough``: options the command does not
    know are handed on (``ctx.args``)."""

    def register(func: Callable) -> click.Command:
        own = list(reversed(getattr(func, "__click_params__", [])))

        def callback(**kwargs: Any) -> Any:
            ctx = click.get_current_context()
            root = ctx.find_root().obj
            given = {k: kwargs.pop(k) for k in list(kwargs) if k in _SETTINGS}
            root["overrides"].update({k: v for k, v in given.items() if v is not None})
            config, debug = kwargs.pop("config", None), kwargs.pop("debug", False)
            root["config"] = config if config is not None else root["config"]
            root["debug"] = root["debug"] or debug
            return func(ctx, **kwargs)

        settings = {"allow_extra_args": True, "ignore_unknown_options": True} if passthrough else {}
        cmd = click.Command(
            name or func.__name__.replace("_", "-"),
            callback=callback,
            params=[*own, *_common_options(), *_setting_options(hidden=True)],
            help=func.__doc__,
            epilog=_EPILOG,
            context_settings=settings,
        )
        (group or app).add_command(cmd)
        return cmd

    return register


def settings_of(ctx: click.Context, **extra: Any) -> Settings:
    """The resolved settings for this command; sets up logging in the chosen format."""
    obj = ctx.find_root().obj
    settings = load_settings({**obj["overrides"], **extra}, config_path=obj["config"])
    logs.setup(settings.log_format)
    return settings


def _print(*renderables: Any) -> None:
    """A command's result: drawn for people; under ``--log-format json`` one JSON log line per
    part, so every line on standard output parses; in plain logs (piped, a rollup child's
    rollup.log) its lines and summaries as timestamped log lines, tables drawn."""
    from rich.text import Text

    from etl.console import console, records

    fmt = logs.active()
    log = logging.getLogger("etl.result")
    for item in renderables:
        if fmt == "json":
            for message, fields in records(item):
                log.info(message, extra={logs.FIELDS: fields})
            continue
        if fmt == "plain":
            summary = [(m, f.get("result")) for m, f in records(item)]
            if all(result is not None for _, result in summary) or isinstance(item, str | Text):
                for message, result in summary:
                    said = ", ".join(f"{k} {v}" for k, v in (result or {}).items())
                    log.info(f"{message}: {said}" if said else message)
                continue
        # A line stays one line, whatever the width (to copy, to grep); boxes and tables wrap
        # their text inside themselves, never cutting it.
        console.print(item, soft_wrap=isinstance(item, str | Text))


def _root(config: str | None, debug: bool, show_version: bool, **settings: Any) -> None:
    ctx = click.get_current_context()
    ctx.obj = {
        "config": config,
        "debug": debug,
        "overrides": {k: v for k, v in settings.items() if v is not None},
    }
    if show_version:
        from etl.jobs.versions import versions

        # Plain lines, whatever the log format: scripts read `etl --version | head -1`.
        print("\n".join(versions(settings_of(ctx)).lines()))
        ctx.exit(0)
    if ctx.invoked_subcommand is None:
        print(ctx.get_help())
        ctx.exit(0)


app = click.Group(
    "etl",
    callback=_root,
    invoke_without_command=True,
    context_settings=_CONTEXT,
    params=[
        *_common_options(),
        click.Option(
            ["--version", "show_version"],
            is_flag=True,
            help="The package's version, and the warehouse's schema version.",
        ),
        *_setting_options(),
    ],
    help="Binance price pipeline: collect ticks, roll them up hourly, keep years of history.\n\n"
    "Settings come from flags (before or after the command), ETL_* variables, etl.toml, "
    "then defaults. Exit codes: 0 ok, 1 degraded (status), 2 bad configuration or input, "
    "3 a dependency unavailable.",
)
db_app = click.Group("db", no_args_is_help=True, help="The warehouse.")
app.add_command(db_app)
export_app = click.Group(
    "export",
    no_args_is_help=True,
    help="Bars of any width and archived ticks, as Parquet, CSV or freqtrade files "
    "(docs/archive.md).",
)
app.add_command(export_app)


# -- commands ----------------------------------------------------------------------------------

polls_option = click.option(
    "--polls", type=click.IntRange(min=1), metavar="N", help="Stop after N polls."
)
duration_option = click.option(
    "--duration",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Stop after this many seconds.",
)
since_option = click.option(
    "--since",
    metavar="TIME",
    help="First hour, ISO 8601 (UTC if no zone), e.g. 2026-01-05T00:00Z.",
)
until_option = click.option(
    "--until", metavar="TIME", help="End of the range (exclusive), ISO 8601."
)
json_option = click.option("--json", "json_output", is_flag=True, help="Print JSON for scripts.")
use_pg_dsn_option = click.option(
    "--use-pg-dsn",
    is_flag=True,
    help="Write demo data into the configured ETL_PG_DSN too (by default a demo keeps its "
    "own embedded server in <data_dir>/demo).",
)


def _collected(stats: Any, polls: int | None) -> None:
    """``--polls N`` that stored nothing failed: exit 3 naming the last error."""
    if polls is not None and stats.ticks == 0:
        raise DependencyError(
            f"no poll stored anything in {polls} tries"
            + (f" (last: {stats.last_error})" if stats.last_error else "")
        )


@command()
@polls_option
@duration_option
@click.option("--no-rollup", is_flag=True, help="Do not roll up hours as they close.")
@click.option(
    "--backfill",
    is_flag=True,
    help="Fill the gap since the last tick from klines, in the background.",
)
def collect(
    ctx: click.Context, polls: int | None, duration: float | None, no_rollup: bool, backfill: bool
) -> None:
    """Collect prices into the SQLite staging store until stopped (Ctrl-C / SIGTERM): poll the
    ticker every interval (the default), or with --source trades store every aggregate trade
    from the exchange's streams. Each hour is rolled up as it closes.

    Example: etl collect --symbols BTCUSDT,ETHUSDT --interval-s 5

    Example: etl collect --source trades --symbols BTCUSDT
    """
    from etl.collect.loop import Collector
    from etl.jobs.backfill import gap_filler

    settings = settings_of(ctx)
    filler = gap_filler(settings) if backfill else None
    with shutdown.own_terminal():
        stats = Collector(settings, rollup=not no_rollup, gap_filler=filler).run(
            polls=polls, duration=duration
        )
    _collected(stats, polls)


@command()
@polls_option
@duration_option
@click.option(
    "--exchange-symbols",
    type=click.IntRange(min=5),
    default=200,
    show_default=True,
    metavar="N",
    help="Symbols the fake exchange lists: real spot pairs first, then made-up ones.",
)
@use_pg_dsn_option
def demo(
    ctx: click.Context,
    polls: int | None,
    duration: float | None,
    exchange_symbols: int,
    use_pg_dsn: bool,
) -> None:
    """Collect offline from the built-in fake exchange into <data_dir>/demo, at a 1 s interval
    (or, with --source trades, every trade from its streams). The exchange's URLs from the
    configuration are not used: a demo never leaves 127.0.0.1. Its prices go on from the demo
    history's last closes (`etl seed-demo`), if there is one.

    Example: etl demo --duration 60

    Example: etl demo --source trades --duration 60
    """
    from dataclasses import replace

    from etl.cli import render
    from etl.collect.loop import Collector
    from etl.exchange.fake.rest import FakeExchange
    from etl.jobs.demo_history import last_closes

    overrides = ctx.find_root().obj["overrides"]
    chosen = settings_of(ctx, interval_s=overrides.get("interval_s", "1"))
    base = chosen.for_demo(keep_pg_dsn=use_pg_dsn)
    trades = base.source == "trades"
    # The fake lists real symbols, not whatever is configured: a typo is caught here too.
    with FakeExchange(exchange_symbols, ws=trades, levels=last_closes(base)) as exchange:
        settings = replace(
            base,
            binance_url=exchange.url,
            ws_url=exchange.ws_url if trades else exchange.url.replace("http", "ws", 1),
        )
        settings.paths.mark_demo("demo")
        with shutdown.own_terminal():
            stats = Collector(settings).run(polls=polls, duration=duration)
    _print(render.demo_done(chosen, settings))
    _collected(stats, polls)


@command()
@since_option
@until_option
@click.option("--rerun", is_flag=True, help="Roll up committed hours again.")
@click.option(
    "--from-archive",
    is_flag=True,
    help="Make the bars of the archived hours in --since .. --until again from the archive "
    "(ETL_ARCHIVE_DIR), every file checked against its sha256 first.",
)
def rollup(
    ctx: click.Context, since: str | None, until: str | None, rerun: bool, from_archive: bool
) -> None:
    """Roll up closed hours with staged ticks into PostgreSQL; then archive (if ETL_ARCHIVE_DIR
    is set), purge, retention.

    Example: etl rollup --since 2026-01-05T00:00Z --until 2026-01-06T00:00Z

    Example: etl rollup --from-archive --since 2026-01-05 --until 2026-01-06
    """
    from etl.cli import render
    from etl.console import BarProgress
    from etl.jobs.rollup import run_rollup

    lo, hi = parse_range(since, until)
    if from_archive:
        from etl.jobs.rebuild import run_rebuild

        rebuilt = run_rebuild(settings_of(ctx), since_ms=lo, until_ms=hi, progress=BarProgress())
        _print(*render.rebuild(rebuilt))
        return
    result = run_rollup(
        settings_of(ctx), since_ms=lo, until_ms=hi, rerun=rerun, progress=BarProgress()
    )
    _print(*render.rollup(result))


@command()
@json_option
def status(ctx: click.Context, json_output: bool) -> None:
    """The whole pipeline on one screen, and a health check for supervisors.

    Exit 0 healthy, 1 degraded (problems listed), 3 a part cannot be reached.

    Example: etl status --json
    """
    from etl.cli import render
    from etl.jobs.status import gather

    report = gather(settings_of(ctx))
    if json_output:
        print(json.dumps(report.to_json(), indent=2))
    elif logs.active() == "json":  # the report's own fields, not a drawing of boxes
        logging.getLogger("etl.result").info(
            f"status: {report.health}", extra={logs.FIELDS: report.to_json()}
        )
    else:
        _print(render.status(report))
    ctx.exit(report.exit_code)


@command()
@since_option
@until_option
def backfill(ctx: click.Context, since: str | None, until: str | None) -> None:
    """Fill hours without a bar (or with a thin one) from 1-minute klines (source = 'kline').

    Example: etl backfill --since 2026-01-05 --symbols BTCUSDT
    """
    from etl.cli import render
    from etl.console import BarProgress
    from etl.jobs.backfill import run_backfill

    lo, hi = parse_range(since, until)
    result = run_backfill(settings_of(ctx), since_ms=lo, until_ms=hi, progress=BarProgress())
    _print(*render.backfill(result))


@command()
@click.option(
    "--hours",
    type=click.IntRange(1, 1000),
    default=24,
    show_default=True,
    metavar="N",
    help="Closed hours to compare.",
)
@since_option
@until_option
@json_option
def reconcile(
    ctx: click.Context, hours: int, since: str | None, until: str | None, json_output: bool
) -> None:
    """Compare poll and trade bars with the exchange's 1h candles (deviations in basis points).

    Example: etl reconcile --hours 48
    """
    from etl.cli import render
    from etl.jobs.reconcile import run_reconcile, summarize

    lo, hi = parse_range(since, until)
    result = run_reconcile(settings_of(ctx), hours=hours, since_ms=lo, until_ms=hi)
    if json_output:
        print(json.dumps(result.to_dicts(), indent=2, default=str))
        return
    span = f"{since} .. {until or 'now'}" if since else f"the last {hours} h"
    per_symbol = summarize(result) if not result.is_empty() else result
    _print(render.reconcile(result, per_symbol, span))


@command()
@click.option("--dry-run", is_flag=True, help="List what would be dropped; change nothing.")
def retention(ctx: click.Context, dry_run: bool) -> None:
    """Apply (or list) the retention policy for hourly partitions.

    Example: etl retention --dry-run
    """
    from etl.cli import render
    from etl.jobs.retention import run_retention

    _print(*render.retention(run_retention(settings_of(ctx), dry_run=dry_run)))


@command(name="seed-demo")
@click.option(
    "--days",
    type=click.IntRange(1, 3650),
    default=60,
    show_default=True,
    metavar="N",
    help="Days of history.",
)
@click.option("--force", is_flag=True, help="Seed even if bars exist in the range.")
@use_pg_dsn_option
def seed_demo(ctx: click.Context, days: int, force: bool, use_pg_dsn: bool) -> None:
    """Generate realistic history offline into <data_dir>/demo, through the real rollup.

    Example: etl seed-demo --days 14
    """
    from etl.cli import render
    from etl.jobs.demo_history import seed_demo as seed
    from etl.jobs.rollup import run_rollup

    home = settings_of(ctx)
    settings = home.for_demo(keep_pg_dsn=use_pg_dsn)
    result = seed(settings, run_rollup, days=days, force=force)
    _print(*render.rollup(result), render.seeded(home, settings))


needed_since_option = click.option(
    "--since",
    required=True,
    metavar="TIME",
    help="Start, ISO 8601 (UTC if no zone), e.g. 2026-01-05T00:00Z.",
)
out_option = click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("export"),
    show_default=True,
    metavar="DIR",
    help="Folder for the files (made if need be).",
)


@command(group=export_app, name="bars")
@needed_since_option
@until_option
@click.option(
    "--width",
    default="1h",
    show_default=True,
    metavar="1m|5m|15m|1h|4h|1d|1w",
    help="Bar width: 1h and wider from the hourly bars, below 1h from archived trades.",
)
@click.option(
    "--format",
    "fmt",
    default="parquet",
    show_default=True,
    metavar="parquet|csv|freqtrade",
    help="freqtrade: its download-data feather files (BTC_USDT-1h.feather) for --datadir.",
)
@out_option
def export_bars(
    ctx: click.Context, since: str, until: str | None, width: str, fmt: str, out: Path
) -> None:
    """Bars of --symbols from --since to --until (widened to whole bars), a file per symbol.

    Example: etl export bars --symbols BTCUSDT,ETHUSDT --since 2026-01-01 --width 4h --format freqtrade --out user_data/data/binance
    """
    from etl.cli import render
    from etl.console import BarProgress
    from etl.hours import now_ms
    from etl.jobs.export import export_bars as run

    settings = settings_of(ctx)
    lo, hi = parse_range(since, until)
    assert lo is not None
    result = run(
        settings,
        symbols=settings.symbols,
        since_ms=lo,
        until_ms=hi if hi is not None else now_ms(),
        width=width,
        fmt=fmt,
        out=out,
        progress=BarProgress(),
    )
    _print(*render.exported(result))


@command(group=export_app, name="ticks")
@needed_since_option
@until_option
@click.option(
    "--of",
    default="all",
    show_default=True,
    metavar="poll|trade|all",
    help="Which ticks: poll samples, trades.",
)
@click.option("--format", "fmt", default="parquet", show_default=True, metavar="parquet|csv")
@out_option
def export_ticks(
    ctx: click.Context, since: str, until: str | None, of: str, fmt: str, out: Path
) -> None:
    """The archived ticks of --symbols from --since to --until, a file per source (every
    archive file checked against its sha256 first).

    Example: etl export ticks --symbols BTCUSDT --since 2026-01-05 --until 2026-01-06 --format csv
    """
    from etl.cli import render
    from etl.console import BarProgress
    from etl.errors import ConfigError
    from etl.hours import now_ms
    from etl.jobs.export import export_ticks as run

    if of not in ("poll", "trade", "all"):
        raise ConfigError(f"--of {of!r} must be poll, trade or all")
    settings = settings_of(ctx)
    lo, hi = parse_range(since, until)
    assert lo is not None
    result = run(
        settings,
        symbols=settings.symbols,
        since_ms=lo,
        until_ms=hi if hi is not None else now_ms(),
        sources=("poll", "trade") if of == "all" else (of,),
        fmt=fmt,
        out=out,
        progress=BarProgress(),
    )
    _print(*render.ticks_exported(result))


@command(group=db_app, name="init")
def db_init(ctx: click.Context) -> None:
    """Apply the sql/ files not applied yet (every rollup does it too); make partitions ahead.

    Example: etl db init
    """
    from etl.cli import render
    from etl.jobs.db_access import init_warehouse

    _print(*render.db_init(init_warehouse(settings_of(ctx))))


@command(group=db_app, name="shell")
@click.argument("psql_args", nargs=-1, metavar="[-- PSQL_ARGS...]")
def db_shell(ctx: click.Context, psql_args: tuple[str, ...]) -> None:
    """psql on the configured warehouse, embedded or external (exits with psql's exit code).

    The embedded server is started for the session and stopped after it (unless another etl
    process uses it); its own psql is used. For an external server, psql comes from PATH.

    Example: etl db shell -- -c 'SELECT * FROM latest_price'
    """
    from etl.jobs.db_access import run_shell

    ctx.exit(run_shell(settings_of(ctx), list(psql_args)))


@command(group=db_app, name="url")
@click.option("--show-password", is_flag=True, help="Print the password instead of ***.")
def db_url(ctx: click.Context, show_password: bool) -> None:
    """Print the warehouse's connection URI (its password masked unless --show-password).

    The embedded server's URI works while it runs: keep it up with `etl db serve`.

    Example: psql "$(etl db url --show-password)"
    """
    from etl.jobs.db_access import warehouse_url

    url = warehouse_url(settings_of(ctx), show_password=show_password)
    # Asked for, the password is shown: past the scrubbing of standard output.
    out = redact.unscrubbed(sys.stdout) if show_password else sys.stdout
    out.write(url + "\n")
    out.flush()


@command(group=db_app, name="serve")
def db_serve(ctx: click.Context) -> None:
    """Keep the embedded PostgreSQL up until Ctrl-C (or SIGTERM), for psql and other clients.

    Example: etl db serve   (then, in another terminal: psql "$(etl db url)")
    """
    from etl.cli import render
    from etl.jobs.db_access import serve

    def ready(uri: str) -> None:
        _print(render.serving(uri))

    with shutdown.until_signal() as stop:
        serve(settings_of(ctx), ready, stop)
    _print("stopped serving the embedded PostgreSQL")


@command()
@click.argument("dest", type=click.Path(path_type=Path), metavar="DEST")
@json_option
def backup(ctx: click.Context, dest: Path, json_output: bool) -> None:
    """Back up the staging file and the warehouse into DEST (a new or empty directory) while
    the collector keeps running.

    DEST gets ticks.sqlite3 (SQLite online backup API), warehouse.dump (pg_dump -Fc) and
    manifest.json (versions, identity, row counts, sha256 of each file). Rollups wait while
    it runs; polls do not.

    Example: etl backup /backups/etl-$(date +%F)
    """
    from etl.cli import render
    from etl.jobs.backup import run_backup

    def waiting() -> None:  # on stderr: --json output stays one document
        sys.stderr.write("a rollup is running; the backup starts when it is done\n")

    result = run_backup(settings_of(ctx), dest, on_wait=waiting)
    if json_output:
        print(json.dumps({"dest": str(result.dest), **result.manifest}, indent=2))
    else:
        _print(*render.backup(result))


@command()
@click.argument("src", type=click.Path(path_type=Path), metavar="SRC")
def restore(ctx: click.Context, src: Path) -> None:
    """Restore a backup (SRC, a directory written by etl backup) into an empty data dir (and its embedded server, or ETL_PG_DSN's empty
    database). Refuses a data dir that is not empty.

    Example: etl restore /backups/etl-2026-01-05 --data-dir /srv/etl/data
    """
    from etl.cli import render
    from etl.jobs.backup import run_restore

    _print(*render.restore(run_restore(settings_of(ctx), src)))


@command(passthrough=True)
@click.option("--demo", "demo_data", is_flag=True, help="Open the demo data (<data_dir>/demo).")
@click.option(
    "--execute",
    is_flag=True,
    help="Run every notebook headless and write it as HTML (no JupyterLab).",
)
@click.option(
    "--html",
    type=click.Path(path_type=Path),
    metavar="DIR",
    help="Where --execute writes the HTML [default: <data_dir>/notebooks/html]",
)
def notebook(ctx: click.Context, demo_data: bool, execute: bool, html: Path | None) -> None:
    """JupyterLab on the notebooks, reading this configuration's warehouse (or the demo's).

    The notebooks that ship with etl are copied to <data_dir>/notebooks on first use (your
    edits there are kept). Options it does not know go to JupyterLab (`--port 8899
    --no-browser`).

    Example: etl notebook --demo --no-browser

    Example: etl notebook --execute --demo --html /tmp/charts
    """
    from etl.cli import render
    from etl.jobs.jupyter import execute_notebooks, lab_command

    if execute:
        done = execute_notebooks(settings_of(ctx), demo=demo_data, html_dir=html)
        _print(*render.executed(done))
        return

    lab = lab_command(settings_of(ctx), demo=demo_data, extra=list(ctx.args))
    if lab.copied:
        _print(render.notebooks_copied(lab))
    os.execve(lab.argv[0], lab.argv, lab.env)


def _without_pandas() -> None:
    """No command uses pandas or NumPy, but pyarrow imports them when they are installed (the
    dev extras have them): pandas as soon as anything loads ``pyarrow.dataset`` (0.15 s), NumPy
    with pyarrow itself (0.04 s). Looking uninstalled, pyarrow does without them, exactly as in
    a plain install, which has neither."""
    without("pandas")
    without("numpy")


def main(argv: list[str] | None = None) -> None:
    """Entry point: one clear line and an exit code for every expected failure."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    # Every password this run may meet is known before anything is printed, and all output
    # is scrubbed of them: errors, tracebacks, logs, results, a rollup child's log.
    redact.remember_invocation(argv)
    redact.install()
    _without_pandas()
    shutdown.install()

    def fail(message: str, code: int) -> None:
        from etl.console import error

        if debug:
            sys.stderr.write(redact.scrub(traceback.format_exc()))
        error(redact.scrub(message))
        sys.exit(code)

    try:
        code = app(args=argv, prog_name="etl", standalone_mode=False)
        if isinstance(code, int) and code:  # ctx.exit(code), returned without standalone mode
            sys.exit(code)
    except EtlError as exc:
        fail(str(exc), exc.exit_code)
    except (KeyboardInterrupt, click.Abort):
        fail("interrupted", ExitCode.INTERRUPTED)
    except BrokenPipeError:  # `etl status | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)  # as a shell reports a pipeline's writer ended by SIGPIPE
    except click.exceptions.NoArgsIsHelpError as exc:  # `etl db`: what it has, not an error
        print(exc.ctx.get_help())
    except click.ClickException as exc:  # usage errors: unknown option, bad value, ...
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        where = getattr(getattr(exc, "ctx", None), "command_path", None) or "etl"
        fail(f"{message} (see `{where} --help`)", getattr(exc, "exit_code", 0) or ExitCode.CONFIG)
    except Exception as exc:  # the last line of defence: one line, no traceback unless asked
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        fail(
            f"unexpected {type(exc).__name__}: {first} (run with --debug for the traceback)",
            ExitCode.UNEXPECTED,
        )
