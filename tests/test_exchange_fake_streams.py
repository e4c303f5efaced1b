"""The fake exchange's WebSocket market streams over real sockets, with the ``websockets`` client:
events equal to the REST trades, Binance's connection rules, and each injected fault."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus
from websockets.frames import Close, Opcode
from websockets.http11 import Response
from websockets.sync.client import ClientConnection, connect
from websockets.uri import parse_uri

from etl.exchange.fake.rest import FakeExchange
from etl.exchange.fake.stream import StreamRules
from tests.conftest import VirtualClock

SYMBOLS = ["BTCUSDT", "ETHUSDT", "XRPUSDT"]
COMBINED = "/stream?streams=btcusdt@aggTrade/ethusdt@aggTrade/xrpusdt@aggTrade"


@pytest.fixture
def ex(vclock: VirtualClock) -> Iterator[FakeExchange]:
    with FakeExchange(SYMBOLS, clock=vclock) as exchange:
        yield exchange


def open_ws(ex: FakeExchange, path: str) -> ClientConnection:
    # no client pings: they would count against the server's 5 messages a second
    return connect(ex.ws_url + path, ping_interval=None, max_size=None)


def drain(ws: ClientConnection, quiet: float = 0.3) -> list[Any]:
    """Every message until none has come for ``quiet`` seconds."""
    out = []
    while True:
        try:
            out.append(json.loads(ws.recv(timeout=quiet)))
        except TimeoutError:
            return out


def advance(ex: FakeExchange, clock: VirtualClock, seconds: float) -> int:
    clock.now += seconds
    return ex.pump()


def events_of(messages: list[Any]) -> list[dict]:
    return [m["data"] if "stream" in m else m for m in messages]


def closed_by_server(ws: ClientConnection, timeout: float = 5.0) -> ConnectionClosed:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ws.recv(timeout=deadline - time.monotonic())
        except ConnectionClosed as exc:
            return exc
        except TimeoutError:
            break
    raise AssertionError("the server did not close the connection")


def test_combined_stream_events_equal_the_rest_trades(
    ex: FakeExchange, vclock: VirtualClock
) -> None:
    start_ids = {s: ex.market.last_trade_id(s) for s in SYMBOLS}
    with open_ws(ex, COMBINED) as ws:
        advance(ex, vclock, 150)
        messages = drain(ws)
    now_ms = int(vclock.now * 1000)
    assert all(set(m) == {"stream", "data"} for m in messages)
    times = [m["data"]["T"] for m in messages]
    assert times == sorted(times)  # across symbols, in trade time order
    for symbol in SYMBOLS:
        stream = symbol.lower() + "@aggTrade"
        got = [m["data"] for m in messages if m["stream"] == stream]
        assert {g["s"] for g in got} == {symbol} and {g["e"] for g in got} == {"aggTrade"}
        assert all(g["T"] <= g["E"] <= now_ms for g in got)
        ids = [g["a"] for g in got]
        assert ids == list(range(start_ids[symbol] + 1, ex.market.last_trade_id(symbol) + 1))
        rest = requests.get(
            ex.url + "/api/v3/aggTrades",
            params={"symbol": symbol, "fromId": ids[0], "limit": 1000},
            timeout=10,
        ).json()
        assert [{k: v for k, v in g.items() if k not in "eEs"} for g in got] == rest


def test_raw_streams_are_unwrapped_and_names_are_lower_case(
    ex: FakeExchange, vclock: VirtualClock
) -> None:
    with (
        open_ws(ex, "/ws/btcusdt@aggTrade/xrpusdt@aggTrade") as raw,
        open_ws(ex, "/ws/BTCUSDT@aggTrade") as upper,
    ):
        advance(ex, vclock, 60)
        got = drain(raw)
        assert got and all(m["e"] == "aggTrade" for m in got)
        assert {m["s"] for m in got} == {"BTCUSDT", "XRPUSDT"}
        assert drain(upper) == []  # as on Binance: upper-case names stream nothing


def test_subscribe_unsubscribe_and_list(ex: FakeExchange, vclock: VirtualClock) -> None:
    with open_ws(ex, "/ws") as ws:
        ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["ethusdt@aggTrade"], "id": 1}))
        assert json.loads(ws.recv(timeout=2)) == {"result": None, "id": 1}
        ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 2}))
        assert json.loads(ws.recv(timeout=2)) == {"result": ["ethusdt@aggTrade"], "id": 2}
        advance(ex, vclock, 60)
        assert {m["s"] for m in drain(ws)} == {"ETHUSDT"}
        ws.send(json.dumps({"method": "UNSUBSCRIBE", "params": ["ethusdt@aggTrade"], "id": 3}))
        assert json.loads(ws.recv(timeout=2)) == {"result": None, "id": 3}
        advance(ex, vclock, 60)
        assert drain(ws) == []
        ws.send(json.dumps({"method": "NOPE", "id": 4}))
        reply = json.loads(ws.recv(timeout=2))
        assert reply["code"] == 2 and reply["id"] == 4


def test_the_real_clock_streams_without_being_pumped() -> None:
    with (
        FakeExchange(["BTCUSDT"], trades_per_minute=600) as ex,
        open_ws(ex, "/ws/btcusdt@aggTrade") as ws,
    ):
        got: list[dict] = []
        deadline = time.monotonic() + 5
        while len(got) < 10 and time.monotonic() < deadline:
            got += events_of(drain(ws, quiet=0.2))
        now_ms = int(time.time() * 1000)
    assert len(got) >= 10
    assert [g["a"] for g in got] == list(range(got[0]["a"], got[0]["a"] + len(got)))
    assert all(g["T"] <= g["E"] <= now_ms for g in got)


# -- Binance's connection rules ----------------------------------------------------------------


class SilentClient:
    """A client that completes the handshake, then reads nothing (so answers no ping) until
    asked: the library's sans-I/O protocol over a plain socket."""

    def __init__(self, url: str) -> None:
        self.protocol = ClientProtocol(parse_uri(url))
        host, port = url.removeprefix("ws://").split("/")[0].split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.protocol.send_request(self.protocol.connect())
        self.sock.sendall(b"".join(self.protocol.data_to_send()))
        self.events: list[Any] = []
        while not any(isinstance(e, Response) for e in self.events):
            self._feed()

    def _feed(self) -> bool:
        data = self.sock.recv(65536)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        self.events += self.protocol.events_received()
        return bool(data)

    def read_to_the_end(self) -> list[Any]:
        """Everything the server sent, until it closed the TCP connection."""
        with contextlib.suppress(ConnectionResetError):
            while self._feed():
                pass
        self.sock.close()
        return [e for e in self.events if not isinstance(e, Response)]


