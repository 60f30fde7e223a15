"""Faulty devices: injected in the ClientApp from (seed, round, device, attempt), rejected
and counted by kind by the strategy, rounds with too few good replies retried or skipped;
a sinusoid fleet with 30% of devices crashing or hanging and 10% replying NaN still learns
about as well as a fault-free one, and would have been poisoned without the rejection."""

from __future__ import annotations

import logging
import math
from collections import Counter

import numpy as np
import pytest
import torch

from fedmeta.app import client_app
from fedmeta.app.faults import byzantine_devices, fault_of
from fedmeta.app.server_app import run_federation
from fedmeta.app.strategy import FedMeta
from fedmeta.config import BYZANTINE_MODES, FAULT_KINDS, ConfigError, FaultsConfig, from_dict
from fedmeta.results import FAULT_COLUMNS, table
from local_grid import LocalGrid
from threaded_grid import ThreadedGrid

SEED = 11
OBSERVED = {"crash": "crashed", "hang": "timed_out", "nan": "non_finite",
            "malformed": "malformed", "byzantine": "byzantine"}


@pytest.fixture(autouse=True)
def quiet_flower() -> None:
    logging.getLogger("flwr").setLevel(logging.ERROR)


def config(faults: dict, **fed: object):
    return from_dict({"train": {"seed": SEED}, "faults": faults, "federation": {
        "num_devices": 4, "num_held_out": 1, "rounds": 1, "fraction_train": 1.0,
        "meta_batch": 2, "eval_every": 1, "eval_episodes": 2, **fed}})


def test_fault_draws_are_seeded_exclusive_and_at_the_configured_rates() -> None:
    faults = FaultsConfig(crash=0.1, hang=0.05, nan=0.15, malformed=0.2, byzantine=0.1)
    draws = [fault_of(faults, SEED, r, d) for r in range(1, 201) for d in range(20)]
    assert draws == [fault_of(faults, SEED, r, d) for r in range(1, 201) for d in range(20)]
    counts = Counter(draws)
    for kind in FAULT_KINDS:
        assert counts[kind] / len(draws) == pytest.approx(getattr(faults, kind), abs=0.025)
    assert counts[None] / len(draws) == pytest.approx(0.4, abs=0.03)
    assert [fault_of(faults, SEED, 3, d, attempt=1) for d in range(20)] != \
        [fault_of(faults, SEED, 3, d) for d in range(20)]  # a retry draws afresh
    assert {fault_of(FaultsConfig(), SEED, r, 0) for r in range(50)} == {None}


@pytest.mark.parametrize("share,num_train,count", [(0.2, 16, 3), (0.2, 10, 2), (0.25, 10, 3),
                                                    (0.1, 4, 0), (0.5, 7, 4)])
def test_byzantine_devices_are_a_fixed_seeded_set_of_exactly_that_share(
        share: float, num_train: int, count: int) -> None:
    faults = FaultsConfig(byzantine_devices=share)
    bad = byzantine_devices(share, SEED, num_train)
    assert len(bad) == count and bad <= set(range(num_train))  # rounded half up
    for server_round in range(1, 30):  # every round, every attempt, nothing else
        for attempt in (0, 1):
            assert {d for d in range(num_train + 3) if fault_of(
                faults, SEED, server_round, d, attempt, num_train) == "byzantine"} == bad
    drawn = {byzantine_devices(share, seed, num_train) for seed in range(20)}
    assert all(len(d) == count for d in drawn) and (count == 0 or len(drawn) > 1)


def test_byzantine_devices_add_to_the_per_reply_faults_of_the_others() -> None:
    faults = FaultsConfig(byzantine_devices=0.25, crash=0.3)
    bad = byzantine_devices(0.25, SEED, 12)
    draws = [(d, fault_of(faults, SEED, r, d, 0, 12)) for r in range(1, 50) for d in range(12)]
    assert {kind for d, kind in draws if d in bad} == {"byzantine"}
    assert {kind for d, kind in draws if d not in bad} == {"crash", None}


@pytest.mark.parametrize("share", [1.0, -0.1, math.nan])
def test_byzantine_devices_must_be_a_share_below_one(share: float) -> None:
    with pytest.raises(ConfigError, match=r"a share of the training devices in \[0, 1\)") as caught:
        from_dict({"faults": {"byzantine_devices": share}})
    assert caught.value.field == "faults.byzantine_devices"


