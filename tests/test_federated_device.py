"""The device ClientApp, called directly: its pseudo-gradient, its randomness (seed, round,
partition only) and its evaluation replies."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from fedmeta.app import client_app
from fedmeta.app.records import config_record, to_params, to_record
from fedmeta.config import from_dict
from fedmeta.meta import build_learner
from fedmeta.models import MLP
from fedmeta.tasks.episode import sample_batch, stack_episodes
from fedmeta.tasks.factory import build_device_tasks
from local_grid import set_task_identity

SEED = 3


@pytest.fixture(autouse=True)
def task_identity() -> None:
    set_task_identity()


def config(**fed: object):
    return from_dict({"train": {"seed": SEED}, "meta": {"eval_steps": 3},
                      "federation": {"num_devices": 5, "num_held_out": 1, "meta_batch": 4,
                                     "eval_episodes": 6, **fed}})


def send(cfg, kind: str, partition: int, params: dict, server_round: int = 2) -> Message:
    record = config_record(cfg, model="mlp", **{"model-kwargs": json.dumps({})})
    record["server-round"] = server_round
    message = Message(RecordDict({"arrays": to_record(params), "config": record}),
                      dst_node_id=10 + partition, message_type=kind)
    context = Context(run_id=1, node_id=10 + partition, state=RecordDict(), run_config={},
                      node_config={"partition-id": partition, "num-partitions": 5})
    return client_app.app(message, context)


def learner_and_params(algorithm: str = "maml"):
    torch.manual_seed(0)
    learner = build_learner(algorithm, MLP(), inner_lr=0.01, inner_steps=1, eval_steps=3)
    return learner, learner.init_params()


def test_one_local_step_of_size_one_replies_the_learners_direction() -> None:
    cfg = config(local_steps=1, local_lr=1.0)
    learner, params = learner_and_params()
    out = send(cfg, MessageType.TRAIN, 2, params, server_round=7)
    rng = np.random.default_rng([SEED, 7, 2])
    source = build_device_tasks(cfg.task, 2, 5, cfg.federation.num_held_out, seed=SEED)
    expected = learner.meta_update(params, stack_episodes(sample_batch(source, rng, 4)))
    delta = to_params(out.content["arrays"])
    for k in params:
        assert torch.equal(delta[k], expected.direction[k])
    assert out.content["metrics"]["num-examples"] == 4


def test_several_local_steps_reply_theta_minus_local_theta() -> None:
    cfg = config(local_steps=3, local_lr=0.5)
    learner, params = learner_and_params()
    out = send(cfg, MessageType.TRAIN, 1, params, server_round=4)
    rng = np.random.default_rng([SEED, 4, 1])
    source = build_device_tasks(cfg.task, 1, 5, cfg.federation.num_held_out, seed=SEED)
    local = dict(params)
    for _ in range(3):
        d = learner.meta_update(local, stack_episodes(sample_batch(source, rng, 4))).direction
        local = {k: local[k] - 0.5 * d[k] for k in local}
    delta = to_params(out.content["arrays"])
    for k in params:
        torch.testing.assert_close(delta[k], params[k] - local[k], atol=1e-6, rtol=0)
    assert out.content["metrics"]["num-examples"] == 12


def test_randomness_depends_on_seed_round_and_partition_only() -> None:
    cfg = config()
    _, params = learner_and_params()
    a = to_params(send(cfg, MessageType.TRAIN, 1, params, 5).content["arrays"])
    b = to_params(send(cfg, MessageType.TRAIN, 1, params, 5).content["arrays"])
    c = to_params(send(cfg, MessageType.TRAIN, 1, params, 6).content["arrays"])
    d = to_params(send(cfg, MessageType.TRAIN, 0, params, 5).content["arrays"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert not all(torch.equal(a[k], d[k]) for k in a)


@pytest.mark.parametrize("algorithm, adapts", [("fedmeta-maml", True), ("fedavg", False),
                                               ("fedavg-ft", True)])
def test_evaluation_replies_per_episode_scores(algorithm: str, adapts: bool) -> None:
    cfg = config(algorithm=algorithm)
    _, params = learner_and_params()
    out = send(cfg, MessageType.EVALUATE, 4, params)
    scores = {k: v.numpy() for k, v in out.content["scores"].items()}
    assert all(v.shape == (6,) for v in scores.values())
    assert out.content["metrics"]["num-examples"] == 6
    assert out.content["metrics"]["post_loss"] == pytest.approx(scores["post_loss"].mean())
    assert np.isnan(scores["post_acc"]).all()  # regression has no accuracy
    assert np.array_equal(scores["pre_loss"], scores["post_loss"]) != adapts
    again = send(cfg, MessageType.EVALUATE, 4, params, server_round=9)  # same tasks each time
    assert np.array_equal(again.content["scores"]["pre_loss"].numpy(), scores["pre_loss"])


def test_query_tells_the_partition() -> None:
    context = Context(run_id=1, node_id=5, state=RecordDict(), run_config={},
                      node_config={"partition-id": 3, "num-partitions": 5})
    out = client_app.app(Message(RecordDict(), dst_node_id=5, message_type=MessageType.QUERY),
                         context)
    assert dict(out.content["partition"]) == {"partition-id": 3, "num-partitions": 5}
    assert isinstance(out.content["partition"], ConfigRecord)