@pytest.mark.slow
def test_pings_every_interval_and_an_unanswered_one_gets_the_client_dropped(
    vclock: VirtualClock,
) -> None:
    with FakeExchange(
        SYMBOLS, clock=vclock, ws=StreamRules(ping_interval=0.2, pong_timeout=0.8)
    ) as ex:
        with open_ws(ex, "/ws/btcusdt@aggTrade"):  # answers pings, in its own thread
            silent = SilentClient(ex.ws_url + "/ws/btcusdt@aggTrade")
            time.sleep(2.0)
            frames = silent.read_to_the_end()
            info = {c.id: c for c in ex.stream.connections}  # type: ignore[union-attr]
        pings = [f for f in frames if getattr(f, "opcode", None) is Opcode.PING]
        closes = [Close.parse(f.data) for f in frames if getattr(f, "opcode", None) is Opcode.CLOSE]
        assert 3 <= len(pings) <= 6  # every 0.2 s until the 0.8 s timeout ran out
        assert [(c.code, c.reason) for c in closes] == [(1008, "Pong timeout")]
        assert [c.why for c in ex.stream.closes] == ["pong timeout"]  # type: ignore[union-attr]
        assert info[1].open and info[1].pongs >= 8  # the client that answers stays
        assert not info[2].open and info[2].pongs == 0


def test_a_connection_lives_no_longer_than_its_lifetime(vclock: VirtualClock) -> None:
    with FakeExchange(SYMBOLS, clock=vclock, ws=StreamRules(max_lifetime=0.6)) as ex:
        opened = time.monotonic()
        with open_ws(ex, COMBINED) as ws:
            closed = closed_by_server(ws)
            lived = time.monotonic() - opened
        assert closed.rcvd is not None and closed.rcvd.code == 1000
        assert 0.6 <= lived < 2.0
        assert [c.why for c in ex.stream.closes] == ["lifetime"]  # type: ignore[union-attr]
        with open_ws(ex, COMBINED) as again:  # the client reconnects, and streams again
            advance(ex, vclock, 30)
            assert drain(again)


