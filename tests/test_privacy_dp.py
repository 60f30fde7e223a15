"""Client-level DP on meta-updates, in one process (real ClientApp, LocalGrid, no Ray):
noise 0 without clipping is the plain run bit for bit; every contribution is clipped per
device; a Poisson run's epsilon is Opacus' for its rate, noise and rounds, a fixed-size
run's Opacus' at z / 2; noise is secret unless the insecure switch is set (and then every
output says so); uneven participation is accounted device by device; a target epsilon stops
the run; bad privacy input fails naming the field, before any work."""

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
from fedmeta.privacy.mechanism import SecretNoise, SeededNoise, add_noise, device_release
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


PRIVACY_COLUMNS = ["epsilon", "epsilon_device_median", "epsilon_device_min", "clip_norm",
                   "dp_sampling", "dp_adjacency", "dp_accountant", "epsilon_guarantee"]


def test_noise_zero_without_clipping_is_the_plain_run_exactly() -> None:
    plain, plain_rows, _ = run(config())
    private, private_rows, _ = run(config(noise="central", noise_multiplier=0.0,
                                          sampling="fixed"))
    for k, v in plain.items():
        assert torch.equal(v, private[k])
    frame = table(private_rows)
    assert table(plain_rows).equals(frame.drop(columns=PRIVACY_COLUMNS))
    assert frame.loc[frame["source"] == "train", "epsilon"].eq(math.inf).all()
    assert frame["epsilon_guarantee"].str.startswith("no").all()


@pytest.mark.parametrize("clip_on", ["server", "device"])
@pytest.mark.parametrize("sampling", ["fixed", "poisson"])
def test_every_device_contribution_is_clipped_to_the_norm(clip_on: str, sampling: str) -> None:
    clip_norm = 0.05  # far below these updates' norms, so every one is scaled
    strategy, rows = private_run(config(clipping="fixed", clip_on=clip_on, clip_norm=clip_norm,
                                        sampling=sampling))
    norms = [n for round_norms in strategy.norms.values() for n in round_norms]
    assert len(norms) == table(rows).query("source == 'train'")["devices"].sum()
    assert len(norms) == 4 * 2 or sampling == "poisson"
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


def test_local_noise_is_secret_unless_insecure_and_scaled_to_the_clip() -> None:
    p = config(clipping="fixed", clip_on="device", clip_norm=2.0, noise="local",
               noise_multiplier=1.5).privacy
    delta = {"w": torch.zeros(200_000)}
    first = device_release(delta, p, 1, 2, 3)
    assert not torch.equal(first["w"], device_release(delta, p, 1, 2, 3)["w"])  # secret
    assert float(first["w"].std()) == pytest.approx(3.0, rel=0.01)
    assert abs(float(first["w"].mean())) < 0.03
    insecure = config(clipping="fixed", clip_on="device", clip_norm=2.0, noise="local",
                      noise_multiplier=1.5, insecure_reproducible_noise=True).privacy
    seeded = device_release(delta, insecure, 1, 2, 3)
    assert torch.equal(seeded["w"], device_release(delta, insecure, 1, 2, 3)["w"])
    assert not torch.equal(seeded["w"], device_release(delta, insecure, 1, 2, 4)["w"])
    assert float(seeded["w"].std()) == pytest.approx(3.0, rel=0.01)
    assert add_noise(delta, 0.0, SecretNoise())["w"] is delta["w"]


def test_secret_noise_is_standard_normal() -> None:
    draws = SecretNoise().normal((400_000,), torch.float64).numpy()
    # moments and tail mass of N(0, 1), written independently of the Box-Muller code
    assert abs(draws.mean()) < 0.01 and draws.std() == pytest.approx(1.0, abs=0.01)
    assert np.mean(np.abs(draws) > 1.96) == pytest.approx(0.05, abs=0.003)
    assert np.mean(draws ** 4) == pytest.approx(3.0, abs=0.06)
    assert not np.array_equal(draws[:10], SecretNoise().normal((10,), torch.float64).numpy())
    a, b = SeededNoise(1, 2).normal((5,), torch.float32), SeededNoise(1, 2).normal((5,))
    assert torch.equal(a, b)


