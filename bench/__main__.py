"""``python -m bench [--part 1|2|3|4|5|6|7|all] [--runs N] [--quick]``: figures and ratios against
baselines measured in the same run.

Parts:

1. collector: per-poll cost against the fake exchange (3,000 symbols) and append throughput;
   baselines ``requests`` + ``sqlite3.executemany``.
2. rollup of one hour of 3,000 symbols at 5 s (2.16 M ticks): in-process ``run_rollup`` vs
   DuckDB's one ``INSERT ... SELECT`` (sqlite + postgres extensions) and vs pandas + psycopg;
   whole process ``etl rollup`` vs a DuckDB child; a 24-hour backlog (about 52 M ticks) through
   ``etl rollup`` (wall time, peak RSS).
3. purge vs collector: the purge of a committed hour of 3,000 symbols at 1 s (10.8 M ticks)
   while another process commits a 3,000-tick poll every 50 ms; the writer's max / p99 wait.
4. trades: ``etl collect --source trades`` with its live table on, fed about 20,000 aggregate
   trades a second over WebSockets by the fake exchange in its own process: trades staged per
   second, the collector's CPU and CPU per 1,000 trades/s, ids not yet staged at the end.
5. archive: an hour of 3,000 symbols (polls at 5 s; 300 trades each) archived as Parquet the way
   the rollup does before a purge: seconds per hour, bytes per tick against the staging file's,
   and the same hour written one file per symbol.
6. years of history: a year of hourly bars of 1,000 symbols (8.76 M bars, 13 monthly partitions)
   and their daily bars, filled by COPY; the notebook path (``etl.notebook.History`` into Polars)
   for five queries, end to end and on the server (``EXPLAIN ANALYZE``), against DuckDB over the
   same bars as Parquet hive-partitioned by month; bytes per bar, ``etl status`` with 120+
   partitions, retention's drop, the rollup's write with and without a trigger on the bars, and the
   3,000 symbols x 10 years projection.
7. the command line: ``etl --help``, ``etl status --help``, ``etl --version``, ``etl status``
   and a no-op ``etl rollup`` as whole processes against ``python -c pass``; ``etl status`` on
   the embedded server held up by another process, and from cold.

Every figure is min / median / max of ``--runs`` runs (default 5), ours and the baselines
alternating. ``--quick`` is a smoke run: 2 runs unless ``--runs`` is given, no 24-hour backlog,
a 5 s hour (2.16 M ticks) for part 3, fewer polls in part 1, 10 s windows in part 4, 100 symbols
in part 6. Part 6 takes 20 runs per figure by default (``--quick``: 5).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def header(argv: list[str]) -> list[str]:
    """Date, machine, versions and the exact command: what a figure is worth depends on them."""
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC",
        f"machine: nproc {nproc}, CPU {_cpu_model()}, {platform.system()} {platform.release()}",
        f"versions: Python {platform.python_version()}, polars {_version('polars')}, "
        f"duckdb {_version('duckdb')}, adbc-driver-sqlite {_version('adbc-driver-sqlite')}, "
        f"adbc-driver-postgresql {_version('adbc-driver-postgresql')}",
        f"command: {shlex.join(['python', '-m', 'bench', *argv])}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--part", choices=["1", "2", "3", "4", "5", "6", "7", "all"], default="all")
    parser.add_argument("--runs", type=int, help="runs per figure (default 5, --quick 2)")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (see above)")
    args = parser.parse_args()
    runs = args.runs or (2 if args.quick else 5)
    if runs < 1:
        parser.error("--runs must be at least 1")
    started = time.perf_counter()
    print("\n".join(header(sys.argv[1:])), flush=True)
    if args.part in ("1", "all"):
        from bench import collector_bench

        results = collector_bench.run(polls=20 if args.quick else 60)
        print("\n" + "\n".join(collector_bench.report(results)), flush=True)
    if args.part in ("2", "all"):
        from bench import rollup_bench

        results = rollup_bench.run(runs=runs, backlog=not args.quick)
        print("\n" + "\n".join(rollup_bench.report(results)), flush=True)
    if args.part in ("3", "all"):
        from bench import purge_bench

        results = purge_bench.run(runs=runs, interval_ms=5000 if args.quick else 1000)
        print("\n" + "\n".join(purge_bench.report(results)), flush=True)
    if args.part in ("4", "all"):
        from bench import trades_bench

        results = trades_bench.run(
            runs=runs, warmup=5.0 if args.quick else 10.0, window=10.0 if args.quick else 30.0
        )
        print("\n" + "\n".join(trades_bench.report(results)), flush=True)
    if args.part in ("5", "all"):
        from bench import archive_bench

        results = archive_bench.run(runs=runs)
        print("\n" + "\n".join(archive_bench.report(results)), flush=True)
    if args.part in ("6", "all"):
        from bench import history_bench

        results = history_bench.run(runs=args.runs or (5 if args.quick else 20), quick=args.quick)
        print("\n" + "\n".join(history_bench.report(results)), flush=True)
    if args.part in ("7", "all"):
        from bench import cli_bench

        results = cli_bench.run(runs=max(runs, 10))
        print("\n" + "\n".join(cli_bench.report(results)), flush=True)
    print(f"\nbench took {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
