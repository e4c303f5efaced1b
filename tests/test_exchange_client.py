"""The Binance client against the fake exchange over real HTTP, on a virtual clock where time only
passes when the client sleeps (so minutes of rate limiting take milliseconds)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from etl.exchange.client import BinanceClient
from etl.exchange.errors import (
    ApiError,
    BadResponse,
    ExchangeUnavailable,
    RateLimited,
    UnknownSymbols,
    WeightBudgetExhausted,
)
from etl.exchange.fake.rest import FakeExchange
from etl.exchange.governor import WeightGovernor
from etl.staging.store import Staging
from tests.conftest import VirtualClock


def client_for(
    ex: FakeExchange, clock: VirtualClock, budget: float = 0.5, **kw: object
) -> BinanceClient:
    gov = WeightGovernor(budget, clock=clock, sleep=clock.sleep, store=kw.pop("store", None))  # type: ignore[arg-type]
    return BinanceClient(ex.url, governor=gov, clock=clock, sleep=clock.sleep, **kw)  # type: ignore[arg-type]


def ticker_requests(ex: FakeExchange) -> list[str]:
    return [r.query for r in ex.requests if r.path == "/api/v3/ticker/price"]


@pytest.mark.parametrize("count", [5, 100, 3000])
def test_one_request_per_poll_whatever_the_number_of_symbols(
    vclock: VirtualClock, count: int
) -> None:
    with FakeExchange(count, clock=vclock) as ex, client_for(ex, vclock) as client:
        symbols = list(ex.market.symbols)
        poll = client.prices(symbols)
        assert len(ticker_requests(ex)) == 1
        assert poll.symbols == symbols and len(poll.prices) == count
        assert all(p > 0 for p in poll.prices)


def test_unknown_and_non_trading_symbols_are_all_named(vclock: VirtualClock) -> None:
    with (
        FakeExchange(
            ["BTCUSDT", "ETHUSDT", "LUNAUSDT"], statuses={"LUNAUSDT": "BREAK"}, clock=vclock
        ) as ex,
        client_for(ex, vclock) as client,
        pytest.raises(UnknownSymbols) as err,
    ):
        client.validate_symbols(["BTCUSDT", "NOPEUSDT", "LUNAUSDT", "ZZZUSDT"])
    assert err.value.bad == {
        "NOPEUSDT": "unknown",
        "LUNAUSDT": "status BREAK",
        "ZZZUSDT": "unknown",
    }


def test_weight_limit_is_read_from_exchange_info(vclock: VirtualClock) -> None:
    with FakeExchange(weight_limit=1200, clock=vclock) as ex, client_for(ex, vclock) as client:
        client.validate_symbols(["BTCUSDT"])
        assert client.governor.limit == 1200
        assert client.governor.allowed == 600


def test_weight_never_passes_the_budget_over_many_polls(vclock: VirtualClock) -> None:
    with (
        FakeExchange(weight_limit=200, clock=vclock) as ex,
        client_for(ex, vclock, budget=0.5) as client,
    ):
        client.validate_symbols(["BTCUSDT"])
        started = vclock.now
        for _ in range(100):
            client.prices(["BTCUSDT", "ETHUSDT"])
        assert ex.max_weight_used() <= 100
        assert all(r.status == 200 for r in ex.requests)
        # 20 + 400 weight at 100 per minute: the governor waited about four minutes.
        assert 3 * 60 <= vclock.now - started <= 5 * 60


def test_weight_used_by_other_clients_is_counted(vclock: VirtualClock) -> None:
    with FakeExchange(weight_limit=1000, clock=vclock) as ex, client_for(ex, vclock) as client:
        import requests

        for _ in range(20):  # someone else on our IP: 400 weight this minute
            requests.get(ex.url + "/api/v3/exchangeInfo", timeout=5)
        minute = int(vclock.now // 60)
        client.validate_symbols(["BTCUSDT"])  # learns the limit: 1000, so 500 for us
        for _ in range(30):
            client.prices(["BTCUSDT"])
        assert ex.state.used[minute] == 500  # it used what was left, and no more
        assert ex.max_weight_used() <= 500


def test_budget_spent_before_the_deadline_sends_nothing(vclock: VirtualClock) -> None:
    with FakeExchange(weight_limit=60, clock=vclock) as ex, client_for(ex, vclock) as client:
        client.validate_symbols(["BTCUSDT"])  # 20 of the 30 we may use
        client.prices(["BTCUSDT"])
        client.prices(["BTCUSDT"])
        sent = len(ex.requests)
        with pytest.raises(WeightBudgetExhausted):
            client.prices(["BTCUSDT"], deadline=vclock.now + 1)
        assert len(ex.requests) == sent


@pytest.mark.parametrize("status", [429, 418])
def test_rate_limit_is_honoured_until_retry_after(vclock: VirtualClock, status: int) -> None:
    with FakeExchange(clock=vclock) as ex, client_for(ex, vclock) as client:
        ex.inject("status", status=status, retry_after=30, code=-1003)
        with pytest.raises(RateLimited) as err:
            client.prices(["BTCUSDT"])
        assert err.value.until == pytest.approx(vclock.now + 30)
        sent = len(ex.requests)
        vclock.sleep(29)
        with pytest.raises(RateLimited):
            client.prices(["BTCUSDT"])
        assert len(ex.requests) == sent  # nothing went out during the ban
        vclock.sleep(1.5)
        assert client.prices(["BTCUSDT"]).symbols == ["BTCUSDT"]
        assert ex.violations == 0


def test_ban_survives_a_restart(vclock: VirtualClock, tmp_path: Path) -> None:
    with FakeExchange(clock=vclock) as ex:
        with (
            Staging(tmp_path / "t.sqlite3") as store,
            client_for(ex, vclock, store=store.state) as client,
        ):
            ex.inject("status", status=418, retry_after=120, code=-1003)
            with pytest.raises(RateLimited):
                client.prices(["BTCUSDT"])
        sent = len(ex.requests)
        vclock.sleep(60)
        with (
            Staging(tmp_path / "t.sqlite3") as store,
            client_for(ex, vclock, store=store.state) as client,
        ):
            with pytest.raises(RateLimited) as err:
                client.prices(["BTCUSDT"])
            assert err.value.status == 418
            assert len(ex.requests) == sent
            vclock.sleep(61)
            client.prices(["BTCUSDT"])
        assert ex.violations == 0


def test_exceeding_the_limit_gives_429_then_a_client_that_ignores_it_is_banned(
    vclock: VirtualClock,
) -> None:
    import requests

    with FakeExchange(weight_limit=10, clock=vclock) as ex:
        codes = [
            requests.get(ex.url + "/api/v3/ticker/price", timeout=5).status_code for _ in range(4)
        ]
        assert codes == [200, 200, 429, 418]
        assert ex.violations == 1


@pytest.mark.parametrize(
    ("fault", "kwargs"),
    [
        ("status", {"status": 503, "times": 2}),
        ("status", {"status": 500}),
        ("drop", {"times": 2}),
        ("slow", {"delay": 0.6}),
    ],
)
def test_transient_failures_are_retried(vclock: VirtualClock, fault: str, kwargs: dict) -> None:
    with FakeExchange(clock=vclock) as ex, client_for(ex, vclock, read_timeout=0.3) as client:
        ex.inject(fault, **kwargs)
        poll = client.prices(["BTCUSDT", "ETHUSDT"], deadline=vclock.now + 5)
        assert poll.symbols == ["BTCUSDT", "ETHUSDT"]
        time.sleep(kwargs.get("delay", 0))  # a slow request is logged once it is answered
        assert len(ticker_requests(ex)) == kwargs.get("times", 1) + 1


def test_retries_stop_before_the_deadline(vclock: VirtualClock) -> None:
    with FakeExchange(clock=vclock) as ex, client_for(ex, vclock) as client:
        ex.inject("status", status=503, times=1000)
        start = vclock.now
        with pytest.raises(ExchangeUnavailable, match="HTTP 503"):
            client.prices(["BTCUSDT"], deadline=start + 5)
        assert vclock.now <= start + 5
        assert 2 <= len(ticker_requests(ex)) < 50


def test_unreachable_exchange_is_exchange_unavailable(vclock: VirtualClock) -> None:
    client = BinanceClient("http://127.0.0.1:9", clock=vclock, sleep=vclock.sleep)
    with pytest.raises(ExchangeUnavailable, match=r"connection refused by 127\.0\.0\.1:9"):
        client.prices(["BTCUSDT"], deadline=vclock.now + 2)


def test_bad_elements_are_skipped_and_counted(vclock: VirtualClock) -> None:
    with FakeExchange(clock=vclock) as ex, client_for(ex, vclock) as client:
        ex.inject("bad_elements")
        poll = client.prices(["BTCUSDT", "ETHUSDT"])
        assert poll.symbols == ["BTCUSDT", "ETHUSDT"]
        # 12 malformed elements plus one duplicate of a valid one
        assert poll.skipped == 13


@pytest.mark.parametrize("fault", ["garbage", "shape"])
def test_a_body_of_the_wrong_kind_is_bad_response(vclock: VirtualClock, fault: str) -> None:
    with FakeExchange(clock=vclock) as ex, client_for(ex, vclock) as client:
        ex.inject(fault)
        with pytest.raises(BadResponse):
            client.prices(["BTCUSDT"])


def test_client_errors_carry_the_exchange_code(vclock: VirtualClock) -> None:
    with FakeExchange(clock=vclock) as ex, client_for(ex, vclock) as client:
        with pytest.raises(ApiError) as err:
            client.prices(["BTCUSDT", "NOPEUSDT"])
        assert (err.value.status, err.value.code, err.value.msg) == (400, -1121, "Invalid symbol.")


def test_ping_and_server_time(vclock: VirtualClock) -> None:
    with FakeExchange(clock=vclock) as ex, client_for(ex, vclock) as client:
        client.ping()
        assert client.server_time() == int(vclock.now * 1000)
        assert [r.path for r in ex.requests] == ["/api/v3/ping", "/api/v3/time"]
        assert client.governor.used == 2  # weight 1 each
