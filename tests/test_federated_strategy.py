"""The FedMeta strategy on hand-made Flower messages, without Ray: episode-weighted mean of
pseudo-gradients, the server optimizer's step and state, seeded sampling of training
devices, evaluation only on held-out devices, and bad replies dropped with a clear log."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from flwr.app import (ConfigRecord, Error, Message, MessageType, MetricRecord,
                      RecordDict)

from fedmeta.app.records import scores_record, to_params, to_record
from fedmeta.app.strategy import FedMeta
from fedmeta.config import from_dict
from fedmeta.errors import ConfigError
from fedmeta.meta import MetaTrainer, build_learner
from fedmeta.meta.evaluation import mean_ci95
from fedmeta.models import MLP
from local_grid import set_task_identity

NODES = {100 + 10 * p: p for p in range(6)}  # node id -> partition: 0-3 train, 4-5 held out


@pytest.fixture(autouse=True)
def task_identity() -> None:
    set_task_identity()


def strategy(optimizer: str = "sgd", lr: float = 1.0, rows: list | None = None,
             **fed: object) -> FedMeta:
    cfg = from_dict({"federation": {"num_devices": 6, "num_held_out": 2, "rounds": 4,
                                    "eval_every": 2, "min_train_devices": 2,
                                    "fraction_train": 0.5, "server_optimizer": optimizer,
                                    "server_lr": lr, **fed}})
    torch.manual_seed(0)
    learner = build_learner("maml", MLP(hidden=(3,)), inner_lr=0.1)
    s = FedMeta(cfg.federation, MetaTrainer(learner, lr, optimizer), seed=7,
                report=(rows if rows is not None else []).append)
    s.partitions = dict(NODES)
    return s


def node_of(partition: int) -> int:
    return next(n for n, p in NODES.items() if p == partition)


def reply(partition: int, content: RecordDict | Error, kind: str = MessageType.TRAIN
          ) -> Message:
    sent = Message(RecordDict(), dst_node_id=node_of(partition), message_type=kind)
    return Message(content, reply_to=sent)


def metrics(episodes: object = 10, **extra: object) -> MetricRecord:
    return MetricRecord({"num-examples": episodes, "pre_loss": 2.0, "pre_acc": math.nan,
                         "post_loss": 1.0, "post_acc": math.nan, **extra})


def update(s: FedMeta, partition: int, scale: float, episodes: object = 10) -> Message:
    delta = {k: torch.full_like(v, scale) for k, v in s.trainer.params.items()}
    return reply(partition, RecordDict({"arrays": to_record(delta),
                                        "metrics": metrics(episodes)}))


def test_sgd_step_of_one_moves_by_the_episode_weighted_mean() -> None:
    rows: list = []
    s = strategy(rows=rows)
    before = {k: v.clone() for k, v in s.trainer.params.items()}
    arrays, _ = s.aggregate_train(1, [update(s, 0, 1.0, 10), update(s, 2, 5.0, 30)])
    expected = {k: v - (0.25 * 1.0 + 0.75 * 5.0) for k, v in before.items()}
    for k, v in to_params(arrays).items():
        torch.testing.assert_close(v, expected[k])
        torch.testing.assert_close(s.trainer.params[k], expected[k])
    assert (rows[0].round, rows[0].source, rows[0].devices, rows[0].episodes) == (1, "train",
                                                                                  2, 40)
    assert rows[0].scores["pre_loss"] == pytest.approx(2.0)
    assert rows[0].bytes_up == 2 * to_record(before).count_bytes()


def test_adam_state_carries_across_rounds_like_torch_adam() -> None:
    s = strategy("adam", 0.1)
    reference = {k: v.clone().requires_grad_() for k, v in s.trainer.params.items()}
    adam = torch.optim.Adam(list(reference.values()), lr=0.1)
    for rnd, (a, b) in enumerate([(1.0, 3.0), (-2.0, 0.5), (0.25, 0.25)], start=1):
        s.aggregate_train(rnd, [update(s, 1, a, 20), update(s, 3, b, 20)])
        for p in reference.values():
            p.grad = torch.full_like(p, (a + b) / 2)
        adam.step()
    for k, p in reference.items():
        torch.testing.assert_close(s.trainer.params[k], p.detach())


def test_bad_replies_are_dropped_with_a_warning_naming_device_and_problem(
        caplog: pytest.LogCaptureFixture) -> None:
    rows: list = []
    s = strategy(rows=rows)
    good = update(s, 0, 2.0, 10)
    params = s.trainer.params
    shapes = {k: torch.zeros(3, 3) for k in params}
    nan = {k: torch.full_like(v, math.nan) for k, v in params.items()}
    missing = dict(list(params.items())[:-1])
    bad = [
        reply(1, Error(code=3, reason="device ran out of memory")),
        reply(2, RecordDict({"arrays": to_record(shapes), "metrics": metrics()})),
        reply(3, RecordDict({"arrays": to_record(nan), "metrics": metrics()})),
        reply(4, RecordDict({"arrays": to_record(missing), "metrics": metrics()})),
        reply(5, RecordDict({"arrays": to_record(params), "metrics": metrics(episodes=0)})),
        reply(1, RecordDict({"arrays": to_record(params), "metrics": MetricRecord(
            {"num-examples": 3})})),
        reply(2, RecordDict({"arrays": to_record(params), "other": to_record(params),
                             "metrics": metrics()})),
        reply(3, RecordDict({"metrics": metrics()})),
    ]
    stranger = Message(RecordDict({"arrays": to_record(params), "metrics": metrics()}),
                       reply_to=Message(RecordDict(), dst_node_id=999, message_type="train"))
    before = {k: v.clone() for k, v in params.items()}
    with caplog.at_level(logging.WARNING, logger="flwr.fedmeta"):
        s.aggregate_train(1, [*bad, good, stranger])
    for k, v in s.trainer.params.items():
        torch.testing.assert_close(v, before[k] - 2.0)  # only the good reply counts
    assert (rows[0].devices, rows[0].dropped) == (1, len(bad) + 1)
    text = caplog.text
    assert "device 1" in text and "device ran out of memory" in text
    for problem in ("shape", "not finite", "not the meta-parameters", "num-examples=0",
                    "metrics ['num-examples'] are not", "expected one ArrayRecord",
                    "not a known device"):
        assert problem in text, problem
    assert len(caplog.records) == len(bad) + 1


def test_no_usable_reply_leaves_the_meta_model_unchanged() -> None:
    rows: list = []
    s = strategy("adam", 0.1, rows=rows)
    before = {k: v.clone() for k, v in s.trainer.params.items()}
    arrays, metrics_ = s.aggregate_train(1, [reply(0, Error(code=1, reason="boom"))])
    assert metrics_ is None
    for k, v in to_params(arrays).items():
        assert torch.equal(v, before[k])
    assert (rows[0].devices, rows[0].dropped, rows[0].episodes) == (0, 1, 0)


def test_sampling_is_seeded_over_training_devices_only() -> None:
    s = strategy()
    arrays, config = to_record(s.trainer.params), ConfigRecord({"x.y": 1})
    picks = {r: [s.partitions[m.metadata.dst_node_id]
                 for m in s.configure_train(r, arrays, config, grid=None)] for r in range(1, 9)}
    again = strategy()
    assert picks == {r: [again.partitions[n] for n in again.sample(r)] for r in picks}
    assert all(len(p) == 2 and p == sorted(p) and set(p) <= {0, 1, 2, 3}
               for p in picks.values())
    assert len({tuple(p) for p in picks.values()}) > 1  # not the same devices every round
    messages = list(s.configure_train(3, arrays, config, grid=None))
    assert {m.metadata.message_type for m in messages} == {MessageType.TRAIN}
    assert messages[0].content["config"]["server-round"] == 3
    assert messages[0].content["arrays"].count_bytes() == arrays.count_bytes()


def test_evaluation_goes_to_held_out_devices_at_round_0_every_k_and_last() -> None:
    s = strategy(rounds=5, eval_every=2)
    arrays, config = to_record(s.trainer.params), ConfigRecord()
    targets = {r: [s.partitions[m.metadata.dst_node_id]
                   for m in s.configure_evaluate(r, arrays, config, grid=None)]
               for r in range(6)}
    assert targets == {0: [4, 5], 1: [], 2: [4, 5], 3: [], 4: [4, 5], 5: [4, 5]}


def eval_reply(partition: int, scores: dict[str, np.ndarray]) -> Message:
    n = len(scores["pre_loss"])
    return reply(partition, RecordDict({"scores": scores_record(scores), "metrics": metrics(n)}),
                 MessageType.EVALUATE)


def test_evaluation_pools_episodes_of_held_out_devices_with_a_95_ci(
        caplog: pytest.LogCaptureFixture) -> None:
    rows: list = []
    s = strategy(rows=rows)
    rng = np.random.default_rng(0)
    per_device = [{m: rng.random(n) for m in ("pre_loss", "pre_acc", "post_loss", "post_acc")}
                  for n in (5, 7)]
    broken = {m: np.ones(3) for m in ("pre_loss", "post_loss")}
    with caplog.at_level(logging.WARNING, logger="flwr.fedmeta"):
        record = s.aggregate_evaluate(2, [eval_reply(5, per_device[1]),
                                          eval_reply(4, per_device[0]),
                                          eval_reply(4, broken)])
    pooled = np.concatenate([d["post_loss"] for d in per_device])
    mean, ci = mean_ci95(pooled)
    assert record["post_loss"] == pytest.approx(mean)
    assert rows[0].scores["post_loss_ci95"] == pytest.approx(ci)
    assert (rows[0].source, rows[0].devices, rows[0].dropped, rows[0].episodes) == (
        "eval", 2, 1, 12)
    assert "expected an ArrayRecord 'scores'" in caplog.text


def test_a_federation_of_the_wrong_size_is_a_clear_error() -> None:
    from fedmeta.app import client_app
    from local_grid import LocalGrid

    s = strategy(discovery_timeout=5.0)
    s.partitions = {}
    with pytest.raises(ConfigError, match="num-supernodes=6") as caught:
        s.discover(LocalGrid(client_app.app, 2), timeout=10)  # 2 SuperNodes, not 6
    assert "federation.num_devices=6" in str(caught.value) and "it has 2 SuperNodes" in str(
        caught.value) and "\n" not in str(caught.value)


def test_missing_devices_are_a_clear_error_not_a_hang() -> None:
    from fedmeta.app import client_app
    from fedmeta.app.discovery import DiscoveryError
    from local_grid import LocalGrid

    s = strategy(discovery_timeout=0.3)
    s.partitions = {}
    grid = LocalGrid(client_app.app, 5, num_partitions=6)  # a sixth SuperNode never joins
    with pytest.raises(DiscoveryError, match="5 of 6 devices") as caught:
        s.discover(grid, timeout=10)
    message = str(caught.value)
    assert "partitions 5 missing" in message and "only 5 of 6 SuperNodes are connected" in message
    assert "federation.discovery_timeout" in message
    assert sorted(s.partitions.values()) == [0, 1, 2, 3, 4]
