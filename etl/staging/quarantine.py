"""Quarantine: staged rows that cannot be ticks move to ``ticks_rejected`` (symbol, ts, price,
reason, moved_at) in the same file, with the reason; never rolled up, never purged."""

from __future__ import annotations

from typing import Any

from etl.drivers import named
from etl.drivers import sqlite as adbc_sqlite
from etl.hours import MAX_TS_MS, MIN_TS_MS, NO_LOWER, NO_UPPER, now_ms
from etl.staging.db import StagingDb

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


class Quarantine:
    """The ``ticks_rejected`` table of one staging file, and the moves into it."""

    def __init__(self, db: StagingDb) -> None:
        self.db = db

    def move(self, lo_ms: int, hi_ms: int) -> int:
        """Move rows with ``lo_ms <= ts < hi_ms`` that cannot be ticks to ``ticks_rejected``.

        The constraints keep them out unless a writer turned them off (``PRAGMA
        ignore_check_constraints``); then this finds them before a rollup reads them. The newest
        row of the file is copied but stays (its id must not be reused); readers skip it.
        Returns the rows newly quarantined.
        """
        now = now_ms()
        with self.db.transaction() as cur:
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
        return self.move(NO_LOWER, MIN_TS_MS) + self.move(MAX_TS_MS + 1, NO_UPPER)

    def reasons(self) -> list[dict[str, Any]]:
        """Quarantined rows per reason, most first: ``reason, rows, first_moved_ms,
        last_moved_ms``."""
        with self.db.cursor() as cur:
            cur.execute(
                "SELECT reason, count(*) AS rows, min(moved_at) AS first_moved_ms, "
                "max(moved_at) AS last_moved_ms FROM ticks_rejected "
                "GROUP BY reason ORDER BY count(*) DESC"
            )
            return named(cur)

    def count(self, conn: adbc_sqlite.Connection | None = None) -> int:
        """Rows in quarantine, on ``conn`` if given (a reader of another thread)."""
        with self.db.cursor(conn) as cur:
            cur.execute("SELECT count(*) FROM ticks_rejected")
            return int(cur.fetchone()[0])
