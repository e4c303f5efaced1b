"""The tick rows of a staging file: appends (one transaction per poll), the hourly window the
rollup reads (a range scan on ``ts``, in parallel slices), counts and hour sizes, and the purge.

``seq`` is a row's id: it only grows, and the rollup's ledger refers to it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from etl.drivers import sqlite as adbc_sqlite
from etl.hours import HOUR_MS, NO_LOWER, NO_UPPER, hour_floor
from etl.imports import deferred
from etl.staging.db import StagingDb
from etl.staging.quarantine import Quarantine
from etl.staging.state import _UPSERT_STATE

if TYPE_CHECKING:
    import polars as pl
else:  # imported at the first frame made: a rollup with nothing to do makes none
    pl = deferred("polars")

WINDOW = ("sym", "ts", "price")  # what a rollup reads of a tick row
TRADE_WINDOW = (*WINDOW, "agg_id", "qty", "trades")


def schema_of(columns: Sequence[str]) -> dict[str, Any]:
    """The Polars types of staged columns, by name (made when a frame is: Polars is imported
    then, not when this module is)."""
    types = {
        "seq": pl.Int64,
        "sym": pl.Int64,
        "symbol": pl.String,
        "ts": pl.Int64,
        "price": pl.Float64,
        "agg_id": pl.Int64,
        "qty": pl.Float64,
        "trades": pl.Int64,
    }
    return {column: types[column] for column in columns}


_APPEND_SCHEMA = pa.schema([("sym", pa.int64()), ("ts", pa.int64()), ("price", pa.float64())])

# A purge deletes in transactions of about this long, with a pause as long after each, so a
# collector's commit never waits long behind it.
PURGE_SLICE_S = 0.02

PURGE_FIRST_BATCH = 5_000


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


class Ticks:
    """The ``tick_rows`` and ``symbols`` tables of one staging file."""

    def __init__(self, db: StagingDb, quarantine: Quarantine) -> None:
        self.db = db
        self.quarantine = quarantine  # where a read moves rows that got past the constraints
        self._sym_ids: dict[str, int] = {}
        self._last_ids: tuple[Sequence[str], pa.Array] | None = None
        self._load_symbols()

    def _load_symbols(self) -> None:
        with self.db.cursor() as cur:
            cur.execute("SELECT symbol, id FROM symbols")
            self._sym_ids = {str(s): int(i) for s, i in cur.fetchall()}

    def symbol_ids(self, symbols: Sequence[str]) -> list[int]:
        """The ids of ``symbols``, adding those not seen before."""
        missing = [s for s in dict.fromkeys(symbols) if s not in self._sym_ids]
        if missing:
            with self.db.transaction() as cur:
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
        with self.db.transaction() as cur:
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
        with self.db.transaction() as cur:
            cur.adbc_ingest("tick_rows", table, mode="append")
        return table.num_rows

    def read_window(self, lo_ms: int, hi_ms: int) -> pl.DataFrame:
        """Ticks with ``lo_ms <= ts < hi_ms`` as ``seq, symbol, ts, price``, ordered by ts, seq.

        For people and tests; the rollup reads symbol ids with :meth:`read_hours`.
        """
        with self.db.cursor() as cur:
            cur.execute(
                "SELECT t.seq, s.symbol, t.ts, t.price FROM tick_rows t "
                "JOIN symbols s ON s.id = t.sym WHERE t.ts >= ? AND t.ts < ? ORDER BY t.ts, t.seq",
                (max(lo_ms, NO_LOWER), min(hi_ms, NO_UPPER)),
            )
            table = cur.fetch_arrow_table()
        return pl.from_arrow(table).cast(schema_of(("seq", "symbol", "ts", "price")))  # type: ignore[union-attr]

    def symbols(self) -> pl.DataFrame:
        """``sym, symbol`` for every symbol id in the file."""
        with self.db.cursor() as cur:
            cur.execute("SELECT id AS sym, symbol FROM symbols ORDER BY id")
            table = cur.fetch_arrow_table()
        return pl.from_arrow(table).cast(schema_of(("sym", "symbol")))  # type: ignore[union-attr]

    def read_hours(self, hours: Sequence[int], *, trades: bool, threads: int = 2) -> Window:
        """The ticks of the hours starting at ``hours`` (epoch ms), each read in slices.

        SQLite's row stepping is the bottleneck of a read and ADBC releases the GIL, so two
        connections on two cores read about twice as fast as one. Every slice reads only rows
        that existed when the read began (``seq <= upto``), so the slices agree with each other
        and the ``max_seq`` the purge relies on covers nothing that was not read. A row that got
        past the constraints is moved to quarantine first and counted.

        ``trades`` adds the trade columns (``agg_id, qty, trades``, NULL for poll ticks).
        """
        slices = [
            (h + HOUR_MS * k // threads, h + HOUR_MS * (k + 1) // threads)
            for h in hours
            for k in range(threads)
        ]
        upto = self.max_seq()
        window = self._read(slices, threads, upto, trades)
        valid = (pl.col("price") > 0) & pl.col("price").is_finite()
        if not window.ticks.select(valid.all()).item() or not self._known(window):
            window.rejected = sum(self.quarantine.move(h, h + HOUR_MS) for h in hours)
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
        schema = schema_of(TRADE_WINDOW if trades else WINDOW)
        if threads <= 1 or len(slices) == 1:
            parts = [self._read_slice(lo, hi, upto, schema) for lo, hi in slices]
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                parts = list(pool.map(lambda b: self._read_slice(*b, upto, schema), slices))
        ticks = pl.concat(parts, rechunk=False) if parts else pl.DataFrame(schema=schema)
        return Window(ticks, self.symbols(), upto)

    def _read_slice(
        self, lo_ms: int, hi_ms: int, upto: int, schema: dict[str, Any]
    ) -> pl.DataFrame:
        conn = self.db.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    f"SELECT {', '.join(schema)} FROM tick_rows WHERE ts >= ? AND ts < ? "
                    "AND seq <= ? ORDER BY ts, seq",
                    (lo_ms, hi_ms, upto),
                )
                table = cur.fetch_arrow_table()
            if table.num_rows == 0:  # an empty slice would come back all Int64
                return pl.DataFrame(schema=schema)
            return pl.from_arrow(table).cast(schema)  # type: ignore[union-attr, arg-type]
        except adbc_sqlite.Error as exc:
            mapped = self.db.mapped(exc)
            if mapped is None:
                raise
            raise mapped from None
        finally:
            conn.close()

    def hour_rows(self, hour: int, max_seq: int) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Every staged row of the hour starting at ``hour`` up to row ``max_seq`` (what a rollup
        with that ledger ``max_seq`` read, and what the purge would delete), with every staged
        column, ordered by ``seq``: the poll ticks ``seq, sym, ts, price`` and the trades ``seq,
        sym, ts, price, agg_id, qty, trades``. (Two reads: the SQLite driver types a column by
        the values of its first rows, and a trade's columns are NULL in a poll tick.)"""
        bounds = (hour, hour + HOUR_MS, max_seq)
        where = "WHERE ts >= ? AND ts < ? AND seq <= ?"
        polls = self._rows(schema_of(("seq", *WINDOW)), f"{where} AND agg_id IS NULL", bounds)
        trades = self._rows(
            schema_of(("seq", *TRADE_WINDOW)), f"{where} AND agg_id IS NOT NULL", bounds
        )
        return polls, trades

    def _rows(self, schema: dict[str, Any], where: str, params: Sequence[Any]) -> pl.DataFrame:
        with self.db.cursor() as cur:
            cur.execute(f"SELECT {', '.join(schema)} FROM tick_rows {where} ORDER BY seq", params)
            table = cur.fetch_arrow_table()
        if table.num_rows == 0:
            return pl.DataFrame(schema=schema)
        return pl.from_arrow(table).cast(schema)  # type: ignore[union-attr, arg-type]

    def count_between(self, lo_ms: int | None, hi_ms: int | None, max_seq: int = NO_UPPER) -> int:
        """Ticks with ``lo_ms <= ts < hi_ms`` (either bound open when ``None``) up to row
        ``max_seq``: with a ledger's ``max_seq``, what that rollup read, unless some were purged."""
        lo = NO_LOWER if lo_ms is None else lo_ms
        hi = NO_UPPER if hi_ms is None else hi_ms
        return int(
            self.db.scalar(
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
            with self.db.cursor() as cur:
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
        with self.db.cursor() as cur:
            cur.execute(
                f"SELECT DISTINCT ts - ts % {HOUR_MS} FROM tick_rows WHERE seq > ? AND ts < ?",
                (seq, hi_ms),
            )
            return {int(r[0]) for r in cur.fetchall()}

    def max_seq(self) -> int:
        return int(self.db.scalar("SELECT coalesce(max(seq), 0) FROM tick_rows"))

    def count(self, conn: adbc_sqlite.Connection | None = None) -> int:
        """Staged rows, on ``conn`` if given (a reader of another thread)."""
        with self.db.cursor(conn) as cur:
            cur.execute("SELECT count(*) FROM tick_rows")
            return int(cur.fetchone()[0])

    def last_tick(self) -> int | None:
        return self.db.scalar("SELECT max(ts) FROM tick_rows")

    def last_ticks(
        self, since_ms: int, until_ms: int = NO_UPPER, wanted: Iterable[str] = ()
    ) -> dict[str, int]:
        """Newest ``ts`` per symbol among ticks in ``[since_ms, until_ms]``.

        With ``wanted`` symbols, it looks back from the newest tick in widening windows (a
        minute, then 16 times more each time) and stops once each wanted one is found: a
        file collected as it should be answers from its last minute, whatever its size (a day
        of 3,000 symbols at 5 s is 52 M rows), and only a wanted symbol gone quiet makes it
        read the whole range. The wanted symbols' times are those of the whole range.
        """
        wanted = set(wanted)
        newest = self.db.scalar("SELECT max(ts) FROM tick_rows WHERE ts <= ?", (until_ms,))
        span = 60_000
        while True:
            lo = since_ms if newest is None or not wanted else max(since_ms, newest - span)
            with self.db.cursor() as cur:
                cur.execute(
                    "SELECT s.symbol, max(t.ts) FROM tick_rows t JOIN symbols s ON s.id = t.sym "
                    "WHERE t.ts >= ? AND t.ts <= ? GROUP BY s.symbol",
                    (lo, until_ms),
                )
                found = {str(s): int(t) for s, t in cur.fetchall()}
            if lo == since_ms or wanted <= found.keys():
                return found
            span *= 16

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
                with self.db.transaction() as cur:
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
                    self.db.checkpoint(truncate=False)
                time.sleep(max(PURGE_SLICE_S, took))
        if deleted:
            self.db.checkpoint()
        return deleted