@pytest.mark.parametrize("mode", BYZANTINE_MODES)
def test_the_server_counts_the_sampled_byzantine_devices_every_round(mode: str) -> None:
    cfg = config({"byzantine_devices": 0.375, "byzantine_mode": mode}, rounds=4,
                 num_devices=9, fraction_train=0.5, min_train_devices=4)
    rows: list = []
    grid = RecordingGrid(client_app.app, 9)
    run_federation(grid, cfg, rows.append)
    bad = byzantine_devices(0.375, SEED, 8)
    assert len(bad) == 3
    planned = Counter({(r, a): 0 for r, a, _ in grid.trained})
    planned.update((r, a) for r, a, p in grid.trained if p in bad)
    frame = table(rows).query("source == 'train'").set_index(["round", "attempt"])
    column = "crashed" if mode == "omit" else "byzantine"  # omitted: an error, not an update
    assert frame[column].to_dict() == dict(planned)
    assert frame[column].sum() > 0 and (frame["status"] == "ok").all()
    if mode == "omit":  # the other sampled devices still reply
        assert (frame["devices"] + frame["crashed"] == 4).all()
        assert (frame["byzantine"] == 0).all()


@pytest.mark.parametrize("kind", [k for k in FAULT_KINDS if k != "hang"])
def test_each_fault_kind_is_counted_in_its_column(kind: str) -> None:
    rows: list = []
    run_federation(LocalGrid(client_app.app, 4), config({kind: 1.0}, short_round="skip"),
                   rows.append)
    train = table(rows).set_index("source").loc["train"]
    expected = {c: 3 if c == OBSERVED[kind] else 0 for c in FAULT_COLUMNS}
    assert {c: int(train[c]) for c in FAULT_COLUMNS} == expected
    accepted = kind == "byzantine"  # no check can tell a Byzantine update from an honest one
    assert (train["devices"], train["dropped"]) == ((3, 0) if accepted else (0, 3))
    assert train["status"] == ("ok" if accepted else "skipped")


def test_hanging_devices_time_out_and_the_round_goes_on_without_them() -> None:
    rows: list = []
    cfg = config({"hang": 0.3, "hang_extra_s": 0.2}, round_timeout=3.0, rounds=3,
                 num_devices=7, num_held_out=1)
    grid = ThreadedGrid(client_app.app, 7)
    run_federation(grid, cfg, rows.append)
    grid.join()
    train = table(rows).query("source == 'train'")
    hung = [sum(fault_of(cfg.faults, SEED, r, p) == "hang" for p in range(6)) for r in (1, 2, 3)]
    assert train["timed_out"].tolist() == hung and sum(hung) > 0
    assert (train["devices"] == 6 - train["timed_out"]).all()


class RecordingGrid(LocalGrid):
    """Notes (round, attempt, partition) of every training message as it is sent (the
    ConfigRecord is shared between rounds, so the sent messages cannot tell afterwards)."""

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self.trained = getattr(self, "trained", [])
        for m in messages:
            if m.metadata.message_type == "train":
                config = m.content["config"]
                self.trained.append((int(config["server-round"]), int(config["attempt"]),
                                     self.contexts[m.metadata.dst_node_id].node_config[
                                         "partition-id"]))
        return super().send_and_receive(messages, timeout=timeout)


def test_every_round_counts_the_planned_faults() -> None:
    faults = {"crash": 0.2, "nan": 0.1, "malformed": 0.15, "byzantine": 0.1}
    cfg = config(faults, rounds=6, num_devices=9, fraction_train=0.5, min_train_devices=4)
    rows: list = []
    grid = RecordingGrid(client_app.app, 9)
    run_federation(grid, cfg, rows.append)
    frame = table(rows).query("source == 'train'").set_index(["round", "attempt"])
    planned: dict = {}
    for server_round, attempt, partition in grid.trained:
        kind = fault_of(cfg.faults, SEED, server_round, partition, attempt)
        planned.setdefault((server_round, attempt), Counter())[OBSERVED.get(kind)] += 1
    assert sorted(planned) == sorted(frame.index)
    for key, counts in planned.items():
        assert {c: int(frame.loc[key, c]) for c in FAULT_COLUMNS} == {
            c: counts[c] for c in FAULT_COLUMNS}
    assert frame[list(FAULT_COLUMNS)].to_numpy().sum() > 0


