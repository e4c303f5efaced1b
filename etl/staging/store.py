"""SQLite staging store for raw ticks, through ADBC.

One file on disk in WAL mode. Outside tools read and write the view ``ticks(symbol, ts, price)``
(``ts`` in epoch milliseconds, UTC); underneath, rows live in ``tick_rows(seq, sym, ts, price)``
with integer symbol ids from ``symbols``, an index on ``ts`` (an hour is a range scan) and
constraints that refuse a row that cannot be a tick (STRICT types, ``ts`` in 1970..9999, a finite
price > 0, a symbol of 2-20 upper-case letters and digits). ``seq`` is the row's id: it only grows,
and the rollup's ledger refers to it.

Small tables beside: ``meta`` (the file's identity: a UUID and a readable name, created with it),
``state`` (what must survive a restart: the exchange's ban, the last weight seen), ``intervals``
(the poll interval in force since when, so coverage is measured against what was collected) and
``ticks_rejected`` (quarantine: rows that got in past the constraints, or came with an older
file, with the reason; never rolled up, never purged).

Trades (``etl collect --source trades``) are ticks too, with three more columns that poll ticks
leave NULL: ``agg_id`` (the exchange's aggregate trade id), ``qty`` and ``trades`` (the
individual trades it aggregates, ``l - f + 1``). A partial unique index on ``(sym, agg_id)``
drops a trade seen twice (reconnects, REST catch-up). ``trade_cursor`` keeps, per symbol, the id
up to which the sequence is known to have no holes (it survives restarts and purges), and
``trade_holes`` the ranges of ids that could not be fetched.

>>> with Staging(tmp_path / "ticks.sqlite3") as st:          # doctest: +SKIP
...     st.append(["BTCUSDT", "ETHUSDT"], [60262.05, 2594.25], ts_ms=1_767_225_600_000)
...     st.read_window(1_767_225_600_000, 1_767_229_200_000).height
2

Everything goes through ADBC, never stdlib ``sqlite3``: mixing the two on one file in one process
gives disk I/O errors.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import adbc_driver_sqlite.dbapi as adbc_sqlite
import polars as pl
import pyarrow as pa

from etl.config import Settings
from etl.errors import (
    ConfigError,
    DependencyError,
    DiskFull,
    NothingStaged,
    StagingBusy,
    StagingCorrupt,
)
from etl.hours import HOUR_MS, MAX_TS_MS, MIN_TS_MS, NO_LOWER, NO_UPPER, hour_floor, iso

# 3: trade columns, trade_cursor and trade_holes (files of version 2 are upgraded in place).
SCHEMA_VERSION = 3
# State the rollup keeps in the file it rolls up: its last outcome, for `etl status`.
LAST_ROLLUP_KEY = "rollup.last"
WINDOW_SCHEMA = {"sym": pl.Int64, "ts": pl.Int64, "price": pl.Float64}
TRADE_WINDOW_SCHEMA = {
    **WINDOW_SCHEMA,
    "agg_id": pl.Int64,
    "qty": pl.Float64,
    "trades": pl.Int64,
}
TRADE_SCHEMA = pa.schema(
    [
        ("sym", pa.int64()),
        ("ts", pa.int64()),
        ("price", pa.float64()),
        ("agg_id", pa.int64()),
        ("qty", pa.float64()),
        ("trades", pa.int64()),
    ]
)
CURSOR_SCHEMA = {
    "sym": pl.Int64,
    "last_id": pl.Int64,
    "last_ts": pl.Int64,
    "since_ms": pl.Int64,
    "live_ms": pl.Int64,
}
HOLE_SCHEMA = {
    "symbol": pl.String,
    "sym": pl.Int64,
    "after_id": pl.Int64,
    "before_id": pl.Int64,
    "from_ms": pl.Int64,
    "to_ms": pl.Int64,
    "reason": pl.String,
    "found_ms": pl.Int64,
}
TICK_SCHEMA = {"seq": pl.Int64, "symbol": pl.String, "ts": pl.Int64, "price": pl.Float64}
SYMBOLS_SCHEMA = {"sym": pl.Int64, "symbol": pl.String}
_APPEND_SCHEMA = pa.schema([("sym", pa.int64()), ("ts", pa.int64()), ("price", pa.float64())])
# A purge deletes in transactions of about this long, with a pause as long after each, so a
# collector's commit never waits long behind it.
PURGE_SLICE_S = 0.02
PURGE_FIRST_BATCH = 5_000

_SYMBOL_RULE = "length(symbol) BETWEEN 2 AND 20 AND symbol NOT GLOB '*[^A-Z0-9]*'"
# Columns of a trade (NULL in a poll tick), also added in place to files of version 2.
_TRADE_COLUMNS = (
    ("agg_id", "agg_id INTEGER CHECK (agg_id >= 0)"),
    ("qty", "qty REAL CHECK (qty > 0 AND qty < 9e999)"),
    ("trades", "trades INTEGER CHECK (trades > 0)"),
)
_TRADE_DDL = (
    # A trade seen twice (a reconnect's overlap, a REST catch-up) is one row.
    "CREATE UNIQUE INDEX IF NOT EXISTS tick_rows_trade ON tick_rows (sym, agg_id)"
    " WHERE agg_id IS NOT NULL",
    # Per symbol: ids up to last_id (traded at last_ts) are staged with no hole since since_ms,
    # and the stream was known to be delivering up to live_ms. Never purged.
    "CREATE TABLE IF NOT EXISTS trade_cursor (sym INTEGER PRIMARY KEY,"
    " last_id INTEGER NOT NULL, last_ts INTEGER NOT NULL, since_ms INTEGER NOT NULL,"
    " live_ms INTEGER NOT NULL) STRICT",
    # Ids after_id < id < before_id (traded between from_ms and to_ms) could not be fetched.
    "CREATE TABLE IF NOT EXISTS trade_holes (sym INTEGER NOT NULL, after_id INTEGER NOT NULL,"
    " before_id INTEGER NOT NULL, from_ms INTEGER NOT NULL, to_ms INTEGER NOT NULL,"
    " reason TEXT NOT NULL, found_ms INTEGER NOT NULL, PRIMARY KEY (sym, after_id)) STRICT",
)
_DDL = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT",
    "CREATE TABLE IF NOT EXISTS state ("
    " key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_ms INTEGER NOT NULL)",
    f"CREATE TABLE IF NOT EXISTS symbols (id INTEGER PRIMARY KEY,"
    f" symbol TEXT NOT NULL UNIQUE CHECK ({_SYMBOL_RULE})) STRICT",
    f"CREATE TABLE IF NOT EXISTS tick_rows (seq INTEGER PRIMARY KEY,"
    f" sym INTEGER NOT NULL CHECK (sym > 0),"
    f" ts INTEGER NOT NULL CHECK (ts BETWEEN {MIN_TS_MS} AND {MAX_TS_MS}),"
    f" price REAL NOT NULL CHECK (price > 0 AND price < 9e999),"
    f" {', '.join(c for _, c in _TRADE_COLUMNS)}) STRICT",
    "CREATE TABLE IF NOT EXISTS ticks_rejected (symbol ANY, ts ANY, price ANY,"
    " reason TEXT NOT NULL, moved_at INTEGER NOT NULL, seq INTEGER) STRICT",
    "CREATE TABLE IF NOT EXISTS intervals (from_ms INTEGER PRIMARY KEY,"
    " interval_s REAL NOT NULL CHECK (interval_s > 0)) STRICT",
)
_VIEW_DDL = (
    "CREATE INDEX IF NOT EXISTS tick_rows_ts ON tick_rows (ts)",
    "CREATE VIEW IF NOT EXISTS ticks (symbol, ts, price) AS"
    " SELECT s.symbol, t.ts, t.price FROM tick_rows t JOIN symbols s ON s.id = t.sym",
    # Outside tools keep writing ticks(symbol, ts, price); a bad row fails their INSERT.
    "CREATE TRIGGER IF NOT EXISTS ticks_insert INSTEAD OF INSERT ON ticks BEGIN"
    " INSERT INTO symbols (symbol) SELECT NEW.symbol"
    "  WHERE NOT EXISTS (SELECT 1 FROM symbols WHERE symbol = NEW.symbol);"
    " INSERT INTO tick_rows (sym, ts, price)"
    "  VALUES ((SELECT id FROM symbols WHERE symbol = NEW.symbol), NEW.ts, NEW.price);"
    " END",
)
# Why a row of a pre-identity file cannot be a tick (NULL: it can).
_REJECT_REASON = f"""CASE
  WHEN symbol IS NULL THEN 'symbol is NULL'
  WHEN typeof(symbol) != 'text' THEN 'symbol is ' || typeof(symbol) || ', not text'
  WHEN NOT ({_SYMBOL_RULE}) THEN 'symbol does not match [A-Z0-9]{{2,20}}'
  WHEN ts IS NULL THEN 'ts is NULL'
  WHEN typeof(ts) != 'integer' THEN 'ts is ' || typeof(ts) || ', not integer'
  WHEN ts NOT BETWEEN {MIN_TS_MS} AND {MAX_TS_MS} THEN 'ts out of range (epoch ms, 1970 to 9999)'
  WHEN price IS NULL THEN 'price is NULL'
  WHEN typeof(price) NOT IN ('real', 'integer') THEN 'price is ' || typeof(price) || ', not a number'
  WHEN price >= 9e999 OR price <= -9e999 THEN 'price is not finite'
  WHEN price <= 0 THEN 'price is not greater than 0'
