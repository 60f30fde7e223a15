"""Replies folded as they arrive (fedmeta.app.fold): the server's memory for the mean does
not grow with the round's size, in any arrival order, and the numbers do not depend on the
order the replies arrive in. The rules that need every reply (median) keep them all."""

from __future__ import annotations

import gc
import random
import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from flwr.app import Message, MessageType, MetricRecord, RecordDict
from local_grid import set_task_identity

from fedmeta.app.fold import Turns, WeightedMean
from fedmeta.app.privacy_wrap import PrivateFedMeta
from fedmeta.app.records import to_record
from fedmeta.app.strategy import FedMeta
from fedmeta.config import from_dict
from fedmeta.meta import MetaTrainer, build_learner
from fedmeta.models import MLP

WIDTH = 256  # MLP(hidden=(WIDTH, WIDTH)): ~67k parameters, 0.26 MB per reply


@pytest.fixture(autouse=True)
def task_identity() -> None:
    set_task_identity()


def strategy(n: int, aggregation: str = "mean", width: int = WIDTH,
             privacy: dict | None = None) -> FedMeta:
    """The server of a round of ``n`` devices; with ``privacy``, ``PrivateFedMeta``."""
    cfg = from_dict({"federation": {"num_devices": n + 1, "num_held_out": 1,
                                    "min_train_devices": n, "fraction_train": 1.0,
                                    "aggregation": aggregation, "server_optimizer": "sgd",
                                    "server_lr": 1.0}, "privacy": privacy or {}})
    torch.manual_seed(0)
    learner = build_learner("maml", MLP(hidden=(width, width)), inner_lr=0.1)
    trainer = MetaTrainer(learner, 1.0, "sgd")
    s = PrivateFedMeta(cfg, trainer) if privacy else \
        FedMeta(cfg.federation, trainer, seed=1)
    s.partitions = {1000 + p: p for p in range(n + 1)}
    s._asked["train", 1] = [1000 + p for p in range(n)]  # as configure_train records
    return s


def update(s: FedMeta, partition: int) -> Message:
    """Device ``partition``'s reply: a seeded random update, episodes 1 + partition % 7."""
    gen = torch.Generator().manual_seed(partition)
    delta = {k: torch.randn(v.shape, generator=gen) for k, v in s.trainer.params.items()}
    metrics = MetricRecord({"num-examples": 1 + partition % 7, "pre_loss": 1.0 + partition,
                            "pre_acc": 0.5, "post_loss": 0.5, "post_acc": 0.75})
    sent = Message(RecordDict(), dst_node_id=1000 + partition, message_type=MessageType.TRAIN)
    return Message(RecordDict({"arrays": to_record(delta), "metrics": metrics}), reply_to=sent)


def arriving(s: FedMeta, order: list[int]) -> Iterator[Message]:
    """Replies made only when the server asks for the next one, as a Grid delivers them."""
    for partition in order:
        yield update(s, partition)


def peak_bytes(s: FedMeta, order: list[int]) -> int:
    """Peak of the memory Python and NumPy allocate while the round is aggregated, with the
    cyclic garbage collector off: the bound must not hang on when it happens to run (a
    message's records refer to each other in cycles)."""
    gc.collect()
    gc.disable()
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        s.aggregate_train(1, arriving(s, order))
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
        gc.enable()


def reply_bytes(s: FedMeta) -> int:
    return sum(v.numel() * 4 for v in s.trainer.params.values())


@pytest.mark.parametrize("arrival", ["in order", "reversed"])
def test_the_mean_holds_memory_independent_of_the_round_size(arrival: str) -> None:
    """Peak memory for 8 and for 64 devices a round differs by less than 4 replies' worth,
    even when replies arrive in reverse (the first device last: all but one wait, and beyond
    ``held_in_memory`` they wait on disk)."""
    peaks = {}
    for n in (8, 64):
        s = strategy(n)
        s.held_in_memory = 4
        order = list(range(n)) if arrival == "in order" else list(range(n))[::-1]
        peaks[n] = peak_bytes(s, order)
    one = reply_bytes(strategy(1))
    assert peaks[64] - peaks[8] < 4 * one, (peaks, one)
    assert peaks[64] < (4 + 12) * one, (peaks, one)  # the waiting 4, sums, a step: O(model)