def _train_params(cfg) -> dict[str, torch.Tensor]:
    params, _, _ = run(cfg)
    return params


@pytest.mark.parametrize("noise", ["central", "local"])
def test_two_private_runs_of_one_config_differ_unless_insecure(noise: str) -> None:
    settings = dict(clipping="fixed", clip_on="device", clip_norm=0.5, noise=noise,
                    noise_multiplier=1.0)
    first, second = (_train_params(config(rounds=2, **settings)) for _ in range(2))
    assert any(not torch.equal(v, second[k]) for k, v in first.items())
    insecure = config(rounds=2, insecure_reproducible_noise=True, **settings)
    a, rows, _ = run(insecure)
    b, _, _ = run(insecure)
    assert all(torch.equal(v, b[k]) for k, v in a.items())
    frame = table(rows)
    assert frame["epsilon_guarantee"].str.startswith("NO: privacy.insecure").all()
    summary = privacy_summary(insecure, frame)["privacy"]
    assert summary["epsilon_guarantee"].startswith("NO: privacy.insecure")


def test_the_insecure_switch_is_logged_and_printed(tmp_path, caplog, capsys) -> None:
    import logging

    from fedmeta.app.privacy_wrap import INSECURE_WARNING
    cfg = config(rounds=1, clipping="fixed", noise="central", noise_multiplier=1.0,
                 insecure_reproducible_noise=True)
    with caplog.at_level(logging.WARNING, logger="flwr.fedmeta"):
        run(cfg)
    assert INSECURE_WARNING in caplog.text and "NOT a privacy guarantee" in INSECURE_WARNING


@pytest.mark.parametrize("kind, cls", [("rdp", RDPAccountant), ("prv", PRVAccountant)])
def test_a_poisson_runs_epsilon_is_opacus_for_its_rate_noise_and_rounds(kind, cls) -> None:
    cfg = config(rounds=3, clipping="fixed", clip_norm=0.5, noise="central",
                 noise_multiplier=1.3, delta=1e-4, accountant=kind)
    assert cfg.privacy.scheme == "poisson"  # the default for private runs
    _, rows, _ = run(cfg)
    frame = table(rows)
    train = frame[frame["source"] == "train"]
    accountant = cls()
    for _, row in train.iterrows():
        accountant.step(noise_multiplier=1.3, sample_rate=2 / 4)  # q = 2 of 4 devices
        assert row["epsilon"] == pytest.approx(accountant.get_epsilon(1e-4), rel=1e-9)
    assert train["epsilon"].is_monotonic_increasing and train["epsilon"].iloc[0] > 0
    assert (train["dp_sampling"] == "poisson").all()
    assert (train["dp_adjacency"] == "add/remove one device").all()


def test_poisson_sampling_draws_each_device_with_probability_q_and_divides_by_qn() -> None:
    strategy, rows = private_run(config(rounds=30, clipping="fixed", clip_norm=0.05,
                                        noise="central", noise_multiplier=0.0))
    counts = table(rows).query("source == 'train'")["devices"]
    assert counts.nunique() > 1  # the number of participants varies: not fixed-size
    assert counts.mean() == pytest.approx(2.0, abs=0.6)  # q N = 0.5 * 4
    assert (table(rows).query("source == 'train'")["status"] == "ok").all()  # 0 devices too


