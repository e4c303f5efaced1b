"""The shape of the code: settings declared once and documented as declared, the module layers of
docs/architecture.md, and the exchange client's swappable transport (tested with no socket)."""

from __future__ import annotations

import ast
import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.adapters import BaseAdapter

from etl.config import markdown_table, setting_fields
from etl.exchange.client import BinanceClient
from etl.exchange.errors import BadResponse, ExchangeUnavailable, RateLimited
from etl.exchange.governor import BAN_KEY, WeightGovernor
from etl.staging.store import Staging
from tests.conftest import FIXTURES

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "architecture.md"


def layers() -> dict[int, set[str]]:
    """The layer table of docs/architecture.md: rows ``| N name | `etl/x.py`, ... | job |``."""
    out = {}
    for number, modules in re.findall(r"^\| (\d) [^|]+\| ([^|]+) \|", PAGE.read_text(), re.M):
        out[int(number)] = set(re.findall(r"`etl/(\w+)\.py`", modules))
    return out


def test_the_readme_configuration_table_is_the_declared_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    for line in markdown_table():
        assert line in readme, line
    documented = re.findall(r"^\| `(\w+)` \| `(ETL_\w+)`", readme, flags=re.M)
    declared = [(f.name, f.metadata["env"]) for f in setting_fields()]
    assert documented == declared


def test_every_module_named_in_the_architecture_page_exists_and_every_module_is_named() -> None:
    page = PAGE.read_text()
    named = set(re.findall(r"`(etl/\w+\.py)`", page))
    assert named and all((ROOT / path).exists() for path in named), named
    actual = {f"etl/{p.name}" for p in (ROOT / "etl").glob("*.py") if p.stem[:2] != "__"}
    assert actual - named == set()


def _imports(module: str) -> set[str]:
    tree = ast.parse((ROOT / "etl" / f"{module}.py").read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("etl."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "etl":
            out.update(a.name for a in node.names if (ROOT / "etl" / f"{a.name}.py").exists())
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("etl."))
    return out


def test_jobs_never_import_jobs_and_nothing_imports_upwards() -> None:
    """The rules as docs/architecture.md states them, read from its layer table."""
    table = layers()
    assert sorted(table) == [0, 1, 2, 3, 4] and "collector" in table[3], table
    layer_of = {m: n for n, members in table.items() for m in members}
    for module, layer in layer_of.items():
        for imported in _imports(module):
            if imported.startswith("fake_"):
                continue
            assert imported in layer_of, (module, imported)
            theirs = layer_of[imported]
            # Parts may use parts (the warehouse starts the embedded server); a job never uses
            # another job, and nothing reaches up.
            allowed = theirs < layer or (theirs == layer and layer != 3)
            assert allowed, f"{module} (layer {layer}) imports {imported} (layer {theirs})"


class Canned(BaseAdapter):
    """A transport that answers from a table, with no socket: ``path -> (status, headers,
    body)``, or an exception to raise."""

    def __init__(self, routes: dict[str, Any]) -> None:
        super().__init__()
        self.routes = routes
        self.sent: list[str] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        path = request.path_url.split("?")[0]
        self.sent.append(path)
        answer = self.routes[path]
        if isinstance(answer, Exception):
            raise answer
        status, headers, body = answer
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = requests.Response()
        response.status_code = status
        response.headers.update(headers)
        response.raw = io.BytesIO(payload)
        response.url = request.url or ""
        response.request = request
        return response

    def close(self) -> None:
        pass


def client_with(routes: dict[str, Any], **kw: Any) -> tuple[BinanceClient, Canned]:
    adapter = Canned(routes)
    session = requests.Session()
    session.mount("https://", adapter)
    clock = kw.pop("clock", lambda: 1_795_000_000.0)
    return BinanceClient(
        "https://api.binance.com", session=session, clock=clock, sleep=lambda s: None, **kw
    ), adapter


def recorded(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def test_the_client_parses_recorded_payloads_through_a_swapped_transport() -> None:
    client, adapter = client_with(
        {
            "/api/v3/exchangeInfo": (200, {}, recorded("exchange_info_excerpt_2025.json")),
            "/api/v3/ticker/price": (
                200,
                {"X-MBX-USED-WEIGHT-1M": "1234"},
                recorded("ticker_price_list.json"),
            ),
        }
    )
    info = client.exchange_info()
    assert info.weight_limit == 6000 and info.statuses["ETHBTC"] == "TRADING"
    assert info.tick_sizes["ETHBTC"].startswith("0.0000")  # PRICE_FILTER read
    poll = client.prices(["BTCUSDT", "ETHUSDT", "SOLUSDT"])
    assert poll.prices == [60262.05, 2594.25, 153.34]
    assert client.governor.used == 1234  # the exchange's count wins over ours (24)
    assert adapter.sent == ["/api/v3/exchangeInfo", "/api/v3/ticker/price"]


def test_a_ban_reaches_the_store_and_nothing_more_is_sent(tmp_path: Path) -> None:
    now = [1_795_000_000.0]
    with Staging(tmp_path / "t.sqlite3") as store:
        governor = WeightGovernor(store=store.state, clock=lambda: now[0])
        client, adapter = client_with(
            {
                "/api/v3/ticker/price": (
                    429,
                    {"Retry-After": "30"},
                    recorded("error_too_much_weight_legacy.json"),
                )
            },
            governor=governor,
            clock=lambda: now[0],
        )
        with pytest.raises(RateLimited):
            client.prices(["BTCUSDT"])
        assert store.state.get(BAN_KEY) == {"until": now[0] + 30, "status": 429}
        with pytest.raises(RateLimited):
            client.prices(["BTCUSDT"])
        assert adapter.sent == ["/api/v3/ticker/price"]


@pytest.mark.parametrize(
    ("failure", "reached", "words"),
    [
        (
            requests.ConnectionError(ConnectionRefusedError(111, "refused")),
            False,
            "connection refused by api.binance.com",
        ),
        (requests.ConnectTimeout("slow"), False, "no connection within"),
        (requests.ReadTimeout("slow"), True, "no answer within"),
    ],
)
def test_transport_failures_say_what_happened_and_unsent_weight_is_given_back(
    failure: Exception, reached: bool, words: str
) -> None:
    client, adapter = client_with({"/api/v3/ticker/price": failure})
    with pytest.raises(ExchangeUnavailable, match=words) as err:
        client.prices(["BTCUSDT"])
    assert err.value.reached is reached
    assert len(adapter.sent) == 4  # retried, without a deadline, four times
    assert client.governor.used == (4 * 4 if reached else 0)


def test_a_body_of_the_wrong_kind_through_the_transport() -> None:
    answers: dict[str, Callable[[], Any]] = {
        "not json": lambda: (200, {}, b"<html>"),
        "an object": lambda: (200, {}, {"symbol": "BTCUSDT"}),
    }
    for make in answers.values():
        client, _ = client_with({"/api/v3/ticker/price": make()})
        with pytest.raises(BadResponse):
            client.prices(["BTCUSDT"])


def test_every_test_the_readme_names_as_proof_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"`(test_\w+)`", readme))
    defined = {
        m
        for path in (ROOT / "tests").glob("test_*.py")
        for m in re.findall(r"^def (test_\w+)", path.read_text(), flags=re.M)
    }
    assert len(named) > 20 and named <= defined, named - defined
