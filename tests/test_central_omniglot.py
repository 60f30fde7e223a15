"""Central meta-learning on the real Omniglot zips, held-out alphabets, small budget."""

from __future__ import annotations

import torch

from fedmeta import config
from fedmeta.central import train_and_evaluate
from fedmeta.checkpoint import Checkpoint


def test_anil_5way_1shot_on_held_out_alphabets_is_far_above_chance(omniglot_dir, tmp_path):
    cfg = config.load(overrides=[
        "task.kind=omniglot", f"task.data_dir={omniglot_dir}", "task.n_way=5",
        "task.k_shot=1", "task.q_query=5", "task.test_alphabets=2", "meta.algorithm=anil",
        "meta.inner_lr=0.4", "meta.eval_steps=5", "train.iterations=40",
        "train.meta_batch=4", "train.eval_episodes=100"])
    torch.manual_seed(0)
    summary = train_and_evaluate(cfg, tmp_path / "c.pt", progress=False)
    train, test = summary["task"]["train_alphabets"], summary["task"]["test_alphabets"]
    assert len(test) == 2 and not set(train) & set(test)
    # chance is 0.2; 160 meta-training episodes already put it far above
    assert summary["post_acc"] - summary["post_acc_ci95"] > 0.4, summary
    assert summary["pre_acc"] < 0.3  # before adaptation the head cannot know the labels
    assert Checkpoint.load(tmp_path / "c.pt").task["test_alphabets"] == test
