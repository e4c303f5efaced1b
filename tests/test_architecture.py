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


def test_the_configuration_table_is_the_declared_settings() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    for line in markdown_table():
        assert line in page, line
    documented = re.findall(r"^\| `(\w+)` \| `(ETL_\w+)`", page, flags=re.M)
    declared = [(f.name, f.metadata["env"]) for f in setting_fields()]
    assert documented == declared


PACKAGE = ROOT / "etl"


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name, read from the folders."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def stage_of(module: str) -> str:
    """``etl.staging.ticks`` is in stage ``staging``; a root module (``etl.hours``) in ``etl``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (PACKAGE / parts[-1]).is_dir() else "etl"


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules ``path`` imports, anywhere in it (deferred and type-only imports
    too: each is an arrow of the house)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("etl"):
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                out.add(name if name in known else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("etl."))
    return {m for m in out if m in known}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(path, known) - {m} for m, path in known.items()}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A circle of ``edges``, if there is one."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_module_imports_another_in_a_circle_the_fakes_included() -> None:
    assert cycle(graph()) is None, cycle(graph())


def test_the_stages_import_each_other_in_one_direction_and_leaves_import_no_stage() -> None:
    """The folders are the architecture: a sub-package per stage, the leaves at the root. The
    stages form no circle among themselves, a root module that uses a stage is used by no stage
    (the notebooks' API and ``python -m etl`` stand on top), nothing imports the command line
    but ``python -m etl``, and a job never imports another job."""
    edges = graph()
    stages: dict[str, set[str]] = {}
    for module, targets in edges.items():
        for target in targets:
            if stage_of(module) != stage_of(target):
                stages.setdefault(stage_of(module), set()).add(stage_of(target))
    without_root = {s: t - {"etl"} for s, t in stages.items() if s != "etl"}
    assert cycle(without_root) is None, cycle(without_root)
    on_top = {
        m for m, t in edges.items() if stage_of(m) == "etl" and any(stage_of(x) != "etl" for x in t)
    }
    for module, targets in edges.items():
        assert not (targets & on_top), f"{module} imports {targets & on_top}, which uses stages"
        if "etl.cli" not in module and module != "etl.__main__":
            assert not any(t.startswith("etl.cli") for t in targets), module
        if module.startswith("etl.jobs."):
            assert not any(t.startswith("etl.jobs.") for t in targets), (module, targets)


def test_only_the_demo_uses_the_fake_exchange() -> None:
    """The fake exchange is a test double: the command line's demo and the demo history use it
    (its market's reference prices), no stage of the pipeline does."""
    users = {
        m
        for m, targets in graph().items()
        if not m.startswith("etl.exchange.fake")
        and any(t.startswith("etl.exchange.fake") for t in targets)
    }
    assert users <= {"etl.cli.app", "etl.jobs.demo_history"}, users


def test_the_architecture_page_names_every_stage_and_every_root_module() -> None:
    page = PAGE.read_text()
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    roots = {p.name for p in PACKAGE.glob("*.py") if not p.name.startswith("__")}
    assert folders == {"exchange", "staging", "collect", "warehouse", "jobs", "cli"}
    for name in folders:
        assert f"`etl/{name}/`" in page, name
    for name in roots:
        assert f"`etl/{name}`" in page or f"`{name}`" in page, name


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


def test_every_test_the_docs_name_as_proof_exists() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    named = set(re.findall(r"`(test_\w+)`", " ".join(p.read_text() for p in pages)))
    defined = {
        m
        for path in (ROOT / "tests").glob("test_*.py")
        for m in re.findall(r"^def (test_\w+)", path.read_text(), flags=re.M)
    }
    assert len(named) > 20 and named <= defined, named - defined
