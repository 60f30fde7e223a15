"""fedmeta's message pump for Flower's simulation engine (``fedmeta.app.dispatch``): it is in
place only inside ``message_pump("indexed")``, hands each node its earliest undelivered
message, one a poll, checking each stored message once, and wakes on what is stored; the
engine's node -> partition mapping reaches the server (``EngineNodes``). Runs under both
pumps give identical results: tests/test_federated_run.py."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from queue import Queue

import pytest
from flwr.server.superlink.fleet.vce import vce_api

from fedmeta.app import dispatch


def test_the_pump_is_swapped_only_inside_the_context() -> None:
    flower = vce_api.add_messages_to_queue
    with pytest.raises(RuntimeError):
        with dispatch.message_pump("indexed"):
            assert vce_api.add_messages_to_queue is not flower
            raise RuntimeError("the run failed")
    assert vce_api.add_messages_to_queue is flower
    with pytest.raises(ValueError, match="one of"):
        with dispatch.message_pump("fast"):
            pass


@dataclass
class _Metadata:
    dst_node_id: int
    delivered_at: str = ""


@dataclass
class _Message:
    metadata: _Metadata


@dataclass
class _State:
    """The part of Flower's InMemoryLinkState that ``undelivered`` reads."""

    message_ins_store: dict[str, _Message]
    lock: threading.RLock = field(default_factory=threading.RLock)
    checked: list[set[str]] = field(default_factory=list)

    def _check_stored_messages(self, ids: set[str]) -> None:
        self.checked.append(ids)


def test_undelivered_gives_each_node_its_earliest_message_once() -> None:
    store = {f"m{i}": _Message(_Metadata(node)) for i, node in enumerate([5, 7, 5, 9, 7])}
    store["m1"].metadata.delivered_at = "earlier"
    state = _State(store)
    first = dispatch.undelivered(state, {5: 0, 7: 1})  # node 9 is not ours
    assert first == [store["m0"], store["m4"]]
    assert state.checked == [set(store)]  # expiry checked once for all, by the state
    assert all(m.metadata.delivered_at for m in first)
    assert dispatch.undelivered(state, {5: 0, 7: 1}) == [store["m2"]]
    assert dispatch.undelivered(state, {5: 0, 7: 1}) == []


def test_a_state_of_another_kind_keeps_flowers_pump(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(dispatch, "_FLOWER_PUMP", lambda *args: calls.append(args))
    stop = threading.Event()
    dispatch._indexed_pump(_State({}), Queue(), {}, stop)
    assert len(calls) == 1 and calls[0][0].message_ins_store == {}


def test_handed_messages_are_not_checked_again() -> None:
    store = {f"m{i}": _Message(_Metadata(node)) for i, node in enumerate([5, 5, 7])}
    state, handed = _State(store), set()
    assert dispatch.undelivered(state, {5: 0, 7: 1}, handed) == [store["m0"], store["m2"]]
    assert dispatch.undelivered(state, {5: 0, 7: 1}, handed) == [store["m1"]]
    del store["m0"]  # its reply was pulled
    store["m3"] = _Message(_Metadata(7))
    assert dispatch.undelivered(state, {5: 0, 7: 1}, handed) == [store["m3"]]
    assert state.checked == [{"m0", "m1", "m2"}, {"m1"}, {"m3"}]
    assert handed == {"m1", "m2", "m3"}  # ids no longer stored are forgotten


def test_the_engine_nodes_are_handed_over_when_the_pump_starts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "_FLOWER_PUMP", lambda *args: None)
    with dispatch.message_pump("flower") as nodes:
        assert nodes.wait(0.01) is None
        vce_api.add_messages_to_queue(None, Queue(), {10: 0, 11: 1}, threading.Event())
        assert nodes.wait(0.01) == {10: 0, 11: 1}


def test_an_engine_that_ends_before_its_pump_starts_hands_over_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args: object) -> None:
        raise RuntimeError("Ray did not start")

    monkeypatch.setattr(vce_api, "run_api", crash)
    with dispatch.message_pump("indexed") as nodes:
        with pytest.raises(RuntimeError):
            vce_api.run_api()
        assert nodes.wait(60.0) is None  # at once: the server asks the nodes instead
    assert vce_api.run_api is crash


def test_a_counted_state_wakes_the_waiting_server_and_is_restored() -> None:
    class Store:
        def store_message_ins(self, message: object) -> str:
            return "in"

        def store_message_res(self, message: object) -> str:
            return "res"

    state = Store()
    with dispatch._counted(state) as arrivals:
        assert dispatch.arrivals_of(type("Grid", (), {"state": state})()) is arrivals
        assert state.store_message_ins(None) == "in" and arrivals.messages == 1
        threading.Timer(0.05, state.store_message_res, [None]).start()
        began = time.monotonic()
        arrivals.wait_replies(1, 10.0)
        assert arrivals.replies == 1 and time.monotonic() - began < 5.0
    assert dispatch.arrivals_of(type("Grid", (), {"state": state})()) is None
    assert "store_message_res" not in vars(state)


def test_a_reply_waiter_is_woken_by_the_reply_it_waits_for_alone() -> None:
    arrivals = dispatch.Arrivals()
    woken = {"replies": 0, "messages": 0}
    for kind, condition in (("replies", arrivals.replies_stored),
                            ("messages", arrivals.messages_stored)):
        notify = condition.notify_all

        def counted(kind: str = kind, notify: object = notify) -> None:
            woken[kind] += 1
            notify()  # type: ignore[operator]
        condition.notify_all = counted  # type: ignore[method-assign]
    waiter = threading.Thread(target=arrivals.wait_replies, args=(3, 30.0))
    waiter.start()
    deadline = time.monotonic() + 10.0
    while not arrivals.goals and time.monotonic() < deadline:
        time.sleep(0.01)
    assert arrivals.goals == [3], "the waiter did not start waiting within 10 s"
    for _ in range(4):
        arrivals.count(replies=False)  # messages: they wake the pump, not the server
    arrivals.count(replies=True)
    arrivals.count(replies=True)
    assert woken == {"replies": 0, "messages": 4} and waiter.is_alive()
    arrivals.count(replies=True)  # the third
    waiter.join(10.0)
    assert not waiter.is_alive() and woken["replies"] == 1 and arrivals.goals == []
