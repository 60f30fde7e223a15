"""Robust aggregation (``federation.aggregation``): each rule against a direct numpy
computation, Byzantine updates outvoted by every robust rule but not by the mean, and every
rule usable with every federated algorithm."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message, MessageType, MetricRecord, RecordDict

from fedmeta.app import client_app
from fedmeta.app.records import to_params
from fedmeta.app.robust import aggregate_updates, update_norm
from fedmeta.app.server_app import run_federation
from fedmeta.config import AGGREGATIONS, from_dict
from fedmeta.meta import ALGORITHMS
from fedmeta.federated import FEDERATED_ALGORITHMS
from fedmeta.results import table
from local_grid import LocalGrid, set_task_identity

KEYS = {"weighted_by_key": "num-examples", "arrayrecord_key": "arrays",
        "configrecord_key": "config"}


@pytest.fixture(autouse=True)
def setup() -> None:
    set_task_identity()
    logging.getLogger("flwr").setLevel(logging.ERROR)


def fed(aggregation: str, **fields: object):
    return from_dict({"federation": {"aggregation": aggregation, "num_devices": 12,
                                     "num_held_out": 2, "fraction_train": 1.0,
                                     **fields}}).federation


def replies(updates: np.ndarray, episodes: list[int] | None = None) -> list[Message]:
    """One reply per row of ``updates`` (each a flat 6-vector: arrays ``w`` 2x2, ``b`` 2)."""
    out = []
    for i, u in enumerate(updates):
        sent = Message(RecordDict(), dst_node_id=100 + i, message_type=MessageType.TRAIN)
        arrays = ArrayRecord.from_torch_state_dict(
            {"w": torch.tensor(u[:4].reshape(2, 2)), "b": torch.tensor(u[4:])})
        metrics = MetricRecord({"num-examples": (episodes or [1] * len(updates))[i]})
        out.append(Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=sent))
    return out


def flat(record: ArrayRecord) -> np.ndarray:
    params = to_params(record)
    return np.concatenate([params["w"].numpy().ravel(), params["b"].numpy()])


RNG = np.random.default_rng(0)
HONEST = RNG.normal(1.0, 0.3, size=(8, 6)).astype(np.float32)


def test_each_rule_matches_its_definition() -> None:
    u, w = HONEST, [1, 2, 3, 4, 1, 2, 3, 4]
    mean = flat(aggregate_updates(fed("mean"), 1, replies(u, w), **KEYS)[0])
    np.testing.assert_allclose(mean, np.average(u, axis=0, weights=w), rtol=1e-6)
    median = flat(aggregate_updates(fed("median"), 1, replies(u), **KEYS)[0])
    np.testing.assert_allclose(median, np.median(u, axis=0), rtol=1e-6)
    trimmed = flat(aggregate_updates(fed("trimmed-mean", trim_fraction=0.25), 1, replies(u),
                                     **KEYS)[0])
    np.testing.assert_allclose(trimmed, np.sort(u, axis=0)[2:6].mean(axis=0), rtol=1e-6)
    bound = 0.5
    clipped = flat(aggregate_updates(fed("norm-bound", norm_bound=bound), 1, replies(u, w),
                                     **KEYS)[0])
    scale = np.minimum(1, bound / np.linalg.norm(u, axis=1))[:, None]
    np.testing.assert_allclose(clipped, np.average(u * scale, axis=0, weights=w), rtol=1e-5)
    auto = flat(aggregate_updates(fed("norm-bound"), 1, replies(u), **KEYS)[0])
    norms = np.linalg.norm(u, axis=1)
    scale = np.minimum(1, np.median(norms) / norms)[:, None]
    np.testing.assert_allclose(auto, (u * scale).mean(axis=0), rtol=1e-5)
    big = np.concatenate([u[:6], 4 * u[6:]])  # two updates 4x the size of the others
    kept = np.linalg.norm(big, axis=1) <= 3 * np.median(np.linalg.norm(big, axis=1))
    assert kept.sum() == 6
    filtered = flat(aggregate_updates(fed("norm-filter"), 1, replies(big, w), **KEYS)[0])
    np.testing.assert_allclose(filtered, np.average(big[kept], axis=0,
                                                    weights=np.array(w)[kept]),
                               rtol=1e-5)
    loose = flat(aggregate_updates(fed("norm-filter", filter_factor=6.0), 1, replies(big, w),
                                   **KEYS)[0])
    np.testing.assert_allclose(loose, np.average(big, axis=0, weights=w), rtol=1e-5)
    filtered_bounded = flat(aggregate_updates(fed("norm-filter-bound"), 1, replies(big, w),
                                              **KEYS)[0])
    norms = np.linalg.norm(big, axis=1)  # the median of all replies bounds the kept ones
    scale = np.minimum(1, np.median(norms) / norms)[:, None]
    np.testing.assert_allclose(filtered_bounded, np.average((big * scale)[kept], axis=0,
                                                            weights=np.array(w)[kept]),
                               rtol=1e-5)
    fixed = flat(aggregate_updates(fed("norm-filter-bound", norm_bound=bound), 1,
                                   replies(big, w), **KEYS)[0])
    scale = np.minimum(1, bound / norms)[:, None]
    np.testing.assert_allclose(fixed, np.average((big * scale)[kept], axis=0,
                                                 weights=np.array(w)[kept]), rtol=1e-5)


def test_direction_filter_leaves_out_small_updates_against_the_median() -> None:
    u, w = HONEST.copy(), [1, 2, 3, 4, 1, 2, 3, 4]
    u[7] = -0.5 * u[7]  # under the norm filter's threshold, but against the others
    agreement = u @ np.median(u, axis=0)
    kept = (agreement >= 0) & (np.linalg.norm(u, axis=1)
                               <= 3 * np.median(np.linalg.norm(u, axis=1)))
    assert list(kept) == [True] * 7 + [False]
    directed, _, left_out = aggregate_updates(fed("norm-direction-filter"), 1, replies(u, w),
                                              **KEYS)
    np.testing.assert_allclose(flat(directed), np.average(u[kept], axis=0,
                                                          weights=np.array(w)[kept]),
                               rtol=1e-5)
    assert len(left_out) == 1
    undirected = flat(aggregate_updates(fed("norm-filter"), 1, replies(u, w), **KEYS)[0])
    np.testing.assert_allclose(undirected, np.average(u, axis=0, weights=w), rtol=1e-5)


def test_multi_krum_keeps_the_updates_closest_to_their_neighbours() -> None:
    u = np.concatenate([HONEST[:6], 50 + HONEST[6:]])  # two far-away updates
    kept = flat(aggregate_updates(fed("multi-krum", krum_malicious=2), 1, replies(u),
                                  **KEYS)[0])
    np.testing.assert_allclose(kept, HONEST[:6].mean(axis=0), rtol=1e-5)  # n - f = 6 kept
    krum = flat(aggregate_updates(fed("multi-krum", krum_malicious=2, krum_select=1), 1,
                                  replies(u), **KEYS)[0])
    assert any(np.allclose(krum, h) for h in HONEST[:6])


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_rules_name_the_replies_they_leave_out(aggregation: str) -> None:
    u = np.concatenate([HONEST[:6], 50 * HONEST[6:]])  # two updates far away and 50x as big
    sent = replies(u)
    _, _, left_out = aggregate_updates(fed(aggregation, krum_malicious=2), 1, sent, **KEYS)
    selecting = aggregation in ("norm-filter", "norm-filter-bound", "norm-direction-filter",
                                "multi-krum")
    assert [sent.index(m) for m in left_out] == ([6, 7] if selecting else [])


def test_update_norm_is_the_norm_of_all_arrays_together() -> None:
    record = replies(HONEST[:1])[0].content["arrays"]
    assert update_norm(record) == pytest.approx(float(np.linalg.norm(HONEST[0])), rel=1e-6)


@pytest.mark.parametrize("aggregation", [a for a in AGGREGATIONS if a != "mean"])
def test_robust_rules_outvote_sign_flipped_updates_the_mean_follows(aggregation: str) -> None:
    u = HONEST.copy()
    u[:2] *= -10  # 2 of 8 devices reply -10 x their update
    honest = HONEST[2:].mean(axis=0)
    cosine = lambda v: float(v @ honest / np.linalg.norm(v) / np.linalg.norm(honest))
    mean = flat(aggregate_updates(fed("mean"), 1, replies(u), **KEYS)[0])
    # trimmed mean must cut at least the attackers' share (2/8) off each side
    robust = flat(aggregate_updates(fed(aggregation, krum_malicious=2, trim_fraction=0.25), 1,
                                    replies(u), **KEYS)[0])
    assert cosine(mean) < 0  # the mean now points uphill
    assert cosine(robust) > 0.9, aggregation


RULE_OF = dict(zip(FEDERATED_ALGORITHMS, AGGREGATIONS * 2))  # each algorithm, one rule each


@pytest.mark.parametrize("algorithm", [  # on sinusoids: the few-shot-only learners have
    a for a, d in FEDERATED_ALGORITHMS.items()  # their own (tests/test_episodic_federated.py)
    if not ALGORITHMS[d.learner].few_shot_only])
def test_every_rule_works_with_every_federated_algorithm(algorithm: str) -> None:
    cfg = from_dict({"train": {"seed": 2}, "faults": {"byzantine": 0.3},
                     "federation": {"algorithm": algorithm, "aggregation": RULE_OF[algorithm],
                                    "num_devices": 6, "num_held_out": 1, "rounds": 2,
                                    "fraction_train": 1.0, "meta_batch": 2,
                                    "local_steps": 1, "eval_every": 2, "eval_episodes": 2}})
    rows: list = []
    params = run_federation(LocalGrid(client_app.app, 6), cfg, rows.append).params
    frame = table(rows)
    assert (frame.query("source == 'train'")["status"] == "ok").all()
    assert all(torch.isfinite(v).all() for v in params.values())
    assert frame["post_loss"].notna().all()


def test_results_count_the_byzantine_replies_a_filter_leaves_out() -> None:
    cfg = from_dict({"train": {"seed": 3},
                     "faults": {"byzantine": 0.3, "byzantine_factor": 1000.0},
                     "federation": {"aggregation": "norm-filter", "num_devices": 8,
                                    "num_held_out": 1, "rounds": 4, "fraction_train": 1.0,
                                    "meta_batch": 2, "local_steps": 1, "eval_every": 4,
                                    "eval_episodes": 2}})
    rows: list = []
    run_federation(LocalGrid(client_app.app, 8), cfg, rows.append)
    train = table(rows).query("source == 'train'")
    assert train["byzantine"].sum() > 0
    # 1000x sign-flipped updates stand out: every one is left out, and no honest one
    assert (train["byzantine_left_out"] == train["byzantine"]).all()
    assert (train["left_out"] == train["byzantine"]).all()