def test_the_fixed_size_reproducer_reports_at_least_the_tight_47() -> None:
    """Issue 19's reproducer: 16 training devices, 8 per round, z = 1, delta = 1e-5, 20
    rounds of fixed-size sampling: the tight epsilon of what the run does is 47.0 (the old
    Poisson-at-z accounting said 16.55)."""
    cfg = from_dict({"meta": {"eval_steps": 1},
                     "federation": {"num_devices": 20, "num_held_out": 4, "rounds": 20,
                                    "meta_batch": 1, "local_steps": 1, "eval_every": 100,
                                    "eval_episodes": 1},
                     "privacy": {"clipping": "fixed", "noise": "central",
                                 "noise_multiplier": 1.0, "sampling": "fixed"}})
    _, rows, _ = run(cfg)
    frame = table(rows)
    assert frame["epsilon"].iloc[-1] >= 47.0
    accountant = RDPAccountant()
    accountant.history = [(0.5, 8 / 16, 20)]  # replace-one at z as add/remove at z / 2
    assert frame["epsilon"].iloc[-1] == pytest.approx(accountant.get_epsilon(1e-5))
    summary = privacy_summary(cfg, frame)["privacy"]
    assert summary["sampling"] == "fixed" and summary["adjacency"] == "replace one device"
    assert summary["noise_multiplier_accounted"] == 0.5


def test_local_noise_counts_every_noised_reply_retries_included() -> None:
    """Crashes and NaN replies make rounds short and retried; every reply that reached the
    server (retried attempts and rejected ones too) is a release at z / 2 with q = 1."""
    cfg = from_dict({"train": {"seed": 3}, "meta": {"eval_steps": 1},
                     "federation": {**FLEET, "rounds": 4, "min_good_replies": 2,
                                    "max_retries": 3},
                     "faults": {"nan": 0.3},
                     "privacy": {"clipping": "fixed", "clip_on": "device", "clip_norm": 0.5,
                                 "noise": "local", "noise_multiplier": 2.0,
                                 "sampling": "fixed"}})
    replies: dict[int, int] = {}
    grid = LocalGrid(client_app.app, cfg.federation.num_devices)
    original = grid.send_and_receive

    def counting(messages, **kwargs):
        out = list(original(messages, **kwargs))
        for reply in out:
            if reply.metadata.message_type == "train" and reply.has_content():
                pid = grid.contexts[reply.metadata.src_node_id].node_config["partition-id"]
                replies[pid] = replies.get(pid, 0) + 1
        return out

    grid.send_and_receive = counting
    from fedmeta.app import server_app
    kept: list = []
    make = server_app.make_strategy
    server_app.make_strategy = lambda *a: kept.append(make(*a)) or kept[0]
    try:
        rows: list = []
        run_federation(grid, cfg, rows.append)
    finally:
        server_app.make_strategy = make
    frame = table(rows)
    assert frame["attempt"].max() > 0  # some round was retried
    ledger = kept[0].ledger
    assert {d: sum(c.values()) for d, c in ledger.steps.items()} == replies
    assert sum(replies.values()) > 4 * 2  # more releases than rounds x devices per round
    worst = max(replies.values())
    accountant = RDPAccountant()
    accountant.history = [(1.0, 1.0, worst)]  # z / 2 = 1, no amplification
    assert frame["epsilon"].iloc[-1] == pytest.approx(accountant.get_epsilon(1e-5))


