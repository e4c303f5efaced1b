"""The staging file's schema: created with the file, upgraded in place from older versions, and
the file's identity (a UUID and a readable name in its ``meta`` table).

``ticks(symbol, ts, price)`` is a view over ``tick_rows(seq, sym, ts, price)`` with integer symbol
ids from ``symbols``; outside tools read and write the view. The constraints refuse a row that
cannot be a tick (STRICT types, ``ts`` in 1970..9999, a finite price > 0, a symbol of 2-20
upper-case letters and digits).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from etl.drivers import sqlite as adbc_sqlite
from etl.hours import MAX_TS_MS, MIN_TS_MS, now_ms
from etl.staging.db import StagingDb

# 3: trade columns, trade_cursor and trade_holes (files of version 2 are upgraded in place).
SCHEMA_VERSION = 3

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


def ensure(db: StagingDb) -> int | None:
    """Create the schema, or upgrade a file made before staging identity (a ``ticks`` table).

    Returns the version upgraded from, if any. The upgrade keeps every row's id (the ledger
    refers to it) and moves rows that cannot be ticks to ``ticks_rejected``, in one
    transaction: a crash or a full disk leaves the file as it was.
    """
    with db.cursor() as cur:
        cur.execute("SELECT type FROM sqlite_master WHERE name = 'ticks'")
        row = cur.fetchone()
    legacy = row is not None and row[0] == "table"
    if not legacy and row is not None:
        return _upgrade_in_place(db)
    now = now_ms()
    with db.transaction() as cur:
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


def _upgrade_in_place(db: StagingDb) -> int | None:
    """Bring a file of an older version with ``tick_rows`` up to date, keeping every row:
    ``ADD COLUMN`` (allowed on STRICT tables) leaves the rows as they are, their new columns
    NULL. Returns the version upgraded from, if any."""
    with db.cursor() as cur:
        cur.execute("SELECT value FROM meta WHERE key = 'schema_version'")
        row = cur.fetchone()
    version = int(row[0]) if row else SCHEMA_VERSION
    if version >= SCHEMA_VERSION:
        return None
    with db.transaction() as cur:
        cur.execute("SELECT name FROM pragma_table_info('tick_rows')")
        present = {str(r[0]) for r in cur.fetchall()}
        for name, column in _TRADE_COLUMNS:
            if name not in present:
                cur.execute(f"ALTER TABLE tick_rows ADD COLUMN {column}")
        cur.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
        )
    return version


def identity(db: StagingDb, name: str | None) -> tuple[str, str]:
    """The file's id and readable name; ``name`` renames it (default: host and path)."""
    found = meta(db)
    stored = found.get("name")
    if (name is not None and name != stored) or stored is None:
        stored = name or default_name(db.path)
        with db.transaction() as cur:
            cur.execute("INSERT OR REPLACE INTO meta VALUES ('name', ?)", (stored,))
    return found["staging_id"], stored


def meta(db: StagingDb) -> dict[str, str]:
    with db.cursor() as cur:
        cur.execute("SELECT key, value FROM meta")
        return {str(k): str(v) for k, v in cur.fetchall()}


def default_name(path: Path) -> str:
    import socket

    return f"{socket.gethostname()}:{path.resolve()}"


def describe(db: StagingDb) -> dict[str, Any]:
    """What a staging file of any version holds, read without changing it: its ``meta``, its
    rows and highest row id, and its quarantined rows (``None`` before quarantine existed)."""
    with db.cursor() as cur:
        cur.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        tables = {str(r[0]) for r in cur.fetchall()}
        found: dict[str, str] = {}
        if "meta" in tables:
            cur.execute("SELECT key, value FROM meta")
            found = {str(k): str(v) for k, v in cur.fetchall()}
        rows = "tick_rows" if "tick_rows" in tables else "ticks"  # a file from 0.1.0
        cur.execute(f"SELECT count(*), coalesce(max(rowid), 0) FROM {rows}")
        count, max_seq = cur.fetchone()
        rejected = None
        if "ticks_rejected" in tables:
            cur.execute("SELECT count(*) FROM ticks_rejected")
            rejected = int(cur.fetchone()[0])
    return {"meta": found, "rows": int(count), "max_seq": int(max_seq), "rejected": rejected}


def ensure_trade_tables(cur: adbc_sqlite.Cursor) -> None:
    """The trade tables, made with the first trades stored, so a file that only ever held polls
    stays as small as before."""
    for ddl in _TRADE_DDL:
        cur.execute(ddl)
