"""Contract tests: the client parses the exchange's real recorded payloads, and the fake exchange
answers in the same shapes."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from etl.exchange.errors import BadResponse
from etl.exchange.fake.rest import FakeExchange
from etl.exchange.parse import ExchangeInfo, parse_exchange_info, parse_prices
from tests.conftest import FIXTURES


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def shape(value: Any) -> Any:
    """The JSON types of a payload, recursively (first element of arrays)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def test_recorded_price_list_parses() -> None:
    poll = parse_prices(load("ticker_price_list.json"), ["BTCUSDT", "ETHUSDT", "SOLUSDT"], 1)
    assert poll.symbols == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    assert poll.prices == [60262.05, 2594.25, 153.34]
    assert (poll.skipped, poll.missing) == (0, [])


def test_recorded_single_price_is_an_object_not_a_list() -> None:
    single = load("ticker_price_single.json")
    assert single == {"symbol": "BTCUSDT", "price": "60740.00000000"}
    with pytest.raises(BadResponse):
        parse_prices(single, ["BTCUSDT"], 1)  # the list endpoint must answer an array


@pytest.mark.parametrize(
    ("name", "limit", "symbol"),
    [
        ("exchange_info_excerpt_2025.json", 6000, "ETHBTC"),
        ("exchange_info_2021_legacy_limits.json", 1200, "BTCUSDT"),
    ],
)
def test_recorded_exchange_info_gives_weight_limit_and_statuses(
    name: str, limit: int, symbol: str
) -> None:
    info = parse_exchange_info(load(name))
    assert isinstance(info, ExchangeInfo)
    assert info.weight_limit == limit
    assert info.statuses[symbol] == "TRADING"


def test_recorded_error_bodies_have_integer_codes() -> None:
    assert load("error_invalid_symbol.json") == {"code": -1121, "msg": "Invalid symbol."}
    assert load("error_too_much_weight_legacy.json")["code"] == -1003
    assert load("error_too_many_symbols.json")["code"] == -1101


def test_recorded_klines_rows() -> None:
    rows = load("klines_btcusdt_1m_2021.json")
    assert all(len(r) == 12 and isinstance(r[0], int) and isinstance(r[1], str) for r in rows)
    assert all(r[6] == r[0] + 59_999 for r in rows)


@pytest.mark.parametrize(
    ("path", "fixture"),
    [
        ("/api/v3/ping", "ping.json"),
        ("/api/v3/time", "server_time_2025.json"),
        ("/api/v3/ticker/price?symbol=BTCUSDT", "ticker_price_single.json"),
        ('/api/v3/ticker/price?symbols=["BTCUSDT","ETHUSDT","SOLUSDT"]', "ticker_price_list.json"),
        ("/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=3", "klines_btcusdt_1m_2021.json"),
        ("/api/v3/ticker/price?symbol=NOPE", "error_invalid_symbol.json"),
    ],
)
def test_fake_exchange_answers_in_the_recorded_shapes(
    exchange: FakeExchange, path: str, fixture: str
) -> None:
    resp = requests.get(exchange.url + path, timeout=5)
    assert shape(resp.json()) == shape(load(fixture))
    assert int(resp.headers["x-mbx-used-weight-1m"]) > 0


def test_fake_exchange_info_matches_recorded_fields(exchange: FakeExchange) -> None:
    recorded = load("exchange_info_excerpt_2025.json")
    served = requests.get(exchange.url + "/api/v3/exchangeInfo", timeout=5).json()
    assert set(recorded) >= set(served) - {"symbols"}
    assert shape(served["rateLimits"]) == shape(recorded["rateLimits"])
    assert {"symbol", "status", "baseAsset", "quoteAsset"} <= set(served["symbols"][0])


def test_fake_exchange_error_codes(exchange: FakeExchange) -> None:
    dup = requests.get(
        exchange.url + '/api/v3/ticker/price?symbols=["BTCUSDT","BTCUSDT"]', timeout=5
    )
    assert (dup.status_code, dup.json()["code"]) == (400, -1151)
    bad = requests.get(exchange.url + '/api/v3/ticker/price?symbols=["BTCUSDT","NOPE"]', timeout=5)
    assert (bad.status_code, bad.json()) == (400, load("error_invalid_symbol.json"))


def test_fake_exchange_klines_agree_with_its_ticker() -> None:
    with FakeExchange(["BTCUSDT"]) as ex:
        price = float(
            requests.get(ex.url + "/api/v3/ticker/price?symbol=BTCUSDT", timeout=5).json()["price"]
        )
        row = requests.get(
            ex.url + "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1", timeout=5
        ).json()[-1]
        low, high = float(row[3]), float(row[2])
        assert low <= price <= high