def test_at_most_1024_streams_per_connection(vclock: VirtualClock) -> None:
    with FakeExchange(1100, clock=vclock) as ex:
        names = [s.lower() + "@aggTrade" for s in ex.market.symbols]
        with open_ws(ex, "/stream?streams=" + "/".join(names[:1024])) as ws:
            ws.send(json.dumps({"method": "SUBSCRIBE", "params": [names[1024]], "id": 7}))
            refused = json.loads(ws.recv(timeout=5))
            assert refused["code"] == 2 and refused["id"] == 7 and "1024" in refused["msg"]
            ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 8}))
            assert len(json.loads(ws.recv(timeout=5))["result"]) == 1024
            advance(ex, vclock, 10)
            streams = {m["stream"] for m in drain(ws)}
            assert len(streams) > 500 and names[1024] not in streams
        with pytest.raises(InvalidStatus) as err:
            open_ws(ex, "/stream?streams=" + "/".join(names[:1025]))
        assert err.value.response.status_code == 400


@pytest.mark.slow
def test_more_than_five_messages_a_second_get_the_client_disconnected(ex: FakeExchange) -> None:
    with open_ws(ex, "/ws/btcusdt@aggTrade") as ws:
        for round_ in range(2):  # five a second is allowed, second after second
            for i in range(5):
                ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 10 * round_ + i}))
            assert len(drain(ws, quiet=0.2)) == 5
            time.sleep(1.05)
        for i in range(6):
            ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 100 + i}))
        closed = closed_by_server(ws)
    assert closed.rcvd is not None and (closed.rcvd.code, closed.rcvd.reason) == (
        1008,
        "Too many requests",
    )
    assert [c.why for c in ex.stream.closes] == ["too many messages"]  # type: ignore[union-attr]


def test_unknown_paths_are_refused(ex: FakeExchange) -> None:
    with pytest.raises(InvalidStatus) as err:
        open_ws(ex, "/nope")
    assert err.value.response.status_code == 404


def test_stopping_the_exchange_closes_its_streams(vclock: VirtualClock) -> None:
    ex = FakeExchange(SYMBOLS, clock=vclock).start()
    with open_ws(ex, COMBINED) as ws:
        ex.stop()
        closed = closed_by_server(ws)
    assert closed.rcvd is not None and closed.rcvd.code == 1001


# -- faults ------------------------------------------------------------------------------------


def test_fault_drop_cuts_the_connection_without_a_close_frame(ex: FakeExchange) -> None:
    with open_ws(ex, COMBINED) as ws:
        fault = ex.inject_ws("drop")
        closed = closed_by_server(ws)
    assert isinstance(closed, ConnectionClosedError) and closed.rcvd is None
    assert fault.hit == [1]


def test_fault_silence_sends_nothing_at_all(vclock: VirtualClock) -> None:
    with (
        FakeExchange(SYMBOLS, clock=vclock, ws=StreamRules(ping_interval=0.1)) as ex,
        open_ws(ex, COMBINED) as ws,
    ):
        stream = ex.stream
        assert stream is not None
        time.sleep(0.4)
        assert stream.connections[0].pings >= 2
        ex.inject_ws("silence")
        ex.pump()
        pings = stream.connections[0].pings
        advance(ex, vclock, 60)
        ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 1}))
        assert drain(ws, quiet=0.6) == []  # no events, no reply
        assert stream.connections[0].pings == pings  # and no pings
        assert stream.connections[0].open


def test_fault_silence_for_a_while_then_streaming_resumes_with_a_hole(
    ex: FakeExchange, vclock: VirtualClock
) -> None:
    with open_ws(ex, "/ws/btcusdt@aggTrade") as ws:
        advance(ex, vclock, 30)
        before = events_of(drain(ws))
        ex.inject_ws("silence", duration=0.5)
        advance(ex, vclock, 30)
        assert drain(ws) == []
        time.sleep(0.5)
        advance(ex, vclock, 30)
        after = events_of(drain(ws))
    assert after and after[0]["a"] > before[-1]["a"] + 1  # trades of the silence are lost


def test_fault_duplicate_sends_events_twice(ex: FakeExchange, vclock: VirtualClock) -> None:
    with open_ws(ex, COMBINED) as ws:
        ex.inject_ws("duplicate", times=3)
        advance(ex, vclock, 60)
        got = drain(ws)
    assert got[0] == got[1] and got[2] == got[3] and got[4] == got[5]
    rest = [json.dumps(m, sort_keys=True) for m in got[6:]]
    assert len(rest) == len(set(rest)) and got[5] != got[6]


