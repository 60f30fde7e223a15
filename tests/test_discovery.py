"""Which node is which device, under load and on ``flwr run``'s own federation, without Ray:
nodes that do not answer are asked again until ``federation.discovery_timeout`` (a node that
answers only the 2nd ask, one that connects late, one whose first answer comes after the
ask's wait), a node that never answers is named with the setting to change, and
``federation.num_devices = "auto"`` sizes the fleet to the SuperNodes found; a run the
ServerApp refuses is one ERROR line, no traceback, and a failed ServerApp."""

from __future__ import annotations

import logging
import threading
import time
import tomllib
from collections.abc import Iterable
from pathlib import Path

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedmeta.app import client_app, server_app
from fedmeta.app.discovery import DiscoveryError, ask_partitions
from fedmeta.app.sizing import size_to
from fedmeta.errors import ConfigError
from local_grid import LocalGrid
from threaded_grid import ThreadedGrid

ROOT = Path(__file__).resolve().parents[1]


class SlowGrid(LocalGrid):
    """A LocalGrid whose nodes in ``silent`` do not answer their first ``silent[node]``
    queries (a Ray worker or ClientApp still starting; ``-1``: never). As Flower's Grids
    do, a ``send_and_receive`` missing replies returns only at its timeout (a fake clock,
    ``waits``, so tests take no time); nodes in ``late`` connect after that many looks at
    the connected nodes."""

    def __init__(self, num_nodes: int, silent: dict[int, int] | None = None,
                 late: dict[int, int] | None = None, num_partitions: int | None = None):
        super().__init__(client_app.app, num_nodes, num_partitions)
        self.node_of = {ctx.node_config["partition-id"]: n for n, ctx in self.contexts.items()}
        self.silent = {self.node_of[p]: k for p, k in (silent or {}).items()}
        self.late = {self.node_of[p]: k for p, k in (late or {}).items()}
        self.asks: list[list[int]] = []
        self.waits: list[float] = []
        self.looks = 0

    def get_node_ids(self) -> Iterable[int]:
        self.looks += 1
        return [n for n in self.contexts if self.late.get(n, 0) < self.looks]

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        self.asks.append([m.metadata.dst_node_id for m in messages])
        replies = []
        for m in messages:
            node = m.metadata.dst_node_id
            asked = sum(node in ask for ask in self.asks)
            if self.silent.get(node, 0) == -1 or asked <= self.silent.get(node, 0):
                continue
            replies.extend(super().send_and_receive([m]))
        if len(replies) < len(messages):
            self.waits.append(timeout)
        return replies


def test_a_node_that_answers_only_the_second_ask_is_found() -> None:
    grid = SlowGrid(4, silent={2: 1})
    found = ask_partitions(grid, lambda f: 4, timeout_s=60, ask_wait=30, first_wait=5)
    assert {n: p for n, (p, _) in found.partitions.items()} == {
        n: p for p, n in grid.node_of.items()}
    assert grid.asks[1] == [grid.node_of[2]]  # only the node that had not answered
    assert found.asks == 2 and grid.waits == [5]


def test_waits_double_up_to_the_round_timeout_until_the_deadline() -> None:
    grid = SlowGrid(3, silent={0: 4})
    found = ask_partitions(grid, lambda f: 3, timeout_s=600, ask_wait=30, first_wait=5)
    assert len(found.partitions) == 3 and found.asks == 5
    assert grid.waits == [5, 10, 20, 30]  # doubled, capped by the round timeout


def test_a_node_that_connects_late_is_asked_when_it_appears() -> None:
    grid = SlowGrid(3, late={1: 3})
    found = ask_partitions(grid, lambda f: 3, timeout_s=5, ask_wait=1)
    assert sorted(p for p, _ in found.partitions.values()) == [0, 1, 2]
    assert grid.asks == [sorted([grid.node_of[0], grid.node_of[2]]), [grid.node_of[1]]]


