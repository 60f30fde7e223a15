"""Client-level DP on meta-updates, in one process (real ClientApp, LocalGrid, no Ray):
noise 0 without clipping is the plain run bit for bit; every contribution is clipped per
device; reported epsilon is Opacus' for the same steps, rate and noise; a target epsilon
stops the run; bad privacy input fails naming the field."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant

from fedmeta.app import client_app
from fedmeta.app.privacy_wrap import PrivateFedMeta, make_strategy, privacy_summary
from fedmeta.app.server_app import run_federation
from fedmeta.config import from_dict, load
from fedmeta.errors import ConfigError
from fedmeta.meta import MetaTrainer, build_learner
from fedmeta.models import MLP
from fedmeta.privacy.clipping import AdaptiveClip, clip, l2_norm, split_noise
from fedmeta.privacy.mechanism import add_noise, device_release, generator
from fedmeta.results import table
from local_grid import LocalGrid

FLEET = {"num_devices": 6, "num_held_out": 2, "fraction_train": 0.5,
         "min_train_devices": 2, "eval_every": 100, "meta_batch": 2, "eval_episodes": 2}



def config(rounds: int = 4, **privacy: object):
    """A small sinusoid fleet: 4 training devices, 2 per round, cheap evaluation."""
    return from_dict({"train": {"seed": 3}, "meta": {"eval_steps": 1},
                      "federation": {**FLEET, "rounds": rounds}, "privacy": privacy})


def run(cfg) -> tuple[dict[str, torch.Tensor], list, LocalGrid]:
    rows: list = []
    grid = LocalGrid(client_app.app, cfg.federation.num_devices)
    params = run_federation(grid, cfg, rows.append).params
    return params, rows, grid


def private_run(cfg) -> tuple[PrivateFedMeta, list]:
    """Like ``run_federation`` but keeping the strategy, to read its per-device norms."""
    from fedmeta.app import server_app
    kept: list = []
    original = server_app.make_strategy

    def keep(*args):
        kept.append(original(*args))
        return kept[0]

    server_app.make_strategy = keep
    try:
        _, rows, _ = run(cfg)
    finally:
        server_app.make_strategy = original
    return kept[0], rows


def test_noise_zero_without_clipping_is_the_plain_run_exactly() -> None:
    plain, plain_rows, _ = run(config())
    private, private_rows, _ = run(config(noise="central", noise_multiplier=0.0))
    for k, v in plain.items():
        assert torch.equal(v, private[k])
    frame = table(private_rows)
    assert table(plain_rows).equals(frame.drop(columns=["epsilon", "clip_norm"]))
    assert frame.loc[frame["source"] == "train", "epsilon"].eq(math.inf).all()


@pytest.mark.parametrize("clip_on", ["server", "device"])
def test_every_device_contribution_is_clipped_to_the_norm(clip_on: str) -> None:
    clip_norm = 0.05  # far below these updates' norms, so every one is scaled
    strategy, _ = private_run(config(clipping="fixed", clip_on=clip_on, clip_norm=clip_norm))
    norms = [n for round_norms in strategy.norms.values() for n in round_norms]
    assert len(norms) == 4 * 2
    assert max(norms) <= clip_norm * (1 + 1e-5)
    assert min(norms) >= clip_norm * (1 - 1e-5)  # they were larger: clipped, not zeroed


def test_clip_scales_only_updates_above_the_norm() -> None:
    update = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([[4.0]])}
    assert l2_norm(update) == pytest.approx(5.0)
    clipped, was = clip(update, 1.0)
    assert was and l2_norm(clipped) == pytest.approx(1.0)
    torch.testing.assert_close(clipped["a"], torch.tensor([0.6, 0.0]))
    same, was = clip(update, 10.0)
    assert not was and same is update


def test_local_noise_is_seeded_and_scaled_to_the_clip() -> None:
    p = config(clipping="fixed", clip_on="device", clip_norm=2.0, noise="local",
               noise_multiplier=1.5).privacy
    delta = {"w": torch.zeros(200_000)}
    first = device_release(delta, p, 1, 2, 3)
    assert torch.equal(first["w"], device_release(delta, p, 1, 2, 3)["w"])
    assert not torch.equal(first["w"], device_release(delta, p, 1, 2, 4)["w"])
    assert float(first["w"].std()) == pytest.approx(3.0, rel=0.01)
    assert add_noise(delta, 0.0, generator(0))["w"] is delta["w"]


@pytest.mark.parametrize("kind, cls", [("rdp", RDPAccountant), ("prv", PRVAccountant)])
def test_reported_epsilon_is_the_accountants_for_the_same_steps_rate_noise(kind, cls) -> None:
    cfg = config(rounds=3, clipping="fixed", clip_norm=0.5, noise="central",
                 noise_multiplier=1.3, delta=1e-4, accountant=kind)
    _, rows, _ = run(cfg)
    frame = table(rows)
    train = frame[frame["source"] == "train"]
    accountant = cls()
    for _, row in train.iterrows():
        accountant.step(noise_multiplier=1.3, sample_rate=2 / 4)  # 2 of 4 training devices
        assert row["epsilon"] == pytest.approx(accountant.get_epsilon(1e-4), rel=1e-9)
    assert train["epsilon"].is_monotonic_increasing and train["epsilon"].iloc[0] > 0


def test_local_noise_epsilon_is_the_worst_devices_without_amplification() -> None:
    strategy, rows = private_run(config(rounds=3, clipping="fixed", clip_on="device",
                                        clip_norm=0.5, noise="local", noise_multiplier=2.0))
    worst = max(strategy.participation.values())
    accountant = RDPAccountant()
    for _ in range(worst):
        accountant.step(noise_multiplier=2.0, sample_rate=1.0)
    assert table(rows)["epsilon"].iloc[-1] == pytest.approx(accountant.get_epsilon(1e-5))


def test_a_target_epsilon_ends_the_run_before_it_is_exceeded() -> None:
    cfg = config(rounds=20, clipping="fixed", noise="central", noise_multiplier=2.0,
                 target_epsilon=3.0)
    accountant, allowed = RDPAccountant(), 0
    while True:
        accountant.step(noise_multiplier=2.0, sample_rate=0.5)
        if accountant.get_epsilon(1e-5) > 3.0:
            break
        allowed += 1
    assert 0 < allowed < 20
    _, rows, _ = run(cfg)
    frame = table(rows)
    assert frame["round"].max() == allowed and frame["epsilon"].max() <= 3.0
    assert frame["source"].iloc[-1] == "eval"  # the last round allowed is scored


def test_adaptive_clip_moves_towards_the_quantile_and_budget_is_split() -> None:
    rule = AdaptiveClip(1.0, target_quantile=0.5, lr=0.2, count_std=0.0)
    rule.update(clipped=4, devices=4, rng=np.random.default_rng(0))
    assert rule.clip_norm == pytest.approx(math.exp(0.2 * 0.5))  # all clipped: grows
    rule.update(clipped=0, devices=4, rng=np.random.default_rng(0))  # none clipped: shrinks
    assert rule.clip_norm == pytest.approx(1.0)
    assert split_noise(1.0, 1.0) == pytest.approx((1 - 0.25) ** -0.5)
    strategy, rows = private_run(config(clipping="adaptive", clip_norm=0.05))
    norms = table(rows).query("source == 'train'")["clip_norm"]
    assert norms.iloc[0] == pytest.approx(0.05) and norms.is_monotonic_increasing


def test_the_plain_strategy_is_used_when_privacy_is_off() -> None:
    cfg = config()
    learner = build_learner("maml", MLP(hidden=(3,)), inner_lr=0.1)
    assert type(make_strategy(cfg, MetaTrainer(learner), print)).__name__ == "FedMeta"


@pytest.mark.parametrize("override, field", [
    ("privacy.noise_multiplier=-0.5", "privacy.noise_multiplier"),
    ("privacy.clip_norm=0", "privacy.clip_norm"),
    ("privacy.delta=0", "privacy.delta"),
    ("privacy.delta=1", "privacy.delta"),
    ("privacy.delta=1.5", "privacy.delta"),
    ("privacy.target_epsilon=2", "privacy.target_epsilon"),
    ("privacy.clipping=sometimes", "privacy.clipping"),
    ("privacy.accountant=gdp", "privacy.accountant"),
    ("privacy.noise_multiplier=1", "privacy.noise"),
])
def test_bad_privacy_input_names_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(None, [override])
    assert info.value.field == field


def test_noise_needs_a_clip_and_local_noise_a_device_clip() -> None:
    with pytest.raises(ConfigError, match="privacy.clipping.*calibrated"):
        load(None, ["privacy.noise=central", "privacy.noise_multiplier=1"])
    with pytest.raises(ConfigError, match="privacy.clip_on"):
        load(None, ["privacy.noise=local", "privacy.clipping=fixed"])
    with pytest.raises(ConfigError, match="privacy.target_epsilon"):
        load(None, ["privacy.noise=central", "privacy.clipping=fixed",
                    "privacy.target_epsilon=1"])


def test_summary_names_the_accountant_delta_and_final_epsilon() -> None:
    cfg = config(rounds=2, clipping="fixed", noise="central", noise_multiplier=1.0,
                 delta=1e-6)
    _, rows, _ = run(cfg)
    frame = table(rows)
    summary = privacy_summary(cfg, frame)["privacy"]
    assert summary["accountant"] == "opacus.accountants.RDPAccountant"
    assert summary["delta"] == 1e-6 and summary["sample_rate"] == 0.5
    assert summary["epsilon"] == frame["epsilon"].iloc[-1] > 0
    assert summary["rounds_trained"] == 2
    assert privacy_summary(config(), frame) == {}


@pytest.mark.slow
def test_a_private_secagg_run_on_ray_writes_epsilon_and_the_privacy_summary(tmp_path) -> None:
    import json

    from fedmeta.app.simulation import simulate
    cfg = from_dict({"train": {"seed": 4}, "meta": {"eval_steps": 1},
                     "federation": {**FLEET, "rounds": 2, "fraction_train": 0.75,
                                    "min_train_devices": 3},
                     "privacy": {"secure_aggregation": True, "clipping": "fixed",
                                 "clip_on": "device", "clip_norm": 0.1, "noise": "central",
                                 "noise_multiplier": 1.0},
                     "simulation": {"ray_cpus": 2}})
    frame = simulate(cfg, tmp_path, progress=False)
    written = json.loads((tmp_path / "summary.json").read_text())["privacy"]
    assert written["accountant"] == "opacus.accountants.RDPAccountant"
    assert written["secure_aggregation"] and written["epsilon"] > 0
    assert "epsilon" in (tmp_path / "results.csv").read_text().splitlines()[0]
    assert (frame.loc[frame["source"] == "train", "devices"] == 3).all()
