"""``fedmeta train`` / ``fedmeta run`` with the metric and model-based learners: a tiny run
of each, and one clear line for what they cannot do (regression, the FedMeta protocol)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedmeta.checkpoint import Checkpoint
from fedmeta.cli import main

LEARNERS = ["matching", "relation", "snail", "leo"]


def omniglot(omniglot_dir: Path) -> list[str]:
    return ["--set", "task.kind=omniglot", "--set", f"task.data_dir={omniglot_dir}",
            "--set", "task.k_shot=1", "--set", "task.q_query=2", "--set", "meta.inner_lr=1.0"]


@pytest.mark.parametrize("name", LEARNERS)
def test_train_runs_each_learner_and_saves_a_checkpoint_evaluate_reads(
        name: str, omniglot_dir: Path, tmp_path: Path, capsys) -> None:
    code = main(["train", *omniglot(omniglot_dir), "--set", f"meta.algorithm={name}",
                 "--set", "train.iterations=2", "--set", "train.meta_batch=2",
                 "--set", "train.eval_episodes=4", "--out", str(tmp_path), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["algorithm"] == name and summary["episodes"] == 4
    assert 0.0 <= summary["post_acc"] <= 1.0
    checkpoint = Checkpoint.load(tmp_path / "checkpoint.pt")
    assert checkpoint.learner().name == name
    assert set(checkpoint.params) == set(checkpoint.learner().init_params())


def _error(capsys, *args: str) -> str:
    code = main(list(args))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("name", ["protonet", *LEARNERS])
def test_train_refuses_regression_for_a_metric_learner(name: str, capsys) -> None:
    err = _error(capsys, "train", "--set", f"meta.algorithm={name}")
    for part in ("meta.algorithm", repr(name), "task.kind='sinusoid'", "maml", "omniglot"):
        assert part in err


@pytest.mark.parametrize("name", ["protonet", *LEARNERS])
def test_run_refuses_regression_for_a_federated_metric_learner(name: str, capsys) -> None:
    err = _error(capsys, "run", "--set", f"federation.algorithm=fedmeta-{name}")
    for part in ("federation.algorithm", f"'fedmeta-{name}'", "fedmeta-maml", "omniglot"):
        assert part in err


def test_run_refuses_the_fedmeta_protocol_for_a_federated_metric_learner(capsys) -> None:
    err = _error(capsys, "run", "--set", "federation.algorithm=fedmeta-matching",
                 "--set", "task.kind=hf", "--set", "task.protocol=fedmeta")
    assert "task.protocol='fedmeta'" in err and "few-shot" in err


@pytest.mark.slow
def test_fedmeta_run_on_ray_with_federated_protonet(omniglot_dir: Path,
                                                    tmp_path: Path) -> None:
    out = tmp_path / "run"
    cli = subprocess.run(
        [sys.executable, "-m", "fedmeta", "run", *omniglot(omniglot_dir),
         "--set", "federation.algorithm=fedmeta-protonet", "--set", "federation.num_devices=3",
         "--set", "federation.num_held_out=1", "--set", "federation.rounds=2",
         "--set", "federation.eval_every=2", "--set", "federation.meta_batch=2",
         "--set", "federation.eval_episodes=3", "--set", "simulation.ray_cpus=2",
         "--set", "federation.discovery_timeout=900",
         "--out", str(out), "--no-progress"], capture_output=True, text=True, timeout=1500)
    assert cli.returncode == 0, cli.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == "fedmeta-protonet" and summary["final_pre_acc"] is None
    assert 0.0 <= summary["final_post_acc"] <= 1.0
    assert Checkpoint.load(out / "checkpoint.pt").algorithm == "protonet"
