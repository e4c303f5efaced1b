"""Every aggregate trade into staging, with no hole in the id sequence: the trade collector's core.

Trades come from the WebSocket streams (:mod:`etl.exchange.stream`) and, for what the streams
missed, from REST ``/api/v3/aggTrades?fromId=`` (a catch-up worker thread, under the client's
weight governor). Both go through :meth:`TradeFeed.flush`: one SQLite transaction per batch
(every ``flush_s``), which also moves each symbol's cursor. A trade seen twice is stored once.

Per symbol, a :class:`Chain` says up to which id the staged sequence has no hole (``last_id``),
since when (``since_ms``), and up to when the stream is proven to have delivered everything
(``live_ms``). Ids stored above a hole wait in ``above``. After any disconnect (a lost
connection, a restart after a crash; not a make-before-break rotation) a symbol is
*unverified*: its cursor no longer follows the stream until either a stream trade joins the
chain directly or a catch-up has fetched everything from ``last_id + 1`` to the stream. A hole
REST cannot fill within ``hole_after_s`` is recorded in ``trade_holes`` with its id and time
range, logged, and jumped over; its hours then have bars with ``ids_missing`` > 0, which
``etl backfill`` replaces with kline bars.

On a symbol's first start the catch-up begins at the start of the current hour
(``startTime``), so the first hour's bar is complete too. Trades the stream delivers before that
start is known are stored but wait in ``above``, claimed by no cursor, until the catch-up has
fetched from the hour's first trade up to them (docs/trades.md, "A first start is checked").

Every stream message is a trade stored or counted under a reason in ``FeedStats.skipped``
(:data:`etl.exchange.parse.SKIP_REASONS`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from etl.exchange.client import BinanceClient
from etl.exchange.endpoints import AGG_TRADES_LIMIT
from etl.exchange.errors import BinanceError, RateLimited
from etl.exchange.parse import (
    DUPLICATE,
    NOT_WRITTEN,
    SKIP_REASONS,
    TRADE_FRAME_SCHEMA,
    UNKNOWN_SYMBOL,
    parse_trade_events,
)
from etl.exchange.stream import Drained, StreamTimings, TradeStream
from etl.hours import hour_floor, iso, ms, now_ms
from etl.staging.store import Staging
from etl.staging.trades import cursor_schema

log = logging.getLogger("etl.collector")

FLUSH_S = 0.25
GAP_GRACE_S = 1.0  # an out-of-order trade usually fills its gap within this
HOLE_AFTER_S = 600.0
LIVE_WRITE_S = 1.0  # how often live_ms alone is written


@dataclass
class Chain:
    """One symbol's continuity: ids up to ``last_id`` (traded at ``last_ts``) are staged with no
    hole since ``since_ms``; runs ``[lo, hi, lo_ts, hi_ts]`` stored above a hole are in ``above``.

    >>> c = Chain(1, "BTCUSDT", last_id=10)
    >>> c.add(12, 14, 5, 6); c.last_id, c.above
    (10, [[12, 14, 5, 6]])
    >>> c.add(11, 11, 4, 4); c.last_id, c.last_ts, c.above
    (14, 6, [])
    """

    sym: int
    symbol: str
    last_id: int | None = None
    last_ts: int = 0
    since_ms: int = 0
    live_ms: int = 0
    above: list[list[int]] = field(default_factory=list)
    verified: bool = False
    pending_since: float = 0.0  # monotonic: unverified or holed since then
    job: bool = False  # a catch-up is in flight

    def clone(self) -> Chain:
        return dataclasses.replace(self, above=[run[:] for run in self.above])

    def add(self, lo: int, hi: int, lo_ts: int, hi_ts: int) -> None:
        """Note that ids ``lo..hi`` are staged."""
        if self.last_id is not None and hi <= self.last_id:
            return
        self.above.append([lo, hi, lo_ts, hi_ts])
        self.above.sort()
        merged: list[list[int]] = []
        for run in self.above:
            if merged and run[0] <= merged[-1][1] + 1:
                if run[1] > merged[-1][1]:
                    merged[-1][1], merged[-1][3] = run[1], run[3]
            else:
                merged.append(run)
        self.above = merged
        self._absorb()

    def _absorb(self) -> None:
        if self.last_id is None:
            return
        while self.above and self.above[0][0] <= self.last_id + 1:
            run = self.above.pop(0)
            if run[1] > self.last_id:
                self.last_id, self.last_ts = run[1], run[3]

    def start(self, last_id: int, last_ts: int, since_ms: int) -> None:
        """Where the chain of a symbol seen for the first time begins."""
        self.last_id, self.last_ts, self.since_ms = last_id, last_ts, since_ms
        self.above = [r for r in self.above if r[1] > last_id]
        self._absorb()

    def jump(self) -> tuple[int, int, int, int] | None:
        """Give up on the first hole: skip to the run above it; the hole ``(after_id,
        before_id, from_ms, to_ms)``, or None if there is nothing to jump to."""
        if not self.above:
            return None
        lo, _, lo_ts, _ = self.above[0]
        if self.last_id is None:  # the first start could not be fetched: the chain starts here
            self.start(lo - 1, lo_ts, lo_ts)
            return None
        hole = (self.last_id, lo, self.last_ts, lo_ts)
        self.last_id, self.last_ts = lo - 1, lo_ts
        self._absorb()
        return hole


def runs(trades: pl.DataFrame) -> pl.DataFrame:
    """Consecutive id runs per symbol: ``sym, lo, hi, lo_ts, hi_ts``.

    >>> runs(pl.DataFrame({"sym": [1, 1, 1, 2], "agg_id": [5, 6, 9, 5], "ts": [1, 2, 3, 4]})).rows()
    [(1, 5, 6, 1, 2), (1, 9, 9, 3, 3), (2, 5, 5, 4, 4)]
    """
    ordered = trades.select("sym", "agg_id", "ts").unique(["sym", "agg_id"]).sort("sym", "agg_id")
    return (
        ordered.with_columns(run=pl.col("agg_id") - pl.int_range(pl.len()).over("sym"))
        .group_by("sym", "run", maintain_order=True)
        .agg(
            lo=pl.col("agg_id").first(),
            hi=pl.col("agg_id").last(),
            lo_ts=pl.col("ts").first(),
            hi_ts=pl.col("ts").last(),
        )
        .drop("run")
    )


@dataclass
class _Job:
    sym: int
    symbol: str
    from_id: int | None  # None: the symbol's first start (from the current hour)
    until_id: int | None  # stop once past this id (None: until caught up with now)


@dataclass
class _Result:
    kind: str  # "start", "page", "done", "gave_up"
    sym: int
    frame: pl.DataFrame | None = None
    start: tuple[int, int, int] | None = None  # last_id, last_ts, since_ms
    detail: str = ""


class CatchUp:
    """Fetches missing trades over REST, one symbol at a time, on a thread of its own."""

    def __init__(
        self,
        client: BinanceClient,
        exchange_ms: Callable[[], int],
        stop: threading.Event,
        hole_after_s: float = HOLE_AFTER_S,
    ) -> None:
        self.client = client
        self.exchange_ms = exchange_ms
        self.stop = stop
        self.hole_after_s = hole_after_s
        self._jobs: deque[_Job] = deque()
        self._results: list[_Result] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trade-catch-up", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: _Job) -> None:
        with self._lock:
            self._jobs.append(job)
        self._wake.set()

    def drain(self) -> list[_Result]:
        with self._lock:
            out, self._results = self._results, []
        return out

    def _emit(self, result: _Result) -> None:
        with self._lock:
            self._results.append(result)

    def _run(self) -> None:
        while not self.stop.is_set():
            with self._lock:
                job = self._jobs.popleft() if self._jobs else None
            if job is None:
                self._wake.wait(0.2)
                self._wake.clear()
                continue
            try:
                self._fetch(job)
            except Exception as exc:  # the feed goes on, whatever happened here
                self._emit(_Result("gave_up", job.sym, detail=f"catch-up failed: {exc}"))

    def _page(self, job: _Job, give_up_at: float, **query: Any) -> pl.DataFrame | None:
        """One page, retried through errors and bans until ``give_up_at``; None if given up."""
        backoff = 0.5
        while not self.stop.is_set():
            try:
                frame, _ = self.client.agg_trades(job.symbol, **query)
                return frame
            except RateLimited as exc:
                wait = exc.until - time.time()
                error = str(exc)
            except BinanceError as exc:
                wait, error = backoff, str(exc)
                backoff = min(backoff * 2, 30.0)
            if time.monotonic() + max(0.0, wait) > give_up_at:
                self._emit(_Result("gave_up", job.sym, detail=error))
                return None
            self.stop.wait(max(0.05, min(wait, 30.0)))
        return None

    def _fetch(self, job: _Job) -> None:
        give_up_at = time.monotonic() + self.hole_after_s
        next_id = job.from_id
        if next_id is None:
            hour = hour_floor(self.exchange_ms())
            while True:
                first = self._page(job, give_up_at, start_ms=hour)
                if first is None:
                    return
                if first.height:
                    head = first.row(0, named=True)
                    start = (head["agg_id"] - 1, hour - 1, hour)
                    break
                # Nothing traded yet this hour: the chain begins after the latest trade...
                recent = self._page(job, give_up_at, limit=1)
                if recent is None:
                    return
                last = recent.row(0, named=True) if recent.height else {"agg_id": -1, "ts": 0}
                if last["ts"] < hour:
                    start = (last["agg_id"], last["ts"], hour)
                    break
                # ... unless the hour's first trades came between the two requests: starting
                # after the latest would skip them unseen. Read the hour from its start again.
            self._emit(_Result("start", job.sym, start=start))
            if first.height:
                self._emit(_Result("page", job.sym, frame=first))
            if first.height < AGG_TRADES_LIMIT:
                self._emit(_Result("done", job.sym))
                return
            next_id = int(first["agg_id"].max()) + 1  # type: ignore[arg-type]
        while not self.stop.is_set():
            page = self._page(job, give_up_at, from_id=next_id)
            if page is None:
                return
            if page.height:
                self._emit(_Result("page", job.sym, frame=page))
            top = int(page["agg_id"].max()) if page.height else next_id - 1  # type: ignore[arg-type]
            if page.height < AGG_TRADES_LIMIT or (job.until_id is not None and top >= job.until_id):
                self._emit(_Result("done", job.sym))
                return
            next_id = top + 1


@dataclass
class FeedStats:
    """The feed's running totals. Every stream message is either a trade stored from the stream
    or skipped under a reason: ``messages == streamed + sum(skipped.values())``."""

    trades: int = 0  # newly staged, from either source
    duplicates: int = 0  # trades dropped as already staged, from either source
    caught_up: int = 0  # trades fetched over REST
    holes: int = 0
    reconnects: int = 0
    messages: int = 0  # stream messages received
    streamed: int = 0  # trades the stream delivered first and were staged
    # stream messages not stored, by reason (etl.exchange.parse.SKIP_REASONS)
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))

    def skip(self, reasons: dict[str, int]) -> None:
        for reason, n in reasons.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + n


# The live table's rows: one per symbol.
LIVE_SCHEMA = {
    "symbol": pl.String,
    "last": pl.Float64,
    "trades_per_s": pl.Float64,
    "hour_trades": pl.Int64,
    "last_trade_ms": pl.Int64,
    "lag_s": pl.Float64,
}


class SymbolActivity:
    """Per symbol: trades this hour, the last price and trade time, and trades per second over
    the last few seconds as the streams deliver them (a catch-up's backlog is not the market's
    pace), for the live table."""

    WINDOW_S = 5.0

    def __init__(self) -> None:
        self.hour: int | None = None
        self.state: dict[str, list[Any]] = {}  # symbol -> [hour trades, last price, last ts]
        self.recent: deque[tuple[float, dict[str, int]]] = deque()

    def update(self, batch: pl.DataFrame, streamed: pl.DataFrame, now: float) -> None:
        counts = dict(streamed.group_by("symbol").len().iter_rows())
        self.recent.append((now, counts))
        while self.recent and self.recent[0][0] < now - self.WINDOW_S:
            self.recent.popleft()
        if batch.is_empty():
            return
        per = batch.group_by("symbol").agg(
            n=pl.len(),
            price=pl.col("price").sort_by("agg_id").last(),
            ts=pl.col("ts").max(),
        )
        for symbol, n, price, ts in per.iter_rows():
            hour = hour_floor(ts)
            entry = self.state.setdefault(symbol, [0, price, ts, hour])
            if hour > entry[3]:
                entry[0], entry[3] = 0, hour
            entry[0] += n
            if ts >= entry[2]:
                entry[1], entry[2] = price, ts

    def frame(self, exchange_now_ms: int, now: float) -> pl.DataFrame:
        span = max(1.0, min(self.WINDOW_S, now - self.recent[0][0])) if self.recent else 1.0
        rates: dict[str, int] = {}
        for _, counts in self.recent:
            for symbol, n in counts.items():
                rates[symbol] = rates.get(symbol, 0) + n
        rows = [
            (s, e[1], rates.get(s, 0) / span, e[0], e[2], max(0.0, (exchange_now_ms - e[2]) / 1000))
            for s, e in sorted(self.state.items())
        ]
        return pl.DataFrame(rows, schema=LIVE_SCHEMA, orient="row")


class TradeFeed:
    """Streams, catch-up and the staging writes of ``symbols``; driven by :meth:`flush`."""

    def __init__(
        self,
        staging: Staging,
        client: BinanceClient,
        ws_url: str,
        symbols: Sequence[str],
        *,
        event: Callable[[str, int], None],
        timings: StreamTimings | None = None,
        hole_after_s: float = HOLE_AFTER_S,
        gap_grace_s: float = GAP_GRACE_S,
        per_connection: int = 1024,
        exchange_clock: Callable[[], float] | None = None,
    ) -> None:
        """``exchange_clock`` (epoch seconds) replaces learning the exchange's clock from
        ``/api/v3/time`` (tests whose fake exchange runs on a clock of its own)."""
        self.staging = staging
        self.exchange_clock = exchange_clock
        self.client = client
        self.symbols = list(symbols)
        self.halt = threading.Event()  # ends the catch-up worker's waits
        self.event = event
        self.gap_grace_s = gap_grace_s
        self.offset_ms = 0
        self.stats = FeedStats()
        self.activity = SymbolActivity()
        ids = staging.ticks.symbol_ids(self.symbols)
        self.sym_of = pl.DataFrame(
            {"symbol": self.symbols, "sym": ids}, schema={"symbol": pl.String, "sym": pl.Int64}
        )
        self.chains = {sym: Chain(sym, s) for s, sym in zip(self.symbols, ids, strict=True)}
        self.sym_by_symbol = dict(zip(self.symbols, ids, strict=True))
        for row in staging.trades.cursors().iter_rows(named=True):
            chain = self.chains.get(row["sym"])
            if chain is not None:  # a restart: go on from the stored cursor
                chain.last_id, chain.last_ts = row["last_id"], row["last_ts"]
                chain.since_ms, chain.live_ms = row["since_ms"], row["live_ms"]
        self.group_of: dict[int, int] = {}
        self.stream = TradeStream(
            ws_url,
            self.symbols,
            exchange_ms=self.exchange_ms,
            timings=timings,
            per_connection=per_connection,
        )
        for group in self.stream.groups:
            for symbol in group.symbols:
                self.group_of[self.sym_by_symbol[symbol]] = group.index
        self.catch_up = CatchUp(client, self.exchange_ms, self.halt, hole_after_s)
        self._live_written = 0.0

    def exchange_ms(self) -> int:
        if self.exchange_clock is not None:
            return ms(self.exchange_clock())
        return now_ms() + self.offset_ms

    def sync_clock(self) -> None:
        """Learn the exchange's clock (``live_ms`` and lags are on it), best effort."""
        if self.exchange_clock is not None:
            return
        with contextlib.suppress(BinanceError):
            before = time.time()
            server = self.client.server_time()
            after = time.time()
            self.offset_ms = server - int((before + after) / 2 * 1000)

    def start(self) -> None:
        self.sync_clock()
        now = time.monotonic()
        for chain in self.chains.values():
            chain.pending_since = now
        self.catch_up.start()
        self.stream.start()

    def close(self) -> None:
        """Stop the streams and the catch-up, then write what is in hand."""
        self.halt.set()
        self.stream.stop()
        with contextlib.suppress(Exception):
            self.flush()

    # -- one batch -----------------------------------------------------------------------------

    def flush(self) -> int:
        """Take what arrived, write it with the moved cursors in one transaction, and schedule
        catch-ups. Returns the trades newly staged."""
        now = time.monotonic()
        before = {sym: c.clone() for sym, c in self.chains.items()}
        holes: list[dict[str, Any]] = []
        changed: set[int] = set()
        drained = self.stream.drain()
        results = self.catch_up.drain()
        # Every stream message ends up stored or counted under a reason: the reader's (not JSON,
        # not a trade), the parser's, then an unknown symbol, a duplicate, or a failed write.
        self.stats.messages += len(drained.lines) + sum(drained.skipped.values())
        skipped = dict(drained.skipped)
        unstored = len(drained.lines)  # stream messages not yet stored nor counted
        try:
            parsed, reasons = parse_trade_events(drained.lines)
            stream = parsed.join(self.sym_of, on="symbol", how="inner")
            reasons[UNKNOWN_SYMBOL] = parsed.height - stream.height
            for reason, n in reasons.items():
                skipped[reason] = skipped.get(reason, 0) + n
            unstored = stream.height
            pages = [r.frame for r in results if r.kind == "page" and r.frame is not None]
            pages = [f.join(self.sym_of, on="symbol", how="inner") for f in pages]
            batch = pl.concat([stream, *pages]) if pages else stream
            self._advance(batch, stream, results, drained, holes, changed, now)
            cursors, with_live = self._cursors(changed, now)
            hole_frame = pl.DataFrame(holes) if holes else None
            columns = ["sym", *[c for c in TRADE_FRAME_SCHEMA if c != "symbol"]]
            streamed, paged = self.staging.trades.append_parts(
                [stream.select(columns), pl.concat(pages).select(columns) if pages else stream[:0]],
                cursors,
                hole_frame,
            )
        except BaseException:
            # Not stored: the cursors must not claim it, and what this batch held (stream lines,
            # pages, a catch-up's end) is gone, so every symbol checks its chain again (the
            # catch-up fetches the lost trades again; the stream's copies are counted).
            skipped[NOT_WRITTEN] = skipped.get(NOT_WRITTEN, 0) + unstored
            self.stats.skip(skipped)
            self.chains = before
            for chain in before.values():
                chain.verified, chain.job, chain.pending_since = False, False, now
            raise
        skipped[DUPLICATE] = skipped.get(DUPLICATE, 0) + stream.height - streamed
        self.stats.skip(skipped)
        inserted = streamed + paged
        if with_live:
            self._live_written = now
        self.stats.trades += inserted
        self.stats.streamed += streamed
        self.stats.duplicates += batch.height - inserted
        self.stats.caught_up += sum(p.height for p in pages)
        self.activity.update(batch, stream, now)
        for hole in holes:
            self.stats.holes += 1
            self.event(
                f"hole in {hole['symbol']}'s trades: ids {hole['after_id'] + 1}.."
                f"{hole['before_id'] - 1} could not be fetched ({hole['reason']}); recorded in "
                "trade_holes, `etl backfill` fills those hours from klines",
                logging.WARNING,
            )
        self._schedule(now)
        return inserted

    def _advance(
        self,
        batch: pl.DataFrame,
        stream: pl.DataFrame,
        results: list[_Result],
        drained: Drained,
        holes: list[dict[str, Any]],
        changed: set[int],
        now: float,
    ) -> None:
        """Move the chains for what this batch stores, then apply what happened."""
        for r in results:
            if r.kind == "start" and r.start is not None:
                chain = self.chains[r.sym]
                if chain.last_id is None:
                    chain.start(*r.start)
                    changed.add(r.sym)
        for sym, lo, hi, lo_ts, hi_ts in runs(batch).iter_rows():
            self.chains[sym].add(lo, hi, lo_ts, hi_ts)
            changed.add(sym)
        if stream.height:
            tops = stream.group_by("sym").agg(pl.col("agg_id").max())
            for sym, top in tops.iter_rows():
                chain = self.chains[sym]
                # A stream trade joined the chain directly: nothing was missed before it.
                joined = chain.last_id is not None and top <= chain.last_id
                if joined and not chain.above and not chain.job:
                    chain.verified = True
        for r in results:
            chain = self.chains[r.sym]
            if r.kind == "done":
                chain.job = False
                if not chain.above and chain.last_id is not None:
                    chain.verified = True
                else:
                    chain.pending_since = now
            elif r.kind == "gave_up":
                chain.job = False
                first_streamed = (
                    chain.above[0][0] if chain.last_id is None and chain.above else None
                )
                hole = chain.jump()
                changed.add(r.sym)
                if first_streamed is not None:
                    # No hole to record (nothing is known before it), but where the hour began
                    # is unknown: its bar counts a missing id. Say why, once.
                    self.event(
                        f"{chain.symbol}: where this hour's trades begin could not be fetched "
                        f"({r.detail[:200] or 'catch-up gave up'}): its trades are complete "
                        f"from the first one streamed, id {first_streamed} at "
                        f"{iso(chain.since_ms)}; the time before that is marked incomplete",
                        logging.WARNING,
                    )
                if hole is not None:
                    after, before_id, from_ms, to_ms = hole
                    holes.append(
                        {
                            "sym": r.sym,
                            "symbol": chain.symbol,
                            "after_id": after,
                            "before_id": before_id,
                            "from_ms": from_ms,
                            "to_ms": to_ms,
                            "reason": r.detail[:200] or "catch-up gave up",
                            "found_ms": self.exchange_ms(),
                        }
                    )
                if not chain.above and hole is not None:
                    chain.verified = True
                else:
                    chain.pending_since = now
        for ev in drained.events:
            if ev.kind == "closed" or (ev.kind == "open" and not ev.replacing):
                if ev.kind == "closed":
                    self.stats.reconnects += 1
                for symbol in drained.groups.get(ev.group, ()):
                    chain = self.chains[self.sym_by_symbol[symbol]]
                    chain.verified = False
                    chain.pending_since = now
            if ev.kind in ("closed", "shutdown", "failed"):
                self.event(f"trade stream {ev.group}: {ev.kind} {ev.detail}".rstrip(), logging.INFO)
        for sym, chain in self.chains.items():
            live = drained.live_ms.get(self.group_of.get(sym, -1), 0)
            if chain.verified and not chain.above and live > chain.live_ms:
                chain.live_ms = live

    def _cursors(self, changed: set[int], now: float) -> tuple[pl.DataFrame, bool]:
        """The cursors to write: those that moved, and every verified one's ``live_ms`` once a
        ``LIVE_WRITE_S``."""
        with_live = now - self._live_written >= LIVE_WRITE_S
        if with_live:
            changed = changed | {s for s, c in self.chains.items() if c.verified}
        rows = [
            (c.sym, c.last_id, c.last_ts, c.since_ms, c.live_ms)
            for sym in sorted(changed)
            if (c := self.chains[sym]).last_id is not None
        ]
        return pl.DataFrame(rows, schema=cursor_schema(), orient="row"), with_live

    def _schedule(self, now: float) -> None:
        """A catch-up for every symbol that has waited ``gap_grace_s`` for its hole to fill or
        for a stream trade to join its chain."""
        if not self.stream.open_groups():
            return  # no stream yet: a catch-up could not meet it
        for chain in self.chains.values():
            if chain.job or (chain.verified and not chain.above):
                continue
            if now - chain.pending_since < self.gap_grace_s:
                continue
            chain.job = True
            from_id = None if chain.last_id is None else chain.last_id + 1
            until = chain.above[0][0] - 1 if chain.above else None
            self.catch_up.submit(_Job(chain.sym, chain.symbol, from_id, until))

    # -- for the live table and status ---------------------------------------------------------

    def unverified(self) -> int:
        return sum(1 for c in self.chains.values() if not c.verified or c.above)
