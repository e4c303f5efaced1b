"""SQLite staging store for raw ticks, through ADBC.

One file on disk in WAL mode. ``ticks(symbol, ts, price)`` holds every polled price with ``ts`` in
epoch milliseconds (UTC) and an index on ``ts`` so that an hour is a range scan. A small ``state``
table keeps what must survive a restart (the exchange's ban-until time, the last weight seen).

>>> with Staging(tmp_path / "ticks.sqlite3") as st:          # doctest: +SKIP
...     st.append(["BTCUSDT", "ETHUSDT"], [60262.05, 2594.25], ts_ms=1_767_225_600_000)
...     st.read_window(1_767_225_600_000, 1_767_229_200_000).height
2

Everything goes through ADBC, never stdlib ``sqlite3``: mixing the two on one file in one process
gives disk I/O errors (DESIGN.md).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import adbc_driver_sqlite.dbapi as adbc_sqlite
import polars as pl
import pyarrow as pa

from etl.errors import ConfigError

HOUR_MS = 3_600_000
TICK_SCHEMA = {"seq": pl.Int64, "symbol": pl.String, "ts": pl.Int64, "price": pl.Float64}
_ARROW_SCHEMA = pa.schema([("symbol", pa.string()), ("ts", pa.int64()), ("price", pa.float64())])
_DDL = (
    "CREATE TABLE IF NOT EXISTS ticks ("
    " symbol TEXT NOT NULL, ts INTEGER NOT NULL, price REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS ticks_ts ON ticks (ts)",
    "CREATE TABLE IF NOT EXISTS state ("
    " key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_ms INTEGER NOT NULL)",
)
_READ_SQL = (
    "SELECT rowid AS seq, symbol, ts, price FROM ticks WHERE ts >= ? AND ts < ? AND rowid <= ? "
    "ORDER BY ts, rowid"
)
_UPSERT_STATE = (
    "INSERT INTO state (key, value, updated_ms) VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_ms = excluded.updated_ms"
)


def hour_floor(ts_ms: int) -> int:
    return ts_ms // HOUR_MS * HOUR_MS


class Staging:
    """The on-disk tick store. Thread-safe; one connection for writes, one per reader thread."""

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = self._connect()
            with self._cursor() as cur:
                cur.execute("PRAGMA journal_mode=WAL")
                cur.fetchall()
                cur.execute(f"PRAGMA synchronous={synchronous}")
                for ddl in _DDL:
                    cur.execute(ddl)
        except (OSError, adbc_sqlite.Error) as exc:
            reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
            raise ConfigError(
                f"cannot open the staging database {self.path} ({reason}): "
                "set ETL_DATA_DIR or ETL_SQLITE_PATH to a writable place"
            ) from None

    def _connect(self) -> adbc_sqlite.Connection:
        # autocommit: an ADBC read otherwise leaves a transaction (and a stale WAL snapshot) open.
        conn = adbc_sqlite.connect(str(self.path), autocommit=True)
        with conn.cursor() as cur:
            cur.execute("PRAGMA busy_timeout=10000")
        return conn

    @contextmanager
    def _cursor(self) -> Iterator[adbc_sqlite.Cursor]:
        with self._lock, self._conn.cursor() as cur:
            yield cur

    @contextmanager
    def transaction(self) -> Iterator[adbc_sqlite.Cursor]:
        """One write transaction: committed on success, rolled back on any error."""
        with self._cursor() as cur:
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT (disk full): the connection must not stay inside a
                # transaction, or every later write on it would fail too.
                with contextlib.suppress(adbc_sqlite.Error):
                    cur.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes --------------------------------------------------------------------------------

    def append(
        self,
        symbols: Sequence[str],
        prices: Sequence[float],
        ts_ms: int,
        *,
        state: dict[str, Any] | None = None,
    ) -> int:
        """Append one poll (every price stamped ``ts_ms``) and optional state, in one transaction."""
        table = pa.Table.from_arrays(
            [
                pa.array(symbols, pa.string()),
                pa.repeat(pa.scalar(ts_ms, pa.int64()), len(symbols)),
                pa.array(prices, pa.float64()),
            ],
            schema=_ARROW_SCHEMA,
        )
        with self.transaction() as cur:
            if table.num_rows:
                cur.adbc_ingest("ticks", table, mode="append")
            for key, value in (state or {}).items():
                cur.execute(_UPSERT_STATE, (key, json.dumps(value), ts_ms))
        return table.num_rows

    def append_frame(self, frame: pl.DataFrame | pa.Table) -> int:
        """Bulk append of ``symbol, ts, price`` rows (seeding, benchmarks, outside tools)."""
        table = frame.to_arrow() if isinstance(frame, pl.DataFrame) else frame
        table = table.select(["symbol", "ts", "price"]).cast(_ARROW_SCHEMA)
        with self.transaction() as cur:
            cur.adbc_ingest("ticks", table, mode="append")
        return table.num_rows

    def set_state(self, key: str, value: Any, now_ms: int) -> None:
        with self.transaction() as cur:
            cur.execute(_UPSERT_STATE, (key, json.dumps(value), now_ms))

    def purge(self, hours: Iterable[tuple[int, int]]) -> int:
        """Delete the ticks of committed hours: ``(hour_start_ms, max_seq)`` pairs.

        Only rows up to the ``max_seq`` the rollup read are deleted, so a tick that arrived after
        its hour was committed is never lost. The newest row always stays: SQLite reuses rowids
        once the largest is gone, and ``seq`` must only ever grow. One transaction per hour, so
        the collector's next write never waits long.
        """
        deleted = 0
        for hour, max_seq in hours:
            with self.transaction() as cur:
                cur.execute(
                    "DELETE FROM ticks WHERE ts >= ? AND ts < ? AND rowid <= ? "
                    "AND rowid < (SELECT max(rowid) FROM ticks)",
                    (hour, hour + HOUR_MS, max_seq),
                )
                cur.execute("SELECT changes()")  # ADBC reports no rowcount for a DELETE
                deleted += int(cur.fetchone()[0])
        return deleted

    # -- reads ---------------------------------------------------------------------------------

    def get_state(self, key: str) -> Any:
        with self._cursor() as cur:
            cur.execute("SELECT value FROM state WHERE key = ?", (key,))
            row = cur.fetchone()
        return json.loads(row[0]) if row else None

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._cursor() as cur:
            cur.execute(sql, params)
            row = cur.fetchone()
        return row[0] if row else None

    def read_window(self, lo_ms: int, hi_ms: int, *, threads: int = 2) -> pl.DataFrame:
        """Ticks with ``lo_ms <= ts < hi_ms`` as ``seq, symbol, ts, price``, ordered by ts, seq."""
        bounds = [lo_ms + (hi_ms - lo_ms) * k // threads for k in range(threads + 1)]
        return self.read_slices(list(itertools.pairwise(bounds)), threads=threads)

    def read_hours(self, hours: Sequence[int], *, threads: int = 2) -> pl.DataFrame:
        """The ticks of the hours starting at ``hours`` (epoch ms), each read in slices."""
        slices = [
            (h + HOUR_MS * k // threads, h + HOUR_MS * (k + 1) // threads)
            for h in hours
            for k in range(threads)
        ]
        return self.read_slices(slices, threads=threads)

    def read_slices(self, slices: Sequence[tuple[int, int]], *, threads: int = 2) -> pl.DataFrame:
        """Read ``[lo, hi)`` ts slices on ``threads`` connections and concatenate them in order.

        SQLite's row stepping is the bottleneck of a read and ADBC releases the GIL, so two
        connections on two cores read about twice as fast as one. Every slice reads only rows
        that existed when the read began (``rowid <= max``), so the slices agree with each other
        and the ``max_seq`` the purge relies on covers nothing that was not read.
        """
        if not slices:
            return pl.DataFrame(schema=TICK_SCHEMA)
        upto = self.max_seq()
        if threads <= 1 or len(slices) == 1:
            parts = [self._read_slice(lo, hi, upto) for lo, hi in slices]
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                parts = list(pool.map(lambda b: self._read_slice(*b, upto), slices))
        return pl.concat(parts, rechunk=False)

    def _read_slice(self, lo_ms: int, hi_ms: int, upto: int) -> pl.DataFrame:
        conn = self._connect()
        try:
            return pl.read_database(
                _READ_SQL,
                conn,
                execute_options={"parameters": [lo_ms, hi_ms, upto]},
                schema_overrides=TICK_SCHEMA,  # an empty window would come back all Int64
            )
        finally:
            conn.close()

    def count_between(self, lo_ms: int | None, hi_ms: int | None, max_seq: int = 2**62) -> int:
        """Ticks with ``lo_ms <= ts < hi_ms`` (either bound open when ``None``) up to row
        ``max_seq``: with a ledger's ``max_seq``, what that rollup read, unless some were purged."""
        lo = -(2**62) if lo_ms is None else lo_ms
        hi = 2**62 if hi_ms is None else hi_ms
        return int(
            self._scalar(
                "SELECT count(*) FROM ticks WHERE ts >= ? AND ts < ? AND rowid <= ?",
                (lo, hi, max_seq),
            )
        )

    def hours_with_ticks(self, lo_ms: int | None = None, hi_ms: int | None = None) -> list[int]:
        """Start (epoch ms) of every hour in ``[lo_ms, hi_ms)`` that has at least one tick."""
        return list(self.hour_sizes(lo_ms, hi_ms))

    def hour_sizes(self, lo_ms: int | None = None, hi_ms: int | None = None) -> dict[int, int]:
        """Every hour in ``[lo_ms, hi_ms)`` with ticks, and about how many ticks it holds.

        One index seek per hour found, whatever the number of rows. The size is the distance
        between the first rows of consecutive hours: exact for a collector writing in time
        order, an estimate otherwise (it only sizes rollup chunks).
        """
        firsts: list[tuple[int, int]] = []
        cursor = lo_ms if lo_ms is not None else -(2**62)
        upper = hi_ms if hi_ms is not None else 2**62
        while True:
            with self._cursor() as cur:
                cur.execute(
                    "SELECT ts, rowid FROM ticks WHERE ts >= ? AND ts < ? ORDER BY ts LIMIT 1",
                    (cursor, upper),
                )
                row = cur.fetchone()
            if row is None:
                break
            hour = hour_floor(int(row[0]))
            firsts.append((hour, int(row[1])))
            cursor = hour + HOUR_MS
        if not firsts:
            return {}
        ends = [seq for _, seq in firsts[1:]] + [self.max_seq() + 1]
        return {hour: max(1, abs(end - seq)) for (hour, seq), end in zip(firsts, ends, strict=True)}

    def hours_with_ticks_after(self, seq: int, hi_ms: int) -> set[int]:
        """Hours before ``hi_ms`` holding ticks written after row ``seq`` (late arrivals)."""
        with self._cursor() as cur:
            cur.execute(
                "SELECT DISTINCT ts - (ts % 3600000 + 3600000) % 3600000 FROM ticks "
                "WHERE rowid > ? AND ts < ?",
                (seq, hi_ms),
            )
            return {int(r[0]) for r in cur.fetchall()}

    def max_seq(self) -> int:
        return int(self._scalar("SELECT coalesce(max(rowid), 0) FROM ticks"))

    def count(self) -> int:
        return int(self._scalar("SELECT count(*) FROM ticks"))

    def last_tick(self) -> int | None:
        return self._scalar("SELECT max(ts) FROM ticks")

    def last_ticks(self, since_ms: int, until_ms: int = 2**62) -> dict[str, int]:
        """Newest ``ts`` per symbol among ticks in ``[since_ms, until_ms]``."""
        with self._cursor() as cur:
            cur.execute(
                "SELECT symbol, max(ts) FROM ticks WHERE ts >= ? AND ts <= ? GROUP BY symbol",
                (since_ms, until_ms),
            )
            return {str(s): int(t) for s, t in cur.fetchall()}

    def integrity_check(self) -> str:
        with self._cursor() as cur:
            cur.execute("PRAGMA integrity_check")
            return str(cur.fetchone()[0])
