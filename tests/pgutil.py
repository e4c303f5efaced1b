"""Helpers for tests that read the warehouse directly."""

from __future__ import annotations

import gzip
from pathlib import Path

import adbc_driver_postgresql.dbapi as pg
import polars as pl

from etl.bars import TRADE_COLUMNS
from etl.staging.store import Staging

# Staging files and warehouse dumps made by earlier releases (and the scripts that made them).
LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy"
# Columns metrics_hourly gained after the first release (010: staging identity; 013: trades).
ADDED_HOURLY_COLUMNS = ("staging_id", "interval_s", *TRADE_COLUMNS)


def query(dsn: str, sql: str, params: list | None = None) -> pl.DataFrame:
    with pg.connect(dsn, autocommit=True) as conn:
        return pl.read_database(
            sql, conn, execute_options={"parameters": params} if params else None
        )


def execute(dsn: str, sql: str) -> None:
    with pg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql)


def snapshot(dsn: str) -> dict[str, list[tuple]]:
    """Full contents of the warehouse tables, without the wall-clock bookkeeping columns."""
    hourly = query(dsn, "SELECT * FROM metrics_hourly ORDER BY symbol, bucket").drop("updated_at")
    daily = query(dsn, "SELECT * FROM metrics_daily ORDER BY symbol, day").drop("updated_at")
    runs = query(
        dsn,
        "SELECT hour, symbols, rows, ticks_read, max_seq, purged_at IS NOT NULL AS purged "
        "FROM rollup_runs ORDER BY hour",
    )
    return {"hourly": hourly.rows(), "daily": daily.rows(), "runs": runs.rows()}


def seed_ticks(
    path: Path,
    symbols: list[str],
    start_ms: int,
    polls: int,
    interval_ms: int = 5000,
    seed: int = 1,
) -> pl.DataFrame:
    """Stage ``polls`` polls of ``symbols`` with a random walk, as the collector would."""
    n = len(symbols)
    frame = (
        pl.DataFrame({"k": pl.int_range(0, polls * n, eager=True)})
        .with_columns(
            symbol=pl.Series(symbols * polls),
            ts=start_ms + (pl.col("k") // n) * interval_ms + 17,
            step=1.0 + ((pl.int_range(0, polls * n).hash(seed) % 1000).cast(pl.Int64) - 500) / 1e5,
        )
        .with_columns(price=(100.0 * pl.col("step").cum_prod().over("symbol")))
        .select("symbol", "ts", "price")
    )
    with Staging(path) as st:
        st.ticks.append_frame(frame)
    return frame


def restore_dump(dsn: str, dump: Path) -> None:
    """Load a plain, gzipped pg_dump (psql meta-commands aside) into an empty database."""
    text = gzip.decompress(dump.read_bytes()).decode()
    script = "\n".join(line for line in text.splitlines() if not line.startswith("\\"))
    with pg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.executescript(script)
