"""fedmeta.fleet: profiles and their validation, tiers sampled from the seed, availability
(probabilities and traces), local plans under memory and deadline, compression, and the
[fleet] config section."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmeta.config import Config, from_dict
from fedmeta.errors import ConfigError
from fedmeta.fleet import (PROFILES, DeviceProfile, Fleet, ModelCost, Work, encoded_bytes,
                           load_profiles, local_plan, parse_tiers, roundtrip)
from fedmeta.fleet.fleet import tier_sizes
from fedmeta.models import MLP

TIERS = "jetson-orin-nano:0.2:0.1, raspberry-pi-4:0.5:0.3, phone:0.3:0.3"


# -- profiles ---------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["flops", "memory_gb", "uplink_mbps", "downlink_mbps"])
@pytest.mark.parametrize("value", [0, -1.0, math.inf, math.nan])
def test_a_profile_without_positive_speed_memory_or_bandwidth_is_a_clear_error(
        field: str, value: float) -> None:
    figures = dict(flops=1e9, memory_gb=1.0, uplink_mbps=1.0, downlink_mbps=1.0)
    with pytest.raises(ConfigError, match=f"profile 'x': {field}"):
        DeviceProfile("x", **{**figures, field: value})


def test_builtin_profiles_are_the_targets_of_edge_meta_learning() -> None:
    assert {"jetson-nano", "jetson-orin-nano", "coral-dev-board", "raspberry-pi-4",
            "phone"} <= set(PROFILES)
    assert PROFILES["jetson-orin-nano"].flops > PROFILES["jetson-nano"].flops \
        > PROFILES["raspberry-pi-4"].flops > PROFILES["coral-dev-board"].flops


def test_profiles_file_adds_profiles_and_rejects_bad_ones(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[board]\nflops = 2e10\nmemory_gb = 1\nuplink_mbps = 5\n"
                    "downlink_mbps = 20\navailability = 0.5\n")
    assert load_profiles(good)["board"] == DeviceProfile("board", 2e10, 1, 5, 20, 0.5)
    bad = tmp_path / "bad.toml"
    bad.write_text("[board]\nflops = 0\nmemory_gb = 1\nuplink_mbps = 5\ndownlink_mbps = 20\n")
    with pytest.raises(ConfigError, match="flops=0"):
        load_profiles(bad)
    bad.write_text("[board]\nflops = 1e9\n")
    with pytest.raises(ConfigError, match="also"):
        load_profiles(bad)


# -- tiers and fleets -------------------------------------------------------------------------
@pytest.mark.parametrize("spec, match", [
    ("phone:0.5, raspberry-pi-4:0.3", "sum to 1"),
    ("phone:1.2", "share"),
    ("nokia-3310:1", "a profile among"),
    ("phone:1:-0.1", "spread"),
    ("phone:1:0:1.5", "availability"),
    ("phone:0.5, phone:0.5", "one tier only"),
    ("phone", "profile:share"),
])
def test_bad_tiers_are_clear_errors(spec: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_tiers(spec, PROFILES, rounds=3)


def test_tier_sizes_follow_the_shares_and_sum_to_the_fleet() -> None:
    assert tier_sizes([0.2, 0.5, 0.3], 10).tolist() == [2, 5, 3]
    assert tier_sizes([1 / 3] * 3, 10).tolist() == [4, 3, 3]
    assert tier_sizes([0.2, 0.5, 0.3], 9_999).sum() == 9_999


def test_a_fleet_is_reproducible_from_the_seed_and_spreads_around_its_profile() -> None:
    tiers = parse_tiers(TIERS, PROFILES, rounds=3)
    a, b, c = (Fleet.sample(tiers, 1_000, seed) for seed in (0, 0, 1))
    assert np.array_equal(a.tier, b.tier) and np.array_equal(a.flops, b.flops)
    assert not np.array_equal(a.tier, c.tier)
    assert np.bincount(a.tier).tolist() == [200, 500, 300]
    pis = a.flops[a.tier == 1]
    assert np.median(pis) == pytest.approx(PROFILES["raspberry-pi-4"].flops, rel=0.1)
    assert pis.std() > 0
    assert a.profile(int(np.flatnonzero(a.tier == 1)[0])).name == "raspberry-pi-4"


def test_availability_is_seeded_per_round_and_follows_the_probability() -> None:
    fleet = Fleet.sample(parse_tiers("phone:1:0:0.3", PROFILES, rounds=3), 10_000, seed=0)
    on = fleet.available(1)
    assert np.array_equal(on, fleet.available(1)) and not np.array_equal(on, fleet.available(2))
    assert on.mean() == pytest.approx(0.3, abs=0.02)


def test_trace_files_set_availability_and_bad_traces_are_clear_errors(tmp_path: Path) -> None:
    trace = tmp_path / "trace.txt"
    trace.write_text("# device patterns\n101\n0 1 1\n")
    fleet = Fleet.sample(parse_tiers(f"jetson-nano:1:0:{trace}", PROFILES, 3), 4, seed=0)
    assert [fleet.available(r).tolist() for r in (1, 2, 3)] == [
        [True, False, True, False], [False, True, False, True], [True, True, True, True]]
    for text, match in [("1011\n", "3 values"), ("1x1\n", "0 or 1"), ("# nothing\n", "least")]:
        trace.write_text(text)
        with pytest.raises(ConfigError, match=match):
            parse_tiers(f"jetson-nano:1:0:{trace}", PROFILES, 3)
    with pytest.raises(ConfigError, match="readable"):
        parse_tiers(f"jetson-nano:1:0:{tmp_path / 'missing.txt'}", PROFILES, 3)


# -- the local plan ---------------------------------------------------------------------------
COST = ModelCost(params=1_000_000, forward=1e9, first_layer=1e7, activations=100_000)
WORK = Work("maml", inner_steps=2, local_steps=2, meta_batch=8, support=5, query=75,
            score_steps=2)


def device(flops: float = 1e11, memory_gb: float = 8.0) -> DeviceProfile:
    return DeviceProfile("d", flops, memory_gb, 10.0, 10.0)


def test_full_work_when_it_fits_the_deadline() -> None:
    plan = local_plan(COST, device(), WORK, comm_s=1.0, deadline_s=1e6, policy="partial",
                      fallback="fomaml")
    assert (plan.learner, plan.inner_steps, plan.local_steps, plan.meta_batch) == \
        ("maml", 2, 2, 8)
    assert plan.feasible and not plan.partial and not plan.fallback
    assert plan.seconds == pytest.approx(plan.flops / 1e11 + 1.0)


def test_partial_work_shrinks_steps_then_episodes_then_inner_steps_to_fit() -> None:
    full = local_plan(COST, device(), WORK, 1.0, 1e6, "partial", "fomaml")
    for deadline, expected in [(1.0 + 0.6 * full.compute_s, (2, 1, 8)),
                               (1.0 + 0.2 * full.compute_s, (2, 1, 3))]:
        plan = local_plan(COST, device(), WORK, 1.0, deadline, "partial", "fomaml")
        assert (plan.inner_steps, plan.local_steps, plan.meta_batch) == expected
        assert plan.partial and plan.seconds <= deadline
    one_episode = full.compute_s / 16  # one episode of two inner steps; of one: 0.88 of it
    plan = local_plan(COST, device(), WORK, 1.0, 1.0 + 0.95 * one_episode, "partial", "none")
    assert (plan.inner_steps, plan.episodes, plan.learner) == (1, 1, "maml")
    too_short = local_plan(COST, device(), WORK, 1.0, 1.0 + 0.8 * one_episode, "partial", "none")
    assert not too_short.feasible


def test_a_device_that_cannot_make_the_deadline_sits_out_or_is_late() -> None:
    hopeless = local_plan(COST, device(flops=1e6), WORK, 1.0, 2.0, "partial", "none")
    assert not hopeless.feasible
    for policy in ("drop", "wait"):  # full work; the clock decides what a late reply means
        plan = local_plan(COST, device(flops=1e6), WORK, 1.0, 2.0, policy, "none")
        assert plan.feasible and not plan.partial and plan.seconds > 2.0


@pytest.mark.parametrize("fallback", ["fomaml", "anil"])
def test_second_order_maml_falls_back_where_it_does_not_fit_memory(fallback: str) -> None:
    from fedmeta.fleet.cost import memory_bytes
    second = memory_bytes(COST, "maml", 5, 75, 2)
    first = memory_bytes(COST, fallback, 5, 75, 2)
    assert first < second
    between = (first + second) / 2 / 1e9
    plan = local_plan(COST, device(memory_gb=between), WORK, 1.0, 1e6, "wait", fallback)
    assert plan.learner == fallback and plan.fallback and plan.feasible
    nothing = local_plan(COST, device(memory_gb=between), WORK, 1.0, 1e6, "wait", "none")
    assert not nothing.feasible


# -- compression ------------------------------------------------------------------------------
def test_compression_bytes_and_reconstruction_error() -> None:
    torch.manual_seed(0)
    update = {"w": torch.randn(100, 10), "b": torch.randn(10)}
    sizes = [1000, 10]
    assert encoded_bytes(sizes, "none") == 4040
    assert encoded_bytes(sizes, "float16") == 2020
    assert encoded_bytes(sizes, "int8") == 1018
    assert encoded_bytes(sizes, "topk", 0.01) == 8 * (10 + 1)
    assert roundtrip(update, "none") is update
    for method, tolerance in [("float16", 1e-2), ("int8", 0.03)]:
        decoded = roundtrip(update, method)
        for k in update:
            assert (decoded[k] - update[k]).abs().max() <= tolerance * update[k].abs().max()
    sparse = roundtrip(update, "topk", 0.01)["w"]
    assert int((sparse != 0).sum()) == 10
    assert sparse.abs().max() == update["w"].abs().max()


# -- config -----------------------------------------------------------------------------------
def test_the_fleet_section_is_off_by_default() -> None:
    assert Config().fleet.tiers == ""
    assert "fleet.tiers" in Config().to_flat()


@pytest.mark.parametrize("fleet, match", [
    ({"tiers": TIERS, "policy": "hurry", "deadline_s": 1}, "fleet.policy"),
    ({"tiers": TIERS}, "fleet.deadline_s"),
    ({"tiers": TIERS, "deadline_s": -1}, "fleet.deadline_s"),
    ({"tiers": TIERS, "deadline_s": 1, "compression": "zip"}, "fleet.compression"),
    ({"tiers": TIERS, "deadline_s": 1, "topk_fraction": 0}, "fleet.topk_fraction"),
    ({"tiers": TIERS, "deadline_s": 1, "fallback": "reptile"}, "fleet.fallback"),
    ({"compression": "int8"}, "fleet.tiers"),
    ({"tiers": "phone:0.5", "deadline_s": 1}, "sum to 1"),
    ({"tiers": TIERS, "deadline_s": 1, "profiles_file": "/nonexistent.toml"},
     "fleet.profiles_file"),
])
def test_bad_fleet_config_is_a_clear_error_before_any_work(fleet: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        from_dict({"fleet": fleet})


def test_wait_needs_no_deadline() -> None:
    assert from_dict({"fleet": {"tiers": TIERS, "policy": "wait"}}).fleet.deadline_s == 0


def test_model_cost_counts_the_mlp_by_hand() -> None:
    cost = ModelCost.of(MLP(), (1,))
    assert cost.params == 1 * 40 + 40 + 40 * 40 + 40 + 40 + 1
    assert cost.forward == 2 * (1 * 40 + 40 * 40 + 40 * 1)
    assert cost.first_layer == 2 * 40