def test_a_reply_after_the_wait_is_asked_again_on_threads() -> None:
    """Real time: partition 1's first query takes 0.6 s, each ask waits 0.2 s."""
    app, calls = ClientApp(), {}
    lock = threading.Lock()

    @app.query()
    def query(message: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        with lock:
            calls[pid] = calls.get(pid, 0) + 1
            first = calls[pid] == 1
        if pid == 1 and first:
            time.sleep(0.6)
        return client_app.query(message, context)

    grid = ThreadedGrid(app, 3)
    try:
        found = ask_partitions(grid, lambda f: 3, timeout_s=10, ask_wait=0.2)
    finally:
        grid.join()
    assert sorted(p for p, _ in found.partitions.values()) == [0, 1, 2]
    assert found.asks >= 2 and calls[1] >= 2 and calls[0] == calls[2] == 1


def strategy(**fed: object):
    from fedmeta.app.strategy import FedMeta
    from fedmeta.config import from_dict
    from fedmeta.meta import MetaTrainer, build_learner
    from fedmeta.models import MLP

    cfg = from_dict({"federation": {"num_devices": 5, "num_held_out": 1, **fed}})
    return FedMeta(cfg.federation, MetaTrainer(build_learner("maml", MLP(hidden=(3,))), 1.0),
                   seed=0)


def test_the_strategys_asks_do_not_follow_a_short_round_timeout() -> None:
    """``round_timeout=8`` on a loaded host: the issue's case. Asks wait 30 s, then 60 s."""
    s = strategy(round_timeout=8.0, discovery_timeout=300.0)
    grid = SlowGrid(5, silent={0: 2, 4: 1})
    s.discover(grid)
    assert sorted(s.partitions.values()) == [0, 1, 2, 3, 4]
    assert grid.waits == [30, 60] and [len(a) for a in grid.asks] == [5, 2, 1]


def test_a_node_that_never_answers_is_named_with_the_setting_to_change() -> None:
    s = strategy(discovery_timeout=2.0)
    grid = SlowGrid(5, silent={3: -1})
    with pytest.raises(DiscoveryError) as caught:
        s.discover(grid, timeout=0.5)
    message = str(caught.value)
    assert message.count("\n") == 0
    assert "4 of 5 devices said which partition they hold within " \
           "federation.discovery_timeout=2 s" in message
    assert "partitions 3 missing" in message
    assert f"1 connected nodes did not answer (node ids {grid.node_of[3]})" in message
    assert 'federation.discovery_timeout=600' in message  # what to change
    assert "federation.num_devices" not in message  # a valid field is not blamed
    assert all(w <= 0.5 for w in grid.waits) and len(grid.asks) > 2  # asked again and again


def test_auto_size_keeps_one_in_five_held_out() -> None:
    declared = {"federation.num_devices": "auto", "federation.num_held_out": 4,
                "federation.min_train_devices": 2}
    for n, held_out, min_train in ((2, 1, 1), (3, 1, 2), (10, 2, 2), (20, 4, 2), (60, 4, 2)):
        sized, changes = size_to(declared, n)
        assert (sized["federation.num_devices"], sized["federation.num_held_out"],
                sized["federation.min_train_devices"]) == (n, held_out, min_train), changes
    assert size_to(declared, 2)[1] == ["num_devices=2", "num_held_out=1 (was 4)",
                                       "min_train_devices=1 (was 2)"]
    with pytest.raises(ConfigError, match="at least 2 SuperNodes"):
        size_to(declared, 1)


def run_config(**changes: object) -> dict:
    """pyproject.toml's run config (what `flwr run .` passes) with ``changes``."""
    app = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    flat = {f"{s}.{k}": v for s, fields in app["config"].items() for k, v in fields.items()}
    return {**flat, **{k.replace("__", "."): v for k, v in changes.items()}}


def context(flat: dict) -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=flat)


def test_flwr_run_defaults_size_the_fleet_to_flowers_two_supernodes(
        caplog: pytest.LogCaptureFixture) -> None:
    """What `flwr run .` does on a fresh install: pyproject's run config, 2 SuperNodes."""
    grid = LocalGrid(client_app.app, 2)
    flat = run_config(federation__rounds=2, federation__eval_every=2,
                      federation__eval_episodes=2, federation__meta_batch=2)
    with caplog.at_level(logging.INFO, logger="flwr.fedmeta"):
        server_app.main(grid, context(flat))
    assert ("federation.num_devices=auto: the federation has 2 SuperNodes, so num_devices=2,"
            " num_held_out=1 (was 4), min_train_devices=1 (was 2)") in caplog.text
    assert "round 2 train: 1 devices" in caplog.text and "round 2 eval: 1 devices" in caplog.text
    queries = [m for m in grid.sent if m.metadata.message_type == "query"]
    assert len(queries) == 2  # each node asked once: the strategy reuses what sizing found


def test_a_refused_run_is_one_error_line_and_a_failed_serverapp(
        caplog: pytest.LogCaptureFixture) -> None:
    grid = LocalGrid(client_app.app, 2)
    with caplog.at_level(logging.INFO, logger="flwr"):
        with pytest.raises(server_app.ServerAppFailed) as caught:
            server_app.main(grid, context(run_config(federation__num_devices=20)))
        # what Flower then logs (flwr/superlink/runtime/run_serverapp.py), and its exit code
        logging.getLogger("flwr").error("ServerApp raised an exception", exc_info=caught.value)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors[0].getMessage().startswith(
        "fedmeta: federation.num_devices=20 is not allowed: expected the federation's size: "
        "it has 2 SuperNodes")
    assert all("\n" not in r.getMessage() for r in errors)
    assert "Traceback" not in caplog.text
    assert caught.value.exit_code == 201 and caught.value.__cause__ is None


def test_a_bad_run_config_fails_before_any_device_is_asked(
        caplog: pytest.LogCaptureFixture) -> None:
    grid = LocalGrid(client_app.app, 2)
    with pytest.raises(server_app.ServerAppFailed, match="federation.discovery_timeout=0"):
        server_app.main(grid, context(run_config(federation__discovery_timeout=0.0)))
    assert grid.sent == []


def test_a_node_that_replies_an_error_is_asked_again_after_the_wait(
        caplog: pytest.LogCaptureFixture) -> None:
    app = ClientApp()  # no query handler: every query comes back as an error at once
    grid = SlowGrid(2)
    grid.app = app
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="flwr.fedmeta"):
        found = ask_partitions(grid, lambda f: 2, timeout_s=1.0, ask_wait=0.3, first_wait=0.3)
    assert found.partitions == {} and set(found.refused) == set(grid.contexts)
    assert 3 <= found.asks <= 5 and time.monotonic() - start >= 0.9  # paced, not a hot loop
    assert caplog.text.count("did not say which partition it holds") == 2  # once per node
