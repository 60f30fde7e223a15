"""``fedmeta train`` on every benchmark fixture, and federated runs on CIFAR-FS's: in this
process over a local grid (fixed and Meta-Dataset episodes), and ``fedmeta run`` (slow)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from PIL import Image

from fedmeta.app import client_app, server_app
from fedmeta.checkpoint import Checkpoint
from fedmeta.cli import main
from fedmeta.config import from_dict
from fedmeta.tasks.benchmarks import load_split
from fedmeta.tasks.image_episodes import read_image_episodes

from benchmark_fixtures import write_cifar100, write_mini_csv, write_mini_pickle
from local_grid import LocalGrid

TINY = ["--set", "task.kind=fewshot", "--set", "task.partition=class",
        "--set", "task.n_way=2", "--set", "task.k_shot=1", "--set", "task.q_query=1",
        "--set", "train.iterations=2", "--set", "train.meta_batch=2",
        "--set", "train.eval_episodes=3", "--set", "meta.eval_steps=1", "--no-progress"]


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("benchmarks")
    return {"miniimagenet-csv": write_mini_csv(base / "mini-csv", per_class=2),
            "miniimagenet-pkl": write_mini_pickle(base / "mini-pkl", per_class=2),
            "cifar": write_cifar100(base / "cifar")}


@pytest.mark.parametrize("dataset, root, side", [
    ("miniimagenet", "miniimagenet-csv", 84), ("miniimagenet", "miniimagenet-pkl", 84),
    ("cifar-fs", "cifar", 32), ("fc100", "cifar", 32)])
def test_central_train_on_each_fixture(dataset, root, side, roots, tmp_path, capsys):
    code = main(["train", *TINY, "--set", f"task.dataset={dataset}",
                 "--set", f"task.data_dir={roots[root]}", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["task"]["dataset"] == dataset and summary["episodes"] == 3
    assert 0 <= summary["post_acc"] <= 1
    checkpoint = Checkpoint.load(tmp_path / "checkpoint.pt")
    assert checkpoint.model_kwargs == {"n_way": 2, "in_channels": 3, "image_size": side}
    assert checkpoint.params["head.weight"].shape == (2, 64 * (side // 16) ** 2)


def test_fedmeta_evaluate_scores_rgb_episodes_with_a_benchmark_checkpoint(roots, tmp_path,
                                                                          capsys):
    """A CIFAR-FS checkpoint scores a folder of RGB PNG episodes (generic layout), decoded
    to its 3x32x32 input, pixels intact."""
    assert main(["train", *TINY, "--set", "task.dataset=cifar-fs",
                 "--set", f"task.data_dir={roots['cifar']}", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    test = load_split("cifar-fs", roots["cifar"], "test")
    for e in range(2):
        for split, rows in (("support", [0]), ("query", [1, 2])):
            for c in (2 * e, 2 * e + 1):
                for r in rows:
                    image = test.images[test.labels == c][r].transpose(1, 2, 0)
                    path = tmp_path / "eps" / f"ep{e}" / split / test.class_names[c] / f"{r}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(image).save(path)
    read = read_image_episodes(tmp_path / "eps", channels=3, size=32)
    first = read.episodes["ep0"].support_x[0]
    np.testing.assert_array_equal(first.numpy(), test.images[test.labels == 0][0] / np.float32(255))
    code = main(["evaluate", "--checkpoint", str(tmp_path / "checkpoint.pt"),
                 "--episodes", str(tmp_path / "eps"), "--steps", "1"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["episodes"] == 2 and result["queries"] == 8
    assert 0 <= result["accuracy"] <= 1


def test_central_train_on_meta_dataset_episodes(roots, tmp_path, capsys):
    code = main(["train", *TINY, "--set", "task.dataset=cifar-fs",
                 "--set", f"task.data_dir={roots['cifar']}", "--set", "task.n_way=4",
                 "--set", "task.episodes=meta-dataset", "--set", "task.min_way=2",
                 "--set", "task.max_support=8", "--set", "meta.algorithm=protonet",
                 "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["task"]["episodes"] == "meta-dataset" and summary["episodes"] == 3


def test_missing_files_are_one_line_and_exit_2(tmp_path, capsys):
    code = main(["train", *TINY, "--set", "task.dataset=fc100",
                 "--set", f"task.data_dir={tmp_path}", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cifar-100-python" in err


def flat_config(root: Path, **task: object) -> dict:
    return from_dict({
        "task": {"kind": "fewshot", "dataset": "cifar-fs", "data_dir": str(root),
                 "partition": "class", "n_way": 3, "k_shot": 1, "q_query": 2} | task,
        "meta": {"eval_steps": 1},
        "federation": {"num_devices": 3, "num_held_out": 1, "rounds": 2, "eval_every": 2,
                       "meta_batch": 2, "eval_episodes": 3, "min_train_devices": 2},
    }).to_flat()


@pytest.mark.parametrize("episodes", ["fixed", "meta-dataset"])
def test_federated_rounds_over_a_local_grid(episodes, roots, caplog):
    extra = {"episodes": "meta-dataset", "min_way": 2, "n_way": 4, "max_support": 8} \
        if episodes == "meta-dataset" else {}
    flat = flat_config(roots["cifar"], **extra)
    grid = LocalGrid(client_app.app, 3)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config=flat)
    with caplog.at_level(logging.INFO, logger="flwr.fedmeta"):
        server_app.main(grid, context)
    assert "round 2 train: 2 devices" in caplog.text
    assert "round 2 eval: 1 devices" in caplog.text


@pytest.mark.slow  # Ray start-up and two rounds: 70 s to 4.5 min on a loaded 2-core host
def test_fedmeta_run_on_the_cifar_fs_fixture(roots, tmp_path):
    config = tmp_path / "cifar-fs.toml"
    config.write_text(f"""\
[task]
kind = "fewshot"
dataset = "cifar-fs"
data_dir = "{roots['cifar']}"
partition = "class"
n_way = 3
k_shot = 1
q_query = 2

[meta]
eval_steps = 1

[train]
seed = 2

[federation]
num_devices = 4
num_held_out = 1
rounds = 2
eval_every = 2
meta_batch = 2
eval_episodes = 3

[simulation]
num_cpus = 1
ray_cpus = 2
""")
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "fedmeta", "run", "--config", str(config),
                          "--out", str(out), "--no-progress"], capture_output=True, text=True,
                         timeout=600, env=dict(os.environ))
    assert run.returncode == 0, run.stderr[-3000:]
    checkpoint = Checkpoint.load(out / "checkpoint.pt")
    assert checkpoint.task["dataset"] == "cifar-fs"
    assert checkpoint.model_kwargs == {"n_way": 3, "in_channels": 3, "image_size": 32}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_round"] == 2 and summary["held_out_episodes"] == 3
    assert 0 <= summary["final_post_acc"] <= 1