def test_the_clipped_private_mean_holds_memory_independent_of_the_round_size() -> None:
    """The server clips each update (replacing the reply's arrays) before the mean: the
    replaced arrays are freed at once too."""
    privacy = {"clipping": "fixed", "clip_norm": 0.1, "noise": "central",
               "noise_multiplier": 0.5, "sampling": "fixed"}
    peaks = {}
    for n in (8, 64):
        s = strategy(n, privacy=privacy)
        s.held_in_memory = 4
        peaks[n] = peak_bytes(s, list(range(n)))
    one = reply_bytes(strategy(1))
    assert peaks[64] - peaks[8] < 4 * one, (peaks, one)


def test_median_keeps_every_reply() -> None:
    """The coordinate-wise median needs all updates at once: its memory grows with the
    round (what the docs say), which this measurement can see."""
    peaks = {n: peak_bytes(strategy(n, "median"), list(range(n))) for n in (8, 64)}
    assert peaks[64] - peaks[8] > 40 * reply_bytes(strategy(1)), peaks


def test_numbers_do_not_depend_on_the_arrival_order() -> None:
    """Any arrival order, replies waiting in memory or spilled to disk: the same bytes."""
    n, results = 12, []
    orders = [list(range(n)), list(range(n))[::-1]] + [
        random.Random(seed).sample(range(n), n) for seed in range(3)]
    for order, held in zip(orders, (16, 0, 2, 5, 16)):
        s = strategy(n, width=8)
        s.held_in_memory = held
        arrays, metrics = s.aggregate_train(1, arriving(s, order))
        results.append(({k: a.numpy().tobytes() for k, a in arrays.items()}, dict(metrics)))
    assert all(r == results[0] for r in results[1:])


def test_the_weighted_mean_matches_a_reference_within_float32_rounding() -> None:
    """sum_i w_i x_i / sum_i w_i, computed here in float64 from the raw updates."""
    s = strategy(5, width=8)
    replies = [update(s, p) for p in range(5)]
    fold = WeightedMean("arrays", "num-examples")
    for reply in replies:
        fold.add(reply)
    arrays, metrics, left_out = fold.result()
    weights = np.array([1 + p % 7 for p in range(5)], np.float64)
    for key in arrays:
        stacked = np.stack([r.content["arrays"][key].numpy().astype(np.float64)
                            for r in replies])
        expected = np.tensordot(weights, stacked, axes=1) / weights.sum()
        np.testing.assert_allclose(arrays[key].numpy(), expected, rtol=1e-6, atol=1e-7)
        assert arrays[key].numpy().dtype == np.float32
    assert metrics["pre_loss"] == pytest.approx(np.average(1.0 + np.arange(5),
                                                           weights=weights))
    assert left_out == []


def test_turns_release_each_reply_once_every_lower_device_has_answered() -> None:
    turns = Turns([0, 1, 2, 3], "arrays")
    s = strategy(4, width=8)
    r = {p: update(s, p) for p in range(4)}
    assert list(turns.arrived_from(2, r[2])) == []
    assert list(turns.arrived_from(0, r[0])) == [r[0]]
    assert list(turns.arrived_from(1, None)) == [r[2]]  # device 1 dropped: 2's turn
    assert list(turns.arrived_from(3, r[3])) == [r[3]]
    assert list(turns.rest()) == []


def test_turns_spill_what_waits_beyond_the_limit_and_read_it_back() -> None:
    s = strategy(6, width=8)
    r = {p: update(s, p) for p in range(6)}
    raw = {p: {k: a.numpy().copy() for k, a in r[p].content["arrays"].items()} for p in r}
    turns = Turns(range(6), "arrays", held_in_memory=2)
    for p in (5, 4, 3, 2, 1):
        assert list(turns.arrived_from(p, r[p])) == []
    assert turns.in_memory == 2 and len(r[5].content["arrays"]) == 0  # on disk
    assert [m.metadata.src_node_id - 1000 for m in turns.arrived_from(0, r[0])] == \
        list(range(6))
    for p in r:
        for k, a in r[p].content["arrays"].items():
            np.testing.assert_array_equal(a.numpy(), raw[p][k])


def test_metric_means_are_flowers_to_the_bit() -> None:
    """The metrics kept as plain numbers average exactly as Flower's aggregate_metricrecords."""
    from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

    from fedmeta.app.fold import MetricMean

    rng = np.random.default_rng(3)
    records = [MetricRecord({"num-examples": int(rng.integers(1, 50)),
                             "loss": float(rng.normal()), "acc": float(rng.random()),
                             "curve": [float(v) for v in rng.normal(size=3)]})
               for _ in range(17)]
    mean = MetricMean("num-examples")
    for record in records:
        mean.add(record)
    flower = aggregate_metricrecords([RecordDict({"m": r}) for r in records], "num-examples")
    assert dict(mean.result()) == dict(flower)
