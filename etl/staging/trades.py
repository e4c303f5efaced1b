"""Trades as ticks (``etl collect --source trades``): rows with the exchange's aggregate trade id,
quantity and trade count (NULL in poll ticks); per symbol the cursor up to which the id sequence is
known to have no holes (it survives restarts and purges), and the ranges of ids given up on.
A partial unique index on ``(sym, agg_id)`` drops a trade seen twice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from etl.drivers import named
from etl.hours import NO_LOWER, NO_UPPER
from etl.imports import deferred
from etl.staging.db import StagingDb
from etl.staging.schema import ensure_trade_tables

if TYPE_CHECKING:
    import polars as pl
else:  # imported at the first frame made: a rollup with nothing to do makes none
    pl = deferred("polars")

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


def cursor_schema() -> dict[str, Any]:
    """A symbol's cursor: the last trade id and time staged, since when it is followed and
    since when it is live (Polars types; made when a frame is)."""
    return {c: pl.Int64 for c in ("sym", "last_id", "last_ts", "since_ms", "live_ms")}


def hole_schema() -> dict[str, Any]:
    """A hole in a symbol's trade ids: between which ids and times, why, found when."""
    return {
        "symbol": pl.String,
        **{c: pl.Int64 for c in ("sym", "after_id", "before_id", "from_ms", "to_ms")},
        "reason": pl.String,
        "found_ms": pl.Int64,
    }


class Trades:
    """The trade rows, cursors and holes of one staging file."""

    def __init__(self, db: StagingDb) -> None:
        self.db = db
        self._has_trade_tables = False

    def append(
        self,
        trades: pl.DataFrame,
        cursors: pl.DataFrame | None = None,
        holes: pl.DataFrame | None = None,
    ) -> int:
        """Store a batch of trades (``sym, ts, price, agg_id, qty, trades``), the symbols'
        cursors (:func:`cursor_schema`) and holes given up on (``sym, after_id, before_id, from_ms,
        to_ms, reason, found_ms``), in one transaction; the trades newly stored.

        A trade already staged (same symbol and id) is skipped. ADBC's ingest cannot skip a
        conflicting row, so the batch goes to a temporary table and on from there.
        """
        return sum(self.append_parts([trades], cursors, holes))

    def append_parts(
        self,
        parts: Sequence[pl.DataFrame],
        cursors: pl.DataFrame | None = None,
        holes: pl.DataFrame | None = None,
    ) -> list[int]:
        """:meth:`append` of several frames of trades in one transaction, in order; the trades
        each newly stored. A trade in two parts is credited to the first (the trade feed passes
        the stream's trades first, so it can say which of the stream's messages were
        duplicates)."""
        inserted = [0] * len(parts)
        with self.db.transaction() as cur:
            if not self._trade_tables:
                ensure_trade_tables(cur)
            for k, trades in enumerate(parts):
                if not trades.height:
                    continue
                table = trades.select(TRADE_SCHEMA.names).to_arrow().cast(TRADE_SCHEMA)
                cur.adbc_ingest("trade_batch", table, mode="replace", temporary=True)
                cur.execute(
                    "INSERT INTO tick_rows (sym, ts, price, agg_id, qty, trades) "
                    "SELECT sym, ts, price, agg_id, qty, trades FROM temp.trade_batch "
                    "WHERE true ORDER BY sym, agg_id "
                    "ON CONFLICT (sym, agg_id) WHERE agg_id IS NOT NULL DO NOTHING"
                )
                cur.execute("SELECT changes()")
                inserted[k] = int(cur.fetchone()[0])
            if cursors is not None and cursors.height:
                schema = cursor_schema()
                cur.adbc_ingest(
                    "cursor_batch",
                    cursors.select(list(schema)).cast(schema).to_arrow(),  # type: ignore[arg-type]
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
                self.db.scalar("SELECT count(*) FROM sqlite_master WHERE name = 'trade_cursor'")
                == 1
            )
        return self._has_trade_tables

    def cursors(self) -> pl.DataFrame:
        """Every symbol's trade cursor: ``symbol`` and :func:`cursor_schema`'s columns."""
        if not self._trade_tables:
            return pl.DataFrame(schema={"symbol": pl.String, **cursor_schema()})
        with self.db.cursor() as cur:
            cur.execute(
                "SELECT s.symbol, c.sym, c.last_id, c.last_ts, c.since_ms, c.live_ms "
                "FROM trade_cursor c JOIN symbols s ON s.id = c.sym ORDER BY c.sym"
            )
            rows = cur.fetchall()
        return pl.DataFrame(rows, schema={"symbol": pl.String, **cursor_schema()}, orient="row")

    def holes(self, lo_ms: int | None = None, hi_ms: int | None = None) -> pl.DataFrame:
        """Holes given up on that overlap ``[lo_ms, hi_ms)`` (:func:`hole_schema`), oldest
        first."""
        return pl.DataFrame(self.hole_rows(lo_ms, hi_ms), schema=hole_schema())

    def hole_rows(self, lo_ms: int | None = None, hi_ms: int | None = None) -> list[dict[str, Any]]:
        """:meth:`holes` as rows by column name (no frame: `etl status`)."""
        if not self._trade_tables:
            return []
        with self.db.cursor() as cur:
            cur.execute(
                "SELECT s.symbol, h.sym, h.after_id, h.before_id, h.from_ms, h.to_ms, h.reason, "
                "h.found_ms FROM trade_holes h JOIN symbols s ON s.id = h.sym "
                "WHERE h.to_ms >= ? AND h.from_ms < ? ORDER BY h.from_ms, h.sym",
                (NO_LOWER if lo_ms is None else lo_ms, NO_UPPER if hi_ms is None else hi_ms),
            )
            return named(cur)

    def exist(self) -> bool:
        """Whether any staged row is a trade (one seek in the trade index, which exists once a
        trade was stored)."""
        if not self._trade_tables:
            return False
        return (
            self.db.scalar(
                "SELECT 1 FROM tick_rows INDEXED BY tick_rows_trade WHERE agg_id IS NOT NULL LIMIT 1"
            )
            is not None
        )
