"""FedScale's device traces (client_device_capacity, client_behave_trace) read into fedmeta
fleets: small pickles written here in FedScale's format, devices mapped onto trace clients
in turn, compute and bandwidth replacing the tiers', availability read off the simulated
clock, and bad files named with the client at fault."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from fedmeta.config import from_dict
from fedmeta.errors import ConfigError
from fedmeta.fleet import PROFILES, Fleet, FleetRun, parse_tiers
from fedmeta.fleet.traces import load_behaviour, load_capacity
from fedmeta.meta import build_learner
from fedmeta.models import MLP
from fedmeta.tasks.factory import build_tasks

# FedScale's formats (benchmark/dataset/data/device_info/README.md): client id -> entry
CAPACITY = {1: {"computation": 20.0, "communication": 5000.0},
            2: {"computation": 80.0, "communication": 800.0},
            3: {"computation": 162.0, "communication": 5648.109619499134}}
BEHAVIOUR = {7: {"duration": 100, "active": [0, 50], "inactive": [10, 60], "finish_time": 100,
                 "model": "phone-a"},
             9: {"duration": 100, "active": [20], "inactive": [80], "finish_time": 200,
                 "model": "phone-b"}}


def write(tmp_path: Path, name: str, data: object) -> str:
    path = tmp_path / name
    path.write_bytes(pickle.dumps(data))
    load_capacity.cache_clear()
    load_behaviour.cache_clear()
    return str(path)


def test_capacity_rates_replace_the_tiers_and_devices_take_clients_in_turn(tmp_path) -> None:
    capacity = load_capacity(write(tmp_path, "cap", CAPACITY))
    fleet = Fleet.sample(parse_tiers("phone:1:0.5", PROFILES, 3), 7, seed=0)
    traced = fleet.with_traces(capacity, None, forward_flops=3000.0)
    ms = np.array([20.0, 80.0, 162.0, 20.0, 80.0, 162.0, 20.0])  # device d: client d mod 3
    kbps = np.array([5000.0, 800.0, 5648.109619499134] * 3)[:7]
    np.testing.assert_allclose(traced.flops, 3000.0 / (ms / 1000))  # a forward: ms per sample
    np.testing.assert_allclose(traced.uplink_mbps, kbps / 1000)
    np.testing.assert_allclose(traced.downlink_mbps, kbps / 1000)
    assert traced.profile(1).memory_gb == PROFILES["phone"].memory_gb  # from the tier


def test_behaviour_windows_on_the_simulated_clock(tmp_path) -> None:
    behaviour = load_behaviour(write(tmp_path, "beh", BEHAVIOUR))
    fleet = Fleet.sample(parse_tiers("phone:1", PROFILES, 3), 3, seed=0).with_traces(
        None, behaviour, 1.0)
    # device 0 and 2: client 7, on in [0, 10] and [50, 60] every 100 s; device 1: client 9,
    # on in [20, 80] every 200 s
    expected = {0: [1, 0, 1], 5: [1, 0, 1], 10: [1, 0, 1], 11: [0, 0, 0], 20: [0, 1, 0],
                55: [1, 1, 1], 80: [0, 1, 0], 81: [0, 0, 0], 105: [1, 0, 1], 250: [1, 1, 1],
                365: [0, 0, 0]}
    for t, on in expected.items():
        assert fleet.available(1, t).tolist() == [bool(v) for v in on], t
    with pytest.raises(ValueError, match="simulated clock"):
        fleet.available(1)


def test_a_run_reads_availability_at_each_rounds_start(tmp_path) -> None:
    """FleetRun.select asks the trace at the clock's time, which the rounds advance."""
    behaviour = {c: {"active": [0], "inactive": [t], "finish_time": 10 ** 6}
                 for c, t in enumerate([1e9, 1e9, 1e9, 1e-3])}  # device 3 off after 1 ms
    cap = write(tmp_path, "cap", {0: {"computation": 1.0, "communication": 1e5}})
    cfg = from_dict({"federation": {"num_devices": 5, "num_held_out": 1, "rounds": 2,
                                    "min_train_devices": 4, "fraction_train": 1.0},
                     "fleet": {"tiers": "jetson-nano:1", "policy": "wait",
                               "trace_capacity": cap,
                               "trace_behaviour": write(tmp_path, "beh", behaviour)}})
    tasks = build_tasks(cfg.task, seed=0, fleet=(5, 1))
    learner = build_learner("maml", MLP(), inner_lr=0.01)
    run = FleetRun.from_config(cfg, learner, tasks.train.sample(np.random.default_rng(0)))
    assert run.select(1, [0, 1, 2, 3], 4) == [0, 1, 2, 3]  # at t = 0 all are on
    assert run.elapsed_s > 1e-3
    assert run.select(2, [0, 1, 2, 3], 4) == [0, 1, 2]


@pytest.mark.parametrize(("data", "message"), [
    ({1: {"computation": 0.0, "communication": 1.0}}, "client 1.*'computation'"),
    ({1: {"computation": 1.0}}, "client 1.*'communication'"),
    ({1: {"computation": float("nan"), "communication": 1.0}}, "'computation'"),
    ({}, "non-empty dict"),
    ([1, 2], "non-empty dict"),
])
def test_bad_capacity_traces_are_named(tmp_path, data, message) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_capacity(write(tmp_path, "cap", data))
    assert caught.value.field == "fleet.trace_capacity"


@pytest.mark.parametrize(("entry", "message"), [
    ({"active": [5], "inactive": [1], "finish_time": 10}, "active\\[i\\] <= inactive"),
    ({"active": [1, 2], "inactive": [3], "finish_time": 10}, "as many"),
    ({"active": [1], "inactive": [3], "finish_time": 0}, "finish_time"),
    ({"active": [1], "inactive": [3]}, "'finish_time': s"),
])
def test_bad_behaviour_traces_are_named(tmp_path, entry, message) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_behaviour(write(tmp_path, "beh", {4: entry}))
    assert caught.value.field == "fleet.trace_behaviour" and "client 4" in str(caught.value)


class Payload:
    """Anything but plain data: a pickle of it could run code when loaded."""


def test_a_trace_holding_objects_is_refused_not_run(tmp_path) -> None:
    with pytest.raises(ConfigError, match="Payload"):
        load_capacity(write(tmp_path, "cap", {1: Payload()}))


def test_numpy_scalars_are_plain_data(tmp_path) -> None:
    data = {1: {"computation": np.float32(12.5), "communication": np.float64(300.0)}}
    assert load_capacity(write(tmp_path, "cap", data)).computation_ms.tolist() == [12.5]


def test_the_config_checks_the_files_and_needs_tiers(tmp_path) -> None:
    with pytest.raises(ConfigError) as caught:
        from_dict({"fleet": {"trace_capacity": write(tmp_path, "cap", CAPACITY)}})
    assert caught.value.field == "fleet.tiers"
    with pytest.raises(ConfigError) as caught:
        from_dict({"fleet": {"tiers": "phone:1", "policy": "wait",
                             "trace_behaviour": str(tmp_path / "absent")}})
    assert caught.value.field == "fleet.trace_behaviour"
