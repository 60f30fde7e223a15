"""The whole server loop (real ClientApp, FedMeta strategy, FedAvg's aggregation, server
optimizer) in one process: with one device holding all the data and one local step of size
1, fedmeta-maml is central MAML, step for step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmeta.app import client_app
from fedmeta.app.server_app import run_federation
from fedmeta.config import from_dict
from fedmeta.meta import MetaTrainer, build_learner
from fedmeta.models import MLP
from fedmeta.results import table
from fedmeta.tasks.episode import sample_batch, stack_episodes
from fedmeta.tasks.factory import build_device_tasks, build_tasks
from local_grid import LocalGrid

SEED, ROUNDS, META_BATCH, LR = 5, 6, 8, 0.01


def one_device_config(algorithm: str = "fedmeta-maml"):
    return from_dict({
        "task": {"device_width": 1.0}, "train": {"seed": SEED},
        "meta": {"inner_lr": 0.01, "inner_steps": 1, "eval_steps": 2},
        "federation": {"algorithm": algorithm, "num_devices": 2, "num_held_out": 1,
                       "rounds": ROUNDS, "fraction_train": 1.0, "min_train_devices": 1,
                       "meta_batch": META_BATCH, "local_steps": 1, "local_lr": 1.0,
                       "server_optimizer": "adam", "server_lr": LR, "eval_every": 3,
                       "eval_episodes": 4}})


@pytest.mark.parametrize("algorithm, learner_name", [("fedmeta-maml", "maml"),
                                                     ("fedmeta-anil", "anil")])
def test_one_device_with_all_data_is_central_meta_training(algorithm: str,
                                                           learner_name: str) -> None:
    cfg = one_device_config(algorithm)
    central_tasks = build_tasks(cfg.task, seed=SEED).train
    assert build_device_tasks(cfg.task, 0, 2, cfg.federation.num_held_out,
                              seed=SEED) == central_tasks  # all the data
    rows: list = []
    federated = run_federation(LocalGrid(client_app.app, 2), cfg, rows.append).params

    torch.manual_seed(SEED)
    learner = build_learner(learner_name, MLP(), inner_lr=0.01, inner_steps=1)
    trainer = MetaTrainer(learner, meta_lr=LR, optimizer="adam")
    start = {k: v.clone() for k, v in trainer.params.items()}
    for server_round in range(1, ROUNDS + 1):  # the device's episodes: (seed, round, pid 0)
        rng = np.random.default_rng([SEED, server_round, 0])
        trainer.step(learner.meta_update(trainer.params,
                                         stack_episodes(sample_batch(central_tasks, rng,
                                                                     META_BATCH))))
    for k, v in trainer.params.items():
        assert not torch.allclose(v, start[k])  # it did learn something
        torch.testing.assert_close(federated[k], v, atol=1e-6, rtol=0)
    assert [(r.round, r.source) for r in rows] == [
        (0, "eval"), (1, "train"), (2, "train"), (3, "train"), (3, "eval"), (4, "train"),
        (5, "train"), (6, "train"), (6, "eval")]


def test_the_same_seed_gives_the_same_records_whatever_the_node_ids() -> None:
    cfg = from_dict({"train": {"seed": 1}, "federation": {
        "num_devices": 5, "num_held_out": 2, "rounds": 3, "eval_every": 3, "meta_batch": 3,
        "eval_episodes": 3}})
    first: list = []
    run_federation(LocalGrid(client_app.app, 5), cfg, first.append)
    grid = LocalGrid(client_app.app, 5)
    grid.contexts = {node + 17: ctx for node, ctx in reversed(grid.contexts.items())}
    second: list = []
    run_federation(grid, cfg, second.append)
    assert table(first).to_csv() == table(second).to_csv()
