"""Federated config: bad input fails with ConfigError (field, value, allowed) before any
work starts; "auto" fields take their algorithm's defaults; pyproject's Flower run config
is the config's defaults."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import fedmeta.cli
from fedmeta.app.sizing import size_to
from fedmeta.config import Config, from_dict, from_flat, load
from fedmeta.errors import ConfigError
from fedmeta.federated import FEDERATED_ALGORITHMS
from fedmeta.meta import ALGORITHMS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("override, field, allowed", [
    ("federation.algorithm=fedprox", "federation.algorithm", "fedmeta-maml"),
    ("federation.bogus=1", "federation.bogus", "a field of [federation]"),
    ("flwr.rounds=3", "flwr", "a section among"),
    ("federation.num_devices=0", "federation.num_devices", ">= 1"),
    ("federation.rounds=-2", "federation.rounds", ">= 1"),
    ("federation.meta_batch=0", "federation.meta_batch", ">= 1"),
    ("federation.local_steps=0", "federation.local_steps", ">= 1"),
    ("federation.eval_every=0", "federation.eval_every", ">= 1"),
    ("federation.eval_episodes=0", "federation.eval_episodes", ">= 1"),
    ("federation.fraction_train=1.5", "federation.fraction_train", "[0, 1]"),
    ("federation.fraction_train=-0.1", "federation.fraction_train", "[0, 1]"),
    ("federation.min_train_devices=17", "federation.min_train_devices", "16 training devices"),
    ("federation.min_train_devices=0", "federation.min_train_devices", ">= 1"),
    ("federation.num_held_out=20", "federation.num_held_out", "[1, federation.num_devices=20)"),
    ("federation.num_held_out=0", "federation.num_held_out", "[1,"),
    ("federation.local_lr=0", "federation.local_lr", "> 0"),
    ("federation.server_lr=nan", "federation.server_lr", "> 0"),
    ("federation.local_lr=fast", "federation.local_lr", 'a number or "auto"'),
    ("federation.server_optimizer=rmsprop", "federation.server_optimizer", "adam"),
    ("simulation.num_cpus=0", "simulation.num_cpus", "> 0"),
    ("simulation.num_gpus=-1", "simulation.num_gpus", ">= 0"),
    ("simulation.ray_cpus=-1", "simulation.ray_cpus", ">= 0"),
])
def test_bad_federated_field_names_field_value_and_allowed(override: str, field: str,
                                                           allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(None, [override])
    assert info.value.field == field
    assert allowed in info.value.allowed
    assert override.partition("=")[2] in str(info.value)


def test_more_sampled_devices_than_exist_and_held_out_as_large_as_fleet() -> None:
    with pytest.raises(ConfigError, match="min_train_devices"):
        from_dict({"federation": {"num_devices": 3, "num_held_out": 1,
                                  "min_train_devices": 3}})
    with pytest.raises(ConfigError, match="num_held_out"):
        from_dict({"federation": {"num_devices": 3, "num_held_out": 3}})


@pytest.mark.parametrize("name", sorted(FEDERATED_ALGORITHMS))
def test_auto_fields_take_the_algorithm_defaults_and_explicit_values_win(name: str) -> None:
    defaults = FEDERATED_ALGORITHMS[name]
    task = ["task.kind=omniglot"] if ALGORITHMS[defaults.learner].few_shot_only else []
    fed = load(None, [*task, f"federation.algorithm={name}"]).federation
    assert (fed.local_steps, fed.local_lr, fed.server_optimizer, fed.server_lr) == (
        defaults.local_steps, defaults.local_lr, defaults.server_optimizer, defaults.server_lr)
    fed = load(None, [*task, f"federation.algorithm={name}", "federation.server_lr=0.5",
                      "federation.local_steps=auto"]).federation
    assert fed.server_lr == 0.5 and fed.local_steps == defaults.local_steps


def test_fedavg_trains_jointly_and_scores_without_adapting() -> None:
    assert FEDERATED_ALGORITHMS["fedavg"].learner == "joint"
    assert not FEDERATED_ALGORITHMS["fedavg"].fine_tunes
    assert FEDERATED_ALGORITHMS["fedavg-ft"].fine_tunes
    assert FEDERATED_ALGORITHMS["perfedavg"].learner == "perfedavg-fo"
    assert FEDERATED_ALGORITHMS["perfedavg-hf"].learner == "perfedavg-hf"


def test_flat_config_round_trips() -> None:
    cfg = load(None, ["federation.algorithm=fedreptile", "task.amplitude=1,2"])
    assert from_flat(cfg.to_flat()) == cfg
    with pytest.raises(ConfigError, match="section.field"):
        from_flat({"rounds": 3})


def test_pyproject_flower_run_config_is_the_config_defaults() -> None:
    app = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "fedmeta.app.server_app:app",
                                 "clientapp": "fedmeta.app.client_app:app"}
    declared = {f"{section}.{k}": v for section, fields in app["config"].items()
                for k, v in fields.items()}
    defaults = Config().to_flat()
    central_only = {k for k in defaults if k.startswith(("simulation.", "train."))
                    and k not in ("train.seed", "train.device", "train.precision",
                                  "train.batched")} | {
                        "meta.algorithm"}
    assert set(declared) == set(defaults) - central_only
    # flwr run sizes the fleet to the federation it finds (fedmeta/app/sizing.py); at the
    # default's size it is the default config
    assert declared["federation.num_devices"] == "auto"
    sized, changes = size_to(declared, defaults["federation.num_devices"])
    assert changes == [f"num_devices={defaults['federation.num_devices']}"]
    assert from_flat(sized) == from_flat({k: defaults[k] for k in declared})


def test_cli_rejects_bad_input_in_one_line_before_starting_ray(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    def no_ray(*args: object, **kwargs: object) -> None:
        raise AssertionError("Ray was started for a config that fails validation")

    monkeypatch.setattr(ray, "init", no_ray)
    code = fedmeta.cli.main(["run", "--set", "federation.num_held_out=20", "--out", "unused"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "federation.num_held_out=20" in err
    assert not Path("unused").exists()


def test_cli_config_file_errors_exit_2_without_importing_flower(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[federation]\nfraction_train = 2.0\n")
    script = ("import sys, fedmeta.cli; code = fedmeta.cli.main(['run', '--config', "
              f"{str(bad)!r}]); assert 'ray' not in sys.modules and 'flwr' not in sys.modules;"
              " sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "federation.fraction_train=2.0" in done.stderr and "[0, 1]" in done.stderr
