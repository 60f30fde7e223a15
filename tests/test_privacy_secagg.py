"""SecAgg+ (Flower's workflow and mod, through fedmeta's adapters) in one process: its
unmasked mean equals FedAvg's plain mean within the quantisation error, the run repeats
bit for bit, and its cost in bytes is in the results."""

from __future__ import annotations

import torch
from flwr.app import Context, RecordDict

from fedmeta.app import client_app
from fedmeta.app.privacy_wrap import make_strategy
from fedmeta.app.records import config_record, to_params, to_record
from fedmeta.app.secagg import MAX_WEIGHT, secure_mean
from fedmeta.app.server_app import run_federation
from fedmeta.app.strategy import FedMeta
from fedmeta.config import from_dict
from fedmeta.meta import MetaTrainer, build_learner
from fedmeta.models import MLP
from fedmeta.results import table
from local_grid import LocalGrid

FLEET = {"num_devices": 6, "num_held_out": 2, "fraction_train": 0.75, "min_train_devices": 3,
         "eval_every": 100, "meta_batch": 2, "eval_episodes": 2}



def config(rounds: int = 2, **privacy: object):
    return from_dict({"train": {"seed": 4}, "meta": {"eval_steps": 1},
                      "federation": {**FLEET, "rounds": rounds},
                      "privacy": {"secure_aggregation": True, **privacy}})


def test_secagg_mean_equals_the_plain_mean_within_quantisation_error() -> None:
    cfg = config()
    torch.manual_seed(0)
    trainer = MetaTrainer(build_learner("maml", MLP(), inner_lr=0.01), 0.01)
    strategy = make_strategy(cfg, trainer, lambda row: None)
    grid = LocalGrid(client_app.app, 6)
    strategy.discover(grid, timeout=10)
    arrays = to_record(trainer.params)
    messages = list(FedMeta.configure_train(
        strategy, 1, arrays, config_record(cfg, model="mlp", **{"model-kwargs": "{}"}), grid))
    assert len(messages) == 3

    plain_replies = list(grid.send_and_receive(messages))
    plain, *_ = FedMeta.aggregate_updates(strategy, 1, plain_replies)
    result = secure_mean(grid, messages, cfg.privacy, 4)

    assert sorted(result.devices) == sorted(m.metadata.dst_node_id for m in messages)
    plain_mean = to_params(plain)
    weights = [m["num-examples"] for m in result.metrics]
    levels, span = cfg.privacy.secagg_quantization_range, 2 * cfg.privacy.secagg_clipping_range
    bound = len(weights) * span / levels / (sum(weights) / MAX_WEIGHT)  # per entry
    error = max(float((plain_mean[k] - result.mean[k]).abs().max()) for k in plain_mean)
    assert 0 < error <= bound, (error, bound)  # quantised, and only by that much
    largest = max(float(v.abs().max()) for v in plain_mean.values())
    assert largest > 100 * bound  # the comparison is not trivially small
    assert result.bytes_up > sum(r.content["arrays"].count_bytes() for r in plain_replies)


def test_secagg_runs_repeat_and_report_the_protocols_bytes() -> None:
    frames = []
    for _ in range(2):
        rows: list = []
        params = run_federation(LocalGrid(client_app.app, 6), config(), rows.append).params
        frames.append((table(rows), params))
    (first, p1), (second, p2) = frames
    assert first.equals(second)
    assert all(torch.equal(p1[k], p2[k]) for k in p1)
    train = first[first["source"] == "train"]
    assert (train["devices"] == 3).all() and (train["dropped"] == 0).all()
    # four stages: setup, key shares, masked vectors, unmasking; more than one plain upload
    assert (train["bytes_up"] > 3 * to_record(p1).count_bytes()).all()


def test_secagg_with_device_clipping_and_central_noise_accounts_epsilon() -> None:
    rows: list = []
    run_federation(LocalGrid(client_app.app, 6),
                   config(clipping="fixed", clip_on="device", clip_norm=0.1, noise="central",
                          noise_multiplier=1.0), rows.append)
    frame = table(rows)
    eps = frame.loc[frame["source"] == "train", "epsilon"]
    assert eps.is_monotonic_increasing and 0 < eps.iloc[0] < eps.iloc[-1] < float("inf")


class RenumberedGrid(LocalGrid):
    """LocalGrid whose nodes have the ids ``ids`` (Ray draws them at random, of any width)."""

    def __init__(self, app, ids: list[int]) -> None:
        super().__init__(app, len(ids))
        self.contexts = {new: Context(run_id=1, node_id=new, node_config=c.node_config,
                                      state=RecordDict(), run_config={})
                         for new, c in zip(ids, self.contexts.values())}


def test_secagg_bytes_do_not_depend_on_the_node_ids_the_runtime_assigns() -> None:
    """The key-sharing stage keys public keys by node id: ids of 2 and of 19 digits must
    count the same bytes (the id is routing, not what fedmeta sends)."""
    short = [11 + i for i in range(6)]
    long = [9_100_000_000_000_000_000 + 7_919 * i for i in range(6)]
    frames = []
    for ids in (short, long):
        rows: list = []
        run_federation(RenumberedGrid(client_app.app, ids), config(rounds=1), rows.append)
        frames.append(table(rows))
    assert frames[0].to_csv() == frames[1].to_csv()
    assert frames[0]["bytes_down"].sum() > 0