@pytest.mark.parametrize("sampling, z, accounted", [("poisson", 2.0, 2.0), ("fixed", 4.0, 2.0)])
def test_a_target_epsilon_ends_the_run_before_it_is_exceeded(sampling, z, accounted) -> None:
    cfg = config(rounds=20, clipping="fixed", noise="central", noise_multiplier=z,
                 target_epsilon=3.0, sampling=sampling)
    accountant, allowed = RDPAccountant(), 0
    while True:
        accountant.step(noise_multiplier=accounted, sample_rate=0.5)
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
    rule.update(clipped=4, devices=4, noise=0.0, expected=4.0)
    assert rule.clip_norm == pytest.approx(math.exp(0.2 * 0.5))  # all clipped: grows
    rule.update(clipped=0, devices=4, noise=0.0, expected=4.0)  # none clipped: shrinks
    assert rule.clip_norm == pytest.approx(1.0)
    # Poisson: the centred count over the expected number; no device, no noise: unchanged
    rule.update(clipped=0, devices=0, noise=0.0, expected=2.0)
    assert rule.clip_norm == pytest.approx(1.0)
    assert split_noise(1.0, 1.0) == pytest.approx((1 - 0.25) ** -0.5)
    strategy, rows = private_run(config(clipping="adaptive", clip_norm=0.05, sampling="fixed"))
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
    ("privacy.sampling=uniform", "privacy.sampling"),
    ("privacy.insecure_reproducible_noise=maybe", "privacy.insecure_reproducible_noise"),
    ("privacy.insecure_reproducible_noise=true", "privacy.insecure_reproducible_noise"),
    ("privacy.sampling=poisson", "privacy.sampling"),
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


NOISED = ["privacy.clipping=fixed", "privacy.noise=central", "privacy.noise_multiplier=1"]


@pytest.mark.parametrize("rule", ["median", "trimmed-mean", "multi-krum", "norm-filter",
                                  "norm-bound"])
def test_central_noise_with_a_robust_rule_is_refused(rule: str) -> None:
    """Finding 3(a): the noise is calibrated to the mean's sensitivity."""
    with pytest.raises(ConfigError) as info:
        load(None, [*NOISED, f"federation.aggregation={rule}"])
    assert info.value.field == "federation.aggregation" and "calibrated" in str(info.value)
    load(None, ["privacy.clipping=fixed", "privacy.clip_on=device", "privacy.noise=local",
                "privacy.noise_multiplier=1", f"federation.aggregation={rule}"])  # fine


def test_an_adaptive_noise_split_that_cannot_work_is_a_config_error() -> None:
    """Finding 3(d): the default fleet samples 8 devices, so z must stay below 2 * 8/20."""
    with pytest.raises(ConfigError) as info:
        load(None, ["privacy.clipping=adaptive", "privacy.noise=central",
                    "privacy.noise_multiplier=1"])
    assert info.value.field == "privacy.noise_multiplier"
    assert "federation.fraction_train" in str(info.value) and "0.8" in str(info.value)
    cfg = load(None, ["privacy.clipping=adaptive", "privacy.noise=central",
                      "privacy.noise_multiplier=0.7"])
    learner = build_learner("maml", MLP(hidden=(3,)), inner_lr=0.1)
    assert make_strategy(cfg, MetaTrainer(learner), print).noise_multiplier > 0.7


def test_poisson_sampling_refuses_what_it_cannot_account() -> None:
    with pytest.raises(ConfigError, match="privacy.sampling"):
        load(None, ["privacy.secure_aggregation=true", "privacy.sampling=poisson"])
    assert load(None, ["privacy.secure_aggregation=true"]).privacy.scheme == "fixed"
    with pytest.raises(ConfigError, match="federation.min_good_replies"):
        load(None, [*NOISED, "federation.min_good_replies=2"])
    load(None, [*NOISED, "federation.min_good_replies=2", "privacy.sampling=fixed"])


