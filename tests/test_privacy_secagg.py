"""SecAgg+ (Flower's workflow and mod, through fedmeta's adapters) in one process: its
unmasked mean equals FedAvg's plain mean within the quantisation error, the run repeats
bit for bit only under the insecure switch, and its cost in bytes is in the results.

Under faults it fails loudly or recovers: NaN and malformed updates are refused on the
device (and, from a device that skips the check, dropped or caught by the server), devices
lost at any stage are counted by kind and the mean of the others is exact, rounds that lose
too many are retried, rules that need single updates are a ConfigError."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
import torch
from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from fedmeta.app import client_app
from fedmeta.app import faults as faults_module
from fedmeta.app.faults import fault_of
from fedmeta.app.privacy_wrap import make_strategy
from fedmeta.app.records import config_record, to_params, to_record
from fedmeta.app.secagg import MAX_WEIGHT, _as_fitres, secure_mean
from fedmeta.app.server_app import run_federation
from fedmeta.app.strategy import FedMeta
from fedmeta.config import AGGREGATIONS, ConfigError, from_dict
from fedmeta.meta import MetaTrainer, build_learner
from fedmeta.models import MLP
from fedmeta.results import table
from local_grid import LocalGrid
from threaded_grid import ThreadedGrid

FLEET = {"num_devices": 6, "num_held_out": 2, "fraction_train": 0.75, "min_train_devices": 3,
         "eval_every": 100, "meta_batch": 2, "eval_episodes": 2}
SEED = 4


def config(rounds: int = 2, faults: dict | None = None, federation: dict | None = None,
           **privacy: object):
    return from_dict({"train": {"seed": SEED}, "meta": {"eval_steps": 1},
                      "faults": faults or {},
                      "federation": {**FLEET, "rounds": rounds, **(federation or {})},
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
        params = run_federation(LocalGrid(client_app.app, 6),
                                config(insecure_reproducible_noise=True), rows.append).params
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


def test_secagg_rounding_and_shuffling_are_secret_without_the_insecure_switch() -> None:
    runs = [run_federation(LocalGrid(client_app.app, 6), config(), lambda row: None).params
            for _ in range(2)]
    assert any(not torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


# -- faults -----------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def quiet_flower() -> None:
    logging.getLogger("flwr").setLevel(logging.ERROR)


class TrainRecorder(LocalGrid):
    """Notes (round, attempt, partition) of every device handed its round's content (the
    SecAgg+ stage that trains), and can lose chosen partitions at a chosen SecAgg+ stage,
    with an error reply (``crash``) or none (``silent``)."""

    def __init__(self, app, num_nodes: int, lose: dict[str, set[int]] | None = None,
                 how: str = "crash") -> None:
        super().__init__(app, num_nodes)
        self.lose, self.how, self.trained = lose or {}, how, []

    def partition(self, node: int) -> int:
        return int(self.contexts[node].node_config["partition-id"])

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for m in messages:
            stage = m.content.config_records.get(RECORD_KEY_CONFIGS, {}).get(Key.STAGE)
            node = m.metadata.dst_node_id
            if "config" in m.content.config_records and stage:
                config = m.content["config"]
                self.trained.append((int(config["server-round"]), int(config.get("attempt", 0)),
                                     self.partition(node)))
            if self.partition(node) in self.lose.get(stage, ()):
                if self.how == "crash":
                    replies.append(Message(Error(code=1, reason="lost"), reply_to=m))
                continue
            replies.extend(super().send_and_receive([m], timeout=timeout))
        return replies


def planned(grid: TrainRecorder, cfg, kind: str) -> dict[tuple[int, int], int]:
    """(round, attempt) -> how many of the devices that trained drew fault ``kind``."""
    counts = Counter({(r, a): 0 for r, a, _ in grid.trained})
    counts.update((r, a) for r, a, p in grid.trained
                  if fault_of(cfg.faults, SEED, r, p, a, cfg.federation.num_train) == kind)
    return dict(counts)


@pytest.mark.parametrize("kind", ["nan", "malformed", "crash"])
def test_faulty_devices_drop_out_of_the_sum_and_are_counted_by_kind(kind: str) -> None:
    cfg = config(rounds=4, faults={kind: 0.3}, federation={"num_devices": 8})
    rows: list = []
    grid = TrainRecorder(client_app.app, 8)
    params = run_federation(grid, cfg, rows.append).params
    train = table(rows).query("source == 'train'").set_index(["round", "attempt"])
    column = {"nan": "non_finite", "malformed": "malformed", "crash": "crashed"}[kind]
    assert train[column].to_dict() == planned(grid, cfg, kind)
    assert train[column].sum() >= 2
    ok = train[train["status"] == "ok"]
    assert (ok["devices"] + ok[column] == cfg.federation.train_per_round).all() and len(ok) == 4
    assert (train["status"] != "ok").sum() == (train["devices"] == 0).sum()
    assert all(float(v.abs().max()) < 10 for v in params.values())  # not poisoned


def unchecked_mod(msg, ctxt, call_next):
    """A device's SecAgg+ without fedmeta's check: Flower's mod masks whatever it replies."""
    if msg.metadata.message_type != MessageType.TRAIN or \
            RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, ctxt)
    return secaggplus_mod(msg, ctxt, lambda m, c: _as_fitres(call_next(m, c), m))