def test_too_few_good_replies_retry_on_fresh_devices_then_skip(
        caplog: pytest.LogCaptureFixture) -> None:
    rows: list = []
    cfg = config({"crash": 1.0}, num_devices=9, fraction_train=0.5, min_train_devices=2,
                 max_retries=2)
    grid = LocalGrid(client_app.app, 9)
    with caplog.at_level(logging.WARNING, logger="flwr.fedmeta"):
        run_federation(grid, cfg, rows.append)
    train = table(rows).query("source == 'train'")
    assert train[["attempt", "status", "crashed"]].values.tolist() == [
        [0, "retried", 4], [1, "retried", 4], [2, "skipped", 4]]
    sampled = [sorted(m.metadata.dst_node_id for m in grid.sent
                      if m.metadata.message_type == "train"
                      and m.content["config"]["attempt"] == a) for a in range(3)]
    assert len({tuple(s) for s in sampled}) > 1  # each try samples afresh
    assert "0 good replies of 1 needed (federation.min_good_replies): skipped" in caplog.text


def test_a_short_round_changes_nothing_and_the_next_one_trains() -> None:
    cfg = config({"crash": 0.5}, num_devices=9, rounds=4, fraction_train=0.5,
                 min_train_devices=4, min_good_replies=3, short_round="skip")
    rows: list = []
    run_federation(LocalGrid(client_app.app, 9), cfg, rows.append)
    train = table(rows).query("source == 'train'")
    good = train["devices"] >= 3
    assert set(train.loc[good, "status"]) == {"ok"} and set(train.loc[~good, "status"]) == {
        "skipped"}
    assert good.any() and (~good).any(), train  # seed 11 gives both kinds of round


def _fleet(faults: dict) -> object:
    return from_dict({"train": {"seed": 3}, "faults": {**faults, "hang_extra_s": 0.2},
                      "federation": {"num_devices": 12, "num_held_out": 2, "rounds": 20,
                                     "fraction_train": 0.8, "eval_every": 20,
                                     "meta_batch": 5, "eval_episodes": 20,
                                     "round_timeout": 3.0}})  # generous: a loaded host


def _train(cfg) -> tuple[object, dict]:
    rows: list = []
    grid = ThreadedGrid(client_app.app, cfg.federation.num_devices)
    params = run_federation(grid, cfg, rows.append).params
    grid.join()
    return table(rows), params


MARGIN = 0.25  # the faulty fleet's final post-adaptation MSE is within 25% of the fault-free


def test_a_fleet_with_30_percent_crashing_or_hanging_and_10_percent_nan_still_learns(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clean, _ = _train(_fleet({}))
    faulty, params = _train(_fleet({"crash": 0.2, "hang": 0.1, "nan": 0.1}))
    final = {name: frame.query("source == 'eval'")["post_loss"].tolist()
             for name, frame in (("clean", clean), ("faulty", faulty))}
    train = faulty.query("source == 'train'")
    assert train["crashed"].sum() > 0 and train["timed_out"].sum() > 0
    assert train["non_finite"].sum() > 0
    assert all(torch.isfinite(v).all() for v in params.values())
    assert final["faulty"][0] == final["clean"][0]  # the same initial model, same episodes
    assert final["faulty"][-1] < 0.75 * final["faulty"][0]  # it learned
    assert abs(final["faulty"][-1] - final["clean"][-1]) <= MARGIN * final["clean"][-1], final

    # without the rejection the NaN updates reach the server optimizer and poison the model
    original = FedMeta._train_problem
    monkeypatch.setattr(FedMeta, "_train_problem", lambda self, content: (
        None if str(original(self, content)).endswith("is not finite")
        else original(self, content)))
    cfg = _fleet({"nan": 0.1})
    cfg.federation.rounds = 4
    poisoned, params = _train(cfg)
    assert poisoned.query("source == 'train'")["non_finite"].sum() == 0  # all accepted
    assert any(torch.isnan(v).any() for v in params.values())
    assert math.isnan(poisoned.query("source == 'eval'")["post_loss"].iloc[-1])
    assert np.isfinite(final["faulty"]).all()


def test_a_dropped_reply_is_warned_once_on_stderr() -> None:
    """Importing Opacus (the privacy accountant) once gave the root logger a handler of its
    own, so each warning of a malformed reply, propagated from Flower's logger, came twice."""
    import subprocess
    import sys
    code = ("import logging, fedmeta.app.simulation\n"
            "assert logging.getLogger().handlers == [], logging.getLogger().handlers\n"
            "logging.getLogger('flwr.fedmeta').warning('round 1: dropped the reply of X')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (done.stdout + done.stderr).count("dropped the reply of X") == 1
