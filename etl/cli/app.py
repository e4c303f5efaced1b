"""The ``etl`` command. Every ``just`` recipe is a thin call of it, and every command a thin call
of one library function; this module parses, calls, and draws the result.

Every setting is an option before the command and after it (``etl --symbols BTCUSDT collect`` and
``etl collect --symbols BTCUSDT`` mean the same), generated from the declarations in
``etl.config``::

    etl --interval-s 1 collect --symbols BTCUSDT,ETHUSDT --polls 10
"""

from __future__ import annotations

import functools
import importlib.abc
import inspect
import json
import logging
import sys
import traceback
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from etl import logs, shutdown
from etl.config import Settings, load_settings, mask_dsn, setting_fields, shown_default
from etl.errors import DependencyError, EtlError, ExitCode
from etl.hours import parse_range

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Binance price pipeline: collect ticks, roll them up hourly, keep years of history.\n\n"
    "Settings come from flags (before or after the command), ETL_* variables, etl.toml, "
    "then defaults. Exit codes: 0 ok, 1 degraded (status), 2 bad configuration or input, "
    "3 a dependency unavailable.",
)
db_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="The warehouse.")
app.add_typer(db_app, name="db")
export_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Bars of any width and archived ticks, as Parquet, CSV or freqtrade files "
    "(docs/archive.md).",
)
app.add_typer(export_app, name="export")

_SETTINGS = {spec.name for spec in setting_fields()}


def _setting_parameters() -> list[inspect.Parameter]:
    """One ``--name`` option per declared setting, with its metavar, env var and default."""
    params = []
    for spec in setting_fields():
        meta = spec.metadata
        option = typer.Option(
            f"--{spec.name.replace('_', '-')}",
            metavar=meta["metavar"],
            help=f"{meta['help'][0].upper()}{meta['help'][1:]}. "
            f"[env: {meta['env']}; default: {shown_default(spec)}]",
            show_default=False,
            rich_help_panel="Settings",
        )
        params.append(
            inspect.Parameter(
                spec.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[str | None, option],
            )
        )
    return params


def _resolved(func: Callable) -> inspect.Signature:
    """The signature with its annotations evaluated (this module postpones them), options and
    all: typer reads ``Annotated[..., typer.Option(...)]`` objects, not strings."""
    hints = typing.get_type_hints(func, include_extras=True)
    signature = inspect.signature(func)
    return signature.replace(
        parameters=[
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in signature.parameters.values()
        ]
    )


def _common_parameters() -> list[inspect.Parameter]:
    """``--config`` and ``--debug``: taken after a command's name as well as before it."""
    root = _resolved(_root).parameters
    return [root[name].replace(kind=inspect.Parameter.KEYWORD_ONLY) for name in ("config", "debug")]


def command(
    group: typer.Typer = app, name: str | None = None, *, passthrough: bool = False
) -> Callable[[Callable], Callable]:
    """Register a command that also takes every setting as an option after its name.
    ``passthrough``: options the command does not know are handed on (``ctx.args``)."""

    def register(func: Callable) -> Callable:
        signature = _resolved(func)

        @functools.wraps(func)
        def wrapper(ctx: typer.Context, **kwargs: Any) -> Any:
            given = {k: kwargs.pop(k) for k in list(kwargs) if k in _SETTINGS}
            root = ctx.find_root().obj
            root["overrides"].update({k: v for k, v in given.items() if v is not None})
            config, debug = kwargs.pop("config", None), kwargs.pop("debug", False)
            root["config"] = config if config is not None else root["config"]
            root["debug"] = root["debug"] or debug
            return func(ctx, **kwargs)

        parameters = [*signature.parameters.values(), *_common_parameters(), *_setting_parameters()]
        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        extra = {"allow_extra_args": True, "ignore_unknown_options": True} if passthrough else {}
        return group.command(name, context_settings=extra)(wrapper)

    return register


def settings_of(ctx: typer.Context, **extra: Any) -> Settings:
    """The resolved settings for this command; sets up logging in the chosen format."""
    obj = ctx.find_root().obj
    settings = load_settings({**obj["overrides"], **extra}, config_path=obj["config"])
    logs.setup(settings.log_format)
    return settings


def _print(*renderables: Any) -> None:
    """A command's result: drawn for people, or under ``--log-format json`` one JSON log line
    per part, so every line on standard output parses."""
    from etl.console import console, records

    if logs.active() == "json":
        log = logging.getLogger("etl.result")
        for item in renderables:
            for message, fields in records(item):
                log.info(message, extra={logs.FIELDS: fields})
        return
    for item in renderables:
        console.print(item, soft_wrap=True)