UNCHECKED = ClientApp(mods=[unchecked_mod])
for register, handler in ((UNCHECKED.train, client_app.train),
                          (UNCHECKED.evaluate, client_app.evaluate),
                          (UNCHECKED.query, client_app.query)):
    register()(handler)


def test_a_nan_update_that_skips_the_device_check_makes_the_round_retry_not_ok() -> None:
    # the reproducer: one NaN device turned the mean into entries up to 1e6, "ok"
    cfg = config(rounds=3, faults={"nan": 0.2}, federation={"num_devices": 8},
                 insecure_reproducible_noise=True)
    rows: list = []
    grid = TrainRecorder(UNCHECKED, 8)
    params = run_federation(grid, cfg, rows.append).params
    train = table(rows).query("source == 'train'").set_index(["round", "attempt"])
    # A NaN entry becomes -2**31 in Flower's quantiser, far outside the range (the sum is
    # refused); but two of them cancel modulo 2**32, and +Inf is clipped to the range like a
    # large honest entry: no check on the sum can see those, only the device's own check
    nan = Counter((r, a) for r, a, p in grid.trained if fault_of(
        cfg.faults, SEED, r, p, a, 6) == "nan" and int(
        faults_module._rng(SEED, r, p, a, 1).integers(3)) % 2 == 0)
    poisoned = {key for key, count in nan.items() if count % 2}
    assert poisoned  # the seed draws NaN devices, and in each such attempt the sum is refused
    assert {key for key in train.index if train.loc[key, "status"] != "ok"} == poisoned
    assert (train.loc[sorted(poisoned), "devices"] == 0).all()
    assert all(torch.isfinite(v).all() and float(v.abs().max()) < 10 for v in params.values())


def test_a_malformed_masked_vector_is_dropped_by_the_server_not_an_index_error() -> None:
    cfg = config(rounds=3, faults={"malformed": 0.3}, federation={"num_devices": 8})
    rows: list = []
    grid = TrainRecorder(UNCHECKED, 8)
    run_federation(grid, cfg, rows.append)  # Flower raised IndexError here
    train = table(rows).query("source == 'train'").set_index(["round", "attempt"])
    # a float64 update quantises like a float32 one; wrong shapes and missing arrays do not
    shaped = Counter({(r, a): 0 for r, a, _ in grid.trained})
    shaped.update((r, a) for r, a, p in grid.trained
                  if fault_of(cfg.faults, SEED, r, p, a, 6) == "malformed" and
                  int(faults_module._rng(SEED, r, p, a, 1).integers(3)) != 0)
    assert train["malformed"].to_dict() == dict(shaped) and sum(shaped.values()) > 0
    assert (train["devices"] + train["malformed"] == cfg.federation.train_per_round).all()


@pytest.mark.parametrize("how", ["crash", "silent"])
@pytest.mark.parametrize("stages", [("setup",), ("share_keys",),
                                    ("setup", "collect_masked_vectors"),
                                    ("share_keys", "collect_masked_vectors")])
