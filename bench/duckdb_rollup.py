"""The rollup as a DuckDB user writes it: one ``INSERT ... SELECT`` from the staging file straight
into PostgreSQL, through DuckDB's ``sqlite`` and ``postgres`` extensions (dev-only dependencies:
the product never imports DuckDB).

Usage:

- ``python -m bench.duckdb_rollup SQLITE_PATH PG_URI``: the whole job in one process (import,
  load the extensions, attach both databases, run the statement, exit); the parent times it from
  spawn to exit.
- ``python -m bench.duckdb_rollup --serve SQLITE_PATH PG_URI``: connect and attach once, print
  ``ready``, then answer each ``insert`` / ``aggregate`` line on stdin with the seconds that
  statement alone took. A process of its own rather than the benchmark's: DuckDB's extension
  carries its own SQLite library, and two SQLite libraries on one file in one process break each
  other's POSIX locks (the reason ``etl.staging`` never uses stdlib ``sqlite3``).

The extensions are loaded by path from the ``duckdb-extension-*`` wheels, never downloaded.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import duckdb

TARGET = "duckdb_hourly"
# The target in PostgreSQL: the bar columns a DuckDB user would keep, keyed like metrics_hourly.
TARGET_DDL = f"""
CREATE TABLE IF NOT EXISTS {TARGET} (
    symbol text NOT NULL, bucket timestamptz NOT NULL, open double precision NOT NULL,
    high double precision NOT NULL, low double precision NOT NULL,
    close double precision NOT NULL, mean double precision NOT NULL, samples integer NOT NULL,
    PRIMARY KEY (symbol, bucket))
"""
_AGGREGATE = (
    "SELECT symbol, to_timestamp(ts // 3600000 * 3600) AS bucket, arg_min(price, ts) AS open, "
    "max(price) AS high, min(price) AS low, arg_max(price, ts) AS close, avg(price) AS mean, "
    "count(*) AS samples FROM s.ticks GROUP BY symbol, ts // 3600000"
)
INSERT_SQL = f"INSERT INTO pg.{TARGET} {_AGGREGATE}"
# The same aggregate into DuckDB's own memory: the read + compute share of INSERT_SQL.
AGGREGATE_SQL = f"CREATE OR REPLACE TEMP TABLE bars AS {_AGGREGATE}"
# Wheel module -> the name DuckDB derives the entry point from (``<name>_duckdb_cpp_init``).
_EXTENSIONS = {
    "duckdb_extension_sqlite": "sqlite_scanner",
    "duckdb_extension_postgres": "postgres_scanner",
}


def extension_files() -> list[Path]:
    """The extension binaries of the installed wheels, under the names DuckDB expects.

    The wheels ship ``sqlite.duckdb_extension`` but its entry point is
    ``sqlite_scanner_duckdb_cpp_init``, and DuckDB takes the entry point from the file name: a
    symlink named ``sqlite_scanner.duckdb_extension`` (kept per DuckDB version) fixes that.
    """
    links = Path(tempfile.gettempdir()) / f"etl-bench-duckdb-ext-{duckdb.__version__}"
    links.mkdir(exist_ok=True)
    out = []
    for module, name in _EXTENSIONS.items():
        package = Path(importlib.import_module(module).__file__ or "").parent
        found = sorted(package.glob(f"extensions/v{duckdb.__version__}/*.duckdb_extension"))
        if not found:
            raise SystemExit(
                f"{module} has no extension for DuckDB {duckdb.__version__}: "
                "install duckdb and the duckdb-extension-* wheels of one version"
            )
        link = links / f"{name}.duckdb_extension"
        if not link.exists():
            tmp = links / f".{name}.{id(link)}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(found[0])
            tmp.replace(link)  # atomic: another process may be doing the same
        out.append(link)
    return out


def libpq_conninfo(uri: str) -> str:
    """``postgresql://user:pw@/db?host=/socket`` as the ``key=value`` string DuckDB's ATTACH
    takes (its URI parsing of an empty host with a socket query parameter is not to be relied on)."""
    parts = urlsplit(uri)
    fields = {
        "host": parts.hostname or "",
        "port": str(parts.port or ""),
        "dbname": unquote(parts.path.lstrip("/")),
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
    }
    fields.update({k: v[-1] for k, v in parse_qs(parts.query).items()})
    return " ".join(f"{k}={v}" for k, v in fields.items() if v)


def connect(sqlite_path: str, pg_uri: str) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with both extensions loaded and both databases attached."""
    conn = duckdb.connect(
        config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    )
    for path in extension_files():
        conn.execute(f"LOAD '{path}'")
    conn.execute(f"ATTACH '{sqlite_path}' AS s (TYPE sqlite, READ_ONLY)")
    conn.execute(f"ATTACH '{libpq_conninfo(pg_uri)}' AS pg (TYPE postgres)")
    return conn


def serve(conn: duckdb.DuckDBPyConnection) -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        sql = {"insert": INSERT_SQL, "aggregate": AGGREGATE_SQL}.get(line.strip())
        if sql is None:
            break
        started = time.perf_counter()
        conn.execute(sql)
        print(time.perf_counter() - started, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help="attach once, time each statement")
    parser.add_argument("sqlite_path")
    parser.add_argument("pg_uri")
    args = parser.parse_args()
    conn = connect(args.sqlite_path, args.pg_uri)
    if args.serve:
        serve(conn)
    else:
        conn.execute(INSERT_SQL)
    conn.close()


if __name__ == "__main__":
    main()