def _root(
    ctx: typer.Context,
    config: Annotated[
        str | None,
        typer.Option(
            metavar="FILE", help="Path of etl.toml. [env: ETL_CONFIG; default: ./etl.toml]"
        ),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks (passwords still masked).")
    ] = False,
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", help="The package's version, and the warehouse's schema version."
        ),
    ] = False,
    **settings: Any,
) -> None:
    ctx.obj = {
        "config": config,
        "debug": debug,
        "overrides": {k: v for k, v in settings.items() if v is not None},
    }
    if show_version:
        from etl.cli import render
        from etl.jobs.versions import versions

        _print(*render.versions(versions(settings_of(ctx))))
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        print(ctx.get_help())
        raise typer.Exit(0)


_root_signature = _resolved(_root)
_root.__signature__ = _root_signature.replace(  # type: ignore[attr-defined]
    parameters=[
        *(p for p in _root_signature.parameters.values() if p.kind != p.VAR_KEYWORD),
        *_setting_parameters(),
    ]
)
_root.__annotations__ = {p.name: p.annotation for p in _root.__signature__.parameters.values()}  # type: ignore[attr-defined]
app.callback(invoke_without_command=True)(_root)


# -- commands ----------------------------------------------------------------------------------

Polls = Annotated[int | None, typer.Option(min=1, metavar="N", help="Stop after N polls.")]
Duration = Annotated[
    float | None, typer.Option(min=0, metavar="SECONDS", help="Stop after this many seconds.")
]
Since = Annotated[
    str | None,
    typer.Option(
        metavar="TIME", help="First hour, ISO 8601 (UTC if no zone), e.g. 2026-01-05T00:00Z."
    ),
]
Until = Annotated[
    str | None, typer.Option(metavar="TIME", help="End of the range (exclusive), ISO 8601.")
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
UsePgDsn = Annotated[
    bool,
    typer.Option(
        "--use-pg-dsn",
        help="Write demo data into the configured ETL_PG_DSN too (by default a demo keeps its "
        "own embedded server in <data_dir>/demo).",
    ),
]


def _collected(stats: Any, polls: int | None) -> None:
    """``--polls N`` that stored nothing failed: exit 3 naming the last error."""
    if polls is not None and stats.ticks == 0:
        raise DependencyError(
            f"no poll stored anything in {polls} tries"
            + (f" (last: {stats.last_error})" if stats.last_error else "")
        )


@command()
def collect(
    ctx: typer.Context,
    polls: Polls = None,
    duration: Duration = None,
    no_rollup: Annotated[
        bool, typer.Option("--no-rollup", help="Do not roll up hours as they close.")
    ] = False,
    backfill: Annotated[
        bool,
        typer.Option(
            "--backfill", help="Fill the gap since the last tick from klines, in the background."
        ),
    ] = False,
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
def demo(
    ctx: typer.Context,
    polls: Polls = None,
    duration: Duration = None,
    exchange_symbols: Annotated[
        int,
        typer.Option(
            min=5,
            metavar="N",
            help="Symbols the fake exchange lists: real spot pairs first, then made-up ones.",
        ),
    ] = 200,
    use_pg_dsn: UsePgDsn = False,
) -> None:
    """Collect offline from the built-in fake exchange at a 1 s interval into <data_dir>/demo.

    Example: etl demo --duration 60
    """
    from etl.collect.loop import Collector
    from etl.exchange.fake.rest import FakeExchange

    overrides = ctx.find_root().obj["overrides"]
    # The fake lists real symbols, not whatever is configured: a typo is caught here too.
    with FakeExchange(exchange_symbols, ws=False) as exchange:
        settings = settings_of(
            ctx, binance_url=exchange.url, interval_s=overrides.get("interval_s", "1")
        ).for_demo(keep_pg_dsn=use_pg_dsn)
        with shutdown.own_terminal():
            stats = Collector(settings).run(polls=polls, duration=duration)
    from etl.cli import render

    _print(render.demo_done(settings.data_dir))
    _collected(stats, polls)


@command()
def rollup(
    ctx: typer.Context,
    since: Since = None,
    until: Until = None,
    rerun: Annotated[bool, typer.Option("--rerun", help="Roll up committed hours again.")] = False,
    from_archive: Annotated[
        bool,
        typer.Option(
            "--from-archive",
            help="Make the bars of the archived hours in --since .. --until again from the "
            "archive (ETL_ARCHIVE_DIR), every file checked against its sha256 first.",
        ),
    ] = False,
) -> None:
    """Roll up closed hours with staged ticks into PostgreSQL; then archive (if ETL_ARCHIVE_DIR
    is set), purge, retention.

    Example: etl rollup --since 2026-01-05T00:00Z --until 2026-01-06T00:00Z

    Example: etl rollup --from-archive --since 2026-01-05 --until 2026-01-06
    """
    from etl.cli import render
    from etl.console import BarProgress
    from etl.jobs.rollup import run_rebuild, run_rollup

    lo, hi = parse_range(since, until)
    if from_archive:
        rebuilt = run_rebuild(settings_of(ctx), since_ms=lo, until_ms=hi, progress=BarProgress())
        _print(*render.rebuild(rebuilt))
        return
    result = run_rollup(
        settings_of(ctx), since_ms=lo, until_ms=hi, rerun=rerun, progress=BarProgress()
    )
    _print(*render.rollup(result))


@command()
def status(ctx: typer.Context, json_output: Json = False) -> None:
    """The whole pipeline on one screen, and a health check for supervisors.

    Exit 0 healthy, 1 degraded (problems listed), 3 a part cannot be reached.

    Example: etl status --json
    """
    from etl.cli import render
    from etl.jobs.status import gather

    report = gather(settings_of(ctx))
    if json_output:
        print(json.dumps(report.to_json(), indent=2))
    else:
        _print(render.status(report))
    raise typer.Exit(report.exit_code)


@command()
def backfill(ctx: typer.Context, since: Since = None, until: Until = None) -> None:
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
def reconcile(
    ctx: typer.Context,
    hours: Annotated[
        int, typer.Option(min=1, max=1000, metavar="N", help="Closed hours to compare.")
    ] = 24,
    since: Since = None,
    until: Until = None,
    json_output: Json = False,
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
def retention(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be dropped; change nothing.")
    ] = False,
) -> None:
    """Apply (or list) the retention policy for hourly partitions.

    Example: etl retention --dry-run
    """
    from etl.cli import render
    from etl.jobs.retention import run_retention

    _print(*render.retention(run_retention(settings_of(ctx), dry_run=dry_run)))


@command(name="seed-demo")
def seed_demo(
    ctx: typer.Context,
    days: Annotated[int, typer.Option(min=1, max=3650, metavar="N", help="Days of history.")] = 60,
    force: Annotated[
        bool, typer.Option("--force", help="Seed even if bars exist in the range.")
    ] = False,
    use_pg_dsn: UsePgDsn = False,
) -> None:
    """Generate realistic history offline into <data_dir>/demo, through the real rollup.

    Example: etl seed-demo --days 14
    """
    from etl.cli import render
    from etl.jobs.demo_history import seed_demo as seed
    from etl.jobs.rollup import run_rollup

    settings = settings_of(ctx).for_demo(keep_pg_dsn=use_pg_dsn)
    result = seed(settings, run_rollup, days=days, force=force)
    _print(*render.rollup(result), render.seeded(settings.masked_dsn, settings.data_dir))


Width = Annotated[
    str,
    typer.Option(
        metavar="1m|5m|15m|1h|4h|1d|1w",
        help="Bar width: 1h and wider from the hourly bars, below 1h from archived trades.",
    ),
]
Out = Annotated[Path, typer.Option(metavar="DIR", help="Folder for the files (made if need be).")]
NeededSince = Annotated[
    str,
    typer.Option(metavar="TIME", help="Start, ISO 8601 (UTC if no zone), e.g. 2026-01-05T00:00Z."),
]


@command(group=export_app, name="bars")
def export_bars(
    ctx: typer.Context,
    since: NeededSince,
    until: Until = None,
    width: Width = "1h",
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            metavar="parquet|csv|freqtrade",
            help="freqtrade: its download-data feather files (BTC_USDT-1h.feather) for --datadir.",
        ),
    ] = "parquet",
    out: Out = Path("export"),
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
def export_ticks(
    ctx: typer.Context,
    since: NeededSince,
    until: Until = None,
    of: Annotated[
        str,
        typer.Option("--of", metavar="poll|trade|all", help="Which ticks: poll samples, trades."),
    ] = "all",
    fmt: Annotated[str, typer.Option("--format", metavar="parquet|csv")] = "parquet",
    out: Out = Path("export"),
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
def db_init(ctx: typer.Context) -> None:
    """Apply the sql/ files not applied yet (every rollup does it too); make partitions ahead.

    Example: etl db init
    """
    from etl.cli import render
    from etl.jobs.db_access import init_warehouse

    _print(*render.db_init(init_warehouse(settings_of(ctx))))


@command(group=db_app, name="shell")
def db_shell(
    ctx: typer.Context,
    psql_args: Annotated[
        list[str] | None,
        typer.Argument(metavar="[-- PSQL_ARGS...]", help="More arguments for psql, after --."),
    ] = None,
) -> None:
    """psql on the configured warehouse, embedded or external (exits with psql's exit code).

    The embedded server is started for the session and stopped after it (unless another etl
    process uses it); its own psql is used. For an external server, psql comes from PATH.

    Example: etl db shell -- -c 'SELECT * FROM latest_price'
    """
    from etl.jobs.db_access import run_shell

    code = run_shell(settings_of(ctx), psql_args or [])
    raise typer.Exit(code)


@command(group=db_app, name="url")
def db_url(
    ctx: typer.Context,
    show_password: Annotated[
        bool, typer.Option("--show-password", help="Print the password instead of ***.")
    ] = False,
) -> None:
    """Print the warehouse's connection URI (its password masked unless --show-password).

    The embedded server's URI works while it runs: keep it up with `etl db serve`.

    Example: psql "$(etl db url --show-password)"
    """
    from etl.jobs.db_access import warehouse_url

    print(warehouse_url(settings_of(ctx), show_password=show_password))


@command(group=db_app, name="serve")
def db_serve(ctx: typer.Context) -> None:
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
def backup(
    ctx: typer.Context,
    dest: Annotated[
        Path, typer.Argument(metavar="DEST", help="A new (or empty) directory for the backup.")
    ],
    json_output: Json = False,
) -> None:
    """Back up the staging file and the warehouse into DEST while the collector keeps running.

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
def restore(
    ctx: typer.Context,
    src: Annotated[Path, typer.Argument(metavar="SRC", help="A directory written by etl backup.")],
) -> None:
    """Restore a backup into an empty data dir (and its embedded server, or ETL_PG_DSN's empty
    database). Refuses a data dir that is not empty.

    Example: etl restore /backups/etl-2026-01-05 --data-dir /srv/etl/data
    """
    from etl.cli import render
    from etl.jobs.backup import run_restore

    _print(*render.restore(run_restore(settings_of(ctx), src)))


@command(passthrough=True)
def notebook(
    ctx: typer.Context,
    demo_data: Annotated[
        bool, typer.Option("--demo", help="Open the demo data (<data_dir>/demo).")
    ] = False,
) -> None:
    """JupyterLab on the notebooks, reading this configuration's warehouse (or the demo's).

    The notebooks that ship with etl are copied to <data_dir>/notebooks on first use (your
    edits there are kept). Options it does not know go to JupyterLab (`--port 8899
    --no-browser`).

    Example: etl notebook --demo --no-browser
    """
    import os

    from etl.cli import render
    from etl.jobs.jupyter import lab_command

    lab = lab_command(settings_of(ctx), demo=demo_data, extra=list(ctx.args))
    if lab.copied:
        _print(render.notebooks_copied(lab))
    os.execve(lab.argv[0], lab.argv, lab.env)


def _scrub(text: str, argv: list[str]) -> str:
    """Mask every DSN password we could know of in a traceback."""
    import os

    candidates = [os.environ.get("ETL_PG_DSN", "")]
    candidates += [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--pg-dsn"]
    candidates += [a.split("=", 1)[1] for a in argv if a.startswith("--pg-dsn=")]
    for dsn in filter(None, candidates):
        text = text.replace(dsn, mask_dsn(dsn))
        if "://" in dsn and "@" in dsn:
            userinfo = dsn.split("://", 1)[1].rpartition("@")[0]
            secret = userinfo.partition(":")[2]
            if len(secret) >= 3:
                text = text.replace(secret, "***")
    return text


class _Absent(importlib.abc.MetaPathFinder):
    """Makes a package look uninstalled to this process."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname == self.name or fullname.startswith(self.name + "."):
            raise ModuleNotFoundError(f"{self.name} is not used by etl", name=fullname)


def _without(name: str) -> None:
    """No command uses pandas, but pyarrow imports it when it is installed (the dev extras have
    it) as soon as ADBC loads ``pyarrow.dataset``: 0.15 s of every command's start. Looking
    uninstalled, pyarrow does without it, exactly as in a plain install."""
    if name not in sys.modules:
        sys.meta_path.insert(0, _Absent(name))


def main(argv: list[str] | None = None) -> None:
    """Entry point: one clear line and an exit code for every expected failure."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    _without("pandas")
    shutdown.install()

    def fail(message: str, code: int) -> None:
        from etl.console import error

        if debug:
            sys.stderr.write(_scrub(traceback.format_exc(), argv))
        error(_scrub(message, argv))
        sys.exit(code)

    try:
        code = app(args=argv, prog_name="etl", standalone_mode=False)
        if isinstance(code, int) and code:  # typer.Exit(code), returned without standalone mode
            sys.exit(code)
    except EtlError as exc:
        fail(str(exc), exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        fail("interrupted", ExitCode.INTERRUPTED)
    except typer.TyperException as exc:  # usage errors: unknown option, bad value, ...
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        fail(f"{message} (see `etl --help`)", getattr(exc, "exit_code", 0) or ExitCode.CONFIG)
    except Exception as exc:  # the last line of defence: one line, no traceback unless asked
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        fail(
            f"unexpected {type(exc).__name__}: {first} (run with --debug for the traceback)",
            ExitCode.UNEXPECTED,
        )
