"""``fedmeta run`` on a FEMNIST-shaped fleet of 50 writers (one device each, read by
``datasets`` from the hub's file layout) learns: on the 10 held-out writers, adapting the
meta-model raises accuracy over not adapting it, with a 95% CI of the paired difference
that excludes zero, and the meta-trained model adapts better than the untrained one."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmeta.checkpoint import Checkpoint
from fedmeta.config import from_dict
from fedmeta.held_out import score_device
from fedmeta.models import build_model
from fedmeta.tasks.factory import build_device_tasks

from hf_fixtures import femnist_writers, write_femnist

CONFIG = """\
[task]
kind = "hf"
dataset = "{dataset}"
partition_by = "writer_id"
n_way = 5
k_shot = 1
q_query = 5

[meta]
inner_lr = 0.4
inner_steps = 1
eval_steps = 5

[train]
seed = 1

[federation]
num_devices = 50
num_held_out = 10
rounds = {rounds}
fraction_train = 0.0
min_train_devices = 4
meta_batch = 4
eval_every = {rounds}
eval_episodes = 5

[simulation]
num_cpus = 1
ray_cpus = 2
"""
ROUNDS = 30
EPISODES = 20  # per held-out writer, rescored from the checkpoint


def paired_ci(diff: np.ndarray) -> tuple[float, float]:
    """Mean of per-episode differences and the half-width of its normal 95% CI."""
    return float(diff.mean()), 1.96 * float(diff.std(ddof=1)) / math.sqrt(len(diff))


@pytest.mark.slow  # one Ray run of 30 rounds: 7.5 minutes on a 2-core host at load 18
def test_fedmeta_run_on_a_femnist_fixture_learns(tmp_path: Path) -> None:
    dataset = write_femnist(tmp_path / "femnist", femnist_writers(50, classes=10, per_class=6))
    config = tmp_path / "femnist.toml"
    config.write_text(CONFIG.format(dataset=dataset, rounds=ROUNDS))
    out = tmp_path / "run"
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf-cache")}
    run = subprocess.run([sys.executable, "-m", "fedmeta", "run", "--config", str(config),
                          "--out", str(out), "--no-progress"],
                         capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stderr[-3000:]

    cfg = from_dict(json.loads((out / "config.json").read_text()))
    checkpoint = Checkpoint.load(out / "checkpoint.pt")
    assert checkpoint.task["kind"] == "hf" and len(checkpoint.task["held_out"]) == 10
    learner = checkpoint.learner()
    with torch.random.fork_rng(devices=[]):  # the run's initial model, as the server built it
        torch.manual_seed(cfg.train.seed)
        start = dict(build_model("conv4", n_way=5).named_parameters())
    trained, untrained = [], []
    for device in range(40, 50):
        source = build_device_tasks(cfg.task, device, 50, 10, seed=cfg.train.seed)
        trained.append(score_device(cfg, learner, checkpoint.params, source, device, EPISODES))
        untrained.append(score_device(cfg, learner, {k: v.detach() for k, v in start.items()},
                                      source, device, EPISODES))
    pre = np.concatenate([s["pre_acc"] for s in trained])
    post = np.concatenate([s["post_acc"] for s in trained])
    gain, half = paired_ci(post - pre)
    print(f"held-out post {post.mean():.3f} pre {pre.mean():.3f}: gain {gain:.3f} +- {half:.3f}")
    assert gain - half > 0, (gain, half)
    base = np.concatenate([s["post_acc"] for s in untrained])
    better, half = paired_ci(post - base)  # same tasks: score_device draws them by device
    print(f"post-adaptation trained {post.mean():.3f} untrained {base.mean():.3f}: "
          f"{better:.3f} +- {half:.3f}")
    assert better - half > 0, (better, half)