def test_fault_reorder_swaps_consecutive_events(ex: FakeExchange, vclock: VirtualClock) -> None:
    with open_ws(ex, "/ws/ethusdt@aggTrade") as ws:
        ex.inject_ws("reorder", times=2)
        advance(ex, vclock, 60)
        ids = [e["a"] for e in events_of(drain(ws))]
    first = ids[1]
    assert ids[:5] == [first + 1, first, first + 3, first + 2, first + 4]
    assert ids[4:] == list(range(first + 4, first + len(ids)))


def test_fault_shutdown_announces_the_disconnect(ex: FakeExchange, vclock: VirtualClock) -> None:
    with open_ws(ex, COMBINED) as combined, open_ws(ex, "/ws/btcusdt@aggTrade") as raw:
        ex.inject_ws("shutdown", delay=0.4)
        announced = time.monotonic()
        first = json.loads(combined.recv(timeout=2))
        assert first["stream"] == "!serverShutdown"
        assert first["data"]["e"] == "serverShutdown" and first["data"]["E"] == int(
            vclock.now * 1000
        )
        assert json.loads(raw.recv(timeout=2))["e"] == "serverShutdown"
        advance(ex, vclock, 20)  # events still flow until the close
        assert any(m.get("stream") == "btcusdt@aggTrade" for m in drain(combined, quiet=0.1))
        closed = closed_by_server(combined)
        assert time.monotonic() - announced >= 0.35
        assert closed.rcvd is not None and closed.rcvd.code == 1001
        assert closed_by_server(raw).rcvd.code == 1001  # type: ignore[union-attr]
    assert sorted(c.why for c in ex.stream.closes) == ["shutdown", "shutdown"]  # type: ignore[union-attr]


def test_fault_rotate_closes_as_the_24_hour_limit_does(ex: FakeExchange) -> None:
    with open_ws(ex, COMBINED) as ws:
        fault = ex.inject_ws("rotate", stream="btcusdt@aggTrade")
        closed = closed_by_server(ws)
    assert closed.rcvd is not None and closed.rcvd.code == 1000
    assert fault.hit == [1] and [c.why for c in ex.stream.closes] == ["rotate"]  # type: ignore[union-attr]


def test_a_fault_waits_for_a_matching_connection(ex: FakeExchange, vclock: VirtualClock) -> None:
    ex.inject_ws("duplicate", stream="xrpusdt@aggTrade", times=1)
    with open_ws(ex, "/ws/btcusdt@aggTrade") as other, open_ws(ex, "/ws/xrpusdt@aggTrade") as ws:
        advance(ex, vclock, 60)
        mine, theirs = drain(ws), drain(other)
    assert mine[0] == mine[1] and mine[1] != mine[2]
    assert len({m["a"] for m in theirs}) == len(theirs)


def test_json_style_writes_the_same_events_spaced_or_over_several_lines(
    vclock: VirtualClock,
) -> None:
    """Binance writes compact JSON; JSON with spaces, or indented, says the same. The fake can
    send either, for clients that must read any."""
    texts: dict[str, list[str]] = {}
    for style in ("compact", "spaced", "pretty"):
        clock = VirtualClock(vclock.now)
        with (
            FakeExchange(SYMBOLS, clock=clock, ws=StreamRules(json_style=style)) as exchange,
            open_ws(exchange, COMBINED) as ws,
        ):
            advance(exchange, clock, 60)
            got = []
            while True:
                try:
                    got.append(ws.recv(timeout=0.3))
                except TimeoutError:
                    break
        texts[style] = [t if isinstance(t, str) else t.decode() for t in got]
    assert texts["compact"] and all('"e":"aggTrade"' in t for t in texts["compact"])
    assert all('"e": "aggTrade"' in t and "\n" not in t for t in texts["spaced"])
    assert all('"e": "aggTrade"' in t and "\n" in t for t in texts["pretty"])
    parsed = {style: [json.loads(t) for t in got] for style, got in texts.items()}
    assert parsed["spaced"] == parsed["compact"] == parsed["pretty"]
    with pytest.raises(ValueError, match="json_style"):
        StreamRules(json_style="yaml")


def test_fault_message_sends_any_text(ex: FakeExchange) -> None:
    with open_ws(ex, COMBINED) as ws:
        fault = ex.inject_ws("message", text='{"e":"aggTrade", oops', times=2)
        assert [ws.recv(timeout=2), ws.recv(timeout=2)] == ['{"e":"aggTrade", oops'] * 2
    assert fault.hit == [1]