END"""
# A row of tick_rows (alias t, symbols joined as s) that got past the constraints (PRAGMA
# ignore_check_constraints): an unknown symbol id, a price that is not finite and > 0, or a ts
# no hour can hold.
_BAD_ROW = (
    f"(s.id IS NULL OR NOT (t.price > 0 AND t.price < 9e999) "
    f"OR t.ts NOT BETWEEN {MIN_TS_MS} AND {MAX_TS_MS})"
)
_PRICE_REASON = (
    "WHEN NOT (t.price < 9e999 AND t.price > -9e999) THEN 'price is not finite' "
    "WHEN t.price <= 0 THEN 'price is not greater than 0' "
    "ELSE 'ts out of range (epoch ms, 1970 to 9999)'"
)
_UPSERT_STATE = (
    "INSERT INTO state (key, value, updated_ms) VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_ms = excluded.updated_ms"
)
_CORRUPT = ("malformed", "not a database", "file is encrypted")


@dataclass
class Window:
    """Staged ticks of some hours, as the rollup reads them.

    ``ticks`` is ``sym, ts, price`` ordered by ``ts, seq`` (so by ``ts, seq`` within a symbol);
    ``symbols`` maps ``sym`` to ``symbol``; ``upto`` is the highest ``seq`` the read could see:
    every row of these hours up to it was read, and none after it.
    """

    ticks: pl.DataFrame
    symbols: pl.DataFrame
    upto: int
    rejected: int = 0


def default_name(path: Path) -> str:
    import socket

    return f"{socket.gethostname()}:{path.resolve()}"


class Staging:
    """The on-disk tick store. Thread-safe; one connection for writes, one per reader thread.

    ``create=False`` refuses a file that does not exist (:class:`NothingStaged`), so looking
    never creates state. ``name`` renames the file in the ledger (default: host and path).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        create: bool = True,
        name: str | None = None,
    ) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._lock_file: IO[str] | None = None
        self._sym_ids: dict[str, int] = {}
        self._last_ids: tuple[Sequence[str], pa.Array] | None = None
        self._has_trade_tables = False
        if not create and not self.path.exists():
            raise NothingStaged(f"nothing staged in {self.path}: no staging file there")
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = self._connect()
        except (OSError, adbc_sqlite.Error) as exc:
            reason = getattr(exc, "strerror", None) or _first_line(exc)
            raise ConfigError(
                f"cannot open the staging database {self.path} ({reason}): "
                "set ETL_DATA_DIR or ETL_SQLITE_PATH to a writable place"
            ) from None
        with self._cursor() as cur:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.fetchall()
            cur.execute(f"PRAGMA synchronous={synchronous}")
        self.upgraded_from = self._ensure_schema()
        self.id, self.name = self._identity(name)
        self._load_symbols()

    def _connect(self) -> adbc_sqlite.Connection:
        # autocommit: an ADBC read otherwise leaves a transaction (and a stale WAL snapshot) open.
        conn = adbc_sqlite.connect(str(self.path), autocommit=True)
        with conn.cursor() as cur:
            cur.execute("PRAGMA busy_timeout=10000")
        return conn

    def counts(self, conn: adbc_sqlite.Connection | None = None) -> tuple[int, int]:
        """Staged rows and quarantined rows, on ``conn`` if given (a :meth:`reader`)."""
        with self._cursor(conn) as cur:
            cur.execute(
                "SELECT (SELECT count(*) FROM tick_rows), (SELECT count(*) FROM ticks_rejected)"
            )
            rows, rejected = cur.fetchone()
        return int(rows), int(rejected)

    def reader(self) -> adbc_sqlite.Connection:
        """A read connection of its own (autocommit: no snapshot held between reads), for a
        thread that must never wait on, or hold up, the writer."""
        return self._connect()

    def _mapped(self, exc: Exception) -> Exception | None:
        """A storage error as one of ours: disk full (exit 3), a malformed file (exit 2)."""
        text = str(exc).lower()
        full = "database or disk is full" in text or "no space left" in text
        if full or ("i/o error" in text and _free_bytes(self.path) < 1 << 20):
            return DiskFull(
                f"disk full: {self.path} (free some space; nothing already stored is lost)"
            )
        if "i/o error" in text:
            return DependencyError(
                f"I/O error on {self.path} ({_first_line(exc)}): check the disk and its permissions"
            )
        if any(marker in text for marker in _CORRUPT):
            return StagingCorrupt(
                f"the staging file {self.path} is malformed ({_first_line(exc)}): stop the "
                f"collector, then recover it with `sqlite3 {self.path} .recover | sqlite3 "
                f"{self.path}.recovered` and move the .recovered file into its place (rows keep "
                "their seq, so the rollup's ledger stays valid)"
            )
        return None

    @contextmanager
    def _cursor(self, conn: adbc_sqlite.Connection | None = None) -> Iterator[adbc_sqlite.Cursor]:
        """A cursor on this file's connection (one thread at a time), or on ``conn`` (a
        :meth:`reader` of another thread's own, which needs no lock)."""
        with (
            self._lock if conn is None else contextlib.nullcontext(),
            (conn or self._conn).cursor() as cur,
        ):
            try:
                yield cur
            except adbc_sqlite.Error as exc:
                mapped = self._mapped(exc)
                if mapped is None:
                    raise
                raise mapped from None

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
            self.release_writer_lock()
            self._conn.close()

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema, identity, upgrade -------------------------------------------------------------

    def _ensure_schema(self) -> int | None:
        """Create the schema, or upgrade a file made before staging identity (a ``ticks`` table).

        Returns the version upgraded from, if any. The upgrade keeps every row's id (the ledger
        refers to it) and moves rows that cannot be ticks to ``ticks_rejected``, in one
        transaction: a crash or a full disk leaves the file as it was.
        """
        with self._cursor() as cur:
            cur.execute("SELECT type FROM sqlite_master WHERE name = 'ticks'")
            row = cur.fetchone()
        legacy = row is not None and row[0] == "table"
        if not legacy and row is not None:
            return self._upgrade_in_place()
        now = int(time.time() * 1000)
        with self.transaction() as cur:
            for ddl in _DDL:
                cur.execute(ddl)
            if legacy:
                cur.execute(
                    # seq stays NULL: these rows' ids belong to the old table, not tick_rows.
                    "INSERT INTO ticks_rejected (symbol, ts, price, reason, moved_at) "
                    f"SELECT symbol, ts, price, reason, ? FROM (SELECT symbol, ts, price, "
                    f"{_REJECT_REASON} AS reason FROM ticks) WHERE reason IS NOT NULL",
                    (now,),
                )
                cur.execute(
                    "INSERT INTO symbols (symbol) SELECT DISTINCT symbol FROM ticks "
                    f"WHERE ({_REJECT_REASON}) IS NULL ORDER BY symbol"
                )
                cur.execute(
                    "INSERT INTO tick_rows (seq, sym, ts, price) SELECT t.rowid, s.id, t.ts, "
                    "t.price FROM ticks t JOIN symbols s ON s.symbol = t.symbol "
                    f"WHERE ({_REJECT_REASON.replace('symbol', 't.symbol')}) IS NULL"
                )
                cur.execute("DROP TABLE ticks")
            for ddl in _VIEW_DDL:
                cur.execute(ddl)
            cur.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?), "
                "('staging_id', ?), ('created_ms', ?)",
                (str(SCHEMA_VERSION), str(uuid.uuid4()), str(now)),
            )
            if legacy:
                cur.execute("INSERT OR REPLACE INTO meta VALUES ('upgraded_from', '1')")
        return 1 if legacy else None

    def _upgrade_in_place(self) -> int | None:
        """Bring a file of an older version with ``tick_rows`` up to date, keeping every row:
        ``ADD COLUMN`` (allowed on STRICT tables) leaves the rows as they are, their new columns
        NULL. Returns the version upgraded from, if any."""
        with self._cursor() as cur:
            cur.execute("SELECT value FROM meta WHERE key = 'schema_version'")
            row = cur.fetchone()
        version = int(row[0]) if row else SCHEMA_VERSION
        if version >= SCHEMA_VERSION:
            return None
        with self.transaction() as cur:
            cur.execute("SELECT name FROM pragma_table_info('tick_rows')")
            present = {str(r[0]) for r in cur.fetchall()}
            for name, column in _TRADE_COLUMNS:
                if name not in present:
                    cur.execute(f"ALTER TABLE tick_rows ADD COLUMN {column}")
            cur.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
            )
        return version

    def _identity(self, name: str | None) -> tuple[str, str]:
        meta = self.meta()
        stored = meta.get("name")
        if (name is not None and name != stored) or stored is None:
            stored = name or default_name(self.path)
            with self.transaction() as cur:
                cur.execute("INSERT OR REPLACE INTO meta VALUES ('name', ?)", (stored,))
        return meta["staging_id"], stored

    def meta(self) -> dict[str, str]:
        with self._cursor() as cur:
            cur.execute("SELECT key, value FROM meta")
            return {str(k): str(v) for k, v in cur.fetchall()}

    # -- one writer per file -------------------------------------------------------------------

    @property
    def lock_path(self) -> Path:
        # Beside the real file, symlinks resolved: two names for one file share one lock.
        real = self.path.resolve()
        return real.with_name(real.name + ".lock")

    def hold_writer_lock(self) -> None:
        """Take the collector's lock on this file for this process's lifetime.

        An OS lock (``flock``), so the kernel releases it when the process dies, ``kill -9``
        included. A second collector gets :class:`StagingBusy` naming the holder's pid.
        """
        if self._lock_file is not None:
            return
        handle = self.lock_path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise StagingBusy(
                f"another collector (pid {holder}) is writing to {self.path}: stop it first, "
                "or give this one its own ETL_DATA_DIR / ETL_SQLITE_PATH"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_file = handle

    def release_writer_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the descriptor releases the flock
            self._lock_file = None

    def quick_check(self) -> str:
        """``PRAGMA quick_check``: ``ok``, or the first problem found."""
        with self._cursor() as cur:
            cur.execute("PRAGMA quick_check(1)")
            return str(cur.fetchone()[0])

    def integrity_check(self) -> str:
        with self._cursor() as cur:
            cur.execute("PRAGMA integrity_check")
            return str(cur.fetchone()[0])

    # -- writes --------------------------------------------------------------------------------

    def _load_symbols(self) -> None:
        with self._cursor() as cur:
            cur.execute("SELECT symbol, id FROM symbols")
            self._sym_ids = {str(s): int(i) for s, i in cur.fetchall()}

    def symbol_ids(self, symbols: Sequence[str]) -> list[int]:
        """The ids of ``symbols``, adding those not seen before."""
        missing = [s for s in dict.fromkeys(symbols) if s not in self._sym_ids]
        if missing:
            with self.transaction() as cur:
                for symbol in missing:
                    cur.execute("INSERT OR IGNORE INTO symbols (symbol) VALUES (?)", (symbol,))
            self._load_symbols()
        return [self._sym_ids[s] for s in symbols]

    def _ids_array(self, symbols: Sequence[str]) -> pa.Array:
        # A collector sends the same list poll after poll: map it once.
        if self._last_ids is None or self._last_ids[0] != symbols:
            self._last_ids = (list(symbols), pa.array(self.symbol_ids(symbols), pa.int64()))
        return self._last_ids[1]

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
                self._ids_array(symbols),
                pa.repeat(pa.scalar(ts_ms, pa.int64()), len(symbols)),
                pa.array(prices, pa.float64()),
            ],
            schema=_APPEND_SCHEMA,
        )
        with self.transaction() as cur:
            if table.num_rows:
                cur.adbc_ingest("tick_rows", table, mode="append")
            for key, value in (state or {}).items():
                cur.execute(_UPSERT_STATE, (key, json.dumps(value), ts_ms))
        return table.num_rows

    def append_frame(self, frame: pl.DataFrame | pa.Table) -> int:
        """Bulk append of ``symbol, ts, price`` rows (seeding, benchmarks, outside tools)."""
        rows = frame if isinstance(frame, pl.DataFrame) else pl.from_arrow(frame)
        assert isinstance(rows, pl.DataFrame)
        names = rows["symbol"].unique(maintain_order=True).to_list()
        ids = pl.DataFrame(
            {"symbol": names, "sym": self.symbol_ids(names)},
            schema={"symbol": pl.String, "sym": pl.Int64},
        )
        table = (
            rows.join(ids, on="symbol", how="left", maintain_order="left")
            .select("sym", pl.col("ts").cast(pl.Int64), pl.col("price").cast(pl.Float64))
            .to_arrow()
            .cast(_APPEND_SCHEMA)
        )
        with self.transaction() as cur:
            cur.adbc_ingest("tick_rows", table, mode="append")
        return table.num_rows

    def append_trades(
        self,
        trades: pl.DataFrame,
        cursors: pl.DataFrame | None = None,
        holes: pl.DataFrame | None = None,
    ) -> int:
        """Store a batch of trades (``sym, ts, price, agg_id, qty, trades``), the symbols'
        cursors (``CURSOR_SCHEMA``) and holes given up on (``sym, after_id, before_id, from_ms,
        to_ms, reason, found_ms``), in one transaction; the trades newly stored.

        A trade already staged (same symbol and id) is skipped. ADBC's ingest cannot skip a
        conflicting row, so the batch goes to a temporary table and on from there.
        """
        inserted = 0
        with self.transaction() as cur:
            if not self._trade_tables:
                for ddl in _TRADE_DDL:
                    cur.execute(ddl)
            if trades.height:
                table = trades.select(TRADE_SCHEMA.names).to_arrow().cast(TRADE_SCHEMA)
                cur.adbc_ingest("trade_batch", table, mode="replace", temporary=True)
                cur.execute(
                    "INSERT INTO tick_rows (sym, ts, price, agg_id, qty, trades) "
                    "SELECT sym, ts, price, agg_id, qty, trades FROM temp.trade_batch "
                    "WHERE true ORDER BY sym, agg_id "
                    "ON CONFLICT (sym, agg_id) WHERE agg_id IS NOT NULL DO NOTHING"
                )
                cur.execute("SELECT changes()")
                inserted = int(cur.fetchone()[0])
            if cursors is not None and cursors.height:
                cur.adbc_ingest(
                    "cursor_batch",
                    cursors.select(list(CURSOR_SCHEMA)).cast(CURSOR_SCHEMA).to_arrow(),  # type: ignore[arg-type]
                    mode="replace",
                    temporary=True,
                )
                cur.execute(
                    "INSERT INTO trade_cursor (sym, last_id, last_ts, since_ms, live_ms) "
                    "SELECT sym, last_id, last_ts, since_ms, live_ms FROM temp.cursor_batch "
                    "WHERE true ON CONFLICT (sym) DO UPDATE SET last_id = excluded.last_id, "
                    "last_ts = excluded.last_ts, since_ms = excluded.since_ms, "
                    "live_ms = excluded.live_ms"
                )
            for row in () if holes is None else holes.iter_rows(named=True):
                cur.execute(
                    "INSERT OR REPLACE INTO trade_holes (sym, after_id, before_id, from_ms, "
                    "to_ms, reason, found_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        row["sym"],
                        row["after_id"],
                        row["before_id"],
                        row["from_ms"],
                        row["to_ms"],
                        row["reason"],
                        row["found_ms"],
                    ),
                )
        self._has_trade_tables = True
        return inserted

    @property
    def _trade_tables(self) -> bool:
        """Whether the trade tables exist: made with the first trades stored, so a file that
        only ever held polls stays as small as before."""
        if not self._has_trade_tables:
            self._has_trade_tables = (
                self._scalar("SELECT count(*) FROM sqlite_master WHERE name = 'trade_cursor'") == 1
            )
        return self._has_trade_tables

    def trade_cursors(self) -> pl.DataFrame:
        """Every symbol's trade cursor: ``symbol`` and ``CURSOR_SCHEMA``."""
        if not self._trade_tables:
            return pl.DataFrame(schema={"symbol": pl.String, **CURSOR_SCHEMA})
        with self._cursor() as cur:
            cur.execute(
                "SELECT s.symbol, c.sym, c.last_id, c.last_ts, c.since_ms, c.live_ms "
                "FROM trade_cursor c JOIN symbols s ON s.id = c.sym ORDER BY c.sym"
            )
            rows = cur.fetchall()
        return pl.DataFrame(rows, schema={"symbol": pl.String, **CURSOR_SCHEMA}, orient="row")

    def trade_holes(self, lo_ms: int | None = None, hi_ms: int | None = None) -> pl.DataFrame:
        """Holes given up on that overlap ``[lo_ms, hi_ms)`` (``HOLE_SCHEMA``), oldest first."""
        if not self._trade_tables:
            return pl.DataFrame(schema=HOLE_SCHEMA)
        with self._cursor() as cur:
            cur.execute(
                "SELECT s.symbol, h.sym, h.after_id, h.before_id, h.from_ms, h.to_ms, h.reason, "
                "h.found_ms FROM trade_holes h JOIN symbols s ON s.id = h.sym "
                "WHERE h.to_ms >= ? AND h.from_ms < ? ORDER BY h.from_ms, h.sym",
                (NO_LOWER if lo_ms is None else lo_ms, NO_UPPER if hi_ms is None else hi_ms),
            )
            rows = cur.fetchall()
        return pl.DataFrame(rows, schema=HOLE_SCHEMA, orient="row")

    def has_trades(self) -> bool:
        """Whether any staged row is a trade (one seek in the trade index, which exists once a
        trade was stored)."""
        if not self._trade_tables:
            return False
        return (
            self._scalar(
                "SELECT 1 FROM tick_rows INDEXED BY tick_rows_trade WHERE agg_id IS NOT NULL LIMIT 1"
            )
            is not None
        )

    def set_state(self, key: str, value: Any, now_ms: int) -> None:
        with self.transaction() as cur:
            cur.execute(_UPSERT_STATE, (key, json.dumps(value), now_ms))

    def record_interval(self, interval_s: float, from_ms: int) -> None:
        """Note that polls from ``from_ms`` on come every ``interval_s`` (if that is new)."""
        with self.transaction() as cur:
            cur.execute("SELECT interval_s FROM intervals ORDER BY from_ms DESC LIMIT 1")
            row = cur.fetchone()
            if row is None or float(row[0]) != float(interval_s):
                cur.execute(
                    "INSERT OR REPLACE INTO intervals VALUES (?, ?)", (from_ms, float(interval_s))
                )

    def intervals(self) -> list[tuple[int, float]]:
        with self._cursor() as cur:
            cur.execute("SELECT from_ms, interval_s FROM intervals ORDER BY from_ms")
            return [(int(a), float(b)) for a, b in cur.fetchall()]

    def hour_intervals(self, hours: Iterable[int]) -> dict[int, float]:
        """The poll interval each hour was collected at (the shortest, if it changed within the
        hour); hours before any record are left out."""
        records = self.intervals()
        out: dict[int, float] = {}
        for hour in hours:
            in_force = [s for start, s in records if start < hour + HOUR_MS]
            during = [s for start, s in records if hour < start < hour + HOUR_MS]
            if in_force:
                out[hour] = min([in_force[-1], *during])
        return out

    def purge(self, hours: Iterable[tuple[int, int]]) -> int:
        """Delete the ticks of committed hours: ``(hour_start_ms, max_seq)`` pairs.

        Only rows up to the ``max_seq`` the rollup read are deleted, so a tick that arrived after
        its hour was committed is never lost. The newest row always stays: SQLite reuses ids
        once the largest is gone, and ``seq`` must only ever grow.

        The collector must never wait long behind a purge: deletes go in short transactions
        (sized to take about ``PURGE_SLICE_S``), each followed by a pause at least as long, so a
        writer that found the file locked gets in at its next retry (SQLite's busy handler
        retries after 1, 2, 5, 10, 15, 20, 25 ms ...). The WAL the deletes grow is folded back
        as they go, without blocking writers (a passive checkpoint), and truncated at the end.
        """
        deleted = batches = 0
        batch = PURGE_FIRST_BATCH
        for hour, max_seq in hours:
            while True:
                started = time.perf_counter()
                with self.transaction() as cur:
                    cur.execute(
                        "DELETE FROM tick_rows WHERE seq IN (SELECT seq FROM tick_rows "
                        "WHERE ts >= ? AND ts < ? AND seq <= ? "
                        "AND seq < (SELECT max(seq) FROM tick_rows) LIMIT ?)",
                        (hour, hour + HOUR_MS, max_seq, batch),
                    )
                    cur.execute("SELECT changes()")  # ADBC reports no rowcount for a DELETE
                    done = int(cur.fetchone()[0])
                took = time.perf_counter() - started
                deleted += done
                batches += 1
                if done < batch:
                    break
                # The next slice: as many rows as fit in the time, within sane bounds.
                batch = max(1_000, min(200_000, int(batch * PURGE_SLICE_S / max(took, 1e-4))))
                if batches % 16 == 0:
                    self.checkpoint(truncate=False)
                time.sleep(max(PURGE_SLICE_S, took))
        if deleted:
            self.checkpoint()
        return deleted

    def checkpoint(self, *, truncate: bool = True) -> bool:
        """Fold the WAL into the file without blocking writers (a passive checkpoint); then,
        if nothing is left in it and ``truncate``, shrink it to zero, without waiting for anyone
        (a writer or a reader in the way makes that a no-op until next time). True if the WAL
        was fully folded in."""
        with self._cursor() as cur:
            cur.execute("PRAGMA wal_checkpoint(PASSIVE)")
            busy, log, folded = (int(v) for v in cur.fetchone())
            if not truncate or busy or log != folded:
                return not busy and log == folded
            cur.execute("PRAGMA busy_timeout=0")
            try:
                cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                busy = int(cur.fetchone()[0])
            finally:
                cur.execute("PRAGMA busy_timeout=10000")
        return busy == 0

    # -- quarantine ----------------------------------------------------------------------------

    def quarantine(self, lo_ms: int, hi_ms: int) -> int:
        """Move rows with ``lo_ms <= ts < hi_ms`` that cannot be ticks to ``ticks_rejected``.

        The constraints keep them out unless a writer turned them off (``PRAGMA
        ignore_check_constraints``); then this finds them before a rollup reads them. The newest
        row of the file is copied but stays (its id must not be reused); readers skip it.
        Returns the rows newly quarantined.
        """
        now = int(time.time() * 1000)
        with self.transaction() as cur:
            cur.execute(
                "INSERT INTO ticks_rejected (symbol, ts, price, reason, moved_at, seq) "
                "SELECT coalesce(s.symbol, 'symbol id ' || t.sym), t.ts, t.price, "
                f"CASE WHEN s.id IS NULL THEN 'unknown symbol id' {_PRICE_REASON} END, ?, t.seq "
                f"FROM tick_rows t LEFT JOIN symbols s ON s.id = t.sym WHERE {_BAD_ROW} "
                "AND t.ts >= ? AND t.ts < ? "
                "AND t.seq NOT IN (SELECT seq FROM ticks_rejected WHERE seq IS NOT NULL)",
                (now, lo_ms, hi_ms),
            )
            cur.execute("SELECT changes()")
            moved = int(cur.fetchone()[0])
            cur.execute(
                "DELETE FROM tick_rows WHERE seq IN (SELECT t.seq FROM tick_rows t "
                f"LEFT JOIN symbols s ON s.id = t.sym WHERE {_BAD_ROW} AND t.ts >= ? AND t.ts < ?) "
                "AND seq < (SELECT max(seq) FROM tick_rows)",
                (lo_ms, hi_ms),
            )
        return moved

    def sweep_out_of_range(self) -> int:
        """Quarantine rows whose ``ts`` no hour can hold (before 1970 or after 9999): no read
        would ever see them, so no rollup would ever take or purge them."""
        return self.quarantine(NO_LOWER, MIN_TS_MS) + self.quarantine(MAX_TS_MS + 1, NO_UPPER)

    def rejected(self) -> pl.DataFrame:
        """Quarantined rows per reason: ``reason, rows, first_moved_ms, last_moved_ms``."""
        with self._cursor() as cur:
            cur.execute(
                "SELECT reason, count(*), min(moved_at), max(moved_at) FROM ticks_rejected "
                "GROUP BY reason ORDER BY count(*) DESC"
            )
            rows = cur.fetchall()
        return pl.DataFrame(
            rows,
            schema={
                "reason": pl.String,
                "rows": pl.Int64,
                "first_moved_ms": pl.Int64,
                "last_moved_ms": pl.Int64,
            },
            orient="row",
        )

    def rejected_count(self) -> int:
        return int(self._scalar("SELECT count(*) FROM ticks_rejected"))

    # -- reads ---------------------------------------------------------------------------------

    def get_state(self, key: str, conn: adbc_sqlite.Connection | None = None) -> Any:
        """The stored value of ``key`` (None if never set), on ``conn`` if given (a
        :meth:`reader`)."""
        with self._cursor(conn) as cur:
            cur.execute("SELECT value FROM state WHERE key = ?", (key,))
            row = cur.fetchone()
        return json.loads(row[0]) if row else None

    def remember_rollup(self, at_ms: int, error: str | None, seconds: float) -> None:
        """Keep a rollup's outcome (for `etl status` and the metrics), with the time of the last
        one that succeeded, carried over a failure."""
        before = self.get_state(LAST_ROLLUP_KEY) or {}
        at = iso(at_ms)
        outcome = {
            "at": at,
            "ok": error is None,
            "error": error,
            "seconds": round(seconds, 3),
            "last_ok_at": at if error is None else before.get("last_ok_at"),
        }
        self.set_state(LAST_ROLLUP_KEY, outcome, at_ms)

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._cursor() as cur:
            cur.execute(sql, params)
            row = cur.fetchone()
        return row[0] if row else None

    def read_window(self, lo_ms: int, hi_ms: int) -> pl.DataFrame:
        """Ticks with ``lo_ms <= ts < hi_ms`` as ``seq, symbol, ts, price``, ordered by ts, seq.

        For people and tests; the rollup reads symbol ids with :meth:`read_hours`.
        """
        with self._cursor() as cur:
            cur.execute(
                "SELECT t.seq, s.symbol, t.ts, t.price FROM tick_rows t "
                "JOIN symbols s ON s.id = t.sym WHERE t.ts >= ? AND t.ts < ? ORDER BY t.ts, t.seq",
                (max(lo_ms, NO_LOWER), min(hi_ms, NO_UPPER)),
            )
            table = cur.fetch_arrow_table()
        return pl.from_arrow(table).cast(TICK_SCHEMA)  # type: ignore[union-attr]

    def symbols(self) -> pl.DataFrame:
        """``sym, symbol`` for every symbol id in the file."""
        with self._cursor() as cur:
            cur.execute("SELECT id AS sym, symbol FROM symbols ORDER BY id")
            table = cur.fetch_arrow_table()
        return pl.from_arrow(table).cast(SYMBOLS_SCHEMA)  # type: ignore[union-attr]

    def read_hours(
        self, hours: Sequence[int], *, threads: int = 2, trades: bool | None = None
    ) -> Window:
        """The ticks of the hours starting at ``hours`` (epoch ms), each read in slices.

        SQLite's row stepping is the bottleneck of a read and ADBC releases the GIL, so two
        connections on two cores read about twice as fast as one. Every slice reads only rows
        that existed when the read began (``seq <= upto``), so the slices agree with each other
        and the ``max_seq`` the purge relies on covers nothing that was not read. A row that got
        past the constraints is moved to quarantine first and counted.

        ``trades`` adds the trade columns (``agg_id, qty, trades``, NULL for poll ticks); by
        default they are read when the file holds any trade, so a poll-only file reads as before.
        """
        if trades is None:
            trades = self.has_trades()
        slices = [
            (h + HOUR_MS * k // threads, h + HOUR_MS * (k + 1) // threads)
            for h in hours
            for k in range(threads)
        ]
        upto = self.max_seq()
        window = self._read(slices, threads, upto, trades)
        valid = (pl.col("price") > 0) & pl.col("price").is_finite()
        if not window.ticks.select(valid.all()).item() or not self._known(window):
            window.rejected = sum(self.quarantine(h, h + HOUR_MS) for h in hours)
            ids = window.symbols["sym"]
            window.ticks = window.ticks.filter(valid & pl.col("sym").is_in(ids.implode()))
        return window

    @staticmethod
    def _known(window: Window) -> bool:
        """Every symbol id read has a name (checked on the few distinct ids, not every row)."""
        ids = window.ticks["sym"].unique()
        return bool(ids.is_in(window.symbols["sym"].implode()).all())

    def _read(
        self, slices: Sequence[tuple[int, int]], threads: int, upto: int, trades: bool = False
    ) -> Window:
        schema = TRADE_WINDOW_SCHEMA if trades else WINDOW_SCHEMA
        if threads <= 1 or len(slices) == 1:
            parts = [self._read_slice(lo, hi, upto, schema) for lo, hi in slices]
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                parts = list(pool.map(lambda b: self._read_slice(*b, upto, schema), slices))
        ticks = pl.concat(parts, rechunk=False) if parts else pl.DataFrame(schema=schema)
        return Window(ticks, self.symbols(), upto)

    def _read_slice(
        self, lo_ms: int, hi_ms: int, upto: int, schema: dict[str, Any] = WINDOW_SCHEMA
    ) -> pl.DataFrame:
        conn = self._connect()
        try:
            return pl.read_database(
                f"SELECT {', '.join(schema)} FROM tick_rows WHERE ts >= ? AND ts < ? "
                "AND seq <= ? ORDER BY ts, seq",
                conn,
                execute_options={"parameters": [lo_ms, hi_ms, upto]},
                schema_overrides=schema,  # an empty window would come back all Int64
            )
        except adbc_sqlite.Error as exc:
            mapped = self._mapped(exc)
            if mapped is None:
                raise
            raise mapped from None
        finally:
            conn.close()

    def count_between(self, lo_ms: int | None, hi_ms: int | None, max_seq: int = NO_UPPER) -> int:
        """Ticks with ``lo_ms <= ts < hi_ms`` (either bound open when ``None``) up to row
        ``max_seq``: with a ledger's ``max_seq``, what that rollup read, unless some were purged."""
        lo = NO_LOWER if lo_ms is None else lo_ms
        hi = NO_UPPER if hi_ms is None else hi_ms
        return int(
            self._scalar(
                "SELECT count(*) FROM tick_rows WHERE ts >= ? AND ts < ? AND seq <= ?",
                (lo, hi, max_seq),
            )
        )

    def hour_sizes(self, lo_ms: int | None = None, hi_ms: int | None = None) -> dict[int, int]:
        """Every hour in ``[lo_ms, hi_ms)`` with ticks, and about how many ticks it holds.

        One index seek per hour found, whatever the number of rows. The size is the distance
        between the first rows of consecutive hours: exact for a collector writing in time
        order, an estimate otherwise (it only sizes rollup chunks).
        """
        firsts: list[tuple[int, int]] = []
        cursor = lo_ms if lo_ms is not None else NO_LOWER
        upper = hi_ms if hi_ms is not None else NO_UPPER
        while True:
            with self._cursor() as cur:
                cur.execute(
                    "SELECT ts, seq FROM tick_rows WHERE ts >= ? AND ts < ? ORDER BY ts LIMIT 1",
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
                f"SELECT DISTINCT ts - ts % {HOUR_MS} FROM tick_rows WHERE seq > ? AND ts < ?",
                (seq, hi_ms),
            )
            return {int(r[0]) for r in cur.fetchall()}

    def max_seq(self) -> int:
        return int(self._scalar("SELECT coalesce(max(seq), 0) FROM tick_rows"))

    def count(self) -> int:
        return int(self._scalar("SELECT count(*) FROM tick_rows"))

    def last_tick(self) -> int | None:
        return self._scalar("SELECT max(ts) FROM tick_rows")

    def last_ticks(self, since_ms: int, until_ms: int = NO_UPPER) -> dict[str, int]:
        """Newest ``ts`` per symbol among ticks in ``[since_ms, until_ms]``."""
        with self._cursor() as cur:
            cur.execute(
                "SELECT s.symbol, max(t.ts) FROM tick_rows t JOIN symbols s ON s.id = t.sym "
                "WHERE t.ts >= ? AND t.ts <= ? GROUP BY s.symbol",
                (since_ms, until_ms),
            )
            return {str(s): int(t) for s, t in cur.fetchall()}

    def file_sizes(self) -> dict[str, int]:
        """Bytes on disk: the file, its WAL and its shared-memory index."""
        out = {}
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                out[self.path.name + suffix] = (
                    (self.path.parent / (self.path.name + suffix)).stat().st_size
                )
        return out


def _free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(path.parent).free
    except OSError:
        return 1 << 40


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def open_staging(settings: Settings, *, create: bool = True) -> Staging:
    """The configured staging file. ``create=False`` for commands that only look."""
    return Staging(
        settings.staging_path,
        synchronous=settings.sqlite_synchronous,
        create=create,
        name=settings.staging_name,
    )
