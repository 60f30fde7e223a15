"""The federated metric and model-based learners in the whole server loop, without Ray
(tests/local_grid.py), on Omniglot: devices send meta-gradients, the server steps Adam,
held-out devices score the meta-model from each episode's support set; with a fleet, the
devices' plans use the per-episode cost; the same seed gives the same records."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from local_grid import LocalGrid

from fedmeta.app import client_app
from fedmeta.app.server_app import run_federation
from fedmeta.config import from_dict
from fedmeta.federated import FEDERATED_ALGORITHMS
from fedmeta.results import table

EPISODIC = ["fedmeta-protonet", "fedmeta-matching", "fedmeta-relation", "fedmeta-snail",
            "fedmeta-leo"]


def config(omniglot_dir: Path, algorithm: str, **extra: dict):
    return from_dict({
        "task": {"kind": "omniglot", "data_dir": str(omniglot_dir), "n_way": 5, "k_shot": 1,
                 "q_query": 2},
        "train": {"seed": 2}, "meta": {"inner_lr": 1.0, "eval_steps": 1},
        "federation": {"algorithm": algorithm, "num_devices": 3, "num_held_out": 1,
                       "rounds": 2, "eval_every": 2, "meta_batch": 2, "eval_episodes": 3,
                       "fraction_train": 1.0},
        **extra})


@pytest.mark.parametrize("algorithm", EPISODIC)
def test_federated_episodic_learners_train_and_score_held_out_devices(
        algorithm: str, omniglot_dir: Path) -> None:
    cfg = config(omniglot_dir, algorithm)
    rows: list = []
    checkpoint = run_federation(LocalGrid(client_app.app, 3), cfg, rows.append)
    frame = table(rows)
    assert checkpoint.algorithm == FEDERATED_ALGORITHMS[algorithm].learner
    train, evals = frame[frame.source == "train"], frame[frame.source == "eval"]
    assert list(train["round"]) == [1, 2] and list(evals["round"]) == [0, 2]
    assert (train["devices"] == 2).all() and (evals["devices"] == 1).all()
    assert all(math.isnan(v) for v in evals["pre_acc"])  # no classes before the support set
    assert all(0.0 <= v <= 1.0 for v in evals["post_acc"])
    assert set(checkpoint.params) == set(checkpoint.learner().init_params())


@pytest.mark.parametrize("algorithm", ["fedmeta-relation"])
def test_same_seed_same_records_and_fleet_plans_use_the_episode_cost(
        algorithm: str, omniglot_dir: Path, tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.toml"
    profiles.write_text("[tiny]\nflops = 1e9\nmemory_gb = 1\nuplink_mbps = 10\n"
                        "downlink_mbps = 10\n")
    cfg = config(omniglot_dir, algorithm,
                 fleet={"tiers": "tiny:1.0", "profiles_file": str(profiles), "policy": "wait"})
    first: list = []
    second: list = []
    run_federation(LocalGrid(client_app.app, 3), cfg, first.append)
    run_federation(LocalGrid(client_app.app, 3), cfg, second.append)
    frame = table(first)
    assert frame.to_csv() == table(second).to_csv()  # the relation/LEO modules from the seed
    assert (frame[frame.source == "train"]["sim_round_s"] > 0).all()
