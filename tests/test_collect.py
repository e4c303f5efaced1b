"""The poll loop, in process, on the fake exchange over real HTTP and a real SQLite file.

Most tests run on a virtual clock (time passes only when the collector waits), so minutes of
polling, bans and backoff take milliseconds and the schedule is exact.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import replace

import polars as pl
import pytest
from rich.console import Console

from etl.collect.loop import Collector, CollectorStats
from etl.collect.running import RunningMetrics
from etl.collect.view import CollectorView
from etl.config import Settings
from etl.errors import ConfigError
from etl.exchange.fake.rest import FakeExchange
from etl.hours import closed_before, ms
from etl.jobs.rollup import run_rollup
from etl.staging.store import Staging
from tests.conftest import Recorder, VirtualClock


def collect(
    settings: Settings,
    clock: VirtualClock,
    polls: int,
    view: CollectorView | None = None,
    **kw: object,
) -> tuple[CollectorStats, Recorder | CollectorView]:
    view = view or Recorder()
    collector = Collector(
        settings,
        rollup=False,
        view=view,
        clock=clock,
        wait=clock.sleep,
        stop=clock.stop,
        monotonic=clock.monotonic,
        **kw,
    )  # type: ignore[arg-type]
    return collector.run(polls=polls), view


def stored(settings: Settings) -> list[tuple[str, int, float]]:
    with Staging(settings.staging_path) as st:
        frame = st.ticks.read_window(0, 2**62)
    return list(frame.select("symbol", "ts", "price").iter_rows())


@pytest.fixture
def vsettings(settings: Settings, vclock: VirtualClock) -> Settings:
    return replace(settings, interval_s=5.0)


@pytest.fixture
def vexchange(vclock: VirtualClock, vsettings: Settings) -> FakeExchange:
    ex = FakeExchange(clock=vclock).start()
    yield ex
    ex.stop()


def with_url(settings: Settings, ex: FakeExchange) -> Settings:
    return replace(settings, binance_url=ex.url)


def test_each_poll_is_one_transaction_on_slots_of_the_wall_clock(
    vsettings: Settings, vexchange: FakeExchange, vclock: VirtualClock
) -> None:
    settings = with_url(vsettings, vexchange)
    stats, _ = collect(settings, vclock, polls=12)
    rows = stored(settings)
    assert (stats.polls_ok, stats.polls_missed, stats.ticks) == (12, 0, 36)
    stamps = sorted({ts for _, ts, _ in rows})
    assert len(stamps) == 12
    slots = [ts // 5000 for ts in stamps]
    assert slots == list(range(slots[0], slots[0] + 12))  # one per slot, none skipped
    assert all(ts % 5000 == 0 for ts in stamps)  # aligned to multiples of the interval
    assert all(sum(1 for _, t, _ in rows if t == ts) == 3 for ts in stamps)


def test_real_time_schedule_does_not_drift(settings: Settings, exchange: FakeExchange) -> None:
    # Every poll waits 0.15 s for its answer: a schedule that slept an interval after each poll
    # would start each one 0.15 s later than the one before, 1.05 s over eight polls.
    exchange.inject("slow", delay=0.15, times=100)
    settings = replace(settings, interval_s=0.25)
    stats = Collector(settings, rollup=False, view=Recorder()).run(polls=8)
    stamps = sorted({ts for _, ts, _ in stored(settings)})
    assert len(stamps) == 8
    # Each poll starts on its slot, whatever the one before did; a slot a busy machine made it
    # miss is counted, and the bound leaves 0.4 s for a late last answer.
    slots = 7 + stats.polls_missed
    assert stamps[-1] - stamps[0] < slots * 250 + 400, (stamps, stats.polls_missed)


@pytest.mark.parametrize(
    ("fault", "kwargs", "missed"),
    [
        ("status", {"status": 503, "times": 30}, None),  # retried to each deadline, then missed
        ("status", {"status": 502, "times": 1}, 0),  # one retry saves the poll
        ("drop", {"times": 40}, None),
        ("slow", {"delay": 3.0, "times": 1}, 0),  # timed out, retried within the slot
        ("garbage", {"times": 2}, 2),
        ("shape", {"times": 1}, 1),
        ("bad_elements", {"times": 3}, 0),
        ("status", {"status": 429, "retry_after": 12, "code": -1003}, 3),  # 429 + two slots banned
        ("status", {"status": 418, "retry_after": 26, "code": -1003}, 6),
        ("status", {"status": 400, "code": -1100}, 1),
    ],
)
def test_faults_cost_polls_never_the_collector(
    vsettings: Settings, vclock: VirtualClock, fault: str, kwargs: dict, missed: int | None
) -> None:
    with FakeExchange(clock=vclock) as ex:
        settings = replace(with_url(vsettings, ex), interval_s=1.0 if fault == "slow" else 5.0)
        ex.inject(fault, **kwargs)
        stats, view = collect(settings, vclock, polls=10)
        assert ex.violations == 0
    if missed is None:  # how many polls the retries spread the faults over depends on jitter
        missed = stats.polls_missed
        assert 1 <= missed <= 8, view.text  # type: ignore[union-attr]
        assert "exchange reachable again" in view.text  # type: ignore[union-attr]
    assert stats.polls_missed == missed, view.text  # type: ignore[union-attr]
    assert stats.polls_ok == 10 - missed
    rows = stored(settings)
    assert len(rows) == 3 * (10 - missed)
    assert {s for s, _, _ in rows} == {"BTCUSDT", "ETHUSDT", "BNBUSDT"}
    assert all(math.isfinite(p) and p > 0 for _, _, p in rows)
    if fault == "bad_elements":
        assert stats.skipped == 3 * 13


def test_exchange_down_then_back_is_reported_and_recovered(
    vsettings: Settings, vclock: VirtualClock
) -> None:
    with FakeExchange(clock=vclock) as ex:
        ex.inject("drop", path="/api/v3/ticker", times=10_000)
        down_until = vclock.now + 60

        def wait(seconds: float) -> bool:
            if vclock.now >= down_until:
                ex.state.faults.clear()
            return vclock.sleep(seconds)

        view = Recorder()
        stats = Collector(
            with_url(vsettings, ex),
            rollup=False,
            view=view,
            clock=vclock,
            wait=wait,
            monotonic=vclock.monotonic,
        ).run(polls=20)
    assert "exchange unreachable since" in view.text
    assert re.search(r"exchange reachable again after (5\d\.\d s|1\.0 m)", view.text), view.text
    assert 11 <= stats.polls_missed <= 12 and stats.polls_ok == 20 - stats.polls_missed
    assert len(stored(with_url(vsettings, ex))) == 3 * stats.polls_ok


def test_unreachable_at_start_keeps_running(vsettings: Settings, vclock: VirtualClock) -> None:
    settings = replace(vsettings, binance_url="http://127.0.0.1:9")
    stats, view = collect(settings, vclock, polls=5)
    assert (stats.polls_ok, stats.polls_missed) == (0, 5)
    assert "exchange unreachable since" in view.text  # type: ignore[union-attr]


def test_delisted_symbol_is_dropped_and_the_others_go_on(
    vsettings: Settings, vexchange: FakeExchange, vclock: VirtualClock
) -> None:
    settings = with_url(vsettings, vexchange)
    waits = 0

    def wait(seconds: float) -> bool:
        nonlocal waits
        waits += 1
        if waits == 4:
            vexchange.set_status("ETHUSDT", None)
        return vclock.sleep(seconds)

    view = Recorder()
    stats = Collector(
        settings, rollup=False, view=view, clock=vclock, wait=wait, monotonic=vclock.monotonic
    ).run(polls=8)
    assert stats.polls_missed == 0
    rows = stored(settings)
    eth = [ts for s, ts, _ in rows if s == "ETHUSDT"]
    btc = [ts for s, ts, _ in rows if s == "BTCUSDT"]
    assert len(btc) == 8 and 0 < len(eth) < 8
    assert "dropped delisted symbol(s) ETHUSDT" in view.text


def test_unknown_symbol_stops_start_up_naming_all(
    vsettings: Settings, vexchange: FakeExchange, vclock: VirtualClock
) -> None:
    settings = replace(with_url(vsettings, vexchange), symbols=("BTCUSDT", "NOPEUSDT", "ZZZUSDT"))
    with pytest.raises(ConfigError, match=r"NOPEUSDT \(unknown\), ZZZUSDT \(unknown\)"):
        collect(settings, vclock, polls=3)


@pytest.mark.slow
def test_weight_stays_within_budget_with_many_symbols_at_a_short_interval(
    vsettings: Settings, vclock: VirtualClock
) -> None:
    with FakeExchange(3000, weight_limit=200, clock=vclock) as ex:
        settings = replace(
            with_url(vsettings, ex),
            symbols=tuple(ex.market.symbols),
            interval_s=0.5,
            weight_budget=0.5,
        )
        stats, _ = collect(settings, vclock, polls=600)  # five virtual minutes
        assert ex.max_weight_used() <= 100
        assert all(r.status == 200 for r in ex.requests)
        polls = sum(r.path == "/api/v3/ticker/price" for r in ex.requests)
        infos = sum(r.path == "/api/v3/exchangeInfo" for r in ex.requests)
    # 100 a minute: exchangeInfo (20) then 4 per poll: 20 polls in the first minute, 25 after,
    # all the budget used and no more. The clock is virtual, a request's wait is not: a read
    # gives up at its slot's end (0.5 virtual s, waited as real ones), and on a busy machine a
    # 3,000-symbol answer can take longer; the request is made again, its weight spent twice.
    # So the budget is counted in requests the exchange answered (an exchangeInfo: 5 polls).
    assert 20 + 4 * 25 <= polls + 5 * (infos - 1) <= 20 + 5 * 25 + 1, (polls, infos)
    assert stats.polls_ok >= polls - 15, (stats.polls_ok, polls)  # requests made again: a few
    assert stats.ticks == 3000 * stats.polls_ok


def test_live_table_renders_on_a_terminal(
    vsettings: Settings, vexchange: FakeExchange, vclock: VirtualClock
) -> None:
    out = Console(file=io.StringIO(), force_terminal=True, width=160)
    view = CollectorView(live=True, out=out)
    stats, _ = collect(with_url(vsettings, vexchange), vclock, polls=3, view=view)
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert stats.polls_ok == 3
    for needle in ("BTCUSDT", "polls", "3 ok, 0 missed", "weight", "samples"):
        assert needle in text


def test_running_metrics_follow_the_hour() -> None:
    m = RunningMetrics()
    m.update(["A", "B"], [10.0, 1.0], 1_000)
    m.update(["A"], [14.0], 6_000)
    m.update(["A", "B"], [12.0, 3.0], 11_000)
    assert m.frame().rows() == [
        ("A", 10.0, 14.0, 10.0, 12.0, 12.0, 3),
        ("B", 1.0, 3.0, 1.0, 3.0, 2.0, 2),
    ]
    m.update(["B"], [5.0], 3_600_000)  # a new hour starts afresh
    assert m.frame().rows() == [("B", 5.0, 5.0, 5.0, 5.0, 5.0, 1)]


def test_gap_since_last_tick_is_reported_with_the_command(
    vsettings: Settings, vexchange: FakeExchange, vclock: VirtualClock
) -> None:
    settings = with_url(vsettings, vexchange)
    with Staging(settings.staging_path) as st:
        st.ticks.append(["BTCUSDT"], [1.0], int((vclock.now - 30 * 3600) * 1000))
    _, view = collect(settings, vclock, polls=1)
    text = view.text  # type: ignore[union-attr]
    # The command keeps the user's data dir: `etl --data-dir D backfill --since ...`.
    assert "no ticks staged since" in text
    assert f"--data-dir {settings.data_dir} backfill --since" in text


def test_the_wall_clock_stepping_back_an_hour_and_forward_a_day_stores_no_tick_in_a_wrong_hour(
    pgs: Settings, vclock: VirtualClock
) -> None:
    """A tick is stamped with the wall clock. Stepped back an hour, new stamps would land in an
    hour before ticks already stored (one a rollup may have closed): none is stored until the
    clock passes the newest tick again, and the polls between are counted as missed, with the
    reason. Forward a day: the polls follow from the next slot, none is caught up. The slots
    are paced by time that passed, so neither step makes a burst of requests."""
    steps = {60: -3600.0, 800: 86_400.0}  # after so many waits
    waits = 0

    def wait(seconds: float) -> bool:
        nonlocal waits
        waits += 1
        if waits in steps:
            vclock.step(steps[waits])
        return vclock.sleep(seconds)

    view = Recorder()
    with FakeExchange(list(pgs.symbols), clock=vclock, ws=False) as ex:
        stats = Collector(
            replace(pgs, binance_url=ex.url, interval_s=5.0),
            rollup=False,
            view=view,
            clock=vclock,
            wait=wait,
            monotonic=vclock.monotonic,
        ).run(polls=900)
        asked = [r.at for r in ex.requests if r.path == "/api/v3/ticker/price"]
    assert stats.clock_steps == 2, view.text
    assert "the wall clock stepped back by 1.0 h" in view.text
    assert "the wall clock stepped forward by 1.0 d" in view.text
    assert "poll skipped: the wall clock stepped back" in view.text
    assert len(asked) == stats.polls_ok  # no request for a poll it would not store
    assert 600 <= stats.polls_missed <= 720  # the hour held back, counted
    per_minute = {}
    for at in asked:
        per_minute[int(at // 60)] = per_minute.get(int(at // 60), 0) + 1
    assert max(per_minute.values()) <= 60 / 5 + 1  # no burst after either step
    with Staging(pgs.staging_path) as st:
        ticks = st.ticks.read_window(0, 2**62).sort("seq")
    assert ticks["ts"].diff().drop_nulls().min() >= 0  # stamps only move forward
    # Rolled up (at the clock's now): each hour once, and a second rollup finds nothing.
    closed = ticks.filter(pl.col("ts") < closed_before(ms(vclock())))
    first = run_rollup(pgs, now=vclock)
    assert first.ticks == closed.height > 0 and run_rollup(pgs, now=vclock).hours == 0