def test_devices_lost_at_any_stage_are_counted_and_the_others_mean_is_exact(
        stages: tuple[str, ...], how: str) -> None:
    # 5 devices, each the others' neighbour; one lost early and one while masking made
    # Flower halt or raise KeyError (the early one's public key) at unmasking
    cfg = config(federation={"num_devices": 7, "fraction_train": 1.0, "min_train_devices": 5},
                 secagg_shares=5)
    lose = {stage: {p} for stage, p in zip(stages, (1, 3))}
    torch.manual_seed(0)
    trainer = MetaTrainer(build_learner("maml", MLP(), inner_lr=0.01), 0.01)
    strategy = make_strategy(cfg, trainer, lambda row: None)
    grid = TrainRecorder(client_app.app, 7, lose, how)
    strategy.discover(grid, timeout=10)
    messages = list(FedMeta.configure_train(
        strategy, 1, to_record(trainer.params),
        config_record(cfg, model="mlp", **{"model-kwargs": "{}"}), grid))
    result = secure_mean(grid, messages, cfg.privacy, SEED)

    gone = {p for partitions in lose.values() for p in partitions}
    lost = {n for n in strategy.partitions if strategy.partitions[n] in gone}
    assert set(result.lost) == lost
    assert set(result.lost.values()) == {"crashed" if how == "crash" else "timed_out"}
    survivors = [m for m in messages if m.metadata.dst_node_id not in lost]
    assert sorted(result.devices) == sorted(m.metadata.dst_node_id for m in survivors)
    plain, *_ = FedMeta.aggregate_updates(
        strategy, 1, list(LocalGrid(client_app.app, 7).send_and_receive(survivors)))
    weights = [m["num-examples"] for m in result.metrics]
    levels, span = cfg.privacy.secagg_quantization_range, 2 * cfg.privacy.secagg_clipping_range
    bound = len(weights) * span / levels / (sum(weights) / MAX_WEIGHT)
    plain_mean = to_params(plain)
    assert max(float((plain_mean[k] - result.mean[k]).abs().max()) for k in plain_mean) <= bound


def test_a_round_that_loses_too_many_devices_is_retried_on_fresh_devices_then_skipped() -> None:
    cfg = config(rounds=1, federation={"num_devices": 8, "max_retries": 2})
    rows: list = []
    grid = TrainRecorder(client_app.app, 8, {"collect_masked_vectors": set(range(6))})
    run_federation(grid, cfg, rows.append)  # every training device crashes while masking
    train = table(rows).query("source == 'train'")
    assert train["status"].tolist() == ["retried", "retried", "skipped"]
    assert train["attempt"].tolist() == [0, 1, 2]
    assert (train["crashed"] == cfg.federation.train_per_round).all()
    samples = [sorted(p for r, a, p in grid.trained if a == attempt) for attempt in range(3)]
    assert len({tuple(s) for s in samples}) > 1  # fresh samples

    rows = []
    survivors = TrainRecorder(client_app.app, 8, {"collect_masked_vectors": {0, 1, 2}})
    run_federation(survivors, config(rounds=1, federation={
        "num_devices": 8, "min_good_replies": 3}), rows.append)
    train = table(rows).query("source == 'train'")
    # attempts whose sum holds fewer than min_good_replies devices are retried as well
    assert train["status"].iloc[-1] in ("ok", "skipped") and len(train) >= 1
    for _, row in train.iterrows():
        assert (row["status"] == "ok") == (row["devices"] >= 3)

    rows = []
    run_federation(TrainRecorder(client_app.app, 8, {"collect_masked_vectors": set(range(6))}),
                   config(rounds=1, federation={"num_devices": 8, "short_round": "skip"}),
                   rows.append)
    assert table(rows).query("source == 'train'")["status"].tolist() == ["skipped"]


def test_hanging_devices_time_out_at_their_stage_and_the_round_goes_on() -> None:
    cfg = config(rounds=2, faults={"hang": 0.3, "hang_extra_s": 0.2},
                 federation={"num_devices": 8, "round_timeout": 2.0})
    rows: list = []
    grid = ThreadedGrid(client_app.app, 8)
    run_federation(grid, cfg, rows.append)
    grid.join()
    train = table(rows).query("source == 'train'")
    assert train["timed_out"].sum() > 0
    ok = train[train["status"] == "ok"]
    assert (ok["devices"] + ok["timed_out"] == cfg.federation.train_per_round).all()
    assert len(ok) == 2


@pytest.mark.parametrize("rule", [r for r in AGGREGATIONS if r != "mean"])
def test_rules_that_need_single_updates_are_refused_with_secure_aggregation(rule: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config(federation={"aggregation": rule})
    assert caught.value.field == "federation.aggregation"
    assert "secure_aggregation" in str(caught.value)
    config()  # the mean is fine


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
        run_federation(RenumberedGrid(client_app.app, ids),  # same rounding in both runs
                       config(rounds=1, insecure_reproducible_noise=True), rows.append)
        frames.append(table(rows))
    assert frames[0].to_csv() == frames[1].to_csv()
    assert frames[0]["bytes_down"].sum() > 0