def test_privacy_misconfigurations_fail_before_ray_starts(tmp_path) -> None:
    import subprocess
    import sys
    code = ("import sys; from fedmeta.cli import main; rc = main(sys.argv[1:]); "
            "print('rc', rc, 'ray loaded' if 'ray' in sys.modules else 'ray not loaded')")
    out = subprocess.run([sys.executable, "-c", code, "run", "--set",
                          "privacy.clipping=adaptive", "--set", "privacy.noise=central",
                          "--set", "privacy.noise_multiplier=1", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=120)
    assert "privacy.noise_multiplier" in out.stderr + out.stdout
    assert "rc 2 ray not loaded" in out.stdout and not (tmp_path / "x").exists()


def test_summary_names_the_accountant_delta_and_final_epsilon() -> None:
    cfg = config(rounds=2, clipping="fixed", noise="central", noise_multiplier=1.0,
                 delta=1e-6)
    _, rows, _ = run(cfg)
    frame = table(rows)
    summary = privacy_summary(cfg, frame)["privacy"]
    assert summary["accountant"] == "opacus.accountants.RDPAccountant"
    assert summary["delta"] == 1e-6 and summary["sample_rate"] == 0.5
    assert summary["epsilon"] == frame["epsilon"].iloc[-1] > 0
    assert summary["sampling"] == "poisson" and summary["adjacency"] == "add/remove one device"
    assert summary["epsilon_guarantee"] == "yes"
    assert summary["epsilon_device_median"] == summary["epsilon"]  # all alike here
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
    assert written["sampling"] == "fixed" and written["adjacency"] == "replace one device"
    assert "epsilon" in (tmp_path / "results.csv").read_text().splitlines()[0]
    assert (frame.loc[frame["source"] == "train", "devices"] == 3).all()


def _private_strategy(**privacy: object) -> PrivateFedMeta:
    cfg = config(rounds=1, clipping="fixed", clip_norm=1.0, noise="central", **privacy)
    learner = build_learner("maml", MLP(hidden=(3,)), inner_lr=0.1)
    strategy = PrivateFedMeta(cfg, MetaTrainer(learner))
    strategy.partitions = {100 + d: d for d in range(6)}
    strategy.eligible[1] = [0, 1, 2, 3]
    return strategy


def _replies(strategy: PrivateFedMeta, scales: list[float]) -> list:
    from flwr.app import Message, MessageType, MetricRecord, RecordDict

    from fedmeta.app.records import to_record
    from local_grid import set_task_identity
    set_task_identity()
    out = []
    for device, scale in enumerate(scales):
        update = {k: torch.full_like(v, scale) for k, v in strategy.trainer.params.items()}
        sent = Message(RecordDict(), dst_node_id=100 + device, message_type=MessageType.TRAIN)
        metrics = MetricRecord({"num-examples": 10 * (device + 1), "pre_loss": 1.0})
        out.append(Message(RecordDict({"arrays": to_record(update), "metrics": metrics}),
                           reply_to=sent))
    return out


def test_the_poisson_mean_is_the_clipped_sum_over_the_expected_count() -> None:
    from fedmeta.app.records import to_params
    strategy = _private_strategy(noise_multiplier=0.0)
    dim = sum(v.numel() for v in strategy.trainer.params.values())
    scales = [0.001, 5.0, -5.0]  # the last two are clipped to norm 1
    arrays, _, _ = strategy.aggregate_updates(1, _replies(strategy, scales))
    mean = to_params(arrays)
    clipped = [s * min(1.0, 1.0 / (abs(s) * dim ** 0.5)) for s in scales]
    expected = sum(clipped) / (0.5 * 4)  # q * eligible devices, not the 3 that replied
    for v in mean.values():
        torch.testing.assert_close(v, torch.full_like(v, expected))
    empty, _, _ = strategy.aggregate_updates(1, [])  # no device: zeros (plus noise)
    assert all(float(v.abs().max()) == 0 for v in to_params(empty).values())
    noisy = _private_strategy(noise_multiplier=2.0)
    stds = [float(torch.cat([v.flatten() for v in to_params(
        noisy.aggregate_updates(1, [])[0]).values()]).std()) for _ in range(200)]
    assert float(np.mean(stds)) == pytest.approx(2.0 * 1.0 / 2.0, rel=0.1)  # z C / (q N)
    assert noisy.ledger.epsilons().keys() == {0, 1, 2, 3}  # every eligible device


FAST_PROFILE = "".join(f"""\
[{name}]
flops = 1e9
memory_gb = 1
uplink_mbps = 100
downlink_mbps = 100
""" for name in ("on", "flaky"))


@pytest.mark.parametrize("sampling", ["fixed", "poisson"])
def test_uneven_availability_is_accounted_device_by_device(tmp_path, sampling: str) -> None:
    """Finding 3(b): the server samples among available devices, so an always-on device is
    in more rounds than q says; each device is accounted by its inclusion probability in
    every round it was eligible, and the run reports the worst."""
    from fedmeta.fleet import Fleet, load_profiles, parse_tiers
    (tmp_path / "p.toml").write_text(FAST_PROFILE)
    tiers = "on:0.5:0:1.0, flaky:0.5:0:0.3"
    cfg = from_dict({"train": {"seed": 5}, "meta": {"eval_steps": 1},
                     "federation": {**FLEET, "num_devices": 8, "rounds": 6,
                                    "min_train_devices": 1, "max_retries": 0},
                     "fleet": {"tiers": tiers, "profiles_file": str(tmp_path / "p.toml"),
                               "policy": "wait"},
                     "privacy": {"clipping": "fixed", "noise": "central",
                                 "noise_multiplier": 1.0, "sampling": sampling}})
    strategy, rows = private_run(cfg)
    fleet = Fleet.sample(parse_tiers(tiers, load_profiles(tmp_path / "p.toml"), 6), 8, 5)
    frame = table(rows)
    released = frame.query("source == 'train' and status == 'ok'")["round"].tolist()
    z = 1.0 if sampling == "poisson" else 0.5
    expected = {}
    for device in range(6):
        history = []
        for r in released:
            on = [d for d in range(6) if fleet.available(r)[d]]
            if device in on:
                history.append((z, 0.5 if sampling == "poisson" else min(3, len(on)) / len(on)))
        accountant = RDPAccountant()
        accountant.history = [(zz, q, 1) for zz, q in history]
        expected[device] = accountant.get_epsilon(1e-5) if history else None
    got = strategy.ledger.epsilons()
    assert got.keys() == {d for d, e in expected.items() if e is not None}
    for device, eps in got.items():
        assert eps == pytest.approx(expected[device], rel=1e-9)
    assert frame["epsilon"].iloc[-1] == pytest.approx(max(got.values()))
    nominal = RDPAccountant()
    nominal.history = [(z, 0.5, len(released))]
    if sampling == "fixed":  # the always-on devices are sampled more often than q = 0.5
        assert max(got.values()) > nominal.get_epsilon(1e-5)
    assert frame["epsilon_device_median"].iloc[-1] <= frame["epsilon"].iloc[-1]
    summary = privacy_summary(cfg, frame)["privacy"]
    assert summary["epsilon_device_median"] == pytest.approx(float(np.median(list(got.values()))))
    assert summary["epsilon_device_min"] == pytest.approx(min(got.values()))
    if sampling == "fixed":  # flaky devices are in fewer rounds: a real spread
        assert summary["epsilon_device_min"] < summary["epsilon"]


def test_a_local_noise_target_assumes_a_reply_every_round_and_every_retry() -> None:
    cfg = from_dict({"federation": {**FLEET, "rounds": 10, "max_retries": 2},
                     "privacy": {"clipping": "fixed", "clip_on": "device", "noise": "local",
                                 "noise_multiplier": 4.0, "target_epsilon": 8.0}})
    learner = build_learner("maml", MLP(hidden=(3,)), inner_lr=0.1)
    strategy = PrivateFedMeta(cfg, MetaTrainer(learner))
    accountant = RDPAccountant()
    accountant.history = [(2.0, 1.0, 3 * 3)]  # z / 2, q = 1, 3 attempts a round
    assert strategy.planned_epsilon(3) == pytest.approx(accountant.get_epsilon(1e-5))
    allowed = strategy.rounds_within_target(10)
    assert strategy.planned_epsilon(allowed) <= 8.0 < strategy.planned_epsilon(allowed + 1)
